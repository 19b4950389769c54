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
 * The image is served while it loads (lib/netboot/raw-image.ts): sessions answer the
 * offsets already in memory and hold READs for the rest, so a sled's first
 * DATA does not wait for a large pool to be inflated. The sled checks the
 * SHA-256 itself, so nothing unchecked reaches a booted sled; an image whose
 * check fails at the end has its sleds RESET and is refused from then on
 * (ServedImage.filled, ServedImageFile).
 *
 * A zstd image (docs/format.md) is the exception: inflating a large pool
 * before the first DATA would keep a sled waiting for seconds, so only its
 * seek table is checked and its compressed payload read into shared memory
 * at load; sessions decompress the blocks READs touch through a block cache
 * they share (lib/netboot/block-cache.ts). Its SHA-256 is not checked here, as that
 * needs every block; each block's checksum is checked as it is decompressed.
 *
 * An image is refused, saying why, when a sled could not boot it over the
 * network: below 1 MiB, not a whole number of 128 KiB batches, or larger than
 * its ramdisk (lib/image/format.ts, netbootRefusals and kernelRefusals).
 *
 * ServedImageFile rereads the file when it changed (size, mtime or inode
 * differ), as the existing bootserver rereads the image on each HELLO so a
 * rebuilt image is picked up without a restart. Sessions already running
 * keep the bytes they started with: they hold their own reference.
 */

import { type FileHandle, open, stat } from "node:fs/promises";
import { basename } from "node:path";
import { oneLine, systemReason } from "@ramdisk-tools/cli/errors.ts";
import {
  decodeHeader,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  isCompressed,
  kernelRefusals,
  netbootRefusals,
  toHex,
} from "@ramdisk-tools/image/format.ts";
import type { InflateOrder, InflateReport } from "@ramdisk-tools/image/inflate-stage.ts";
import { sendPayload } from "@ramdisk-tools/image/verify.ts";
import { IMAGE_VERSIONS, payloadCodec, readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";
import type { SeekTable } from "@ramdisk-tools/image/zstd-seekable.ts";
import { PieceSender, receivePieces } from "@ramdisk-tools/threads/link.ts";
import { workerUrl } from "@ramdisk-tools/threads/worker-urls.ts";
import { stopReadAhead, type ZstdImageMemory, zstdImageMemory } from "./block-cache.ts";
import { RawImageFill, type RawImageMemory, rawImageMemory } from "./raw-image.ts";

/** What identifies one version of a file: a rebuilt image differs in one of these. */
export interface FileStamp {
  size: number;
  mtimeMs: number;
  ino: number;
  dev: number;
}

/**
 * An image's bytes in shared memory, as sessions read them: the raw pool
 * (exactly header.imageSize bytes, filled as it loads) for plain and zlib
 * images, the payload and block cache for a zstd one.
 */
export type ServedBytes = RawImageMemory | ZstdImageMemory;

/** An image ready to serve: its header and its bytes in shared memory. */
export interface ServedImage {
  path: string;
  /** The file's base name, for messages and progress lines. */
  name: string;
  header: Header;
  bytes: ServedBytes;
  stamp: FileStamp;
  /**
   * A raw image's load, which goes on while it is served: resolves with the
   * seconds it took once every byte is in memory and the SHA-256 matched,
   * rejects (ImageFormatError) when it did not. Absent for a zstd image.
   */
  filled?: Promise<number>;
  /** End the thread a zstd image has beside its sessions (its read-ahead); sessions still serving it go on. */
  retire?: () => void;
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
  let file: FileHandle;
  try {
    file = await open(path, "r");
  } catch (error) {
    throw new ImageFormatError(`cannot open ${path}: ${systemReason(error)}`);
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
      throw new ImageFormatError(`${path}: ${oneLine(error)}`);
    }
    const refusals = [...kernelRefusals(header), ...netbootRefusals(header)];
    if (refusals.length > 0) throw new ImageFormatError(`cannot serve ${path}: ${refusals.join("; ")}`);
    return { header, stamp: stampOf(stats) };
  } finally {
    await file.close();
  }
}

/**
 * Fill `memory` (header.imageSize bytes) with the raw image of the file at
 * `path`, saying after each piece how far it is filled, and check its byte
 * count and SHA-256 against the header; the memory's state then says whether
 * it is whole or failed (lib/netboot/raw-image.ts). A plain payload is read straight
 * into it. A compressed one goes through the inflate stage of lib/image/verify.ts
 * on a thread of its own (workers/inflate.ts), which stops at the first
 * output past image_size; its output is copied in and hashed here while it
 * inflates the next piece. This is the work of workers/served-image.ts.
 *
 * @example await fillRawImage("recovery.img", header, rawImageMemory(header.imageSize));
 */
export async function fillRawImage(path: string, header: Header, memory: RawImageMemory): Promise<void> {
  const fill = new RawImageFill(memory);
  try {
    await fillAndCheck(path, header, new Uint8Array(memory.bytes), fill);
  } catch (error) {
    fill.settle(false);
    throw error;
  }
  fill.settle(true);
}

async function fillAndCheck(path: string, header: Header, target: Uint8Array, fill: RawImageFill): Promise<void> {
  const hasher = new Bun.CryptoHasher("sha256");
  const filled = isCompressed(header)
    ? await inflateInto(path, header, target, hasher, fill)
    : await readInto(path, header, target, hasher, fill);
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

async function readInto(
  path: string,
  header: Header,
  target: Uint8Array,
  hasher: Bun.CryptoHasher,
  fill: RawImageFill,
): Promise<number> {
  const file = await open(path, "r");
  try {
    let filled = 0;
    while (filled < header.imageSize) {
      const length = Math.min(READ_CHUNK, header.imageSize - filled);
      const { bytesRead } = await file.read(target, filled, length, HEADER_SIZE + filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
      fill.filledTo(filled);
      hasher.update(target.subarray(filled - bytesRead, filled));
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
  fill: RawImageFill,
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
      throw new ImageFormatError(`${path}: ${oneLine(error)}`);
    });
    // A failed inflate stops taking input; its report says why, so the feeder's own error adds nothing.
    feeding.catch(() => {});
    let filled = 0;
    const storing = (async () => {
      for await (const piece of receivePieces(fromInflater.port2)) {
        target.set(piece, filled);
        filled += piece.length;
        // Published before it is hashed: sessions may send it while the hash catches up.
        fill.filledTo(filled);
        hasher.update(piece);
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
  memory: RawImageMemory;
}

/** What workers/served-image.ts answers: nothing on success, else the reason. */
export type FillResult = { ok: true } | { ok: false; message: string };

/**
 * Load an image for serving: check its header, then start reading or
 * inflating it into shared memory on a worker thread, which verifies it as
 * it goes. Returns as soon as the image can be offered; `filled` says how
 * the load ended. A zstd image gets a block cache of `zstdCacheBytes`
 * (DEFAULT_CACHE_BYTES when absent).
 *
 * @example
 * const image = await loadServedImage("recovery.img"); // image.bytes: the raw pool, filling
 * await image.filled; // every byte in, SHA-256 checked
 */
export async function loadServedImage(path: string, zstdCacheBytes?: number): Promise<ServedImage> {
  const { header, stamp } = await readServableHeader(path);
  if (payloadCodec(header) === "zstd") {
    const memory = await loadZstdPayload(path, header, zstdCacheBytes);
    return { path, name: basename(path), header, bytes: memory, stamp, retire: startReadAhead(memory) };
  }
  const memory = rawImageMemory(header.imageSize);
  const started = performance.now();
  const worker = new Worker(workerUrl("served-image").href);
  const filled = new Promise<FillResult>((resolve) => {
    worker.onmessage = (event: MessageEvent<FillResult>) => resolve(event.data);
    worker.onerror = (event) => {
      // The thread died without saying how the fill ended: the sessions must not wait for it.
      new RawImageFill(memory).settle(false);
      resolve({ ok: false, message: event.message });
    };
    worker.postMessage({ path, header, memory } satisfies FillRequest);
  }).then((result) => {
    worker.terminate();
    if (!result.ok) throw new ImageFormatError(result.message);
    return (performance.now() - started) / 1000;
  });
  // Whoever serves the image handles the outcome; this keeps a failure nobody awaited from being "unhandled".
  filled.catch(() => {});
  return { path, name: basename(path), header, bytes: memory, stamp, filled };
}

/**
 * Check a zstd image's seek table against its header and read its payload
 * into shared memory, with an empty block cache of `cacheBytes` beside it
 * (DEFAULT_CACHE_BYTES when absent): two small reads and one of the
 * compressed payload, however large the pool.
 *
 * @example const memory = await loadZstdPayload("dev.img", header);
 */
export async function loadZstdPayload(path: string, header: Header, cacheBytes?: number): Promise<ZstdImageMemory> {
  let table: SeekTable;
  try {
    table = await readSeekTable(Bun.file(path), header);
  } catch (error) {
    throw new ImageFormatError(`${path}: ${oneLine(error)}`);
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
  return zstdImageMemory(payload, table, cacheBytes);
}

/**
 * Start the read-ahead thread of a zstd image (workers/zstd-read-ahead.ts);
 * returns what stops it. The thread does not keep the process alive.
 *
 * @example const retire = startReadAhead(memory); // later: retire();
 */
export function startReadAhead(memory: ZstdImageMemory): () => void {
  const worker = new Worker(workerUrl("zstd-read-ahead").href);
  worker.unref();
  worker.postMessage(memory);
  return () => {
    stopReadAhead(memory);
    worker.terminate();
  };
}

/**
 * One image file as the server offers it: loaded on first use and loaded
 * again whenever the file has changed since, so a rebuilt image is picked up
 * on the next HELLO. A file that fails to load, or whose load fails its check
 * after serving began, is not tried again until it changes; asking meanwhile
 * gets the same error.
 *
 * @example
 * const file = new ServedImageFile("recovery.img");
 * const image = await file.current(); // on every HELLO
 */
export class ServedImageFile {
  #image: ServedImage | undefined;
  #loading: Promise<ServedImage> | undefined;
  #failure: { stamp: FileStamp; error: Error } | undefined;

  /** `zstdCacheBytes`: the block cache of a zstd image (DEFAULT_CACHE_BYTES when absent). */
  constructor(
    readonly path: string,
    readonly zstdCacheBytes?: number,
  ) {}

  /** The image as the file is now. */
  async current(): Promise<ServedImage> {
    if (this.#loading) return this.#loading;
    let stamp: FileStamp;
    try {
      stamp = stampOf(await stat(this.path));
    } catch (error) {
      throw new ImageFormatError(`cannot read ${this.path}: ${systemReason(error)}`);
    }
    if (this.#image && sameStamp(this.#image.stamp, stamp)) return this.#image;
    if (this.#failure && sameStamp(this.#failure.stamp, stamp)) throw this.#failure.error;
    this.#loading = loadServedImage(this.path, this.zstdCacheBytes);
    try {
      const image = await this.#loading;
      this.#image?.retire?.();
      this.#image = image;
      this.#failure = undefined;
      image.filled?.catch((error: Error) => {
        if (this.#image !== image) return;
        this.#image = undefined;
        this.#failure = { stamp, error };
      });
      return image;
    } catch (error) {
      this.#failure = { stamp, error: error as Error };
      throw error;
    } finally {
      this.#loading = undefined;
    }
  }
}
