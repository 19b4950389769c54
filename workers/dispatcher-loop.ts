/** Thread entry point for the boot server's dispatcher (lib/netboot/dispatcher-loop.ts). */
import { type DispatcherCommand, dispatcherLoop } from "@ramdisk-tools/netboot/dispatcher-loop.ts";

declare const self: Worker;

const handle = dispatcherLoop((report) => self.postMessage(report));
self.onmessage = (event: MessageEvent<DispatcherCommand>) => handle(event.data);
