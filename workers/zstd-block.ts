/**
 * A zstd compressing thread for mkimage's pool: receives one block (a view
 * of shared memory, read only) and a buffer for its frame, compresses the
 * block into an independent frame with its seek table entry
 * (lib/zstd-seekable.ts), and posts them back, handing the frame's buffer
 * over rather than copying it.
 */

import { replyTo } from "../lib/worker-pool.ts";
import { type CompressedBlock, compressBlockJob, type ZstdBlockJob } from "../lib/zstd-seekable.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<ZstdBlockJob>) => {
  const { reply, transfer } = replyTo(
    () => compressBlockJob(event.data),
    (done: CompressedBlock) => [done.frame.buffer as ArrayBuffer],
  );
  self.postMessage(reply, transfer);
};
