/**
 * A zstd block thread for mkimage, lookimage and the bootserver: receives one
 * block, compresses it into an independent frame (with its seek table entry)
 * or decompresses and checks one frame, using lib/zstd-seekable.ts, and posts
 * the result back. Buffers move by transfer, not copy: the sender must not
 * touch a buffer after posting it.
 */

import type { WorkerReply } from "../lib/mkimage.ts";
import { blockChecksum, compressBlock, decompressBlock } from "../lib/zstd-seekable.ts";
import type { BlockEntry, SeekTableEntry } from "../lib/zstd-seekable.ts";

/** One block's work. */
export type ZstdBlockJob =
  | { kind: "compress"; raw: Uint8Array; level: number }
  | { kind: "decompress"; frame: Uint8Array; block: BlockEntry };

/** A compressed block: its frame and the seek table entry that describes it. */
export interface CompressedBlock {
  kind: "compressed";
  frame: Uint8Array;
  entry: SeekTableEntry;
}

/** A decompressed block whose size and checksum matched its entry. */
export interface DecompressedBlock {
  kind: "decompressed";
  raw: Uint8Array;
}

declare const self: Worker;

function run(job: ZstdBlockJob): CompressedBlock | DecompressedBlock {
  if (job.kind === "decompress") return { kind: "decompressed", raw: decompressBlock(job.frame, job.block) };
  const frame = compressBlock(job.raw, job.level);
  const entry = { compressedSize: frame.length, decompressedSize: job.raw.length, checksum: blockChecksum(job.raw) };
  return { kind: "compressed", frame, entry };
}

self.onmessage = (event: MessageEvent<ZstdBlockJob>) => {
  let reply: WorkerReply<CompressedBlock | DecompressedBlock>;
  try {
    reply = { ok: true, value: run(event.data) };
  } catch (error) {
    reply = { ok: false, message: error instanceof Error ? error.message : String(error) };
  }
  const bytes = reply.ok ? (reply.value.kind === "compressed" ? reply.value.frame : reply.value.raw) : undefined;
  // Only a buffer the result owns whole is handed over; a shared one is copied.
  const owned = bytes && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  self.postMessage(reply, owned ? [bytes.buffer as ArrayBuffer] : []);
};
