/**
 * Named numbers in a SharedArrayBuffer: one thread counts, others read the
 * same memory whenever they like, so progress and statistics cross threads
 * without a message per event. Each counter is a float64 (exact up to 2^53),
 * written by one thread only; an aligned 8-byte store is not torn on the
 * platforms Bun runs on, so a reader sees the old value or the new one.
 */

/**
 * Counters named by `names`, over a new buffer or one made by another thread.
 *
 * @example
 * const counters = new SharedCounters(["frames", "resets"] as const);
 * worker.postMessage({ counters: counters.buffer }); // the worker wraps the same buffer
 * counters.add("frames");
 * counters.get("frames"); // 1
 */
export class SharedCounters<Name extends string> {
  readonly buffer: SharedArrayBuffer;
  readonly #values: Float64Array;
  readonly #index: Record<Name, number>;

  constructor(
    readonly names: readonly Name[],
    buffer?: SharedArrayBuffer,
  ) {
    this.buffer = buffer ?? new SharedArrayBuffer(names.length * Float64Array.BYTES_PER_ELEMENT);
    this.#values = new Float64Array(this.buffer, 0, names.length);
    this.#index = Object.fromEntries(names.map((name, index) => [name, index])) as Record<Name, number>;
  }

  get(name: Name): number {
    return this.#values[this.#index[name]]!;
  }

  set(name: Name, value: number): void {
    this.#values[this.#index[name]] = value;
  }

  add(name: Name, amount = 1): void {
    this.#values[this.#index[name]]! += amount;
  }

  /** Every counter back to 0. */
  clear(): void {
    this.#values.fill(0);
  }

  /** All counters as a plain object, e.g. for a summary line. */
  snapshot(): Record<Name, number> {
    return Object.fromEntries(this.names.map((name) => [name, this.get(name)])) as Record<Name, number>;
  }
}

/** The counters of a table of names (`as const`). */
export type CountersOf<Names extends readonly string[]> = SharedCounters<Names[number]>;

/**
 * A maker of counters for one table of names, over a new buffer or one made
 * by another thread: each thread that counts or reads wraps the same memory.
 *
 * @example
 * const NAMES = ["frames", "resets"] as const;
 * const makeCounters = countersOf(NAMES);
 * const counters = makeCounters(); // in the main thread
 * const same = makeCounters(counters.buffer); // in a worker, over the buffer posted to it
 */
export function countersOf<Name extends string>(names: readonly Name[]) {
  return (buffer?: SharedArrayBuffer): SharedCounters<Name> => new SharedCounters(names, buffer);
}
