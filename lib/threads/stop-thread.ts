/**
 * Stopping a thread that holds something to close (a link, a capture file):
 * it is asked to stop, and terminated once it says it has, or after a grace
 * period at the latest, so that a thread stuck in a system call cannot hold
 * its program up.
 */

/** How long a stopping thread gets by default to close what it holds before it is terminated. */
export const STOP_GRACE_MS = 1000;

/**
 * Post `{ type: "stop" }` to `worker`, wait for `stopped` (the worker's own
 * word that it closed what it holds) for `graceMs` at most, then terminate it.
 *
 * @example await stopThread(worker, stopped);
 */
export async function stopThread(worker: Worker, stopped: Promise<void>, graceMs = STOP_GRACE_MS): Promise<void> {
  worker.postMessage({ type: "stop" });
  await Promise.race([stopped, new Promise<void>((resolve) => setTimeout(resolve, graceMs))]);
  worker.terminate();
}
