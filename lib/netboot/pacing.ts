/**
 * Pacing: never send a sled DATA faster than its port takes it.
 *
 * A session answers a READ with 128 DATA frames (about 135 KB). Sent as one
 * burst from a server on a faster link, they reach the switch port in front
 * of a gigabit sled far quicker than it drains, and a port with a small
 * buffer (64 KiB is common) drops the tail of every batch; the sled then
 * waits a second before it asks again (netboot.md, "What the sled does").
 * So a session sends each batch in equal chunks of at most
 * PACING_CHUNK_FRAMES frames (one sendmmsg each, under 48 KB, which a 64 KiB
 * port buffer holds whole) and waits between chunks until a pacing clock
 * says the wire has carried the previous one. Fewer, larger chunks mean
 * fewer waits: each costs a futex wait and a wake-up, about 25 us of CPU.
 *
 * The clock counts what each frame really costs on the wire: its bytes
 * padded to the 60-byte minimum, then FCS, preamble and inter-frame gap. A
 * 1024-byte DATA takes 1082 byte times, so gigabit carries about 118 MB/s of
 * image. Waiting uses Atomics.wait with a timeout (a futex: the thread sleeps,
 * it does not spin, and wakes within tens of microseconds rather than the
 * millisecond of a timer). A wait that oversleeps is made up on the next
 * chunk, since each chunk's start is the previous start plus its cost, not
 * the moment the wait ended; a link idle between batches earns no credit, so
 * a batch never starts with a burst larger than one chunk.
 *
 * A server-wide cap (`--link-rate`) is one more clock in shared memory that
 * every session reserves its chunks on, with compare-and-swap, so the sum of
 * all sessions stays under it.
 */

import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import { wireBytes } from "@ramdisk-tools/wire/rate.ts";

/** Frames per sendmmsg at most when pacing: 44 DATA frames are 46.5 KB, inside a 64 KiB port buffer. */
export const PACING_CHUNK_FRAMES = 44;
/** A wait shorter than this is not worth a system call; the next chunk makes it up. */
const MIN_WAIT_MS = 0.05;

/**
 * A pacing clock in shared memory: when the server's link is next free, for
 * every session at once (`--link-rate`).
 *
 * @example const link = new LinkClock(1e10); worker.postMessage({ linkClock: link.buffer });
 */
export class LinkClock {
  readonly buffer: SharedArrayBuffer;
  readonly #nextFree: BigInt64Array;

  constructor(
    readonly bitsPerSecond: number,
    buffer?: SharedArrayBuffer,
  ) {
    this.buffer = buffer ?? new SharedArrayBuffer(8);
    this.#nextFree = new BigInt64Array(this.buffer);
  }

  /**
   * Reserve the link for `bits` starting no earlier than `earliestMs`
   * (shared clock); the start of the reservation.
   */
  reserve(bits: number, earliestMs: number): number {
    // Microseconds as integers, so compare-and-swap works on exact values.
    const earliest = BigInt(Math.round(earliestMs * 1000));
    const cost = BigInt(Math.round((bits / this.bitsPerSecond) * 1e6));
    for (;;) {
      const old = Atomics.load(this.#nextFree, 0);
      const start = old > earliest ? old : earliest;
      if (Atomics.compareExchange(this.#nextFree, 0, old, start + cost) === old) return Number(start) / 1000;
    }
  }
}

/**
 * Sends batches of frames no faster than `bitsPerSecond` (null: unpaced),
 * and under a shared LinkClock when there is one (see the module comment).
 *
 * @example
 * const pacer = new Pacer(1e9, null);
 * const waitedMs = pacer.send(frames, (chunk) => link.injectBatch(chunk));
 */
export class Pacer {
  readonly #sleeper = new Int32Array(new SharedArrayBuffer(4));
  /** When this sled's wire is next free, on the shared clock. */
  #nextFree = 0;

  constructor(
    readonly bitsPerSecond: number | null,
    readonly link: LinkClock | null,
  ) {}

  /** True when sending is paced at all. */
  get paced(): boolean {
    return this.bitsPerSecond !== null || this.link !== null;
  }

  /** Send `frames` through `inject` in paced chunks; the milliseconds spent waiting for the clock. */
  send(frames: readonly Uint8Array[], inject: (frames: readonly Uint8Array[]) => void): number {
    if (!this.paced) {
      inject(frames);
      return 0;
    }
    let waited = 0;
    // A batch of 128 goes as 43 + 43 + 42 rather than 44 + 44 + 40: the same waits, the smallest largest burst.
    const chunkFrames = Math.ceil(frames.length / Math.ceil(frames.length / PACING_CHUNK_FRAMES));
    for (let from = 0; from < frames.length; from += chunkFrames) {
      const chunk = frames.slice(from, from + chunkFrames);
      let bits = 0;
      for (const frame of chunk) bits += wireBytes(frame.length) * 8;
      const now = nowMs();
      let start = Math.max(this.#nextFree, now);
      if (this.link) start = this.link.reserve(bits, start);
      const wait = start - now;
      if (wait > MIN_WAIT_MS) {
        Atomics.wait(this.#sleeper, 0, 0, wait);
        waited += wait;
      }
      inject(chunk);
      this.#nextFree = this.bitsPerSecond === null ? start : start + (bits / this.bitsPerSecond) * 1000;
    }
    return waited;
  }
}
