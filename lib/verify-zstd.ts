/**
 * The zstd stage of payload verification (lib/verify.ts): a thread that
 * decompresses the frames it is dealt, in order, into buffers recycled along
 * its output link, and checks each block against its seek table entry.
 *
 * Several such threads run at once: frames are independent (docs/format.md,
 * "Payload: seekable zstd"), so the reader deals frame n to thread n mod N
 * and the SHA-256 stage takes the blocks back in the same turn. Each thread
 * is handed only its own seek table entries, in the order its frames come.
 *
 * The checks are those of decompressBlock in lib/zstd-seekable.ts, in the
 * same words: the zstd magic, a size of exactly the entry's decompressed
 * size (the decoder gets room for one byte more, so a frame that would give
 * more stops there instead of growing), and the entry's checksum. The
 * difference is where the bytes go: decompressBlock returns a fresh buffer,
 * which costs Bun more in page faults than the decompressing itself; this
 * fills one the caller owns (NativeDecoder, lib/verify.ts).
 */

import { createZstdDecompress } from "node:zlib";
import { ImageFormatError } from "./format.ts";
import { DecodeError, NativeDecoder, PieceSender, receivePieces } from "./verify.ts";
import { blockChecksum, type BlockEntry, ZSTD_FRAME_MAGIC } from "./zstd-seekable.ts";

/** What a zstd decompressing thread is given. */
export interface ZstdDecodeOrder {
  /** Where its frames arrive, one piece per frame, in the order of `blocks`. */
  input: MessagePort;
  /** Where it sends the raw blocks, one piece per block. */
  output: MessagePort;
  /** The seek table entries of its frames, in order. */
  blocks: BlockEntry[];
  /** Bytes of each output buffer: at least the largest of its blocks plus one. */
  capacity: number;
  /** Pieces it may send before the SHA-256 stage acknowledges one. */
  depth: number;
}

/**
 * What a zstd thread reports when it stops: how many blocks it decompressed,
 * or the first that failed and why (also sent down its link, in place).
 */
export type ZstdDecodeReport = { kind: "decoded"; blocks: number } | { kind: "failed"; block: number; reason: string };

const hex32 = (value: number) => `0x${value.toString(16).padStart(8, "0")}`;

/**
 * Decompress one frame into `out` (at least `decompressedSize + 1` bytes)
 * and check it against its seek table entry; returns the block's raw bytes,
 * a view of `out`. Throws ImageFormatError naming the block otherwise.
 *
 * @example const raw = decodeFrameInto(decoder, frame, table.blocks[3]!, buffer);
 */
export function decodeFrameInto(decoder: NativeDecoder, frame: Uint8Array, block: BlockEntry, out: Uint8Array): Uint8Array {
  const what = `block ${block.index}`;
  const size = block.decompressedSize;
  if (out.length <= size) throw new RangeError(`${what} needs an output buffer of ${size + 1} bytes, got ${out.length}`);
  if (frame.length !== block.compressedSize) {
    throw new ImageFormatError(`${what}: frame is ${frame.length} bytes, the seek table says ${block.compressedSize}`);
  }
  const magic = frame.length >= 4 ? new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0, true) : 0;
  if (magic !== ZSTD_FRAME_MAGIC) {
    throw new ImageFormatError(`${what}: frame starts with ${hex32(magic)}, not the zstd magic ${hex32(ZSTD_FRAME_MAGIC)}`);
  }
  const room = out.subarray(0, size + 1);
  let consumed = 0;
  let produced = 0;
  decoder.reset();
  try {
    while (consumed < frame.length && produced < room.length) {
      const step = decoder.step(frame.subarray(consumed), room.subarray(produced), true);
      consumed += step.consumed;
      produced += step.produced;
      if (step.consumed === 0 && step.produced === 0) break;
    }
  } catch (error) {
    if (error instanceof DecodeError) throw new ImageFormatError(`${what}: frame does not decompress (${error.message})`);
    throw error;
  }
  if (produced > size) {
    throw new ImageFormatError(`${what}: frame decompresses to more than the ${size} bytes the seek table says`);
  }
  // A frame cut short decodes without error to fewer bytes, so the size is checked here.
  if (produced < size) {
    throw new ImageFormatError(`${what}: frame decompresses to ${produced} bytes, the seek table says ${size}`);
  }
  const raw = out.subarray(0, size);
  const checksum = blockChecksum(raw);
  if (checksum !== block.checksum) {
    throw new ImageFormatError(
      `${what}: checksum of the decompressed bytes is ${hex32(checksum)}, the seek table says ${hex32(block.checksum)}`,
    );
  }
  return raw;
}

/**
 * Decompress the frames arriving on the order's input port and send each
 * checked block down its output port; stop at the first block that fails.
 *
 * @example self.onmessage = async (event) => postMessage(await zstdDecodeStage(event.data));
 */
export async function zstdDecodeStage(order: ZstdDecodeOrder): Promise<ZstdDecodeReport> {
  const output = new PieceSender(order.output, order.depth);
  const decoder = new NativeDecoder(createZstdDecompress());
  let decoded = 0;
  try {
    for await (const frame of receivePieces(order.input)) {
      const block = order.blocks[decoded];
      if (!block) throw new Error(`zstd thread got more frames than its ${order.blocks.length} seek table entries`);
      await output.room();
      try {
        output.send(decodeFrameInto(decoder, frame, block, output.buffer(order.capacity)));
      } catch (error) {
        if (!(error instanceof ImageFormatError)) throw error;
        // In the block's place, so the SHA-256 stage meets the first bad block of the image first.
        output.fail(error.message);
        return { kind: "failed", block: block.index, reason: error.message };
      }
      decoded++;
    }
    output.end();
    return { kind: "decoded", blocks: decoded };
  } finally {
    decoder.close();
  }
}
