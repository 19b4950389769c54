/**
 * Thread entry for the SHA-256 stage of payload verification (lib/image/hash-stage.ts):
 * one order in, one report out.
 */
import { type HashOrder, hashStage } from "@ramdisk-tools/image/hash-stage.ts";

declare const self: Worker;

self.onmessage = async (event: MessageEvent<HashOrder>) => {
  self.postMessage(await hashStage(event.data));
};
