/**
 * One zlib stream (RFC 1950) made by several threads: the pigz construction
 * (docs/format.md, "Version 2"): still one ordinary stream for any inflater.
 *
 * The raw image is cut into blocks that are compressed independently, each on
 * whichever thread is free, and the pieces are written in order behind one
 * 2-byte zlib header. Independence costs almost nothing in size because each
 * block is compressed as raw deflate with the 32 KiB of input that precede it
 * as its preset dictionary: deflate can only refer 32 KiB back, so a block
 * sees exactly the history it would have seen in a serial stream. Every block
 * but the last ends with a sync flush, which closes the deflate block and
 * appends an empty stored block (`00 00 FF FF`), leaving the output
 * byte-aligned and not final, so the next block's bytes can simply follow.
 * The last block ends with a finish, whose deflate block carries BFINAL. The
 * trailer is the Adler-32 of the whole input, big-endian; each thread
 * computes its own block's Adler-32 and adler32Combine folds them in order
 * from the values and block lengths alone, without seeing the bytes again.
 * Any inflater, the sled kernel's included, reads the result as one ordinary
 * stream.
 *
 * Inside a block, the same is done every FLUSH_INTERVAL (128 KiB, pigz's
 * block size) of input: each segment is compressed primed with the 32 KiB
 * before it and ends with a sync flush. The flushes cost 5 bytes each but
 * start fresh Huffman tables where the data changes kind, which on pool-like
 * data makes the stream up to 0.6% smaller than flushing every 1 MiB. Blocks
 * are larger (a thread's unit of work, lib/image/make.ts), so handing them
 * around costs little; and because the flush points are fixed by the input
 * alone, the stream is the same whatever the number of threads.
 *
 * Everything here is a pure function over bytes; compressing a block is
 * lib/image/zlib-deflate.ts's, and threads and files belong to the callers
 * (lib/image/payload-encoders.ts, make.ts).
 */

/** Deflate refers at most 32 KiB back (RFC 1951), so that much history is all a block needs. */
export const DEFLATE_WINDOW = 32 * 1024;

/** Input bytes between sync flushes within a block (see the top of this module). */
export const FLUSH_INTERVAL = 128 * 1024;

/** zlib compression levels; 9 ("best") is what existing images use (format.md). */
export type ZlibLevel = 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9;

/** Adler-32 of no bytes: the value adler32Combine starts folding from. */
export const ADLER32_EMPTY = 1;

/** Adler-32 works modulo the largest prime below 2^16 (RFC 1950, section 8.2). */
const ADLER_MOD = 65521;

/**
 * The 2-byte zlib header zlib itself writes for `level` with a 32 KiB window
 * and no preset dictionary: CMF 0x78 (deflate, window 2^15), then FLG whose
 * FLEVEL bits say how hard the compressor tried (zlib's mapping: 1 fastest,
 * 2..5 fast, 6 default, 7..9 maximum) and whose FCHECK bits make the 16-bit
 * value a multiple of 31.
 *
 * @example zlibHeader(9) // Uint8Array [0x78, 0xda]
 */
export function zlibHeader(level: ZlibLevel): Uint8Array {
  const cmf = 0x78;
  const flevel = level < 2 ? 0 : level < 6 ? 1 : level === 6 ? 2 : 3;
  const withoutCheck = (cmf << 8) | (flevel << 6);
  const flg = (flevel << 6) | (31 - (withoutCheck % 31));
  return Uint8Array.of(cmf, flg);
}

/**
 * The 4-byte zlib trailer: the Adler-32 of all the uncompressed bytes,
 * most significant byte first (RFC 1950).
 *
 * @example zlibTrailer(0x11e60398) // Uint8Array [0x11, 0xe6, 0x03, 0x98]
 */
export function zlibTrailer(adler32: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, adler32 >>> 0, false);
  return out;
}

/**
 * Adler-32 of `bytes` (RFC 1950), from Bun's native implementation.
 *
 * @example adler32(new TextEncoder().encode("Wikipedia")) // 0x11e60398
 */
export function adler32(bytes: Uint8Array): number {
  return Bun.hash.adler32(bytes) >>> 0;
}

/**
 * The Adler-32 of A followed by B, from the Adler-32 of A, that of B and the
 * length of B.
 *
 * Adler-32 keeps two sums modulo 65521: s1 = 1 + every byte, s2 = the sum of
 * s1 after each byte. Running B from A's state (s1A, s2A) instead of (1, 0)
 * adds s1A - 1 to every one of B's s1 values, so
 *   s1 = s1A + s1B - 1
 *   s2 = s2A + s2B + lengthB * (s1A - 1)
 *
 * @example adler32Combine(adler32(a), adler32(b), b.length) === adler32(concat(a, b))
 */
export function adler32Combine(first: number, second: number, secondLength: number): number {
  const s1First = (first >>> 0) & 0xffff;
  const s2First = first >>> 16;
  const s1Second = (second >>> 0) & 0xffff;
  const s2Second = second >>> 16;
  // Reduce first so every product stays below 2^53 whatever the length.
  const length = secondLength % ADLER_MOD;
  const s1 = (s1First + s1Second + ADLER_MOD - 1) % ADLER_MOD;
  const s2 = (s2First + s2Second + length * ((s1First + ADLER_MOD - 1) % ADLER_MOD)) % ADLER_MOD;
  return ((s2 << 16) | s1) >>> 0;
}

/**
 * The dictionary for the block after `block`: the last DEFLATE_WINDOW bytes
 * of the input so far, `window` being that of the input before `block`. A
 * block shorter than the window keeps the tail of the older history. Always a
 * fresh copy, so neither argument's buffer is kept (mkimage fills a block's
 * buffer again once the block is deflated).
 *
 * @example let window = new Uint8Array(0); for (const block of blocks) window = nextWindow(window, block);
 */
export function nextWindow(window: Uint8Array, block: Uint8Array): Uint8Array {
  if (block.length >= DEFLATE_WINDOW) return block.slice(block.length - DEFLATE_WINDOW);
  const keep = Math.min(window.length, DEFLATE_WINDOW - block.length);
  const out = new Uint8Array(keep + block.length);
  out.set(window.subarray(window.length - keep), 0);
  out.set(block, keep);
  return out;
}

/** One block to compress: what a deflate worker receives. */
export interface DeflateJob {
  /** The raw bytes of this block. */
  block: Uint8Array;
  /** The (up to) 32 KiB of input just before the block; empty for the first. */
  window: Uint8Array;
  level: ZlibLevel;
  /** The last block ends the deflate stream (BFINAL); the others end byte-aligned. */
  last: boolean;
}

/** One compressed block: what a deflate worker posts back. */
export interface DeflatedBlock {
  /**
   * Raw deflate bytes, to be written in block order after the zlib header.
   * They own their whole buffer, so it can be transferred between threads.
   */
  deflated: Uint8Array;
  /** Adler-32 of the raw block, for adler32Combine. */
  adler32: number;
  /** Length of the raw block, for adler32Combine. */
  rawLength: number;
}
