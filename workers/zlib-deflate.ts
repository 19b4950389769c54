/**
 * A deflate thread for mkimage's pool: receives one block of the image (a
 * view of shared memory, read only) with its 32 KiB window, compresses it
 * (lib/image/zlib-deflate.ts) and posts back the deflated bytes and the block's
 * Adler-32, handing the deflated buffer over rather than copying it.
 */

import { deflateBlock } from "@ramdisk-tools/image/zlib-deflate.ts";
import type { DeflateJob } from "@ramdisk-tools/image/zlib-stream.ts";
import { replyTo } from "@ramdisk-tools/threads/pool.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<DeflateJob>) => {
  const { reply, transfer } = replyTo(
    () => deflateBlock(event.data),
    (done) => [done.deflated.buffer as ArrayBuffer],
  );
  self.postMessage(reply, transfer);
};
