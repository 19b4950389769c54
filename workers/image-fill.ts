/**
 * Thread entry point: fill and check one served image beside its sessions,
 * below their priority (lib/netboot/image-fill.ts, fillInThread), and answer
 * whether it is whole; lib/netboot/served-image.ts starts it.
 */
import { type FillRequest, fillInThread } from "@ramdisk-tools/netboot/image-fill.ts";

declare var self: Worker;

self.onmessage = async (event: MessageEvent<FillRequest>) => self.postMessage(await fillInThread(event.data));
