/**
 * The deflate threads' work in mkimage -z (ImageThreads.zlibDeflate): one block of
 * the parallel zlib stream that lib/image/zlib-stream.ts describes, compressed
 * by node:zlib. Kept apart from the stream's arithmetic so mkimage's main
 * thread, which only frames the stream, does not load node:zlib (about
 * 10 ms at start-up).
 */

import { constants, deflateRawSync } from "node:zlib";
import { adler32, type DeflatedBlock, type DeflateJob, FLUSH_INTERVAL, nextWindow } from "./zlib-stream.ts";

/**
 * Compress one block of the stream as raw deflate: segments of
 * FLUSH_INTERVAL bytes, each primed with the 32 KiB before it (`window` for
 * the first) and ending with a sync flush, except that the last block's last
 * segment ends with a finish.
 *
 * @example
 * const first = deflateBlock({ block: a, window: new Uint8Array(0), level: 9, last: false });
 * const second = deflateBlock({ block: b, window: nextWindow(new Uint8Array(0), a), level: 9, last: true });
 * // zlibHeader(9) + first.deflated + second.deflated
 * //   + zlibTrailer(adler32Combine(first.adler32, second.adler32, b.length)) inflates to a + b
 */
export function deflateBlock(job: DeflateJob): DeflatedBlock {
  const segments: Uint8Array[] = [];
  let window = job.window;
  let offset = 0;
  do {
    const segment = job.block.subarray(offset, offset + FLUSH_INTERVAL);
    offset += segment.length;
    const final = job.last && offset === job.block.length;
    segments.push(
      deflateRawSync(segment, {
        level: job.level,
        ...(window.length > 0 ? { dictionary: window } : {}),
        ...(final ? {} : { finishFlush: constants.Z_SYNC_FLUSH }),
      }),
    );
    window = nextWindow(window, segment);
  } while (offset < job.block.length);
  // One buffer of its own, so it can be transferred between threads.
  const deflated = new Uint8Array(segments.reduce((total, piece) => total + piece.length, 0));
  let at = 0;
  for (const piece of segments) {
    deflated.set(piece, at);
    at += piece.length;
  }
  return { deflated, adler32: adler32(job.block), rawLength: job.block.length };
}
