/**
 * The ring of slots in shared memory that a zstd payload's verifying threads
 * share (lib/image/verify-zstd.ts says how they use it): its layout, and its
 * making by the main thread. Kept apart from the threads' code so the main
 * thread, which only makes the ring, loads no codec.
 */

import type { Block } from "./zstd-seekable.ts";

/** Bytes of decompressed blocks the ring may hold; never fewer slots than MIN_SLOTS (4 of mkimage's 4 MiB blocks). */
const RING_BYTES = 8 * 1024 * 1024;
/** Slots however large the blocks: one being hashed, and one for each of up to three other threads to fill. */
const MIN_SLOTS = 4;
/** Room in a slot for the reason a block failed, even when its blocks are tiny. */
export const REASON_BYTES = 1024;

/** Int32 words before the slots' own words: the next frame to claim, the frames hashed, the stop flag. */
export const CLAIMED = 0;
export const HASHED = 1;
export const STOP = 2;
const CONTROL_WORDS = 3;
/** Per slot: its state (readyState or failedState of the frame in it, 0 while fresh), and the length of a failure's reason. */
const WORDS_PER_SLOT = 2;

/**
 * The shared memory of one verification: control words, then per-slot
 * words, then the slots' bytes. Made by the main thread, given to every
 * thread of the verification.
 */
export interface ZstdRing {
  memory: SharedArrayBuffer;
  slots: number;
  slotSize: number;
}

/**
 * The ring for a seek table's blocks: slots as large as the largest block
 * (or a failure's reason), as many as RING_BYTES holds but at least
 * MIN_SLOTS.
 *
 * @example const ring = zstdRing(table.blocks);
 */
export function zstdRing(blocks: readonly Block[]): ZstdRing {
  const largest = blocks.reduce((most, block) => Math.max(most, block.decompressedSize), 0);
  const slotSize = Math.max(largest, REASON_BYTES);
  const slots = Math.max(MIN_SLOTS, Math.floor(RING_BYTES / slotSize));
  const wordBytes = ringWordCount(slots) * Int32Array.BYTES_PER_ELEMENT;
  return { memory: new SharedArrayBuffer(wordBytes + slots * slotSize), slots, slotSize };
}

/**
 * A thread's views of the ring: its Int32 words (control, then per slot) and
 * the slots' bytes after them.
 *
 * @example const { words, bytes } = ringViews(order.ring);
 */
export function ringViews(ring: ZstdRing): { words: Int32Array; bytes: Uint8Array } {
  const words = new Int32Array(ring.memory, 0, ringWordCount(ring.slots));
  return { words, bytes: new Uint8Array(ring.memory, words.byteLength) };
}

/**
 * The index of `slot`'s state word; the length of a failure's reason is the
 * word after it.
 *
 * @example Atomics.store(words, slotState(slot), readyState(frame));
 */
export function slotState(slot: number): number {
  return CONTROL_WORDS + slot * WORDS_PER_SLOT;
}

function ringWordCount(slots: number): number {
  return CONTROL_WORDS + slots * WORDS_PER_SLOT;
}

/** A slot's state once `frame` is in it, decompressed and checked. Never 0, the state of a fresh slot. */
export function readyState(frame: number): number {
  return frame + 1;
}

/** A slot's state once `frame` failed its check; the reason is in the slot's bytes. */
export function failedState(frame: number): number {
  return -(frame + 1);
}
