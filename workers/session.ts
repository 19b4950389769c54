/**
 * Thread entry point for one sled's session: open an injection-only handle
 * on the link, then answer the READs the dispatcher passes on with DATA
 * frames from the shared image (lib/session.ts, SledSession).
 */
import { oneLine } from "../lib/cli.ts";
import { PcapLink } from "../lib/pcap.ts";
import { sessionCounters, SledSession, type SessionCommand, type SessionMessage, type SessionReport } from "../lib/session.ts";

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
    const session = new SledSession(command.sled, opened.mac, (frames) => opened.injectBatch(frames), sessionCounters(command.counters));
    port = command.port;
    port.onmessage = (message) => {
      const data = message.data as SessionMessage;
      if (data.type === "serve") session.serve(new Uint8Array(data.bytes));
      else session.answer({ type: "read", count: data.count, slots: data.slots });
    };
    report({ type: "ready" });
  } catch (error) {
    report({ type: "error", message: oneLine(error) });
  }
};
