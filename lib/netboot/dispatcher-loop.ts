/**
 * The boot server's dispatcher thread: capture netboot frames on the link and
 * route each one (lib/netboot/dispatch.ts, FrameDispatcher). The capture loop
 * takes up to a batch of frames, then yields to the thread's event loop so
 * the main thread's offers and stop requests get in; when the link is quiet,
 * `next()` waits up to its read timeout for the next frame.
 *
 * With a capture file (`bootserver --pcap`) this thread is its one writer:
 * it records each frame it captures or sends, and the batches of DATA the
 * session threads post back on their channels (lib/netboot/recording.ts). A
 * session's channel stays open a moment after the session ends so that
 * batches still on their way are recorded too.
 */

import { oneLine } from "@ramdisk-tools/errors/errors.ts";
import type { Mac, ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { PcapFileWriter } from "@ramdisk-tools/wire/pcap-file.ts";
import { AdmissionLimits } from "./admission.ts";
import { dispatchCounters, FrameDispatcher, type SessionInbox } from "./dispatch.ts";
import { type SentFrames, unpackSentFrames } from "./recording.ts";
import type { ServedBytes } from "./served-image.ts";
import type { SessionMessage } from "./session-messages.ts";

/** What the main thread tells the dispatcher thread. */
export type DispatcherCommand =
  | {
      type: "start";
      link: string;
      allowed: Mac[] | null;
      counters: SharedArrayBuffer;
      /** Record every frame received and sent to this pcap file (sessions post theirs as SentFrames). */
      pcap?: string;
      /** Rate-limit HELLOs and RESETs and admit sleds on their first READ (false: `--no-admission`). */
      admission: boolean;
    }
  | { type: "offer"; sled: Mac; frame: Uint8Array; bytes: ServedBytes; port?: MessagePort }
  | { type: "attach"; sled: Mac; port: MessagePort }
  | { type: "refuse"; sled: Mac }
  | { type: "end"; sled: Mac }
  /** The answer to an "unknown" report: the sled reads `bytes`, or gets a RESET for `reason`. */
  | { type: "resume"; sled: Mac; bytes: ServedBytes }
  | { type: "reset"; sled: Mac; reason: string }
  | { type: "stop" };

/** What the dispatcher thread tells the main thread. */
export type DispatcherReport =
  | { type: "ready"; mac: Mac }
  | { type: "hello"; sled: Mac; text: Uint8Array }
  | { type: "admit"; sled: Mac }
  | { type: "finished"; sled: Mac }
  | { type: "unknown"; sled: Mac; read: ReadRequest }
  | { type: "reset"; sled: Mac; reason: string }
  | { type: "stopped" }
  | { type: "error"; message: string };

/** Frames handled between two looks at the event loop. */
const FRAMES_PER_TURN = 64;
/** How long a quiet link blocks the loop: the latency of an offer or a stop. */
const READ_TIMEOUT_MS = 10;
/** Larger than any netboot frame (at most 14 + 12 + 1476 bytes). */
const RECEIVE_BUFFER_BYTES = 2048;
/** How long a recording session's channel stays open after it ends, for its last batches. */
const RECORD_DRAIN_MS = 500;
/** How often the capture's own drop count is copied out for the metrics (one system call each time). */
const CAPTURE_STATS_MS = 1000;
/** How often offers never taken up are forgotten. */
const EXPIRE_EVERY_MS = 1000;

/**
 * The dispatcher thread's work: what it does with each command the main
 * thread posts it, telling the main thread what happens through `report`.
 * The thread's entry point only connects the two to its messages.
 *
 * @example
 * const handle = dispatcherLoop((report) => self.postMessage(report));
 * self.onmessage = (event: MessageEvent<DispatcherCommand>) => handle(event.data);
 */
export function dispatcherLoop(report: (message: DispatcherReport) => void): (command: DispatcherCommand) => void {
  let dispatcher: FrameDispatcher | undefined;
  let capture: PcapFileWriter | undefined;
  let stopping = false;

  /** A session thread's channel, as the dispatcher sees it. */
  function inboxOf(port: MessagePort): SessionInbox {
    const post = (message: SessionMessage, transfer: Bun.Transferable[] = []) => port.postMessage(message, transfer);
    const recording = capture;
    if (recording) {
      port.onmessage = (event) => {
        const sent = event.data as SentFrames;
        for (const frame of unpackSentFrames(sent)) recording.write(frame, sent.at);
      };
    }
    let closed = false;
    return {
      serve: (bytes) => post({ type: "serve", bytes }),
      read: (read) => {
        if (closed) return;
        const message: SessionMessage = { type: "read", count: read.count, slots: read.slots, receivedAt: nowMs() };
        post(message, [read.slots.buffer as ArrayBuffer]);
      },
      close: () => {
        closed = true;
        // Stops the session's re-sends before its thread is told to stop.
        post({ type: "end" });
        if (recording) setTimeout(() => port.close(), RECORD_DRAIN_MS);
        else port.close();
      },
    };
  }

  /** Stamp and record a frame, when recording. */
  function record(frame: Uint8Array) {
    capture?.write(frame, nowMs());
  }

  async function captureLoop(link: PcapLink, frames: FrameDispatcher) {
    // Decoding copies what it keeps, so one receive buffer serves every frame.
    const buffer = new Uint8Array(RECEIVE_BUFFER_BYTES);
    const copyCaptureStats = () => frames.counters.set("droppedByCapture", link.stats().dropped);
    let statsAt = 0;
    const expiring = setInterval(() => frames.expire(), EXPIRE_EVERY_MS);
    try {
      while (!stopping) {
        if (Date.now() - statsAt >= CAPTURE_STATS_MS) {
          copyCaptureStats();
          statsAt = Date.now();
        }
        for (let handled = 0; handled < FRAMES_PER_TURN && !stopping; handled++) {
          const length = link.nextInto(buffer);
          if (length === 0) break;
          record(buffer.subarray(0, length));
          frames.dispatch(buffer.subarray(0, length));
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
      copyCaptureStats();
      clearInterval(expiring);
      link.close();
      capture?.close();
      report({ type: "stopped" });
    } catch (error) {
      clearInterval(expiring);
      link.close();
      // Keep what was recorded: a capture of a failing boot is the one worth reading.
      try {
        capture?.close();
      } catch {}
      report({ type: "error", message: oneLine(error) });
    }
  }

  return (command) => {
    try {
      switch (command.type) {
        case "start": {
          const link = PcapLink.open(command.link, { timeoutMs: READ_TIMEOUT_MS });
          try {
            if (command.pcap !== undefined) capture = PcapFileWriter.open(command.pcap);
          } catch (error) {
            link.close();
            throw error;
          }
          dispatcher = new FrameDispatcher(
            link.mac,
            command.allowed,
            {
              send: (frame) => {
                link.inject(frame);
                record(frame);
              },
              hello: (sled, text) => report({ type: "hello", sled, text }),
              admit: command.admission ? (sled) => report({ type: "admit", sled }) : undefined,
              finished: (sled) => report({ type: "finished", sled }),
              unknown: (sled, read) => report({ type: "unknown", sled, read }),
              reset: (sled, reason) => report({ type: "reset", sled, reason }),
            },
            dispatchCounters(command.counters),
            command.admission ? new AdmissionLimits() : null,
          );
          report({ type: "ready", mac: link.mac });
          void captureLoop(link, dispatcher);
          return;
        }
        case "offer":
          return dispatcher?.offer(command.sled, command.frame, command.bytes, command.port && inboxOf(command.port));
        case "attach":
          return dispatcher?.attach(command.sled, inboxOf(command.port));
        case "refuse":
          return dispatcher?.refuse(command.sled);
        case "end":
          return dispatcher?.end(command.sled);
        case "resume":
          return dispatcher?.resume(command.sled, command.bytes);
        case "reset":
          return dispatcher?.reset(command.sled, command.reason);
        case "stop":
          stopping = true;
          return;
      }
    } catch (error) {
      report({ type: "error", message: oneLine(error) });
    }
  };
}
