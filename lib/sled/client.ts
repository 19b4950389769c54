/**
 * The sled kernel's netboot client, emulated: what a lab points at a boot
 * server to see whether a real sled would boot from it.
 *
 * `SledClient` is the client of one sled as a state machine, with no I/O of
 * its own: frames come in through `receive(frame, now)`, time passes through
 * `tick(now)`, and frames go out through the `send` function it was given.
 * It follows `docs/netboot.md` step by step:
 * - Discovery: a HELLO broadcast every 4 s until an OFFER passes the kernel's
 *   checks (offer-checks.ts); from then on only that server's frames count.
 * - Transfer: 128 slots. When all are empty it fills all of them with the
 *   next 128 offsets (one 128 KiB batch, filled in full even past the image
 *   size) and sends one READ; a DATA frame frees the slot holding its offset,
 *   anything else is dropped; a slot unanswered for over a second is asked
 *   again, in its own position of an otherwise zero READ.
 * - End: an empty DATA marks the end. Once the end is seen or the next offset
 *   reaches the image size, the sled waits for the batch to be answered,
 *   sends FINISHED once, and checks the SHA-256 of the ramdisk up to its next
 *   offset (a multiple of 128 KiB) against the checksum of its boot archive.
 * - A slow sled (`batchDelayMs`) waits that long after each batch is complete
 *   before it sends the next READ, as a sled busy with what it received would;
 *   DATA arriving meanwhile finds no open slot and is dropped.
 *
 * The ramdisk is never held whole: each batch is hashed once it is complete
 * (lib/sled/ramdisk-digest.ts says why that gives the kernel's digest).
 *
 * The console (`consoleBaud`): the thread that takes frames off the receive
 * queue also prints, a line for every DATA not in a slot and a status line a
 * second, and waits for each line; frames queue behind it meanwhile. That
 * clock lives in lib/sled/console.ts.
 *
 * The network between server and sled is modelled in lib/sled/faults.ts, and
 * many sleds run on one link with lib/sled/runner.ts.
 */

import { copyBytes } from "@ramdisk-tools/bytes/copy.ts";
import { equalBytes } from "@ramdisk-tools/bytes/equal.ts";
import { toHex } from "@ramdisk-tools/image/format.ts";
import {
  BATCH_BYTES,
  BROADCAST_MAC,
  CHUNK_SIZE,
  DataFrameReader,
  decodeFrame,
  encodeFrame,
  formatMac,
  MAC_SIZE,
  type Mac,
  type Offer,
  READ_SLOTS,
  REASK_AFTER_MS,
  SHA256_SIZE,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { SerialConsole } from "./console.ts";
import { offerRefusals } from "./offer-checks.ts";
import { RamdiskDigest } from "./ramdisk-digest.ts";

/** Discovery: the kernel broadcasts HELLO every 4 seconds until it accepts an OFFER. */
export const HELLO_INTERVAL_MS = 4000;
/** The emulator's greeting; the kernel's is a short ASCII text without NUL too. */
export const DEFAULT_GREETING = "sled netboot hello";

export type SledOutcome = "booted" | "checksum mismatch" | "reset" | "timeout";
export type SledPhase = "discovery" | "transfer" | "done";

/** How one sled is set up. */
export interface SledConfig {
  mac: Mac;
  /** The SHA-256 in the sled's boot archive (the 32 bytes of mkimage -O). */
  checksum: Uint8Array;
  /** Puts one whole frame on the wire; the frame is the caller's to keep. */
  send(frame: Uint8Array): void;
  /** Give up (outcome "timeout") when not booted this long after start(); default never. */
  timeoutMs?: number;
  /** Wait this long after each complete batch before asking for the next (a slow sled); default 0. */
  batchDelayMs?: number;
  /**
   * On RESET start discovery again, as a whole reboot of the sled would,
   * instead of ending with outcome "reset".
   */
  restartOnReset?: boolean;
  greeting?: string;
  /**
   * The serial console's speed in baud (10 bits a byte), 0 or absent for a
   * console that costs nothing. The kernel prints a line for every DATA not
   * in a slot and a status line once a second, from the thread that takes
   * frames off the queue, and waits for each line (lib/sled/console.ts).
   */
  consoleBaud?: number;
  /** Told about offers refused and accepted, resets and restarts, as one line each. */
  log?(line: string): void;
}

/** What happened to one sled, with its counters. */
export interface SledReport {
  mac: string;
  /** Null while the sled is still booting. */
  outcome: SledOutcome | null;
  /** Why it failed (empty when booted). */
  detail: string;
  hellos: number;
  offersRefused: number;
  /** Image bytes taken from accepted DATA frames. */
  bytes: number;
  /** DATA frames taken, each freeing a slot: 128 per batch. */
  dataAccepted: number;
  batches: number;
  /** Slots asked for again after a second without an answer. */
  reasked: number;
  /** Well-formed DATA frames not taken: from another MAC, or for no open slot (copies of frames already taken). */
  dataDropped: number;
  /** Console lines printed: one per DATA from its server not in a slot, one status line a second. */
  consoleLines: number;
  /** Milliseconds the sled spent waiting for its console to print them (0 with a free console). */
  consoleMs: number;
  /** Frames the decoder refused (DATA len outside 8..1476, OFFER len not 176, ...). */
  invalid: number;
  /** Well-formed frames of no use: OFFERs during transfer, frames of other servers, ... */
  ignored: number;
  resets: number;
  /** From accepting the OFFER to the first DATA taken. */
  firstDataMs: number | null;
  /** From start() to the outcome (or to now). */
  elapsedMs: number;
  /** Image bytes per second from accepting the OFFER to FINISHED, in MB (10^6 bytes). */
  megabytesPerSecond: number;
}

/**
 * One emulated sled's netboot client (see the module comment).
 *
 * @example
 * const sled = new SledClient({ mac, checksum, send: (frame) => link.inject(frame) });
 * sled.start(performance.now());
 * for (;;) { const frame = link.next(); const now = performance.now(); if (frame) sled.receive(frame, now); sled.tick(now); }
 */
export class SledClient {
  readonly mac: Mac;
  #phase: SledPhase = "discovery";
  #outcome: SledOutcome | null = null;
  #detail = "";
  readonly #config: SledConfig;
  readonly #hello: Uint8Array;
  readonly #checksum: Uint8Array;

  #startedAt = 0;
  #endedAt = 0;
  #nextHelloAt = 0;
  #lastRefusal = "";

  /** The accepted server and its image. */
  #server: Mac | null = null;
  #imageSize = 0;
  #acceptedAt = 0;
  #firstDataAt: number | null = null;

  /** The kernel's next offset: where the next batch starts, and at the end the image length. */
  #nextOffset = 0;
  #batchStart = 0;
  /** When a slow sled sends its next READ; null when no batch waits. */
  #nextBatchAt: number | null = null;
  #endSeen = false;
  /** Per slot: 1 while its offset awaits a DATA. */
  readonly #open = new Uint8Array(READ_SLOTS);
  readonly #askedAt = new Float64Array(READ_SLOTS);
  #outstanding = 0;
  /** No open slot was asked for before this time, so no re-ask is due before it plus a second. */
  #oldestAsk = 0;
  /** The READ slots being sent; reused for every READ. */
  readonly #readSlots = new BigUint64Array(READ_SLOTS);
  readonly #ramdisk = new RamdiskDigest();
  readonly #data = new DataFrameReader();

  readonly #console: SerialConsole;
  /** Takes a frame the console held back; false once the sled is done. */
  readonly #takeQueued = (frame: Uint8Array, at: number): boolean => {
    this.#take(frame, at);
    return this.#phase !== "done";
  };

  #hellos = 0;
  #offersRefused = 0;
  #bytes = 0;
  #dataAccepted = 0;
  #batches = 0;
  #reasked = 0;
  #dataDropped = 0;
  #invalid = 0;
  #ignored = 0;
  #resets = 0;

  constructor(config: SledConfig) {
    if (config.checksum.length !== SHA256_SIZE) {
      throw new Error(`a sled's checksum is ${SHA256_SIZE} bytes, not ${config.checksum.length}`);
    }
    this.mac = copyBytes(config.mac, 0, MAC_SIZE);
    this.#config = config;
    this.#console = new SerialConsole(config.consoleBaud ?? 0);
    this.#checksum = copyBytes(config.checksum);
    this.#hello = encodeFrame(BROADCAST_MAC, this.mac, {
      type: "hello",
      text: new TextEncoder().encode(config.greeting ?? DEFAULT_GREETING),
    });
  }

  get phase(): SledPhase {
    return this.#phase;
  }

  /** The outcome once the sled is done, else null. */
  get outcome(): SledOutcome | null {
    return this.#outcome;
  }

  /** When a slow sled will send the READ of its next batch (tick() at or after it does); null when none waits. */
  get nextBatchAt(): number | null {
    return this.#nextBatchAt;
  }

  /**
   * The earliest time tick() has work that cannot wait for the next poll: a
   * slow sled's next READ, or frames queued behind the console once it is
   * done printing; null when none.
   */
  get nextDueAt(): number | null {
    const due = Math.min(this.#console.queueDueAt, this.#nextBatchAt ?? Number.POSITIVE_INFINITY);
    return due === Number.POSITIVE_INFINITY ? null : due;
  }

  /** Power on: the first HELLO goes out now. */
  start(now: number): void {
    this.#startedAt = now;
    this.#discover(now);
  }

  /**
   * Take one frame addressed to this sled (the NIC already filtered by
   * destination). Anything malformed or unexpected is counted and dropped.
   * While the console prints, the frame waits its turn (a copy is kept: the
   * caller may reuse `frame`).
   */
  receive(frame: Uint8Array, now: number): void {
    if (this.#phase === "done") return;
    this.#console.drain(now, this.#takeQueued);
    if (this.#console.printing(now)) {
      this.#console.hold(frame, now);
      return;
    }
    this.#take(frame, now);
  }

  #take(frame: Uint8Array, now: number): void {
    if (this.#data.read(frame)) {
      this.#receiveData(frame, now);
      return;
    }
    const decoded = decodeFrame(frame);
    if (!decoded.ok) {
      this.#invalid++;
      return;
    }
    const { source, message } = decoded.frame;
    if (this.#phase === "discovery" && message.type === "offer") {
      this.#consider(message, source, now);
    } else if (this.#phase === "transfer" && message.type === "reset" && sameMac(source, this.#server!)) {
      // Transfer: the server of the accepted OFFER is the only one the sled talks to.
      this.#reset(now);
    } else {
      this.#ignored++;
    }
  }

  /**
   * Let time pass: frames queued behind the console, the status line once a
   * second, HELLO every 4 s, re-asks after 1 s, a slow sled's next batch, the
   * timeout. Nothing but the timeout happens while the console prints: the
   * thread that would do it is waiting for the serial line.
   */
  tick(now: number): void {
    if (this.#phase === "done") return;
    const timeoutMs = this.#config.timeoutMs ?? Infinity;
    if (now - this.#startedAt >= timeoutMs) {
      this.#end("timeout", this.#stallReason(), now);
      return;
    }
    this.#console.drain(now, this.#takeQueued);
    // A queued frame may have ended the boot (FINISHED, a RESET).
    if (this.phase === "done" || this.#console.printing(now)) return;
    if (this.#phase === "transfer" && this.#console.printStatusIfDue(now) && this.#console.printing(now)) return;
    if (this.#phase === "discovery") {
      if (now >= this.#nextHelloAt) this.#sayHello(now);
    } else if (this.#nextBatchAt !== null) {
      if (now >= this.#nextBatchAt) this.#startBatch(now);
    } else if (this.#outstanding > 0 && now - this.#oldestAsk > REASK_AFTER_MS) {
      this.#reask(now);
    }
  }

  /** Counters so far; final once `outcome` is set. */
  report(now: number): SledReport {
    const end = this.#phase === "done" ? this.#endedAt : now;
    const transferSeconds = this.#server ? (end - this.#acceptedAt) / 1000 : 0;
    return {
      mac: formatMac(this.mac),
      outcome: this.#outcome,
      detail: this.#detail,
      hellos: this.#hellos,
      offersRefused: this.#offersRefused,
      bytes: this.#bytes,
      dataAccepted: this.#dataAccepted,
      batches: this.#batches,
      reasked: this.#reasked,
      dataDropped: this.#dataDropped,
      invalid: this.#invalid,
      ignored: this.#ignored,
      resets: this.#resets,
      consoleLines: this.#console.lines,
      consoleMs: this.#console.busyMs,
      firstDataMs: this.#firstDataAt === null ? null : this.#firstDataAt - this.#acceptedAt,
      elapsedMs: end - this.#startedAt,
      megabytesPerSecond: transferSeconds > 0 ? this.#bytes / 1e6 / transferSeconds : 0,
    };
  }

  #discover(now: number): void {
    this.#phase = "discovery";
    this.#server = null;
    this.#console.stopStatus();
    this.#sayHello(now);
  }

  #sayHello(now: number): void {
    this.#config.send(this.#hello);
    this.#hellos++;
    this.#nextHelloAt = now + HELLO_INTERVAL_MS;
  }

  #consider(offer: Offer, source: Mac, now: number): void {
    const refusals = offerRefusals(offer, this.#checksum);
    if (refusals.length > 0) {
      this.#offersRefused++;
      this.#lastRefusal = `offer from ${formatMac(source)} refused: ${refusals.join("; ")}`;
      this.#config.log?.(`${formatMac(this.mac)}: ${this.#lastRefusal}`);
      return;
    }
    this.#config.log?.(
      `${formatMac(this.mac)}: accepted offer from ${formatMac(source)}: image ${offer.imageSize} bytes, ramdisk ${offer.ramdiskSize} bytes`,
    );
    this.#phase = "transfer";
    this.#server = source;
    this.#imageSize = Number(offer.imageSize);
    this.#acceptedAt = now;
    this.#console.startStatus(now);
    this.#firstDataAt = null;
    this.#nextOffset = 0;
    this.#endSeen = false;
    this.#nextBatchAt = null;
    this.#bytes = 0;
    this.#ramdisk.restart();
    this.#startBatch(now);
  }

  /** All slots are empty: fill all 128 with the next offsets and ask for them in one READ. */
  #startBatch(now: number): void {
    this.#nextBatchAt = null;
    this.#batchStart = this.#nextOffset;
    this.#nextOffset += BATCH_BYTES;
    for (let slot = 0; slot < READ_SLOTS; slot++) {
      this.#open[slot] = 1;
      this.#askedAt[slot] = now;
      this.#readSlots[slot] = BigInt(this.#batchStart + slot * CHUNK_SIZE);
    }
    this.#outstanding = READ_SLOTS;
    this.#oldestAsk = now;
    this.#batches++;
    this.#sendRead(READ_SLOTS);
  }

  /** Ask again for the slots asked for over a second ago, each in its own position. */
  #reask(now: number): void {
    let count = 0;
    let oldest = now;
    for (let slot = 0; slot < READ_SLOTS; slot++) {
      const overdue = this.#open[slot] === 1 && now - this.#askedAt[slot]! > REASK_AFTER_MS;
      if (overdue) {
        this.#readSlots[slot] = BigInt(this.#batchStart + slot * CHUNK_SIZE);
        this.#askedAt[slot] = now;
        count++;
      } else {
        this.#readSlots[slot] = 0n;
        if (this.#open[slot] === 1) oldest = Math.min(oldest, this.#askedAt[slot]!);
      }
    }
    this.#oldestAsk = oldest;
    if (count === 0) return;
    this.#reasked += count;
    this.#sendRead(count);
  }

  #sendRead(count: number): void {
    const server = this.#server;
    if (!server) return;
    this.#config.send(encodeFrame(server, this.mac, { type: "read", count: BigInt(count), slots: this.#readSlots }));
  }

  /**
   * A well-formed DATA frame, read in place by #data: this is the hot path
   * (about 115k frames a second at gigabit line rate), so no decodeFrame
   * objects and no copy but the one into the batch. Taken only from the
   * accepted server, for an offset waiting in a slot.
   */
  #receiveData(frame: Uint8Array, now: number): void {
    if (this.#phase !== "transfer" || !sameMac(frame.subarray(MAC_SIZE, 2 * MAC_SIZE), this.#server!)) {
      this.#dataDropped++;
      return;
    }
    const slot = this.#slotOf(this.#data.offset);
    if (slot < 0 || this.#open[slot] !== 1) {
      this.#dataDropped++;
      this.#console.printDropLine(now);
      return;
    }
    this.#open[slot] = 0;
    this.#outstanding--;
    this.#dataAccepted++;
    this.#firstDataAt ??= now;
    const { start, end } = this.#data;
    if (start === end) {
      this.#endSeen = true;
    } else {
      this.#ramdisk.write(slot, frame.subarray(start, end));
      this.#bytes += end - start;
    }
    if (this.#outstanding === 0) this.#completeBatch(now);
  }

  /** The slot of the current batch that holds `offset`, or -1. */
  #slotOf(offset: number): number {
    const within = offset - this.#batchStart;
    if (within < 0 || within >= BATCH_BYTES || within % CHUNK_SIZE !== 0) return -1;
    return within / CHUNK_SIZE;
  }

  /** Every slot answered: the batch's ramdisk bytes are final (lib/sled/ramdisk-digest.ts). */
  #completeBatch(now: number): void {
    this.#ramdisk.completeBatch();
    if (!this.#endSeen && this.#nextOffset < this.#imageSize) {
      const delay = this.#config.batchDelayMs ?? 0;
      if (delay > 0) this.#nextBatchAt = now + delay;
      else this.#startBatch(now);
      return;
    }
    const server = this.#server!;
    this.#config.send(encodeFrame(server, this.mac, { type: "finished" }));
    const digest = this.#ramdisk.digest();
    if (equalBytes(digest, this.#checksum)) {
      this.#end("booted", "", now);
    } else {
      this.#end(
        "checksum mismatch",
        `sha256 of the first ${this.#nextOffset} ramdisk bytes is ${toHex(digest)}, not the wanted ${toHex(this.#checksum)}` +
          (this.#imageSize % BATCH_BYTES !== 0 ? ` (image size ${this.#imageSize} is not a multiple of 128 KiB)` : ""),
        now,
      );
    }
  }

  /** RESET: the kernel gives up this boot attempt (today it panics and the boot restarts). */
  #reset(now: number): void {
    this.#resets++;
    this.#open.fill(0);
    this.#outstanding = 0;
    this.#nextBatchAt = null;
    const at = `reset by ${formatMac(this.#server!)} at offset ${this.#batchStart}`;
    if (!this.#config.restartOnReset) {
      this.#end("reset", at, now);
      return;
    }
    this.#config.log?.(`${formatMac(this.mac)}: ${at}; starting discovery again`);
    this.#discover(now);
  }

  #stallReason(): string {
    if (this.#phase === "discovery") {
      return `no acceptable offer after ${this.#hellos} HELLO${this.#lastRefusal ? ` (last ${this.#lastRefusal})` : ""}`;
    }
    return `transfer from ${formatMac(this.#server!)} stalled in the batch at offset ${this.#batchStart} with ${this.#outstanding} slots unanswered`;
  }

  #end(outcome: SledOutcome, detail: string, now: number): void {
    this.#phase = "done";
    this.#outcome = outcome;
    this.#detail = detail;
    this.#endedAt = now;
  }
}
