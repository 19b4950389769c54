/**
 * Admission: what a frame from an unknown station may cost the boot server.
 *
 * Anyone on the segment can send HELLOs from as many source MACs as they
 * like, and READs from MACs never offered anything. Each HELLO is answered
 * with one OFFER by the dispatcher thread, and each READ without a session
 * with one RESET (netboot.md, "What a boot server owes the sled"): cheap, but
 * not free, and a flood must not turn the server into a frame cannon. So both
 * answers are rate-limited with token buckets: HELLOs per source MAC (a sled
 * says HELLO every 4 s, so a few in a row is already more than one sled
 * sends) and in all; RESETs in all. A session thread starts only for a sled
 * that READs after an OFFER, and there are at most `--max-sleds` of them.
 *
 * The limit in all has two pools: one for MACs heard for the first time, one
 * for MACs heard before (within REMEMBER_MAC_MS). A flood of made-up MACs,
 * each new, drains only the first; a real sled whose first HELLO it crowded
 * out says HELLO again four seconds later and is answered from the second.
 */

/** A sled says HELLO every 4 s; three in a row and one a second after that is plenty for one MAC. */
const HELLO_BURST_PER_MAC = 3;
const HELLOS_PER_SECOND_PER_MAC = 1;
/** OFFERs in all: a rack of 32 sleds saying HELLO at once passes, a flood is cut to this rate. */
const HELLO_BURST = 64;
const HELLOS_PER_SECOND = 200;
/** RESETs in all: enough for every sled of a rack after a server restart, never a flood's worth. */
const RESET_BURST = 64;
const RESETS_PER_SECOND = 100;
/** How long a MAC counts as heard before: two of a sled's HELLO intervals (4 s) and then some. */
const REMEMBER_MAC_MS = 10_000;

/**
 * A token bucket: `burst` tokens at most, refilled at `perSecond`.
 *
 * @example const bucket = new TokenBucket(2, 1, 0); bucket.take(0); bucket.take(0); bucket.take(0) // false
 */
export class TokenBucket {
  #tokens: number;
  #at: number;

  constructor(
    readonly burst: number,
    readonly perSecond: number,
    now: number,
  ) {
    this.#tokens = burst;
    this.#at = now;
  }

  /** Take one token at `now` (ms); false when there is none. */
  take(now: number): boolean {
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#at) / 1000) * this.perSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** When it was last used (ms). */
  get usedAt(): number {
    return this.#at;
  }
}

/**
 * The dispatcher's rate limits on HELLOs (per MAC and in all) and RESETs.
 *
 * @example
 * const limits = new AdmissionLimits();
 * if (limits.hello(macKey(source), Date.now())) offer(source);
 */
export class AdmissionLimits {
  readonly #perMac = new Map<number, TokenBucket>();
  readonly #newHellos: TokenBucket;
  readonly #returningHellos: TokenBucket;
  readonly #resets: TokenBucket;

  constructor(now = Date.now()) {
    this.#newHellos = new TokenBucket(HELLO_BURST, HELLOS_PER_SECOND, now);
    this.#returningHellos = new TokenBucket(HELLO_BURST, HELLOS_PER_SECOND, now);
    this.#resets = new TokenBucket(RESET_BURST, RESETS_PER_SECOND, now);
  }

  /** May the sled `key` (lib/protocol/frames.ts macKey) be answered a HELLO now? */
  hello(key: number, now: number): boolean {
    let bucket = this.#perMac.get(key);
    const pool = bucket ? this.#returningHellos : this.#newHellos;
    if (!bucket) {
      bucket = new TokenBucket(HELLO_BURST_PER_MAC, HELLOS_PER_SECOND_PER_MAC, now);
      this.#perMac.set(key, bucket);
    }
    // The MAC's own bucket first: a chatty MAC does not use up everyone's tokens.
    return bucket.take(now) && pool.take(now);
  }

  /** May a RESET be sent now? */
  reset(now: number): boolean {
    return this.#resets.take(now);
  }

  /** Forget MACs not heard for a while, so a flood of MACs leaves no memory behind. */
  forget(now: number): void {
    for (const [key, bucket] of this.#perMac) if (now - bucket.usedAt > REMEMBER_MAC_MS) this.#perMac.delete(key);
  }

  /** MACs with a bucket now. */
  get tracked(): number {
    return this.#perMac.size;
  }
}
