/**
 * The zstd stage of payload verification (lib/image/verify.ts): a thread that
 * reads the frames it is dealt straight from the image file, decompresses
 * them in order into buffers recycled along its output link, and checks
 * each block against its seek table entry.
 *
 * Several such threads run at once: frames are independent (docs/format.md,
 * "Payload: seekable zstd"), so thread k of N takes frames k, k + N, k + 2N,
 * ... and the SHA-256 stage takes the blocks back in the same turn, which
 * puts them in image order without any sorting. Each thread reads its own
 * frames (one positioned read each, into one buffer used again and again)
 * rather than being sent them: a frame then crosses no thread at all, and
 * the main thread, which would otherwise read and deal every frame, is idle.
 *
 * The decompressing and checking are decompressBlock's (lib/image/zstd-seekable.ts),
 * the same code readBlock (lib/image/zstd-image.ts) uses; what this stage adds is
 * where the bytes come from and go to: into the buffers its link hands back,
 * since a fresh buffer per block costs Bun more in page faults than the
 * decompressing itself.
 */

import { closeSync, openSync, readSync } from "node:fs";
import { PieceSender } from "@ramdisk-tools/threads/link.ts";
import { ImageFormatError } from "./format.ts";
import { type Block, decompressBlock } from "./zstd-seekable.ts";

/** What a zstd decompressing thread is given. */
export interface ZstdDecodeOrder {
  /** The image file, which the thread opens and reads itself. */
  path: string;
  /** Where the payload starts in the file (HEADER_SIZE): a frame's file offset is this plus its own. */
  payloadStart: number;
  /** Where it sends the raw blocks, one piece per block. */
  output: MessagePort;
  /** The seek table entries of its frames, in the order it sends their blocks. */
  blocks: Block[];
  /** Bytes of each output buffer: at least the largest of its blocks. */
  capacity: number;
  /** Pieces it may send before the SHA-256 stage acknowledges one. */
  depth: number;
  /**
   * Payload bytes read so far by all the zstd threads of one verification,
   * for progress: element 0 of a BigInt64Array over this memory, added to
   * atomically.
   */
  progress: SharedArrayBuffer;
}

/**
 * What a zstd thread reports when it stops: how many blocks it decompressed,
 * or the first that failed and why (also sent down its link, in place).
 */
export type ZstdDecodeReport = { kind: "decoded"; blocks: number } | { kind: "failed"; block: number; reason: string };

/**
 * Read, decompress and check the order's frames and send each block down its
 * output port; stop at the first block that fails.
 *
 * @example self.onmessage = async (event) => postMessage(await zstdDecodeStage(event.data));
 */
export async function zstdDecodeStage(order: ZstdDecodeOrder): Promise<ZstdDecodeReport> {
  const output = new PieceSender(order.output, order.depth);
  const progress = new BigInt64Array(order.progress);
  const largestFrame = order.blocks.reduce((largest, block) => Math.max(largest, block.compressedSize), 0);
  const frameBuffer = new Uint8Array(largestFrame);
  const file = openSync(order.path, "r");
  try {
    for (const block of order.blocks) {
      const frame = frameBuffer.subarray(0, block.compressedSize);
      const start = order.payloadStart + block.compressedOffset;
      for (let filled = 0; filled < frame.length; ) {
        const read = readSync(file, frame, filled, frame.length - filled, start + filled);
        if (read === 0)
          return failed(output, block, `file ends inside block ${block.index}'s frame, at byte ${start + filled}`);
        filled += read;
      }
      Atomics.add(progress, 0, BigInt(frame.length));
      await output.room();
      try {
        output.send(decompressBlock(frame, block, output.buffer(order.capacity)));
      } catch (error) {
        if (!(error instanceof ImageFormatError)) throw error;
        return failed(output, block, error.message);
      }
    }
  } finally {
    closeSync(file);
  }
  output.end();
  return { kind: "decoded", blocks: order.blocks.length };
}

/** Report `block` as failed, in its place on the link, so the SHA-256 stage meets the image's first bad block first. */
function failed(output: PieceSender, block: Block, reason: string): ZstdDecodeReport {
  output.fail(reason);
  return { kind: "failed", block: block.index, reason };
}
