/**
 * Thread entry point: check one served image's raw bytes (hashing its file,
 * or inflating it into a temporary file), saying how far it got as it goes;
 * lib/netboot/served-image.ts, loadServedImage, starts it and waits for the
 * answer while the image is already being served.
 */
import { setPriority } from "node:os";
import { oneLine } from "@ramdisk-tools/errors/errors.ts";
import { type FillRequest, type FillResult, fillRawImage } from "@ramdisk-tools/netboot/served-image.ts";

declare var self: Worker;

/**
 * Below the sessions: checking an image must never slow the sleds already
 * booting from it. On Linux the priority is the calling thread's alone, and
 * the inflate thread this one starts inherits it; nice 10 leaves this work
 * about a tenth of a core its sessions want, so it still ends on a busy
 * machine.
 */
setPriority(10);

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
