/**
 * A raw image (plain, or zlib inflated) in shared memory, served while it is
 * still being filled.
 *
 * The sled checks the SHA-256 of what it fetched itself (netboot.md, "End of
 * image"), so the server need not finish reading or inflating an image, nor
 * hashing it, before its first DATA: it may answer any offset whose bytes
 * are already in memory. The image is filled from its start, in order, so
 * one shared count says what can be answered: the KiB filled so far (images
 * are whole 128 KiB batches, and a count of KiB in an Int32 reaches 2 TiB,
 * past the kernel's 4 GiB limit). The filling thread stores the bytes, then
 * the count (Atomics.store after plain writes: a thread that loads the count
 * sees the bytes it covers), and wakes the waiting readers.
 *
 * A second word says how the fill ended: still filling, whole (every byte is
 * in and the SHA-256 matched the header's) or failed. A failure found after
 * serving began (the SHA-256 differs, the payload ends early or is corrupt)
 * reaches every session at once through that word: each sends its sled a
 * RESET rather than let it finish a boot that cannot succeed, and the bytes
 * already sent were the inflated ones, never anything else.
 *
 * A reader waits without blocking its thread (Atomics.waitAsync), so a
 * session waiting for bytes still takes its channel's messages.
 */

import { CHUNK_SIZE } from "@ramdisk-tools/protocol/frames.ts";

/** The shared memory of one raw image being served, as sent to session threads. */
export interface RawImageMemory {
  kind: "raw";
  /** The raw pool: exactly image_size bytes once filled. */
  bytes: SharedArrayBuffer;
  /** Int32 words: KiB filled, fill state. */
  progress: SharedArrayBuffer;
}

const FILLED_KIB = 0;
const STATE = 1;
/** `state` values. */
const FILLING = 0;
const WHOLE = 1;
const FAILED = 2;
const KIB = 1024;

/**
 * Shared memory for a raw image of `imageSize` bytes, empty and filling.
 *
 * @example const memory = rawImageMemory(header.imageSize); // filled by workers/served-image.ts
 */
export function rawImageMemory(imageSize: number): RawImageMemory {
  return { kind: "raw", bytes: new SharedArrayBuffer(imageSize), progress: new SharedArrayBuffer(8) };
}

/**
 * The filling side: say how far the bytes go, and how the fill ended.
 *
 * @example
 * const fill = new RawImageFill(memory);
 * target.set(piece, at); fill.filledTo(at + piece.length);
 * fill.settle(true);
 */
export class RawImageFill {
  readonly #words: Int32Array;

  constructor(memory: RawImageMemory) {
    this.#words = new Int32Array(memory.progress);
  }

  /** The first `bytes` bytes are in memory (counted in whole KiB; the last, short one counts once it is whole). */
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
 * The reading side, for one session thread.
 *
 * @example
 * const image = new RawImageView(memory);
 * const waiting = image.until(offset); // null: answer now
 */
export class RawImageView {
  readonly bytes: Uint8Array;
  readonly #words: Int32Array;
  /** Resolves when the fill ends: true when it failed. */
  readonly failed: Promise<boolean>;

  constructor(memory: RawImageMemory) {
    this.bytes = new Uint8Array(memory.bytes);
    this.#words = new Int32Array(memory.progress);
    this.failed = this.#settled().then((state) => state === FAILED);
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
   * the end, none past it) are in memory; else a promise that resolves once
   * they are, or once the fill has failed.
   */
  until(offset: bigint): Promise<void> | null {
    if (this.#has(offset)) return null;
    return this.#waitFor(offset);
  }

  #has(offset: bigint): boolean {
    const size = this.bytes.length;
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
