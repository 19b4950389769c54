/**
 * The project's one seeded pseudo-random generator, for anything that must
 * come out the same from the same seed on every machine: the sample pool's
 * bytes and the sled emulator's network faults.
 *
 * It is xorshift32 (Marsaglia): one 32-bit word of state, three shifts per
 * draw. Plenty for test data and fault patterns, and nothing here needs more.
 * Being linear, xorshift32 started from small nearby seeds (1, 2, 3: one per
 * emulated sled) gives small, related first draws, which would drop the first
 * frames of every sled alike; `Xorshift32.mixed` scrambles the seed first for
 * such uses. The plain constructor keeps the raw seed, so the sample pool
 * yields the bytes it always has.
 */

/**
 * A seeded xorshift32 generator.
 *
 * @example const random = Xorshift32.mixed(7); if (random.fraction() < 0.01) drop(frame);
 */
export class Xorshift32 {
  #state: number;

  /** State = the seed as a 32-bit word (0, which xorshift cannot leave, becomes a fixed constant). */
  constructor(seed: number) {
    this.#state = seed >>> 0 || 0x9e3779b9;
  }

  /**
   * A generator whose state is the seed run through MurmurHash3's 32-bit
   * finaliser, so seeds that differ by one start unrelated streams.
   *
   * @example const perSled = macs.map((_, index) => Xorshift32.mixed(seed + index));
   */
  static mixed(seed: number): Xorshift32 {
    let h = seed >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return new Xorshift32((h ^ (h >>> 16)) >>> 0);
  }

  /** The next word, 1..2^32 - 1. */
  next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state;
  }

  /** The next word modulo `n` (slightly uneven for large n; the sample pool's records are sized with it). */
  below(n: number): number {
    return this.next() % n;
  }

  /** Uniform in (0, 1): compare with a probability to decide an event (never true for probability 0). */
  fraction(): number {
    return this.next() / 2 ** 32;
  }
}
