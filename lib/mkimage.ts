/**
 * The mkimage job: wrap a raw pool file into a boot image (format.md) and
 * write its checksum file, without ever leaving a half-written file at
 * either path.
 *
 * The input is read once, in blocks, on the main thread, which hashes each
 * block with SHA-256 as it arrives and hands it to the payload codec: stored
 * (the bytes as they are); zlib, which compresses on a pool of worker
 * threads (lib/zlib-stream.ts explains how one zlib stream is made in
 * parallel); or zstd, whose blocks are independent frames compressed on the
 * same kind of pool and followed by a seek table (lib/zstd-seekable.ts; a
 * zstd image has its own header version, docs/format.md). Only a few blocks
 * per worker are in flight at any time, so memory stays the same whatever
 * the image size. Payload bytes go, in order, to a temporary file beside the
 * output (lib/pending-file.ts), starting after the header; the 4096-byte
 * header is written last, at offset 0, once the sizes and the checksum are
 * known. The file is then synced and renamed over the output, so a reader
 * sees either the old file or the complete new one. Any failure, and
 * SIGINT, SIGTERM or SIGHUP, removes the temporary files.
 *
 * Everything the sled kernel would refuse is refused before any work starts
 * (format.md, "What the sled kernel accepts"); what only stops a netboot is
 * reported as a warning, since the image is still good for disk and recovery.
 */

import { type FileHandle, open, realpath, stat } from "node:fs/promises";
import { UserError } from "./cli.ts";
import {
  DEFAULT_DATASET,
  encodeHeader,
  encodeName,
  FLAG_COMPRESSED,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  KERNEL_REFUSES,
  kernelRefusals,
  MIB,
  netbootRefusals,
  payloadSizeRefusal,
  VERSION,
} from "./format.ts";
import { discardOnSignal, isSameFile, PendingFile, resolveTarget, systemReason, type Target } from "./pending-file.ts";
import { startProgress } from "./progress.ts";
import { workerUrl } from "./workers.ts";
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
import { FLAG_ZSTD, ZSTD_BLOCK_SIZE, ZSTD_BOOT_NOTE, ZSTD_VERSION } from "./zstd-image.ts";
import {
  type CompressedBlock,
  encodeSeekTable,
  frameCapacity,
  type SeekTableEntry,
  type ZstdBlockJob,
} from "./zstd-seekable.ts";

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
      /** zstd level, MIN_LEVEL to MAX_LEVEL (lib/zstd-seekable.ts); ZSTD_DEFAULT_LEVEL is mkimage's default. */
      level: number;
      /** Compressing worker threads. */
      jobs: number;
      /** Raw bytes per block, hence per frame; ZSTD_BLOCK_SIZE unless a test wants many small blocks. */
      blockSize?: number;
    };

/** What makeImage needs: the mkimage command line, in bytes and names. */
export interface MakeImageOptions {
  /** The raw pool file (`-i`). */
  input: string;
  /** The boot image to write (`-o`); replaced atomically if it exists. */
  output: string;
  /** Where to write the 32 raw bytes of the SHA-256 (`-O`), if anywhere. */
  checksumFile?: string;
  /** Ramdisk size in bytes (`-s` MiB times MIB). */
  targetSize: number;
  /** Image name (`-N`), at most 127 bytes. */
  imageName: string;
  /** Dataset name, at most 127 bytes; DEFAULT_DATASET if absent. */
  dataset?: string;
  compression: Compression;
  /** Told about anything that is written anyway but deserves a word (e.g. cannot be netbooted). */
  onWarning?: (message: string) => void;
}

/**
 * Raw bytes per zlib block, the unit of work handed to a deflate thread. The
 * stream itself does not depend on it (lib/zlib-stream.ts flushes every
 * 128 KiB inside a block), only the cost of handing work around does.
 * Measured on 256 MiB with 2 threads: the main thread spent about 0.8 s of
 * CPU (mostly hashing, reading and writing) with blocks of 128 KiB, 1 MiB or
 * 4 MiB alike; 1 MiB keeps messages and writes few while the memory in
 * flight (BLOCKS_IN_FLIGHT_PER_JOB blocks per thread) and the wait for the
 * last block stay small.
 */
export const ZLIB_BLOCK_SIZE = 1024 * 1024;
/** The stored codec only copies: larger reads and writes cost fewer system calls. */
const STORED_BLOCK_SIZE = 4 * MIB;
/**
 * Default compressing threads: one per CPU, at most 32. Each worker costs about
 * 6 MiB (its own heap and a few blocks), so the cap keeps a many-core build
 * machine under the 512 MiB peak this tool aims at; beyond that many, the
 * main thread's reading and hashing (about 1.5 GB/s) is the limit anyway.
 */
export const DEFAULT_JOBS = Math.min(navigator.hardwareConcurrency, 32);
/** Most compressing threads a user may ask for. */
export const MAX_JOBS = 256;
/** Blocks queued or being compressed per worker: enough that none waits for the reader. */
const BLOCKS_IN_FLIGHT_PER_JOB = 4;

const DEFLATE_WORKER = workerUrl("deflate").href;
const ZSTD_BLOCK_WORKER = workerUrl("zstd-block").href;

/**
 * Make the boot image `options.output` from the raw pool `options.input`,
 * and its checksum file if asked. Returns the header written. Throws
 * UserError (exit 1) with a one-line message, leaving no output and no
 * temporary file, for anything it refuses or fails at.
 *
 * @example
 * const header = await makeImage({ input: "pool.raw", output: "pool.img", checksumFile: "pool.csum",
 *   targetSize: 64 * MIB, imageName: "testing", compression: { codec: "zlib", level: 9, jobs: 2 } });
 */
export async function makeImage(options: MakeImageOptions): Promise<Header> {
  const dataset = options.dataset ?? DEFAULT_DATASET;
  checkName("image name", options.imageName);
  checkName("dataset name", dataset);
  const input = await openInput(options.input);
  try {
    checkSizes(input.size, options.targetSize);
    const output = await resolveTarget("output", options.output);
    const checksumFile =
      options.checksumFile === undefined ? undefined : await resolveTarget("checksum file", options.checksumFile);
    checkDistinct(input, output, checksumFile);
    if (options.compression.codec === "zstd") options.onWarning?.(ZSTD_BOOT_NOTE);
    for (const reason of netbootRefusals({ imageSize: input.size, targetSize: options.targetSize })) {
      options.onWarning?.(`the image cannot be netbooted: ${reason}`);
    }
    return await writeImage(input, output, checksumFile, options, dataset);
  } finally {
    await input.handle.close();
  }
}

function checkName(what: string, name: string) {
  try {
    encodeName(what, name);
  } catch (error) {
    if (error instanceof ImageFormatError) throw new UserError(error.message);
    throw error;
  }
}

interface Input {
  path: string;
  realPath: string;
  handle: FileHandle;
  /** The size when opened: exactly this many bytes are read, or the job fails. */
  size: number;
  dev: number;
  ino: number;
}

async function openInput(path: string): Promise<Input> {
  // Look before opening: opening a FIFO would block, and a directory is a common slip.
  let stats;
  try {
    stats = await stat(path);
  } catch (error) {
    throw new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
  if (stats.isDirectory()) throw new UserError(`input ${path} is a directory, not a raw pool file`);
  if (!stats.isFile()) throw new UserError(`input ${path} is not a regular file`);
  let handle;
  try {
    handle = await open(path, "r");
  } catch (error) {
    throw new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
  try {
    // The size that counts is that of the file opened, whatever the path points at now.
    const opened = await handle.stat();
    if (!opened.isFile()) throw new UserError(`input ${path} is not a regular file`);
    return { path, realPath: await realpath(path), handle, size: opened.size, dev: opened.dev, ino: opened.ino };
  } catch (error) {
    await handle.close();
    throw error instanceof UserError ? error : new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
}

/** The sled kernel's rules on the sizes (lib/format.ts kernelRefusals), checked before any work. */
function checkSizes(imageSize: number, targetSize: number) {
  const reasons = kernelRefusals({ imageSize, targetSize });
  if (reasons.length > 0) throw new UserError(`${KERNEL_REFUSES}: ${reasons.join("; ")}`);
}

function checkDistinct(input: Input, output: Target, checksumFile: Target | undefined) {
  for (const target of [output, checksumFile]) {
    if (target && isSameFile(target, input)) {
      throw new UserError(`${target.what} ${target.path} is the input file ${input.path}; refusing to overwrite it`);
    }
  }
  if (checksumFile && checksumFile.resolved === output.resolved) {
    throw new UserError(`checksum file ${checksumFile.path} is the same file as output ${output.path}`);
  }
}

async function writeImage(
  input: Input,
  output: Target,
  checksumFile: Target | undefined,
  options: MakeImageOptions,
  dataset: string,
): Promise<Header> {
  const pending: PendingFile[] = [];
  const stopWatching = discardOnSignal(pending);
  try {
    const image = await PendingFile.create(output, pending);
    const codec = codecFor(options.compression);
    const hasher = new Bun.CryptoHasher("sha256");
    const progress = startProgress(options.compression.codec === "stored" ? "copying" : "compressing", input.size);
    let position = HEADER_SIZE;
    try {
      const buffers = new BlockBuffers(codec.blockSize);
      const blocks = readBlocks(input, codec.blockSize, buffers, hasher, (done) => progress.update(done));
      await codec.encode(
        blocks,
        async (bytes) => {
          await image.write(bytes, position);
          position += bytes.length;
        },
        buffers,
      );
    } finally {
      progress.finish();
    }
    const sha256 = new Uint8Array(hasher.digest());
    const header: Header = {
      version: codec.version,
      flags: codec.flags,
      dataSize: position - HEADER_SIZE,
      imageSize: input.size,
      targetSize: options.targetSize,
      sha256,
      dataset,
      imageName: options.imageName,
    };
    // Never write what lookimage refuses: zlib makes input that does not compress a little larger.
    const refusal = payloadSizeRefusal(header);
    if (refusal) {
      throw new UserError(
        `cannot write a compressed image that lookimage refuses (${refusal}): ` +
          `${input.path} does not compress; drop -z for a plain image`,
      );
    }
    await image.write(encodeHeader(header), 0);
    await image.finish();
    if (checksumFile) {
      const checksum = await PendingFile.create(checksumFile, pending);
      await checksum.write(sha256, 0);
      await checksum.finish();
    }
    for (const file of pending) await file.publish();
    return header;
  } catch (error) {
    for (const file of pending) file.discard();
    throw error;
  } finally {
    stopWatching();
    await Promise.all(pending.map((file) => file.close()));
  }
}

/** A block of the raw image as read; `last` is true for the block that ends it. */
interface RawBlock {
  bytes: Uint8Array;
  last: boolean;
}

/**
 * Buffers of one size, used again and again: for raw blocks (a codec gives
 * each block's buffer back once done with it, and the reader fills it
 * again) and for zstd frames. A fresh megabyte buffer costs Bun a page fault
 * per 4 KiB and its zeroing: measured at 0.9 s of CPU per 256 MiB on this
 * machine, more than zstd level 2 takes to compress the same bytes. A codec
 * that does not get its blocks back (zlib's workers keep them) gives
 * nothing, and every block is read into a fresh buffer.
 */
class BlockBuffers {
  readonly #spare: ArrayBuffer[] = [];

  constructor(readonly size: number) {}

  /** A buffer of `size` bytes, seen as its first `length`: a spare one when there is one. */
  take(length = this.size): Uint8Array {
    return new Uint8Array(this.#spare.pop() ?? new ArrayBuffer(this.size), 0, length);
  }

  /** Done with `bytes`: its buffer may be taken again. */
  give(bytes: Uint8Array): void {
    if (bytes.buffer.byteLength === this.size) this.#spare.push(bytes.buffer as ArrayBuffer);
  }
}

/**
 * Read exactly `input.size` bytes in blocks of `blockSize`, hashing them in
 * order. The next block is read while the caller works on this one,
 * so a block's buffer is filled again only once the codec has given it back
 * (BlockBuffers). A file that shrinks or grows while being read is refused:
 * its header would describe bytes that are not the ones written.
 */
async function* readBlocks(
  input: Input,
  blockSize: number,
  buffers: BlockBuffers,
  hasher: Bun.CryptoHasher,
  onProgress: (done: number) => void,
): AsyncGenerator<RawBlock> {
  const readAt = async (offset: number): Promise<Uint8Array> => {
    const length = Math.min(blockSize, input.size - offset);
    const bytes = buffers.take(length);
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await input.handle.read(bytes, filled, length - filled, offset + filled).catch((error) => {
        throw new UserError(`cannot read input ${input.path}: ${systemReason(error)}`);
      });
      if (bytesRead === 0) {
        throw new UserError(
          `input ${input.path} shrank from ${input.size} to ${offset + filled} bytes while being read`,
        );
      }
      filled += bytesRead;
    }
    return bytes;
  };
  let offset = 0;
  let reading = readAt(0);
  while (offset < input.size) {
    const bytes = await reading;
    offset += bytes.length;
    const last = offset === input.size;
    if (last) {
      const { bytesRead } = await input.handle.read(new Uint8Array(1), 0, 1, offset);
      if (bytesRead > 0) throw new UserError(`input ${input.path} grew beyond ${input.size} bytes while being read`);
    } else {
      reading = readAt(offset);
      // Its failure is thrown when awaited, at the next block; until then it is not unhandled.
      reading.catch(() => {});
    }
    hasher.update(bytes);
    onProgress(offset);
    yield { bytes, last };
  }
}

/**
 * A payload encoding: how raw blocks become the bytes after the header, and
 * the header version and flags that say so. A new codec is one more
 * implementation.
 */
interface PayloadCodec {
  version: number;
  flags: bigint;
  /** Raw bytes per block read from the input. */
  blockSize: number;
  /**
   * Encode `blocks` in order, passing the payload to `write` in order, and
   * giving each block to `buffers` once done with it, if it can.
   */
  encode(
    blocks: AsyncIterable<RawBlock>,
    write: (bytes: Uint8Array) => Promise<void>,
    buffers: BlockBuffers,
  ): Promise<void>;
}

function codecFor(compression: Compression): PayloadCodec {
  switch (compression.codec) {
    case "stored":
      return storedCodec;
    case "zlib":
      return zlibCodec(compression.level, compression.jobs, compression.blockSize ?? ZLIB_BLOCK_SIZE);
    case "zstd":
      return zstdCodec(compression.level, compression.jobs, compression.blockSize ?? ZSTD_BLOCK_SIZE);
  }
}

/** The raw image as it is: `data_size == image_size` (format.md). */
const storedCodec: PayloadCodec = {
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

/** One zlib stream, compressed in parallel (lib/zlib-stream.ts). */
function zlibCodec(level: ZlibLevel, jobs: number, blockSize: number): PayloadCodec {
  return {
    version: VERSION,
    flags: FLAG_COMPRESSED,
    blockSize,
    // Blocks stay with the deflate workers, so there is nothing to give back.
    async encode(blocks, write) {
      await write(zlibHeader(level));
      let adler = ADLER32_EMPTY;
      let window: Uint8Array = new Uint8Array(0);
      await compressInOrder<DeflateJob, DeflatedBlock>(
        DEFLATE_WORKER,
        jobs,
        blocks,
        ({ bytes, last }) => {
          const job: DeflateJob = { block: bytes, window, level, last };
          // The next window is taken before the block's buffer is transferred away.
          window = nextWindow(window, bytes);
          return { job, transfer: [bytes.buffer as ArrayBuffer, job.window.buffer as ArrayBuffer] };
        },
        async (done) => {
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
 * then the seek table of their sizes and checksums (lib/zstd-seekable.ts).
 * Frames share no history, so unlike zlib no window travels with a block.
 */
function zstdCodec(level: number, jobs: number, blockSize: number): PayloadCodec {
  return {
    version: ZSTD_VERSION,
    flags: FLAG_ZSTD,
    blockSize,
    async encode(blocks, write, buffers) {
      const entries: SeekTableEntry[] = [];
      const frameBuffers = new BlockBuffers(frameCapacity(blockSize));
      await compressInOrder<ZstdBlockJob, CompressedBlock>(
        ZSTD_BLOCK_WORKER,
        jobs,
        blocks,
        ({ bytes }) => {
          const out = frameBuffers.take();
          return {
            job: { kind: "compress", raw: bytes, level, out },
            transfer: [bytes.buffer as ArrayBuffer, out.buffer as ArrayBuffer],
          };
        },
        async (done) => {
          await write(done.frame);
          entries.push(done.entry);
          buffers.give(done.raw);
          frameBuffers.give(done.frame);
        },
      );
      await write(encodeSeekTable(entries));
    },
  };
}

/**
 * Hand `blocks` to a pool of `jobs` threads running `script`, as the jobs
 * `toJob` makes of them, and pass the results to `take` in block order. At
 * most BLOCKS_IN_FLIGHT_PER_JOB blocks per thread are queued or being
 * worked on, so memory stays bounded whatever the image size.
 */
async function compressInOrder<Job, Result>(
  script: string,
  jobs: number,
  blocks: AsyncIterable<RawBlock>,
  toJob: (block: RawBlock) => { job: Job; transfer: Bun.Transferable[] },
  take: (result: Result) => Promise<void>,
): Promise<void> {
  const pool = new WorkerPool<Job, Result>(script, jobs);
  try {
    const inFlight: Promise<Result>[] = [];
    for await (const block of blocks) {
      const { job, transfer } = toJob(block);
      const result = pool.run(job, transfer);
      // Failures surface when the block's turn to be written comes; until then, keep them from
      // counting as unhandled.
      result.catch(() => {});
      inFlight.push(result);
      while (inFlight.length >= jobs * BLOCKS_IN_FLIGHT_PER_JOB) await take(await inFlight.shift()!);
    }
    while (inFlight.length > 0) await take(await inFlight.shift()!);
  } finally {
    pool.close();
  }
}

/** What a pool worker posts back: its result, or why it failed. */
export type WorkerReply<Result> = { ok: true; value: Result } | { ok: false; message: string };

interface Task<Job, Result> {
  job: Job;
  transfer: Bun.Transferable[];
  resolve: (result: Result) => void;
  reject: (error: Error) => void;
}

/**
 * Worker threads running one script, one job each at a time; jobs wait in
 * order for the first free worker. A worker that dies fails the whole pool.
 */
class WorkerPool<Job, Result> {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Task<Job, Result>>();
  private readonly waiting: Task<Job, Result>[] = [];
  private failure: Error | undefined;

  constructor(script: string, size: number) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(script);
      worker.onmessage = (event: MessageEvent<WorkerReply<Result>>) => this.settle(worker, event.data);
      worker.onerror = (event: ErrorEvent) => this.fail(new Error(`worker thread failed: ${event.message}`));
      this.workers.push(worker);
      this.idle.push(worker);
    }
  }

  run(job: Job, transfer: Bun.Transferable[]): Promise<Result> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ job, transfer, resolve, reject });
      this.dispatch();
    });
  }

  close(): void {
    this.fail(new Error("worker pool closed"));
    for (const worker of this.workers) worker.terminate();
  }

  private dispatch() {
    while (this.idle.length > 0 && this.waiting.length > 0) {
      const worker = this.idle.pop()!;
      const task = this.waiting.shift()!;
      this.busy.set(worker, task);
      worker.postMessage(task.job, task.transfer);
    }
  }

  private settle(worker: Worker, reply: WorkerReply<Result>) {
    const task = this.busy.get(worker);
    this.busy.delete(worker);
    this.idle.push(worker);
    if (reply.ok) task?.resolve(reply.value);
    else task?.reject(new Error(reply.message));
    this.dispatch();
  }

  private fail(error: Error) {
    this.failure ??= error;
    for (const task of [...this.busy.values(), ...this.waiting.splice(0)]) task.reject(this.failure);
    this.busy.clear();
  }
}
