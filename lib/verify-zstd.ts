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
 * The decompressing and checking are decompressBlock's (lib/zstd-seekable.ts),
 * the same code readBlock (lib/zstd-image.ts) and workers/zstd-block.ts
 * use; what this stage adds is where the bytes go: into the buffers its
 * link hands back, since a fresh buffer per block costs Bun more in page
 * faults than the decompressing itself.
 */

import { ImageFormatError } from "./format.ts";
import { PieceSender, receivePieces } from "./verify.ts";
import { type BlockEntry, decompressBlock } from "./zstd-seekable.ts";

/** What a zstd decompressing thread is given. */
export interface ZstdDecodeOrder {
  /** Where its frames arrive, one piece per frame, in the order of `blocks`. */
  input: MessagePort;
  /** Where it sends the raw blocks, one piece per block. */
  output: MessagePort;
  /** The seek table entries of its frames, in order. */
  blocks: BlockEntry[];
  /** Bytes of each output buffer: at least the largest of its blocks. */
  capacity: number;
  /** Pieces it may send before the SHA-256 stage acknowledges one. */
  depth: number;
}

/**
 * What a zstd thread reports when it stops: how many blocks it decompressed,
 * or the first that failed and why (also sent down its link, in place).
 */
export type ZstdDecodeReport = { kind: "decoded"; blocks: number } | { kind: "failed"; block: number; reason: string };

/**
 * Decompress the frames arriving on the order's input port and send each
 * checked block down its output port; stop at the first block that fails.
 *
 * @example self.onmessage = async (event) => postMessage(await zstdDecodeStage(event.data));
 */
export async function zstdDecodeStage(order: ZstdDecodeOrder): Promise<ZstdDecodeReport> {
  const output = new PieceSender(order.output, order.depth);
  let decoded = 0;
  for await (const frame of receivePieces(order.input)) {
    const block = order.blocks[decoded];
    if (!block) throw new Error(`zstd thread got more frames than its ${order.blocks.length} seek table entries`);
    await output.room();
    try {
      output.send(decompressBlock(frame, block, output.buffer(order.capacity)));
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
}
