/**
 * Thread entry for the inflate stage of payload verification (lib/image/inflate-stage.ts):
 * one order in, one report out.
 */
import { type InflateOrder, inflateStage } from "@ramdisk-tools/image/inflate-stage.ts";

declare const self: Worker;

self.onmessage = async (event: MessageEvent<InflateOrder>) => {
  self.postMessage(await inflateStage(event.data));
};
