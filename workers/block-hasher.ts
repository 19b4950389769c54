/**
 * mkimage's SHA-256 thread (lib/image/block-hasher.ts): adds each block it is
 * shown, from shared memory, to one running digest, and answers each job so
 * the block's buffer can be reused.
 */

import { type HashJob, hashJob } from "@ramdisk-tools/image/block-hasher.ts";
import { replyTo } from "@ramdisk-tools/threads/pool.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<HashJob>) => {
  const { reply, transfer } = replyTo(
    () => hashJob(event.data),
    (digest) => (digest ? [digest.buffer as ArrayBuffer] : []),
  );
  self.postMessage(reply, transfer);
};
