/**
 * The sled kernel's netboot client, emulated: what a lab points at a boot
 * server to see whether a real sled would boot from it.
 *
 * `SledClient` is the client of one sled as a state machine, with no I/O of
 * its own: frames come in through `receive(frame, now)`, time passes through
 * `tick(now)`, and frames go out through the `send` function it was given.
 * It follows `docs/netboot.md` step by step:
 * - Discovery: a HELLO broadcast every 4 s until an OFFER passes the kernel's
 *   checks (offerRefusals); from then on only that server's frames count.
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
 * The ramdisk is never held whole, so 32 emulated sleds can fetch 4 GiB images
 * on one machine. A batch starts only when the previous one is fully answered
 * and every offset of a batch lies inside it, so once a batch is complete no
 * later DATA can touch its bytes: its 128 KiB of ramdisk are final and can go
 * to the hasher at once. Before the batch, those bytes were zero (the ramdisk
 * starts zeroed) except where the previous batch's last DATA ran over its
 * end: the kernel accepts a DATA body of up to 1468 image bytes for a
 * 1024-byte chunk and writes what it accepts at the DATA's offset. So each batch starts from a zeroed buffer
 * plus that carried-over spill, and hashing the batches in order gives exactly
 * the digest of the ramdisk prefix the kernel hashes.
 *
 * The console (`consoleBaud`): the kernel thread that takes frames off the
 * receive queue also prints, and at this point of boot the console is a
 * serial line whose output it waits for (netboot.md, "The console"). It
 * prints `dropped data packet for offset N` for every DATA from its server
 * that is not in a slot (a copy of a frame it already has, or of a finished
 * batch) and a status line once a second while receiving. Each line keeps
 * the sled busy for its serial time (10 bits a byte); frames arriving
 * meanwhile wait in an unbounded queue and are taken in order once it is
 * done, and no READ (nor re-ask) goes out until then. So copies a server
 * sends cost the sled time, and a burst of them delays its next READ, as on
 * a real sled. The queue is modelled in time, not by blocking a thread, so
 * many sleds on one thread each print at their own pace.
 *
 * The network between server and sled is modelled in lib/sled/faults.ts, and
 * many sleds run on one link with lib/sled/runner.ts.
 */

import { copyBytes } from "@ramdisk-tools/bytes/copy.ts";
import { NETBOOT_MIN_SIZE, toHex } from "@ramdisk-tools/image/format.ts";
import {
  BATCH_BYTES,
  BROADCAST_MAC,
  CHUNK_SIZE,
  DATA_MAX_BODY,
  DataFrameReader,
  decodeFrame,
  encodeFrame,
  formatMac,
  MAC_SIZE,
  type Mac,
  OFFER_DATASET_SIZE,
  type Offer,
  READ_SLOTS,
  REASK_AFTER_MS,
  SHA256_SIZE,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";

/** Discovery: the kernel broadcasts HELLO every 4 seconds until it accepts an OFFER. */
export const HELLO_INTERVAL_MS = 4000;
/** The emulator's greeting; the kernel's is a short ASCII text without NUL too. */
export const DEFAULT_GREETING = "sled netboot hello";

/** A `dropped data packet for offset N` line: about 45 bytes (netboot.md, "The console"). */
export const DROP_LINE_BYTES = 45;
/** The `receiving ... (NN%)` status line: about 48 bytes. */
export const STATUS_LINE_BYTES = 48;
/** The status line is printed once a second while receiving. */
export const STATUS_INTERVAL_MS = 1000;
/** A serial line sends 10 bits a byte (start bit, 8 data bits, stop bit). */
const BITS_PER_CONSOLE_BYTE = 10;

/**
 * Milliseconds a console of `baud` takes to print `bytes` (0 for a free console).
 *
 * @example consoleLineMs(DROP_LINE_BYTES, 115_200) // 3.90625
 */
export function consoleLineMs(bytes: number, baud: number): number {
  return baud > 0 ? (bytes * BITS_PER_CONSOLE_BYTE * 1000) / baud : 0;
}

/** Image bytes one DATA frame may carry: len up to 1476, less the 8-byte offset. */
const MAX_DATA_BYTES = DATA_MAX_BODY - 8;
/** How far the last DATA of a batch can write past the batch's end. */
const SPILL_BYTES = MAX_DATA_BYTES - CHUNK_SIZE;

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
   * frames off the queue, and waits for each line (see the module comment).
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
 * Why the sled kernel would ignore this OFFER, one reason per failed check;
 * empty when it would accept it.
 *
 * @example offerRefusals(offer, checksum) // ["image size 2097152 is more than ramdisk size 1048576"]
 */
export function offerRefusals(offer: Offer, checksum: Uint8Array): string[] {
  const refusals: string[] = [];
  if (!equalBytes(offer.sha256, checksum)) {
    refusals.push(`sha256 ${toHex(offer.sha256)} is not the wanted ${toHex(checksum)}`);
  }
  const minimum = BigInt(NETBOOT_MIN_SIZE);
  if (offer.ramdiskSize < minimum) refusals.push(`ramdisk size ${offer.ramdiskSize} is less than 1 MiB`);
  if (offer.imageSize < minimum) refusals.push(`image size ${offer.imageSize} is less than 1 MiB`);
  if (offer.imageSize > offer.ramdiskSize) {
    refusals.push(`image size ${offer.imageSize} is more than ramdisk size ${offer.ramdiskSize}`);
  }
  const last = offer.dataset[OFFER_DATASET_SIZE - 1];
  if (last !== 0) refusals.push(`dataset field is not NUL-terminated (byte 127 is ${last})`);
  // Offsets are kept as JavaScript numbers; no real ramdisk comes near 2^53 bytes.
  if (offer.imageSize > BigInt(Number.MAX_SAFE_INTEGER))
    refusals.push(`image size ${offer.imageSize} is too large to emulate`);
  return refusals;
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
  /** The current batch's 128 KiB of ramdisk, plus room for a DATA running past its end. */
  readonly #batch = new Uint8Array(BATCH_BYTES + SPILL_BYTES);
  #hasher = new Bun.CryptoHasher("sha256");
  readonly #data = new DataFrameReader();

  /** Serial time of a drop line and of a status line (0: a free console). */
  readonly #dropLineMs: number;
  readonly #statusLineMs: number;
  /** The console prints until then; frames wait meanwhile. */
  #busyUntil = Number.NEGATIVE_INFINITY;
  /** Frames that arrived while the console printed, with their arrival time, taken from #queueHead on. */
  #queue: { frame: Uint8Array; at: number }[] = [];
  #queueHead = 0;
  #nextStatusAt = Number.POSITIVE_INFINITY;
  #consoleLines = 0;
  #consoleMs = 0;

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
    this.#dropLineMs = consoleLineMs(DROP_LINE_BYTES, config.consoleBaud ?? 0);
    this.#statusLineMs = consoleLineMs(STATUS_LINE_BYTES, config.consoleBaud ?? 0);
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
    const queued = this.#queueHead < this.#queue.length ? this.#busyUntil : Number.POSITIVE_INFINITY;
    const due = Math.min(queued, this.#nextBatchAt ?? Number.POSITIVE_INFINITY);
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
    this.#drain(now);
    if (this.#printing(now)) {
      this.#queue.push({ frame: frame.slice(), at: now });
      return;
    }
    this.#take(frame, now);
  }

  /** The console is still printing at `now`, or frames wait behind it. */
  #printing(now: number): boolean {
    return now < this.#busyUntil || this.#queueHead < this.#queue.length;
  }

  /** Take the queued frames whose turn has come by `now`, each at the time the console let it through. */
  #drain(now: number): void {
    while (this.#queueHead < this.#queue.length && this.#busyUntil <= now && this.#phase !== "done") {
      const { frame, at } = this.#queue[this.#queueHead++]!;
      this.#take(frame, Math.max(at, this.#busyUntil));
    }
    if (this.#queueHead >= this.#queue.length || this.#phase === "done") {
      this.#queue = [];
      this.#queueHead = 0;
    }
  }

  /** Print one line: the receive loop waits for it (a free console counts the line only). */
  #print(lineMs: number, at: number): void {
    this.#consoleLines++;
    if (lineMs === 0) return;
    this.#busyUntil = Math.max(this.#busyUntil, at) + lineMs;
    this.#consoleMs += lineMs;
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
    this.#drain(now);
    // A queued frame may have ended the boot (FINISHED, a RESET).
    if (this.phase === "done" || this.#printing(now)) return;
    if (this.#phase === "transfer" && now >= this.#nextStatusAt) {
      this.#nextStatusAt +=
        STATUS_INTERVAL_MS * Math.max(1, Math.ceil((now - this.#nextStatusAt) / STATUS_INTERVAL_MS));
      this.#print(this.#statusLineMs, now);
      if (this.#printing(now)) return;
    }
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
      consoleLines: this.#consoleLines,
      consoleMs: this.#consoleMs,
      firstDataMs: this.#firstDataAt === null ? null : this.#firstDataAt - this.#acceptedAt,
      elapsedMs: end - this.#startedAt,
      megabytesPerSecond: transferSeconds > 0 ? this.#bytes / 1e6 / transferSeconds : 0,
    };
  }

  #discover(now: number): void {
    this.#phase = "discovery";
    this.#server = null;
    this.#nextStatusAt = Number.POSITIVE_INFINITY;
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
    this.#nextStatusAt = now + STATUS_INTERVAL_MS;
    this.#firstDataAt = null;
    this.#nextOffset = 0;
    this.#endSeen = false;
    this.#nextBatchAt = null;
    this.#bytes = 0;
    this.#batch.fill(0);
    this.#hasher = new Bun.CryptoHasher("sha256");
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
      this.#print(this.#dropLineMs, now);
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
      this.#batch.set(frame.subarray(start, end), slot * CHUNK_SIZE);
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

  /** Every slot answered: the batch's ramdisk bytes are final (module comment). */
  #completeBatch(now: number): void {
    this.#hasher.update(this.#batch.subarray(0, BATCH_BYTES));
    this.#batch.copyWithin(0, BATCH_BYTES);
    this.#batch.fill(0, SPILL_BYTES);
    if (!this.#endSeen && this.#nextOffset < this.#imageSize) {
      const delay = this.#config.batchDelayMs ?? 0;
      if (delay > 0) this.#nextBatchAt = now + delay;
      else this.#startBatch(now);
      return;
    }
    const server = this.#server!;
    this.#config.send(encodeFrame(server, this.mac, { type: "finished" }));
    const digest = new Uint8Array(this.#hasher.digest().buffer);
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

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
