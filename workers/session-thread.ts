/** Thread entry point for one sled's session (lib/netboot/session-thread.ts). */

import type { SessionCommand } from "@ramdisk-tools/netboot/session.ts";
import { sessionThread } from "@ramdisk-tools/netboot/session-thread.ts";

declare const self: Worker;

const handle = sessionThread((report) => self.postMessage(report));
self.onmessage = (event: MessageEvent<SessionCommand>) => handle(event.data);
