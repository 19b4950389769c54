/** Thread entry point for the boot server's dispatcher (lib/netboot/dispatcher-thread.ts). */
import { type DispatcherCommand, dispatcherThread } from "@ramdisk-tools/netboot/dispatcher-thread.ts";

declare const self: Worker;

const handle = dispatcherThread((report) => self.postMessage(report));
self.onmessage = (event: MessageEvent<DispatcherCommand>) => handle(event.data);
