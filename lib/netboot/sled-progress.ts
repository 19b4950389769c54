/**
 * One sled's transfer as it stands, read from its session's counters in
 * shared memory (lib/netboot/session-counters.ts): what the display prints
 * (lib/netboot/boot-progress.ts) and the metrics publish (metrics.ts).
 */

import { COPY_CHOICES, type CopyChoice } from "./copy-policy.ts";
import type { ServedImage } from "./served-image.ts";
import type { SESSION_COUNTERS, SessionCounters } from "./session-counters.ts";

/** One sled's transfer as it stands. */
export interface SledProgress {
  /** The sled's MAC address, formatted. */
  sled: string;
  image: ServedImage;
  /** Image bytes delivered (each offset counted once). */
  deliveredBytes: number;
  /** Image bytes sent, repeats included. */
  sentBytes: number;
  /** Offsets the sled asked for more than once. */
  reasked: number;
  /** Seconds since the sled's first READ. */
  seconds: number;
  /** deliveredBytes per second since the first READ. */
  bytesPerSecond: number;
  /** Batches of DATA frames the link refused to send. */
  sendFailures: number;
  /** DATA frames sent, re-sent copies included. */
  dataFrames: number;
  /** DATA frames sent again by fast re-send. */
  resentFrames: number;
  /** Seconds spent waiting for the pacing clock. */
  pacedSeconds: number;
  /** The smoothed READ round trip in milliseconds, 0 before it is measured. */
  roundTripMs: number;
  /** Whether fast re-send sends this sled copies, and why (lib/netboot/copy-policy.ts). */
  copyChoice: CopyChoice;
  /** What a console line costs the sled in milliseconds, as measured (0: not yet; lib/netboot/console-cost.ts). */
  consoleLineMs: number;
  /** Console seconds the copies sent so far are estimated to have cost the sled. */
  copiesConsoleSeconds: number;
  /** Every counter of the session as it stands (the figures above come from these), for the metrics. */
  counters: Record<(typeof SESSION_COUNTERS)[number], number>;
}

/**
 * The progress of `sled`'s transfer of `image` at `now` (epoch ms), from its
 * session's `counters`.
 *
 * @example sledProgress("02:08:20:aa:bb:cc", session.image, session.counters, Date.now()).bytesPerSecond
 */
export function sledProgress(sled: string, image: ServedImage, counters: SessionCounters, now: number): SledProgress {
  const firstReadAt = counters.get("firstReadAt");
  const seconds = firstReadAt > 0 ? Math.max(now - firstReadAt, 1) / 1000 : 0;
  const deliveredBytes = counters.get("deliveredBytes");
  return {
    sled,
    image,
    deliveredBytes,
    sentBytes: counters.get("sentBytes"),
    reasked: counters.get("reasked"),
    seconds,
    bytesPerSecond: seconds > 0 ? deliveredBytes / seconds : 0,
    sendFailures: counters.get("sendFailures"),
    counters: counters.snapshot(),
    dataFrames: counters.get("dataFrames"),
    resentFrames: counters.get("resentFrames"),
    pacedSeconds: counters.get("pacedMs") / 1000,
    roundTripMs: counters.get("roundTripMs"),
    copyChoice: COPY_CHOICES[counters.get("copyChoice")] ?? "learning",
    consoleLineMs: counters.get("consoleLineMs"),
    copiesConsoleSeconds: (counters.get("resentFrames") * counters.get("consoleLineMs")) / 1000,
  };
}
