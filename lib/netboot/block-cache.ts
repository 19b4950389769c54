/**
 * Serving a zstd image (docs/format.md, "The zstd variant") block by block:
 * the bootserver keeps the compressed payload in memory once and decompresses
 * only the block a READ touches, into a bounded cache of decompressed
 * blocks that every session thread shares.
 *
 * The cache is one SharedArrayBuffer: a small table of Int32 words, then N
 * slots of the largest block's size. Each slot has three words: `state`,
 * `block` and `stamp`. `state` is -1 while one thread writes the slot, else
 * the number of threads reading it (pins). Only a thread that moves `state`
 * from 0 to -1 (compareExchange) may change `block` and the slot's bytes, so
 * a slot someone is reading is never written. A reader pins a slot by adding
 * one to a non-negative `state` (compareExchange again), then checks `block`
 * once more: a writer could have taken, refilled and released the slot
 * between its first look and its pin, but can no longer once it holds the
 * pin. A miss takes the slot with no pins and the oldest `stamp` (a shared
 * clock counts uses; empty slots come first), publishes the block it is
 * filling, decompresses the frame into the slot and checks its size and
 * checksum (lib/image/zstd-frames.ts, decompressBlock), then turns its write lock
 * into a pin (`state` 1). A reader that finds its block being written waits
 * on `state` (Atomics.wait) instead of decompressing it a second time, and
 * looks again when woken: a failed fill empties the slot. Two threads that
 * miss the same block at the same moment may both fill a slot with it; both
 * copies are right, and one ages out. When every slot is pinned, or a writer
 * seems stuck (a thread terminated mid-fill leaves its slot locked for good),
 * the block is decompressed into the session's own buffer instead: slower,
 * never wrong.
 *
 * Blocks are read ahead of the sleds, off the READ path: each session says
 * where its sled will go next (hint: the block after the one it is in), and
 * one read-ahead thread per image (ServerThreads.blockCache, readAhead)
 * decompresses that block into a slot it does not keep pinned (prefetch),
 * on another core while the session answers READs, so the sled's READs find
 * each new block ready. Hints go through a small ring in shared memory: a
 * count of hints given, then the last HINT_RING block indexes; a reader that
 * falls behind by more than the ring skips the oldest, which only costs a
 * READ its block being decompressed on the spot, as without read-ahead. It
 * goes through the same slots, so the cache stays as bounded as ever; a
 * block already cached, or being written by another thread, is left alone.
 *
 * Only per-block checksums (XXH64 of each block, in the seek table) are
 * verified, each time a block is decompressed. The SHA-256 of the whole image
 * would need every block decompressed before the first DATA, which is what
 * serving block by block avoids; the sled still checks it after the transfer.
 * A block that fails its check is never served: the caller gets an
 * ImageFormatError naming it.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import { decompressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import {
  type Block,
  blockIndexForOffset,
  decodeSeekTable,
  type SeekTable,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import { CHUNK_SIZE } from "@ramdisk-tools/protocol/frames.ts";

/**
 * Decompressed blocks kept for all sessions of one image, whatever its size:
 * 32 of mkimage's 4 MiB blocks, a current one and the next for each of 16
 * sleds at different places in the image. The memory is taken only as slots
 * are first filled.
 */
export const DEFAULT_CACHE_BYTES = 128 * MIB;
/** The largest cache an operator may ask for (bootserver --zstd-cache): what one SharedArrayBuffer can be in Bun 1.4.5. */
export const MAX_CACHE_BYTES = 4096 * MIB;

/** The shared memory of one zstd image being served, as sent to session threads. */
export interface ZstdImageMemory {
  kind: "zstd";
  /** The whole payload (frames, then the seek table), read once from the file. */
  payload: SharedArrayBuffer;
  imageSize: number;
  /** The block cache: slot table and slots (see the module comment). */
  cache: SharedArrayBuffer;
  /** Read-ahead hints: Int32 words, whether to stop, the count of hints, then the ring of block indexes. */
  hints: SharedArrayBuffer;
}

const HINT_STOP = 0;
const HINT_COUNT = 1;
const HINT_HEAD = 2;
/** Hints kept: sessions give one per block their sled enters, so a few per sled in flight at most. */
const HINT_RING = 64;

// Words of the table: slot count, slot bytes, the use clock, then three per slot.
const SLOT_COUNT = 0;
const SLOT_BYTES = 1;
const CLOCK = 2;
const TABLE_HEAD = 3;
const WORDS_PER_SLOT = 3;
const STATE = 0;
const BLOCK = 1;
const STAMP = 2;
/** `state` of a slot being written. */
const WRITING = -1;
/** `block` of an empty slot. */
const EMPTY = -1;
/** How long a reader waits for a block another thread is writing, in all, before decompressing it itself. */
const WRITER_PATIENCE_MS = 2000;

function tableBytes(slots: number): number {
  // Rounded up to 64 so the slots start on a cache line.
  return Math.ceil(((TABLE_HEAD + slots * WORDS_PER_SLOT) * 4) / 64) * 64;
}

/**
 * Shared memory for a zstd image's payload and block cache: slots of the
 * largest block's size, as many as fit in `cacheBytes` (at least one, at most
 * one per block), around `payload`, the whole payload read into shared memory.
 *
 * @example const memory = zstdImageMemory(payload, await readSeekTable(file, header)); // then to every session
 */
export function zstdImageMemory(
  payload: SharedArrayBuffer,
  table: SeekTable,
  cacheBytes = DEFAULT_CACHE_BYTES,
): ZstdImageMemory {
  return {
    kind: "zstd",
    payload,
    imageSize: table.imageSize,
    cache: blockCacheMemory(table, cacheBytes),
    hints: new SharedArrayBuffer((HINT_HEAD + HINT_RING) * 4),
  };
}

/**
 * An empty block cache for the blocks of `table`.
 *
 * @example const cache = blockCacheMemory(table, 64 * MIB);
 */
function blockCacheMemory(table: SeekTable, cacheBytes = DEFAULT_CACHE_BYTES): SharedArrayBuffer {
  const slotBytes = Math.max(...table.blocks.map((block) => block.decompressedSize));
  const slots = Math.max(1, Math.min(table.blocks.length, Math.floor(cacheBytes / slotBytes)));
  const memory = new SharedArrayBuffer(tableBytes(slots) + slots * slotBytes);
  const words = new Int32Array(memory, 0, TABLE_HEAD + slots * WORDS_PER_SLOT);
  words[SLOT_COUNT] = slots;
  words[SLOT_BYTES] = slotBytes;
  for (let slot = 0; slot < slots; slot++) words[TABLE_HEAD + slot * WORDS_PER_SLOT + BLOCK] = EMPTY;
  return memory;
}

/**
 * End the read-ahead loop of `memory`'s thread (ZstdImageReader.readAhead).
 *
 * @example stopReadAhead(image.bytes); // the image is no longer offered
 */
export function stopReadAhead(memory: ZstdImageMemory): void {
  const hints = new Int32Array(memory.hints);
  Atomics.store(hints, HINT_STOP, 1);
  Atomics.add(hints, HINT_COUNT, 1);
  Atomics.notify(hints, HINT_COUNT);
}

/**
 * One thread's reader of a zstd image in shared memory: the image bytes for
 * any offset, decompressing through the shared block cache. It pins at most
 * one slot at a time: the block of the last chunk, until release() or a
 * chunk in another block.
 *
 * @example
 * const reader = new ZstdImageReader(memory);
 * frame(reader.chunk(4096n)); reader.release();
 */
export class ZstdImageReader {
  readonly size: number;
  readonly #sizeAsBigInt: bigint;
  readonly #table: SeekTable;
  readonly #payload: Uint8Array;
  readonly #words: Int32Array;
  readonly #slots: Uint8Array[];
  /** The block whose bytes `#bytes` holds, pinned in `#slot` (or -1: the private buffer). */
  #block: Block | undefined;
  #slot = -1;
  #bytes: Uint8Array = new Uint8Array(0);
  #private: Uint8Array | undefined;
  readonly #straddling = new Uint8Array(CHUNK_SIZE);
  readonly #hints: Int32Array;

  constructor(memory: ZstdImageMemory) {
    this.#hints = new Int32Array(memory.hints);
    this.#payload = new Uint8Array(memory.payload);
    this.#table = decodeSeekTable(this.#payload, { payloadSize: this.#payload.length, imageSize: memory.imageSize });
    this.size = memory.imageSize;
    this.#sizeAsBigInt = BigInt(memory.imageSize);
    const head = new Int32Array(memory.cache, 0, TABLE_HEAD);
    const slots = head[SLOT_COUNT]!;
    const slotBytes = head[SLOT_BYTES]!;
    this.#words = new Int32Array(memory.cache, 0, TABLE_HEAD + slots * WORDS_PER_SLOT);
    const start = tableBytes(slots);
    this.#slots = Array.from(
      { length: slots },
      (_, slot) => new Uint8Array(memory.cache, start + slot * slotBytes, slotBytes),
    );
  }

  /**
   * The image bytes that answer `offset`: CHUNK_SIZE bytes, fewer at the
   * end, none at or past it (offsets past 2^53 are past any image). A view
   * valid until the next call or release(). Throws ImageFormatError when the
   * block holding it does not decompress to its seek table entry.
   */
  chunk(offset: bigint): Uint8Array {
    const at = offset >= this.#sizeAsBigInt ? this.size : Number(offset);
    const wanted = Math.min(CHUNK_SIZE, this.size - at);
    const first = this.#rest(at, wanted);
    if (first.length === wanted) return first;
    // An offset that is not a multiple of 1024 can straddle two blocks: the
    // answer is put together here, so it is the same as for any other image.
    let filled = 0;
    while (filled < wanted) {
      const part = this.#rest(at + filled, wanted - filled);
      this.#straddling.set(part, filled);
      filled += part.length;
    }
    return this.#straddling.subarray(0, wanted);
  }

  /** Up to `wanted` bytes from `at`, not past the end of its block, whose block is then the one pinned. */
  #rest(at: number, wanted: number): Uint8Array {
    if (wanted <= 0) return this.#straddling.subarray(0, 0);
    let block = this.#block;
    if (!block || at < block.decompressedOffset || at >= block.decompressedOffset + block.decompressedSize) {
      this.release();
      block = this.#table.blocks[blockIndexForOffset(this.#table, at)]!;
      this.#load(block);
    }
    const start = at - block.decompressedOffset;
    return this.#bytes.subarray(start, Math.min(start + wanted, block.decompressedSize));
  }

  /**
   * Decompress the block holding `offset` into the cache if no slot holds
   * it, and leave it unpinned, for a READ to find soon. Skipped when every
   * slot is pinned or another thread claims the slot first, and for a block
   * that fails its check: the READ that reaches it says why.
   *
   * @example reader.prefetch(nextBlockOffset); // after the answers went out
   */
  prefetch(offset: number): void {
    if (offset >= this.size) return;
    const block = this.#table.blocks[blockIndexForOffset(this.#table, offset)]!;
    for (let slot = 0; slot < this.#slots.length; slot++)
      if (Atomics.load(this.#words, this.#word(slot, BLOCK)) === block.index) return;
    const slot = this.#claimLeastRecent();
    if (slot === "busy" || slot < 0) return;
    try {
      this.#fill(block, slot);
    } catch (error) {
      if (error instanceof ImageFormatError) return;
      throw error;
    }
    // #fill leaves the slot pinned for its caller; nobody reads it yet.
    Atomics.sub(this.#words, this.#word(slot, STATE), 1);
  }

  /**
   * Ask the image's read-ahead thread to decompress the block holding
   * `offset` (nothing past the end). Costs the caller two atomic writes.
   *
   * @example reader.hint(reader.nextBlockOffset(furthestAnswered));
   */
  hint(offset: number): void {
    if (offset >= this.size) return;
    const index = blockIndexForOffset(this.#table, offset);
    const at = Atomics.add(this.#hints, HINT_COUNT, 1);
    Atomics.store(this.#hints, HINT_HEAD + (at % HINT_RING), index);
    Atomics.notify(this.#hints, HINT_COUNT);
  }

  /**
   * Take the hints sessions give and prefetch each hinted block, until
   * stopReadAhead(); the loop of the read-ahead thread. Blocks its
   * thread while there is nothing to do.
   */
  readAhead(): void {
    const hints = this.#hints;
    // From the first hint: sessions may give some before this thread is up.
    let seen = 0;
    while (Atomics.load(hints, HINT_STOP) === 0) {
      Atomics.wait(hints, HINT_COUNT, seen);
      const count = Atomics.load(hints, HINT_COUNT);
      // A slot whose hint is being written may still hold an older one: a wasted prefetch at worst.
      for (let at = Math.max(seen, count - HINT_RING); at < count; at++) {
        const index = Atomics.load(hints, HINT_HEAD + (at % HINT_RING));
        const block = this.#table.blocks[index];
        if (block) this.prefetch(block.decompressedOffset);
      }
      seen = count;
    }
  }

  /** The offset where the block after the one holding `offset` starts (the image size after the last). */
  nextBlockOffset(offset: number): number {
    if (offset >= this.size) return this.size;
    const block = this.#table.blocks[blockIndexForOffset(this.#table, offset)]!;
    return block.decompressedOffset + block.decompressedSize;
  }

  /** Unpin the block of the last chunk, so it can be evicted. */
  release(): void {
    if (this.#slot >= 0) Atomics.sub(this.#words, this.#word(this.#slot, STATE), 1);
    this.#slot = -1;
    this.#block = undefined;
  }

  #word(slot: number, field: number): number {
    return TABLE_HEAD + slot * WORDS_PER_SLOT + field;
  }

  #touch(slot: number): void {
    Atomics.store(this.#words, this.#word(slot, STAMP), Atomics.add(this.#words, CLOCK, 1) + 1);
  }

  #load(block: Block): void {
    const deadline = Date.now() + WRITER_PATIENCE_MS;
    for (;;) {
      const found = this.#pinCached(block.index, deadline);
      if (found === "stuck") break;
      if (found >= 0) {
        this.#use(block, found);
        return;
      }
      const slot = this.#claimLeastRecent();
      if (slot === "busy") continue; // another thread took it first: look again
      if (slot < 0) break;
      this.#fill(block, slot);
      this.#use(block, slot);
      return;
    }
    // Every slot pinned, or a writer that never finishes: decompress privately.
    this.#private ??= new Uint8Array(this.#slots[0]!.length);
    this.#bytes = decompressBlock(this.#frame(block), block, this.#private);
    this.#block = block;
    this.#slot = -1;
  }

  #use(block: Block, slot: number): void {
    this.#block = block;
    this.#slot = slot;
    this.#bytes = this.#slots[slot]!;
  }

  #frame(block: Block): Uint8Array {
    return this.#payload.subarray(block.compressedOffset, block.compressedOffset + block.compressedSize);
  }

  /** Pin the slot holding `index` and return it; -1 when none does; "stuck" when its writer took too long. */
  #pinCached(index: number, deadline: number): number | "stuck" {
    const words = this.#words;
    for (let slot = 0; slot < this.#slots.length; slot++) {
      const blockWord = this.#word(slot, BLOCK);
      const stateWord = this.#word(slot, STATE);
      while (Atomics.load(words, blockWord) === index) {
        const state = Atomics.load(words, stateWord);
        if (state === WRITING) {
          const left = deadline - Date.now();
          if (left <= 0) return "stuck";
          Atomics.wait(words, stateWord, WRITING, left);
          continue;
        }
        if (Atomics.compareExchange(words, stateWord, state, state + 1) !== state) continue;
        // Pinned: no writer can change the slot now, so this check holds until release().
        if (Atomics.load(words, blockWord) === index) {
          this.#touch(slot);
          return slot;
        }
        Atomics.sub(words, stateWord, 1);
      }
    }
    return -1;
  }

  /** Lock the unpinned slot used longest ago for writing; -1 when all are pinned, "busy" when another thread took it first. */
  #claimLeastRecent(): number | "busy" {
    const words = this.#words;
    let best = -1;
    let bestStamp = Infinity;
    for (let slot = 0; slot < this.#slots.length; slot++) {
      if (Atomics.load(words, this.#word(slot, STATE)) !== 0) continue;
      const stamp =
        Atomics.load(words, this.#word(slot, BLOCK)) === EMPTY ? -1 : Atomics.load(words, this.#word(slot, STAMP));
      if (stamp < bestStamp) {
        best = slot;
        bestStamp = stamp;
      }
    }
    if (best < 0) return -1;
    return Atomics.compareExchange(words, this.#word(best, STATE), 0, WRITING) === 0 ? best : "busy";
  }

  /** Decompress `block` into the slot this thread holds for writing, then hold it pinned instead. */
  #fill(block: Block, slot: number): void {
    const words = this.#words;
    const stateWord = this.#word(slot, STATE);
    // Published first, so readers of this block wait for it rather than decompress it again.
    Atomics.store(words, this.#word(slot, BLOCK), block.index);
    try {
      decompressBlock(this.#frame(block), block, this.#slots[slot]);
    } catch (error) {
      Atomics.store(words, this.#word(slot, BLOCK), EMPTY);
      Atomics.store(words, stateWord, 0);
      Atomics.notify(words, stateWord);
      throw error;
    }
    this.#touch(slot);
    Atomics.store(words, stateWord, 1);
    Atomics.notify(words, stateWord);
  }
}
