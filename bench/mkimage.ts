/**
 * mkimage and lookimage against the tools a person would otherwise use, on
 * the same data in the same run (`bun run bench:mkimage`).
 *
 * Two inputs, each benchmarked in full, because how our compressors compare
 * with Debian's depends on the data (Bun's zlib used 2.2x less CPU than
 * `pigz -p1` on a tar of /usr, about as much on the generated sample):
 *
 * - "generated sample": lab/sample-pool.ts's seeded pool-like records
 *   (zeros, binaries, text, incompressible bytes), deterministic.
 * - "real files": a tar of /usr/bin and /usr/lib/x86_64-linux-gnu, cut to
 *   the same size; skipped, with a note, where those are missing.
 *
 * Both are 256 MiB unless --size (or BENCH_SIZE_MIB) says otherwise;
 * --input benchmarks one file of your own instead (a real pool, say). Each
 * row names the peer and prints ours, the peer's, and the ratio:
 *
 * - mkimage -z vs `pigz -9 -z -p JOBS` (same threads): time, CPU, peak
 *   memory, size. Goals: 2x as fast, within 0.5% in size, under
 *   512 MiB.
 * - mkimage (stored) vs `cp` + `sync` + `sha256sum`.
 * - lookimage vs `pigz -dz | sha256sum` (zlib image; goal 1.5x) and vs
 *   `sha256sum` (stored), from bench/lookimage-rows.ts.
 * - mkimage --zstd vs `zstd -T JOBS -LEVEL` (same threads and level): time
 *   (goal: within 10%), CPU, size (goal: no larger); and vs
 *   our own -z: time (goal: 8x as fast) and size (goal: no larger).
 * - lookimage on the zstd image vs `zstd -d | sha256sum` (goal: 2x as fast)
 *   and vs Bun's own decompress + SHA-256 floor (bench/verify-floor.ts; goal:
 *   at most 1.5x its time).
 *
 * mkimage syncs its output before renaming it into place, so each peer's
 * output is synced too (`sync FILE`) and the comparison is like for like.
 * Every command first waits for a global `sync` (bench/measure.ts). Long
 * runs (zlib) run once; short ones run RACE_ROUNDS times alternating with
 * their peer, and the fastest of each counts. The machine is shared, so the
 * load average is printed at the start and the end; CPU rows say more than
 * wall time when it is high.
 *
 *   bun bench/mkimage.ts [--size MIB] [--input RAW] [--jobs N] [--level N]
 */

import { existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ZSTD_DEFAULT_LEVEL } from "@ramdisk-tools/image/zstd-seekable.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { formatBytes } from "@ramdisk-tools/progress/progress.ts";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { lookimageRows, lookimageZstdRows } from "./lookimage-rows.ts";
import { type BenchRow, type Measured, measure, printRows, race, sizeRow, timeRows } from "./measure.ts";

const MKIMAGE = ["bun", join(ROOT, "apps", "mkimage.ts")];
const SEED = 1;
const RACE_ROUNDS = 3;
/** The trees the "real files" input is a tar of: executables and shared libraries, as a pool holds. */
const REAL_FILE_TREES = ["/usr/bin", "/usr/lib/x86_64-linux-gnu"];
/** The speed and size goals of the zlib and zstd images (README.md, Benchmarks). */
const GOALS = {
  zlibSpeedup: 2,
  zlibSizePercent: 0.5,
  peakRss: 512 * MIB,
  /** Within 10% of the zstd CLI's time: at least 1/1.1 of its speed ... */
  zstdVsCliSpeedup: 1 / 1.1,
  /** ...at no larger size. */
  zstdVsCliSizePercent: 0,
  zstdVsZlibSpeedup: 8,
  zstdVsZlibSizePercent: 0,
};

/** One file to benchmark, and what it is. */
interface BenchInput {
  label: string;
  raw: string;
  rawSize: number;
}

/** What every row group gets: the input, a scratch directory, and what earlier groups made. */
interface BenchContext {
  input: BenchInput;
  scratch: string;
  jobs: number;
  zstdLevel: number;
  /** Images made by earlier groups, for later groups to read, and what making the zlib one cost. */
  made: { zlib?: { image: string; run: Measured }; zstd?: string };
}

/** A group of rows: runs its commands and returns its lines. */
type RowGroup = (context: BenchContext) => Promise<BenchRow[]>;

/** A shell command line with its arguments passed as $1, $2, ... (no quoting needed). */
function shell(script: string, ...args: string[]): string[] {
  return ["sh", "-c", script, "sh", ...args];
}

async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}

async function mkimageRows({ input, scratch, jobs, made }: BenchContext): Promise<BenchRow[]> {
  const image = join(scratch, "ours-z.img");
  const ours = await measure([
    ...MKIMAGE,
    "-i",
    input.raw,
    "-o",
    image,
    "-O",
    join(scratch, "ours.csum"),
    "-s",
    "8192",
    "-z",
    "--jobs",
    String(jobs),
  ]);
  const pigzOut = join(scratch, "pigz.zz");
  const pigz = await measure(shell(`pigz -9 -z -p "$3" -c "$1" > "$2" && sync "$2"`, input.raw, pigzOut, String(jobs)));
  const pigzName = `pigz -9 -z -p ${jobs}`;
  const rows = [
    ...timeRows("mkimage -z", pigzName, ours, pigz, { speedup: GOALS.zlibSpeedup, peakRss: GOALS.peakRss }),
    sizeRow(
      `mkimage -z vs ${pigzName}`,
      (await fileSize(image)) - 4096,
      await fileSize(pigzOut),
      input.rawSize,
      GOALS.zlibSizePercent,
    ),
  ];
  made.zlib = { image, run: ours };
  await rm(pigzOut);

  const stored = join(scratch, "ours.img");
  const plain = await measure([...MKIMAGE, "-i", input.raw, "-o", stored, "-s", "8192"]);
  const copy = join(scratch, "cp.raw");
  const cp = await measure(shell(`cp "$1" "$2" && sync "$2" && sha256sum "$1" > /dev/null`, input.raw, copy));
  await rm(stored);
  await rm(copy);
  return [...rows, ...timeRows("mkimage (stored)", "cp + sync + sha256sum", plain, cp)];
}

async function lookimageZlibRows({ input, scratch, made }: BenchContext): Promise<BenchRow[]> {
  if (!made.zlib) throw new Error("the lookimage rows need the zlib image that mkimageRows makes");
  return await lookimageRows(scratch, input.raw, made.zlib.image);
}

async function zstdRows({ input, scratch, jobs, zstdLevel, made }: BenchContext): Promise<BenchRow[]> {
  const image = join(scratch, "ours-zstd.img");
  const cliOut = join(scratch, "cli.zst");
  const cliName = `zstd -T${jobs} -${zstdLevel}`;
  const { ours, peer } = await race(
    RACE_ROUNDS,
    [
      ...MKIMAGE,
      "-i",
      input.raw,
      "-o",
      image,
      "-O",
      join(scratch, "ours-zstd.csum"),
      "-s",
      "8192",
      "--zstd",
      "--level",
      String(zstdLevel),
      "--jobs",
      String(jobs),
    ],
    shell(`zstd -q -f -T"$3" -"$4" "$1" -o "$2" && sync "$2"`, input.raw, cliOut, String(jobs), String(zstdLevel)),
  );
  const ourPayload = (await fileSize(image)) - 4096;
  const rows = [
    ...timeRows("mkimage --zstd", cliName, ours, peer, { speedup: GOALS.zstdVsCliSpeedup }),
    sizeRow(
      `mkimage --zstd vs ${cliName}`,
      ourPayload,
      await fileSize(cliOut),
      input.rawSize,
      GOALS.zstdVsCliSizePercent,
    ),
  ];
  await rm(cliOut);
  if (made.zlib) {
    const zlibPayload = (await fileSize(made.zlib.image)) - 4096;
    rows.push(
      ...timeRows("mkimage --zstd", `our mkimage -z --jobs ${jobs}`, ours, made.zlib.run, {
        speedup: GOALS.zstdVsZlibSpeedup,
      }),
      sizeRow(`mkimage --zstd vs our mkimage -z`, ourPayload, zlibPayload, input.rawSize, GOALS.zstdVsZlibSizePercent),
    );
  }
  made.zstd = image;
  return rows;
}

async function lookimageZstdGroup({ made }: BenchContext): Promise<BenchRow[]> {
  if (!made.zstd) throw new Error("the lookimage zstd rows need the image that zstdRows makes");
  return await lookimageZstdRows(made.zstd);
}

/** The row groups, in order: later ones read the images earlier ones made. */
const ROW_GROUPS: RowGroup[] = [mkimageRows, lookimageZlibRows, zstdRows, lookimageZstdGroup];

/**
 * A tar of REAL_FILE_TREES cut to `size` bytes at `path`; or why not: none
 * of the trees is there, or the tar comes out under 1 MiB.
 */
async function writeRealFiles(path: string, size: number): Promise<BenchInput | { skipped: string }> {
  const trees = REAL_FILE_TREES.filter((tree) => existsSync(tree));
  if (trees.length === 0) return { skipped: `none of ${REAL_FILE_TREES.join(", ")} exists` };
  // head closes the pipe once it has enough, so tar may die of SIGPIPE: its status does not count.
  Bun.spawnSync(
    shell(
      `out="$1"; size="$2"; shift 2; tar -cf - "$@" 2>/dev/null | head -c "$size" > "$out"`,
      path,
      String(size),
      ...trees,
    ),
  );
  const rawSize = existsSync(path) ? await fileSize(path) : 0;
  if (rawSize < MIB) return { skipped: `the tar of ${trees.join(" and ")} came out at ${rawSize} bytes` };
  const cut =
    rawSize < size ? `, all of it (${formatBytes(rawSize)}, less than asked)` : `, cut to ${formatBytes(rawSize)}`;
  return { label: `real files: tar of ${trees.join(" and ")}${cut}`, raw: path, rawSize };
}

/** The inputs to benchmark: --input alone, or the generated sample and the real files. */
async function* inputs(scratch: string, size: number, input: string | undefined): AsyncGenerator<BenchInput> {
  if (input !== undefined) {
    yield { label: `your file ${input}`, raw: input, rawSize: await fileSize(input) };
    return;
  }
  const sample = join(scratch, "sample.raw");
  await writeSamplePool(sample, size, SEED);
  yield {
    label: `generated sample (lab/sample-pool.ts, seed ${SEED}), ${formatBytes(size)}`,
    raw: sample,
    rawSize: size,
  };
  await rm(sample);
  const real = await writeRealFiles(join(scratch, "real-files.raw"), size);
  if ("skipped" in real) console.log(`\n== real files: skipped, ${real.skipped}`);
  else yield real;
}

async function main() {
  const args = await yargs(hideBin(process.argv))
    .option("size", {
      type: "number",
      default: Number(process.env.BENCH_SIZE_MIB ?? 256),
      describe: "size of each input in MiB",
    })
    .option("input", { type: "string", describe: "benchmark this raw file instead of the sample and the real files" })
    .option("jobs", {
      type: "number",
      default: navigator.hardwareConcurrency,
      describe: "threads for mkimage, pigz and zstd",
    })
    .option("level", {
      type: "number",
      default: ZSTD_DEFAULT_LEVEL,
      describe: "zstd level for mkimage --zstd and the zstd CLI",
    })
    .strict()
    .parseAsync();
  const started = performance.now();
  const load = () =>
    loadavg()
      .map((value) => value.toFixed(2))
      .join(" ");
  console.log(
    `mkimage bench: ${args.jobs} jobs; bun ${Bun.version}; ${navigator.hardwareConcurrency} CPUs; load average ${load()} (shared machine)`,
  );
  const scratch = await mkdtemp(join(tmpdir(), "bench-mkimage-"));
  try {
    for await (const input of inputs(scratch, args.size * MIB, args.input)) {
      console.log(`\n== ${input.label}`);
      printRows([{ name: "", ours: "ours", peer: "peer", ratio: "ratio" }]);
      const context: BenchContext = { input, scratch, jobs: args.jobs, zstdLevel: args.level, made: {} };
      for (const group of ROW_GROUPS) printRows(await group(context));
      for (const image of [context.made.zlib?.image, context.made.zstd]) if (image) await rm(image, { force: true });
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  console.log(`\nbench took ${((performance.now() - started) / 1000).toFixed(0)} s; load average at the end ${load()}`);
}

await main();
