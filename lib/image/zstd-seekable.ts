/**
 * The zstd seekable format: the payload of a zstd boot image.
 *
 * The raw pool is cut into blocks and each block is compressed as its own,
 * independent zstd frame; the frames are written one after another, and a
 * seek table follows them. The seek table sits in a zstd skippable frame
 * (magic 0x184D2A5E, then a u32 frame size), so any zstd decoder, Debian's
 * `zstd -d` included, reads the payload as an ordinary zstd file: it
 * decompresses the frames in order, which concatenate to the raw pool, and
 * skips the table. The table holds one entry per frame (u32 compressed size,
 * u32 decompressed size, u32 checksum: the low 32 bits of XXH64, seed 0, of
 * the block's raw bytes), then a 9-byte footer (u32 number of frames, a
 * descriptor byte whose bit 7 says checksums are present, and the seekable
 * magic 0x8F92EAB1), all little-endian. Because the footer ends the payload,
 * a reader finds the table from the last 9 bytes without scanning the frames.
 *
 * One frame per block is the point of the design. Frames share no history,
 * so mkimage compresses blocks on every core at once and simply writes the
 * results in order. And any block can be read alone: the bootserver answers
 * a READ for an offset by finding its block in the table (a binary search
 * over the decompressed offsets), reading only that frame, decompressing it
 * and checking its checksum, without inflating the pool up front. The cost is
 * that no frame can refer to data in the blocks before it, which is a
 * percent or so of size for blocks of a few MiB.
 *
 * Reference: zstd's contrib/seekable_format/zstd_seekable_compression_format.md.
 * This module is the layout, pure arithmetic on bytes: the seek table, the
 * blocks it describes, the bounds a frame keeps to, and the block size and
 * level mkimage picks within them. Compressing and
 * decompressing the frames is lib/image/zstd-frames.ts's, kept apart because
 * it loads node:zlib (about 10 ms at start-up), which the threads that only
 * read or write the table (mkimage's and lookimage's main threads) need not;
 * reading the table from an image file is lib/image/zstd-image.ts's.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ImageFormatError } from "./format.ts";

/** The first four bytes of every zstd frame (little-endian u32). */
export const ZSTD_FRAME_MAGIC = 0xfd2fb528;
/** The skippable frame magic the seek table uses; zstd skips such frames. */
export const SKIPPABLE_FRAME_MAGIC = 0x184d2a5e;
/** The last four bytes of a seekable payload. */
export const SEEKABLE_MAGIC = 0x8f92eab1;
/** Skippable frame magic plus its u32 frame size. */
export const SKIPPABLE_HEADER_SIZE = 8;
/** Number of frames (u32), descriptor (1 byte), seekable magic (u32). */
export const SEEK_TABLE_FOOTER_SIZE = 9;
/** Compressed size, decompressed size, checksum: three u32 per frame. */
export const SEEK_TABLE_ENTRY_SIZE = 12;
/** Descriptor bit 7: every entry carries a checksum. */
export const DESCRIPTOR_CHECKSUMS = 0x80;
/**
 * Descriptor bits 6..2 are reserved for breaking changes; the format says a
 * decoder must find them 0. Bits 1..0 are for compatible changes and ignored.
 */
export const DESCRIPTOR_RESERVED = 0x7c;
/** The most frames the reference implementation accepts in one table. */
export const MAX_FRAMES = 0x8000000;
/**
 * The largest block a table may promise. Readers hold whole blocks in memory
 * (the bootserver caches several for its sleds), so a table asking for more
 * is refused rather than trusted; mkimage writes blocks far smaller.
 */
export const ZSTD_MAX_BLOCK_SIZE = 64 * MIB;
/**
 * Raw bytes per frame. A multiple of the sled's 128 KiB batch, so a batch of
 * READs never straddles two blocks. Every frame starts with no history, so
 * smaller frames give a larger payload: on a tar of /usr/bin and
 * /usr/lib/x86_64-linux-gnu (256 MiB, level 3) 1 MiB frames came out 1.7%
 * larger than `zstd -3` compressing the whole file as one stream, 2 MiB
 * frames 0.4% larger, 4 MiB frames 0.5% smaller; on the generated sample all
 * three are smaller than the CLI's. mkimage's time was the same for the three
 * (bench/mkimage.ts, ten alternating runs each). What larger blocks cost is
 * at the bootserver: a sled's first DATA waits for 4 MiB to be decompressed
 * (about 3 ms), and its cache holds fewer blocks for its budget
 * (lib/netboot/block-cache.ts, DEFAULT_CACHE_BYTES).
 */
export const ZSTD_BLOCK_SIZE = 4 * MIB;
/**
 * mkimage's default level, chosen by measurement (bench/mkimage.ts, 256 MiB
 * in 1 MiB frames): level 3, zstd's own default. Level 2 was 20-25% cheaper
 * but 4.4% larger than zlib level 9 on a tar of /usr/bin and
 * /usr/lib/x86_64-linux-gnu; level 3 is 0.8% smaller there, at 8-26% more
 * CPU, still many times faster than zlib level 9. On the generated sample
 * (whose binaries are short repeats, which zlib's lazy matching finds and
 * zstd's fast levels skip) no level below 7 matches zlib's size.
 */
export const ZSTD_DEFAULT_LEVEL = 3;
/** The compression levels zstd has. */
export const ZSTD_MIN_LEVEL = 1;
export const ZSTD_MAX_LEVEL = 22;

/** One seek table entry: the sizes and checksum of one frame. */
export interface SeekTableEntry {
  compressedSize: number;
  decompressedSize: number;
  /** Low 32 bits of XXH64 (seed 0) of the block's raw bytes. */
  checksum: number;
}

/** A seek table entry placed in the payload and in the raw image. */
export interface Block extends SeekTableEntry {
  /** Position of the frame in the payload, 0-based. */
  index: number;
  /** Where the frame starts in the payload. */
  compressedOffset: number;
  /** Where the block's bytes start in the raw image. */
  decompressedOffset: number;
}

/** What decompressBlock needs to know about a frame: its entry and, for messages, its index. */
export type BlockEntry = Pick<Block, "index" | "compressedSize" | "decompressedSize" | "checksum">;

/** A decoded, checked seek table. */
export interface SeekTable {
  blocks: readonly Block[];
  /** Bytes of the seek table's skippable frame at the end of the payload. */
  tableSize: number;
  /** Sum of all decompressed sizes: the raw image size. */
  imageSize: number;
}

/**
 * The low 32 bits of XXH64 (seed 0) of a block's raw bytes, as the seek
 * table stores it.
 *
 * @example blockChecksum(new Uint8Array(0)) // 0x51d8e999
 */
export function blockChecksum(raw: Uint8Array): number {
  return Number(Bun.hash.xxHash64(raw) & 0xffff_ffffn);
}

function checkU32(what: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new ImageFormatError(`${what} of ${value} does not fit the seek table's u32 field`);
  }
}

/**
 * Encode the seek table's skippable frame for these frames, in order, with
 * checksums. Append it to the frames to finish a seekable payload. Refuses
 * what decodeSeekTable would: a size beyond a u32, an empty frame or block,
 * a block above ZSTD_MAX_BLOCK_SIZE.
 *
 * @example
 * const table = encodeSeekTable([{ compressedSize: frame.length, decompressedSize: raw.length,
 *   checksum: blockChecksum(raw) }]);
 */
export function encodeSeekTable(entries: readonly SeekTableEntry[]): Uint8Array {
  if (entries.length > MAX_FRAMES) {
    throw new ImageFormatError(`${entries.length} frames are more than a seek table holds (${MAX_FRAMES})`);
  }
  const frameSize = entries.length * SEEK_TABLE_ENTRY_SIZE + SEEK_TABLE_FOOTER_SIZE;
  const out = new Uint8Array(SKIPPABLE_HEADER_SIZE + frameSize);
  const view = new DataView(out.buffer);
  view.setUint32(0, SKIPPABLE_FRAME_MAGIC, true);
  view.setUint32(4, frameSize, true);
  entries.forEach((entry, index) => {
    checkU32(`frame ${index}'s compressed size`, entry.compressedSize);
    checkU32(`frame ${index}'s decompressed size`, entry.decompressedSize);
    checkU32(`frame ${index}'s checksum`, entry.checksum);
    if (entry.compressedSize === 0 || entry.decompressedSize === 0 || entry.decompressedSize > ZSTD_MAX_BLOCK_SIZE) {
      throw new ImageFormatError(
        `frame ${index} of ${entry.compressedSize} bytes for a block of ${entry.decompressedSize}: blocks hold 1 to ${ZSTD_MAX_BLOCK_SIZE} bytes`,
      );
    }
    const at = SKIPPABLE_HEADER_SIZE + index * SEEK_TABLE_ENTRY_SIZE;
    view.setUint32(at, entry.compressedSize, true);
    view.setUint32(at + 4, entry.decompressedSize, true);
    view.setUint32(at + 8, entry.checksum, true);
  });
  const footer = out.length - SEEK_TABLE_FOOTER_SIZE;
  view.setUint32(footer, entries.length, true);
  view.setUint8(footer + 4, DESCRIPTOR_CHECKSUMS);
  view.setUint32(footer + 5, SEEKABLE_MAGIC, true);
  return out;
}

/**
 * A u32 as 0x and eight hex digits, for messages.
 *
 * @example hex32(SEEKABLE_MAGIC) // "0x8f92eab1"
 */
export const hex32 = (value: number): string => `0x${value.toString(16).padStart(8, "0")}`;

/**
 * From the last bytes of a payload (at least the 9-byte footer), the size of
 * the whole seek table frame, so a reader knows how much of the payload's end
 * to read next. Checks the footer: the seekable magic, checksums present, no
 * reserved bit set, and a frame count that fits in a payload of this size.
 *
 * @example
 * const tableSize = seekTableSize(await file.slice(end - SEEK_TABLE_FOOTER_SIZE, end).bytes(), payloadSize);
 */
export function seekTableSize(payloadTail: Uint8Array, payloadSize: number): number {
  const minimum = SKIPPABLE_HEADER_SIZE + SEEK_TABLE_FOOTER_SIZE;
  if (payloadSize < minimum || payloadTail.length < SEEK_TABLE_FOOTER_SIZE) {
    throw new ImageFormatError(
      `payload of ${payloadSize} bytes is too short to end with a seek table (at least ${minimum} bytes): truncated`,
    );
  }
  const footer = payloadTail.subarray(payloadTail.length - SEEK_TABLE_FOOTER_SIZE);
  const view = new DataView(footer.buffer, footer.byteOffset, SEEK_TABLE_FOOTER_SIZE);
  const magic = view.getUint32(5, true);
  if (magic !== SEEKABLE_MAGIC) {
    throw new ImageFormatError(
      `payload ends with ${hex32(magic)}, not the seekable magic ${hex32(SEEKABLE_MAGIC)}: the seek table is missing or the payload is truncated`,
    );
  }
  const descriptor = view.getUint8(4);
  if ((descriptor & DESCRIPTOR_RESERVED) !== 0) {
    throw new ImageFormatError(`seek table descriptor 0x${descriptor.toString(16)} has reserved bits set`);
  }
  // Every block is checked against its checksum before it is served, so a
  // table without checksums is refused rather than trusted.
  if ((descriptor & DESCRIPTOR_CHECKSUMS) === 0) {
    throw new ImageFormatError(`seek table descriptor 0x${descriptor.toString(16)} says there are no checksums`);
  }
  const frames = view.getUint32(0, true);
  // Bound the count by what the payload can hold before anything is allocated for it.
  const fitting = Math.min(MAX_FRAMES, Math.floor((payloadSize - minimum) / SEEK_TABLE_ENTRY_SIZE));
  if (frames > fitting) {
    throw new ImageFormatError(
      `seek table claims ${frames} frames, but a payload of ${payloadSize} bytes holds the entries of at most ${fitting}`,
    );
  }
  return minimum + frames * SEEK_TABLE_ENTRY_SIZE;
}

/** What a seek table must agree with: the payload it ends and the image header. */
export interface SeekTableExpectations {
  /** Bytes of the whole payload (the header's data_size). */
  payloadSize: number;
  /** Bytes of the raw image (the header's image_size). */
  imageSize: number;
}

/**
 * Decode and check the seek table at the end of a payload. `payloadTail`
 * holds the payload's last bytes: at least seekTableSize() of them (the whole
 * payload will do). Throws ImageFormatError with the reason when the table
 * does not describe this payload: bad magics, a frame size that disagrees
 * with the frame count, an empty or oversized block, compressed sizes that do
 * not add up to the payload before the table, or decompressed sizes that do
 * not add up to the image size.
 *
 * @example
 * const table = decodeSeekTable(tail, { payloadSize: header.dataSize, imageSize: header.imageSize });
 */
export function decodeSeekTable(payloadTail: Uint8Array, expect: SeekTableExpectations): SeekTable {
  const tableSize = seekTableSize(payloadTail, expect.payloadSize);
  if (payloadTail.length < tableSize) {
    throw new RangeError(`decodeSeekTable needs the payload's last ${tableSize} bytes, got ${payloadTail.length}`);
  }
  const table = payloadTail.subarray(payloadTail.length - tableSize);
  const view = new DataView(table.buffer, table.byteOffset, table.length);
  const skippableMagic = view.getUint32(0, true);
  if (skippableMagic !== SKIPPABLE_FRAME_MAGIC) {
    throw new ImageFormatError(
      `seek table starts with ${hex32(skippableMagic)}, not the skippable frame magic ${hex32(SKIPPABLE_FRAME_MAGIC)}: wrong frame count or corrupted table`,
    );
  }
  const frameSize = view.getUint32(4, true);
  if (frameSize !== tableSize - SKIPPABLE_HEADER_SIZE) {
    throw new ImageFormatError(
      `seek table frame size is ${frameSize} bytes, but its frame count needs ${tableSize - SKIPPABLE_HEADER_SIZE}`,
    );
  }
  const frameCount = (tableSize - SKIPPABLE_HEADER_SIZE - SEEK_TABLE_FOOTER_SIZE) / SEEK_TABLE_ENTRY_SIZE;
  const framesEnd = expect.payloadSize - tableSize;
  const blocks: Block[] = [];
  let compressedOffset = 0;
  let decompressedOffset = 0;
  for (let index = 0; index < frameCount; index++) {
    const at = SKIPPABLE_HEADER_SIZE + index * SEEK_TABLE_ENTRY_SIZE;
    const compressedSize = view.getUint32(at, true);
    const decompressedSize = view.getUint32(at + 4, true);
    const checksum = view.getUint32(at + 8, true);
    // mkimage writes no empty or skippable frames, so a zero size is damage;
    // it would also leave an offset that belongs to no block.
    if (decompressedSize === 0 || compressedSize === 0) {
      throw new ImageFormatError(
        `seek table entry ${index} has ${compressedSize} compressed and ${decompressedSize} decompressed bytes; no frame is empty`,
      );
    }
    if (decompressedSize > ZSTD_MAX_BLOCK_SIZE) {
      throw new ImageFormatError(
        `seek table entry ${index} promises a block of ${decompressedSize} bytes, above the ${ZSTD_MAX_BLOCK_SIZE}-byte limit`,
      );
    }
    blocks.push({ index, compressedSize, decompressedSize, checksum, compressedOffset, decompressedOffset });
    compressedOffset += compressedSize;
    decompressedOffset += decompressedSize;
  }
  if (compressedOffset !== framesEnd) {
    throw new ImageFormatError(
      `seek table's compressed sizes add up to ${compressedOffset} bytes, but the payload has ${framesEnd} bytes before the table (data size ${expect.payloadSize} - table ${tableSize})`,
    );
  }
  if (decompressedOffset !== expect.imageSize) {
    throw new ImageFormatError(
      `seek table's decompressed sizes add up to ${decompressedOffset} bytes, but the image size is ${expect.imageSize}`,
    );
  }
  return { blocks, tableSize, imageSize: decompressedOffset };
}

/**
 * The index of the block holding byte `offset` of the raw image, or -1 when
 * the offset is at or past the end (a READ there is answered with an empty
 * DATA). A binary search: blocks are in image order.
 *
 * @example const block = table.blocks[blockIndexForOffset(table, request.offset)];
 */
export function blockIndexForOffset(table: SeekTable, offset: number): number {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset >= table.imageSize) return -1;
  let low = 0;
  let high = table.blocks.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >>> 1;
    if (table.blocks[middle]!.decompressedOffset <= offset) low = middle;
    else high = middle - 1;
  }
  return low;
}

/**
 * Bytes a buffer needs to hold the frame of a block of `rawSize` bytes:
 * zstd's worst case (ZSTD_COMPRESSBOUND: incompressible data stored in raw
 * blocks, with their headers) and one byte more, so a frame that does not
 * fill the buffer is known to be complete.
 *
 * @example const out = new Uint8Array(frameCapacity(ZSTD_BLOCK_SIZE));
 */
export function frameCapacity(rawSize: number): number {
  const smallInputMargin = rawSize < 128 * 1024 ? (128 * 1024 - rawSize) >> 11 : 0;
  return rawSize + (rawSize >> 8) + smallInputMargin + 1;
}
