/**
 * The mkimage job: wrap a raw pool file into a boot image (format.md) and
 * write its checksum file, without ever leaving a half-written file at
 * either path.
 *
 * The input is read once, in blocks, on the main thread, which hashes each
 * block with SHA-256 as it arrives and hands it to the payload codec: stored
 * (the bytes as they are) or zlib, which compresses on a pool of worker
 * threads (lib/zlib-stream.ts explains how one zlib stream is made in
 * parallel). Only a few blocks per worker are in flight at any time, so
 * memory stays the same whatever the image size. Payload bytes go, in order,
 * to a temporary file beside the output, starting after the header; the
 * 4096-byte header is written last, at offset 0, once the sizes and the
 * checksum are known. The file is then synced and renamed over the output,
 * so a reader sees either the old file or the complete new one. Any failure,
 * and SIGINT, SIGTERM or SIGHUP, removes the temporary files.
 *
 * Everything the sled kernel would refuse is refused before any work starts
 * (format.md, "What the sled kernel accepts"); what only stops a netboot is
 * reported as a warning, since the image is still good for disk and recovery.
 */

import { randomBytes } from "node:crypto";
import { type FileHandle, open, realpath, rename, stat } from "node:fs/promises";
import { unlinkSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { getSystemErrorMessage } from "node:util";
import { UserError } from "./cli.ts";
import {
  DEFAULT_DATASET,
  encodeHeader,
  encodeName,
  FLAG_COMPRESSED,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  KERNEL_MAX_IMAGE_SIZE,
  KERNEL_MIN_IMAGE_SIZE,
  MIB,
  netbootRefusals,
  VERSION,
} from "./format.ts";
import { startProgress } from "./progress.ts";
import {
  ADLER32_EMPTY,
  adler32Combine,
  type DeflatedBlock,
  type DeflateJob,
  nextWindow,
  zlibHeader,
  zlibTrailer,
  type ZlibLevel,
} from "./zlib-stream.ts";

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
 * Default deflate threads: one per CPU, at most 32. Each worker costs about
 * 6 MiB (its own heap and a few blocks), so the cap keeps a many-core build
 * machine under the 512 MiB peak this tool aims at; beyond that many, the
 * main thread's reading and hashing (about 1.5 GB/s) is the limit anyway.
 */
export const DEFAULT_JOBS = Math.min(navigator.hardwareConcurrency, 32);
/** Most deflate threads a user may ask for. */
export const MAX_JOBS = 256;
/** Blocks queued or being compressed per worker: enough that none waits for the reader. */
const BLOCKS_IN_FLIGHT_PER_JOB = 4;

const DEFLATE_WORKER = new URL("../workers/deflate.ts", import.meta.url).href;

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
    const checksumFile = options.checksumFile === undefined ? undefined : await resolveTarget("checksum file", options.checksumFile);
    checkDistinct(input, output, checksumFile);
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

/** An error from the file system, as words: "no such file or directory". */
function systemReason(error: unknown): string {
  const errno = (error as NodeJS.ErrnoException).errno;
  if (typeof errno === "number") return getSystemErrorMessage(errno < 0 ? errno : -errno);
  return error instanceof Error ? error.message : String(error);
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

/** The sled kernel's limits on image_size (format.md), checked before any work. */
function checkSizes(imageSize: number, targetSize: number) {
  if (imageSize < KERNEL_MIN_IMAGE_SIZE) {
    throw new UserError(
      `image size of ${imageSize} bytes is smaller than ${KERNEL_MIN_IMAGE_SIZE} bytes, the least the sled kernel accepts`,
    );
  }
  if (imageSize > KERNEL_MAX_IMAGE_SIZE) {
    throw new UserError(
      `image size of ${imageSize} bytes is larger than ${KERNEL_MAX_IMAGE_SIZE} bytes (4 GiB), the most the sled kernel accepts`,
    );
  }
  if (imageSize > targetSize) {
    throw new UserError(
      `image size of ${imageSize} bytes is larger than target size of ${targetSize} bytes (-s ${targetSize / MIB} MiB)`,
    );
  }
}

/** A path to write, with symbolic links resolved (the file they name is replaced, not the link). */
interface Target {
  path: string;
  what: string;
  resolved: string;
  /** Device and inode when the file already exists, to catch hard links to the input. */
  existing?: { dev: number; ino: number };
}

async function resolveTarget(what: string, path: string): Promise<Target> {
  let resolved: string;
  try {
    resolved = await realpath(path);
  } catch {
    try {
      resolved = join(await realpath(dirname(path)), basename(path));
    } catch (error) {
      throw new UserError(`cannot write ${what} ${path}: directory ${dirname(path)}: ${systemReason(error)}`);
    }
  }
  const existing = await stat(resolved).catch(() => undefined);
  if (existing?.isDirectory()) throw new UserError(`${what} ${path} is a directory`);
  return { path, what, resolved, ...(existing ? { existing: { dev: existing.dev, ino: existing.ino } } : {}) };
}

function checkDistinct(input: Input, output: Target, checksumFile: Target | undefined) {
  const isInput = (target: Target) =>
    target.resolved === input.realPath || (target.existing?.dev === input.dev && target.existing.ino === input.ino);
  for (const target of [output, checksumFile]) {
    if (target && isInput(target)) {
      throw new UserError(`${target.what} ${target.path} is the input file ${input.path}; refusing to overwrite it`);
    }
  }
  if (checksumFile && checksumFile.resolved === output.resolved) {
    throw new UserError(`checksum file ${checksumFile.path} is the same file as output ${output.path}`);
  }
}

/**
 * A file being written under a temporary name beside its target (same
 * directory, hence same file system, so the final rename is atomic).
 */
class PendingFile {
  private constructor(
    readonly target: Target,
    readonly temp: string,
    readonly handle: FileHandle,
  ) {}

  static async create(target: Target): Promise<PendingFile> {
    const temp = join(dirname(target.resolved), `.${basename(target.resolved)}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
    try {
      return new PendingFile(target, temp, await open(temp, "wx"));
    } catch (error) {
      throw new UserError(`cannot write ${target.what} ${target.path}: ${systemReason(error)}`);
    }
  }

  async write(bytes: Uint8Array, position: number): Promise<void> {
    await this.failingAsUser(async () => {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, position + done);
        done += bytesWritten;
      }
    });
  }

  /** Make the contents durable and close; the file keeps its temporary name. */
  async finish(): Promise<void> {
    await this.failingAsUser(async () => {
      await this.handle.sync();
      await this.handle.close();
    });
  }

  /** Rename over the target and make the rename itself durable. */
  async publish(): Promise<void> {
    await this.failingAsUser(() => rename(this.temp, this.target.resolved));
    const directory = await open(dirname(this.target.resolved), "r");
    try {
      await directory.sync();
    } catch {
      // Some file systems cannot sync a directory; the rename has happened either way.
    } finally {
      await directory.close();
    }
  }

  /** Remove the temporary file; synchronous, so it also works from a signal handler. */
  discard(): void {
    try {
      unlinkSync(this.temp);
    } catch {
      // Already renamed or never fully created: nothing to remove.
    }
  }

  /** Run `work`, reporting a file system error as one line naming the file (e.g. a full disk). */
  private async failingAsUser(work: () => Promise<void>): Promise<void> {
    try {
      await work();
    } catch (error) {
      throw new UserError(`cannot write ${this.target.what} ${this.target.path}: ${systemReason(error)}`);
    }
  }
}

/**
 * Remove `files` and die of the same signal if the user interrupts, so a
 * build never finds a stray temporary file. Returns the function that stops
 * watching.
 */
function discardOnSignal(files: PendingFile[]): () => void {
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  const onSignal = (signal: NodeJS.Signals) => {
    for (const file of files) file.discard();
    stop();
    // Re-raised with no handler left, the signal ends the process the default way (status 128 + n).
    process.kill(process.pid, signal);
  };
  const stop = () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
  for (const signal of signals) process.on(signal, onSignal);
  return stop;
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
    const image = await PendingFile.create(output);
    pending.push(image);
    const codec = codecFor(options.compression);
    const hasher = new Bun.CryptoHasher("sha256");
    const progress = startProgress(options.compression.codec === "stored" ? "copying" : "compressing", input.size);
    let position = HEADER_SIZE;
    try {
      await codec.encode(readBlocks(input, codec, hasher, (done) => progress.update(done)), async (bytes) => {
        await image.write(bytes, position);
        position += bytes.length;
      });
    } finally {
      progress.finish();
    }
    const sha256 = new Uint8Array(hasher.digest());
    const header: Header = {
      version: VERSION,
      flags: codec.flags,
      dataSize: position - HEADER_SIZE,
      imageSize: input.size,
      targetSize: options.targetSize,
      sha256,
      dataset,
      imageName: options.imageName,
    };
    await image.write(encodeHeader(header), 0);
    await image.finish();
    if (checksumFile) {
      const checksum = await PendingFile.create(checksumFile);
      pending.push(checksum);
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
    await Promise.all(pending.map((file) => file.handle.close().catch(() => {})));
  }
}

/** A block of the raw image as read; `last` is true for the block that ends it. */
interface RawBlock {
  bytes: Uint8Array;
  last: boolean;
}

/**
 * Read exactly `input.size` bytes in blocks of `codec.blockSize`, hashing
 * them in order. The next block is read while the caller works on this one.
 * Unless the codec keeps blocks, two buffers take turns (a block is valid
 * until the next is asked for): fresh multi-MiB buffers would cost a page
 * fault per 4 KiB, more than the copy itself. A file that shrinks or grows
 * while being read is refused: its header would describe bytes that are not
 * the ones written.
 */
async function* readBlocks(
  input: Input,
  codec: Pick<PayloadCodec, "blockSize" | "keepsBlocks">,
  hasher: Bun.CryptoHasher,
  onProgress: (done: number) => void,
): AsyncGenerator<RawBlock> {
  const turns = codec.keepsBlocks ? [] : [new Uint8Array(codec.blockSize), new Uint8Array(codec.blockSize)];
  let turn = 0;
  const readAt = async (offset: number): Promise<Uint8Array> => {
    const length = Math.min(codec.blockSize, input.size - offset);
    const bytes = codec.keepsBlocks ? new Uint8Array(length) : turns[turn++ % 2]!.subarray(0, length);
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await input.handle.read(bytes, filled, length - filled, offset + filled).catch((error) => {
        throw new UserError(`cannot read input ${input.path}: ${systemReason(error)}`);
      });
      if (bytesRead === 0) {
        throw new UserError(`input ${input.path} shrank from ${input.size} to ${offset + filled} bytes while being read`);
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
 * the header flags that say so. A new codec is one more implementation.
 */
interface PayloadCodec {
  flags: bigint;
  /** Raw bytes per block read from the input. */
  blockSize: number;
  /** Whether blocks outlive the next read (sent to worker threads), so each needs a buffer of its own. */
  keepsBlocks: boolean;
  /** Encode `blocks` in order, passing the payload to `write` in order. */
  encode(blocks: AsyncIterable<RawBlock>, write: (bytes: Uint8Array) => Promise<void>): Promise<void>;
}

function codecFor(compression: Compression): PayloadCodec {
  switch (compression.codec) {
    case "stored":
      return storedCodec;
    case "zlib":
      return zlibCodec(compression.level, compression.jobs, compression.blockSize ?? ZLIB_BLOCK_SIZE);
  }
}

/** The raw image as it is: `data_size == image_size` (format.md). */
const storedCodec: PayloadCodec = {
  flags: 0n,
  blockSize: STORED_BLOCK_SIZE,
  keepsBlocks: false,
  async encode(blocks, write) {
    for await (const block of blocks) await write(block.bytes);
  },
};

/** One zlib stream, compressed in parallel (lib/zlib-stream.ts). */
function zlibCodec(level: ZlibLevel, jobs: number, blockSize: number): PayloadCodec {
  return {
    flags: FLAG_COMPRESSED,
    blockSize,
    keepsBlocks: true,
    async encode(blocks, write) {
      const pool = new WorkerPool<DeflateJob, DeflatedBlock>(DEFLATE_WORKER, jobs);
      try {
        await write(zlibHeader(level));
        let adler = ADLER32_EMPTY;
        const inFlight: Promise<DeflatedBlock>[] = [];
        const writeOldest = async () => {
          const done = await inFlight.shift()!;
          await write(done.deflated);
          adler = adler32Combine(adler, done.adler32, done.rawLength);
        };
        let window: Uint8Array = new Uint8Array(0);
        for await (const { bytes, last } of blocks) {
          const job: DeflateJob = { block: bytes, window, level, last };
          // The next window is taken before the block's buffer is transferred away.
          window = nextWindow(window, bytes);
          const result = pool.run(job, [bytes.buffer as ArrayBuffer, job.window.buffer as ArrayBuffer]);
          // Failures surface when the block's turn to be written comes; until then, keep them from
          // counting as unhandled.
          result.catch(() => {});
          inFlight.push(result);
          while (inFlight.length >= jobs * BLOCKS_IN_FLIGHT_PER_JOB) await writeOldest();
        }
        while (inFlight.length > 0) await writeOldest();
        await write(zlibTrailer(adler));
      } finally {
        pool.close();
      }
    },
  };
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
