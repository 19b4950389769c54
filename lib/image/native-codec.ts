/**
 * A node:zlib codec (zlib inflate, zstd decompress or zstd compress) run
 * synchronously on the calling thread into buffers the caller owns.
 *
 * Why not node:zlib's public streams and functions: streams inflate on
 * Bun's thread pool, with a round trip to the worker's event loop for every
 * output piece, and streams and the one-shot functions alike put each output
 * into a freshly allocated buffer, which costs Bun a page fault per 4 KiB.
 * Measured on a 256 MiB pool-like image, the inflate pipeline
 * built on a stream spent 1.3 to 1.6 s of CPU against 0.75 s for this, and
 * took 1.5 to 2 times as long; zstd frames of 1 MiB decompress at 200-450
 * MB/s with zstdDecompressSync or Bun.zstdDecompressSync and at 1.7-1.9 GB/s
 * into a recycled buffer (one thread); compressing 256 MiB in 1 MiB
 * frames at level 2 took 0.9-1.1 s of CPU with Bun.zstdCompressSync and
 * 0.65 s into a recycled buffer.
 *
 * So this drives the native handle behind a node:zlib stream with the very
 * calls Node's own `zlib.inflateSync` makes: `_handle.writeSync(flush, in,
 * inOffset, inLength, out, outOffset, outLength)`, results in `_writeState`
 * as [output room left, input left], errors through `_handle.onerror`, the
 * stream's own flush values. These are internals that Bun 1.4.5 (the
 * version package.json pins) mirrors from Node; the constructor checks they
 * are there, and tests/image/lookimage.test.ts,
 * tests/image/lookimage-zstd.test.ts and tests/image/zstd-seekable.test.ts go
 * through every path (whole, corrupt, cut short, trailing bytes, bomb).
 *
 * A zstd compressor is started over for each frame with `restartZstd`: the
 * handle's reset (ZSTD_CCtx_reset) keeps the context and its tables, which
 * spares allocating and clearing them for every block, but in Bun 1.4.5 it
 * also drops the parameters (every frame after the first came out at zstd's
 * default level 3, whatever was asked), so they are set again with the
 * handle's `init`, the call node:zlib's constructor makes. Restarted, the
 * encoder compressed 3 to 4% faster than a new one per 1 MiB block, into the
 * same bytes.
 *
 * Users: lib/image/verify.ts inflates zlib payloads with it, lib/image/zstd-frames.ts
 * compresses blocks and decompresses frames with it (compressBlock,
 * decompressBlock).
 */

import { type Inflate, type ZstdCompress, type ZstdDecompress, constants as zlibConstants } from "node:zlib";

/** One more than the highest ZSTD_c_ parameter number: the length of the array a zstd handle's init takes. */
const ZSTD_C_PARAMETERS =
  Math.max(
    ...Object.entries(zlibConstants)
      .filter(([name]) => name.startsWith("ZSTD_c_"))
      .map(([, value]) => value),
  ) + 1;

/** The library refused its input; the message is its own, with its code: "invalid distance too far back (Z_DATA_ERROR)". */
export class CodecError extends Error {
  override name = "CodecError";
}

/** The calls NativeCodec makes on the native handle behind a node:zlib stream. */
interface NativeZlibHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inputOffset: number,
    inputLength: number,
    output: Uint8Array,
    outputOffset: number,
    outputLength: number,
  ): void;
  reset(): void;
  init(
    params: Uint32Array,
    pledgedSrcSize: number | undefined,
    writeState: Uint32Array,
    onAsyncWrite: () => void,
  ): boolean;
  onerror: (message: string, errno: number, code: string) => void;
}

/** The internals of a node:zlib stream that NativeCodec drives. */
interface NativeZlibStream {
  _handle?: NativeZlibHandle;
  _writeState?: Uint32Array;
  _defaultFlushFlag?: number;
  _finishFlushFlag?: number;
  close(): void;
}

/**
 * A node:zlib codec stepped by hand into the caller's buffers (see the top
 * of this module for why).
 *
 * @example
 * const decoder = new NativeCodec(createZstdDecompress());
 * const { produced } = decoder.step(frame, out, true);
 */
export class NativeCodec {
  readonly #stream: NativeZlibStream;
  readonly #handle: NativeZlibHandle;
  readonly #state: Uint32Array;
  readonly #flush: { more: number; finish: number };
  #error: string | null = null;
  #consumed = 0;

  constructor(stream: Inflate | ZstdDecompress | ZstdCompress) {
    const internals = stream as unknown as NativeZlibStream;
    if (typeof internals._handle?.writeSync !== "function" || !(internals._writeState instanceof Uint32Array)) {
      throw new Error("this runtime's node:zlib has no synchronous codec handle (written for Bun 1.4.5)");
    }
    this.#stream = internals;
    this.#handle = internals._handle;
    this.#state = internals._writeState;
    this.#flush = {
      more: internals._defaultFlushFlag ?? zlibConstants.Z_NO_FLUSH,
      finish: internals._finishFlushFlag ?? zlibConstants.Z_FINISH,
    };
    this.#handle.onerror = (message, _errno, code) => {
      this.#error = `${message} (${code})`;
    };
  }

  /** Input bytes taken since the start (or the last reset), up to the step that failed if one did. */
  get consumed(): number {
    return this.#consumed;
  }

  /**
   * Code from `input` into `output`; `finish` says no input follows (a zlib
   * stream without its end marker is then an error; a compressor ends its
   * frame). Returns the bytes taken from `input` and written to `output`.
   * Throws CodecError when the library refuses the input.
   *
   * @example const { consumed, produced } = inflater.step(piece, out.subarray(filled), false);
   */
  step(input: Uint8Array, output: Uint8Array, finish: boolean): { consumed: number; produced: number } {
    this.#handle.writeSync(
      finish ? this.#flush.finish : this.#flush.more,
      input,
      0,
      input.length,
      output,
      0,
      output.length,
    );
    if (this.#error !== null) throw new CodecError(this.#error);
    const [outputLeft, inputLeft] = this.#state;
    const consumed = input.length - inputLeft!;
    this.#consumed += consumed;
    return { consumed, produced: output.length - outputLeft! };
  }

  /**
   * Start over, for the next independent stream or frame.
   *
   * @example decoder.reset(); decoder.step(nextFrame, out, true);
   */
  reset(): void {
    this.#handle.reset();
    this.#error = null;
    this.#consumed = 0;
  }

  /**
   * Start a zstd compressor over for the next frame, at `level`, keeping its
   * context (see the top of this module). `pledgedSrcSize` goes into the
   * frame header as its content size.
   *
   * @example encoder.restartZstd(3, block.length); encoder.step(block, out, true);
   */
  restartZstd(level: number, pledgedSrcSize: number): void {
    this.reset();
    // Unset parameters are -1 (all ones), as node:zlib's constructor fills them.
    const params = new Uint32Array(ZSTD_C_PARAMETERS).fill(0xffff_ffff);
    params[zlibConstants.ZSTD_c_compressionLevel] = level;
    if (!this.#handle.init(params, pledgedSrcSize, this.#state, () => {})) {
      throw new CodecError("zstd refused its parameters on restart");
    }
  }

  /**
   * Free the native codec.
   *
   * @example try { ... } finally { decoder.close(); }
   */
  close(): void {
    this.#stream.close();
  }
}
