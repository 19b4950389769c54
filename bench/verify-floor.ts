/**
 * The floor under lookimage on a zstd image: how fast Bun itself
 * decompresses and hashes that payload on this machine, with the payload
 * already in memory, no program or thread to start, and no bytes moving
 * between threads.
 *
 * Each frame is decompressed and checked as lookimage does it
 * (decompressBlock: into one reused buffer, with its seek table checksum),
 * then added to a SHA-256; the time of each part is summed over the image,
 * D for decompressing and H for hashing, and the best of ROUNDS rounds is
 * kept. With two threads the work splits at best evenly, except that SHA-256
 * is one chain and cannot be split, so the floor on two threads is
 * max(H, (D + H) / 2).
 *
 *   bun bench/verify-floor.ts IMAGE
 */

import { decodeHeader, HEADER_SIZE, toHex } from "@ramdisk-tools/image/format.ts";
import { decompressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { IMAGE_VERSIONS, readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";

const ROUNDS = 3;

/** The floor and its parts, in seconds. */
export interface VerifyFloor {
  /** max(hash, (decompress + hash) / 2): two threads at best. */
  seconds: number;
  decompress: number;
  hash: number;
}

/**
 * Measure the floor for the zstd image at `path`; throws if its SHA-256
 * differs from the header's, so the work measured is the real one.
 *
 * @example const floor = await verifyFloor("pool-zstd.img"); // { seconds: 0.2, decompress: 0.15, hash: 0.14 }
 */
export async function verifyFloor(path: string): Promise<VerifyFloor> {
  const file = Bun.file(path);
  const header = decodeHeader(await file.slice(0, HEADER_SIZE).bytes(), {
    fileSize: file.size,
    versions: IMAGE_VERSIONS,
  });
  const table = await readSeekTable(file, header);
  const payload = await file.slice(HEADER_SIZE, HEADER_SIZE + header.dataSize).bytes();
  const out = new Uint8Array(table.blocks.reduce((largest, block) => Math.max(largest, block.decompressedSize), 0));
  let best: VerifyFloor | undefined;
  for (let round = 0; round < ROUNDS; round++) {
    const hasher = new Bun.CryptoHasher("sha256");
    let decompress = 0;
    let hash = 0;
    for (const block of table.blocks) {
      const frame = payload.subarray(block.compressedOffset, block.compressedOffset + block.compressedSize);
      const started = performance.now();
      const raw = decompressBlock(frame, block, out);
      const decompressed = performance.now();
      hasher.update(raw);
      hash += performance.now() - decompressed;
      decompress += decompressed - started;
    }
    const digest = hasher.digest("hex");
    if (digest !== toHex(header.sha256)) throw new Error(`${path}: SHA-256 ${digest} differs from the header's`);
    const floor = {
      seconds: Math.max(hash, (decompress + hash) / 2) / 1000,
      decompress: decompress / 1000,
      hash: hash / 1000,
    };
    if (!best || floor.seconds < best.seconds) best = floor;
  }
  return best!;
}

if (import.meta.main) {
  const [image] = process.argv.slice(2);
  if (!image) {
    console.error("usage: bun bench/verify-floor.ts IMAGE");
    process.exit(2);
  }
  const floor = await verifyFloor(image);
  console.log(
    `floor ${floor.seconds.toFixed(3)} s: decompress ${floor.decompress.toFixed(3)} s, SHA-256 ${floor.hash.toFixed(3)} s`,
  );
}
