/**
 * The frames of a seekable zstd payload (lib/image/zstd-seekable.ts): compressing
 * a block into one independent frame, and decompressing and checking a frame
 * against its seek table entry, by Bun's built-in zstd through node:zlib's
 * native handle (lib/image/native-codec.ts). Each thread keeps one encoder and
 * one decoder, started over for every frame.
 */

import { createZstdCompress, createZstdDecompress } from "node:zlib";
import { ImageFormatError } from "./format.ts";
import { CodecError, NativeCodec } from "./native-codec.ts";
import {
  type BlockEntry,
  blockChecksum,
  frameCapacity,
  hex32,
  type SeekTableEntry,
  ZSTD_FRAME_MAGIC,
  ZSTD_MAX_LEVEL,
  ZSTD_MIN_LEVEL,
} from "./zstd-seekable.ts";

/**
 * Compress one block as an independent zstd frame, with its content size in
 * the frame header, by Bun's built-in zstd through node:zlib's native handle
 * (the engine bench/zstd-engines.ts picks). The frame goes into `out` when
 * given (at least frameCapacity bytes; the result is a view of its start),
 * which spares a fresh buffer per block (lib/image/native-codec.ts says why); else
 * into a buffer of its own.
 *
 * The encoder is made once per thread and started over for each frame
 * (NativeCodec.restartZstd), which keeps its tables.
 *
 * @example const frame = compressBlock(raw, 3);
 */
export function compressBlock(raw: Uint8Array, level: number, out?: Uint8Array): Uint8Array {
  if (!Number.isInteger(level) || level < ZSTD_MIN_LEVEL || level > ZSTD_MAX_LEVEL) {
    throw new RangeError(`zstd level ${level} is not a whole number from ${ZSTD_MIN_LEVEL} to ${ZSTD_MAX_LEVEL}`);
  }
  const capacity = frameCapacity(raw.length);
  if (out && out.length < capacity)
    throw new RangeError(`a frame of ${raw.length} bytes needs ${capacity} bytes of room, got ${out.length}`);
  const room = out ?? new Uint8Array(capacity);
  frameEncoder ??= new NativeCodec(createZstdCompress());
  // The size pledged up front goes into the frame header, and lets zstd size its tables to the block.
  frameEncoder.restartZstd(level, raw.length);
  // One call: a second one with the finishing flag would begin another, empty frame.
  const { consumed, produced } = frameEncoder.step(raw, room, true);
  if (consumed !== raw.length || produced === room.length) {
    throw new Error(`zstd left a block of ${raw.length} bytes unfinished (${consumed} taken, ${produced} written)`);
  }
  return room.subarray(0, produced);
}

/** The zstd encoder compressBlock restarts for every frame on this thread, made on first use. */
let frameEncoder: NativeCodec | undefined;

/** The zstd decoder decompressBlock reuses on this thread, made on first use. */
let frameDecoder: NativeCodec | undefined;
/** Where decompressBlock asks for one byte past a block's end, to catch a frame that gives more. */
const probe = new Uint8Array(1);

/**
 * True when `frame` is exactly one whole zstd frame: its block headers
 * (RFC 8878, section 3.1.1) end, with the last block and the optional
 * checksum, at its last byte. node:zlib's zstd gives a frame's bytes without
 * complaint when the frame stops before its last block, and `zstd -d`
 * refuses such a frame, so decompressBlock checks this too.
 *
 * @example isWholeFrame(compressBlock(raw, 3)) // true
 */
export function isWholeFrame(frame: Uint8Array): boolean {
  if (frame.length < 6) return false;
  const descriptor = frame[4]!;
  const singleSegment = (descriptor & 0x20) !== 0;
  const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][descriptor >> 6]!;
  const dictionaryIdBytes = [0, 1, 2, 4][descriptor & 3]!;
  let at = 5 + (singleSegment ? 0 : 1) + dictionaryIdBytes + contentSizeBytes;
  for (;;) {
    if (at + 3 > frame.length) return false;
    const header = frame[at]! | (frame[at + 1]! << 8) | (frame[at + 2]! << 16);
    // An RLE block (type 1) holds one byte whatever its size; the others hold `size` bytes.
    at += 3 + (((header >> 1) & 3) === 1 ? 1 : header >>> 3);
    if ((header & 1) !== 0) break;
  }
  return ((descriptor & 4) !== 0 ? at + 4 : at) === frame.length;
}

/**
 * Decompress one frame and check it against its seek table entry: it must
 * give exactly `decompressedSize` bytes (decoding stops one byte past that,
 * so a damaged or hostile frame cannot balloon in memory) whose checksum
 * matches. Throws ImageFormatError naming the block otherwise. The bytes go
 * into `out` when given (at least `decompressedSize` bytes; the result is a
 * view of its start), which spares the page faults of a fresh buffer when a
 * caller decompresses frame after frame (lib/image/verify-zstd.ts); else into a
 * buffer of their own.
 *
 * @example
 * const raw = decompressBlock(frame, table.blocks[3]!);
 * const into = decompressBlock(frame, table.blocks[3]!, recycled);
 */
export function decompressBlock(frame: Uint8Array, block: BlockEntry, out?: Uint8Array): Uint8Array {
  const what = `block ${block.index}`;
  const size = block.decompressedSize;
  if (out && out.length < size)
    throw new RangeError(`${what} needs an output buffer of ${size} bytes, got ${out.length}`);
  if (frame.length !== block.compressedSize) {
    throw new ImageFormatError(`${what}: frame is ${frame.length} bytes, the seek table says ${block.compressedSize}`);
  }
  const magic = frame.length >= 4 ? new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0, true) : 0;
  if (magic !== ZSTD_FRAME_MAGIC) {
    throw new ImageFormatError(
      `${what}: frame starts with ${hex32(magic)}, not the zstd magic ${hex32(ZSTD_FRAME_MAGIC)}`,
    );
  }
  const raw = out ? out.subarray(0, size) : new Uint8Array(size);
  frameDecoder ??= new NativeCodec(createZstdDecompress());
  const decoder = frameDecoder;
  decoder.reset();
  let consumed = 0;
  let produced = 0;
  let beyond = 0;
  try {
    while (produced < size) {
      const step = decoder.step(frame.subarray(consumed), raw.subarray(produced), true);
      consumed += step.consumed;
      produced += step.produced;
      if (step.consumed === 0 && step.produced === 0) break;
    }
    if (produced === size) beyond = decoder.step(frame.subarray(consumed), probe, true).produced;
  } catch (error) {
    if (error instanceof CodecError)
      throw new ImageFormatError(`${what}: frame does not decompress (${error.message})`);
    throw error;
  }
  if (beyond > 0) {
    throw new ImageFormatError(`${what}: frame decompresses to more than the ${size} bytes the seek table says`);
  }
  // A frame cut short decodes without error to fewer bytes, so the size is checked here.
  if (produced < size) {
    throw new ImageFormatError(`${what}: frame decompresses to ${produced} bytes, the seek table says ${size}`);
  }
  if (!isWholeFrame(frame))
    throw new ImageFormatError(`${what}: the ${frame.length} bytes are not one whole zstd frame`);
  const checksum = blockChecksum(raw);
  if (checksum !== block.checksum) {
    throw new ImageFormatError(
      `${what}: checksum of the decompressed bytes is ${hex32(checksum)}, the seek table says ${hex32(block.checksum)}`,
    );
  }
  return raw;
}

/**
 * One block for a zstd compressing thread (ImageThreads.zstdFrames). `raw` is
 * read only (mkimage shows it from shared memory); `out`, if given, is where
 * the frame goes (compressBlock): a buffer to use again.
 */
export interface ZstdBlockJob {
  raw: Uint8Array;
  level: number;
  out?: Uint8Array;
}

/** A compressed block: its frame and the seek table entry that describes it. */
export interface CompressedBlock {
  frame: Uint8Array;
  entry: SeekTableEntry;
}

/**
 * Compress one block into its frame and seek table entry.
 *
 * @example const { frame, entry } = compressBlockJob({ raw, level: 3 });
 */
export function compressBlockJob({ raw, level, out }: ZstdBlockJob): CompressedBlock {
  const frame = compressBlock(raw, level, out);
  return {
    frame,
    entry: { compressedSize: frame.length, decompressedSize: raw.length, checksum: blockChecksum(raw) },
  };
}
