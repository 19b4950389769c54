/**
 * A deflate thread for mkimage's pool: receives one block of the image with
 * its 32 KiB window, compresses it (lib/zlib-stream.ts) and posts back the
 * deflated bytes and the block's Adler-32. Buffers move by transfer, not copy.
 */

import { oneLine } from "../lib/cli.ts";
import type { WorkerReply } from "../lib/mkimage.ts";
import { type DeflatedBlock, type DeflateJob, deflateBlock } from "../lib/zlib-stream.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<DeflateJob>) => {
  let reply: WorkerReply<DeflatedBlock>;
  try {
    reply = { ok: true, value: deflateBlock(event.data) };
  } catch (error) {
    reply = { ok: false, message: oneLine(error) };
  }
  self.postMessage(reply, reply.ok ? [reply.value.deflated.buffer as ArrayBuffer] : []);
};
