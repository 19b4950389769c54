/**
 * mkimage's payload encoders: how the raw blocks it reads become the bytes
 * after the header, and the header version and flags that say so. Stored
 * (the bytes as they are); zlib, one stream compressed in parallel on a pool
 * of deflate threads (lib/image/zlib-stream.ts explains how); zstd, one
 * independent frame per block, compressed on a pool of threads and followed
 * by a seek table (lib/image/zstd-seekable.ts).
 *
 * The blocks arrive in shared memory (lib/image/block-buffers.ts), so a pool
 * thread reads a block where it lies and nothing but the compressed bytes
 * crosses threads. An encoder gives each block back once its thread has
 * answered, and only a few blocks per thread are in flight, so memory stays
 * the same whatever the image size.
 */

import { runInOrder, WorkerPool } from "@ramdisk-tools/threads/pool.ts";
import { BlockBuffers } from "./block-buffers.ts";
import { FLAG_COMPRESSED, FLAG_ZSTD, VERSION, ZSTD_VERSION } from "./format.ts";
import type { MakeThreads } from "./threads.ts";
import {
  ADLER32_EMPTY,
  adler32Combine,
  type DeflatedBlock,
  type DeflateJob,
  nextWindow,
  type ZlibLevel,
  zlibHeader,
  zlibTrailer,
} from "./zlib-stream.ts";
import type { CompressedBlock, ZstdBlockJob } from "./zstd-frames.ts";
import { encodeSeekTable, frameCapacity, type SeekTableEntry, ZSTD_BLOCK_SIZE } from "./zstd-seekable.ts";

/** How the payload after the header is encoded. */
export type Compression =
  | { codec: "stored" }
  | {
      codec: "zlib";
      level: ZlibLevel;
      /** Deflate worker threads. */
      jobs: number;
      /** Raw bytes per block; ZLIB_BLOCK_SIZE unless a test wants many small blocks. */
      blockSize?: number;
    }
  | {
      codec: "zstd";
      /** zstd level, ZSTD_MIN_LEVEL to ZSTD_MAX_LEVEL (lib/image/zstd-seekable.ts); ZSTD_DEFAULT_LEVEL is mkimage's default. */
      level: number;
      /** Compressing worker threads. */
      jobs: number;
      /** Raw bytes per block, hence per frame; ZSTD_BLOCK_SIZE unless a test wants many small blocks. */
      blockSize?: number;
    };

/**
 * Raw bytes per zlib block, the unit of work handed to a deflate thread. The
 * stream itself does not depend on it (lib/image/zlib-stream.ts flushes every
 * 128 KiB inside a block), only the cost of handing work around does.
 * Measured on 256 MiB with 2 threads: the main thread spent about 0.8 s of
 * CPU (mostly hashing, reading and writing) with blocks of 128 KiB, 1 MiB or
 * 4 MiB alike; 1 MiB keeps messages and writes few while the memory in
 * flight (BLOCKS_IN_FLIGHT_PER_JOB blocks per thread) and the wait for the
 * last block stay small.
 */
export const ZLIB_BLOCK_SIZE = 1024 * 1024;
/** The stored codec only copies: larger reads and writes cost fewer system calls. */
const STORED_BLOCK_SIZE = 4 * 1024 * 1024;
/**
 * Default compressing threads: one per CPU, at most 32. Each worker costs about
 * 6 MiB (its own heap and a few blocks), so the cap keeps a many-core build
 * machine under the 512 MiB peak this tool aims at; beyond that many, the
 * main thread's reading (and the hash thread, about 1.9 GB/s) is the limit anyway.
 */
export const DEFAULT_JOBS = Math.min(navigator.hardwareConcurrency, 32);
/** Most compressing threads a user may ask for. */
export const MAX_JOBS = 256;
/** Blocks queued or being compressed per worker: enough that none waits for the reader. */
const BLOCKS_IN_FLIGHT_PER_JOB = 4;
/**
 * Raw bytes queued or being compressed at once, whatever the threads and
 * block size (each such block also has a frame buffer of about its size):
 * 32 threads with 4 MiB zstd blocks would otherwise hold 1 GiB. Fewer
 * blocks than threads leaves threads idle rather than passing the memory
 * this tool aims at.
 */
const IN_FLIGHT_BYTES = 128 * 1024 * 1024;

/** A block of the raw image as read, in shared memory; `last` is true for the block that ends it. */
export interface RawBlock {
  bytes: Uint8Array;
  last: boolean;
}

/**
 * A payload encoding: how raw blocks become the bytes after the header, and
 * the header version and flags that say so. A new codec is one more
 * implementation.
 */
export interface PayloadEncoder {
  version: number;
  flags: bigint;
  /** Raw bytes per block read from the input. */
  blockSize: number;
  /**
   * Encode `blocks` in order, passing the payload to `write` in order, and
   * giving each block to `buffers` once done with it.
   */
  encode(
    blocks: AsyncIterable<RawBlock>,
    write: (bytes: Uint8Array) => Promise<void>,
    buffers: BlockBuffers,
  ): Promise<void>;
}

/**
 * The encoder for `compression`, whose pool threads start from `threads`
 * (the zlib or zstd one).
 *
 * @example const encoder = encoderFor({ codec: "zstd", level: 3, jobs: 2 }, IMAGE_THREADS);
 */
export function encoderFor(compression: Compression, threads: MakeThreads): PayloadEncoder {
  switch (compression.codec) {
    case "stored":
      return storedEncoder;
    case "zlib":
      return zlibEncoder(
        compression.level,
        compression.jobs,
        compression.blockSize ?? ZLIB_BLOCK_SIZE,
        threads.zlibDeflate,
      );
    case "zstd":
      return zstdEncoder(
        compression.level,
        compression.jobs,
        compression.blockSize ?? ZSTD_BLOCK_SIZE,
        threads.zstdFrames,
      );
  }
}

/** The raw image as it is: `data_size == image_size` (format.md). */
const storedEncoder: PayloadEncoder = {
  version: VERSION,
  flags: 0n,
  blockSize: STORED_BLOCK_SIZE,
  async encode(blocks, write, buffers) {
    for await (const block of blocks) {
      await write(block.bytes);
      buffers.give(block.bytes);
    }
  },
};

/**
 * Run `blocks` (of up to `blockSize` bytes) through a pool of `jobs` threads
 * started from `entryPoint`, results in block order.
 */
async function onPool<Job, Result>(
  entryPoint: string,
  jobs: number,
  blockSize: number,
  blocks: AsyncIterable<RawBlock>,
  toJob: (block: RawBlock) => { job: Job; transfer?: Bun.Transferable[] },
  take: (result: Result, block: RawBlock) => Promise<void>,
): Promise<void> {
  const pool = new WorkerPool<Job, Result>(entryPoint, jobs);
  try {
    const inFlight = Math.max(2, Math.min(jobs * BLOCKS_IN_FLIGHT_PER_JOB, Math.floor(IN_FLIGHT_BYTES / blockSize)));
    await runInOrder(pool, blocks, inFlight, toJob, take);
  } finally {
    pool.close();
  }
}

/** One zlib stream, compressed in parallel (lib/image/zlib-stream.ts). */
function zlibEncoder(level: ZlibLevel, jobs: number, blockSize: number, entryPoint: string): PayloadEncoder {
  return {
    version: VERSION,
    flags: FLAG_COMPRESSED,
    blockSize,
    async encode(blocks, write, buffers) {
      await write(zlibHeader(level));
      let adler = ADLER32_EMPTY;
      let window: Uint8Array = new Uint8Array(0);
      await onPool<DeflateJob, DeflatedBlock>(
        entryPoint,
        jobs,
        blockSize,
        blocks,
        ({ bytes, last }) => {
          const job: DeflateJob = { block: bytes, window, level, last };
          window = nextWindow(window, bytes);
          return { job, transfer: [job.window.buffer as ArrayBuffer] };
        },
        async (done, block) => {
          buffers.give(block.bytes);
          await write(done.deflated);
          adler = adler32Combine(adler, done.adler32, done.rawLength);
        },
      );
      await write(zlibTrailer(adler));
    },
  };
}

/**
 * Seekable zstd (docs/format.md, "The zstd variant"): one independent frame
 * per block, each compressed by whichever worker is free, written in order,
 * then the seek table of their sizes and checksums (lib/image/zstd-seekable.ts).
 * Frames share no history, so unlike zlib no window travels with a block.
 * Frames come back in buffers of their own, which go out again with later
 * blocks.
 */
function zstdEncoder(level: number, jobs: number, blockSize: number, entryPoint: string): PayloadEncoder {
  return {
    version: ZSTD_VERSION,
    flags: FLAG_ZSTD,
    blockSize,
    async encode(blocks, write, buffers) {
      const entries: SeekTableEntry[] = [];
      const frameBuffers = new BlockBuffers(frameCapacity(blockSize));
      await onPool<ZstdBlockJob, CompressedBlock>(
        entryPoint,
        jobs,
        blockSize,
        blocks,
        ({ bytes }) => {
          const out = frameBuffers.take();
          return { job: { raw: bytes, level, out }, transfer: [out.buffer as ArrayBuffer] };
        },
        async (done, block) => {
          buffers.give(block.bytes);
          await write(done.frame);
          entries.push(done.entry);
          frameBuffers.give(done.frame);
        },
      );
      await write(encodeSeekTable(entries));
    },
  };
}
