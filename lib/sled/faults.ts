/**
 * The network between a boot server and an emulated sled, as models that
 * damage the server's DATA frames before the sled sees them, so a test or a
 * benchmark can put a server under the conditions of a real lab network,
 * repeatably: every random decision comes from one seeded generator
 * (lib/random/xorshift32.ts), so the same seed damages the same frames.
 *
 * The models, in the order a frame meets them (as on the way from the server):
 * - Random loss: each DATA frame is lost with probability `dropRate`.
 * - Burst loss: a loss event starts at a DATA frame with probability
 *   `burstRate` and loses that frame and the next `burstLength - 1` (frames
 *   inside an event start no new one). Simpler than a Gilbert-Elliott chain
 *   and enough to show what a run of lost frames does to a batch. The share of
 *   frames lost is P*N / (1 - P + P*N) for P = burstRate, N = burstLength:
 *   about P*N for small P (0.0005 and 4 lose 0.2%).
 * - A switch egress port in front of the sled (`portRate` bits/s, a FIFO of
 *   `portBufferBytes`): the port drains its queue at its rate, each frame
 *   counted in link time (lib/wire/rate.ts: padding, FCS, preamble, gap), and
 *   its buffer holds that many bytes of it. A frame arriving while the bytes
 *   not yet drained plus its own exceed the buffer is dropped, as a switch
 *   drops the tail of a burst from a faster link; the others leave in order,
 *   each when its last bit is through. Arrival is the kernel's receive
 *   timestamp of the frame (PcapLink.receivedAt), not the time the emulator
 *   got round to reading it, so the emulator's own lag does not fill the
 *   modelled queue. A frame is handed to the sled at its modelled departure,
 *   so a sender faster than the port gains nothing over one paced at its
 *   rate.
 * - Then duplicates, reordering and delay act on what is left.
 *
 * Only DATA frames are touched: the models stand for loss and queueing of the
 * server's bulk traffic; an OFFER or RESET passes at once.
 */

import { FrameType, peekFrameType } from "@ramdisk-tools/protocol/frames.ts";
import { Xorshift32 } from "@ramdisk-tools/random/xorshift32.ts";
import { wireBytes } from "@ramdisk-tools/wire/rate.ts";

/**
 * A frame held back for reordering goes out alone after this long without a
 * next DATA frame, so reordering the last frame of a batch does not turn into
 * a loss (which would cost the sled a one-second re-ask).
 */
export const REORDER_HOLD_MS = 20;

/** A switch port's buffer when only its rate is given: 64 KiB, a common per-port share on gigabit switches. */
export const DEFAULT_PORT_BUFFER_BYTES = 64 * 1024;

/** What DataFaults does to incoming DATA frames; every rate is a probability in 0..1. */
export interface FaultOptions {
  dropRate?: number;
  /** Probability per DATA frame that a loss event of `burstLength` frames starts there. */
  burstRate?: number;
  /** Frames lost per loss event; default 4. */
  burstLength?: number;
  /** Bits per second of the switch port in front of the sled; none by default. */
  portRate?: number;
  /** Bytes the port can queue; default DEFAULT_PORT_BUFFER_BYTES. */
  portBufferBytes?: number;
  duplicateRate?: number;
  /** Hold a frame back and deliver it right after the next DATA frame (or after REORDER_HOLD_MS). */
  reorderRate?: number;
  /** Hold a frame back for `delayMs`. */
  delayRate?: number;
  delayMs?: number;
  seed?: number;
}

/** What the models did, in DATA frames. */
export interface FaultCounters {
  /** Lost at random (dropRate). */
  dropped: number;
  /** Lost in loss events (burstRate). */
  burstDropped: number;
  /** Dropped by the switch port's full buffer. */
  portDropped: number;
  duplicated: number;
  reordered: number;
  delayed: number;
}

/** Counters of a sled with no network model, and where every DataFaults starts. */
export const NO_FAULTS: Readonly<FaultCounters> = Object.freeze({
  dropped: 0,
  burstDropped: 0,
  portDropped: 0,
  duplicated: 0,
  reordered: 0,
  delayed: 0,
});

/**
 * A switch egress port: a FIFO of `bufferBytes` drained at `rate` bits per
 * second (see the module comment). Pure: it only sees frame lengths and
 * arrival times, in milliseconds on any one clock.
 *
 * @example
 * const port = new SwitchPort(1e9, 65536);
 * const leaves = port.offer(frame.length, receivedAt); // null: dropped
 */
export class SwitchPort {
  readonly #msPerByte: number;
  readonly #bufferBytes: number;
  /** When the last accepted frame's last bit leaves: the queue is empty from then on. */
  #drainedAt = Number.NEGATIVE_INFINITY;

  constructor(rate: number, bufferBytes: number) {
    if (!(rate > 0)) throw new Error(`a port rate must be positive, not ${rate}`);
    if (!(bufferBytes >= 0)) throw new Error(`a port buffer must not be negative, not ${bufferBytes}`);
    this.#msPerByte = 8_000 / rate;
    this.#bufferBytes = bufferBytes;
  }

  /**
   * A frame of `length` bytes (Ethernet header and payload) arriving at
   * `arrivedAt`: the time its last bit leaves the port, or null when the
   * bytes still queued plus its own would overflow the buffer.
   *
   * @example new SwitchPort(1e9, 65536).offer(1058, 0) // 0.008656: 1082 bytes of link time at 1 Gbit/s
   */
  offer(length: number, arrivedAt: number): number | null {
    const size = wireBytes(length);
    const backlog = Math.max(0, this.#drainedAt - arrivedAt) / this.#msPerByte;
    if (backlog + size > this.#bufferBytes) return null;
    this.#drainedAt = Math.max(this.#drainedAt, arrivedAt) + size * this.#msPerByte;
    return this.#drainedAt;
  }
}

/** A DATA frame on its way to the sled, with the decisions drawn for it on arrival. */
interface InFlight {
  frame: Uint8Array;
  due: number;
  duplicate: boolean;
  reorder: boolean;
  delay: boolean;
}

/**
 * Damage incoming DATA frames before a sled sees them, deterministically from
 * a seed (see the module comment). Frames go in with `admit` and come out,
 * possibly fewer, more or later, with `take`.
 *
 * @example
 * const faults = new DataFaults({ dropRate: 0.01, portRate: 1e9, seed: 7 });
 * faults.admit(frame, now, link.receivedAt());
 * for (let out = faults.take(now); out; out = faults.take(now)) sled.receive(out, now);
 */
export class DataFaults {
  readonly counters: FaultCounters = { ...NO_FAULTS };
  readonly #options: Required<Omit<FaultOptions, "portRate">>;
  readonly #random: Xorshift32;
  readonly #port: SwitchPort | null;
  #burstLeft = 0;
  /** Frames queued in the port, in departure order. */
  readonly #departing: InFlight[] = [];
  readonly #ready: Uint8Array[] = [];
  readonly #late: { frame: Uint8Array; due: number }[] = [];
  #held: Uint8Array | null = null;
  #heldSince = 0;

  constructor(options: FaultOptions) {
    this.#options = {
      dropRate: options.dropRate ?? 0,
      burstRate: options.burstRate ?? 0,
      burstLength: options.burstLength ?? 4,
      portBufferBytes: options.portBufferBytes ?? DEFAULT_PORT_BUFFER_BYTES,
      duplicateRate: options.duplicateRate ?? 0,
      reorderRate: options.reorderRate ?? 0,
      delayRate: options.delayRate ?? 0,
      delayMs: options.delayMs ?? 0,
      seed: options.seed ?? 1,
    };
    if (!(Number.isInteger(this.#options.burstLength) && this.#options.burstLength >= 1))
      throw new Error(`a burst length must be a whole number of frames >= 1, not ${this.#options.burstLength}`);
    this.#port = options.portRate ? new SwitchPort(options.portRate, this.#options.portBufferBytes) : null;
    this.#random = Xorshift32.mixed(this.#options.seed);
  }

  /** True when the options damage nothing, so the faults can be left out. */
  static isNone(options: FaultOptions): boolean {
    return (
      !options.dropRate &&
      !options.burstRate &&
      !options.portRate &&
      !options.duplicateRate &&
      !options.reorderRate &&
      !(options.delayRate && options.delayMs)
    );
  }

  /**
   * One frame from the wire, which arrived at `arrivedAt` (the kernel's
   * receive time on the caller's clock; `now` when unknown). The frame must
   * not be reused by the caller: it may be held.
   */
  admit(frame: Uint8Array, now: number, arrivedAt = now): void {
    if (peekFrameType(frame) !== FrameType.Data) {
      this.#ready.push(frame);
      return;
    }
    // The same draws per frame whatever happens, so each fault's pattern depends only on the seed.
    const drop = this.#random.fraction() < this.#options.dropRate;
    const burst = this.#random.fraction() < this.#options.burstRate;
    const duplicate = this.#random.fraction() < this.#options.duplicateRate;
    const reorder = this.#random.fraction() < this.#options.reorderRate;
    const delay = this.#random.fraction() < this.#options.delayRate;
    if (this.#burstLeft > 0 || burst) {
      this.#burstLeft = this.#burstLeft > 0 ? this.#burstLeft - 1 : this.#options.burstLength - 1;
      this.counters.burstDropped++;
      return;
    }
    if (drop) {
      this.counters.dropped++;
      return;
    }
    let due = now;
    if (this.#port) {
      const leaves = this.#port.offer(frame.length, arrivedAt);
      if (leaves === null) {
        this.counters.portDropped++;
        return;
      }
      // Never held longer than its time in the queue from now, whatever the two clocks say.
      due = Math.min(leaves, now + (leaves - arrivedAt));
    }
    const inFlight = { frame, due, duplicate, reorder, delay };
    if (due > now || this.#departing.length > 0) this.#departing.push(inFlight);
    else this.#pass(inFlight, now);
  }

  /** The next frame to hand to the sled now, or null. */
  take(now: number): Uint8Array | null {
    while (this.#departing.length > 0 && this.#departing[0]!.due <= now) this.#pass(this.#departing.shift()!, now);
    while (this.#late.length > 0 && this.#late[0]!.due <= now) this.#ready.push(this.#late.shift()!.frame);
    if (this.#held && now - this.#heldSince >= REORDER_HOLD_MS) {
      this.#ready.push(this.#held);
      this.#held = null;
    }
    return this.#ready.shift() ?? null;
  }

  /** The earliest time a held frame becomes due (Infinity when none is held): when to call `take` next. */
  nextDue(): number {
    if (this.#ready.length > 0) return Number.NEGATIVE_INFINITY;
    return Math.min(
      this.#departing[0]?.due ?? Number.POSITIVE_INFINITY,
      this.#late[0]?.due ?? Number.POSITIVE_INFINITY,
      this.#held ? this.#heldSince + REORDER_HOLD_MS : Number.POSITIVE_INFINITY,
    );
  }

  /** A frame past loss and the port: duplicate, reorder or delay it as drawn, or make it ready. */
  #pass({ frame, duplicate, reorder, delay }: InFlight, now: number): void {
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
}
