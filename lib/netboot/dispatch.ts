/**
 * The boot server's front door: every netboot frame that arrives on the link
 * goes through FrameDispatcher.dispatch, which decides what it is and who
 * deals with it.
 *
 * - Frames that are malformed or of an unknown type, that we sent, that are
 *   addressed to another station, that come from a group or all-zero
 *   address (lib/protocol/frames.ts isUnicastSource), or that come from a sled we
 *   were told not to serve are dropped and counted; no frame can make it
 *   throw (netboot.md, "What a boot server owes the sled").
 * - A HELLO goes to the main thread, which chooses the image to offer, if
 *   the HELLO rate limits allow (lib/netboot/admission.ts).
 * - A READ goes to the session of the sled that sent it. A sled that was
 *   offered an image but has no session yet is admitted: the main thread is
 *   asked to start one (or turns the sled away at `--max-sleds`), and the
 *   latest READ waits for it. A sled that READs without either (the server
 *   restarted mid-transfer, or its session was released while it was quiet)
 *   is asked about: the main thread tells which image it is reading
 *   (lib/netboot/resume.ts), and it is resumed like an offered sled, or told
 *   to RESET with the reason, only when nothing explains its READ. These
 *   questions, and so the RESETs, are rate-limited too.
 * - A FINISHED ends the sled's session here at once, then goes to the main
 *   thread for the summary.
 *
 * The main thread offers an image through offer(). With admission (the
 * default) that sends the OFFER at once and remembers the image, and
 * attach() later hands the sled's first READ to its new session. Without
 * admission (`--no-admission`, the old way) offer() brings the session along:
 * it attaches it, tells it the image, and only then sends the OFFER, since
 * the sled's first READ can follow within microseconds.
 */

import {
  BROADCAST_MAC,
  decodeFrame,
  encodeFrame,
  formatMac,
  isUnicastSource,
  type Mac,
  macKey,
  type ReadRequest,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { type CountersOf, countersOf } from "@ramdisk-tools/threads/shared-counters.ts";
import type { AdmissionLimits } from "./admission.ts";
import type { ServedBytes } from "./served-image.ts";

/** An offer not followed by a READ within this long is forgotten (a sled READs within milliseconds). */
export const OFFER_TTL_MS = 30_000;

/**
 * What the dispatcher counts:
 * - frames: every frame captured;
 * - helloFrames, readFrames, finishedFrames: frames of each kind passed on (a READ also when it drew a RESET);
 * - malformed: not a well-formed frame of the protocol (magic, type, lengths, count);
 * - ownFrames: sent from the server's own MAC;
 * - notForUs: addressed to another station (a sled talking to another boot server);
 * - groupSource: from a group (multicast, broadcast) or all-zero address, which no sled has;
 * - notAllowed: from a sled this server was told not to serve;
 * - unexpected: well formed but not for a server to receive (OFFER, DATA, RESET), or a FINISHED without a session;
 * - resets: RESETs sent to sleds whose READ nothing explains (lib/netboot/resume.ts);
 * - resetsLimited: READs without a session or offer over the RESET rate limit (not asked about, not answered);
 * - resumed: sleds without a session or offer whose READ was explained, served again (a restart, a quiet sled);
 * - sendFailures: OFFER or RESET frames the link refused;
 * - hellosAnswered: OFFERs sent;
 * - hellosLimited: HELLOs not passed on because of the rate limits;
 * - admitted: sleds given a session after READing an offer;
 * - turnedAway: offered sleds that READ while `--max-sleds` sessions were live, or `--boots` sleds were
 *   booting or done (each counted once);
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
  "groupSource",
  "notAllowed",
  "unexpected",
  "resets",
  "resetsLimited",
  "resumed",
  "sendFailures",
  "hellosAnswered",
  "hellosLimited",
  "admitted",
  "turnedAway",
  "droppedByCapture",
] as const;
export type DispatchCounters = CountersOf<typeof DISPATCH_COUNTERS>;
/** Counters for the dispatcher, over a new buffer or the main thread's. */
export const dispatchCounters = countersOf(DISPATCH_COUNTERS);

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
  /** A sled offered an image READ for the first time: start its session (attach) or turn it away (refuse). */
  admit?(sled: Mac): void;
  /** The sled said FINISHED; its session is already detached. */
  finished(sled: Mac): void;
  /**
   * The sled READ without a session or offer: which image is it reading? Answered with resume() or
   * reset(); its later READs wait meanwhile. Without it such a READ draws a RESET at once.
   */
  unknown?(sled: Mac, read: ReadRequest): void;
  /** The sled was sent a RESET, for `reason`. */
  reset?(sled: Mac, reason: string): void;
}

/** Why a READ drew a RESET when there is no main thread to ask (unit tests, the fallback). */
const NO_SESSION = "it asked for data without a session or offer";

/** A sled offered an image, without a session yet. */
interface Offered {
  bytes: ServedBytes;
  at: number;
  /** The main thread was asked to admit it; its latest READ waits here. */
  waiting: ReadRequest | null;
  /** Turned away at least once (counted once). */
  turnedAway: boolean;
  /** Offered by resume(): the main thread is starting its session without being asked (until it is turned away). */
  resumed?: boolean;
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
  readonly #offered = new Map<number, Offered>();
  /** Sleds the main thread is asked about (events.unknown), with their latest READ. */
  readonly #unknown = new Map<number, { waiting: ReadRequest; at: number }>();
  readonly #allowed: Set<number> | null;
  readonly #reset: (sled: Mac) => Uint8Array;

  constructor(
    readonly server: Mac,
    /** The sleds to serve; null serves any. */
    allowed: readonly Mac[] | null,
    private readonly events: DispatchEvents,
    readonly counters: DispatchCounters = dispatchCounters(),
    /** Rate limits on HELLOs and RESETs; null answers every one (`--no-admission`). */
    private readonly limits: AdmissionLimits | null = null,
    private readonly now: () => number = Date.now,
  ) {
    this.#allowed = allowed ? new Set(allowed.map(macKey)) : null;
    this.#reset = (sled) => encodeFrame(sled, server, { type: "reset" });
  }

  /**
   * Serve `bytes` to `sled` and send it `offerFrame`. `inbox` attaches a new
   * session at once (without admission); without it the sled's session, if
   * it has one, serves the new image, else the sled is admitted on its first
   * READ.
   */
  offer(sled: Mac, offerFrame: Uint8Array, bytes: ServedBytes, inbox?: SessionInbox): void {
    const key = macKey(sled);
    if (inbox) {
      this.#sessions.get(key)?.close();
      this.#sessions.set(key, inbox);
      this.#offered.delete(key);
    }
    const session = this.#sessions.get(key);
    if (session) session.serve(bytes);
    else this.#offered.set(key, { bytes, at: this.now(), waiting: null, turnedAway: false });
    if (this.#send(offerFrame)) this.counters.add("hellosAnswered");
  }

  /** Give the admitted `sled` its session, with the image it was offered and its waiting READ. */
  attach(sled: Mac, inbox: SessionInbox): void {
    const key = macKey(sled);
    const offered = this.#offered.get(key);
    if (!offered) throw new Error(`${formatMac(sled)} was admitted without an offer`);
    this.#offered.delete(key);
    this.#sessions.get(key)?.close();
    this.#sessions.set(key, inbox);
    this.counters.add("admitted");
    inbox.serve(offered.bytes);
    if (offered.waiting) inbox.read(offered.waiting);
  }

  /** The main thread turned `sled` away: drop its waiting READ; its next re-ask asks again. */
  refuse(sled: Mac): void {
    const offered = this.#offered.get(macKey(sled));
    if (!offered) return;
    offered.waiting = null;
    // Turned away like any offered sled: its next READ asks for admission again.
    offered.resumed = false;
    if (!offered.turnedAway) this.counters.add("turnedAway");
    offered.turnedAway = true;
  }

  /**
   * End the sled's session or offer, if it has one, or the question about
   * it (events.unknown) left unanswered: its next READ is asked about.
   */
  end(sled: Mac): void {
    const key = macKey(sled);
    this.#sessions.get(key)?.close();
    this.#sessions.delete(key);
    this.#offered.delete(key);
    this.#unknown.delete(key);
  }

  /**
   * The sled asked about (events.unknown) reads `bytes`: it is offered them
   * (without an OFFER frame: it took one before) with its latest READ
   * waiting, to be attached or refused as an offered sled is.
   */
  resume(sled: Mac, bytes: ServedBytes): void {
    const key = macKey(sled);
    const asked = this.#unknown.get(key);
    this.#unknown.delete(key);
    this.counters.add("resumed");
    this.#offered.set(key, {
      bytes,
      at: this.now(),
      waiting: asked?.waiting ?? null,
      turnedAway: false,
      resumed: true,
    });
  }

  /** Nothing explains the READs of the sled asked about: send it a RESET, for `reason`. */
  reset(sled: Mac, reason: string): void {
    this.#unknown.delete(macKey(sled));
    this.#sendReset(sled, reason);
  }

  /** Forget offers never taken up and rate-limit state that has settled; call about once a second. */
  expire(now = this.now()): void {
    for (const [key, offered] of this.#offered) {
      if (offered.waiting === null && now - offered.at > OFFER_TTL_MS) this.#offered.delete(key);
    }
    // The main thread answers at once; this only keeps a lost answer from leaving the sled unasked forever.
    for (const [key, asked] of this.#unknown) if (now - asked.at > OFFER_TTL_MS) this.#unknown.delete(key);
    this.limits?.forget(now);
  }

  /** Sleds offered an image and not yet admitted. */
  get offeredCount(): number {
    return this.#offered.size;
  }

  /** Handle one captured frame; never throws on what the frame holds. (Each branch returns its last step.) */
  dispatch(bytes: Uint8Array) {
    const counters = this.counters;
    counters.add("frames");
    const decoded = decodeFrame(bytes);
    if (!decoded.ok) return counters.add("malformed");
    const { source, destination, message } = decoded.frame;
    if (sameMac(source, this.server)) return counters.add("ownFrames");
    if (!sameMac(destination, this.server) && !sameMac(destination, BROADCAST_MAC)) return counters.add("notForUs");
    if (!isUnicastSource(source)) return counters.add("groupSource");
    const key = macKey(source);
    if (this.#allowed && !this.#allowed.has(key)) return counters.add("notAllowed");
    switch (message.type) {
      case "hello":
        counters.add("helloFrames");
        if (this.limits && !this.limits.hello(key, this.now())) return counters.add("hellosLimited");
        return this.events.hello(source, message.text);
      case "read":
        counters.add("readFrames");
        return this.#read(source, key, message);
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

  #read(source: Mac, key: number, read: ReadRequest) {
    const session = this.#sessions.get(key);
    if (session) return session.read(read);
    const offered = this.#offered.get(key);
    if (offered && (this.events.admit || offered.resumed)) {
      const asked = offered.waiting !== null;
      offered.waiting = read;
      // A resumed sled's session is already being started (without admission too).
      if (!asked && !offered.resumed) this.events.admit?.(source);
      return;
    }
    const unknown = this.#unknown.get(key);
    if (unknown) {
      unknown.waiting = read;
      return;
    }
    if (this.limits && !this.limits.reset(this.now())) return this.counters.add("resetsLimited");
    if (!this.events.unknown) return this.#sendReset(source, NO_SESSION);
    this.#unknown.set(key, { waiting: read, at: this.now() });
    // A copy: the waiting READ's slots are handed over to the session that answers it.
    this.events.unknown(source, { type: "read", count: read.count, slots: read.slots.slice() });
  }

  #sendReset(sled: Mac, reason: string) {
    if (this.#send(this.#reset(sled))) {
      this.counters.add("resets");
      this.events.reset?.(sled, reason);
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
