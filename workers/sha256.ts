/**
 * Thread entry for the SHA-256 stage of payload verification (lib/hash-stage.ts):
 * one order in, one report out.
 */
import { type HashOrder, hashStage } from "../lib/hash-stage.ts";

declare const self: Worker;

self.onmessage = async (event: MessageEvent<HashOrder>) => {
  self.postMessage(await hashStage(event.data));
};
