/**
 * A raw image (plain, or zlib inflated) served from a file through the page
 * cache, while it is still being checked or filled.
 *
 * The raw bytes are never held in the process: a plain image is read from
 * its own file (past the 4 KiB header), a zlib image from a temporary file
 * it is inflated into once (lib/netboot/served-image.ts). Each session reads
 * the bytes a READ asks for with one pread(2) into a buffer of its own
 * (RawImageReader), so resident memory does not grow with the image, and
 * every image, session and server on the machine shares one copy in the page
 * cache. A mapped view would save that read, but a file truncated under a
 * mapping turns the next access into SIGBUS, which kills the whole server;
 * a read only comes back short.
 *
 * Every thread of a process shares its file descriptors, so the handle sent
 * to the sessions carries the loader's descriptor number. Each session opens
 * its own descriptor on the same open file (/proc/self/fd/N), checks it is
 * the same inode, and keeps it until it serves something else: a file
 * replaced by a rename or removed while sleds boot from it stays readable to
 * them, as the old inode lives as long as a descriptor does, and the loader
 * may close its own when it loads the file's new version.
 *
 * The sled checks the SHA-256 of what it fetched itself (netboot.md, "End of
 * image"), so the server need not finish inflating an image, nor hashing
 * it, before its first DATA: it may answer any offset whose bytes are
 * already in the file. A plain file holds them all from the start; a zlib
 * image is inflated from its start, in order, so one shared count says what
 * can be answered: the KiB filled so far (images are whole 128 KiB batches,
 * and a count of KiB in an Int32 reaches 2 TiB, past the kernel's 4 GiB
 * limit). The filling thread writes the bytes, then stores the count, and
 * wakes the waiting readers.
 *
 * A second word says how the fill ended: still filling (or checking),
 * whole (every byte is in and the SHA-256 matched the header's) or failed.
 * A failure found after serving began (the SHA-256 differs, the payload ends
 * early or is corrupt) reaches every session at once through that word: each
 * sends its sled a RESET rather than let it finish a boot that cannot
 * succeed, and the bytes already sent were the file's, never anything else.
 *
 * A reader waits without blocking its thread (Atomics.waitAsync), so a
 * session waiting for bytes still takes its channel's messages.
 */

import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { closeSync, existsSync, fstatSync, openSync, readSync, readvSync } from "node:fs";
import { tmpdir } from "node:os";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { CHUNK_SIZE } from "@ramdisk-tools/protocol/frames.ts";

const LIBC_SYMBOLS = {
  preadv: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i64], returns: FFIType.i64 },
} as const;
let libcLoaded: ReturnType<typeof dlopen<typeof LIBC_SYMBOLS>>["symbols"] | undefined;
/** libc's preadv, loaded on first use. */
function libc() {
  libcLoaded ??= dlopen("libc.so.6", LIBC_SYMBOLS).symbols;
  return libcLoaded;
}

/** One raw image being served, as sent to session threads: where its bytes are read from, and how far they go. */
export interface RawImageHandle {
  kind: "raw";
  /** The image file's base name, for messages. */
  name: string;
  /** Bytes of the raw image (the header's image_size). */
  size: number;
  /** A descriptor of this process on the file the raw bytes are in; -1 for none (an image that is all holes, in tests). */
  fd: number;
  /** That file's device and inode, so a session can tell it reopened the same file. */
  dev: number;
  ino: number;
  /** Where the raw image starts in the file: after the header for a plain image, 0 for an inflated one. */
  start: number;
  /** Int32 words: KiB filled, fill state. */
  progress: SharedArrayBuffer;
}

/**
 * Where a zlib image is inflated to: $TMPDIR, else /var/tmp (on disk where
 * /tmp may be memory), else the system's temporary directory.
 *
 * @example inflateDirectory() // "/var/tmp"
 */
export function inflateDirectory(): string {
  if (process.env.TMPDIR) return process.env.TMPDIR;
  return existsSync("/var/tmp") ? "/var/tmp" : tmpdir();
}

const FILLED_KIB = 0;
const STATE = 1;
/** `state` values. */
const FILLING = 0;
const WHOLE = 1;
const FAILED = 2;
const KIB = 1024;

/**
 * A handle for a raw image of `size` bytes at `start` in the open file `fd`
 * (its identity from fstat), empty and filling; with no file (fd -1) it
 * serves nothing, for tests that only pass it along.
 *
 * @example const handle = rawImageHandle(header.imageSize, { fd, start: HEADER_SIZE, name: "recovery.img" });
 */
export function rawImageHandle(
  size: number,
  file: { fd: number; start: number; name: string } = noFile,
): RawImageHandle {
  const stats = file.fd >= 0 ? fstatSync(file.fd) : { dev: 0, ino: 0 };
  return {
    kind: "raw",
    name: file.name,
    size,
    fd: file.fd,
    dev: stats.dev,
    ino: stats.ino,
    start: file.start,
    progress: new SharedArrayBuffer(8),
  };
}
const noFile = { fd: -1, start: 0, name: "(none)" };

/**
 * The filling side: say how far the bytes go, and how the fill ended.
 *
 * @example
 * const fill = new RawImageFill(handle);
 * writeSync(fd, piece, 0, piece.length, at); fill.filledTo(at + piece.length);
 * fill.settle(true);
 */
export class RawImageFill {
  readonly #words: Int32Array;

  constructor(handle: RawImageHandle) {
    this.#words = new Int32Array(handle.progress);
  }

  /** The first `bytes` bytes are in the file (counted in whole KiB; the last, short one counts once it is whole). */
  filledTo(bytes: number): void {
    Atomics.store(this.#words, FILLED_KIB, Math.floor(bytes / KIB));
    Atomics.notify(this.#words, FILLED_KIB);
  }

  /** The fill ended: whole and verified, or failed (sessions then RESET their sleds). */
  settle(whole: boolean): void {
    Atomics.store(this.#words, STATE, whole ? WHOLE : FAILED);
    // Readers waiting for bytes that will never come wake on the count too.
    Atomics.notify(this.#words, STATE);
    Atomics.notify(this.#words, FILLED_KIB);
  }
}

/**
 * What a read of the image found instead of its bytes: the file is
 * shorter than the image (truncated under the server) or could not be read.
 * `lasting` when the bytes are gone for good (the file was truncated, or the
 * server no longer has it open), not when a read failed and may not again.
 */
export class RawImageReadError extends Error {
  override name = "RawImageReadError";
  constructor(
    message: string,
    readonly lasting: boolean,
  ) {
    super(message);
  }
}

/**
 * The reading side, for one session thread: its own descriptor on the
 * image's file, reads into the caller's buffer, and the fill's progress.
 *
 * @example
 * const image = new RawImageReader(handle);
 * const waiting = image.until(offset); // null: the bytes are in the file
 * image.read(buffer, 0, offset, 131072);
 * image.close();
 */
export class RawImageReader {
  readonly size: number;
  readonly name: string;
  readonly #words: Int32Array;
  readonly #handle: RawImageHandle;
  /** This reader's descriptor; -1 before the first read, null once closed. */
  #fd: number | null = -1;
  /** Resolves when the fill ends: true when it failed. */
  readonly failed: Promise<boolean>;

  constructor(handle: RawImageHandle) {
    this.#handle = handle;
    this.size = handle.size;
    this.name = handle.name;
    this.#words = new Int32Array(handle.progress);
    this.failed = this.#settled().then((state) => state === FAILED);
    // Opened now, while the loader's descriptor surely is: it may close it once the image is replaced.
    if (handle.fd >= 0) {
      try {
        this.#open();
      } catch {
        // The first read says why.
      }
    }
  }

  /** The fill failed: no offset may be answered any more. */
  get broken(): boolean {
    return Atomics.load(this.#words, STATE) === FAILED;
  }

  /** Still being filled (and checked). */
  get filling(): boolean {
    return Atomics.load(this.#words, STATE) === FILLING;
  }

  /**
   * null when the bytes answering `offset` (CHUNK_SIZE from it, fewer at
   * the end, none past it) are in the file; else a promise that resolves
   * once they are, or once the fill has failed.
   */
  until(offset: bigint): Promise<void> | null {
    if (this.#has(offset)) return null;
    return this.#waitFor(offset);
  }

  /**
   * Read `length` image bytes from `position` into `buffer` at `at` (one
   * pread); throws RawImageReadError, saying why, when the file holds fewer
   * or cannot be read.
   */
  read(buffer: Uint8Array, at: number, position: number, length: number): void {
    const fd = this.#open();
    let done = 0;
    try {
      while (done < length) {
        const count = readSync(fd, buffer, at + done, length - done, this.#handle.start + position + done);
        if (count === 0) break;
        done += count;
      }
    } catch (error) {
      throw new RawImageReadError(`cannot read ${this.name} at byte ${position + done}: ${systemReason(error)}`, false);
    }
    if (done < length) {
      const now = fstatSync(fd).size - this.#handle.start;
      throw new RawImageReadError(
        `${this.name} was truncated under the server: it holds ${Math.max(now, 0)} of its ${this.size} bytes`,
        true,
      );
    }
  }

  /**
   * Read `length` image bytes from `position` into `buffers`, in order, with
   * one readv(2) (each buffer filled whole, the last as far as `length` goes);
   * throws as `read` does.
   */
  readv(buffers: readonly Uint8Array[], position: number, length: number): void {
    const fd = this.#open();
    let done: number;
    try {
      done = readvSync(fd, buffers as Uint8Array[], this.#handle.start + position);
    } catch (error) {
      throw new RawImageReadError(`cannot read ${this.name} at byte ${position}: ${systemReason(error)}`, false);
    }
    if (done === length) return;
    // Short: the end of the file, or an interruption; finish buffer by buffer, which says which.
    let at = 0;
    for (const buffer of buffers) {
      const end = at + buffer.length;
      if (end > done) {
        const from = Math.max(done - at, 0);
        this.read(buffer, from, position + at + from, buffer.length - from);
      }
      at = end;
    }
  }

  /**
   * Like readv, but into `count` struct iovec the caller keeps at `vectors`
   * (made once, pointing at buffers that do not move): one preadv(2) and no
   * work per buffer here. Returns false, having read nothing certain, when
   * the call came back short, for the caller to read again with readv, which
   * says why.
   */
  preadv(vectors: Pointer, count: number, position: number, length: number): boolean {
    const fd = this.#open();
    return Number(libc().preadv(fd, vectors, count, this.#handle.start + position)) === length;
  }

  /** Give up this reader's descriptor. */
  close(): void {
    if (this.#fd !== null && this.#fd >= 0) closeSync(this.#fd);
    this.#fd = null;
  }

  /** This reader's descriptor on the loader's open file, opened on first use. */
  #open(): number {
    if (this.#fd === null) throw new RawImageReadError(`${this.name}: the reader was closed`, true);
    if (this.#fd >= 0) return this.#fd;
    const handle = this.#handle;
    let fd: number;
    try {
      fd = openSync(`/proc/self/fd/${handle.fd}`, "r");
    } catch (error) {
      throw new RawImageReadError(`cannot reopen ${this.name}: ${systemReason(error)}`, true);
    }
    const stats = fstatSync(fd);
    if (stats.ino !== handle.ino || stats.dev !== handle.dev) {
      // The loader closed it (the image was reloaded) and the number went to another file.
      closeSync(fd);
      throw new RawImageReadError(`cannot reopen ${this.name}: the server closed it`, true);
    }
    this.#fd = fd;
    return fd;
  }

  #has(offset: bigint): boolean {
    const size = this.size;
    if (offset >= BigInt(size)) return true;
    const end = Math.min(Number(offset) + CHUNK_SIZE, size);
    return Atomics.load(this.#words, FILLED_KIB) * KIB >= end || Atomics.load(this.#words, STATE) !== FILLING;
  }

  async #waitFor(offset: bigint): Promise<void> {
    for (;;) {
      const filled = Atomics.load(this.#words, FILLED_KIB);
      if (this.#has(offset)) return;
      const waiting = Atomics.waitAsync(this.#words, FILLED_KIB, filled);
      if (waiting.async) await waiting.value;
    }
  }

  async #settled(): Promise<number> {
    for (;;) {
      const state = Atomics.load(this.#words, STATE);
      if (state !== FILLING) return state;
      const waiting = Atomics.waitAsync(this.#words, STATE, FILLING);
      if (waiting.async) await waiting.value;
    }
  }
}
