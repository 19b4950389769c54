/**
 * Thread entry point: fill one image's shared memory with its raw bytes
 * (reading or inflating the file), saying how far it got as it goes, and
 * verify it; lib/netboot/served-image.ts, loadServedImage, starts it and waits for
 * the answer while the image is already being served.
 */
import { oneLine } from "@ramdisk-tools/cli/errors.ts";
import { type FillRequest, type FillResult, fillRawImage } from "@ramdisk-tools/netboot/served-image.ts";

declare var self: Worker;

self.onmessage = async (event: MessageEvent<FillRequest>) => {
  const { path, header, memory } = event.data;
  let result: FillResult;
  try {
    await fillRawImage(path, header, memory);
    result = { ok: true };
  } catch (error) {
    result = { ok: false, message: oneLine(error) };
  }
  self.postMessage(result);
};
