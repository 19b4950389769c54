/**
 * Thread entry for the inflate stage of payload verification (lib/verify.ts):
 * one order in, one report out.
 */
import { type InflateOrder, inflateStage } from "../lib/verify.ts";

declare const self: Worker;

self.onmessage = async (event: MessageEvent<InflateOrder>) => {
  self.postMessage(await inflateStage(event.data));
};
