/**
 * Where a session takes the bytes that answer a READ from: an ImageSource,
 * made by imageSource() from what the main thread shares for an image
 * (lib/netboot/served-image.ts ServedBytes).
 *
 * A zstd image is read through lib/netboot/block-cache.ts, which decompresses
 * the block an offset falls in and checks its checksum; a block that fails
 * its check throws ImageFormatError, and the session sends its sled a RESET
 * instead of the bytes (lib/netboot/session.ts). While its sled moves through
 * a block, the next one is decompressed ahead, off the READ path.
 *
 * A plain or zlib image is read from its file, and served while the file is
 * still being filled (lib/netboot/raw-image.ts): until() tells the session to
 * hold a READ that asks past what is filled, and when to try it again, so
 * that no READ is answered with bytes that are not there yet. Should the
 * image fail its check once filled, `failed` says so and the sled is sent a
 * RESET at once. Its bytes are read straight into the DATA frames that carry
 * them, with one readv(2) per run of offsets, and never copied in JavaScript
 * (FileImage).
 */

import { type Pointer, ptr } from "bun:ffi";
import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import {
  CHUNK_SIZE,
  DATA_IMAGE_OFFSET,
  type DataFrameWriter,
  READ_SLOTS,
  type ReadRequest,
} from "@ramdisk-tools/protocol/frames.ts";
import { type ZstdImageMemory, ZstdImageReader } from "./block-cache.ts";
import { type RawImageHandle, RawImageReadError, RawImageReader } from "./raw-image.ts";
import type { ServedBytes } from "./served-image.ts";

/** Where a session takes the bytes that answer an offset from. */
export interface ImageSource {
  /** Bytes of the raw image. */
  readonly size: number;
  /** The DATA frame answering `offset`, by `writer` (DataFrameWriter.answer's bytes); throws ImageFormatError for a damaged block. */
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array;
  /** Done with the bytes of the last answer (a shared cache may reuse them). */
  release(): void;
  /**
   * Called for every READ before its answers: null when every offset of `read` can be answered now (a file-backed
   * image has read their bytes); else resolves when the READ should be tried again (the image is being filled, or
   * its file could not be read).
   */
  until(read: ReadRequest): Promise<void> | null;
  /** The session serves something else: let go of what this source holds (a file's descriptor). */
  close?(): void;
  /**
   * For an image still being filled: resolves when the fill ends, true when it failed its check after serving
   * began (lib/netboot/raw-image.ts); the sled is then RESET.
   */
  readonly failed: Promise<boolean> | null;
}

/** A raw image whole in memory as an ImageSource (tests serve one). */
class RawImage implements ImageSource {
  readonly failed = null;
  constructor(readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    return writer.answer(offset, this.bytes);
  }
  release(): void {}
  until(): null {
    return null;
  }
}

/** A DATA frame of a whole chunk: headers, offset and 1024 image bytes (1058 bytes). */
const FRAME_BYTES = DATA_IMAGE_OFFSET + CHUNK_SIZE;
/** A READ held because the image's file could not be read is tried again after this long. */
const UNREADABLE_RETRY_MS = 1000;
const NO_BYTES = new Uint8Array(0);

/**
 * A raw image read from its file (lib/netboot/raw-image.ts) as an ImageSource,
 * whole or still being filled.
 *
 * Its bytes are never copied in JavaScript. The source keeps one DATA frame
 * per slot in one buffer, and until() reads the chunks a READ asks for
 * straight into those frames, behind their headers: one readv(2) for each
 * run of consecutive offsets, so one system call for a READ of a new batch.
 * answer() then only writes each frame's headers, length and offset around
 * its bytes (DataFrameWriter.wrap), and the link sends the frames where they
 * are. So answer() must follow until() for the same READ, offset by offset
 * in requestedOffsets order, as SledSession does; the frames stay as they
 * are, for re-sending, until the next until().
 *
 * The file can change under the server. Replaced by a rename, or removed, it
 * stays readable here (the session keeps its descriptor) and nothing changes.
 * Shorter than the image (truncated in place, or being rewritten), its bytes
 * are gone for good: no answer can be right, so the READ draws the RESET of
 * an image that failed (answer throws ImageFormatError) and the sled starts
 * over with the file as it is then. Unreadable (an I/O error): the READ is
 * held and tried again after UNREADABLE_RETRY_MS, said once through
 * `onProblem`, as the error may pass and a RESET reboots the sled.
 */
class FileImage implements ImageSource {
  readonly failed: Promise<boolean> | null;
  readonly size: number;
  readonly #end: bigint;
  readonly #reader: RawImageReader | null;
  readonly #onProblem: (message: string) => void;
  /** One whole DATA frame per slot, and the image bytes of each (views made once). */
  readonly #frames: Uint8Array[] = [];
  readonly #chunks: Uint8Array[] = [];
  /**
   * A struct iovec per slot, at its image bytes, for preadv, made once. Both it and the frames are views of
   * ArrayBuffers of their own, whose memory the garbage collector never moves.
   */
  readonly #vectors = new BigUint64Array(new ArrayBuffer(READ_SLOTS * 16));
  readonly #vectorsAt: number;
  /**
   * The offsets until() read, in answer order (requestedOffsets'), as Numbers: -1 for one at or past the end of
   * the image; how many, and the next to answer.
   */
  readonly #starts = new Float64Array(READ_SLOTS + 1);
  #count = 0;
  #next = 0;
  /** Why the file cannot serve this boot any more (it was truncated): every answer throws it. */
  #gone: string | null = null;
  #saidUnreadable = false;

  constructor(image: RawImageHandle, onProblem: (message: string) => void = () => {}) {
    this.#reader = new RawImageReader(image);
    this.size = image.size;
    this.#end = BigInt(image.size);
    this.failed = this.#reader.failed;
    this.#onProblem = onProblem;
    const slab = new Uint8Array(new ArrayBuffer(READ_SLOTS * FRAME_BYTES));
    const slabAt = ptr(slab);
    for (let slot = 0; slot < READ_SLOTS; slot++) {
      const frame = slab.subarray(slot * FRAME_BYTES, (slot + 1) * FRAME_BYTES);
      this.#frames.push(frame);
      this.#chunks.push(frame.subarray(DATA_IMAGE_OFFSET));
      this.#vectors[slot * 2] = BigInt(slabAt + slot * FRAME_BYTES + DATA_IMAGE_OFFSET);
      this.#vectors[slot * 2 + 1] = BigInt(CHUNK_SIZE);
    }
    this.#vectorsAt = ptr(this.#vectors);
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    if (this.#reader?.broken) throw new ImageFormatError("the image failed its check after serving began");
    if (this.#gone !== null) throw new ImageFormatError(this.#gone);
    const slot = this.#next++;
    const at = this.#starts[slot]!;
    if (at < 0) {
      if (slot < this.#count && offset >= this.#end) return writer.frame(offset, NO_BYTES);
    } else if (slot < this.#count && Number(offset) === at) {
      return writer.wrap(at, this.#frames[slot]!, Math.min(CHUNK_SIZE, this.size - at));
    }
    throw new Error(`offset ${offset} was not read for this READ`);
  }
  release(): void {}
  /** Read the chunks `read` asks for into the frames; hold it while they are not filled, or the file cannot be read. */
  until(read: ReadRequest): Promise<void> | null {
    const reader = this.#reader;
    if (!reader || this.#gone !== null || reader.broken) return null;
    const count = this.#offsetsOf(read);
    this.#count = count;
    if (reader.filling) {
      // Filled in order from the start, so the furthest offset asked decides (an empty slot's 0 never does).
      let furthest = 0;
      for (let slot = 0; slot < count; slot++) furthest = Math.max(furthest, this.#starts[slot]!);
      const filled = reader.until(BigInt(furthest));
      if (filled) return filled;
    }
    this.#next = 0;
    try {
      this.#read(reader, count);
      return null;
    } catch (error) {
      if (!(error instanceof RawImageReadError)) throw error;
      if (error.lasting) {
        this.#gone = `${error.message}; no answer can be right, the sled starts over`;
        return null;
      }
      if (!this.#saidUnreadable) this.#onProblem(`holding the sled's READs: ${error.message}`);
      this.#saidUnreadable = true;
      return Bun.sleep(UNREADABLE_RETRY_MS);
    }
  }
  /**
   * requestedOffsets(read) into #starts as Numbers, read as 32-bit halves (no BigInt per slot): every non-zero
   * slot in order, after a 0 when fewer than `count` are non-zero; -1 for an offset at or past the end. Returns how
   * many.
   */
  #offsetsOf(read: ReadRequest): number {
    const slots = read.slots;
    const words = new Uint32Array(slots.buffer, slots.byteOffset, slots.length * 2);
    const starts = this.#starts;
    const size = this.size;
    let count = 0;
    for (let slot = 0; slot < slots.length; slot++) {
      const low = words[slot * 2]!;
      const high = words[slot * 2 + 1]!;
      if (low === 0 && high === 0) continue;
      // Past 2^53 the Number is inexact, but far past any image all the same.
      const at = high * 0x1_0000_0000 + low;
      starts[++count] = at < size ? at : -1;
    }
    if (BigInt(count) < read.count) starts[0] = 0;
    else starts.copyWithin(0, 1, count + 1);
    return BigInt(count) < read.count ? count + 1 : count;
  }
  close(): void {
    this.#reader?.close();
  }

  /** One preadv for each run of consecutive offsets inside the image, into the frames of their slots. */
  #read(reader: RawImageReader, count: number): void {
    const starts = this.#starts;
    const size = this.size;
    for (let first = 0; first < count; ) {
      const start = starts[first]!;
      if (start < 0) {
        first++;
        continue;
      }
      let end = first + 1;
      while (end < count && starts[end] === start + (end - first) * CHUNK_SIZE) end++;
      const length = Math.min((end - first) * CHUNK_SIZE, size - start);
      // Images are whole 128 KiB batches, so only a damaged one ends inside a chunk.
      const whole = length === (end - first) * CHUNK_SIZE;
      if (!whole || !reader.preadv((this.#vectorsAt + first * 16) as Pointer, end - first, start, length)) {
        const chunks = this.#chunks.slice(first, end);
        if (!whole) chunks[chunks.length - 1] = chunks.at(-1)!.subarray(0, length % CHUNK_SIZE);
        reader.readv(chunks, start, length);
      }
      first = end;
    }
  }
}

/**
 * A zstd image in shared memory as an ImageSource. It has blocks read ahead
 * off the READ path: whenever its sled enters a block, the image's
 * read-ahead thread is told to decompress the next one (lib/netboot/block-cache.ts,
 * hint), and before the first READ, the first.
 */
class ZstdImage implements ImageSource {
  readonly #reader: ZstdImageReader;
  /** Where the block last hinted at starts. */
  #ahead = 0;
  #furthest = 0;
  readonly #end: bigint;
  constructor(memory: ZstdImageMemory) {
    this.#reader = new ZstdImageReader(memory);
    this.#end = BigInt(this.#reader.size);
    this.#reader.hint(0);
  }
  get size(): number {
    return this.#reader.size;
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    if (offset < this.#end && Number(offset) > this.#furthest) this.#furthest = Number(offset);
    return writer.frame(offset, this.#reader.chunk(offset));
  }
  release(): void {
    this.#reader.release();
    const ahead = this.#reader.nextBlockOffset(this.#furthest);
    if (ahead === this.#ahead) return;
    this.#ahead = ahead;
    this.#reader.hint(ahead);
  }
  until(): null {
    return null;
  }
  readonly failed = null;
}

/**
 * The source a session reads an image's bytes from: the raw pool's file
 * (answered as far as it is filled), or a zstd payload through the shared
 * block cache. `onProblem` hears, once, that a raw image's file cannot be
 * read and its sled's READs are held.
 *
 * @example session.serve(imageSource(message.bytes, report));
 */
export function imageSource(
  bytes: ServedBytes | Uint8Array,
  onProblem: (message: string) => void = () => {},
): ImageSource {
  if (bytes instanceof Uint8Array) return new RawImage(bytes);
  if (bytes.kind === "raw") return new FileImage(bytes, onProblem);
  return new ZstdImage(bytes);
}
