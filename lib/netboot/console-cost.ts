/**
 * What one copy of a DATA frame costs a sled, learnt from the sled itself.
 *
 * The sled kernel prints a line on its console for every DATA frame it did
 * not ask for (a copy of a frame it has), from the thread that takes frames
 * off its queue, and waits for the serial line to print it: about 47 ms at
 * 9600 baud, 3.9 ms at 115,200, 0.15 ms at 3 Mbaud, nothing on a fast
 * console (netboot.md, "The console"). Meanwhile nothing it receives is
 * taken and no READ goes out. The server cannot read the sled's console, so
 * it measures the cost per line where it shows: in the time the sled takes
 * to answer.
 *
 * The measure is a probe: an answer to a full batch carries `n` copies of
 * frames the sled was just sent, placed before the batch's last frame. The
 * sled takes frames in order, so it prints the n lines before it gets to
 * the last frame, and its READ of the next batch comes n lines later than
 * usual. "Usual" is the median of the sled's recent plain round trips (last
 * DATA to next READ, answers without copies), and their spread (1.5 times
 * the median absolute deviation, at least JITTER_FLOOR_MS) is the noise a
 * probe must rise above. A probe of n copies whose READ came D later than
 * the median measures D / n a line. The cost per line is the median of
 * those rates, each counted n times (a large probe outweighs a small one,
 * and one probe that met a status line or a stall of the host does not move
 * it), and its upper bound adds the noise 2·spread / √(copies probed).
 * Probes start small (one copy: 47 ms on the slowest console) and grow,
 * each as large as PROBE_BUDGET_MS of console time at the bound allows, or
 * twice the one before where the measure (not the bound) says that fits
 * the budget (so a bound that noise holds up cannot keep them small); they
 * stop once the measure is good to about half its value (after 3 probes at
 * least), after MAX_PROBES, or once MAX_PROBE_COPIES copies say the console
 * is too fast to matter.
 *
 * One probe of one copy goes out with the first batch. With no plain round
 * trip to compare yet, its whole round trip counts as console time: a
 * bound, too high if anything (the first round trip of a boot also runs
 * long while threads and caches warm up), so copies start out paced too
 * slowly rather than too fast, and a slow console is told at once (47 ms
 * stands out of any round trip). The rest are sent only once the sled has
 * shown loss or lateness (`lateSeen`), every other batch, against the
 * median of the plain round trips between them, and they soon outweigh the
 * first; a clean boot costs its sled one console line. Until the first
 * probe's READ, a late READ draws no copies: the sled re-asks after its
 * second, as it would from a
 * server that never sends copies.
 */

/** Below this a spread of round trips is not told from timer resolution on a busy host. */
export const JITTER_FLOOR_MS = 0.25;
/** Console time one probe may cost at the upper bound. */
export const PROBE_BUDGET_MS = 16;
/** Copies in one probe at most (half a batch: the rest carries the sled's own frames). */
export const MAX_PROBE_SIZE = 64;
/** Probes at most, at least before the measure counts as precise, and copies in all after which a console is too fast to matter. */
export const MAX_PROBES = 8;
const MIN_PROBES = 3;
export const MAX_PROBE_COPIES = 128;
/** Plain round trips kept for the median and spread, and needed before the probes after the first. */
const PLAIN_SAMPLES = 16;
const MIN_PLAIN_SAMPLES = 3;
/** Stop probing once the bound is within this share of the estimate. */
const PRECISION = 0.5;

/**
 * One sled's console cost per line, as far as its round trips tell (see the
 * module comment).
 *
 * @example
 * const cost = new ConsoleCost();
 * cost.plain(1.2); cost.plain(1.1); cost.plain(1.3);
 * const n = cost.probeSize(false); // 1: the first probe
 * cost.probe(5.2, n); // its READ came 5.2 ms after the last DATA
 * cost.perLineMs; // about 4: a 115,200-baud console
 */
export class ConsoleCost {
  readonly #plain: number[] = [];
  /** Each probe's excess round trip per copy, and its copies (its weight). */
  readonly #rates: { rate: number; copies: number }[] = [];
  #copies = 0;
  #done = false;
  // Worked out when a sample comes, not on every READ that asks (a session asks several times a READ).
  #baseline: number | null = null;
  #fastest = Number.POSITIVE_INFINITY;
  #jitter = JITTER_FLOOR_MS;
  #perLine: number | null = null;

  /** A plain round trip: last DATA of an answer without copies to the sled's next READ. */
  plain(roundTripMs: number): void {
    this.#plain.push(roundTripMs);
    if (this.#plain.length > PLAIN_SAMPLES) this.#plain.shift();
    const middle = median(this.#plain);
    this.#baseline = middle;
    this.#fastest = Math.min(this.#fastest, roundTripMs);
    this.#jitter =
      this.#plain.length < MIN_PLAIN_SAMPLES
        ? JITTER_FLOOR_MS
        : Math.max(JITTER_FLOOR_MS, 1.5 * median(this.#plain.map((rtt) => Math.abs(rtt - middle))));
  }

  /** The median plain round trip, or null before the first. */
  get baselineMs(): number | null {
    return this.#baseline;
  }

  /** The shortest plain round trip seen, 0 before the first. */
  get fastestMs(): number {
    return Number.isFinite(this.#fastest) ? this.#fastest : 0;
  }

  /** The spread of plain round trips: noise a probe must rise above. */
  get jitterMs(): number {
    return this.#jitter;
  }

  /** Milliseconds a line costs the sled, as measured; null before any probe. */
  get perLineMs(): number | null {
    return this.#perLine;
  }

  /** At most this many milliseconds a line, with the noise taken into account; null before any probe. */
  get upperMs(): number | null {
    const measured = this.perLineMs;
    return measured === null ? null : measured + this.#noisePerLine();
  }

  /** Probes whose round trip was measured. */
  get probes(): number {
    return this.#rates.length;
  }

  /** True once probing has stopped (the estimate is good enough). */
  get settled(): boolean {
    return this.#done;
  }

  /**
   * How many copies the next answer to a full batch should carry as a probe,
   * 0 for none: the first after one plain round trip, the others only after
   * the sled showed loss or lateness. Each is as large as the budget allows
   * at the upper bound, or twice the one before where the measure says that
   * fits the budget: a bound that noise holds up still lets probes grow.
   */
  probeSize(lateSeen: boolean): number {
    if (this.#done) return 0;
    if (this.#rates.length === 0) return 1;
    if (!lateSeen || this.baselineMs === null) return 0;
    const budget = Math.max(1, Math.floor(PROBE_BUDGET_MS / Math.max(this.upperMs!, 1e-3)));
    const doubled = 2 * this.#rates.at(-1)!.copies;
    const cheap = doubled * this.perLineMs! <= PROBE_BUDGET_MS;
    return Math.min(MAX_PROBE_SIZE, cheap ? Math.max(doubled, budget) : budget);
  }

  /** The round trip of an answer that carried `copies` probe copies. */
  probe(roundTripMs: number, copies: number): void {
    if (copies <= 0) return;
    // Before any plain round trip the whole round trip counts: a bound, too high if anything.
    const baseline = this.baselineMs ?? 0;
    this.#rates.push({ rate: (roundTripMs - baseline) / copies, copies });
    this.#copies += copies;
    this.#perLine = Math.max(0, weightedMedian(this.#rates));
    const measured = this.perLineMs!;
    const precise =
      this.#rates.length >= MIN_PROBES &&
      this.#plain.length >= MIN_PLAIN_SAMPLES &&
      this.#noisePerLine() <= PRECISION * measured;
    this.#done = precise || this.#rates.length >= MAX_PROBES || this.#copies >= MAX_PROBE_COPIES;
  }

  /** How far noise may move the measure: twice the spread, over the copies probed so far. */
  #noisePerLine(): number {
    return (2 * this.jitterMs) / Math.sqrt(this.#copies);
  }
}

/** The median of the rates, each counted as often as its copies: a big probe outweighs a small one, and one probe that met a status line or a stall does not move it. */
function weightedMedian(rates: readonly { rate: number; copies: number }[]): number {
  const sorted = [...rates].sort((a, b) => a.rate - b.rate);
  const half = sorted.reduce((sum, each) => sum + each.copies, 0) / 2;
  let seen = 0;
  for (const each of sorted) {
    seen += each.copies;
    if (seen >= half) return each.rate;
  }
  return sorted.at(-1)!.rate;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
