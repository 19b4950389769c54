/**
 * How the boot server serves each kind of image: the same sample pool as a
 * plain, a zlib and a zstd image (all made by `bun apps/mkimage.ts`), one
 * sled at a time over a veth pair. Needs root; `bun run bench:netboot-images`,
 * or as the "images" rows of `bun run bench:netboot` (both call imageRows).
 *
 *   bun bench/netboot-images.ts [--image-mib 256] [--runs 3] [--veth-prefix rbi]
 *
 * Each run starts `bun apps/bootserver.ts LINK IMAGE any` and, from the
 * moment it prints "serving on", plays a sled here: HELLO every 50 ms (a
 * real sled says it every 4 s, which would round the figure to 4 s), the
 * first READ of a batch, then the time its first DATA arrives. Then the sled
 * emulator `bun apps/sled.ts` boots the whole image from the same server and
 * checks its SHA-256; its rate (MB = 10^6 bytes per second, from the OFFER
 * to FINISHED) is the boot rate. Medians over the runs.
 *
 * Rows, ours against the named peer in the same run:
 * - zstd boot rate against the same pool served plain: goal at least 90%;
 *   and the server's CPU time during that boot (user + system, all threads,
 *   from /proc), since on a busy machine the rate follows the CPU it costs;
 * - zlib boot rate against plain: the image is served while it inflates,
 *   which should cost the boot nothing;
 * - zlib's first DATA after the server is ready, against plain's: goal
 *   within 300 ms (the server no longer inflates the pool before answering).
 * The machine has 2 cores shared with whatever else runs: figures are
 * indicative.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, type VethPair, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  BROADCAST_MAC,
  decodeFrame,
  encodeFrame,
  parseMac,
  READ_SLOTS,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import type { EmulatedSledReport } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { type BenchRow, goal, printRows } from "./measure.ts";
import { runMkimage } from "./netboot-run.ts";
import { processCpuSeconds, watchLines } from "./server-process.ts";

/** What the image rows are given when no one says otherwise. */
export const IMAGE_DEFAULTS = { imageMib: 256, runs: 3 };
/** The goals for serving compressed images. */
const GOAL_ZSTD_SHARE = 0.9;
const GOAL_FIRST_DATA_MS = 300;
/** The sled this script plays until the first DATA. */
const SCRIPTED_SLED = parseMac("02:5e:b5:00:0f:02")!;
const SCRIPTED_HELLO_MS = 50;

interface Run {
  /** From the "serving on" line to the scripted sled's first DATA. */
  firstDataMs: number;
  /** The emulator's whole boot, MB/s; NaN when it did not boot. */
  megabytesPerSecond: number;
  /** User + system CPU seconds of the server (all threads) while the emulator booted. */
  bootCpuSeconds: number;
}

/** The first frame of `type` addressed to the scripted sled, waiting at most `ms`. */
async function frameFor(link: PcapLink, type: string, ms: number) {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    const bytes = link.next();
    const decoded = bytes && decodeFrame(bytes);
    if (decoded?.ok && decoded.frame.message.type === type && sameMac(decoded.frame.destination, SCRIPTED_SLED))
      return decoded.frame;
    if (!bytes) await Bun.sleep(0);
  }
  return null;
}

async function serveOnce(serverLink: string, sledLink: string, image: string, checksumFile: string): Promise<Run> {
  const link = PcapLink.open(sledLink, { timeoutMs: 1 });
  // No record of offers: each run's link is new, and a file for each would be left behind in /var/lib.
  const server = Bun.spawn(["bun", join(ROOT, "apps/bootserver.ts"), "--no-state-dir", serverLink, image, "any"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  try {
    await watchLines(server.stdout, /^serving on /).ready;
    const ready = performance.now();
    const hello = encodeFrame(BROADCAST_MAC, SCRIPTED_SLED, { type: "hello", text: new TextEncoder().encode("bench") });
    let offer = null;
    while (!offer) {
      if (performance.now() - ready > 30_000) throw new Error("no OFFER within 30 s");
      link.inject(hello);
      offer = await frameFor(link, "offer", SCRIPTED_HELLO_MS);
    }
    const slots = new BigUint64Array(READ_SLOTS).map((_, slot) => BigInt(slot * 1024));
    link.inject(encodeFrame(offer.source, SCRIPTED_SLED, { type: "read", count: BigInt(READ_SLOTS), slots }));
    if (!(await frameFor(link, "data", 30_000))) throw new Error("no DATA within 30 s");
    const firstDataMs = performance.now() - ready;
    link.inject(encodeFrame(offer.source, SCRIPTED_SLED, { type: "finished" }));
    const cpuBefore = await processCpuSeconds(server.pid);
    const sled = Bun.spawn(
      ["bun", join(ROOT, "apps/sled.ts"), sledLink, "--checksum-file", checksumFile, "--json", "--timeout", "600"],
      { stdout: "pipe", stderr: "inherit" },
    );
    const reports = (await new Response(sled.stdout).text())
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as EmulatedSledReport);
    await sled.exited;
    const bootCpuSeconds = (await processCpuSeconds(server.pid)) - cpuBefore;
    const booted = reports.length === 1 && reports[0]!.outcome === "booted";
    return { firstDataMs, megabytesPerSecond: booted ? reports[0]!.megabytesPerSecond : NaN, bootCpuSeconds };
  } finally {
    link.close();
    server.kill("SIGTERM");
    await server.exited;
  }
}

function median(numbers: number[]): number {
  const sorted = [...numbers].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const KINDS = [
  { name: "plain", flags: [] as string[] },
  { name: "zlib", flags: ["-z"] },
  { name: "zstd", flags: ["--zstd"] },
] as const;

/**
 * The image rows: the sample pool and its three images written to `dir`,
 * each served `runs` times from `pair.a` to a sled on `pair.b`; a heading
 * that says what was measured, and the rows to print under it.
 *
 * @example const { heading, rows } = await imageRows(pair, dir, IMAGE_DEFAULTS);
 */
export async function imageRows(
  pair: VethPair,
  dir: string,
  { imageMib, runs }: { imageMib: number; runs: number },
): Promise<{ heading: string; rows: BenchRow[] }> {
  const pool = join(dir, "pool.raw");
  await writeSamplePool(pool, imageMib * MIB);
  for (const { name, flags } of KINDS) {
    runMkimage(pool, join(dir, `${name}.img`), ["-O", join(dir, `${name}.csum`), ...flags]);
  }
  const results = new Map<string, Run[]>(KINDS.map(({ name }) => [name, []]));
  // Interleaved, so load from the rest of the machine falls on every kind alike.
  for (let run = 0; run < runs; run++) {
    for (const { name } of KINDS) {
      results.get(name)!.push(await serveOnce(pair.a, pair.b, join(dir, `${name}.img`), join(dir, `${name}.csum`)));
    }
  }
  const rate = (name: string) => median(results.get(name)!.map((run) => run.megabytesPerSecond));
  const firstData = (name: string) => median(results.get(name)!.map((run) => run.firstDataMs));
  const cpu = (name: string) => median(results.get(name)!.map((run) => run.bootCpuSeconds));
  const mbps = (value: number) => `${value.toFixed(1)} MB/s`;
  const ms = (value: number) => `${value.toFixed(0)} ms`;
  const heading = `boot server, ${imageMib} MiB sample pool as plain, zlib and zstd images, one sled, median of ${runs} runs`;
  const rows: BenchRow[] = [
    {
      name: "netboot of a zstd image vs the same pool plain: boot rate",
      ours: mbps(rate("zstd")),
      peer: mbps(rate("plain")),
      ratio: goal(
        rate("zstd") >= GOAL_ZSTD_SHARE * rate("plain"),
        `${((100 * rate("zstd")) / rate("plain")).toFixed(0)}% of plain, goal ${100 * GOAL_ZSTD_SHARE}%`,
      ),
    },
    {
      name: "netboot of a zstd image vs the same pool plain: server CPU",
      ours: `${cpu("zstd").toFixed(2)} s`,
      peer: `${cpu("plain").toFixed(2)} s`,
      ratio: `${((100 * cpu("zstd")) / cpu("plain")).toFixed(0)}% of plain's (decompressing is the difference)`,
    },
    {
      name: "netboot of a zlib image vs the same pool plain: boot rate",
      ours: mbps(rate("zlib")),
      peer: mbps(rate("plain")),
      ratio: `${((100 * rate("zlib")) / rate("plain")).toFixed(0)}% of plain`,
    },
    {
      name: "first DATA after the server is ready: zlib image vs plain",
      ours: ms(firstData("zlib")),
      peer: ms(firstData("plain")),
      ratio: goal(firstData("zlib") <= GOAL_FIRST_DATA_MS, `goal within ${GOAL_FIRST_DATA_MS} ms`),
    },
    {
      name: "first DATA after the server is ready: zstd image vs plain",
      ours: ms(firstData("zstd")),
      peer: ms(firstData("plain")),
      ratio: "",
    },
  ];
  return { heading, rows };
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      "image-mib": { type: "string", default: String(IMAGE_DEFAULTS.imageMib) },
      runs: { type: "string", default: String(IMAGE_DEFAULTS.runs) },
      "veth-prefix": { type: "string", default: "rbi" },
    },
  });
  const raw = canUseRawNetwork();
  if (!raw.ok) {
    console.error(`bench:netboot-images skipped: ${raw.why}`);
    process.exit(0);
  }
  const dir = await mkdtemp(join(tmpdir(), "bench-netboot-images-"));
  try {
    const options = { imageMib: Number(values["image-mib"]), runs: Number(values.runs) };
    const { heading, rows } = await withVethPair((pair) => imageRows(pair, dir, options), values["veth-prefix"]);
    console.log(heading);
    printRows(rows);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
