/**
 * One sled's session on the boot server: answering its READs from the image
 * it was offered, and counting its progress where the main thread can see it.
 *
 * A READ names up to 128 offsets in its slots (lib/protocol/frames.ts,
 * requestedOffsets). Each gets exactly one DATA: the 1024 image bytes at that
 * offset, fewer at the end of the image, and none at or past the end, which
 * is the only answer that frees such a slot in the sled (netboot.md, "End of
 * image"). Offsets are whatever the frame says, so the bounds are checked as
 * 64-bit integers before anything is read: an offset near 2^64 or one that is
 * not a multiple of 1024 never reads outside the image.
 *
 * The bytes come from an ImageSource (lib/netboot/image-source.ts). A block
 * of a zstd image that fails its check is never sent: the sled gets a RESET
 * instead (it gives up this boot rather than wait for bytes that will not
 * come), the reason goes to `onProblem` once, and every later READ of the
 * same offer draws a RESET too. A READ asking past what a plain or zlib image
 * being filled holds is held, not answered with bytes that are not there yet,
 * and answered as soon as they are; the wait is asynchronous, so it holds up
 * only this sled, and a later READ (the sled re-asks after a second) replaces
 * the held one. Should the image fail its check once filled, the sled is sent
 * a RESET at once.
 *
 * Fast re-send: after answering a READ the session expects the sled's next
 * READ within about one round trip (lib/netboot/resend-timer.ts), plus the
 * console time the sled may be spending (a status line, the copies it was
 * just sent). When the READ is later than that, some DATA was probably lost,
 * and copies of the answer can spare the sled its one-second re-ask. But the
 * sled prints a console line for every copy of a frame it already has and
 * waits for it, so copies are sent only while they pay for that sled, paced
 * no faster than it prints, most likely missing first, and only until its
 * READ comes (lib/netboot/copy-policy.ts). What a line costs the sled is
 * learnt from the sled itself with small probes: a few copies placed inside
 * an answer, whose delay shows in its next READ (lib/netboot/console-cost.ts).
 *
 * Progress is counted in shared memory (lib/netboot/session-counters.ts),
 * and offsets asked again are told from new ones by
 * lib/netboot/asked-offsets.ts.
 */

import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import {
  CHUNK_SIZE,
  DataFrameWriter,
  encodeFrame,
  type Mac,
  READ_SLOTS,
  REASK_AFTER_MS,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import { AskedOffsets } from "./asked-offsets.ts";
import { ConsoleCost } from "./console-cost.ts";
import { COPY_CHOICES, type CopyChoice, copiesPay, copyOrder, MIN_COPY_GAP_MS } from "./copy-policy.ts";
import { type ImageSource, imageSource } from "./image-source.ts";
import { ResendTimeout } from "./resend-timer.ts";
import { type SessionCounters, sessionCounters } from "./session-counters.ts";

/** The status line the sled prints once a second is about 48 bytes, a drop line about 45 (netboot.md, "The console"). */
const STATUS_PER_DROP_LINE = 48 / 45;
/** Before a console's cost is measured, a probe's copies may hold the sled up this long each (9600 baud). */
const SLOWEST_LINE_MS = 50;
/** Lines' time a session waits beyond the re-send timeout before copies (see #armResend). */
const SPURIOUS_LINES = 2;
/** Timers of the event loop do not fire sooner than this: faster-paced copies go out several per timer. */
const TIMER_MS = 1;

/** The clock and timer a session's fast re-send runs on; tests pass their own. */
export interface ResendClock {
  /** Milliseconds on the clock the dispatcher stamps READs with (lib/threads/clock.ts nowMs). */
  now(): number;
  /** Call `action` after `ms`; the function returned cancels it. */
  after(ms: number, action: () => void): () => void;
}

/** The event loop's timers and the clock threads share. */
export const EVENT_LOOP_CLOCK: ResendClock = {
  now: nowMs,
  after: (ms, action) => {
    const timer = setTimeout(action, ms);
    return () => clearTimeout(timer);
  },
};

/** How a session sends. */
export interface SledSessionOptions {
  /** Send copies of the last READ's DATA when the next READ is late and copies pay (default true). */
  resend?: boolean;
  clock?: ResendClock;
  /** Told, once per offer, why the sled was sent a RESET. */
  onProblem?: (message: string) => void;
}

/**
 * Answers one sled's READs with DATA frames from the image last offered to
 * it, and sends them again when the next READ is late (see the module
 * comment). The answers to one READ go out together through `send` (a link's
 * injectBatch, paced by lib/netboot/pacing.ts), built in frame buffers that are made
 * once per session and reused, one per slot.
 *
 * @example
 * const session = new SledSession(sledMac, link.mac, (frames) => link.injectBatch(frames), counters);
 * session.serve(imageSource(image.bytes));
 * session.answer(read);
 */
export class SledSession {
  readonly #writers: DataFrameWriter[];
  readonly #frames: Uint8Array[] = [];
  readonly #asked = new AskedOffsets();
  readonly #reset: Uint8Array[];
  readonly #resend: boolean;
  readonly #clock: ResendClock;
  readonly #onProblem: (message: string) => void;
  #image: ImageSource = imageSource(new Uint8Array(0));
  /** The image could not be read: every READ of this offer draws a RESET. */
  #broken = false;
  /** The latest READ held until the image is filled up to it. */
  #held: ReadRequest | undefined;
  #timeout = new ResendTimeout();
  #console = new ConsoleCost();
  /**
   * The sled has shown loss or lateness beyond jitter: it asked for a frame
   * again, or its READ came later than a round trip after copies began.
   * Probes of its console go on until its cost is known.
   */
  #lateSeen = false;
  /** Per slot of a batch, how often the sled asked for it again (lib/netboot/copy-policy.ts copyOrder). */
  readonly #losses = new Float64Array(READ_SLOTS);
  /** The slot of each frame of the last answer. */
  readonly #slots: number[] = [];
  /** The frames of the last answer as sent, probe copies included. */
  readonly #sending: Uint8Array[] = [];
  /** When the last DATA of the last answer first left, and when the READ it answers was captured (clock ms). */
  #sentAt: number | null = null;
  #askedAt = 0;
  /** Probe copies the last answer carried. */
  #probeCopies = 0;
  /** Copies of the answer before it may still hold the sled up: its round trip says nothing plain. */
  #afterCopies = false;
  /** The last answer's READ came late; and how many answers in a row have (lib/netboot/resend-timer.ts backoff). */
  #wasLate = false;
  #lateRun = 0;
  /** When the last answer was first and last copied, if it was. */
  #firstCopyAt: number | null = null;
  #lastCopyAt = 0;
  #cancelResend: (() => void) | null = null;

  constructor(
    sled: Mac,
    server: Mac,
    private readonly send: (frames: readonly Uint8Array[]) => void,
    readonly counters: SessionCounters = sessionCounters(),
    options: SledSessionOptions = {},
  ) {
    this.#writers = Array.from({ length: READ_SLOTS }, () => new DataFrameWriter(sled, server));
    this.#reset = [encodeFrame(sled, server, { type: "reset" })];
    this.#resend = options.resend ?? true;
    this.#clock = options.clock ?? EVENT_LOOP_CLOCK;
    this.#onProblem = options.onProblem ?? (() => {});
  }

  /** Serve `image` from now on (the sled was just offered it); counters start over. */
  serve(image: ImageSource | Uint8Array): void {
    this.#image.release();
    this.#image = image instanceof Uint8Array ? imageSource(image) : image;
    this.#broken = false;
    this.#held = undefined;
    const served = this.#image;
    served.failed?.then((failed) => {
      if (!failed || this.#image !== served || this.#broken) return;
      this.#broken = true;
      this.#onProblem("sent a RESET: the image it was being served failed its check after serving began");
      this.#sendReset();
    });
    this.#asked.clear();
    this.end();
    this.#timeout = new ResendTimeout();
    this.#console = new ConsoleCost();
    this.#lateSeen = false;
    this.#afterCopies = false;
    this.#lateRun = 0;
    this.#losses.fill(0);
    this.counters.clear();
    this.counters.set("imageSize", this.#image.size);
    this.#choose(this.#resend ? "learning" : "disabled");
  }

  /** The sled finished or was reset: send nothing more until the next READ. */
  end(): void {
    this.#cancelResend?.();
    this.#cancelResend = null;
    this.#sentAt = null;
    this.#firstCopyAt = null;
    this.#probeCopies = 0;
    this.#wasLate = false;
  }

  /**
   * Send one DATA for every offset `read` asks for, in slot order. `now` is
   * for the progress counters (epoch ms), `receivedAt` when the READ was
   * captured (the clock's ms). A READ past what a loading image holds waits
   * (#hold); its answer then takes no round-trip sample.
   */
  answer(read: ReadRequest, now = Date.now(), receivedAt = this.#clock.now()): void {
    const sentAt = this.#sentAt;
    const firstCopyAt = this.#firstCopyAt;
    const lastCopyAt = this.#lastCopyAt;
    const probeCopies = this.#probeCopies;
    const afterCopies = this.#afterCopies;
    if (sentAt !== null && !this.#wasLate) this.#lateRun = 0;
    this.end();
    if (this.#hold(read, now)) return;
    const counters = this.counters;
    if (counters.get("reads") === 0) counters.set("firstReadAt", now);
    counters.set("lastReadAt", now);
    counters.add("reads");
    const frames = this.#frames;
    frames.length = 0;
    this.#slots.length = 0;
    let sentBytes = 0;
    let deliveredBytes = 0;
    let reasked = 0;
    if (!this.#broken) {
      try {
        // requestedOffsets gives at most READ_SLOTS offsets: one per slot, 0 only in place of an empty one.
        for (const offset of requestedOffsets(read)) {
          const writer = this.#writers[frames.length]!;
          frames.push(this.#image.answer(writer, offset));
          const slot = Number((offset / BigInt(CHUNK_SIZE)) % BigInt(READ_SLOTS));
          this.#slots.push(slot);
          sentBytes += writer.imageBytes;
          if (this.#asked.repeat(offset)) {
            reasked++;
            this.#losses[slot]!++;
          } else deliveredBytes += writer.imageBytes;
        }
      } catch (error) {
        if (!(error instanceof ImageFormatError)) throw error;
        this.#broken = true;
        this.#onProblem(`sent a RESET instead of bytes that failed their check: ${error.message}`);
      } finally {
        // The frames hold copies, so the cached block can go before they are sent.
        this.#image.release();
      }
    }
    if (this.#broken) {
      this.#sendReset();
      return;
    }
    // A READ of a new batch (nothing asked again) measures the round trip
    // from the answer before it (lib/netboot/resend-timer.ts); a re-ask would
    // mislead it. An answer that carried a probe measures the console
    // instead (lib/netboot/console-cost.ts), and one that followed copies
    // measures the copies the sled was still printing, so neither is plain.
    if (reasked > 0) this.#lateSeen = true;
    if (firstCopyAt !== null && receivedAt - firstCopyAt > (this.#console.baselineMs ?? 0) + 2 * this.#console.jitterMs)
      this.#lateSeen = true;
    if (sentAt !== null && reasked === 0 && frames.length > 0) {
      const roundTrip = receivedAt - sentAt;
      if (firstCopyAt !== null)
        this.#timeout.afterResend(
          roundTrip,
          receivedAt - firstCopyAt,
          receivedAt - lastCopyAt,
          this.#console.fastestMs,
        );
      else if (probeCopies > 0) this.#console.probe(roundTrip, probeCopies);
      else {
        this.#timeout.sample(roundTrip);
        if (!afterCopies) this.#console.plain(roundTrip);
      }
      counters.set("roundTripMs", this.#timeout.smoothedMs ?? 0);
      counters.set("consoleLineMs", this.#console.perLineMs ?? 0);
      counters.set("consoleUpperMs", this.#console.upperMs ?? 0);
    }
    this.#afterCopies = firstCopyAt !== null;
    // Never two probes in a row: the answers between them give the plain round trips they are measured against.
    const probing = this.#resend && reasked === 0 && frames.length === READ_SLOTS && probeCopies === 0;
    const probe = probing ? this.#console.probeSize(this.#lateSeen) : 0;
    if (!this.#sendData(this.#withProbe(probe))) return;
    counters.add("sentBytes", sentBytes);
    counters.add("deliveredBytes", deliveredBytes);
    counters.add("reasked", reasked);
    if (probe > 0) {
      counters.add("resentFrames", probe);
      counters.add("probeFrames", probe);
    }
    this.#sentAt = this.#clock.now();
    this.#askedAt = receivedAt;
    this.#probeCopies = probe;
    this.#armResend();
  }

  /**
   * The frames of the answer, with `copies` copies of its first frames placed
   * before its last one: the sled prints a line for each before it can take
   * the last frame, so its next READ is later by their console time.
   */
  #withProbe(copies: number): readonly Uint8Array[] {
    const frames = this.#frames;
    if (copies === 0) return frames;
    const sending = this.#sending;
    sending.length = 0;
    for (let i = 0; i < frames.length - 1; i++) sending.push(frames[i]!);
    for (let i = 0; i < copies; i++) sending.push(frames[i]!);
    sending.push(frames.at(-1)!);
    return sending;
  }

  /**
   * Expect the next READ within the re-send timeout, plus what the sled may
   * be printing meanwhile: a status line, the probe it was just sent, the
   * copies of the answer before that it may still be printing.
   */
  #armResend(): void {
    if (!this.#resend || this.#frames.length === 0) return;
    const line = this.#console.perLineMs ?? 0;
    const upper = this.#console.upperMs;
    const backlog = this.#afterCopies ? line * (1 + this.#timeout.timeoutMs / this.#copyGap()) : 0;
    // A copy sent on a READ that was only late costs a line for nothing, so
    // the more a line costs, the surer of a loss the session waits to be:
    // SPURIOUS_LINES more lines' time, a few milliseconds at 115,200 baud
    // against the quarter of a second a lossy batch then takes.
    const wait =
      this.#timeout.timeoutAfter(this.#lateRun) +
      line * (STATUS_PER_DROP_LINE + SPURIOUS_LINES) +
      this.#probeCopies * (upper ?? SLOWEST_LINE_MS) +
      backlog;
    this.#cancelResend = this.#clock.after(wait, () => this.#late());
  }

  /** Copies are paced this far apart: no faster than the sled prints a line, at the most it may take. */
  #copyGap(): number {
    return Math.max(MIN_COPY_GAP_MS, this.#console.upperMs ?? SLOWEST_LINE_MS);
  }

  /** The next READ is late: send copies of the last answer if they pay (lib/netboot/copy-policy.ts). */
  #late(): void {
    this.#cancelResend = null;
    this.#wasLate = true;
    this.counters.add("resends");
    const upper = this.#console.upperMs;
    if (upper === null) return this.#choose("learning");
    if (!this.#copiesPay(this.#frames.length)) return this.#choose("off");
    this.#choose("on");
    // Copies paced by a slow console run on until whatever READ comes, so a
    // sled that is merely slow leaves no READ that is plainly no copy's
    // answer: the backoff is what outlasts it (lib/netboot/resend-timer.ts).
    // Copies of a fast console go out within a few timers, and a slow sled's
    // READ after them is a sample already.
    if (this.#copyGap() >= TIMER_MS) this.#lateRun++;
    this.#sendCopies(copyOrder(this.#slots, this.#losses), 0, this.#clock.now());
  }

  /** Whether `candidates` more copies are expected to save more wait than they cost the sled's console. */
  #copiesPay(candidates: number): boolean {
    const waitLeft = this.#askedAt + REASK_AFTER_MS - this.#clock.now();
    const roundTrip = this.#timeout.smoothedMs ?? 0;
    return copiesPay(candidates, this.#console.upperMs ?? SLOWEST_LINE_MS, this.#copyGap(), waitLeft, roundTrip);
  }

  /**
   * Send the copies due by now of `order` (indexes into the last answer)
   * from `sent` on, one every #copyGap() since `startedAt`, then wait for
   * the next; stop when the rest no longer pays. A READ ends it (end()).
   */
  #sendCopies(order: readonly number[], sent: number, startedAt: number): void {
    this.#cancelResend = null;
    if (!this.#copiesPay(order.length - sent)) return;
    const now = this.#clock.now();
    const gap = this.#copyGap();
    // One timer's worth at once (the sled's queue absorbs what a timer cannot
    // space out), but doubling from one copy per timer: a READ that was only
    // late, not lost, comes back before more than a few copies went out.
    const elapsed = now - startedAt;
    const paced = Math.floor((elapsed + TIMER_MS) / gap);
    const ramp = 2 ** Math.floor(elapsed / TIMER_MS);
    const due = Math.min(order.length, Math.max(sent + 1, Math.min(paced, ramp)));
    const copies = order.slice(sent, due).map((index) => this.#frames[index]!);
    this.#firstCopyAt ??= now;
    this.#lastCopyAt = now;
    if (this.#sendData(copies)) this.counters.add("resentFrames", copies.length);
    if (due < order.length)
      this.#cancelResend = this.#clock.after(Math.max(TIMER_MS, gap), () => this.#sendCopies(order, due, startedAt));
  }

  #choose(choice: CopyChoice): void {
    this.counters.set("copyChoice", COPY_CHOICES.indexOf(choice));
  }

  #sendData(frames: readonly Uint8Array[]): boolean {
    try {
      this.send(frames);
    } catch {
      // The link refused the batch (it waits for room when its queue is
      // full, so this is a link going away, not load); the sled asks again.
      this.counters.add("sendFailures");
      return false;
    }
    this.counters.add("dataFrames", frames.length);
    return true;
  }

  /**
   * Hold `read` when its offsets are not filled yet (netboot.md: a READ
   * answered wrongly stalls the boot) and answer it once they are; a later
   * READ replaces it, as it asks for every slot still open. Only this
   * session waits, and without blocking its thread.
   */
  #hold(read: ReadRequest, now: number): boolean {
    if (this.#broken) return false;
    const image = this.#image;
    const filled = image.until(read);
    if (!filled) return false;
    // Heard from: a sled whose READs are held is not a quiet one.
    this.counters.set("lastReadAt", now);
    const waiting = this.#held === undefined;
    this.#held = read;
    if (waiting) {
      void filled.then(() => {
        const held = this.#held;
        this.#held = undefined;
        if (held && this.#image === image) this.answer(held);
      });
    }
    return true;
  }

  #sendReset(): void {
    try {
      this.send(this.#reset);
      this.counters.add("resets");
    } catch {
      // The link is going away; the sled RESETs on its next READ, or the session ends.
      this.counters.add("sendFailures");
    }
  }
}
