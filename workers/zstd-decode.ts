/**
 * Thread entry for a zstd stage of payload verification (lib/image/verify.ts runs
 * several): one order in, one report out. It reads and decompresses a whole
 * share of the frames through recycled buffers (lib/image/verify-zstd.ts says why).
 */
import { type ZstdDecodeOrder, zstdDecodeStage } from "@ramdisk-tools/image/verify-zstd.ts";

declare const self: Worker;

self.onmessage = async (event: MessageEvent<ZstdDecodeOrder>) => {
  self.postMessage(await zstdDecodeStage(event.data));
};
