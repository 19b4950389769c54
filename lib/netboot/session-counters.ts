/**
 * A session's progress, as numbers in a SharedArrayBuffer
 * (lib/threads/shared-counters.ts): the session thread writes them as it
 * answers (lib/netboot/session.ts) and the main thread reads them when it
 * redraws or is scraped (lib/netboot/sled-progress.ts, metrics.ts), so
 * reporting costs no message per frame.
 */

import { type CountersOf, countersOf } from "@ramdisk-tools/threads/shared-counters.ts";

/**
 * A session's progress, shared with the main thread:
 * - imageSize: bytes of the image being served;
 * - deliveredBytes: image bytes sent for offsets asked the first time (the image delivered);
 * - sentBytes: all image bytes sent, repeats included;
 * - reasked: offsets asked more than once;
 * - reads: READ frames answered;
 * - firstReadAt, lastReadAt: epoch milliseconds of the first and the latest READ, 0 before any;
 * - sendFailures: batches of DATA frames the link refused to send (the sled asks again);
 * - dataFrames: DATA frames sent, re-sent copies included;
 * - resentFrames: copies of DATA frames the sled did not ask for, probes included (a subset of dataFrames);
 * - resends: READs that came late (the re-send timeout fired), whether or not copies were sent;
 * - pacedMs: milliseconds spent waiting for the pacing clock (lib/netboot/pacing.ts);
 * - roundTripMs: the smoothed READ round trip, 0 before the first sample;
 * - probeFrames: copies sent as probes of the sled's console (lib/netboot/console-cost.ts);
 * - consoleLineMs, consoleUpperMs: what a console line costs the sled, measured and at most; 0 before a probe;
 * - copyChoice: whether copies are sent to this sled, as an index of COPY_CHOICES (lib/netboot/copy-policy.ts);
 * - resets: RESETs this session sent (a block or the image failed its check; each reported with why through onProblem).
 */
export const SESSION_COUNTERS = [
  "imageSize",
  "deliveredBytes",
  "sentBytes",
  "reasked",
  "reads",
  "firstReadAt",
  "lastReadAt",
  "sendFailures",
  "dataFrames",
  "resentFrames",
  "resends",
  "pacedMs",
  "roundTripMs",
  "probeFrames",
  "consoleLineMs",
  "consoleUpperMs",
  "copyChoice",
  "resets",
] as const;
export type SessionCounters = CountersOf<typeof SESSION_COUNTERS>;
/** Counters for one session, over a new buffer or the main thread's. */
export const sessionCounters = countersOf(SESSION_COUNTERS);
