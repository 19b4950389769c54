/**
 * The boot server: serves boot images over raw Ethernet to any number of
 * sleds at once (docs/netboot.md).
 *
 * Three kinds of thread share the work. The dispatcher thread
 * (lib/netboot/dispatcher-thread.ts, dispatch.ts) captures every netboot frame on
 * the link and routes it. The main thread (this module) decides: which image
 * to offer a sled that says HELLO, when a session starts and ends, when the
 * server is done. Each sled being served has a session thread
 * (lib/netboot/session-thread.ts, session.ts) that answers its READs with DATA
 * frames from the image in shared memory. A READ therefore travels from the
 * dispatcher to its session thread on a channel of its own, without the main
 * thread, and sleds are served in parallel on as many cores as there are.
 *
 * Which image a sled is offered: the one pinned to its MAC, else the images
 * in turn on its successive HELLOs. A sled ignores an OFFER whose checksum
 * is not the one in its boot archive and says HELLO again four seconds later,
 * so offering each image in turn finds the one it wants; READs are served
 * from the image offered last. Images are loaded once (lib/netboot/served-image.ts)
 * and reloaded on a HELLO after their file changed.
 *
 * Admission (lib/netboot/admission.ts): the dispatcher answers HELLOs, within rate
 * limits, with the OFFER this module builds; no thread starts for a HELLO. A
 * session starts when an offered sled sends its first READ, on a session
 * thread started ahead (one is always kept spare, its link open), unless
 * `maxSleds` sessions are live: then the sled is turned away (said once in
 * the log) and admitted on a later re-ask once there is room. Without
 * admission (`--no-admission`, the old way) a session starts with the first
 * OFFER to a sled. A session ends when the sled says FINISHED or when it
 * says HELLO again (it started over).
 *
 * Silence is not death: a sled may go quiet for long stretches while it
 * prints on a slow serial console (netboot.md, "The console"), or when it is
 * simply slow. A session silent for SESSION_QUIET_MS is only parked: its
 * thread is released, but the sled's offer stands, and its next READ starts
 * a session again. What each sled took is kept in a record
 * (lib/netboot/offer-record.ts), on disk in the state directory, so that a
 * restarted server serves the sleds that were mid-boot the same way; a READ
 * from a sled with no session is served whenever its record, or the READ
 * itself, says which image it reads (lib/netboot/resume.ts), and RESET only
 * when nothing does, with the reason.
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
import { COPY_CHOICES, type CopyChoice } from "./copy-policy.ts";
import { type DISPATCH_COUNTERS, type DispatchCounters, dispatchCounters } from "./dispatch.ts";
import type { DispatcherCommand, DispatcherReport } from "./dispatcher-thread.ts";
import { OfferRecord } from "./offer-record.ts";
import { LinkClock } from "./pacing.ts";
import { resumeDecision } from "./resume.ts";
import { type ServedImage, ServedImageFile } from "./served-image.ts";
import {
  type SESSION_COUNTERS,
  type SessionCommand,
  type SessionCounters,
  type SessionReport,
  sessionCounters,
} from "./session.ts";
import type { ServerThreads } from "./threads.ts";

/** A session with no READ or HELLO for this long is parked: its thread goes, the sled's offer stays. */
export const SESSION_QUIET_MS = 20_000;
/**
 * A sled with no record is resumed from its READ alone only when it READs
 * again at least this long after (a sled re-asks every second; a made-up
 * MAC that fires one READ gets neither a session nor a RESET)...
 */
const CONFIRM_AFTER_MS = 500;
/** ...and no longer than this after. */
const CONFIRM_WITHIN_MS = 10_000;
/** Live sessions at most, by default: above a full rack of 32 sleds. */
export const DEFAULT_MAX_SLEDS = 64;
/** Pace each sled at its NIC's line rate by default (netboot.md: the sled's NIC is gigabit). */
export const DEFAULT_RATE = 1e9;
/** How long a stopping thread gets to close its link before it is terminated. */
const STOP_GRACE_MS = 1000;
/** The dispatcher may also have a capture file to flush, sync and rename. */
const RECORDING_STOP_GRACE_MS = 10_000;

export interface BootServerOptions {
  /** The Ethernet link the sleds are on. */
  link: string;
  /** Image files offered in turn to sleds without a pinned image. */
  images: string[];
  /** Image file pinned to a sled, by MAC. */
  pinned: [Mac, string][];
  /** The sleds to serve (pinned sleds are served too); null serves any sled. */
  allowed: Mac[] | null;
  /** Done once this many sleds have said FINISHED; serve forever when absent. */
  boots?: number;
  /** Every failure ends the server, as the existing `-s` does. */
  failuresFatal: boolean;
  /** Fail unless a sled says HELLO within this many seconds. */
  helloTimeoutSeconds?: number;
  /** Record every frame received and sent to this pcap file, which appears when the server stops. */
  pcap?: string;
  /** Send a batch again when the sled's next READ is late (default true; `--no-resend`). */
  resend?: boolean;
  /** Pace each sled's DATA at this many bits per second on the wire; null: unpaced (default DEFAULT_RATE). */
  rate?: number | null;
  /** Cap the DATA of all sessions together at this many bits per second; null or absent: no cap. */
  linkRate?: number | null;
  /** Rate-limit HELLOs and start sessions only for sleds that READ an offer (default true; `--no-admission`). */
  admission?: boolean;
  /** Live sessions at most, with admission (default DEFAULT_MAX_SLEDS). */
  maxSleds?: number;
  /** Bytes of decompressed blocks kept for each zstd image (default DEFAULT_CACHE_BYTES, lib/netboot/block-cache.ts). */
  zstdCacheBytes?: number;
  /**
   * Where to keep the record of what each sled took (lib/netboot/offer-record.ts), and whether the operator
   * chose it (then a directory that cannot be written is an error, else a notice); null keeps it in memory.
   */
  state?: { dir: string; chosen: boolean } | null;
  /** The entry points of the threads it starts, handed down by the program. */
  threads: ServerThreads;
  /** Where to report what happens. */
  onEvent: (event: BootEvent) => void;
}

/** One sled's transfer as it stands. */
export interface SledProgress {
  /** The sled's MAC address, formatted. */
  sled: string;
  image: ServedImage;
  /** Image bytes delivered (each offset counted once). */
  deliveredBytes: number;
  /** Image bytes sent, repeats included. */
  sentBytes: number;
  /** Offsets the sled asked for more than once. */
  reasked: number;
  /** Seconds since the sled's first READ. */
  seconds: number;
  /** deliveredBytes per second since the first READ. */
  bytesPerSecond: number;
  /** Batches of DATA frames the link refused to send. */
  sendFailures: number;
  /** DATA frames sent, re-sent copies included. */
  dataFrames: number;
  /** DATA frames sent again by fast re-send. */
  resentFrames: number;
  /** Seconds spent waiting for the pacing clock. */
  pacedSeconds: number;
  /** The smoothed READ round trip in milliseconds, 0 before it is measured. */
  roundTripMs: number;
  /** Whether fast re-send sends this sled copies, and why (lib/netboot/copy-policy.ts). */
  copyChoice: CopyChoice;
  /** What a console line costs the sled in milliseconds, as measured (0: not yet; lib/netboot/console-cost.ts). */
  consoleLineMs: number;
  /** Console seconds the copies sent so far are estimated to have cost the sled. */
  copiesConsoleSeconds: number;
  /** Every counter of the session as it stands (the figures above come from these), for the metrics. */
  counters: Record<(typeof SESSION_COUNTERS)[number], number>;
}

/** A sled the server has heard from, for the metrics (lib/netboot/metrics.ts). */
export interface SledStatus {
  /** The sled's MAC address, formatted. */
  sled: string;
  /** Its session's progress while it has one. */
  session: SledProgress | null;
  /** It was not offered an image because --boots sleds were already booting or done. */
  turnedAway: boolean;
}

export type BootEvent =
  | { type: "listening"; link: string; mac: string; images: ServedImage[] }
  | { type: "hello"; sled: string; text: string }
  | { type: "offer"; sled: string; image: ServedImage }
  /** The sled was offered an image for the first time in this session: a session thread serves it from now on. */
  | { type: "session-start"; sled: string; image: ServedImage }
  /** The sled READ and nothing explains what it reads (lib/netboot/resume.ts): it was sent a RESET, for `reason`. */
  | { type: "reset"; sled: string; reason: string }
  /** The sled READ without a session (the server restarted, or it was quiet) and is served `image` again, as `how` says. */
  | { type: "resumed"; sled: string; image: ServedImage; how: string }
  /** The sled READ an offer while `maxSleds` sessions were live: no session for now (said once per sled). */
  | { type: "turned-away"; sled: string; maxSleds: number }
  | { type: "reloaded"; image: ServedImage }
  /** A raw image is all in its file and its SHA-256 matched, `seconds` after its load began (it was served meanwhile). */
  | { type: "loaded"; image: ServedImage; seconds: number }
  /**
   * A raw image failed its check after serving began: refused until its file changes, and the sessions
   * serving it sent their sleds a RESET (`resetSleds` of them).
   */
  | { type: "refused"; image: ServedImage; message: string; resetSleds: number }
  | { type: "finished"; progress: SledProgress; boots: number }
  /** Something worth knowing that is not a failure. */
  | { type: "notice"; message: string }
  /** A failure that does not stop the server (unless failuresFatal). */
  | { type: "problem"; message: string };

/** A session thread, started before it has a sled so that admitting one costs no thread start. */
interface SessionWorker {
  worker: Worker;
  counters: SessionCounters;
  /** The dispatcher's end of the session's channel, until handed over. */
  dispatcherPort?: MessagePort;
  /** Settles when the thread can answer READs (or failed to start). */
  ready: Promise<void>;
  stopped: Promise<void>;
  /** The sled it serves, formatted, for its messages. */
  name: string;
}

interface SessionThread extends SessionWorker {
  image: ServedImage;
  /** Epoch milliseconds of the last OFFER or HELLO, for the quiet check. */
  heardAt: number;
}

interface Sled {
  mac: Mac;
  name: string;
  /** OFFERs made so far, to rotate through the images. */
  offers: number;
  /** A HELLO is being answered (its image may be loading). */
  answering: boolean;
  /** Told once that it waits for capacity. */
  deferred: boolean;
  /** Told once that `maxSleds` turned it away. */
  turnedAway: boolean;
  /** The image offered last, for the session that starts on its first READ. */
  offered?: ServedImage;
  /** Epoch milliseconds of its last HELLO, to forget sleds that went away. */
  heardAt: number;
  session?: SessionThread;
}

const decoder = new TextDecoder("utf-8", { fatal: false });

/** Resolves when `promise` does, or after `ms` at the latest. */
function settledWithin(promise: Promise<void>, ms: number): Promise<void> {
  return Promise.race([promise, new Promise<void>((resolve) => setTimeout(resolve, ms))]);
}

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
  readonly #rotation: ServedImageFile[];
  readonly #pinned: Map<number, ServedImageFile>;
  readonly #loaded = new Map<ServedImageFile, ServedImage>();
  readonly #sleds = new Map<number, Sled>();
  readonly #frameCounters: DispatchCounters = dispatchCounters();
  readonly #linkClock: LinkClock | null;
  #record: OfferRecord = OfferRecord.inMemory();
  /** Sleds with no record whose first READ fitted one image, by MAC key: when, to resume on their next. */
  readonly #noted = new Map<number, number>();
  #dispatcher!: Worker;
  #dispatcherStopped!: Promise<void>;
  #serverMac!: Mac;
  #finished = 0;
  #heardHello = false;
  #helloTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * One session thread started ahead, link open, waiting for a sled: a
   * thread takes tens of milliseconds to start, and more than the sled's
   * one-second re-ask on a busy host, which a sled's first READ would wait.
   */
  #spare: SessionWorker | undefined;
  #quietTimer: ReturnType<typeof setInterval> | undefined;

  private constructor(options: BootServerOptions) {
    this.#options = options;
    this.done = new Promise((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    // Handled by whoever awaits `done`; this keeps an early failure from being "unhandled".
    this.done.catch(() => {});
    const files = new Map<string, ServedImageFile>();
    const fileFor = (path: string) =>
      files.get(path) ?? files.set(path, new ServedImageFile(path, options.threads, options.zstdCacheBytes)).get(path)!;
    this.#rotation = options.images.map(fileFor);
    this.#pinned = new Map(options.pinned.map(([mac, path]) => [macKey(mac), fileFor(path)]));
    this.#linkClock = options.linkRate ? new LinkClock(options.linkRate) : null;
  }

  get #admission(): boolean {
    return this.#options.admission ?? true;
  }

  /**
   * Load every image (refusing, with the reason, one a sled could not boot),
   * open the link, and start answering sleds.
   */
  static async start(options: BootServerOptions): Promise<BootServer> {
    if (options.images.length === 0) throw new UserError("no image to serve", 2);
    const server = new BootServer(options);
    const files = [...new Set([...server.#rotation, ...server.#pinned.values()])];
    const images = await Promise.all(
      files.map(async (file) => {
        try {
          const image = await file.current();
          server.#loaded.set(file, image);
          return image;
        } catch (error) {
          throw new UserError(oneLine(error));
        }
      }),
    );
    server.#openRecord();
    await server.#startDispatcher();
    server.#spare = server.#spawnSessionWorker();
    server.#options.onEvent({ type: "listening", link: options.link, mac: formatMac(server.#serverMac), images });
    for (const image of images) server.#watchLoad(image);
    if (options.helloTimeoutSeconds !== undefined) {
      const seconds = options.helloTimeoutSeconds;
      server.#helloTimer = setTimeout(
        () => server.#fail(`no sled said HELLO within ${seconds} second${seconds === 1 ? "" : "s"}`),
        seconds * 1000,
      );
    }
    server.#quietTimer = setInterval(() => server.#endQuietSessions(Date.now()), 1000);
    return server;
  }

  /** The sleds that took an offer and have not finished, and the file that records them (null: in memory only). */
  get midBoot(): { sleds: number; file: string | null } {
    return { sleds: this.#record.size, file: this.#record.file };
  }

  /** The transfers under way, for a progress display. */
  progress(now = Date.now()): SledProgress[] {
    const transfers: SledProgress[] = [];
    for (const sled of this.#sleds.values()) {
      if (sled.session && sled.session.counters.get("reads") > 0)
        transfers.push(this.#progressOf(sled, sled.session, now));
    }
    return transfers;
  }

  /** Every sled heard from, with its session's progress while it has one (for lib/netboot/metrics.ts). */
  sleds(now = Date.now()): SledStatus[] {
    return [...this.#sleds.values()].map((sled) => ({
      sled: sled.name,
      session: sled.session ? this.#progressOf(sled, sled.session, now) : null,
      turnedAway: sled.deferred,
    }));
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
    for (const sled of this.#sleds.values()) {
      if (sled.session) sessions.push(this.#stopWorker(sled.session.worker, sled.session.stopped));
      sled.session = undefined;
    }
    const spare = this.#spare;
    this.#spare = undefined;
    if (spare) sessions.push(this.#stopWorker(spare.worker, spare.stopped));
    await Promise.all(sessions);
    for (const image of this.#loaded.values()) image.retire?.();
    const grace = this.#options.pcap === undefined ? STOP_GRACE_MS : RECORDING_STOP_GRACE_MS;
    await this.#stopWorker(this.#dispatcher, this.#dispatcherStopped, grace);
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
        for (const [file, loaded] of this.#loaded) if (loaded === image) this.#loaded.delete(file);
        let resetSleds = 0;
        for (const sled of this.#sleds.values()) if (sled.session?.image === image) resetSleds++;
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
    this.#dispatcher.postMessage(command, transfer);
  }

  async #startDispatcher(): Promise<void> {
    const worker = new Worker(this.#options.threads.dispatcherThread);
    this.#dispatcher = worker;
    let stopped!: () => void;
    this.#dispatcherStopped = new Promise((resolve) => (stopped = resolve));
    const ready = new Promise<void>((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<DispatcherReport>) => {
        const report = event.data;
        switch (report.type) {
          case "ready":
            this.#serverMac = report.mac;
            return resolve();
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
          case "stopped":
            return stopped();
          case "error":
            reject(new UserError(report.message));
            return this.#fail(report.message);
        }
      };
      worker.onerror = (event) => {
        reject(new UserError(event.message));
        this.#fail(`dispatcher thread failed: ${event.message}`);
      };
    });
    const allowed = this.#options.allowed && [...this.#options.allowed, ...this.#options.pinned.map(([mac]) => mac)];
    this.#command({
      type: "start",
      link: this.#options.link,
      allowed,
      counters: this.#frameCounters.buffer,
      pcap: this.#options.pcap,
      admission: this.#admission,
    });
    try {
      await ready;
    } catch (error) {
      worker.terminate();
      throw error;
    }
  }

  async #hello(mac: Mac, text: Uint8Array): Promise<void> {
    if (this.#closed) return;
    if (!this.#heardHello) {
      this.#heardHello = true;
      clearTimeout(this.#helloTimer);
    }
    const key = macKey(mac);
    let sled = this.#sleds.get(key);
    if (!sled) {
      sled = { mac, name: formatMac(mac), offers: 0, answering: false, deferred: false, turnedAway: false, heardAt: 0 };
      this.#sleds.set(key, sled);
    }
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
      await this.#offer(sled, key);
    } finally {
      sled.answering = false;
    }
  }

  async #offer(sled: Sled, key: number): Promise<void> {
    const file = this.#pinned.get(key) ?? this.#rotation[sled.offers % this.#rotation.length]!;
    sled.offers++;
    let image: ServedImage;
    try {
      image = await file.current();
    } catch (error) {
      return this.#problem(`cannot offer ${file.path} to ${sled.name}: ${oneLine(error)}`);
    }
    if (this.#closed) return;
    const previous = this.#loaded.get(file);
    if (previous && previous !== image) this.#emit({ type: "reloaded", image });
    if (previous !== image) this.#watchLoad(image);
    this.#loaded.set(file, image);

    const { header } = image;
    const frame = () =>
      encodeFrame(sled.mac, this.#serverMac, {
        type: "offer",
        ramdiskSize: BigInt(header.targetSize),
        imageSize: BigInt(header.imageSize),
        sha256: header.sha256,
        dataset: datasetField(header.dataset),
      });
    sled.offered = image;
    if (sled.session) {
      sled.session.image = image;
      sled.session.heardAt = Date.now();
    } else if (this.#admission) {
      // No thread for a HELLO: the session starts when the sled READs (#admit).
      this.#command({ type: "offer", sled: sled.mac, frame: frame(), bytes: image.bytes });
      this.#emit({ type: "offer", sled: sled.name, image });
      return;
    }
    const session = sled.session ?? this.#startSession(sled, image);
    if (!sled.session) this.#emit({ type: "session-start", sled: sled.name, image });
    sled.session = session;
    // Without admission the session serves this image from now on, taken or not.
    this.#record.remember(sled.mac, image, Date.now());
    // Offer only once the session thread can answer: a sled READs as soon as
    // it accepts, and re-asks a whole batch if the answers take over a second
    // (a thread starting among many on busy cores can take that long).
    try {
      await session.ready;
    } catch {
      return; // the session thread's failure is already reported
    }
    if (this.#closed || sled.session !== session) return;
    const port = session.dispatcherPort;
    session.dispatcherPort = undefined;
    this.#command({ type: "offer", sled: sled.mac, frame: frame(), bytes: image.bytes, port }, port ? [port] : []);
    this.#emit({ type: "offer", sled: sled.name, image });
  }

  /** An offered sled READ for the first time: start its session, unless `maxSleds` are live. */
  async #admit(mac: Mac): Promise<void> {
    const sled = this.#sleds.get(macKey(mac));
    const image = sled?.offered;
    if (this.#closed || sled?.session) return;
    // Forgotten here: the dispatcher forgets the offer too, and asks about the next READ (#unknownRead).
    if (!sled || !image) return this.#command({ type: "end", sled: mac });
    // It READ the offer: it took it, and reads it until it finishes, whatever happens to this server.
    this.#record.remember(mac, image, Date.now());
    const maxSleds = this.#options.maxSleds ?? DEFAULT_MAX_SLEDS;
    let live = 0;
    for (const other of this.#sleds.values()) if (other.session) live++;
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
    sled.session = session;
    this.#emit({ type: "session-start", sled: sled.name, image });
    try {
      await session.ready;
    } catch {
      return; // the session thread's failure is already reported
    }
    // A HELLO answered meanwhile may have handed the channel over with its OFFER already.
    const port = session.dispatcherPort;
    if (this.#closed || sled.session !== session || !port) return;
    session.dispatcherPort = undefined;
    this.#command({ type: "attach", sled: mac, port }, [port]);
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
    const pinned = this.#pinned.get(key);
    const served = pinned ? [this.#loaded.get(pinned)] : [...this.#loaded.values()];
    const decision = resumeDecision(
      recorded,
      read,
      served.filter((image) => image !== undefined),
    );
    if ("reason" in decision) return this.#command({ type: "reset", sled: mac, reason: decision.reason });
    if (!recorded) {
      const now = Date.now();
      const noted = this.#noted.get(key);
      const since = noted === undefined ? Number.POSITIVE_INFINITY : now - noted;
      if (since < CONFIRM_AFTER_MS || since > CONFIRM_WITHIN_MS) {
        if (since > CONFIRM_WITHIN_MS) this.#noted.set(key, now);
        // Unanswered for now: the sled's re-ask a second later asks again.
        return this.#command({ type: "end", sled: mac });
      }
      this.#noted.delete(key);
    }
    let sled = this.#sleds.get(key);
    if (!sled) {
      sled = {
        mac,
        name: formatMac(mac),
        offers: 0,
        answering: false,
        deferred: false,
        turnedAway: false,
        heardAt: Date.now(),
      };
      this.#sleds.set(key, sled);
    }
    sled.offered = decision.image;
    this.#command({ type: "resume", sled: mac, bytes: decision.image.bytes });
    this.#emit({ type: "resumed", sled: sled.name, image: decision.image, how: decision.how });
    void this.#admit(mac);
  }

  /** A session for `sled` on the spare thread, and a new spare. */
  #startSession(sled: Sled, image: ServedImage): SessionThread {
    const thread = this.#spare ?? this.#spawnSessionWorker();
    this.#spare = this.#closed ? undefined : this.#spawnSessionWorker();
    thread.name = sled.name;
    thread.worker.postMessage({ type: "sled", sled: sled.mac } satisfies SessionCommand);
    return Object.assign(thread, { image, heardAt: Date.now() });
  }

  #spawnSessionWorker(): SessionWorker {
    const worker = new Worker(this.#options.threads.sessionThread);
    const counters = sessionCounters();
    const channel = new MessageChannel();
    let stopped!: () => void;
    let ready!: () => void;
    let failed!: (error: Error) => void;
    const thread: SessionWorker = {
      worker,
      counters,
      dispatcherPort: channel.port1,
      ready: new Promise((resolve, reject) => {
        ready = resolve;
        failed = reject;
      }),
      stopped: new Promise((resolve) => (stopped = resolve)),
      name: "a spare session",
    };
    // Handled where a session waits for it; this keeps a spare's failure from being "unhandled".
    thread.ready.catch(() => {});
    const fail = (message: string) => {
      failed(new Error(message));
      this.#fail(message);
    };
    worker.onmessage = (event: MessageEvent<SessionReport>) => {
      const report = event.data;
      if (report.type === "ready") ready();
      else if (report.type === "stopped") stopped();
      else if (report.type === "problem") this.#problem(`${thread.name}: ${report.message}`);
      else fail(`session for ${thread.name}: ${report.message}`);
    };
    worker.onerror = (event) => fail(`session thread for ${thread.name} failed: ${event.message}`);
    const start: SessionCommand = {
      type: "start",
      link: this.#options.link,
      counters: counters.buffer,
      port: channel.port2,
      record: this.#options.pcap !== undefined,
      resend: this.#options.resend ?? true,
      rate: this.#options.rate === undefined ? DEFAULT_RATE : this.#options.rate,
      linkClock: this.#linkClock
        ? { buffer: this.#linkClock.buffer, bitsPerSecond: this.#linkClock.bitsPerSecond }
        : undefined,
    };
    worker.postMessage(start, [channel.port2]);
    return thread;
  }

  #sledFinished(mac: Mac) {
    const sled = this.#sleds.get(macKey(mac));
    const session = sled?.session;
    if (!sled || !session) return;
    sled.session = undefined;
    this.#record.forget(mac);
    void this.#stopWorker(session.worker, session.stopped);
    this.#finished++;
    this.#emit({ type: "finished", progress: this.#progressOf(sled, session, Date.now()), boots: this.#finished });
    if (this.#options.boots !== undefined && this.#finished >= this.#options.boots) this.#resolveDone();
  }

  #endQuietSessions(now: number) {
    for (const [key, noted] of this.#noted) if (now - noted > CONFIRM_WITHIN_MS) this.#noted.delete(key);
    for (const [key, sled] of this.#sleds) {
      const session = sled.session;
      if (!session) {
        // A flood of HELLOs from made-up MACs must not leave a record each behind.
        if (!sled.answering && now - sled.heardAt > SESSION_QUIET_MS) this.#sleds.delete(key);
        continue;
      }
      const heardAt = Math.max(session.heardAt, session.counters.get("lastReadAt"));
      if (now - heardAt < SESSION_QUIET_MS) continue;
      sled.session = undefined;
      // Parked: the dispatcher asks about its next READ, which its record answers (#unknownRead).
      this.#command({ type: "end", sled: sled.mac });
      void this.#stopWorker(session.worker, session.stopped);
      const delivered = session.counters.get("deliveredBytes");
      const seconds = Math.round(SESSION_QUIET_MS / 1000);
      // With admission a session starts only for a sled that READ its offer: it took it.
      if (this.#admission || session.counters.get("reads") > 0) {
        this.#emit({
          type: "notice",
          message:
            `${sled.name} has been quiet for ${seconds} s, ${delivered} of ${session.image.header.imageSize} bytes ` +
            `of ${session.image.name} into its session: its thread is released; its offer stands and its next READ is served`,
        });
      } else {
        this.#record.forget(sled.mac);
        this.#emit({
          type: "notice",
          message: `${sled.name} did not take the offer of ${session.image.name} and went quiet`,
        });
      }
    }
  }

  /** With a boot count, sleds beyond it are not offered anything: the server would exit during their transfer. */
  #atCapacity(): boolean {
    const boots = this.#options.boots;
    if (boots === undefined) return false;
    let transferring = 0;
    for (const sled of this.#sleds.values()) if (sled.session && sled.session.counters.get("reads") > 0) transferring++;
    return this.#finished + transferring >= boots;
  }

  #progressOf(sled: Sled, session: SessionThread, now: number): SledProgress {
    const counters = session.counters;
    const firstReadAt = counters.get("firstReadAt");
    const seconds = firstReadAt > 0 ? Math.max(now - firstReadAt, 1) / 1000 : 0;
    const deliveredBytes = counters.get("deliveredBytes");
    return {
      sled: sled.name,
      image: session.image,
      deliveredBytes,
      sentBytes: counters.get("sentBytes"),
      reasked: counters.get("reasked"),
      seconds,
      bytesPerSecond: seconds > 0 ? deliveredBytes / seconds : 0,
      sendFailures: counters.get("sendFailures"),
      counters: counters.snapshot(),
      dataFrames: counters.get("dataFrames"),
      resentFrames: counters.get("resentFrames"),
      pacedSeconds: counters.get("pacedMs") / 1000,
      roundTripMs: counters.get("roundTripMs"),
      copyChoice: COPY_CHOICES[counters.get("copyChoice")] ?? "learning",
      consoleLineMs: counters.get("consoleLineMs"),
      copiesConsoleSeconds: (counters.get("resentFrames") * counters.get("consoleLineMs")) / 1000,
    };
  }

  async #stopWorker(worker: Worker, stopped: Promise<void>, graceMs = STOP_GRACE_MS): Promise<void> {
    worker.postMessage({ type: "stop" } satisfies SessionCommand & DispatcherCommand);
    await settledWithin(stopped, graceMs);
    worker.terminate();
  }
}
