/**
 * The sled kernel's netboot client, emulated: what a lab points at a boot
 * server to see whether a real sled would boot from it.
 *
 * `SledSession` is the client of one sled as a state machine, with no I/O of
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
 * `DataFaults` sits between the wire and a session and damages incoming DATA
 * frames (drop, duplicate, reorder, delay) from a seed, so a test of a boot
 * server's recovery is repeatable. `emulateSleds` runs many sessions on one
 * link: one capture handle, frames handed to the sled whose MAC they are
 * addressed to.
 */

import { copyBytes } from "@ramdisk-tools/bytes/copy.ts";
import { NETBOOT_MIN_SIZE, toHex } from "@ramdisk-tools/image/format.ts";
import {
  BATCH_BYTES,
  BODY_OFFSET,
  BROADCAST_MAC,
  CHUNK_SIZE,
  DATA_MAX_BODY,
  DATA_MIN_BODY,
  decodeFrame,
  ETHER_HEADER_SIZE,
  ETHERTYPE,
  encodeFrame,
  FrameType,
  formatMac,
  MAC_SIZE,
  type Mac,
  OFFER_DATASET_SIZE,
  type Offer,
  PROTOCOL_MAGIC,
  READ_SLOTS,
  SHA256_SIZE,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";

/** Discovery: the kernel broadcasts HELLO every 4 seconds until it accepts an OFFER. */
export const HELLO_INTERVAL_MS = 4000;
/** A slot whose request is older than one second is asked for again. */
export const REASK_AFTER_MS = 1000;
/** The emulator's greeting; the kernel's is a short ASCII text without NUL too. */
export const DEFAULT_GREETING = "sled netboot hello";

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
  /**
   * On RESET start discovery again, as a whole reboot of the sled would,
   * instead of ending with outcome "reset".
   */
  restartOnReset?: boolean;
  greeting?: string;
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
  batches: number;
  /** Slots asked for again after a second without an answer. */
  reasked: number;
  /** Well-formed DATA frames not taken: from another MAC, or for no open slot. */
  dataDropped: number;
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
 * const sled = new SledSession({ mac, checksum, send: (frame) => link.inject(frame) });
 * sled.start(performance.now());
 * for (;;) { const frame = link.next(); const now = performance.now(); if (frame) sled.receive(frame, now); sled.tick(now); }
 */
export class SledSession {
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

  #hellos = 0;
  #offersRefused = 0;
  #bytes = 0;
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

  /** Power on: the first HELLO goes out now. */
  start(now: number): void {
    this.#startedAt = now;
    this.#discover(now);
  }

  /**
   * Take one frame addressed to this sled (the NIC already filtered by
   * destination). Anything malformed or unexpected is counted and dropped.
   */
  receive(frame: Uint8Array, now: number): void {
    if (this.#phase === "done") return;
    if (isDataFrame(frame)) {
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

  /** Let time pass: HELLO every 4 s, re-asks after 1 s, the timeout. */
  tick(now: number): void {
    if (this.#phase === "done") return;
    const timeoutMs = this.#config.timeoutMs ?? Infinity;
    if (now - this.#startedAt >= timeoutMs) {
      this.#end("timeout", this.#stallReason(), now);
    } else if (this.#phase === "discovery") {
      if (now >= this.#nextHelloAt) this.#sayHello(now);
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
      batches: this.#batches,
      reasked: this.#reasked,
      dataDropped: this.#dataDropped,
      invalid: this.#invalid,
      ignored: this.#ignored,
      resets: this.#resets,
      firstDataMs: this.#firstDataAt === null ? null : this.#firstDataAt - this.#acceptedAt,
      elapsedMs: end - this.#startedAt,
      megabytesPerSecond: transferSeconds > 0 ? this.#bytes / 1e6 / transferSeconds : 0,
    };
  }

  #discover(now: number): void {
    this.#phase = "discovery";
    this.#server = null;
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
    this.#firstDataAt = null;
    this.#nextOffset = 0;
    this.#endSeen = false;
    this.#bytes = 0;
    this.#batch.fill(0);
    this.#hasher = new Bun.CryptoHasher("sha256");
    this.#startBatch(now);
  }

  /** All slots are empty: fill all 128 with the next offsets and ask for them in one READ. */
  #startBatch(now: number): void {
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
   * A DATA frame, read in place: this is the hot path (about 115k frames a
   * second at gigabit line rate), so no decodeFrame objects and no copy but
   * the one into the batch. The checks are decodeFrame's rules for DATA
   * (isDataFrame did ethertype, magic and type): 8 <= len <= 1476, within the
   * frame. Taken only from the accepted server, for an offset waiting in a slot.
   */
  #receiveData(frame: Uint8Array, now: number): void {
    const len = readUint32(frame, ETHER_HEADER_SIZE + 8);
    if (len < DATA_MIN_BODY || len > DATA_MAX_BODY || BODY_OFFSET + len > frame.length) {
      this.#invalid++;
      return;
    }
    if (this.#phase !== "transfer" || !sameMacAt(frame, MAC_SIZE, this.#server!)) {
      this.#dataDropped++;
      return;
    }
    const slot = this.#slotOf(readUint32(frame, BODY_OFFSET), readUint32(frame, BODY_OFFSET + 4));
    if (slot < 0 || this.#open[slot] !== 1) {
      this.#dataDropped++;
      return;
    }
    this.#open[slot] = 0;
    this.#outstanding--;
    this.#firstDataAt ??= now;
    const bytes = len - 8;
    if (bytes === 0) {
      this.#endSeen = true;
    } else {
      this.#batch.set(frame.subarray(BODY_OFFSET + 8, BODY_OFFSET + len), slot * CHUNK_SIZE);
      this.#bytes += bytes;
    }
    if (this.#outstanding === 0) this.#completeBatch(now);
  }

  /** The slot of the current batch that holds the offset `high * 2^32 + low`, or -1. */
  #slotOf(high: number, low: number): number {
    // Batch offsets stay below 2^53 (offerRefusals); a larger offset is in no slot.
    if (high >= 2 ** 21) return -1;
    const within = high * 2 ** 32 + low - this.#batchStart;
    if (within < 0 || within >= BATCH_BYTES || within % CHUNK_SIZE !== 0) return -1;
    return within / CHUNK_SIZE;
  }

  /** Every slot answered: the batch's ramdisk bytes are final (module comment). */
  #completeBatch(now: number): void {
    this.#hasher.update(this.#batch.subarray(0, BATCH_BYTES));
    this.#batch.copyWithin(0, BATCH_BYTES);
    this.#batch.fill(0, SPILL_BYTES);
    if (!this.#endSeen && this.#nextOffset < this.#imageSize) {
      this.#startBatch(now);
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
      return (
        `no acceptable offer after ${this.#hellos} HELLO` + (this.#lastRefusal ? ` (last ${this.#lastRefusal})` : "")
      );
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

/**
 * A frame held back for reordering goes out alone after this long without a
 * next DATA frame, so reordering the last frame of a batch does not turn into
 * a loss (which would cost the sled a one-second re-ask).
 */
export const REORDER_HOLD_MS = 20;

/** What DataFaults does to incoming DATA frames; every rate is a probability in 0..1. */
export interface FaultOptions {
  dropRate?: number;
  duplicateRate?: number;
  /** Hold a frame back and deliver it right after the next DATA frame (or after REORDER_HOLD_MS). */
  reorderRate?: number;
  /** Hold a frame back for `delayMs`. */
  delayRate?: number;
  delayMs?: number;
  seed?: number;
}

export interface FaultCounters {
  dropped: number;
  duplicated: number;
  reordered: number;
  delayed: number;
}

/**
 * Damage incoming DATA frames before a sled sees them, deterministically from
 * a seed. Other frames pass untouched. Frames go in with `admit` and come out,
 * possibly fewer, more or later, with `take`.
 *
 * @example
 * const faults = new DataFaults({ dropRate: 0.01, seed: 7 });
 * faults.admit(frame, now);
 * for (let out = faults.take(now); out; out = faults.take(now)) sled.receive(out, now);
 */
export class DataFaults {
  readonly counters: FaultCounters = { dropped: 0, duplicated: 0, reordered: 0, delayed: 0 };
  readonly #options: Required<FaultOptions>;
  readonly #random: () => number;
  readonly #ready: Uint8Array[] = [];
  readonly #late: { frame: Uint8Array; due: number }[] = [];
  #held: Uint8Array | null = null;
  #heldSince = 0;

  constructor(options: FaultOptions) {
    this.#options = {
      dropRate: options.dropRate ?? 0,
      duplicateRate: options.duplicateRate ?? 0,
      reorderRate: options.reorderRate ?? 0,
      delayRate: options.delayRate ?? 0,
      delayMs: options.delayMs ?? 0,
      seed: options.seed ?? 1,
    };
    this.#random = seededRandom(this.#options.seed);
  }

  /** True when the options damage nothing, so the faults can be left out. */
  static isNone(options: FaultOptions): boolean {
    return (
      !options.dropRate && !options.duplicateRate && !options.reorderRate && !(options.delayRate && options.delayMs)
    );
  }

  /**
   * One frame from the wire. The frame must not be reused by the caller: it
   * may be held. Only DATA frames are damaged: the faults model loss and
   * lateness of the server's bulk traffic.
   */
  admit(frame: Uint8Array, now: number): void {
    if (!isDataFrame(frame)) {
      this.#ready.push(frame);
      return;
    }
    // Four draws per frame whatever happens, so each fault's pattern depends only on the seed.
    const drop = this.#random() < this.#options.dropRate;
    const duplicate = this.#random() < this.#options.duplicateRate;
    const reorder = this.#random() < this.#options.reorderRate;
    const delay = this.#random() < this.#options.delayRate;
    if (drop) {
      this.counters.dropped++;
      return;
    }
    const copies = duplicate ? 2 : 1;
    if (duplicate) this.counters.duplicated++;
    if (delay && this.#options.delayMs > 0) {
      this.counters.delayed++;
      for (let i = 0; i < copies; i++) this.#late.push({ frame, due: now + this.#options.delayMs });
      return;
    }
    if (reorder && this.#held === null) {
      this.counters.reordered++;
      this.#held = frame;
      this.#heldSince = now;
      // A duplicate of a held frame still arrives now: the two copies end up on either side of the next frame.
      if (duplicate) this.#ready.push(frame);
      return;
    }
    for (let i = 0; i < copies; i++) this.#ready.push(frame);
    if (this.#held) {
      this.#ready.push(this.#held);
      this.#held = null;
    }
  }

  /** The next frame to hand to the sled now, or null. */
  take(now: number): Uint8Array | null {
    while (this.#late.length > 0 && this.#late[0]!.due <= now) this.#ready.push(this.#late.shift()!.frame);
    if (this.#held && now - this.#heldSince >= REORDER_HOLD_MS) {
      this.#ready.push(this.#held);
      this.#held = null;
    }
    return this.#ready.shift() ?? null;
  }
}

/** True for a frame whose headers say DATA: ethertype, magic and type; its len is checked by the reader. */
function isDataFrame(frame: Uint8Array): boolean {
  return (
    frame.length >= BODY_OFFSET &&
    frame[12] === ETHERTYPE >> 8 &&
    frame[13] === (ETHERTYPE & 0xff) &&
    readUint32(frame, ETHER_HEADER_SIZE) === PROTOCOL_MAGIC &&
    readUint32(frame, ETHER_HEADER_SIZE + 4) === FrameType.Data
  );
}

function readUint32(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

function sameMacAt(bytes: Uint8Array, at: number, mac: Mac): boolean {
  for (let i = 0; i < MAC_SIZE; i++) if (bytes[at + i] !== mac[i]) return false;
  return true;
}

/**
 * A small seedable generator (mulberry32), uniform in [0, 1): the same seed
 * always damages the same frames.
 */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What emulateSleds needs of a link; a PcapLink fits. */
export interface SledLink {
  /** The next incoming frame, or null after the link's read timeout. */
  next(): Uint8Array | null;
  /** Like next(), into `buffer`, returning the length (0 for none): no allocation per frame. */
  nextInto?(buffer: Uint8Array): number;
  inject(frame: Uint8Array): void;
}

export interface EmulationOptions {
  /** One sled per MAC, all at once. */
  macs: Mac[];
  checksum: Uint8Array;
  timeoutMs: number;
  /** Each sled gets its own DataFaults, seeded with `seed + its index`. */
  faults?: FaultOptions;
  restartOnReset?: boolean;
  greeting?: string;
  log?(line: string): void;
  /** Called once per sled when it is done, in the order they finish. */
  onDone?(report: EmulatedSledReport): void;
  /** Milliseconds; performance.now by default. */
  clock?(): number;
}

/** A sled's report and what the faults did to its DATA frames (null without faults). */
export interface EmulatedSledReport extends SledReport {
  faults: FaultCounters | null;
}

/** Larger than any netboot frame (at most 14 + 12 + 1476 bytes). */
const RECEIVE_BUFFER_BYTES = 2048;

/** How often sessions are ticked while frames keep coming (re-asks and HELLOs need no finer grain). */
const TICK_MS = 5;

interface EmulatedSled {
  session: SledSession;
  faults: DataFaults | null;
  reported: boolean;
}

/**
 * Boot one sled per MAC on `link` until every one is done (booted or failed);
 * returns their reports in the order of `macs`. Blocks the thread: the loop
 * polls the link (each `next()` waits at most the link's read timeout) and is
 * what keeps up with a gigabit stream of DATA frames.
 *
 * @example
 * const reports = emulateSleds(PcapLink.open("eth1", { timeoutMs: 10 }), { macs: [mac], checksum, timeoutMs: 120_000 });
 * const allBooted = reports.every((report) => report.outcome === "booted");
 */
export function emulateSleds(link: SledLink, options: EmulationOptions): EmulatedSledReport[] {
  const clock = options.clock ?? (() => performance.now());
  const send = (frame: Uint8Array) => link.inject(frame);
  const sleds: EmulatedSled[] = [];
  const byMac = new Map<number, EmulatedSled>();
  const faults = options.faults !== undefined && !DataFaults.isNone(options.faults) ? options.faults : null;
  for (const [index, mac] of options.macs.entries()) {
    if (byMac.has(macKey(mac))) throw new Error(`MAC ${formatMac(mac)} is given to two sleds`);
    const session = new SledSession({
      mac,
      checksum: options.checksum,
      send,
      timeoutMs: options.timeoutMs,
      restartOnReset: options.restartOnReset,
      greeting: options.greeting,
      log: options.log,
    });
    const sled = {
      session,
      faults: faults ? new DataFaults({ ...faults, seed: (faults.seed ?? 1) + index }) : null,
      reported: false,
    };
    byMac.set(macKey(mac), sled);
    sleds.push(sled);
  }
  const reportOf = (sled: EmulatedSled, now: number): EmulatedSledReport => ({
    ...sled.session.report(now),
    faults: sled.faults?.counters ?? null,
  });

  const started = clock();
  for (const sled of sleds) sled.session.start(started);
  // Without faults no frame outlives its delivery, so one receive buffer serves them all.
  const buffer = new Uint8Array(RECEIVE_BUFFER_BYTES);
  const nextFrame =
    link.nextInto && !faults
      ? () => {
          const length = link.nextInto!(buffer);
          return length > 0 ? buffer.subarray(0, length) : null;
        }
      : () => link.next();
  let remaining = sleds.length;
  let lastTick = started;
  while (remaining > 0) {
    const frame = nextFrame();
    const now = clock();
    // The NIC's filter: a sled sees only frames addressed to it; broadcasts carry nothing for a sled.
    const sled = frame && frame.length >= MAC_SIZE ? byMac.get(macKey(frame)) : undefined;
    if (sled && frame) {
      if (sled.faults) {
        sled.faults.admit(frame, now);
        deliver(sled, now);
      } else {
        sled.session.receive(frame, now);
      }
    }
    if (frame && now - lastTick < TICK_MS) continue;
    lastTick = now;
    for (const each of sleds) {
      if (each.reported) continue;
      if (each.faults) deliver(each, now);
      each.session.tick(now);
      if (each.session.phase === "done") {
        each.reported = true;
        remaining--;
        options.onDone?.(reportOf(each, now));
      }
    }
  }
  const now = clock();
  return sleds.map((sled) => reportOf(sled, now));
}

function deliver(sled: EmulatedSled, now: number): void {
  const faults = sled.faults!;
  for (let frame = faults.take(now); frame; frame = faults.take(now)) sled.session.receive(frame, now);
}

/** The first six bytes (a MAC, or a frame's destination) as one number, for looking sleds up without allocating. */
function macKey(bytes: Uint8Array): number {
  let key = 0;
  for (let i = 0; i < MAC_SIZE; i++) key = key * 256 + bytes[i]!;
  return key;
}

/**
 * `count` consecutive MAC addresses from `first` (adding 1 to the 48-bit number each time).
 *
 * @example consecutiveMacs(parseMac("02:00:00:00:00:ff")!, 2) // 02:00:00:00:00:ff, 02:00:00:00:01:00
 */
export function consecutiveMacs(first: Mac, count: number): Mac[] {
  const base = macKey(first);
  return Array.from({ length: count }, (_, index) => {
    let key = (base + index) % 2 ** 48;
    const mac = new Uint8Array(MAC_SIZE);
    for (let i = MAC_SIZE - 1; i >= 0; i--) {
      mac[i] = key % 256;
      key = Math.floor(key / 256);
    }
    return mac;
  });
}

/**
 * A locally administered unicast MAC for the first emulated sled on a link:
 * 02, then the link's last four bytes, then 00, so emulated sleds on
 * different links differ and none takes the link's own address.
 *
 * @example sledMacFor(parseMac("52:54:00:12:34:56")!) // 02:00:12:34:56:00
 */
export function sledMacFor(linkMac: Mac): Mac {
  return new Uint8Array([0x02, linkMac[2] ?? 0, linkMac[3] ?? 0, linkMac[4] ?? 0, linkMac[5] ?? 0, 0x00]);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
