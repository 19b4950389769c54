/**
 * Verifying an image's payload against its header, as a pipeline of threads,
 * and writing the raw image out on the way (lookimage --extract).
 *
 * Checking an image means reading `data_size` payload bytes, decoding them
 * (nothing to do for a stored payload, inflating a zlib stream, decompressing
 * zstd frames) and hashing the `image_size` raw bytes that come out. Done one
 * after the other on one thread the time is the sum of the three; here each
 * stage has its own thread, so the time is that of the slowest stage. The
 * main thread reads the file and hands pieces to the decoding stage, which
 * hands the raw bytes to the SHA-256 stage; a stored payload goes from the
 * reader straight to the SHA-256 stage.
 *
 * A zlib stream is one long chain of back-references, so it is inflated on
 * one thread. A zstd payload is a row of independent frames, one per block
 * (docs/format.md), so several decompressing threads share them: the reader
 * deals frame n to thread n mod N, each thread decompresses its frames in
 * order, and the SHA-256 stage takes the raw blocks from the threads in the
 * same turn, which puts them back in image order without any sorting. The
 * seek table is read and checked against the header before any of that
 * (lib/zstd-image.ts), and each thread checks its blocks' sizes and
 * checksums against it (lib/verify-zstd.ts).
 *
 * Stages are linked by MessagePorts and pieces move by transferring their
 * buffers, so nothing is copied between threads. Each link is a bounded
 * queue: a sender may have at most QUEUE_DEPTH pieces unacknowledged, and a
 * receiver acknowledges a piece once it has finished with it by sending the
 * buffer back, which the sender fills again. Memory in use is therefore a few
 * pieces per link whatever the image size, and after the first few pieces no
 * buffer is allocated at all (fresh megabyte buffers cost Bun about as much
 * as the inflating itself, in page faults and zeroing; for zstd, several
 * times as much as the decompressing).
 *
 * The raw image, when asked for, is written by the SHA-256 stage: it sees
 * every raw byte once, in order, and writes each piece to the output's
 * temporary file before acknowledging it. The file is renamed over the
 * output only when the verdict is that the payload matches its header, so
 * a raw file exists only for an image that verified.
 *
 * The header is not trusted. The inflater is never given room for more than
 * `image_size + 1` bytes in all, so a decompression bomb stops one byte past
 * the header's claim; a zlib stream that is corrupt or ends before its end
 * marker is reported with zlib's own words; bytes after the end of the
 * stream but within `data_size` are counted and reported. A zstd frame is
 * stopped one byte past its seek table entry (decompressBlock). The byte count and
 * the SHA-256 are then checked against the header, with the messages the
 * existing Rust lookimage prints.
 */

import { closeSync, openSync, writeSync } from "node:fs";
import { open, realpath, stat } from "node:fs/promises";
import { createInflate } from "node:zlib";
import { UserError } from "./cli.ts";
import { HEADER_SIZE, type Header, ImageFormatError, payloadSizeRefusal, toHex } from "./format.ts";
import { CodecError, NativeCodec } from "./native-codec.ts";
import { discardOnSignal, isSameFile, PendingFile, resolveTarget, systemReason, type Target } from "./pending-file.ts";
import type { ZstdDecodeOrder, ZstdDecodeReport } from "./verify-zstd.ts";
import { workerUrl } from "./workers.ts";
import { payloadCodec, readSeekTable } from "./zstd-image.ts";
import type { SeekTable } from "./zstd-seekable.ts";

/** Payload bytes read from the file per piece (stored and zlib payloads; a zstd piece is one frame). */
export const READ_CHUNK = 1024 * 1024;
/** Raw image bytes per piece of inflater output. */
export const INFLATE_CHUNK = 1024 * 1024;
/** Pieces a stage may send before the next stage acknowledges one. */
export const QUEUE_DEPTH = 4;
/**
 * Threads decompressing zstd frames. Decompressing into recycled buffers
 * runs at 1.7-1.9 GB/s per thread, about as fast as SHA-256 (1.7 GB/s with
 * the SHA extensions), which cannot be split over threads: two decompressing
 * threads keep the hash stage busy, more only take cores from it.
 */
export const ZSTD_DECODE_JOBS = 2;
/**
 * Bytes one zstd link may hold in flight. With the usual 1 MiB blocks it
 * allows QUEUE_DEPTH pieces; with large blocks, fewer (but always 2, so a
 * thread never waits for its next frame), which bounds memory whatever block
 * size an image chose.
 */
const ZSTD_LINK_BYTES = 4 * 1024 * 1024;

const SHA256_WORKER = workerUrl("sha256");
const INFLATE_WORKER = workerUrl("inflate");
const ZSTD_DECODE_WORKER = workerUrl("zstd-decode");

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

/** Reporting and tuning for verifyPayload and extractPayload. */
export interface VerifyOptions {
  /** Called as payload bytes are read, with the total read so far. */
  onProgress?: (payloadBytesRead: number) => void;
  /** Threads decompressing a zstd payload; ZSTD_DECODE_JOBS by default. */
  zstdJobs?: number;
}

/**
 * Verify the payload of the image file at `path` against its decoded header:
 * read it, decode it (zlib or zstd) when compressed, and check the byte
 * count and SHA-256, with reading, decoding and hashing on separate threads.
 * Problems with the payload are returned in the verdict, not thrown.
 *
 * @example
 * const verdict = await verifyPayload("pool-1m-z.img", header);
 * if (verdict.error) console.error(`lookimage: ${verdict.error}`);
 */
export function verifyPayload(path: string, header: Header, options: VerifyOptions = {}): Promise<PayloadVerdict> {
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
 * const verdict = await extractPayload("pool.img", header, await rawOutputTarget("pool.raw", "pool.img"));
 */
export async function extractPayload(
  path: string,
  header: Header,
  output: Target,
  options: VerifyOptions = {},
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

/** Where the SHA-256 stage writes the raw bytes: a file it opens by path, and its name for messages. */
export interface RawSink {
  path: string;
  name: string;
}

/** Build the stages for the payload's codec, run them, and judge what they report. */
async function runPipeline(
  path: string,
  header: Header,
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
  try {
    let hashInputs: MessagePort[];
    let plan: PlannedReads;
    let inflated: Promise<InflateReport> | null = null;
    if (codec === "zstd" && seekTable) {
      ({ hashInputs, plan } = startZstdStages(stages, seekTable, options.zstdJobs ?? ZSTD_DECODE_JOBS));
    } else {
      const toHash = new MessageChannel();
      hashInputs = [toHash.port2];
      if (codec === "zlib") {
        const toInflate = new MessageChannel();
        const order: InflateOrder = { input: toInflate.port2, output: toHash.port1, imageSize: header.imageSize };
        inflated = stages.start<InflateReport>(INFLATE_WORKER, "inflate", order, [toInflate.port2, toHash.port1]);
        plan = chunked(header.dataSize, stages.sender(toInflate.port1));
      } else {
        plan = chunked(header.dataSize, stages.sender(toHash.port1));
      }
    }
    const hashOrder: HashOrder = { input: hashInputs, ...(sink ? { sink } : {}) };
    const hashed = stages.start<HashReport>(SHA256_WORKER, "SHA-256", hashOrder, hashInputs);

    const reading = readPayload(path, header.dataSize, plan, options).catch((error: unknown) => {
      stages.fail(error instanceof Error ? error.message : String(error));
    });
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
    stages.stop();
  }
}

/**
 * Start N zstd decompressing threads (N at most the number of frames) and
 * plan the reads that deal frames to them in turn.
 */
function startZstdStages(
  stages: StageThreads,
  table: SeekTable,
  jobs: number,
): { hashInputs: MessagePort[]; plan: PlannedReads } {
  const threads = Math.max(1, Math.min(jobs, table.blocks.length));
  const largestFrame = table.blocks.reduce((largest, block) => Math.max(largest, block.compressedSize), 0);
  const largestBlock = table.blocks.reduce((largest, block) => Math.max(largest, block.decompressedSize), 0);
  const depth = Math.max(
    2,
    Math.min(QUEUE_DEPTH, Math.floor(ZSTD_LINK_BYTES / Math.max(largestFrame, largestBlock, 1))),
  );
  const hashInputs: MessagePort[] = [];
  const toThreads: PieceSender[] = [];
  for (let thread = 0; thread < threads; thread++) {
    const toDecode = new MessageChannel();
    const toHash = new MessageChannel();
    const order: ZstdDecodeOrder = {
      input: toDecode.port2,
      output: toHash.port1,
      blocks: table.blocks.filter((block) => block.index % threads === thread),
      capacity: largestBlock,
      depth,
    };
    // A block that fails is reported down the thread's link, where the SHA-256 stage meets it in image
    // order: the verdict names the first bad block whichever thread finds its own first.
    stages.start<ZstdDecodeReport>(ZSTD_DECODE_WORKER, "zstd", order, [toDecode.port2, toHash.port1]);
    toThreads.push(stages.sender(toDecode.port1, depth));
    hashInputs.push(toHash.port2);
  }
  const reads = table.blocks.map((block) => ({
    length: block.compressedSize,
    output: toThreads[block.index % threads]!,
  }));
  return { hashInputs, plan: { reads, capacity: largestFrame, outputs: toThreads } };
}

/** Compare what the stages saw with what the header claims. */
function judge(header: Header, hashed: HashReport, inflated: InflateReport | null): Omit<PayloadVerdict, "seekTable"> {
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
 * The threads and links of one verification. The first failure of any
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

  /** Start a worker on `script` with its order; resolves with its report. A worker that throws fails the pipeline. */
  start<Report>(script: URL, stage: string, order: object, transfer: Bun.Transferable[]): Promise<Report> {
    const worker = new Worker(script.href);
    this.#workers.push(worker);
    const report = new Promise<Report>((resolve) => {
      worker.onmessage = (event: MessageEvent<Report>) => resolve(event.data);
      worker.onerror = (event: ErrorEvent) => this.fail(`${stage} worker failed: ${event.message}`);
    });
    worker.postMessage(order, transfer);
    return report;
  }

  /** The sending end of a link from this thread; closed when the pipeline stops. */
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

/** The payload's pieces in order, each with the link it goes down, and the links to end after the last. */
interface PlannedReads {
  reads: Iterable<{ length: number; output: PieceSender }>;
  /** Bytes of the buffers to read into: at least the longest piece, so every buffer can be used again. */
  capacity: number;
  outputs: PieceSender[];
}

/** A stored or zlib payload, read in READ_CHUNK pieces down one link. */
function chunked(dataSize: number, output: PieceSender): PlannedReads {
  function* reads() {
    for (let at = 0; at < dataSize; at += READ_CHUNK) yield { length: Math.min(READ_CHUNK, dataSize - at), output };
  }
  return { reads: reads(), capacity: READ_CHUNK, outputs: [output] };
}

/**
 * Send the payload after the header of the image at `path` down `output` in
 * READ_CHUNK pieces, waiting for room on the link (so memory stays bounded),
 * then end the link. For a stage outside verifyPayload, such as the boot
 * server's inflate into shared memory.
 *
 * @example await sendPayload(path, header.dataSize, new PieceSender(channel.port1));
 */
export function sendPayload(path: string, dataSize: number, output: PieceSender): Promise<void> {
  return readPayload(path, dataSize, chunked(dataSize, output), {});
}

/** Read the planned pieces of the payload after the header, in order, and send each down its link. */
async function readPayload(path: string, dataSize: number, plan: PlannedReads, options: VerifyOptions): Promise<void> {
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
      options.onProgress?.(done);
    }
    for (const output of plan.outputs) output.end();
  } finally {
    await file.close();
  }
}

// ---------------------------------------------------------------------------
// The links between stages: bounded queues over MessagePorts, recycling buffers.

type LinkMessage = { kind: "piece"; bytes: Uint8Array } | { kind: "end" } | { kind: "failed"; reason: string };
type LinkAck = { kind: "ack"; buffer: ArrayBuffer };

/**
 * The sending end of a link. At most QUEUE_DEPTH pieces are unacknowledged;
 * wait for `room()` before each `send`. Acknowledged buffers come back and
 * are handed out again by `buffer()`.
 *
 * @example
 * const link = new PieceSender(port);
 * await link.room();
 * const piece = link.buffer(READ_CHUNK);
 * link.send(piece.subarray(0, filled));
 * link.end();
 */
export class PieceSender {
  #inFlight = 0;
  #spare: ArrayBuffer[] = [];
  #wake: (() => void) | null = null;
  #closed = false;

  constructor(
    private readonly port: MessagePort,
    private readonly depth = QUEUE_DEPTH,
  ) {
    port.onmessage = (event) => {
      this.#inFlight--;
      this.#spare.push((event.data as LinkAck).buffer);
      this.#wake?.();
    };
  }

  /** True when a piece can be sent now. */
  get hasRoom(): boolean {
    return this.#inFlight < this.depth;
  }

  /** Resolve when a piece can be sent; reject once the sender is closed. */
  async room(): Promise<void> {
    while (!this.hasRoom && !this.#closed) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    if (this.#closed) throw new Error("pipeline stopped");
  }

  /** A buffer of `size` bytes to fill and send: a returned one when there is one. */
  buffer(size: number): Uint8Array {
    const spare = this.#spare.pop();
    return spare && spare.byteLength >= size ? new Uint8Array(spare, 0, size) : new Uint8Array(size);
  }

  /**
   * Send one piece, giving away the whole buffer behind it (it comes back
   * through `buffer()` once acknowledged). Call only when `hasRoom`.
   */
  send(bytes: Uint8Array): void {
    if (this.#closed) throw new Error("pipeline stopped");
    this.port.postMessage({ kind: "piece", bytes } satisfies LinkMessage, [bytes.buffer as ArrayBuffer]);
    this.#inFlight++;
  }

  /** Tell the receiver no more pieces follow. */
  end(): void {
    this.port.postMessage({ kind: "end" } satisfies LinkMessage);
  }

  /**
   * Tell the receiver no more pieces follow because this stage failed, and
   * why: the receiver meets the reason in its place among the pieces, so
   * parallel stages' failures reach it in image order (receivePieces).
   */
  fail(reason: string): void {
    this.port.postMessage({ kind: "failed", reason } satisfies LinkMessage);
  }

  /** Stop: a pending or later `room()` rejects instead of waiting forever, and `send` throws. */
  close(): void {
    this.#closed = true;
    this.port.close();
    this.#wake?.();
  }
}

/**
 * The receiving end of a link, as an async iterable of pieces. A piece is
 * acknowledged (its buffer sent back) when the consumer asks for the next
 * one, so the consumer must be done with a piece by then. A sender that
 * failed (PieceSender.fail) ends it with an UpstreamFailure thrown.
 *
 * @example for await (const piece of receivePieces(port)) hasher.update(piece);
 */
export async function* receivePieces(port: MessagePort): AsyncGenerator<Uint8Array> {
  const queue: LinkMessage[] = [];
  let wake: (() => void) | null = null;
  port.onmessage = (event) => {
    queue.push(event.data as LinkMessage);
    wake?.();
  };
  try {
    for (;;) {
      while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const message = queue.shift()!;
      if (message.kind === "end") return;
      if (message.kind === "failed") throw new UpstreamFailure(message.reason);
      yield message.bytes;
      const buffer = message.bytes.buffer as ArrayBuffer;
      port.postMessage({ kind: "ack", buffer } satisfies LinkAck, [buffer]);
    }
  } finally {
    port.onmessage = null;
  }
}

/** The stage before this one failed, for this reason; thrown by receivePieces where its next piece would be. */
export class UpstreamFailure extends Error {
  override name = "UpstreamFailure";
}

/**
 * Pieces from several links taken in turn, piece n from `ports[n % length]`,
 * until the link whose turn it is ends. Parallel stages that were dealt
 * their work in the same turn give it back in order this way. Acknowledging
 * works as in receivePieces: a piece is done with when its link's next one
 * is asked for.
 *
 * @example for await (const piece of receiveInTurn([fromThread0, fromThread1])) hasher.update(piece);
 */
export async function* receiveInTurn(ports: readonly MessagePort[]): AsyncGenerator<Uint8Array> {
  const links = ports.map((port) => receivePieces(port));
  try {
    for (let turn = 0; ; turn = (turn + 1) % links.length) {
      const next = await links[turn]!.next();
      if (next.done) return;
      yield next.value;
    }
  } finally {
    for (const link of links) await link.return(undefined);
  }
}

// ---------------------------------------------------------------------------
// The stages that run in workers (workers/inflate.ts, workers/sha256.ts;
// zstd's is lib/verify-zstd.ts, run by workers/zstd-decode.ts).

/**
 * What the SHA-256 worker is given: the port its pieces arrive on, or the
 * ports of parallel stages to take pieces from in turn (receiveInTurn); and
 * where to write the raw bytes, if anywhere.
 */
export interface HashOrder {
  input: MessagePort | MessagePort[];
  sink?: RawSink;
}

/**
 * What the SHA-256 worker reports: how many bytes it hashed, and their
 * digest; and, when it stopped before the end, why: a stage before it failed
 * (the first failure in image order, for parallel stages), or the raw bytes
 * could not be written.
 */
export interface HashReport {
  bytes: number;
  sha256: Uint8Array;
  stopped: { by: "upstream" | "sink"; reason: string } | null;
}

/**
 * Hash every piece arriving on the order's port(s), writing each to the
 * sink's file first when there is one.
 *
 * @example self.onmessage = async (event) => postMessage(await hashStage(event.data));
 */
export async function hashStage(order: HashOrder): Promise<HashReport> {
  const hasher = new Bun.CryptoHasher("sha256");
  const inputs = Array.isArray(order.input) ? order.input : [order.input];
  let bytes = 0;
  const report = (stopped: HashReport["stopped"]): HashReport => ({
    bytes,
    sha256: new Uint8Array(hasher.digest()),
    stopped,
  });
  let sink: number | null = null;
  try {
    if (order.sink) sink = openSync(order.sink.path, "r+");
    for await (const piece of receiveInTurn(inputs)) {
      hasher.update(piece);
      if (sink !== null) writeAll(sink, piece, bytes);
      bytes += piece.length;
    }
  } catch (error) {
    if (error instanceof UpstreamFailure) return report({ by: "upstream", reason: error.message });
    if (order.sink && (error as NodeJS.ErrnoException).errno !== undefined) {
      return report({ by: "sink", reason: `cannot write ${order.sink.name}: ${systemReason(error)}` });
    }
    throw error;
  } finally {
    if (sink !== null) closeSync(sink);
  }
  return report(null);
}

/** Write all of `bytes` at `position`, however many calls it takes. */
function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

/** What the inflate worker is given: ports for compressed input and raw output, and the size claimed. */
export interface InflateOrder {
  input: MessagePort;
  output: MessagePort;
  imageSize: number;
}

/**
 * What the inflate worker reports: on success the payload bytes the zlib
 * stream took up (fewer than were sent means bytes after its end) and the
 * raw bytes produced; on failure the reason and the raw bytes produced.
 */
export type InflateReport =
  | { kind: "inflated"; consumed: number; produced: number }
  | { kind: "failed"; reason: string; produced: number };

/**
 * Inflate the zlib stream arriving on the order's input port and send the
 * raw bytes to its output port in INFLATE_CHUNK pieces, never producing more
 * than `imageSize + 1` bytes.
 *
 * @example self.onmessage = async (event) => postMessage(await inflateStage(event.data));
 */
export async function inflateStage(order: InflateOrder): Promise<InflateReport> {
  const output = new PieceSender(order.output);
  const inflater = new NativeCodec(createInflate());
  // A bomb stops here: the inflater is never given room past this.
  const limit = order.imageSize + 1;
  let received = 0;
  let produced = 0;
  let streamEnd: number | null = null;
  let out: Uint8Array | null = null;
  let filled = 0;

  // Inflate `input` (Z_FINISH when it is the end) until it is used up, the
  // stream ends, or the limit is reached; send each output piece once full.
  const inflateAll = async (input: Uint8Array, finish: boolean) => {
    let offset = 0;
    for (;;) {
      if (!out) {
        await output.room();
        out = output.buffer(INFLATE_CHUNK);
        filled = 0;
      }
      const room = Math.min(out.length - filled, limit - produced);
      const step = inflater.step(input.subarray(offset), out.subarray(filled, filled + room), finish);
      offset += step.consumed;
      filled += step.produced;
      produced += step.produced;
      if (filled === out.length) {
        output.send(out);
        out = null;
      }
      if (produced >= limit) return;
      if (step.produced === room) continue; // out of room, not of input: there may be more
      // zlib stopped with room left: the input is used up, or the stream has
      // ended (then any input left is trailing bytes).
      if (offset < input.length || finish) streamEnd = received - (input.length - offset);
      return;
    }
  };

  try {
    for await (const piece of receivePieces(order.input)) {
      received += piece.length;
      if (streamEnd === null) await inflateAll(piece, false);
      if (produced >= limit) break;
    }
    if (streamEnd === null && produced < limit) await inflateAll(new Uint8Array(0), true);
  } catch (error) {
    if (error instanceof CodecError) {
      const where = `after ${inflater.consumed} payload bytes`;
      const reason = error.message.startsWith("unexpected end of file")
        ? `zlib stream ends early, ${where}: ${error.message}`
        : `zlib stream is corrupt, ${where}: ${error.message}`;
      return { kind: "failed", reason, produced };
    }
    throw error;
  } finally {
    inflater.close();
  }
  if (produced >= limit) {
    return {
      kind: "failed",
      reason: `zlib stream inflates to more than ${order.imageSize} bytes, but header says there should be ${order.imageSize}`,
      produced,
    };
  }
  // The last, partly filled piece (there was room when its buffer was taken).
  if (out && filled > 0) output.send((out as Uint8Array).subarray(0, filled));
  output.end();
  return { kind: "inflated", consumed: streamEnd ?? received, produced };
}
