/**
 * The SHA-256 the sled kernel computes over its ramdisk at the end of a boot,
 * built a batch at a time so the ramdisk is never held whole: 32 emulated
 * sleds can fetch 4 GiB images on one machine.
 *
 * A batch starts only when the previous one is fully answered and every
 * offset of a batch lies inside it, so once a batch is complete no later DATA
 * can touch its bytes: its 128 KiB of ramdisk are final and can go to the
 * hasher at once. Before the batch, those bytes were zero (the ramdisk starts
 * zeroed) except where the previous batch's last DATA ran over its end: the
 * kernel accepts a DATA body of up to 1468 image bytes for a 1024-byte chunk
 * and writes what it accepts at the DATA's offset. So each batch starts from
 * a zeroed buffer plus that carried-over spill, and hashing the batches in
 * order gives exactly the digest of the ramdisk prefix the kernel hashes.
 */

import { BATCH_BYTES, CHUNK_SIZE, DATA_MAX_BODY } from "@ramdisk-tools/protocol/frames.ts";

/** Image bytes one DATA frame may carry: len up to 1476, less the 8-byte offset. */
const MAX_DATA_BYTES = DATA_MAX_BODY - 8;
/** How far the last DATA of a batch can write past the batch's end. */
const SPILL_BYTES = MAX_DATA_BYTES - CHUNK_SIZE;

/**
 * One sled's ramdisk as its digest sees it: the current batch, and the hash
 * of the batches before it.
 *
 * @example
 * const ramdisk = new RamdiskDigest();
 * ramdisk.write(slot, imageBytes); // for each DATA taken
 * ramdisk.completeBatch(); // once all 128 slots are answered
 * equalBytes(ramdisk.digest(), checksum);
 */
export class RamdiskDigest {
  /** The current batch's 128 KiB of ramdisk, plus room for a DATA running past its end. */
  readonly #batch = new Uint8Array(BATCH_BYTES + SPILL_BYTES);
  #hasher = new Bun.CryptoHasher("sha256");

  /** A new transfer: a zeroed ramdisk, nothing hashed. */
  restart(): void {
    this.#batch.fill(0);
    this.#hasher = new Bun.CryptoHasher("sha256");
  }

  /** Put a DATA's image bytes where its slot of the current batch starts. */
  write(slot: number, bytes: Uint8Array): void {
    this.#batch.set(bytes, slot * CHUNK_SIZE);
  }

  /** Every slot answered: hash the batch's 128 KiB and carry its spill into the next batch. */
  completeBatch(): void {
    this.#hasher.update(this.#batch.subarray(0, BATCH_BYTES));
    this.#batch.copyWithin(0, BATCH_BYTES);
    this.#batch.fill(0, SPILL_BYTES);
  }

  /** The SHA-256 of the batches completed, which ends this hash (restart() begins another). */
  digest(): Uint8Array {
    return new Uint8Array(this.#hasher.digest().buffer);
  }
}
