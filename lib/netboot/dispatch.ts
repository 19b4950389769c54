/**
 * The boot server's front door: every netboot frame that arrives on the link
 * goes through FrameDispatcher.dispatch, which decides what it is and who
 * deals with it.
 *
 * - Frames that are malformed or of an unknown type, that we sent, that are
 *   addressed to another station, or that come from a sled we were told not
 *   to serve are dropped and counted; no frame can make it throw (netboot.md,
 *   "What a boot server owes the sled").
 * - A HELLO goes to the main thread, which chooses the image to offer.
 * - A READ goes to the session of the sled that sent it. A sled that READs
 *   without a session (the server restarted mid-transfer, or the session
 *   ended) gets a RESET, so it starts over instead of stalling.
 * - A FINISHED ends the sled's session here at once, then goes to the main
 *   thread for the summary.
 *
 * The main thread offers an image through offer(), which attaches the sled's
 * session, tells it the image, and only then sends the OFFER: the sled's
 * first READ can follow the OFFER within microseconds, and must find its
 * session already there rather than draw a RESET.
 */

import {
  BROADCAST_MAC,
  decodeFrame,
  encodeFrame,
  formatMac,
  MAC_SIZE,
  type Mac,
  type ReadRequest,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { SharedCounters } from "@ramdisk-tools/threads/shared-counters.ts";
import type { ServedBytes } from "./served-image.ts";

/**
 * What the dispatcher counts:
 * - frames: every frame captured;
 * - helloFrames, readFrames, finishedFrames: frames of each kind passed on (a READ also when it drew a RESET);
 * - malformed: not a well-formed frame of the protocol (magic, type, lengths, count);
 * - ownFrames: sent from the server's own MAC;
 * - notForUs: addressed to another station (a sled talking to another boot server);
 * - notAllowed: from a sled this server was told not to serve;
 * - unexpected: well formed but not for a server to receive (OFFER, DATA, RESET), or a FINISHED without a session;
 * - resets: RESETs sent to sleds that READ without a session;
 * - sendFailures: OFFER or RESET frames the link refused;
 * - droppedByCapture: frames the capture itself lost, its buffer full (libpcap's ps_drop; copied, not counted here).
 */
export const DISPATCH_COUNTERS = [
  "frames",
  "helloFrames",
  "readFrames",
  "finishedFrames",
  "malformed",
  "ownFrames",
  "notForUs",
  "notAllowed",
  "unexpected",
  "resets",
  "sendFailures",
  "droppedByCapture",
] as const;
export type DispatchCounters = SharedCounters<(typeof DISPATCH_COUNTERS)[number]>;

/**
 * Counters for the dispatcher, over a new buffer or the main thread's.
 *
 * @example const counters = dispatchCounters(); counters.get("resets"); // 0
 */
export function dispatchCounters(buffer?: SharedArrayBuffer): DispatchCounters {
  return new SharedCounters(DISPATCH_COUNTERS, buffer);
}

/** Where a sled's frames go once it has a session (its thread's channel). */
export interface SessionInbox {
  /** Serve these raw image bytes from now on. */
  serve(bytes: ServedBytes): void;
  read(read: ReadRequest): void;
  /** The session ended; nothing more will be delivered. */
  close(): void;
}

/** What the dispatcher does with what it cannot settle itself. */
export interface DispatchEvents {
  /** Put a frame on the link. */
  send(frame: Uint8Array): void;
  hello(sled: Mac, text: Uint8Array): void;
  /** The sled said FINISHED; its session is already detached. */
  finished(sled: Mac): void;
  /** The sled READ without a session and was sent a RESET. */
  reset?(sled: Mac): void;
}

/**
 * A MAC address as one number (48 bits fit a float64 exactly), for map keys
 * that cost no string per frame.
 *
 * @example macKey(new Uint8Array([0, 0, 0, 0, 1, 2])) // 258
 */
export function macKey(mac: Mac): number {
  let key = 0;
  for (let i = 0; i < MAC_SIZE; i++) key = key * 256 + mac[i]!;
  return key;
}

/**
 * Routes the frames a boot server receives (see the module comment).
 *
 * @example
 * const dispatcher = new FrameDispatcher(link.mac, null, events, dispatchCounters());
 * for (let frame = link.next(); frame; frame = link.next()) dispatcher.dispatch(frame);
 */
export class FrameDispatcher {
  readonly #sessions = new Map<number, SessionInbox>();
  readonly #allowed: Set<number> | null;
  readonly #reset: (sled: Mac) => Uint8Array;

  constructor(
    readonly server: Mac,
    /** The sleds to serve; null serves any. */
    allowed: readonly Mac[] | null,
    private readonly events: DispatchEvents,
    readonly counters: DispatchCounters = dispatchCounters(),
  ) {
    this.#allowed = allowed ? new Set(allowed.map(macKey)) : null;
    this.#reset = (sled) => encodeFrame(sled, server, { type: "reset" });
  }

  /**
   * Serve `bytes` to `sled` and send it `offerFrame`. `inbox` attaches a new
   * session; without it the sled's existing session serves the new image.
   */
  offer(sled: Mac, offerFrame: Uint8Array, bytes: ServedBytes, inbox?: SessionInbox): void {
    const key = macKey(sled);
    if (inbox) {
      this.#sessions.get(key)?.close();
      this.#sessions.set(key, inbox);
    }
    const session = this.#sessions.get(key);
    if (!session) throw new Error(`no session for ${formatMac(sled)} to serve the offered image`);
    session.serve(bytes);
    this.#send(offerFrame);
  }

  /** End the sled's session, if it has one; its READs draw RESETs from now on. */
  end(sled: Mac): void {
    const key = macKey(sled);
    this.#sessions.get(key)?.close();
    this.#sessions.delete(key);
  }

  /** Handle one captured frame; never throws on what the frame holds. */
  dispatch(bytes: Uint8Array): void {
    const counters = this.counters;
    counters.add("frames");
    const decoded = decodeFrame(bytes);
    if (!decoded.ok) return counters.add("malformed");
    const { source, destination, message } = decoded.frame;
    if (sameMac(source, this.server)) return counters.add("ownFrames");
    if (!sameMac(destination, this.server) && !sameMac(destination, BROADCAST_MAC)) return counters.add("notForUs");
    const key = macKey(source);
    if (this.#allowed && !this.#allowed.has(key)) return counters.add("notAllowed");
    switch (message.type) {
      case "hello":
        counters.add("helloFrames");
        return this.events.hello(source, message.text);
      case "read": {
        counters.add("readFrames");
        const session = this.#sessions.get(key);
        if (session) return session.read(message);
        if (this.#send(this.#reset(source))) {
          counters.add("resets");
          this.events.reset?.(source);
        }
        return;
      }
      case "finished": {
        const session = this.#sessions.get(key);
        if (!session) return counters.add("unexpected");
        counters.add("finishedFrames");
        session.close();
        this.#sessions.delete(key);
        return this.events.finished(source);
      }
      default:
        return counters.add("unexpected");
    }
  }

  #send(frame: Uint8Array): boolean {
    try {
      this.events.send(frame);
      return true;
    } catch {
      // The sled repeats a HELLO every 4 s and a READ every second, so a
      // refused OFFER or RESET is sent again in answer to the next one.
      this.counters.add("sendFailures");
      return false;
    }
  }
}

/**
 * A batch of frames a session thread sent, copied for the capture file
 * (`bootserver --pcap`). Only the dispatcher thread writes the file, so a
 * session that records posts each batch it sends back on its channel: one
 * buffer and one message per batch, and none at all when nothing records.
 */
export interface SentFrames {
  type: "sent";
  /** Wall-clock milliseconds when the batch went out (lib/wire/pcap-file.ts nowMs). */
  at: number;
  /** The frames, end to end. */
  bytes: Uint8Array;
  /** Each frame's length, in order. */
  lengths: Uint16Array;
}

/**
 * Copy `frames` (views into buffers the sender reuses) into one SentFrames.
 *
 * @example port.postMessage(packSentFrames(frames, nowMs()), [sent.bytes.buffer, sent.lengths.buffer]);
 */
export function packSentFrames(frames: readonly Uint8Array[], at: number): SentFrames {
  let total = 0;
  for (const frame of frames) total += frame.length;
  const bytes = new Uint8Array(total);
  const lengths = new Uint16Array(frames.length);
  let offset = 0;
  frames.forEach((frame, index) => {
    bytes.set(frame, offset);
    lengths[index] = frame.length;
    offset += frame.length;
  });
  return { type: "sent", at, bytes, lengths };
}

/**
 * The frames of a SentFrames, as views into its buffer.
 *
 * @example for (const frame of unpackSentFrames(sent)) capture.write(frame, sent.at);
 */
export function* unpackSentFrames(sent: SentFrames): Generator<Uint8Array> {
  let offset = 0;
  for (const length of sent.lengths) {
    yield sent.bytes.subarray(offset, offset + length);
    offset += length;
  }
}

/** What the main thread tells the dispatcher thread (workers/dispatcher.ts). */
export type DispatcherCommand =
  | {
      type: "start";
      link: string;
      allowed: Mac[] | null;
      counters: SharedArrayBuffer;
      /** Record every frame received and sent to this pcap file (sessions post theirs as SentFrames). */
      pcap?: string;
    }
  | { type: "offer"; sled: Mac; frame: Uint8Array; bytes: ServedBytes; port?: MessagePort }
  | { type: "end"; sled: Mac }
  | { type: "stop" };

/** What the dispatcher thread tells the main thread. */
export type DispatcherReport =
  | { type: "ready"; mac: Mac }
  | { type: "hello"; sled: Mac; text: Uint8Array }
  | { type: "finished"; sled: Mac }
  | { type: "reset"; sled: Mac }
  | { type: "stopped" }
  | { type: "error"; message: string };
