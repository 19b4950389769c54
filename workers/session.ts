/**
 * Thread entry point for one sled's session: open an injection-only handle
 * on the link, then answer the READs the dispatcher passes on with DATA
 * frames from the shared image (lib/netboot/session.ts, SledSession), and tell the
 * main thread when a sled was RESET because its image failed a check.
 */

import { oneLine } from "@ramdisk-tools/cli/errors.ts";
import { packSentFrames } from "@ramdisk-tools/netboot/dispatch.ts";
import {
  imageSource,
  type SessionCommand,
  type SessionMessage,
  type SessionReport,
  SledSession,
  sessionCounters,
} from "@ramdisk-tools/netboot/session.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { nowMs } from "@ramdisk-tools/wire/pcap-file.ts";

declare var self: Worker;

let link: PcapLink | undefined;
let port: MessagePort | undefined;

function report(message: SessionReport) {
  self.postMessage(message);
}

self.onmessage = (event: MessageEvent<SessionCommand>) => {
  const command = event.data;
  if (command.type === "stop") {
    port?.close();
    link?.close();
    report({ type: "stopped" });
    return;
  }
  try {
    const opened = PcapLink.open(command.link, { capture: false });
    link = opened;
    const channel = command.port;
    // Recording copies each batch for the dispatcher's capture file; without it the hot path is untouched.
    const send = command.record
      ? (frames: readonly Uint8Array[]) => {
          opened.injectBatch(frames);
          const sent = packSentFrames(frames, nowMs());
          channel.postMessage(sent, [sent.bytes.buffer as ArrayBuffer, sent.lengths.buffer as ArrayBuffer]);
        }
      : (frames: readonly Uint8Array[]) => opened.injectBatch(frames);
    const session = new SledSession(command.sled, opened.mac, send, sessionCounters(command.counters), (message) =>
      report({ type: "problem", message }),
    );
    port = channel;
    port.onmessage = (message) => {
      const data = message.data as SessionMessage;
      if (data.type === "serve") session.serve(imageSource(data.bytes));
      else session.answer({ type: "read", count: data.count, slots: data.slots });
    };
    report({ type: "ready" });
  } catch (error) {
    report({ type: "error", message: oneLine(error) });
  }
};
