/**
 * Re-asked offsets (asked more than once, because a DATA was lost) are told
 * from new ones with a direct-mapped table of the offsets last asked, indexed
 * by 1024-byte chunk number modulo 256. A sled keeps at most 128 offsets in
 * flight, all in one 128 KiB batch, and batches follow each other, so a table
 * of two batches recognises every repeat a sled makes, in the same small
 * memory whatever the image size.
 */

import { CHUNK_SIZE } from "@ramdisk-tools/protocol/frames.ts";

/** Slots in the re-ask table: two batches of 128 chunks. */
const ASKED_TABLE_SIZE = 256;

/**
 * Tells offsets asked before from new ones, for a sled's sliding window of
 * requests, in fixed memory (see the module comment).
 */
export class AskedOffsets {
  readonly #table = new Float64Array(ASKED_TABLE_SIZE).fill(-1);

  /** Record `offset`; true when it was asked before. */
  repeat(offset: bigint): boolean {
    // Offsets past 2^53 lose precision here; they are answered exactly all
    // the same, and only the count of repeats of such nonsense is approximate.
    const at = Number(offset);
    const slot = Math.floor(at / CHUNK_SIZE) % ASKED_TABLE_SIZE;
    if (this.#table[slot] === at) return true;
    this.#table[slot] = at;
    return false;
  }

  clear(): void {
    this.#table.fill(-1);
  }
}
