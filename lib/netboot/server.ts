/**
 * The boot server: serves boot images over raw Ethernet to any number of
 * sleds at once (docs/netboot.md).
 *
 * Three kinds of thread share the work. The dispatcher thread
 * (lib/netboot/dispatcher-loop.ts, dispatch.ts) captures every netboot frame on
 * the link and routes it. The main thread (this module) decides: which image
 * to offer a sled that says HELLO, when a session starts and ends, when the
 * server is done. Each sled being served has a session thread
 * (lib/netboot/session-loop.ts, session.ts; started ahead by
 * lib/netboot/session-threads.ts) that answers its READs with DATA
 * frames from the image in shared memory. A READ therefore travels from the
 * dispatcher to its session thread on a channel of its own, without the main
 * thread, and sleds are served in parallel on as many cores as there are.
 *
 * Which image a sled is offered: the one pinned to its MAC, else the images
 * in turn on its successive HELLOs (lib/netboot/image-choice.ts); READs are
 * served from the image offered last.
 *
 * Admission (lib/netboot/admission.ts): the dispatcher answers HELLOs, within rate
 * limits, with the OFFER this module builds; no thread starts for a HELLO. A
 * session starts when an offered sled sends its first READ, unless
 * `maxSleds` sessions are live: then the sled is turned away (said once in
 * the log) and admitted on a later re-ask once there is room. Without
 * admission (`--no-admission`, the old way) a session starts with the first
 * OFFER to a sled. Either way the session's channel goes to the dispatcher
 * once its thread can answer: with the OFFER, or on its own when the OFFER
 * went before. A session ends when the sled says FINISHED or when it says
 * HELLO again (it started over), and is parked when the sled is quiet
 * (lib/netboot/parking.ts).
 *
 * What each sled took is kept in a record (lib/netboot/offer-record.ts), on
 * disk in the state directory, so that a restarted server serves the sleds
 * that were mid-boot the same way; a READ from a sled with no session is
 * served whenever its record, or the READ itself, says which image it reads
 * (lib/netboot/resume.ts), and RESET only when nothing does, with the reason.
 *
 * Each session paces its DATA (`rate`, and the shared `linkRate` cap:
 * lib/netboot/pacing.ts) and re-sends a batch whose next READ is late (`resend`:
 * lib/netboot/resend-timer.ts).
 */

import { oneLine, UserError } from "@ramdisk-tools/errors/errors.ts";
import {
  datasetField,
  encodeFrame,
  formatMac,
  type Mac,
  macKey,
  type ReadRequest,
} from "@ramdisk-tools/protocol/frames.ts";
import type { BootEvent } from "./boot-events.ts";
import { type DISPATCH_COUNTERS, type DispatchCounters, dispatchCounters } from "./dispatch.ts";
import type { DispatcherCommand } from "./dispatcher-loop.ts";
import { type DispatcherSledReport, DispatcherThread } from "./dispatcher-thread.ts";
import { ImageChoice } from "./image-choice.ts";
import { OfferRecord } from "./offer-record.ts";
import { LinkClock } from "./pacing.ts";
import { parkQuietSessions } from "./parking.ts";
import { ReadConfirmations, resumeDecision } from "./resume.ts";
import type { ServedImage } from "./served-image.ts";
import { type BootServerOptions, DEFAULT_MAX_SLEDS, DEFAULT_RATE } from "./server-options.ts";
import { type SessionThread, SessionThreads } from "./session-threads.ts";
import { type SledProgress, sledProgress } from "./sled-progress.ts";
import { type Sled, type SledStatus, SledTable } from "./sleds.ts";

const decoder = new TextDecoder("utf-8", { fatal: false });

/**
 * A running boot server. `done` resolves when the requested number of sleds
 * have finished and rejects with a UserError on a fatal failure; `stop()`
 * ends every thread and closes every link handle.
 *
 * @example
 * const server = await BootServer.start({ link: "eth1", images: ["recovery.img"], pinned: [],
 *   allowed: null, boots: 1, failuresFatal: true, onEvent: console.log });
 * try { await server.done; } finally { await server.stop(); }
 */
export class BootServer {
  readonly done: Promise<void>;
  #resolveDone!: () => void;
  #rejectDone!: (error: Error) => void;
  #closed = false;

  readonly #options: BootServerOptions;
  readonly #images: ImageChoice;
  readonly #sleds = new SledTable();
  readonly #frameCounters: DispatchCounters = dispatchCounters();
  #record: OfferRecord = OfferRecord.inMemory();
  readonly #confirmations = new ReadConfirmations();
  #dispatcher!: DispatcherThread;
  #threads!: SessionThreads;
  #serverMac!: Mac;
  #finished = 0;
  #heardHello = false;
  #helloTimer: ReturnType<typeof setTimeout> | undefined;
  #quietTimer: ReturnType<typeof setInterval> | undefined;

  private constructor(options: BootServerOptions) {
    this.#options = options;
    this.done = new Promise((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    // Handled by whoever awaits `done`; this keeps an early failure from being "unhandled".
    this.done.catch(() => {});
    this.#images = new ImageChoice(options.images, options.pinned, options.threads, options.zstdCacheBytes);
  }

  get #admission(): boolean {
    return this.#options.admission ?? true;
  }

  /**
   * Load every image (refusing, with the reason, one a sled could not boot),
   * open the link, and start answering sleds.
   */
  static async start(options: BootServerOptions): Promise<BootServer> {
    const server = new BootServer(options);
    let images: ServedImage[];
    try {
      images = await server.#images.load();
    } catch (error) {
      throw new UserError(oneLine(error));
    }
    server.#openRecord();
    await server.#startDispatcher();
    server.#threads = new SessionThreads({
      entryPoint: options.threads.sessionLoop,
      link: options.link,
      record: options.pcap !== undefined,
      resend: options.resend ?? true,
      rate: options.rate === undefined ? DEFAULT_RATE : options.rate,
      linkClock: options.linkRate ? new LinkClock(options.linkRate) : null,
      onProblem: (message) => server.#problem(message),
      onFailure: (message) => server.#fail(message),
    });
    server.#options.onEvent({ type: "listening", link: options.link, mac: formatMac(server.#serverMac), images });
    for (const image of images) server.#watchLoad(image);
    if (options.helloTimeoutSeconds !== undefined) {
      const seconds = options.helloTimeoutSeconds;
      server.#helloTimer = setTimeout(
        () => server.#fail(`no sled said HELLO within ${seconds} second${seconds === 1 ? "" : "s"}`),
        seconds * 1000,
      );
    }
    server.#quietTimer = setInterval(() => server.#parkQuietSessions(Date.now()), 1000);
    return server;
  }

  /** The sleds that took an offer and have not finished, and the file that records them (null: in memory only). */
  get midBoot(): { sleds: number; file: string | null } {
    return { sleds: this.#record.size, file: this.#record.file };
  }

  /** The transfers under way, for a progress display. */
  progress(now = Date.now()): SledProgress[] {
    return this.#sleds.progress(now);
  }

  /** Every sled heard from, with its session's progress while it has one (for lib/netboot/metrics.ts). */
  sleds(now = Date.now()): SledStatus[] {
    return this.#sleds.statuses(now);
  }

  /** What the dispatcher counted: frames seen, dropped by reason, RESETs sent. */
  frameCounts(): Record<(typeof DISPATCH_COUNTERS)[number], number> {
    return this.#frameCounters.snapshot();
  }

  /** Stop every thread and close the link handles. Safe to call more than once. */
  async stop(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#helloTimer);
    clearInterval(this.#quietTimer);
    // Sessions first: when recording, their last batches reach the dispatcher before it closes the capture.
    const sessions: Promise<void>[] = [];
    for (const sled of this.#sleds) {
      if (sled.session) sessions.push(this.#threads.stop(sled.session));
      sled.session = undefined;
    }
    sessions.push(this.#threads.close());
    await Promise.all(sessions);
    this.#images.retire();
    await this.#dispatcher.stop();
  }

  #emit(event: BootEvent) {
    if (!this.#closed) this.#options.onEvent(event);
  }

  #fail(message: string) {
    this.#rejectDone(new UserError(message));
  }

  /** A failure of one sled's boot: fatal with failuresFatal, else reported. */
  #problem(message: string) {
    if (this.#options.failuresFatal) this.#fail(message);
    else this.#emit({ type: "problem", message });
  }

  /** Say how a raw image's load, which goes on while it is served, ends (ServedImage.filled). */
  #watchLoad(image: ServedImage) {
    image.filled?.then(
      (seconds) => this.#emit({ type: "loaded", image, seconds }),
      (error: Error) => {
        // Their sessions see the failure in the image's shared memory and RESET their sleds themselves.
        // Forgotten here, so its memory goes once they end (its file refuses it until the file changes).
        this.#images.forget(image);
        const resetSleds = this.#sleds.serving(image);
        const message = `refusing ${image.path} from now on, until the file changes: ${error.message}`;
        if (this.#options.failuresFatal) this.#fail(message);
        else this.#emit({ type: "refused", image, message, resetSleds });
      },
    );
  }

  #openRecord() {
    const state = this.#options.state;
    if (!state) return;
    try {
      this.#record = OfferRecord.open(state.dir, this.#options.link, Date.now(), (message) =>
        this.#emit({ type: "problem", message }),
      );
    } catch (error) {
      if (state.chosen) throw new UserError(`--state-dir: ${oneLine(error)}`);
      this.#options.onEvent({
        type: "notice",
        message: `not keeping a record of offers (${oneLine(error)}): after a restart, only sleds whose READ fits exactly one image are served on (--state-dir DIR)`,
      });
    }
  }

  #command(command: DispatcherCommand, transfer: Bun.Transferable[] = []) {
    this.#dispatcher.command(command, transfer);
  }

  /** Start the dispatcher thread, and route what it reports about the sleds. */
  async #startDispatcher(): Promise<void> {
    const allowed = this.#options.allowed && [...this.#options.allowed, ...this.#options.pinned.map(([mac]) => mac)];
    const start = {
      type: "start",
      link: this.#options.link,
      allowed,
      counters: this.#frameCounters.buffer,
      pcap: this.#options.pcap,
      admission: this.#admission,
    } as const;
    this.#dispatcher = new DispatcherThread(
      this.#options.threads.dispatcherLoop,
      start,
      (report) => this.#route(report),
      (message) => this.#fail(message),
    );
    this.#serverMac = await this.#dispatcher.ready;
  }

  /** Act on what the dispatcher reports about a sled. */
  #route(report: DispatcherSledReport) {
    switch (report.type) {
      case "hello":
        return void this.#hello(report.sled, report.text);
      case "admit":
        return void this.#admit(report.sled);
      case "finished":
        return this.#sledFinished(report.sled);
      case "unknown":
        return this.#unknownRead(report.sled, report.read);
      case "reset":
        return this.#emit({ type: "reset", sled: formatMac(report.sled), reason: report.reason });
    }
  }

  async #hello(mac: Mac, text: Uint8Array): Promise<void> {
    if (this.#closed) return;
    if (!this.#heardHello) {
      this.#heardHello = true;
      clearTimeout(this.#helloTimer);
    }
    const sled = this.#sleds.add(mac);
    sled.heardAt = Date.now();
    // It started over: whatever it took before, it reads no more.
    this.#record.forget(mac);
    this.#emit({ type: "hello", sled: sled.name, text: decoder.decode(text) });
    if (sled.answering) return;
    const session = sled.session;
    if (session) {
      session.heardAt = Date.now();
      const delivered = session.counters.get("deliveredBytes");
      if (delivered > 0) this.#problem(`${sled.name} started over after ${delivered} bytes of ${session.image.name}`);
    } else if (this.#atCapacity()) {
      if (!sled.deferred) {
        sled.deferred = true;
        this.#emit({
          type: "notice",
          message: `not offering to ${sled.name}: ${this.#options.boots} sleds are already booting or done`,
        });
      }
      return;
    }
    sled.answering = true;
    try {
      await this.#offer(sled);
    } finally {
      sled.answering = false;
    }
  }

  /**
   * Offer `sled` the image its turn chooses. With admission, a sled without
   * a session is offered it at once, and its session starts on its first
   * READ (#admit). Otherwise its session serves the image from now on,
   * started here for a sled without one, and the OFFER goes with the
   * session's channel once its thread can answer (#handOver).
   */
  async #offer(sled: Sled): Promise<void> {
    const file = this.#images.fileFor(macKey(sled.mac), sled.offers++);
    let image: ServedImage;
    try {
      image = await file.current();
    } catch (error) {
      return this.#problem(`cannot offer ${file.path} to ${sled.name}: ${oneLine(error)}`);
    }
    if (this.#closed) return;
    const previous = this.#images.update(file, image);
    if (previous && previous !== image) this.#emit({ type: "reloaded", image });
    if (previous !== image) this.#watchLoad(image);

    sled.offered = image;
    let session = sled.session;
    if (session) {
      session.image = image;
      session.heardAt = Date.now();
    } else if (this.#admission) {
      // No thread for a HELLO: the session starts when the sled READs (#admit).
      return this.#sendOffer(sled, image);
    } else session = this.#startSession(sled, image);
    // Without admission the session serves this image from now on, taken or not.
    this.#record.remember(sled.mac, image, Date.now());
    const port = await this.#handOver(sled, session);
    if (port !== null) this.#sendOffer(sled, image, port);
  }

  /** Have the dispatcher send `sled` the OFFER of `image`, and hand it the session's channel if `port` is given. */
  #sendOffer(sled: Sled, image: ServedImage, port?: MessagePort) {
    const { header } = image;
    const frame = encodeFrame(sled.mac, this.#serverMac, {
      type: "offer",
      ramdiskSize: BigInt(header.targetSize),
      imageSize: BigInt(header.imageSize),
      sha256: header.sha256,
      dataset: datasetField(header.dataset),
    });
    this.#command({ type: "offer", sled: sled.mac, frame, bytes: image.bytes, port }, port ? [port] : []);
    this.#emit({ type: "offer", sled: sled.name, image });
  }

  /** An offered sled READ for the first time: start its session, unless `maxSleds` are live. */
  async #admit(mac: Mac): Promise<void> {
    const sled = this.#sleds.get(mac);
    const image = sled?.offered;
    if (this.#closed || sled?.session) return;
    // Forgotten here: the dispatcher forgets the offer too, and asks about the next READ (#unknownRead).
    if (!sled || !image) return this.#command({ type: "end", sled: mac });
    // It READ the offer: it took it, and reads it until it finishes, whatever happens to this server.
    this.#record.remember(mac, image, Date.now());
    const maxSleds = this.#options.maxSleds ?? DEFAULT_MAX_SLEDS;
    const live = this.#sleds.live();
    // Sleds offered at once may READ at once: with a boot count, one beyond it would be cut off when the server exits.
    const boots = this.#options.boots;
    if (boots !== undefined && this.#finished + live >= boots) return this.#command({ type: "refuse", sled: mac });
    if (live >= maxSleds) {
      this.#command({ type: "refuse", sled: mac });
      if (!sled.turnedAway) this.#emit({ type: "turned-away", sled: sled.name, maxSleds });
      sled.turnedAway = true;
      return;
    }
    const session = this.#startSession(sled, image);
    // A HELLO answered meanwhile may have handed the channel over with its OFFER already.
    const port = await this.#handOver(sled, session);
    if (port) this.#command({ type: "attach", sled: mac, port }, [port]);
  }

  /**
   * A sled READ with no session or offer here (the server restarted, or its
   * session was parked): serve it the image its record or its READ names, or
   * RESET it saying why nothing does (lib/netboot/resume.ts).
   */
  #unknownRead(mac: Mac, read: ReadRequest) {
    if (this.#closed) return;
    const key = macKey(mac);
    const recorded = this.#record.get(mac);
    const decision = resumeDecision(recorded, read, this.#images.candidates(key));
    if ("reason" in decision) return this.#command({ type: "reset", sled: mac, reason: decision.reason });
    // Unanswered for now: the sled's re-ask a second later asks again.
    if (!recorded && !this.#confirmations.confirms(key, Date.now())) return this.#command({ type: "end", sled: mac });
    const sled = this.#sleds.add(mac);
    sled.offered = decision.image;
    this.#command({ type: "resume", sled: mac, bytes: decision.image.bytes });
    this.#emit({ type: "resumed", sled: sled.name, image: decision.image, how: decision.how });
    void this.#admit(mac);
  }

  /** A session for `sled`, serving `image`, on a thread started ahead. */
  #startSession(sled: Sled, image: ServedImage): SessionThread {
    const session = this.#threads.take(sled.name, sled.mac, image);
    sled.session = session;
    this.#emit({ type: "session-start", sled: sled.name, image });
    return session;
  }

  /**
   * Once `session`'s thread can answer READs, the dispatcher's end of its
   * channel, to hand over: undefined when it was handed over already, null
   * when the session is no more (its thread failed, which is reported
   * already; the server stopped; the sled started another). An OFFER waits
   * for it: a sled READs as soon as it accepts, and re-asks a whole batch if
   * the answers take over a second (a thread starting among many on busy
   * cores can take that long).
   */
  async #handOver(sled: Sled, session: SessionThread): Promise<MessagePort | undefined | null> {
    try {
      await session.ready;
    } catch {
      return null;
    }
    if (this.#closed || sled.session !== session) return null;
    const port = session.dispatcherPort;
    session.dispatcherPort = undefined;
    return port;
  }

  #sledFinished(mac: Mac) {
    const sled = this.#sleds.get(mac);
    const session = sled?.session;
    if (!sled || !session) return;
    sled.session = undefined;
    this.#record.forget(mac);
    void this.#threads.stop(session);
    this.#finished++;
    const progress = sledProgress(sled.name, session.image, session.counters, Date.now());
    this.#emit({ type: "finished", progress, boots: this.#finished });
    if (this.#options.boots !== undefined && this.#finished >= this.#options.boots) this.#resolveDone();
  }

  #parkQuietSessions(now: number) {
    this.#confirmations.expire(now);
    parkQuietSessions(this.#sleds, now, {
      admission: this.#admission,
      // Parked: the dispatcher asks about its next READ, which its record answers (#unknownRead).
      end: (mac) => this.#command({ type: "end", sled: mac }),
      stop: (session) => void this.#threads.stop(session),
      forget: (mac) => this.#record.forget(mac),
      notice: (message) => this.#emit({ type: "notice", message }),
    });
  }

  /** With a boot count, sleds beyond it are not offered anything: the server would exit during their transfer. */
  #atCapacity(): boolean {
    const boots = this.#options.boots;
    if (boots === undefined) return false;
    return this.#finished + this.#sleds.transferring() >= boots;
  }
}
