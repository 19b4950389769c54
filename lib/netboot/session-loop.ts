/**
 * One sled's session thread: open an injection-only handle on the link and
 * say it is ready (the main thread keeps one such thread spare), then, once
 * told its sled, answer the READs the dispatcher passes on with DATA frames
 * from the shared image (lib/netboot/session.ts, SledSession), paced
 * (lib/netboot/pacing.ts), and tell the main thread when a sled was RESET
 * because its image failed a check. When the server records, each batch
 * sent is copied back to the dispatcher for the capture file
 * (lib/netboot/recording.ts).
 */

import { oneLine } from "@ramdisk-tools/errors/errors.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { type ImageSource, imageSource } from "./image-source.ts";
import { LinkClock, Pacer } from "./pacing.ts";
import { packSentFrames } from "./recording.ts";
import { SledSession } from "./session.ts";
import { sessionCounters } from "./session-counters.ts";
import type { SessionCommand, SessionMessage, SessionReport } from "./session-messages.ts";

/**
 * The session thread's work: what it does with each command the main thread
 * posts it, telling the main thread what happens through `report`. The
 * thread's entry point only connects the two to its messages.
 *
 * @example
 * const handle = sessionLoop((report) => self.postMessage(report));
 * self.onmessage = (event: MessageEvent<SessionCommand>) => handle(event.data);
 */
export function sessionLoop(report: (message: SessionReport) => void): (command: SessionCommand) => void {
  let link: PcapLink | undefined;
  let port: MessagePort | undefined;
  /** What the session serves from, closed when it serves another or stops. */
  let source: ImageSource | undefined;
  /** How to make the session once it is given its sled. */
  let startSession: ((sled: SessionCommand & { type: "sled" }) => void) | undefined;

  return (command) => {
    if (command.type === "stop") {
      port?.close();
      source?.close?.();
      link?.close();
      report({ type: "stopped" });
      return;
    }
    try {
      if (command.type === "sled") return startSession?.(command);
      const opened = PcapLink.open(command.link, { capture: false });
      link = opened;
      const channel = command.port;
      // Recording copies each batch for the dispatcher's capture file; without it the hot path is untouched.
      const inject = command.record
        ? (frames: readonly Uint8Array[]) => {
            opened.injectBatch(frames);
            const sent = packSentFrames(frames, nowMs());
            channel.postMessage(sent, [sent.bytes.buffer as ArrayBuffer, sent.lengths.buffer as ArrayBuffer]);
          }
        : (frames: readonly Uint8Array[]) => opened.injectBatch(frames);
      const shared = command.linkClock;
      const pacer = new Pacer(command.rate, shared ? new LinkClock(shared.bitsPerSecond, shared.buffer) : null);
      const counters = sessionCounters(command.counters);
      const send = (frames: readonly Uint8Array[]) => counters.add("pacedMs", pacer.send(frames, inject));
      startSession = ({ sled }) => {
        const session = new SledSession(sled, opened.mac, send, counters, {
          resend: command.resend,
          onProblem: (message) => report({ type: "problem", message }),
        });
        port = channel;
        const problem = (message: string) => report({ type: "problem", message });
        // The channel queues what the dispatcher sends until this handler is set.
        port.onmessage = (message) => {
          const data = message.data as SessionMessage;
          if (data.type === "serve") {
            const previous = source;
            source = imageSource(data.bytes, problem);
            session.serve(source);
            previous?.close?.();
          } else if (data.type === "read")
            session.answer({ type: "read", count: data.count, slots: data.slots }, Date.now(), data.receivedAt);
          else session.end();
        };
      };
      report({ type: "ready" });
    } catch (error) {
      report({ type: "error", message: oneLine(error) });
    }
  };
}
