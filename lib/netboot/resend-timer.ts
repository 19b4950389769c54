/**
 * When to send a sled's last batch again: the re-send timeout of fast
 * re-send, learnt per sled from the round trips of its READs.
 *
 * The sled asks for a slot again only after one second (netboot.md, "What
 * the sled does"), so one lost DATA would stall its boot that long. But a
 * sled that has every DATA of a batch asks for the next batch at once: after
 * the last DATA of an answer has left, the next READ comes within about one
 * round trip. If it does not come within a timeout, some DATA was lost, and
 * the session sends every DATA of the last READ again; the sled keeps the
 * ones it still waits for and drops the others.
 *
 * The timeout is TCP's (RFC 6298): a smoothed round trip SRTT and its mean
 * variation RTTVAR, timeout = SRTT + max(G, 4 RTTVAR), where RFC 6298's clock
 * granularity G is here a floor of RESEND_FLOOR_MS (a busy host's event loops
 * make a few milliseconds of jitter ordinary, and a timeout that fires on
 * jitter costs a whole batch of copies), and the whole is capped far below
 * the sled's own second.
 *
 * Samples come only from a READ of a new batch. When the answer before it
 * was re-sent, which copy the READ answers is unknown (Karn's rule), with two
 * exceptions: a READ that reached the server before the re-send began proves
 * the re-send spurious, and the time since the first send is a true round
 * trip; a READ that came later after the last copy than the timeout itself
 * shows the sled slower than the timeout whichever copy it answers (a sled
 * that lost a frame answers its copy within about one round trip), and the
 * time since the first send is taken as its round trip: too long, if
 * anything, which costs a little speed until the next samples correct it,
 * where too short would cost a copy of every batch. A READ's time is when the
 * dispatcher captured it, not when its session got round to it.
 *
 * Repeated re-sends of one answer wait twice as long each time (backoff), up
 * to the cap; the next answer starts again from the estimate. (TCP carries
 * the backoff over to the next segments; here that would make every loss
 * that follows another loss, most of them on a lossy link, wait longer, and
 * the two exceptions above already teach the timer a slower sled's pace.)
 * Before any sample the timeout is the cap, so a sled of any pace up to it
 * is measured on its first batch and never flooded with copies.
 */
/** Margin over the smoothed round trip below which the timeout would fire on ordinary scheduling jitter. */
export const RESEND_FLOOR_MS = 5;
/** Far below the sled's one-second re-ask, so a re-send always beats it. */
export const RESEND_CAP_MS = 250;
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

  /** Milliseconds to wait for the next READ before sending again. */
  get timeoutMs(): number {
    return this.timeoutAfter(0);
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
   * A READ of a new batch came after its answer was re-sent, so many
   * milliseconds after the first send, the first copy and the last copy
   * (negative: it was captured before): a sample when it says something
   * (see the module comment).
   */
  afterResend(sinceSentMs: number, sinceFirstCopyMs: number, sinceLastCopyMs: number): void {
    if (sinceFirstCopyMs < 0 || sinceLastCopyMs > this.#timeout) this.sample(sinceSentMs);
  }

  /** Milliseconds to wait before re-send number `resent` + 1 of one answer (backoff). */
  timeoutAfter(resent: number): number {
    return clamp(this.#timeout * 2 ** resent);
  }
}

function clamp(ms: number): number {
  return Math.min(RESEND_CAP_MS, Math.max(RESEND_FLOOR_MS, ms));
}
