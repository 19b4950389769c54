/**
 * Verifying an image's payload against its header, as a pipeline of threads.
 *
 * Checking an image means reading `data_size` payload bytes, inflating them
 * when the image is compressed, and hashing the `image_size` raw bytes that
 * come out. Done one after the other on one thread the time is the sum of
 * the three; here each stage has its own thread, so the time is that of the
 * slowest stage (inflating, for a compressed image). The main thread reads
 * the file and hands pieces to the inflate worker, which inflates them and
 * hands the raw bytes to the SHA-256 worker; an uncompressed payload goes
 * from the reader straight to the SHA-256 worker.
 *
 * Stages are linked by MessagePorts and pieces move by transferring their
 * buffers, so nothing is copied between threads. Each link is a bounded
 * queue: a sender may have at most QUEUE_DEPTH pieces unacknowledged, and a
 * receiver acknowledges a piece once it has finished with it by sending the
 * buffer back, which the sender fills again. Memory in use is therefore a few
 * pieces per link whatever the image size, and after the first few pieces no
 * buffer is allocated at all (fresh megabyte buffers cost Bun about as much
 * as the inflating itself, in page faults and zeroing).
 *
 * The header is not trusted. The inflater is never given room for more than
 * `image_size + 1` bytes in all, so a decompression bomb stops one byte past
 * the header's claim; a zlib stream that is corrupt or ends before its end
 * marker is reported with zlib's own words; bytes after the end of the
 * stream but within `data_size` are counted and reported. The byte count and
 * the SHA-256 are then checked against the header, with the messages the
 * existing Rust lookimage prints.
 */

import { open } from "node:fs/promises";
import { constants as zlibConstants, createInflate } from "node:zlib";
import { HEADER_SIZE, type Header, isCompressed, toHex } from "./format.ts";

/** Payload bytes read from the file per piece. */
export const READ_CHUNK = 1024 * 1024;
/** Raw image bytes per piece of inflater output. */
export const INFLATE_CHUNK = 1024 * 1024;
/** Pieces a stage may send before the next stage acknowledges one. */
export const QUEUE_DEPTH = 4;

/** The outcome of verifying one payload. */
export interface PayloadVerdict {
  /** Raw image bytes produced (read, or inflated) before the check ended. */
  bytes: number;
  /**
   * SHA-256 of those `bytes` raw bytes; null when the payload could not be
   * read or inflated to its end, so there is no digest to compare.
   */
  sha256: Uint8Array | null;
  /** Why the payload does not match its header, on one line; null when it does. */
  error: string | null;
}

/** Reporting for verifyPayload. */
export interface VerifyOptions {
  /** Called as payload bytes are read, with the total read so far. */
  onProgress?: (payloadBytesRead: number) => void;
}

/**
 * The sizes the existing lookimage refuses before looking at the payload,
 * on one line in its words; null when the sizes are acceptable.
 *
 * @example sizeRefusal({ dataSize: 0, imageSize: 4096 }) // "data size is 0"
 */
export function sizeRefusal(header: Pick<Header, "dataSize" | "imageSize">): string | null {
  if (header.dataSize === 0) return `data size is ${header.dataSize}`;
  if (header.imageSize < header.dataSize) return `image size ${header.imageSize} < data size ${header.dataSize}`;
  return null;
}

/**
 * Verify the payload of the image file at `path` against its decoded header:
 * read it, inflate it when compressed, and check the byte count and SHA-256,
 * with reading, inflating and hashing on separate threads. Problems with the
 * payload are returned in the verdict, not thrown.
 *
 * @example
 * const verdict = await verifyPayload("pool-1m-z.img", header);
 * if (verdict.error) console.error(`lookimage: ${verdict.error}`);
 */
export async function verifyPayload(path: string, header: Header, options: VerifyOptions = {}): Promise<PayloadVerdict> {
  const refusal = sizeRefusal(header);
  if (refusal) return { bytes: 0, sha256: null, error: refusal };

  const hashWorker = new Worker(new URL("../workers/sha256.ts", import.meta.url).href);
  const inflateWorker = isCompressed(header) ? new Worker(new URL("../workers/inflate.ts", import.meta.url).href) : null;
  const toHash = new MessageChannel();
  const toInflate = inflateWorker ? new MessageChannel() : null;
  const reader = new PieceSender(toInflate ? toInflate.port1 : toHash.port1);

  // The first failure of any stage decides the verdict and stops the rest.
  let fail: (reason: string) => void = () => {};
  const failure = new Promise<never>((_, reject) => {
    fail = (reason) => reject(new StageFailure(reason));
  });
  failure.catch(() => {});
  const hashed = workerReport<HashReport>(hashWorker, "SHA-256", fail);
  hashWorker.postMessage({ input: toHash.port2 } satisfies HashOrder, [toHash.port2]);
  let inflated: Promise<InflateReport> | null = null;
  if (inflateWorker && toInflate) {
    inflated = workerReport<InflateReport>(inflateWorker, "inflate", fail);
    const order: InflateOrder = { input: toInflate.port2, output: toHash.port1, imageSize: header.imageSize };
    inflateWorker.postMessage(order, [toInflate.port2, toHash.port1]);
  }

  try {
    const reading = readPayload(path, header.dataSize, reader, options).catch((error: unknown) => {
      fail(error instanceof Error ? error.message : String(error));
    });
    const inflateReport = inflated ? await Promise.race([inflated, failure]) : null;
    if (inflateReport?.kind === "failed") {
      return { bytes: inflateReport.produced, sha256: null, error: inflateReport.reason };
    }
    const hashReport = await Promise.race([hashed, failure]);
    await reading;
    return judge(header, hashReport, inflateReport);
  } catch (error) {
    if (error instanceof StageFailure) return { bytes: 0, sha256: null, error: error.message };
    throw error;
  } finally {
    reader.close();
    hashWorker.terminate();
    inflateWorker?.terminate();
  }
}

/** Compare what the stages saw with what the header claims. */
function judge(header: Header, hashed: HashReport, inflated: InflateReport | null): PayloadVerdict {
  const verdict = (error: string | null): PayloadVerdict => ({ bytes: hashed.bytes, sha256: hashed.sha256, error });
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

/** Read `dataSize` payload bytes after the header and send them down the pipeline. */
async function readPayload(path: string, dataSize: number, output: PieceSender, options: VerifyOptions): Promise<void> {
  const file = await open(path, "r");
  try {
    let done = 0;
    while (done < dataSize) {
      await output.room();
      const piece = output.buffer(READ_CHUNK).subarray(0, Math.min(READ_CHUNK, dataSize - done));
      const { bytesRead } = await file.read(piece, 0, piece.length, HEADER_SIZE + done);
      if (bytesRead === 0) throw new Error(`file ends ${done} bytes into the ${dataSize}-byte payload`);
      output.send(piece.subarray(0, bytesRead));
      done += bytesRead;
      options.onProgress?.(done);
    }
    output.end();
  } finally {
    await file.close();
  }
}

/** Resolve with a worker's report; a worker that throws fails the pipeline. */
function workerReport<Report>(worker: Worker, stage: string, fail: (reason: string) => void): Promise<Report> {
  return new Promise((resolve) => {
    worker.onmessage = (event: MessageEvent<Report>) => resolve(event.data);
    worker.onerror = (event: ErrorEvent) => fail(`${stage} worker failed: ${event.message}`);
  });
}

// ---------------------------------------------------------------------------
// The links between stages: bounded queues over MessagePorts, recycling buffers.

type LinkMessage = { kind: "piece"; bytes: Uint8Array } | { kind: "end" };
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
 * one, so the consumer must be done with a piece by then.
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
      yield message.bytes;
      const buffer = message.bytes.buffer as ArrayBuffer;
      port.postMessage({ kind: "ack", buffer } satisfies LinkAck, [buffer]);
    }
  } finally {
    port.onmessage = null;
  }
}

// ---------------------------------------------------------------------------
// The stages that run in workers (workers/inflate.ts, workers/sha256.ts).

/** What the SHA-256 worker is given: the port its pieces arrive on. */
export interface HashOrder {
  input: MessagePort;
}

/** What the SHA-256 worker reports: how many bytes it hashed, and their digest. */
export interface HashReport {
  bytes: number;
  sha256: Uint8Array;
}

/**
 * Hash every piece arriving on the order's port.
 *
 * @example self.onmessage = async (event) => postMessage(await hashStage(event.data));
 */
export async function hashStage(order: HashOrder): Promise<HashReport> {
  const hasher = new Bun.CryptoHasher("sha256");
  let bytes = 0;
  for await (const piece of receivePieces(order.input)) {
    hasher.update(piece);
    bytes += piece.length;
  }
  return { bytes, sha256: new Uint8Array(hasher.digest()) };
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
  const inflater = new SyncInflater();
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
    if (error instanceof InflateError) return { kind: "failed", reason: error.message, produced };
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

/** zlib refused the stream; the message is zlib's own, with where it happened. */
class InflateError extends Error {
  override name = "InflateError";
}

/** The calls this module makes on the native handle behind a node:zlib Inflate. */
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
  onerror: (message: string, errno: number, code: string) => void;
}

/**
 * zlib inflate, run synchronously on the calling thread into buffers the
 * caller owns.
 *
 * Why not node:zlib's public streams: they inflate on Bun's thread pool, with
 * a round trip to the worker's event loop for every output piece, into a
 * freshly allocated buffer each time. Measured on a 256 MiB pool-like image
 * (issue 2), the same pipeline built on a stream spent 1.3 to 1.6 s of CPU
 * against 0.75 s for this, and took 1.5 to 2 times as long. So this drives
 * the native handle behind a node:zlib Inflate with the very calls Node's own
 * `zlib.inflateSync` makes: `_handle.writeSync(flush, in, inOffset,
 * inLength, out, outOffset, outLength)`, results in `_writeState` as
 * [output room left, input left], errors through `_handle.onerror`. These
 * are internals that Bun 1.4.5 (the version package.json pins) mirrors from
 * Node; the constructor checks they are there, and tests/lookimage.test.ts
 * goes through every path (whole, corrupt, cut short, trailing bytes, bomb).
 */
class SyncInflater {
  readonly #stream = createInflate();
  readonly #handle: NativeZlibHandle;
  readonly #state: Uint32Array;
  #error: string | null = null;
  #consumed = 0;

  constructor() {
    const internals = this.#stream as unknown as { _handle?: NativeZlibHandle; _writeState?: Uint32Array };
    if (typeof internals._handle?.writeSync !== "function" || !(internals._writeState instanceof Uint32Array)) {
      throw new Error("this runtime's node:zlib has no synchronous inflate handle (written for Bun 1.4.5)");
    }
    this.#handle = internals._handle;
    this.#state = internals._writeState;
    this.#handle.onerror = (message, _errno, code) => {
      this.#error = `${message} (${code})`;
    };
  }

  /**
   * Inflate from `input` into `output`; `finish` says no input follows, so a
   * stream without its end marker is an error. Returns the bytes taken from
   * `input` and written to `output`.
   */
  step(input: Uint8Array, output: Uint8Array, finish: boolean): { consumed: number; produced: number } {
    const flush = finish ? zlibConstants.Z_FINISH : zlibConstants.Z_NO_FLUSH;
    this.#handle.writeSync(flush, input, 0, input.length, output, 0, output.length);
    if (this.#error !== null) {
      const where = `after ${this.#consumed} payload bytes`;
      throw new InflateError(
        this.#error.startsWith("unexpected end of file")
          ? `zlib stream ends early, ${where}: ${this.#error}`
          : `zlib stream is corrupt, ${where}: ${this.#error}`,
      );
    }
    const [outputLeft, inputLeft] = this.#state;
    const consumed = input.length - inputLeft!;
    this.#consumed += consumed;
    return { consumed, produced: output.length - outputLeft! };
  }

  close(): void {
    this.#stream.close();
  }
}
