/**
 * The images a boot server offers, each held in memory once as the raw pool
 * bytes a sled fetches.
 *
 * A sled asks for offsets into the raw (uncompressed) image (netboot.md), so
 * a compressed image is inflated once, when it is loaded, and never again per
 * sled. The bytes live in a SharedArrayBuffer that every session thread reads
 * directly: however many sleds boot from an image, it is in memory once.
 * Loading (reading, inflating, hashing) runs on a worker thread so the server
 * keeps answering sleds that are already booting, and the SHA-256 of what was
 * loaded must equal the header's, since that is what a sled checks after the
 * transfer and what the OFFER promises.
 *
 * A zstd image (docs/format.md) is the exception: inflating a large pool
 * before the first DATA would keep a sled waiting for seconds, so only its
 * seek table is checked and its compressed payload read into shared memory
 * at load; sessions decompress the blocks READs touch through a block cache
 * they share (lib/block-cache.ts). Its SHA-256 is not checked here, as that
 * needs every block; each block's checksum is checked as it is decompressed.
 *
 * An image is refused, saying why, when a sled could not boot it over the
 * network: below 1 MiB, not a whole number of 128 KiB batches, or larger than
 * its ramdisk (lib/format.ts, netbootRefusals and kernelRefusals).
 *
 * ServedImageFile rereads the file when it changed (size, mtime or inode
 * differ), as the existing bootserver rereads the image on each HELLO so a
 * rebuilt image is picked up without a restart. Sessions already running
 * keep the bytes they started with: they hold their own reference.
 */

import { open, stat } from "node:fs/promises";
import { basename } from "node:path";
import { type ZstdImageMemory, zstdImageMemory } from "./block-cache.ts";
import {
  decodeHeader,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  isCompressed,
  kernelRefusals,
  netbootRefusals,
  toHex,
} from "./format.ts";
import type { InflateOrder, InflateReport } from "./inflate-stage.ts";
import { PieceSender, receivePieces } from "./thread-link.ts";
import { sendPayload } from "./verify.ts";
import { workerUrl } from "./workers.ts";
import { IMAGE_VERSIONS, payloadCodec, readSeekTable } from "./zstd-image.ts";

/** What identifies one version of a file: a rebuilt image differs in one of these. */
export interface FileStamp {
  size: number;
  mtimeMs: number;
  ino: number;
  dev: number;
}

/**
 * An image's bytes in shared memory, as sessions read them: the raw pool
 * (exactly header.imageSize bytes) for plain and zlib images, the payload and
 * block cache for a zstd one.
 */
export type ServedBytes = SharedArrayBuffer | ZstdImageMemory;

/** An image ready to serve: its header and its bytes in shared memory. */
export interface ServedImage {
  path: string;
  /** The file's base name, for messages and progress lines. */
  name: string;
  header: Header;
  bytes: ServedBytes;
  stamp: FileStamp;
}

/** Bytes read from the file at a time. */
const READ_CHUNK = 4 * 1024 * 1024;

function stampOf(stats: { size: number; mtimeMs: number; ino: number; dev: number }): FileStamp {
  return { size: stats.size, mtimeMs: stats.mtimeMs, ino: stats.ino, dev: stats.dev };
}

function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.dev === b.dev;
}

/**
 * Read and check an image file's header for serving; throws ImageFormatError
 * naming the file and every reason a sled could not netboot it.
 *
 * @example const { header } = await readServableHeader("recovery.img");
 */
export async function readServableHeader(path: string): Promise<{ header: Header; stamp: FileStamp }> {
  let file;
  try {
    file = await open(path, "r");
  } catch (error) {
    throw new ImageFormatError(`cannot open ${path}: ${(error as Error).message}`);
  }
  try {
    const stats = await file.stat();
    const bytes = new Uint8Array(HEADER_SIZE);
    const { bytesRead } = await file.read(bytes, 0, HEADER_SIZE, 0);
    let header: Header;
    try {
      header = decodeHeader(bytes.subarray(0, bytesRead), { fileSize: stats.size, versions: IMAGE_VERSIONS });
      payloadCodec(header);
    } catch (error) {
      throw new ImageFormatError(`${path}: ${(error as Error).message}`);
    }
    const refusals = [...kernelRefusals(header), ...netbootRefusals(header)];
    if (refusals.length > 0) throw new ImageFormatError(`cannot serve ${path}: ${refusals.join("; ")}`);
    return { header, stamp: stampOf(stats) };
  } finally {
    await file.close();
  }
}

/**
 * Fill `target` (header.imageSize bytes) with the raw image of the file at
 * `path` and check its byte count and SHA-256 against the header. A plain
 * payload is read straight into `target`. A compressed one goes through the
 * inflate stage of lib/verify.ts on a thread of its own (workers/inflate.ts),
 * which stops at the first output past image_size; its output is copied into
 * `target` and hashed here while it inflates the next piece. This is the work
 * of workers/served-image.ts.
 *
 * @example await fillRawImage("recovery.img", header, new Uint8Array(shared));
 */
export async function fillRawImage(path: string, header: Header, target: Uint8Array): Promise<void> {
  const hasher = new Bun.CryptoHasher("sha256");
  const filled = isCompressed(header)
    ? await inflateInto(path, header, target, hasher)
    : await readInto(path, header, target, hasher);
  if (filled !== header.imageSize) {
    throw new ImageFormatError(
      `${path}: payload holds ${filled} bytes of image, but the header's image size is ${header.imageSize}`,
    );
  }
  const digest = new Uint8Array(hasher.digest().buffer);
  if (toHex(digest) !== toHex(header.sha256)) {
    throw new ImageFormatError(
      `${path}: SHA-256 of the image is ${toHex(digest)}, but the header says ${toHex(header.sha256)}`,
    );
  }
}

async function readInto(path: string, header: Header, target: Uint8Array, hasher: Bun.CryptoHasher): Promise<number> {
  const file = await open(path, "r");
  try {
    let filled = 0;
    while (filled < header.imageSize) {
      const length = Math.min(READ_CHUNK, header.imageSize - filled);
      const { bytesRead } = await file.read(target, filled, length, HEADER_SIZE + filled);
      if (bytesRead === 0) break;
      hasher.update(target.subarray(filled, filled + bytesRead));
      filled += bytesRead;
    }
    return filled;
  } finally {
    await file.close();
  }
}

async function inflateInto(
  path: string,
  header: Header,
  target: Uint8Array,
  hasher: Bun.CryptoHasher,
): Promise<number> {
  const inflater = new Worker(workerUrl("inflate").href);
  const toInflater = new MessageChannel();
  const fromInflater = new MessageChannel();
  const input = new PieceSender(toInflater.port1);
  const report = new Promise<InflateReport>((resolve, reject) => {
    inflater.onmessage = (event: MessageEvent<InflateReport>) => resolve(event.data);
    inflater.onerror = (event) => reject(new ImageFormatError(`${path}: inflate thread failed: ${event.message}`));
  });
  const order: InflateOrder = { input: toInflater.port2, output: fromInflater.port1, imageSize: header.imageSize };
  inflater.postMessage(order, [toInflater.port2, fromInflater.port1]);
  try {
    const feeding = sendPayload(path, header.dataSize, input).catch((error: unknown) => {
      throw new ImageFormatError(`${path}: ${(error as Error).message}`);
    });
    // A failed inflate stops taking input; its report says why, so the feeder's own error adds nothing.
    feeding.catch(() => {});
    let filled = 0;
    const storing = (async () => {
      for await (const piece of receivePieces(fromInflater.port2)) {
        target.set(piece, filled);
        hasher.update(piece);
        filled += piece.length;
      }
    })();
    const inflated = await report;
    if (inflated.kind === "failed") throw new ImageFormatError(`${path}: ${inflated.reason}`);
    await Promise.all([feeding, storing]);
    if (inflated.consumed < header.dataSize) {
      throw new ImageFormatError(
        `${path}: zlib stream ends after ${inflated.consumed} of the ${header.dataSize} payload bytes`,
      );
    }
    return filled;
  } finally {
    input.close();
    toInflater.port1.close();
    fromInflater.port2.close();
    inflater.terminate();
  }
}

/** What workers/served-image.ts is asked to do. */
export interface FillRequest {
  path: string;
  header: Header;
  bytes: SharedArrayBuffer;
}

/** What workers/served-image.ts answers: nothing on success, else the reason. */
export type FillResult = { ok: true } | { ok: false; message: string };

/**
 * Load an image for serving: check its header, then read or inflate it into
 * shared memory on a worker thread and verify it.
 *
 * @example const image = await loadServedImage("recovery.img"); // image.bytes: the raw pool
 */
export async function loadServedImage(path: string): Promise<ServedImage> {
  const { header, stamp } = await readServableHeader(path);
  if (payloadCodec(header) === "zstd")
    return { path, name: basename(path), header, bytes: await loadZstdPayload(path, header), stamp };
  const bytes = new SharedArrayBuffer(header.imageSize);
  const worker = new Worker(workerUrl("served-image").href);
  try {
    const result = await new Promise<FillResult>((resolve) => {
      worker.onmessage = (event: MessageEvent<FillResult>) => resolve(event.data);
      worker.onerror = (event) => resolve({ ok: false, message: event.message });
      worker.postMessage({ path, header, bytes } satisfies FillRequest);
    });
    if (!result.ok) throw new ImageFormatError(result.message);
  } finally {
    worker.terminate();
  }
  return { path, name: basename(path), header, bytes, stamp };
}

/**
 * Check a zstd image's seek table against its header and read its payload
 * into shared memory, with an empty block cache beside it: two small reads
 * and one of the compressed payload, however large the pool.
 *
 * @example const memory = await loadZstdPayload("dev.img", header);
 */
export async function loadZstdPayload(path: string, header: Header): Promise<ZstdImageMemory> {
  let table;
  try {
    table = await readSeekTable(Bun.file(path), header);
  } catch (error) {
    throw new ImageFormatError(`${path}: ${(error as Error).message}`);
  }
  const payload = new SharedArrayBuffer(header.dataSize);
  const target = new Uint8Array(payload);
  const file = await open(path, "r");
  try {
    for (let done = 0; done < header.dataSize; ) {
      const { bytesRead } = await file.read(
        target,
        done,
        Math.min(READ_CHUNK, header.dataSize - done),
        HEADER_SIZE + done,
      );
      if (bytesRead === 0)
        throw new ImageFormatError(`${path}: file ends ${done} bytes into the ${header.dataSize}-byte payload`);
      done += bytesRead;
    }
  } finally {
    await file.close();
  }
  return zstdImageMemory(payload, table);
}

/**
 * One image file as the server offers it: loaded on first use and loaded
 * again whenever the file has changed since, so a rebuilt image is picked up
 * on the next HELLO. A file that fails to load is not tried again until it
 * changes; asking meanwhile gets the same error.
 *
 * @example
 * const file = new ServedImageFile("recovery.img");
 * const image = await file.current(); // on every HELLO
 */
export class ServedImageFile {
  #image: ServedImage | undefined;
  #loading: Promise<ServedImage> | undefined;
  #failure: { stamp: FileStamp; error: Error } | undefined;

  constructor(readonly path: string) {}

  /** The image as the file is now. */
  async current(): Promise<ServedImage> {
    if (this.#loading) return this.#loading;
    let stamp: FileStamp;
    try {
      stamp = stampOf(await stat(this.path));
    } catch (error) {
      throw new ImageFormatError(`cannot read ${this.path}: ${(error as Error).message}`);
    }
    if (this.#image && sameStamp(this.#image.stamp, stamp)) return this.#image;
    if (this.#failure && sameStamp(this.#failure.stamp, stamp)) throw this.#failure.error;
    this.#loading = loadServedImage(this.path);
    try {
      this.#image = await this.#loading;
      this.#failure = undefined;
      return this.#image;
    } catch (error) {
      this.#failure = { stamp, error: error as Error };
      throw error;
    } finally {
      this.#loading = undefined;
    }
  }
}
