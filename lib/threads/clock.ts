/**
 * One clock for every thread. Each thread's performance.now() counts from
 * that thread's own start, so times passed between threads (when the
 * dispatcher captured a READ, when a session sent a batch for the capture
 * file) are taken on the epoch-based clock with sub-millisecond precision.
 */

/**
 * Milliseconds since the epoch, finer than Date.now(), the same in every thread.
 *
 * @example const capturedAt = nowMs();
 */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}
