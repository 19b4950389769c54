/**
 * Seekable zstd payloads built in the tests themselves, the way the format
 * lays them out (docs/format.md): one frame per block, then the seek table.
 * Built from lib/image/zstd-seekable.ts's pieces, not by mkimage, so tests of
 * lookimage and of the seek table do not depend on mkimage being right.
 * For the fuzz tests, also random payloads and zstd frames that inflate a
 * few bytes into a great many.
 */

import { compressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { blockChecksum, encodeSeekTable, type SeekTableEntry } from "@ramdisk-tools/image/zstd-seekable.ts";
import { concat, imageLike, type Random } from "./fuzz.ts";

/** A payload's parts: the frames, their seek table entries, the encoded table. */
export interface SeekablePayload {
  frames: Uint8Array[];
  entries: SeekTableEntry[];
  table: Uint8Array;
}

/**
 * Compress `raw` in blocks of `blockSize` bytes, one frame each, at `level`,
 * with the seek table that describes them.
 *
 * @example const { frames, table } = seekablePayload(raw, 1024 * 1024, 3);
 */
export function seekablePayload(raw: Uint8Array, blockSize: number, level: number): SeekablePayload {
  const frames: Uint8Array[] = [];
  const entries: SeekTableEntry[] = [];
  for (let at = 0; at < raw.length; at += blockSize) {
    const block = raw.subarray(at, at + blockSize);
    const frame = compressBlock(block, level);
    frames.push(frame);
    entries.push({ compressedSize: frame.length, decompressedSize: block.length, checksum: blockChecksum(block) });
  }
  return { frames, entries, table: encodeSeekTable(entries) };
}

/** A random seekable payload: the raw image, its entries, the payload and the size of its table. */
export interface ZstdPayload {
  raw: Uint8Array;
  entries: SeekTableEntry[];
  payload: Uint8Array;
  tableSize: number;
}

/** A seekable payload the way the format describes it: one frame per block, then the table. */
export function zstdPayload(random: Random): ZstdPayload {
  const blocks = Array.from({ length: 1 + random.scaled(6) }, () => imageLike(random, 1 + random.scaled(6000)));
  const frames = blocks.map((block) => compressBlock(block, 1 + random.scaled(3)));
  const entries = blocks.map((block, i) => ({
    compressedSize: frames[i]!.length,
    decompressedSize: block.length,
    checksum: blockChecksum(block),
  }));
  const table = encodeSeekTable(entries);
  return { raw: concat(...blocks), entries, payload: concat(...frames, table), tableSize: table.length };
}

/**
 * A zstd frame of RLE blocks (RFC 8878: block type 1, one byte repeated up to
 * 128 KiB): `size` bytes of output from 4 bytes per 128 KiB. With
 * `contentSize` the frame header declares that size, true or not.
 */
export function zstdRleBomb(size: number, contentSize: bigint | null): Uint8Array {
  // Frame header descriptor: an 8-byte content size field or none; window descriptor 0x38: 128 KiB.
  const out: number[] = [0x28, 0xb5, 0x2f, 0xfd, contentSize === null ? 0x00 : 0xc0, 0x38];
  if (contentSize !== null) for (let i = 0n; i < 8n; i++) out.push(Number((contentSize >> (8n * i)) & 0xffn));
  const blockSize = 128 * 1024;
  for (let at = 0; at < size; at += blockSize) {
    const last = at + blockSize >= size ? 1 : 0;
    const header = (Math.min(blockSize, size - at) << 3) | (1 << 1) | last;
    out.push(header & 0xff, (header >> 8) & 0xff, header >> 16, 0);
  }
  return Uint8Array.from(out);
}
