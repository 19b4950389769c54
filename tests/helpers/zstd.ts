/**
 * Seekable zstd payloads built in the tests themselves, the way the format
 * lays them out (docs/format.md): one frame per block, then the seek table.
 * Built from lib/image/zstd-seekable.ts's pieces, not by mkimage, so tests of
 * lookimage and of the seek table do not depend on mkimage being right.
 */

import { compressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { blockChecksum, encodeSeekTable, type SeekTableEntry } from "@ramdisk-tools/image/zstd-seekable.ts";

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
