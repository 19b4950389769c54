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
 * A zstd image is read through lib/netboot/block-cache.ts, which decompresses the
 * block an offset falls in and checks its checksum. A block that fails its
 * check is never sent: the sled gets a RESET instead (it gives up this boot
 * rather than wait for bytes that will not come), the reason goes to
 * `onProblem` once, and every later READ of the same offer draws a RESET too.
 *
 * A plain or zlib image is served while it is still being filled
 * (lib/netboot/raw-image.ts). A READ asking past what is filled is held, not
 * answered with bytes that are not there yet, and answered as soon as they
 * are; the wait is asynchronous, so it holds up only this sled, and a later
 * READ (the sled re-asks after a second) replaces the held one. Should the
 * image fail its check once filled, the sled is sent a RESET at once.
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
 * Progress lives in a few numbers in a SharedArrayBuffer (SharedCounters):
 * the session thread writes them as it answers and the main thread reads them
 * when it redraws, so reporting costs no message per frame.
 *
 * Re-asked offsets (asked more than once, because a DATA was lost) are told
 * from new ones with a direct-mapped table of the offsets last asked, indexed
 * by 1024-byte chunk number modulo 256. A sled keeps at most 128 offsets in
 * flight, all in one 128 KiB batch, and batches follow each other, so a table
 * of two batches recognises every repeat a sled makes, in the same small
 * memory whatever the image size.
 */

import { type Pointer, ptr } from "bun:ffi";
import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import {
  CHUNK_SIZE,
  DATA_IMAGE_OFFSET,
  DataFrameWriter,
  encodeFrame,
  type Mac,
  READ_SLOTS,
  REASK_AFTER_MS,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import { type CountersOf, countersOf } from "@ramdisk-tools/threads/shared-counters.ts";
import { type ZstdImageMemory, ZstdImageReader } from "./block-cache.ts";
import { ConsoleCost } from "./console-cost.ts";
import { COPY_CHOICES, type CopyChoice, copiesPay, copyOrder, MIN_COPY_GAP_MS } from "./copy-policy.ts";
import { type RawImageHandle, RawImageReadError, RawImageReader } from "./raw-image.ts";
import { ResendTimeout } from "./resend-timer.ts";
import type { ServedBytes } from "./served-image.ts";

/** The status line the sled prints once a second is about 48 bytes, a drop line about 45 (netboot.md, "The console"). */
const STATUS_PER_DROP_LINE = 48 / 45;
/** Before a console's cost is measured, a probe's copies may hold the sled up this long each (9600 baud). */
const SLOWEST_LINE_MS = 50;
/** Lines' time a session waits beyond the re-send timeout before copies (see #armResend). */
const SPURIOUS_LINES = 2;
/** Timers of the event loop do not fire sooner than this: faster-paced copies go out several per timer. */
const TIMER_MS = 1;

/** Slots in the re-ask table: two batches of 128 chunks. */
const ASKED_TABLE_SIZE = 256;

/**
 * A session's progress, shared with the main thread:
 * - imageSize: bytes of the image being served;
 * - deliveredBytes: image bytes sent for offsets asked the first time (the image delivered);
 * - sentBytes: all image bytes sent, repeats included;
 * - reasked: offsets asked more than once;
 * - reads: READ frames answered;
 * - firstReadAt, lastReadAt: epoch milliseconds of the first and the latest READ, 0 before any;
 * - sendFailures: batches of DATA frames the link refused to send (the sled asks again);
 * - dataFrames: DATA frames sent, re-sent copies included;
 * - resentFrames: copies of DATA frames the sled did not ask for, probes included (a subset of dataFrames);
 * - resends: READs that came late (the re-send timeout fired), whether or not copies were sent;
 * - pacedMs: milliseconds spent waiting for the pacing clock (lib/netboot/pacing.ts);
 * - roundTripMs: the smoothed READ round trip, 0 before the first sample;
 * - probeFrames: copies sent as probes of the sled's console (lib/netboot/console-cost.ts);
 * - consoleLineMs, consoleUpperMs: what a console line costs the sled, measured and at most; 0 before a probe;
 * - copyChoice: whether copies are sent to this sled, as an index of COPY_CHOICES (lib/netboot/copy-policy.ts);
 * - resets: RESETs this session sent (a block or the image failed its check; each reported with why through onProblem).
 */
export const SESSION_COUNTERS = [
  "imageSize",
  "deliveredBytes",
  "sentBytes",
  "reasked",
  "reads",
  "firstReadAt",
  "lastReadAt",
  "sendFailures",
  "dataFrames",
  "resentFrames",
  "resends",
  "pacedMs",
  "roundTripMs",
  "probeFrames",
  "consoleLineMs",
  "consoleUpperMs",
  "copyChoice",
  "resets",
] as const;
export type SessionCounters = CountersOf<typeof SESSION_COUNTERS>;
/** Counters for one session, over a new buffer or the main thread's. */
export const sessionCounters = countersOf(SESSION_COUNTERS);

/** Where a session takes the bytes that answer an offset from. */
export interface ImageSource {
  /** Bytes of the raw image. */
  readonly size: number;
  /** The DATA frame answering `offset`, by `writer` (DataFrameWriter.answer's bytes); throws ImageFormatError for a damaged block. */
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array;
  /** Done with the bytes of the last answer (a shared cache may reuse them). */
  release(): void;
  /**
   * Called for every READ before its answers: null when every offset of `read` can be answered now (a file-backed
   * image has read their bytes); else resolves when the READ should be tried again (the image is being filled, or
   * its file could not be read).
   */
  until(read: ReadRequest): Promise<void> | null;
  /** The session serves something else: let go of what this source holds (a file's descriptor). */
  close?(): void;
  /**
   * For an image still being filled: resolves when the fill ends, true when it failed its check after serving
   * began (lib/netboot/raw-image.ts); the sled is then RESET.
   */
  readonly failed: Promise<boolean> | null;
}

/** A raw image whole in memory as an ImageSource (tests serve one). */
class RawImage implements ImageSource {
  readonly failed = null;
  constructor(readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.length;
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    return writer.answer(offset, this.bytes);
  }
  release(): void {}
  until(): null {
    return null;
  }
}

/** A DATA frame of a whole chunk: headers, offset and 1024 image bytes (1058 bytes). */
const FRAME_BYTES = DATA_IMAGE_OFFSET + CHUNK_SIZE;
/** A READ held because the image's file could not be read is tried again after this long. */
const UNREADABLE_RETRY_MS = 1000;
const NO_BYTES = new Uint8Array(0);

/**
 * A raw image read from its file (lib/netboot/raw-image.ts) as an ImageSource,
 * whole or still being filled.
 *
 * Its bytes are never copied in JavaScript. The source keeps one DATA frame
 * per slot in one buffer, and until() reads the chunks a READ asks for
 * straight into those frames, behind their headers: one readv(2) for each
 * run of consecutive offsets, so one system call for a READ of a new batch.
 * answer() then only writes each frame's headers, length and offset around
 * its bytes (DataFrameWriter.wrap), and the link sends the frames where they
 * are. So answer() must follow until() for the same READ, offset by offset
 * in requestedOffsets order, as SledSession does; the frames stay as they
 * are, for re-sending, until the next until().
 *
 * The file can change under the server. Replaced by a rename, or removed, it
 * stays readable here (the session keeps its descriptor) and nothing changes.
 * Shorter than the image (truncated in place, or being rewritten), its bytes
 * are gone for good: no answer can be right, so the READ draws the RESET of
 * an image that failed (answer throws ImageFormatError) and the sled starts
 * over with the file as it is then. Unreadable (an I/O error): the READ is
 * held and tried again after UNREADABLE_RETRY_MS, said once through
 * `onProblem`, as the error may pass and a RESET reboots the sled.
 */
class FileImage implements ImageSource {
  readonly failed: Promise<boolean> | null;
  readonly size: number;
  readonly #end: bigint;
  readonly #reader: RawImageReader | null;
  readonly #onProblem: (message: string) => void;
  /** One whole DATA frame per slot, and the image bytes of each (views made once). */
  readonly #frames: Uint8Array[] = [];
  readonly #chunks: Uint8Array[] = [];
  /**
   * A struct iovec per slot, at its image bytes, for preadv, made once. Both it and the frames are views of
   * ArrayBuffers of their own, whose memory the garbage collector never moves.
   */
  readonly #vectors = new BigUint64Array(new ArrayBuffer(READ_SLOTS * 16));
  readonly #vectorsAt: number;
  /**
   * The offsets until() read, in answer order (requestedOffsets'), as Numbers: -1 for one at or past the end of
   * the image; how many, and the next to answer.
   */
  readonly #starts = new Float64Array(READ_SLOTS + 1);
  #count = 0;
  #next = 0;
  /** Why the file cannot serve this boot any more (it was truncated): every answer throws it. */
  #gone: string | null = null;
  #saidUnreadable = false;

  constructor(image: RawImageHandle, onProblem: (message: string) => void = () => {}) {
    this.#reader = new RawImageReader(image);
    this.size = image.size;
    this.#end = BigInt(image.size);
    this.failed = this.#reader.failed;
    this.#onProblem = onProblem;
    const slab = new Uint8Array(new ArrayBuffer(READ_SLOTS * FRAME_BYTES));
    const slabAt = ptr(slab);
    for (let slot = 0; slot < READ_SLOTS; slot++) {
      const frame = slab.subarray(slot * FRAME_BYTES, (slot + 1) * FRAME_BYTES);
      this.#frames.push(frame);
      this.#chunks.push(frame.subarray(DATA_IMAGE_OFFSET));
      this.#vectors[slot * 2] = BigInt(slabAt + slot * FRAME_BYTES + DATA_IMAGE_OFFSET);
      this.#vectors[slot * 2 + 1] = BigInt(CHUNK_SIZE);
    }
    this.#vectorsAt = ptr(this.#vectors);
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    if (this.#reader?.broken) throw new ImageFormatError("the image failed its check after serving began");
    if (this.#gone !== null) throw new ImageFormatError(this.#gone);
    const slot = this.#next++;
    const at = this.#starts[slot]!;
    if (at < 0) {
      if (slot < this.#count && offset >= this.#end) return writer.frame(offset, NO_BYTES);
    } else if (slot < this.#count && Number(offset) === at) {
      return writer.wrap(at, this.#frames[slot]!, Math.min(CHUNK_SIZE, this.size - at));
    }
    throw new Error(`offset ${offset} was not read for this READ`);
  }
  release(): void {}
  /** Read the chunks `read` asks for into the frames; hold it while they are not filled, or the file cannot be read. */
  until(read: ReadRequest): Promise<void> | null {
    const reader = this.#reader;
    if (!reader || this.#gone !== null || reader.broken) return null;
    const count = this.#offsetsOf(read);
    this.#count = count;
    if (reader.filling) {
      // Filled in order from the start, so the furthest offset asked decides (an empty slot's 0 never does).
      let furthest = 0;
      for (let slot = 0; slot < count; slot++) furthest = Math.max(furthest, this.#starts[slot]!);
      const filled = reader.until(BigInt(furthest));
      if (filled) return filled;
    }
    this.#next = 0;
    try {
      this.#read(reader, count);
      return null;
    } catch (error) {
      if (!(error instanceof RawImageReadError)) throw error;
      if (error.lasting) {
        this.#gone = `${error.message}; no answer can be right, the sled starts over`;
        return null;
      }
      if (!this.#saidUnreadable) this.#onProblem(`holding the sled's READs: ${error.message}`);
      this.#saidUnreadable = true;
      return Bun.sleep(UNREADABLE_RETRY_MS);
    }
  }
  /**
   * requestedOffsets(read) into #starts as Numbers, read as 32-bit halves (no BigInt per slot): every non-zero
   * slot in order, after a 0 when fewer than `count` are non-zero; -1 for an offset at or past the end. Returns how
   * many.
   */
  #offsetsOf(read: ReadRequest): number {
    const slots = read.slots;
    const words = new Uint32Array(slots.buffer, slots.byteOffset, slots.length * 2);
    const starts = this.#starts;
    const size = this.size;
    let count = 0;
    for (let slot = 0; slot < slots.length; slot++) {
      const low = words[slot * 2]!;
      const high = words[slot * 2 + 1]!;
      if (low === 0 && high === 0) continue;
      // Past 2^53 the Number is inexact, but far past any image all the same.
      const at = high * 0x1_0000_0000 + low;
      starts[++count] = at < size ? at : -1;
    }
    if (BigInt(count) < read.count) starts[0] = 0;
    else starts.copyWithin(0, 1, count + 1);
    return BigInt(count) < read.count ? count + 1 : count;
  }
  close(): void {
    this.#reader?.close();
  }

  /** One preadv for each run of consecutive offsets inside the image, into the frames of their slots. */
  #read(reader: RawImageReader, count: number): void {
    const starts = this.#starts;
    const size = this.size;
    for (let first = 0; first < count; ) {
      const start = starts[first]!;
      if (start < 0) {
        first++;
        continue;
      }
      let end = first + 1;
      while (end < count && starts[end] === start + (end - first) * CHUNK_SIZE) end++;
      const length = Math.min((end - first) * CHUNK_SIZE, size - start);
      // Images are whole 128 KiB batches, so only a damaged one ends inside a chunk.
      const whole = length === (end - first) * CHUNK_SIZE;
      if (!whole || !reader.preadv((this.#vectorsAt + first * 16) as Pointer, end - first, start, length)) {
        const chunks = this.#chunks.slice(first, end);
        if (!whole) chunks[chunks.length - 1] = chunks.at(-1)!.subarray(0, length % CHUNK_SIZE);
        reader.readv(chunks, start, length);
      }
      first = end;
    }
  }
}

/**
 * A zstd image in shared memory as an ImageSource. It has blocks read ahead
 * off the READ path: whenever its sled enters a block, the image's
 * read-ahead thread is told to decompress the next one (lib/netboot/block-cache.ts,
 * hint), and before the first READ, the first.
 */
class ZstdImage implements ImageSource {
  readonly #reader: ZstdImageReader;
  /** Where the block last hinted at starts. */
  #ahead = 0;
  #furthest = 0;
  readonly #end: bigint;
  constructor(memory: ZstdImageMemory) {
    this.#reader = new ZstdImageReader(memory);
    this.#end = BigInt(this.#reader.size);
    this.#reader.hint(0);
  }
  get size(): number {
    return this.#reader.size;
  }
  answer(writer: DataFrameWriter, offset: bigint): Uint8Array {
    if (offset < this.#end && Number(offset) > this.#furthest) this.#furthest = Number(offset);
    return writer.frame(offset, this.#reader.chunk(offset));
  }
  release(): void {
    this.#reader.release();
    const ahead = this.#reader.nextBlockOffset(this.#furthest);
    if (ahead === this.#ahead) return;
    this.#ahead = ahead;
    this.#reader.hint(ahead);
  }
  until(): null {
    return null;
  }
  readonly failed = null;
}

/**
 * The source a session reads an image's bytes from: the raw pool's file
 * (answered as far as it is filled), or a zstd payload through the shared
 * block cache. `onProblem` hears, once, that a raw image's file cannot be
 * read and its sled's READs are held.
 *
 * @example session.serve(imageSource(message.bytes, report));
 */
export function imageSource(
  bytes: ServedBytes | Uint8Array,
  onProblem: (message: string) => void = () => {},
): ImageSource {
  if (bytes instanceof Uint8Array) return new RawImage(bytes);
  if (bytes.kind === "raw") return new FileImage(bytes, onProblem);
  return new ZstdImage(bytes);
}

/**
 * Tells offsets asked before from new ones, for a sled's sliding window of
 * requests, in fixed memory (see the module comment).
 */
class AskedOffsets {
  readonly #table = new Float64Array(ASKED_TABLE_SIZE).fill(-1);

  /** Record `offset`; true when it was asked before. */
  repeat(offset: bigint): boolean {
    // Offsets past 2^53 lose precision here; they are answered exactly all
    // the same, and only the count of repeats of such nonsense is approximate.
    const at = Number(offset);
    const slot = Math.floor(at / CHUNK_SIZE) % ASKED_TABLE_SIZE;
    if (this.#table[slot] === at) return true;
    this.#table[slot] = at;
    return false;
  }

  clear(): void {
    this.#table.fill(-1);
  }
}

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
  #image: ImageSource = new RawImage(new Uint8Array(0));
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
    this.#image = image instanceof Uint8Array ? new RawImage(image) : image;
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

/** What the main thread tells a session thread (lib/netboot/session-thread.ts). */
export type SessionCommand =
  | {
      /** Open the link and say "ready"; the sled comes later ("sled"), so a thread can be started ahead. */
      type: "start";
      link: string;
      /** SESSION_COUNTERS, shared with the main thread. */
      counters: SharedArrayBuffer;
      /** The session's end of its channel to the dispatcher (SessionMessage). */
      port: MessagePort;
      /** Post a copy of each batch sent back on `port` (lib/netboot/recording.ts SentFrames), for `bootserver --pcap`. */
      record?: boolean;
      /** Fast re-send (`bootserver --no-resend` turns it off). */
      resend: boolean;
      /** Pace this sled's DATA at this many bits per second; null: unpaced (lib/netboot/pacing.ts). */
      rate: number | null;
      /** The server-wide pacing clock (lib/netboot/pacing.ts LinkClock), with its rate, when `--link-rate` caps the total. */
      linkClock?: { buffer: SharedArrayBuffer; bitsPerSecond: number };
    }
  /** Serve this sled from now on: what the dispatcher sends on the channel goes to its session. */
  | { type: "sled"; sled: Mac }
  | { type: "stop" };

/**
 * What the dispatcher sends a session thread, in order on one channel: the
 * image it is about to offer the sled, then the sled's READs. Serving the
 * image before the OFFER goes out means no READ can reach the session first.
 */
export type SessionMessage =
  | { type: "serve"; bytes: ServedBytes }
  /** `receivedAt`: when the dispatcher captured it (lib/threads/clock.ts nowMs). */
  | { type: "read"; count: bigint; slots: BigUint64Array; receivedAt: number }
  /** The sled finished or was reset: stop re-sending. */
  | { type: "end" };

/**
 * What a session thread tells the main thread: "error" when the thread cannot
 * work at all, "problem" when one sled's boot cannot go on (the server can).
 */
export type SessionReport =
  | { type: "ready" }
  | { type: "stopped" }
  | { type: "error"; message: string }
  | { type: "problem"; message: string };
