/**
 * Thread entry for one thread of a zstd payload's verification
 * (lib/image/verify.ts starts a few): one order in, one report out. The
 * threads share frames and a ring of decompressed blocks in shared memory,
 * and one of them hashes (lib/image/verify-zstd.ts says how).
 */
import { type ZstdVerifyOrder, zstdVerifyStage } from "@ramdisk-tools/image/verify-zstd.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<ZstdVerifyOrder>) => {
  self.postMessage(zstdVerifyStage(event.data));
};
