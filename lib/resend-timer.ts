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
 * the sled's own second. Samples come
 * only from a READ of a new batch, and not when the answer before it was
 * re-sent (Karn's rule: which copy the READ answers is unknown), unless the
 * READ reached the server before the re-send began: then the re-send was
 * spurious (the sled was only slower than the timeout), and the time since
 * the first send is a true, longer round trip. A READ's time is when the
 * dispatcher captured it, not when its session got round to it. A sled that
 * takes its time over each batch therefore teaches the timer its pace, and
 * is not flooded with copies. Repeated re-sends of one answer wait twice as
 * long each time (backoff), up to the cap; the next READ starts again from
 * the estimate.
 */

/** Margin over the smoothed round trip below which the timeout would fire on ordinary scheduling jitter. */
export const RESEND_FLOOR_MS = 5;
/** Far below the sled's one-second re-ask, so a re-send always beats it. */
export const RESEND_CAP_MS = 250;
/** Before any sample: no faster than the cap, so an unknown slow sled is not flooded. */
const INITIAL_TIMEOUT_MS = 100;
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
  #timeout = INITIAL_TIMEOUT_MS;

  /** Milliseconds to wait for the next READ before sending again. */
  get timeoutMs(): number {
    return this.#timeout;
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

  /** Milliseconds to wait before re-send number `resent` + 1 of one answer (backoff). */
  timeoutAfter(resent: number): number {
    return clamp(this.#timeout * 2 ** resent);
  }
}

function clamp(ms: number): number {
  return Math.min(RESEND_CAP_MS, Math.max(RESEND_FLOOR_MS, ms));
}
