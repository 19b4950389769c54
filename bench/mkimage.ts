/**
 * mkimage against the tools a person would otherwise use, on the same data in
 * the same run (`bun run bench:mkimage`).
 *
 * The input is lib/sample-pool.ts's seeded pool-like sample (zeros,
 * binaries, text and incompressible records), 256 MiB unless --size (or
 * BENCH_SIZE_MIB) says otherwise, written to a temporary directory; --input
 * benchmarks a file of your own instead (a real pool, say). Each row runs
 * our program and a named peer as processes, one after the other, and prints
 * the ratio:
 *
 * - mkimage -z vs `pigz -9 -z -p JOBS` (same threads): time and size.
 * - mkimage (stored) vs `cp` + `sha256sum`.
 * - peak memory (maximum RSS, from /usr/bin/time) of mkimage -z.
 *
 * mkimage syncs its output before renaming it into place, so each peer's
 * output is synced too (`sync FILE`) and the comparison is like for like.
 * Every command first waits for a global `sync`, so one step's dirty pages
 * do not slow the next. The input stays in the page cache for all of them.
 *
 * Further rows go in ROW_GROUPS: lookimage (vs `pigz -dz | sha256sum`, using
 * the compressed image this bench leaves in `BenchContext.images.zlib`) and,
 * with issue 4, zstd.
 *
 *   bun bench/mkimage.ts [--size MIB] [--input RAW] [--jobs N]
 */

import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { MIB } from "../lib/format.ts";
import { formatBytes } from "../lib/progress.ts";
import { writeSamplePool } from "../lib/sample-pool.ts";

const ROOT = join(import.meta.dir, "..");
const MKIMAGE = ["bun", join(ROOT, "apps", "mkimage.ts")];
const SEED = 1;
/** Goals from issue 2: twice as fast as pigz with the same threads, within 0.5% in size, under 512 MiB. */
const GOAL_SPEEDUP = 2;
const GOAL_SIZE_PERCENT = 0.5;
const GOAL_PEAK_RSS = 512 * MIB;

/** What every row group gets: the input, a scratch directory, and images made by earlier groups. */
interface BenchContext {
  raw: string;
  rawSize: number;
  scratch: string;
  jobs: number;
  /** Images made by earlier rows, for later groups to read. */
  images: { zlib?: string };
}

/** A group of rows: runs its commands and prints its lines. */
type RowGroup = (context: BenchContext) => Promise<void>;

interface Measured {
  /** Wall-clock time. */
  seconds: number;
  /** User plus system CPU time of the command and its children, when /usr/bin/time measured it. */
  cpuSeconds?: number;
  /** Maximum resident set size in bytes, when /usr/bin/time measured it. */
  peakRss?: number;
}

const TIME = "/usr/bin/time";
const haveTime = await Bun.file(TIME).exists();

/**
 * Run a command to completion (after a global sync), failing loudly; its
 * wall and CPU time and peak RSS. CPU time says more than wall time when
 * other work shares the machine.
 */
async function measure(command: string[]): Promise<Measured> {
  Bun.spawnSync(["sync"]);
  const rssFile = join(tmpdir(), `bench-rss-${process.pid}`);
  const wrapped = haveTime ? [TIME, "-f", "%M %U %S", "-o", rssFile, ...command] : command;
  const started = performance.now();
  const run = Bun.spawnSync(wrapped, { stdout: "ignore", stderr: "pipe" });
  const seconds = (performance.now() - started) / 1000;
  if (run.exitCode !== 0) throw new Error(`${command.join(" ")} failed (${run.exitCode}): ${run.stderr.toString().trim()}`);
  if (!haveTime) return { seconds };
  const [kib, user, system] = (await Bun.file(rssFile).text()).trim().split("\n").at(-1)!.split(" ").map(Number);
  await rm(rssFile, { force: true });
  return { seconds, cpuSeconds: user! + system!, peakRss: kib! * 1024 };
}

/** A shell command line with its arguments passed as $1, $2, ... (no quoting needed). */
function shell(script: string, ...args: string[]): string[] {
  return ["sh", "-c", script, "sh", ...args];
}

async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}

function row(what: string, ours: string, peer: string, verdict: string) {
  console.log(`${what.padEnd(44)} ${ours.padStart(12)} ${peer.padStart(12)}   ${verdict}`);
}

function seconds(s: number): string {
  return `${s.toFixed(2)} s`;
}

/** The CPU-time row under a time row, when /usr/bin/time measured both. */
function cpuRow(what: string, ours: Measured, peer: Measured) {
  if (ours.cpuSeconds === undefined || peer.cpuSeconds === undefined) return;
  row(what, seconds(ours.cpuSeconds), seconds(peer.cpuSeconds), `${((100 * ours.cpuSeconds) / peer.cpuSeconds).toFixed(0)}% of the peer's CPU`);
}

function goal(met: boolean, text: string): string {
  return `${text} ${met ? "(goal met)" : "(goal NOT met)"}`;
}

async function mkimageRows(context: BenchContext) {
  const { raw, rawSize, scratch, jobs } = context;
  const image = join(scratch, "ours-z.img");
  const ours = await measure([...MKIMAGE, "-i", raw, "-o", image, "-O", join(scratch, "ours.csum"), "-s", "8192", "-z", "--jobs", String(jobs)]);
  const pigzOut = join(scratch, "pigz.zz");
  const pigz = await measure(shell(`pigz -9 -z -p "$3" -c "$1" > "$2" && sync "$2"`, raw, pigzOut, String(jobs)));
  const ourSize = (await fileSize(image)) - 4096;
  const pigzSize = await fileSize(pigzOut);
  const speedup = pigz.seconds / ours.seconds;
  const sizePercent = (100 * (ourSize - pigzSize)) / pigzSize;
  row(`mkimage -z vs pigz -9 -z -p ${jobs}: time`, seconds(ours.seconds), seconds(pigz.seconds), goal(speedup >= GOAL_SPEEDUP, `${speedup.toFixed(2)}x as fast`));
  cpuRow(`mkimage -z vs pigz -9 -z -p ${jobs}: CPU time`, ours, pigz);
  row(
    `mkimage -z vs pigz -9 -z -p ${jobs}: size`,
    formatBytes(ourSize),
    formatBytes(pigzSize),
    goal(sizePercent <= GOAL_SIZE_PERCENT, `${sizePercent >= 0 ? "+" : ""}${sizePercent.toFixed(2)}% (ratio ${(rawSize / ourSize).toFixed(2)}x vs ${(rawSize / pigzSize).toFixed(2)}x)`),
  );
  row(
    "mkimage -z: peak memory (max RSS)",
    ours.peakRss === undefined ? "n/a" : formatBytes(ours.peakRss),
    "",
    ours.peakRss === undefined ? `needs ${TIME} (apt-get install time)` : goal(ours.peakRss < GOAL_PEAK_RSS, `limit ${formatBytes(GOAL_PEAK_RSS)}`),
  );
  context.images.zlib = image;
  await rm(pigzOut);

  const stored = join(scratch, "ours.img");
  const plain = await measure([...MKIMAGE, "-i", raw, "-o", stored, "-s", "8192"]);
  const copy = join(scratch, "cp.raw");
  const cp = await measure(shell(`cp "$1" "$2" && sync "$2" && sha256sum "$1" > /dev/null`, raw, copy));
  row("mkimage vs cp + sync + sha256sum: time", seconds(plain.seconds), seconds(cp.seconds), `${(cp.seconds / plain.seconds).toFixed(2)}x as fast`);
  cpuRow("mkimage vs cp + sync + sha256sum: CPU time", plain, cp);
  await rm(stored);
  await rm(copy);
}

/**
 * The row groups, in order. lookimage rows (lookimage vs `pigz -dz |
 * sha256sum` on context.images.zlib) and zstd rows are to be added here.
 */
const ROW_GROUPS: RowGroup[] = [mkimageRows];

async function main() {
  const args = await yargs(hideBin(process.argv))
    .option("size", { type: "number", default: Number(process.env.BENCH_SIZE_MIB ?? 256), describe: "sample size in MiB" })
    .option("input", { type: "string", describe: "benchmark this raw file instead of the sample" })
    .option("jobs", { type: "number", default: navigator.hardwareConcurrency, describe: "threads for mkimage and pigz" })
    .strict()
    .parseAsync();
  const scratch = await mkdtemp(join(tmpdir(), "bench-mkimage-"));
  try {
    let raw = args.input;
    if (raw === undefined) {
      raw = join(scratch, "pool.raw");
      await writeSamplePool(raw, args.size * MIB, SEED);
    }
    const rawSize = await fileSize(raw);
    const what = args.input === undefined ? `pool-like sample (lib/sample-pool.ts, seed ${SEED})` : raw;
    console.log(`mkimage bench: ${formatBytes(rawSize)} of ${what}; ${args.jobs} jobs; bun ${Bun.version}; ${navigator.hardwareConcurrency} CPUs`);
    row("", "ours", "peer", "");
    const context: BenchContext = { raw, rawSize, scratch, jobs: args.jobs, images: {} };
    for (const group of ROW_GROUPS) await group(context);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

await main();
