/**
 * Verifying an image's payload against its header, as a pipeline of threads,
 * and writing the raw image out on the way (lookimage --extract).
 *
 * Checking an image means reading `data_size` payload bytes, decoding them
 * (nothing to do for a stored payload, inflating a zlib stream, decompressing
 * zstd frames) and hashing the `image_size` raw bytes that come out. Done one
 * after the other on one thread the time is the sum of the three; here each
 * stage has its own thread, so the time is that of the slowest stage. For a
 * stored or zlib payload the main thread reads the file and hands pieces to
 * the inflating stage (lib/image/inflate-stage.ts), which hands the raw bytes to
 * the SHA-256 stage (lib/image/hash-stage.ts); a stored payload goes from the
 * reader straight to the SHA-256 stage.
 *
 * A zlib stream is one long chain of back-references, so it is inflated on
 * one thread. Those stages are linked by bounded queues whose buffers travel
 * back to be filled again (lib/threads/piece-queue.ts), so memory in use is a few
 * pieces per queue whatever the image size, and nothing is copied between
 * threads.
 *
 * A zstd payload is a row of independent frames, one per block
 * (docs/format.md), so a few threads share them through a ring of slots in
 * shared memory, each reading the frames it takes from the file itself, and
 * one of them hashes the blocks in order, decompressing frames too whenever
 * the next block is not ready (lib/image/verify-zstd.ts). The seek table is
 * read and checked against the header before any of that
 * (lib/image/zstd-image.ts), and every block is checked against its entry.
 * The main thread only waits.
 *
 * The raw image, when asked for, is written by the thread that hashes: it
 * sees every raw byte once, in order, and writes each piece to the output's
 * temporary file before going on. The file is renamed over the
 * output only when the verdict is that the payload matches its header, so
 * a raw file exists only for an image that verified.
 *
 * The header is not trusted. The inflater is never given room for more than
 * `image_size + 1` bytes in all, so a decompression bomb stops one byte past
 * the header's claim; a zlib stream that is corrupt or ends before its end
 * marker is reported with zlib's own words; bytes after the end of the
 * stream but within `data_size` are counted and reported. A zstd frame is
 * stopped one byte past its seek table entry (decompressBlock). The byte
 * count and the SHA-256 are then checked against the header, with the messages the
 * existing Rust lookimage prints.
 */

import { open, realpath, stat } from "node:fs/promises";
import { oneLine, UserError } from "@ramdisk-tools/errors/errors.ts";
import {
  discardOnSignal,
  isSameFile,
  PendingFile,
  resolveTarget,
  type Target,
} from "@ramdisk-tools/files/pending-file.ts";
import { PieceSender, QUEUE_DEPTH } from "@ramdisk-tools/threads/piece-queue.ts";
import { HEADER_SIZE, ImageFormatError, type PayloadHeader, payloadSizeRefusal, toHex } from "./format.ts";
import type { HashOrder, HashReport, RawSink } from "./hash-stage.ts";
import type { InflateOrder, InflateReport } from "./inflate-stage.ts";
import type { VerifyThreads } from "./threads.ts";
import type { ZstdVerifyOrder, ZstdVerifyReport } from "./verify-zstd.ts";
import { payloadCodec, readSeekTable } from "./zstd-image.ts";
import { zstdRing } from "./zstd-ring.ts";
import type { SeekTable } from "./zstd-seekable.ts";

/** Payload bytes read from the file per piece, for a stored or zlib payload (a zstd thread reads whole frames). */
export const PAYLOAD_PIECE = 1024 * 1024;
/**
 * Threads verifying a zstd payload, the one that hashes included: one per
 * CPU, at most three. SHA-256 (about 1.6 GB/s here) cannot be split, and a
 * thread decompresses at 1.3-1.9 GB/s, so with two others decompressing the
 * hasher only hashes; with two threads on two cores (measured on a 256 MiB
 * image) the hasher decompresses the share the other leaves it, and a third
 * thread would only take turns with them.
 */
export const ZSTD_VERIFY_THREADS = Math.max(1, Math.min(navigator.hardwareConcurrency, 3));
/** How often the payload bytes the zstd threads have read are passed to onProgress. */
const PROGRESS_INTERVAL_MS = 100;

/** The outcome of verifying one payload. */
export interface PayloadVerdict {
  /** Raw image bytes produced (read, inflated or decompressed) before the check ended. */
  bytes: number;
  /**
   * SHA-256 of those `bytes` raw bytes; null when the payload could not be
   * read or decoded to its end, so there is no digest to compare.
   */
  sha256: Uint8Array | null;
  /** Why the payload does not match its header, on one line; null when it does. */
  error: string | null;
  /** A zstd payload's seek table, once read and found consistent with the header; else null. */
  seekTable: SeekTable | null;
}

/** The threads, reporting and tuning of verifyPayload and extractPayload. */
export interface VerifyOptions {
  /** The entry points of the threads it starts, handed down by the caller. */
  threads: VerifyThreads;
  /** Called as payload bytes are read, with the total read so far. */
  onProgress?: (payloadBytesRead: number) => void;
  /** Threads verifying a zstd payload, the one that hashes included; ZSTD_VERIFY_THREADS by default. */
  zstdThreads?: number;
}

/**
 * Verify the payload of the image file at `path` against its decoded header:
 * read it, decode it (zlib or zstd) when compressed, and check the byte
 * count and SHA-256, with reading, decoding and hashing on separate threads.
 * Problems with the payload are returned in the verdict, not thrown.
 *
 * @example
 * const verdict = await verifyPayload("pool-1m-z.img", header, { threads: IMAGE_THREADS });
 * if (verdict.error) console.error(`lookimage: ${verdict.error}`);
 */
export function verifyPayload(path: string, header: PayloadHeader, options: VerifyOptions): Promise<PayloadVerdict> {
  return runPipeline(path, header, options, null);
}

/**
 * Where lookimage --extract may write the raw image: any file but the image
 * itself (by path, through links, or a hard link to it). Throws a one-line
 * UserError otherwise, before anything is read or written.
 *
 * @example const output = await rawOutputTarget("pool.raw", "pool.img");
 */
export async function rawOutputTarget(rawPath: string, imagePath: string): Promise<Target> {
  const target = await resolveTarget("raw output", rawPath);
  const image = await stat(imagePath);
  if (isSameFile(target, { realPath: await realpath(imagePath), dev: image.dev, ino: image.ino })) {
    throw new UserError(`raw output ${rawPath} is the image ${imagePath}; refusing to overwrite it`);
  }
  return target;
}

/**
 * Verify the payload as verifyPayload does and write the raw image to
 * `output`, atomically: into a temporary file beside it, synced and renamed
 * over it only if the verdict is that the payload matches its header. On any
 * failure (a verdict against the payload, an error, SIGINT) the temporary
 * file is removed and `output` is left as it was. A file that cannot be
 * written is a thrown UserError.
 *
 * @example
 * const output = await rawOutputTarget("pool.raw", "pool.img");
 * const verdict = await extractPayload("pool.img", header, output, { threads: IMAGE_THREADS });
 */
export async function extractPayload(
  path: string,
  header: PayloadHeader,
  output: Target,
  options: VerifyOptions,
): Promise<PayloadVerdict> {
  // Watched before it exists on disk, so a signal in between leaves nothing behind.
  const watched: PendingFile[] = [];
  const stopWatching = discardOnSignal(watched);
  const file = await PendingFile.create(output, watched);
  try {
    const verdict = await runPipeline(path, header, options, {
      path: file.temp,
      name: `${output.what} ${output.path}`,
    });
    if (verdict.error === null) {
      await file.finish();
      await file.publish();
    } else {
      file.discard();
    }
    return verdict;
  } catch (error) {
    file.discard();
    throw error;
  } finally {
    stopWatching();
    await file.handle.close().catch(() => {});
  }
}

/** Build the stages for the payload's codec, run them, and judge what they report. */
async function runPipeline(
  path: string,
  header: PayloadHeader,
  options: VerifyOptions,
  sink: RawSink | null,
): Promise<PayloadVerdict> {
  const codec = payloadCodec(header);
  const refused = (error: string): PayloadVerdict => ({ bytes: 0, sha256: null, error, seekTable: null });
  let seekTable: SeekTable | null = null;
  if (codec === "zstd") {
    try {
      seekTable = await readSeekTable(Bun.file(path), header);
    } catch (error) {
      if (error instanceof ImageFormatError) return refused(error.message);
      throw error;
    }
  } else {
    const refusal = payloadSizeRefusal(header);
    if (refusal) return refused(refusal);
  }

  const stages = new StageThreads();
  let stopProgress = () => {};
  try {
    let hashed: Promise<HashReport>;
    let plan: PlannedReads | null = null;
    let inflated: Promise<InflateReport> | null = null;
    if (codec === "zstd" && seekTable) {
      const progress = new SharedArrayBuffer(BigInt64Array.BYTES_PER_ELEMENT);
      const threads = options.zstdThreads ?? ZSTD_VERIFY_THREADS;
      hashed = startZstdThreads(stages, options.threads.verifyZstd, path, seekTable, threads, progress, sink);
      if (options.onProgress) stopProgress = pollProgress(progress, options.onProgress);
    } else {
      const toHash = new MessageChannel();
      if (codec === "zlib") {
        const toInflate = new MessageChannel();
        const order: InflateOrder = { input: toInflate.port2, output: toHash.port1, imageSize: header.imageSize };
        inflated = stages.start<InflateReport>(options.threads.inflateStage, "inflate", order, [
          toInflate.port2,
          toHash.port1,
        ]);
        plan = chunked(header.dataSize, stages.sender(toInflate.port1));
      } else {
        plan = chunked(header.dataSize, stages.sender(toHash.port1));
      }
      const hashOrder: HashOrder = { input: toHash.port2, ...(sink ? { sink } : {}) };
      hashed = stages.start<HashReport>(options.threads.hashStage, "SHA-256", hashOrder, [toHash.port2]);
    }

    const reading = plan
      ? readPayload(path, header.dataSize, plan, options.onProgress).catch((error: unknown) => {
          stages.fail(oneLine(error));
        })
      : null;
    const inflateReport = inflated ? await stages.settle(inflated) : null;
    if (inflateReport?.kind === "failed") {
      return { bytes: inflateReport.produced, sha256: null, error: inflateReport.reason, seekTable };
    }
    const hashReport = await stages.settle(hashed);
    // A stopped stage leaves the reader waiting for room that never comes; stop() releases it.
    if (hashReport.stopped?.by === "sink") throw new UserError(hashReport.stopped.reason);
    if (hashReport.stopped?.by === "upstream") {
      return { bytes: hashReport.bytes, sha256: null, error: hashReport.stopped.reason, seekTable };
    }
    await reading;
    return { ...judge(header, hashReport, inflateReport), seekTable };
  } catch (error) {
    if (error instanceof StageFailure) return { bytes: 0, sha256: null, error: error.message, seekTable };
    throw error;
  } finally {
    stopProgress();
    stages.stop();
  }
}

/**
 * Start N threads verifying a zstd payload (N at most the number of frames)
 * over one ring in shared memory; the first hashes, and writes the raw image
 * to `sink` when there is one. Resolves with the hasher's report.
 */
function startZstdThreads(
  stages: StageThreads,
  entryPoint: string,
  path: string,
  table: SeekTable,
  threads: number,
  progress: SharedArrayBuffer,
  sink: RawSink | null,
): Promise<HashReport> {
  const { blocks } = table;
  const ring = zstdRing(blocks);
  const count = Math.max(1, Math.min(threads, blocks.length));
  let hashed: Promise<ZstdVerifyReport> | undefined;
  for (let thread = 0; thread < count; thread++) {
    const hasher = thread === 0;
    const order: ZstdVerifyOrder = {
      path,
      payloadStart: HEADER_SIZE,
      blocks,
      ring,
      hasher,
      ...(hasher && sink ? { sink } : {}),
      progress,
    };
    const report = stages.start<ZstdVerifyReport>(entryPoint, "zstd", order, []);
    if (hasher) hashed = report;
  }
  return hashed!.then((report) => {
    if (report.kind !== "hashed") throw new Error("the zstd hasher thread reported no hash");
    return report.report;
  });
}

/** Pass the count in `progress` (BigInt64Array element 0) to `onProgress` every so often; returns the stop. */
function pollProgress(progress: SharedArrayBuffer, onProgress: (done: number) => void): () => void {
  const done = new BigInt64Array(progress);
  const timer = setInterval(() => onProgress(Number(Atomics.load(done, 0))), PROGRESS_INTERVAL_MS);
  return () => clearInterval(timer);
}

/** Compare what the stages saw with what the header claims. */
function judge(
  header: PayloadHeader,
  hashed: HashReport,
  inflated: InflateReport | null,
): Omit<PayloadVerdict, "seekTable"> {
  const verdict = (error: string | null) => ({ bytes: hashed.bytes, sha256: hashed.sha256, error });
  if (inflated?.kind === "inflated" && inflated.consumed < header.dataSize) {
    const trailing = header.dataSize - inflated.consumed;
    return verdict(
      `zlib stream ends after ${inflated.consumed} of the ${header.dataSize} payload bytes, leaving ${trailing} trailing bytes`,
    );
  }
  if (hashed.bytes !== header.imageSize) {
    return verdict(`read ${hashed.bytes} bytes of image, but header says there should be ${header.imageSize}`);
  }
  const sum = toHex(hashed.sha256);
  const headerSum = toHex(header.sha256);
  if (sum !== headerSum) return verdict(`image sum ${sum} does not match sum from header ${headerSum}`);
  return verdict(null);
}

/** A stage's reason to stop, carried to the verdict. */
class StageFailure extends Error {
  override name = "StageFailure";
}

/**
 * The threads and queues of one verification. The first failure of any
 * stage decides the verdict and stops the rest.
 */
class StageThreads {
  readonly #workers: Worker[] = [];
  readonly #senders: PieceSender[] = [];
  #reject: (failure: StageFailure) => void = () => {};
  readonly #failed = new Promise<never>((_, reject) => (this.#reject = reject));

  constructor() {
    this.#failed.catch(() => {});
  }

  /** Start a thread from `entryPoint` with its order; resolves with its report. A thread that throws fails the pipeline. */
  start<Report>(entryPoint: string, stage: string, order: object, transfer: Bun.Transferable[]): Promise<Report> {
    const worker = new Worker(entryPoint);
    this.#workers.push(worker);
    const report = new Promise<Report>((resolve) => {
      worker.onmessage = (event: MessageEvent<Report>) => resolve(event.data);
      worker.onerror = (event: ErrorEvent) => this.fail(`${stage} worker failed: ${event.message}`);
    });
    worker.postMessage(order, transfer);
    return report;
  }

  /** The sending end of a queue from this thread; closed when the pipeline stops. */
  sender(port: MessagePort, depth = QUEUE_DEPTH): PieceSender {
    const sender = new PieceSender(port, depth);
    this.#senders.push(sender);
    return sender;
  }

  /** Stop with this reason, unless a stage failed already. */
  fail(reason: string): void {
    this.#reject(new StageFailure(reason));
  }

  /** `report`, or the first failure if one comes before it. */
  settle<Report>(report: Promise<Report>): Promise<Report> {
    return Promise.race([report, this.#failed]);
  }

  stop(): void {
    for (const sender of this.#senders) sender.close();
    for (const worker of this.#workers) worker.terminate();
  }
}

/** The payload's pieces in order, each with the queue it goes down, and the queues to end after the last. */
interface PlannedReads {
  reads: Iterable<{ length: number; output: PieceSender }>;
  /** Bytes of the buffers to read into: at least the longest piece, so every buffer can be used again. */
  capacity: number;
  outputs: PieceSender[];
}

/** A stored or zlib payload, read in PAYLOAD_PIECE pieces down one queue. */
function chunked(dataSize: number, output: PieceSender): PlannedReads {
  function* reads() {
    for (let at = 0; at < dataSize; at += PAYLOAD_PIECE)
      yield { length: Math.min(PAYLOAD_PIECE, dataSize - at), output };
  }
  return { reads: reads(), capacity: PAYLOAD_PIECE, outputs: [output] };
}

/**
 * Send the payload after the header of the image at `path` down `output` in
 * PAYLOAD_PIECE pieces, waiting for room on the queue (so memory stays bounded),
 * then end the queue. For a stage outside verifyPayload, such as the boot
 * server's inflate into shared memory.
 *
 * @example await sendPayload(path, header.dataSize, new PieceSender(channel.port1));
 */
export function sendPayload(path: string, dataSize: number, output: PieceSender): Promise<void> {
  return readPayload(path, dataSize, chunked(dataSize, output));
}

/** Read the planned pieces of the payload after the header, in order, send each down its queue, and tell `onProgress`. */
async function readPayload(
  path: string,
  dataSize: number,
  plan: PlannedReads,
  onProgress?: VerifyOptions["onProgress"],
): Promise<void> {
  const file = await open(path, "r");
  try {
    let done = 0;
    for (const { length, output } of plan.reads) {
      await output.room();
      const piece = output.buffer(plan.capacity).subarray(0, length);
      for (let filled = 0; filled < length; ) {
        const { bytesRead } = await file.read(piece, filled, length - filled, HEADER_SIZE + done + filled);
        if (bytesRead === 0) throw new Error(`file ends ${done + filled} bytes into the ${dataSize}-byte payload`);
        filled += bytesRead;
      }
      output.send(piece);
      done += length;
      onProgress?.(done);
    }
    for (const output of plan.outputs) output.end();
  } finally {
    await file.close();
  }
}
