/**
 * Thread entry point: check one served image's raw bytes (hashing its file,
 * or inflating it into a temporary file), saying how far it got as it goes;
 * lib/netboot/served-image.ts, loadServedImage, starts it and waits for the
 * answer while the image is already being served.
 */
import { oneLine } from "@ramdisk-tools/cli/errors.ts";
import { type FillRequest, type FillResult, fillRawImage } from "@ramdisk-tools/netboot/served-image.ts";

declare var self: Worker;

self.onmessage = async (event: MessageEvent<FillRequest>) => {
  let result: FillResult;
  try {
    await fillRawImage(event.data);
    result = { ok: true };
  } catch (error) {
    result = { ok: false, message: oneLine(error) };
  }
  self.postMessage(result);
};
