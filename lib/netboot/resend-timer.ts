/**
 * When a sled's next READ is late: the re-send timeout of fast re-send,
 * learnt per sled from the round trips of its READs.
 *
 * A sled that has every DATA of a batch asks for the next batch at once:
 * after the last DATA of an answer has left, the next READ comes within
 * about one round trip. When it does not come within a timeout, some DATA
 * may have been lost (or the sled is busy: lib/netboot/copy-policy.ts
 * decides what to do about it).
 *
 * The timeout is TCP's (RFC 6298): a smoothed round trip SRTT and its mean
 * variation RTTVAR, timeout = SRTT + max(G, 4 RTTVAR), where RFC 6298's clock
 * granularity G is here a floor of RESEND_FLOOR_MS (a busy host's event loops
 * make a few milliseconds of jitter ordinary, and a timeout that fires on
 * jitter costs copies), and the whole is capped far below the sled's own
 * second.
 *
 * Samples come only from a READ of a new batch. When the answer before it
 * was copied, which copy the READ answers is unknown (Karn's rule), with two
 * exceptions: a READ that reached the server before the first copy could
 * have reached the sled and been answered (sooner after it than the sled's
 * fastest round trip) proves the copies spurious, and the time since the
 * first send is a true round trip; a
 * READ that came later after the last copy than a round trip and its
 * variation (plus COPY_EVIDENCE_MS) cannot be the answer to any copy (a sled
 * that lost a frame answers the copy it needed within about one round trip,
 * and that copy left no later than the last one), so the sled is slower than
 * the timeout, and the time since the first send is taken as its round trip:
 * too long, if anything, which costs a little speed until the next samples
 * correct it, where too short would cost copies of every batch. A READ's
 * time is when the dispatcher captured it, not when its session got round
 * to it. Before any sample the timeout is the cap, so a sled of any pace up
 * to it is measured on its first batch and never sent copies.
 *
 * After a late READ whose copies a slow console paces (lib/netboot/session.ts)
 * the next answer waits twice as long, and so on while READs keep coming
 * late, up to 2^MAX_DOUBLINGS times (`timeoutAfter`); a READ in time
 * starts again from the estimate. Copies paced by a slow console run on
 * until whatever READ comes, so a sled that turned slow leaves no READ that
 * is plainly no copy's answer; a wait that doubles soon outlasts its pace,
 * and its READ in time is then a sample. (Copies for a fast console all go
 * out within a few milliseconds, and a slow sled's READ long after them is
 * a sample at once, so there is no backoff: on a lossy link it would make
 * every loss that follows a loss wait longer.)
 */
/** Margin over the smoothed round trip below which the timeout would fire on ordinary scheduling jitter. */
export const RESEND_FLOOR_MS = 5;
/** Far below the sled's one-second re-ask, so copies can still beat it. */
export const RESEND_CAP_MS = 250;
/** Doublings of the timeout at most while READs keep coming late. */
export const MAX_DOUBLINGS = 3;
/** Margin over a round trip and its variation beyond which a READ after a copy cannot be that copy's answer. */
export const COPY_EVIDENCE_MS = 1;
/** RFC 6298's gains and multiple. */
const ALPHA = 1 / 8;
const BETA = 1 / 4;
const K = 4;

/**
 * The re-send timeout of one sled (see the module comment).
 *
 * @example
 * const timer = new ResendTimeout();
 * timer.sample(2.5); // a READ came 2.5 ms after the last DATA
 * setTimeout(resend, timer.timeoutMs);
 */
export class ResendTimeout {
  #srtt: number | null = null;
  #rttvar = 0;
  #timeout = RESEND_CAP_MS;

  /** Milliseconds to wait for the next READ before it counts as late. */
  get timeoutMs(): number {
    return this.#timeout;
  }

  /** The timeout after `lateRun` late READs in a row (see the module comment), at most the cap. */
  timeoutAfter(lateRun: number): number {
    return clamp(this.#timeout * 2 ** Math.min(lateRun, MAX_DOUBLINGS));
  }

  /** The smoothed round trip, or null before the first sample. */
  get smoothedMs(): number | null {
    return this.#srtt;
  }

  /** A measured round trip: last DATA of a batch sent once, to the READ of the next batch. */
  sample(roundTripMs: number): void {
    const rtt = Math.max(0, roundTripMs);
    if (this.#srtt === null) {
      this.#srtt = rtt;
      this.#rttvar = rtt / 2;
    } else {
      this.#rttvar = (1 - BETA) * this.#rttvar + BETA * Math.abs(this.#srtt - rtt);
      this.#srtt = (1 - ALPHA) * this.#srtt + ALPHA * rtt;
    }
    this.#timeout = clamp(this.#srtt + Math.max(RESEND_FLOOR_MS, K * this.#rttvar));
  }

  /**
   * A READ of a new batch came after its answer was copied, so many
   * milliseconds after the first send, the first copy and the last copy
   * (negative: it was captured before): a sample when it says something
   * (see the module comment). `fastestMs` is the sled's shortest round trip
   * seen: a READ that came sooner than that after the first copy was on its
   * way before the copy could have reached the sled.
   */
  afterResend(sinceSentMs: number, sinceFirstCopyMs: number, sinceLastCopyMs: number, fastestMs = 0): void {
    const beforeAnyCopy = sinceFirstCopyMs < fastestMs;
    const answersNoCopy = sinceLastCopyMs > (this.#srtt ?? 0) + K * this.#rttvar + COPY_EVIDENCE_MS;
    if (beforeAnyCopy || answersNoCopy) this.sample(sinceSentMs);
  }
}

function clamp(ms: number): number {
  return Math.min(RESEND_CAP_MS, Math.max(RESEND_FLOOR_MS, ms));
}
