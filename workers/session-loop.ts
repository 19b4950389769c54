/** Thread entry point for one sled's session (lib/netboot/session-loop.ts). */

import { sessionLoop } from "@ramdisk-tools/netboot/session-loop.ts";
import type { SessionCommand } from "@ramdisk-tools/netboot/session-messages.ts";

declare const self: Worker;

const handle = sessionLoop((report) => self.postMessage(report));
self.onmessage = (event: MessageEvent<SessionCommand>) => handle(event.data);
