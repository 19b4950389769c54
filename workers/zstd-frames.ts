/**
 * A zstd compressing thread for mkimage's pool: receives one block (a view
 * of shared memory, read only) and a buffer for its frame, compresses the
 * block into an independent frame with its seek table entry
 * (lib/image/zstd-frames.ts, compressBlockJob), and posts them back, handing the frame's buffer
 * over rather than copying it.
 */

import { type CompressedBlock, compressBlockJob, type ZstdBlockJob } from "@ramdisk-tools/image/zstd-frames.ts";
import { replyTo } from "@ramdisk-tools/threads/pool.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<ZstdBlockJob>) => {
  const { reply, transfer } = replyTo(
    () => compressBlockJob(event.data),
    (done: CompressedBlock) => [done.frame.buffer as ArrayBuffer],
  );
  self.postMessage(reply, transfer);
};
