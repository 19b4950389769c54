/**
 * The images a boot server offers, each served from a file through the page
 * cache as the raw pool bytes a sled fetches.
 *
 * A sled asks for offsets into the raw (uncompressed) image (netboot.md), so
 * a zlib image is inflated once, when it is loaded, into a temporary file
 * (inflateDirectory: $TMPDIR, else /var/tmp) that is removed from its
 * directory as soon as it is made, so it goes when the server exits however
 * it exits; a plain image is served from its own file. Session threads read
 * the bytes they send with pread (lib/netboot/raw-image.ts), so resident memory
 * does not grow with the image, and however many sleds boot from an image,
 * it is in the page cache once. Checking (hashing, and inflating) runs on a
 * worker thread beside the sessions (lib/netboot/image-fill.ts), and the SHA-256 of the raw image must
 * equal the header's, since that is what a sled checks after the transfer
 * and what the OFFER promises.
 *
 * The image is served while it is checked: a plain image's bytes are all in
 * its file from the start, and a zlib image's as far as it is inflated
 * (sessions hold READs for the rest), so a sled's first DATA waits neither
 * for a large pool to be hashed nor inflated. The sled checks the SHA-256
 * itself, so nothing unchecked reaches a booted sled; an image whose check
 * fails at the end has its sleds RESET and is refused from then on
 * (ServedImage.filled, ServedImageFile).
 *
 * A zstd image (docs/format.md) is the exception: only its seek table is
 * checked and its compressed payload read into shared memory at load;
 * sessions decompress the blocks READs touch through a block cache they
 * share (lib/netboot/block-cache.ts). Its SHA-256 is not checked here, as that
 * needs every block; each block's checksum is checked as it is decompressed.
 *
 * An image is refused, saying why, when a sled could not boot it over the
 * network: below 1 MiB, not a whole number of 128 KiB batches, or larger than
 * its ramdisk (lib/image/format.ts, netbootRefusals and kernelRefusals).
 *
 * ServedImageFile rereads the file when it changed (size, mtime or inode
 * differ), as the existing bootserver rereads the image on each HELLO so a
 * rebuilt image is picked up without a restart. Sessions already running
 * keep the file they started with open: a file replaced by a rename, or
 * removed, stays readable to them (lib/netboot/raw-image.ts).
 */

import { closeSync, mkdtempSync, openSync, rmSync, statfsSync } from "node:fs";
import { type FileHandle, open, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { oneLine, systemReason } from "@ramdisk-tools/errors/errors.ts";
import {
  decodeHeader,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  isCompressed,
  kernelRefusals,
  netbootRefusals,
} from "@ramdisk-tools/image/format.ts";
import { IMAGE_VERSIONS, payloadCodec, readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";
import type { SeekTable } from "@ramdisk-tools/image/zstd-seekable.ts";
import { stopReadAhead, type ZstdImageMemory, zstdImageMemory } from "./block-cache.ts";
import { type FillRequest, type FillResult, READ_CHUNK } from "./image-fill.ts";
import { inflateDirectory, RawImageFill, type RawImageHandle, rawImageHandle } from "./raw-image.ts";
import type { ServedImageThreads } from "./threads.ts";

/** What identifies one version of a file: a rebuilt image differs in one of these. */
export interface FileStamp {
  size: number;
  mtimeMs: number;
  ino: number;
  dev: number;
}

/**
 * An image's bytes as sessions read them: the file holding the raw pool
 * (exactly header.imageSize bytes, filled as it loads) for plain and zlib
 * images, the payload and block cache in shared memory for a zstd one.
 */
export type ServedBytes = RawImageHandle | ZstdImageMemory;

/** An image ready to serve: its header and where sessions read its bytes. */
export interface ServedImage {
  path: string;
  /** The file's base name, for messages and progress lines. */
  name: string;
  header: Header;
  bytes: ServedBytes;
  stamp: FileStamp;
  /**
   * A raw image's load, which goes on while it is served: resolves with the
   * seconds it took once every byte is in its file and the SHA-256 matched,
   * rejects (ImageFormatError) when it did not. Absent for a zstd image.
   */
  filled?: Promise<number>;
  /**
   * The image is no longer offered: end the thread a zstd image has beside its sessions (its read-ahead), or
   * close a raw image's file once its fill has ended and a sled offered it has had time to open its own;
   * sessions still serving it go on.
   */
  retire?: () => void;
}

function stampOf(stats: { size: number; mtimeMs: number; ino: number; dev: number }): FileStamp {
  return { size: stats.size, mtimeMs: stats.mtimeMs, ino: stats.ino, dev: stats.dev };
}

function sameStamp(a: FileStamp, b: FileStamp): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ino === b.ino && a.dev === b.dev;
}

/**
 * Open an image file for serving and read and check its header; throws
 * ImageFormatError naming the file and every reason a sled could not netboot
 * it. The descriptor returned is the caller's to close.
 */
async function openServable(path: string): Promise<{ header: Header; stamp: FileStamp; fd: number }> {
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
    // The descriptor outlives the FileHandle: a duplicate of it, so closing the handle leaves it open.
    return { header, stamp: stampOf(stats), fd: openSync(`/proc/self/fd/${file.fd}`, "r") };
  } finally {
    await file.close();
  }
}

/**
 * A temporary file for an inflated image of `size` bytes, already removed
 * from its directory: it lives as long as a descriptor on it does, so it is
 * gone when the server exits however it exits. Throws ImageFormatError when
 * the directory cannot hold it.
 */
function inflatedFile(path: string, size: number): number {
  const directory = inflateDirectory();
  try {
    const free = statfsSync(directory);
    const available = free.bavail * free.bsize;
    if (available < size)
      throw new ImageFormatError(
        `cannot serve ${path}: inflating it needs ${mib(size)} in ${directory}, which has ${mib(available)} free (TMPDIR chooses another place)`,
      );
    const made = mkdtempSync(join(directory, "bootserver-"));
    const file = join(made, basename(path));
    const fd = openSync(file, "w+", 0o600);
    rmSync(made, { recursive: true });
    return fd;
  } catch (error) {
    if (error instanceof ImageFormatError) throw error;
    throw new ImageFormatError(
      `cannot serve ${path}: cannot make a file to inflate it into in ${directory}: ${systemReason(error)}`,
    );
  }
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/**
 * How long a retired image's descriptors stay open: a sled offered it just
 * before it was retired has its session open its own within that time
 * (lib/netboot/dispatch.ts forgets an offer not taken up after as long).
 */
const RETIRED_CLOSE_MS = 30_000;

/**
 * Load an image for serving: check its header, then serve it from its file
 * (plain) or from a temporary file it is inflated into (zlib), with a thread
 * (`threads`) checking its SHA-256 beside the sessions. Returns as soon as the
 * image can be offered; `filled` says how the load ended. A zstd image gets
 * a block cache of `zstdCacheBytes` (DEFAULT_CACHE_BYTES when absent).
 *
 * @example
 * const image = await loadServedImage("recovery.img", SERVER_THREADS); // image.bytes: served from the file at once
 * await image.filled; // every byte in, SHA-256 checked
 */
export async function loadServedImage(
  path: string,
  threads: ServedImageThreads,
  zstdCacheBytes?: number,
): Promise<ServedImage> {
  const source = await openServable(path);
  const { header, stamp } = source;
  if (payloadCodec(header) === "zstd") {
    closeSync(source.fd);
    const memory = await loadZstdPayload(path, header, zstdCacheBytes);
    const retire = startReadAhead(memory, threads.blockCache);
    return { path, name: basename(path), header, bytes: memory, stamp, retire };
  }
  const name = basename(path);
  let handle: RawImageHandle;
  try {
    const inflated = isCompressed(header) ? inflatedFile(path, header.imageSize) : null;
    handle = rawImageHandle(header.imageSize, {
      fd: inflated ?? source.fd,
      start: inflated === null ? HEADER_SIZE : 0,
      name,
    });
  } catch (error) {
    closeSync(source.fd);
    throw error;
  }
  // A plain image is in its file whole: only its check goes on.
  if (!isCompressed(header)) new RawImageFill(handle).filledTo(header.imageSize);
  const started = performance.now();
  const worker = new Worker(threads.imageFill);
  const filled = new Promise<FillResult>((resolve) => {
    worker.onmessage = (event: MessageEvent<FillResult>) => resolve(event.data);
    worker.onerror = (event) => {
      // The thread died without saying how the fill ended: the sessions must not wait for it.
      new RawImageFill(handle).settle(false);
      resolve({ ok: false, message: event.message });
    };
    const request: FillRequest = { path, header, handle, source: source.fd, inflateStage: threads.inflateStage };
    worker.postMessage(request);
  }).then((result) => {
    worker.terminate();
    if (!result.ok) throw new ImageFormatError(result.message);
    return (performance.now() - started) / 1000;
  });
  // Whoever serves the image handles the outcome; this keeps a failure nobody awaited from being "unhandled".
  filled.catch(() => {});
  let retired = false;
  // Sessions booting from it keep their own descriptors; the fill, if still going, finishes for them.
  const retire = () => {
    if (retired) return;
    retired = true;
    const close = () => {
      closeSync(source.fd);
      if (handle.fd !== source.fd) closeSync(handle.fd);
    };
    void filled.catch(() => {}).then(() => setTimeout(close, RETIRED_CLOSE_MS).unref());
  };
  return { path, name, header, bytes: handle, stamp, filled, retire };
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
 * Start the read-ahead thread of a zstd image from `entryPoint` (ServerThreads.blockCache);
 * returns what stops it. The thread does not keep the process alive.
 *
 * @example const retire = startReadAhead(memory, SERVER_THREADS.blockCache); // later: retire();
 */
export function startReadAhead(memory: ZstdImageMemory, entryPoint: string): () => void {
  const worker = new Worker(entryPoint);
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
 * const file = new ServedImageFile("recovery.img", SERVER_THREADS);
 * const image = await file.current(); // on every HELLO
 */
export class ServedImageFile {
  #image: ServedImage | undefined;
  #loading: Promise<ServedImage> | undefined;
  #failure: { stamp: FileStamp; error: Error } | undefined;

  /** `threads` and `zstdCacheBytes`: as loadServedImage's. */
  constructor(
    readonly path: string,
    readonly threads: ServedImageThreads,
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
    this.#loading = loadServedImage(this.path, this.threads, this.zstdCacheBytes);
    try {
      const image = await this.#loading;
      this.#image?.retire?.();
      this.#image = image;
      this.#failure = undefined;
      image.filled?.catch((error: Error) => {
        if (this.#image !== image) return;
        image.retire?.();
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
