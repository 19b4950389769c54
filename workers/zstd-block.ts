/**
 * A zstd block thread for mkimage, lookimage and the bootserver: receives one
 * block job, compresses a block into an independent frame (with its seek
 * table entry) or decompresses and checks one frame (runBlockJob,
 * lib/zstd-seekable.ts), and posts the result back. Buffers move by
 * transfer, not copy: the sender must not touch a buffer after posting it.
 */

import { oneLine } from "../lib/cli.ts";
import type { WorkerReply } from "../lib/mkimage.ts";
import { type CompressedBlock, type DecompressedBlock, runBlockJob, type ZstdBlockJob } from "../lib/zstd-seekable.ts";

declare const self: Worker;

/**
 * The buffers to hand over with a result. They are all this thread's own
 * (made here, or received with the job), so they go back whole: the raw
 * block and an `out` buffer for the sender to fill again.
 */
function transfers(result: CompressedBlock | DecompressedBlock): ArrayBuffer[] {
  if (result.kind === "decompressed") return [result.raw.buffer as ArrayBuffer];
  return [result.raw.buffer as ArrayBuffer, result.frame.buffer as ArrayBuffer];
}

self.onmessage = (event: MessageEvent<ZstdBlockJob>) => {
  let reply: WorkerReply<CompressedBlock | DecompressedBlock>;
  try {
    reply = { ok: true, value: runBlockJob(event.data) };
  } catch (error) {
    reply = { ok: false, message: oneLine(error) };
  }
  self.postMessage(reply, reply.ok ? transfers(reply.value) : []);
};
