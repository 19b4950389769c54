/**
 * The emulated sled's serial console, modelled in time. The kernel thread
 * that takes frames off the receive queue also prints, and at this point of
 * boot the console is a serial line whose output it waits for (netboot.md,
 * "The console"). It prints `dropped data packet for offset N` for every DATA
 * from its server that is not in a slot (a copy of a frame it already has, or
 * of a finished batch) and a status line once a second while receiving. Each
 * line keeps the sled busy for its serial time (10 bits a byte); frames
 * arriving meanwhile wait in an unbounded queue and are taken in order once
 * it is done, and no READ (nor re-ask) goes out until then. So copies a
 * server sends cost the sled time, and a burst of them delays its next READ,
 * as on a real sled. The queue is modelled in time, not by blocking a thread,
 * so many sleds on one thread each print at their own pace.
 *
 * A console of 0 baud is free: it counts its lines and never keeps the sled
 * busy. The client (client.ts) decides what is printed when; this module
 * keeps the clock of the serial line and the frames waiting behind it.
 */

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

/**
 * One sled's serial console and the frames queued behind it (see the module
 * comment). Times are the caller's clock, in milliseconds.
 *
 * @example
 * const console = new SerialConsole(115_200);
 * console.printDropLine(now);
 * if (console.printing(now)) console.hold(frame, now); // taken by a later drain()
 */
export class SerialConsole {
  /** Serial time of a drop line and of a status line (0: a free console). */
  readonly #dropLineMs: number;
  readonly #statusLineMs: number;
  /** The console prints until then; frames wait meanwhile. */
  #busyUntil = Number.NEGATIVE_INFINITY;
  /** Frames that arrived while the console printed, with their arrival time, taken from #queueHead on. */
  #queue: { frame: Uint8Array; at: number }[] = [];
  #queueHead = 0;
  #nextStatusAt = Number.POSITIVE_INFINITY;
  #lines = 0;
  #busyMs = 0;

  /** A console of `baud` (10 bits a byte); 0 for one that costs nothing. */
  constructor(baud: number) {
    this.#dropLineMs = consoleLineMs(DROP_LINE_BYTES, baud);
    this.#statusLineMs = consoleLineMs(STATUS_LINE_BYTES, baud);
  }

  /** Lines printed so far. */
  get lines(): number {
    return this.#lines;
  }

  /** Milliseconds the sled spent waiting for the lines (0 with a free console). */
  get busyMs(): number {
    return this.#busyMs;
  }

  /** When the frames queued behind the console can be taken; +Infinity when none wait. */
  get queueDueAt(): number {
    return this.#queueHead < this.#queue.length ? this.#busyUntil : Number.POSITIVE_INFINITY;
  }

  /** The console is still printing at `now`, or frames wait behind it. */
  printing(now: number): boolean {
    return now < this.#busyUntil || this.#queueHead < this.#queue.length;
  }

  /** Queue a copy of `frame`, which arrived at `now` while the console printed (the caller may reuse `frame`). */
  hold(frame: Uint8Array, now: number): void {
    this.#queue.push({ frame: frame.slice(), at: now });
  }

  /**
   * Hand the queued frames whose turn has come by `now` to `take`, in order,
   * each at the time the console let it through; `take` returns false when
   * the sled is done, and the rest of the queue is dropped.
   */
  drain(now: number, take: (frame: Uint8Array, at: number) => boolean): void {
    let going = true;
    while (going && this.#queueHead < this.#queue.length && this.#busyUntil <= now) {
      const { frame, at } = this.#queue[this.#queueHead++]!;
      going = take(frame, Math.max(at, this.#busyUntil));
    }
    if (this.#queueHead >= this.#queue.length || !going) {
      this.#queue = [];
      this.#queueHead = 0;
    }
  }

  /** Print `dropped data packet for offset N`, from `at` or once the line before it is out. */
  printDropLine(at: number): void {
    this.#print(this.#dropLineMs, at);
  }

  /** Receiving begins at `now`: the first status line is due a second later. */
  startStatus(now: number): void {
    this.#nextStatusAt = now + STATUS_INTERVAL_MS;
  }

  /** Receiving is over: no more status lines. */
  stopStatus(): void {
    this.#nextStatusAt = Number.POSITIVE_INFINITY;
  }

  /** Print the status line if its second has come by `now` (one line for all the seconds missed); true if it did. */
  printStatusIfDue(now: number): boolean {
    if (now < this.#nextStatusAt) return false;
    this.#nextStatusAt += STATUS_INTERVAL_MS * Math.max(1, Math.ceil((now - this.#nextStatusAt) / STATUS_INTERVAL_MS));
    this.#print(this.#statusLineMs, now);
    return true;
  }

  /** Print one line: the receive loop waits for it (a free console counts the line only). */
  #print(lineMs: number, at: number): void {
    this.#lines++;
    if (lineMs === 0) return;
    this.#busyUntil = Math.max(this.#busyUntil, at) + lineMs;
    this.#busyMs += lineMs;
  }
}
