/**
 * When a sled's READ is late, whether to send it copies of the answer, in
 * which order and how fast: the decision of fast re-send, made per sled
 * from what copies cost that sled (lib/netboot/console-cost.ts).
 *
 * A late READ means some DATA of the answer was lost, or that the sled is
 * busy (printing, slow). The server cannot see which frame is missing. Left
 * alone, the sled asks again for it once its request is a second old
 * (REASK_AFTER_MS). Copies can end that wait sooner, but each copy of a
 * frame the sled already has prints a console line that holds the sled up
 * for its serial time. So copies go out one after another, paced no faster
 * than the sled prints (a copy sent faster only waits in its queue and
 * holds up the next batch), most likely missing first, and stop as soon as
 * the READ comes; on a fast console they go out one, then two, four, ...
 * a timer apart, so a READ that was late but not lost (the sled was busy a
 * moment) draws only the first few. If the missing frame is equally likely to be any of R
 * candidates and the sled prints a line in c ms, copies paced at g >= c find
 * it after R·g/2 on average, having cost R·c/2 of console time; they pay when
 * that expected wait plus its console cost and a round trip is less than the
 * wait left before the sled's own re-ask:
 *
 *   R·(g + c)/2 + rtt < wait left
 *
 * checked before the first copy and again before each further one (with R
 * the candidates not yet sent), so a round that has gone on without finding
 * the frame stops once finishing it would cost more than waiting. Before the
 * cost per line is known, no copy is sent: the sled's own re-ask is the
 * safe answer, whatever its console. At 9600 baud (47 ms a line) a batch's
 * copies never pay; at 115,200 (3.9 ms) they do early in a wait; on a fast
 * console all of a batch goes out at once.
 *
 * Order: frames whose slot the sled has asked for again before come first
 * (losses that recur at the same place in a batch: a switch or NIC queue that
 * overflows at the same point of every burst), the rest from the last slot
 * back, since a queue that overflows loses the tail of a burst.
 */

/** Why a sled is or is not sent copies. */
export type CopyChoice =
  /** Copies pay: the console is fast enough for the wait they save. */
  | "on"
  /** Copies would cost the sled more console time than the wait they save. */
  | "off"
  /** The console's cost is not known yet: wait for the sled's re-ask. */
  | "learning"
  /** Turned off (`bootserver --no-resend`). */
  | "disabled";

/** The choices as numbers, for a shared counter and /metrics; the index is the code. */
export const COPY_CHOICES: readonly CopyChoice[] = ["learning", "on", "off", "disabled"];

/** Link time of one DATA frame at gigabit: copies are never paced faster than the sled's port. */
export const MIN_COPY_GAP_MS = 0.0087;

/**
 * Whether `candidates` copies, paced `gapMs` apart to a sled printing a line
 * in `lineMs`, are expected to end the wait sooner than the `waitLeftMs` left
 * before its own re-ask, console time included (see the module comment).
 *
 * @example copiesPay(128, 3.9, 3.9, 990, 1) // true: 500 ms + 1 < 990
 * @example copiesPay(128, 47, 47, 990, 1) // false: 6 s of console for a second's wait
 */
export function copiesPay(
  candidates: number,
  lineMs: number,
  gapMs: number,
  waitLeftMs: number,
  roundTripMs: number,
): boolean {
  return (candidates * (gapMs + lineMs)) / 2 + roundTripMs < waitLeftMs;
}

/**
 * The order to send copies of a batch's frames in: `slots[i]` is the sled's
 * slot of frame i; frames of slots with more past losses (`losses`, per
 * slot) first, then from the last frame back.
 *
 * @example copyOrder([0, 1, 2], new Float64Array(128)) // [2, 1, 0]
 */
export function copyOrder(slots: readonly number[], losses: Float64Array): number[] {
  const order = slots.map((_, index) => index);
  return order.sort((a, b) => losses[slots[b]!]! - losses[slots[a]!]! || b - a);
}
