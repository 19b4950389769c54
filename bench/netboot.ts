/**
 * How fast the boot server serves emulated sleds over a veth pair, and what
 * it costs in CPU. Needs root; run with `bun run bench:netboot`.
 *
 *   bun bench/netboot.ts [--sleds 1,8,32] [--image-mib 256]
 *
 * For each row the real programs run as processes, as a lab would run them:
 * `bun apps/bootserver.ts --boots N LINK IMAGE any` on one end of the pair
 * and `bun apps/sled.ts LINK --sleds N --json` on the other. Per row it
 * prints:
 * - aggregate MB/s: the image bytes of all sleds over the time until the
 *   last sled booted (MB = 10^6 bytes);
 * - slowest and fastest sled: each sled's own rate, from accepting the OFFER
 *   to FINISHED, as the emulator reports it;
 * - re-asks: slots the sleds had to ask for again (a stall shows here first);
 * - server CPU s per GiB delivered: user + system time of the server process
 *   (all its threads) spent after it was ready to serve, i.e. without loading
 *   the image, from /proc/PID/stat before and the process's own resource
 *   usage after it exits.
 * and one sled's rate against gigabit line rate with 1024-byte chunks.
 *
 * Goals: 32 sleds at once with no stall, one sled at or above line rate, at
 * most 2 CPU seconds per GiB in the server. The machine has 2 cores shared by
 * the server, every emulated sled and whatever else runs: the figures are a
 * floor, and noisy.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_DATASET, encodeHeader, HEADER_SIZE, MIB, toHex, VERSION } from "../lib/format.ts";
import { samplePoolChunks } from "../lib/sample-pool.ts";
import type { EmulatedSledReport } from "../lib/sled.ts";
import { canUseRawNetwork, withVethPair } from "../lib/veth.ts";

const ROOT = join(import.meta.dir, "..");
/** Gigabit Ethernet carries about 117 MB/s of image data in 1024-byte chunks (netboot.md). */
const LINE_RATE_MB_PER_S = 117;
const GOAL_CPU_SECONDS_PER_GIB = 2;
const GIB = 1024 * MIB;
const MB = 1_000_000;
/** Linux reports process times in clock ticks of 1/100 s (USER_HZ). */
const TICKS_PER_SECOND = 100;

const { values } = parseArgs({
  options: {
    sleds: { type: "string", default: "1,8,32" },
    "image-mib": { type: "string", default: "256" },
  },
});
const sledCounts = values.sleds.split(",").map(Number);
const imageSize = Number(values["image-mib"]) * MIB;

/** Write a plain (uncompressed) boot image of sample pool data; returns its SHA-256. */
async function writeImage(path: string, size: number): Promise<Uint8Array> {
  const hasher = new Bun.CryptoHasher("sha256");
  for (const chunk of samplePoolChunks(size)) hasher.update(chunk);
  const sha256 = new Uint8Array(hasher.digest().buffer);
  const writer = Bun.file(path).writer();
  writer.write(
    encodeHeader({ version: VERSION, flags: 0n, dataSize: size, imageSize: size, targetSize: size, sha256, dataset: DEFAULT_DATASET, imageName: "bench" }),
  );
  for (const chunk of samplePoolChunks(size)) {
    writer.write(chunk);
    await writer.flush();
  }
  await writer.end();
  return sha256;
}

/** User + system CPU seconds of a running process so far, all threads. */
async function cpuSecondsOf(pid: number): Promise<number> {
  const stat = await Bun.file(`/proc/${pid}/stat`).text();
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/**
 * Read a child's output to its end, line by line; `ready` resolves at the
 * first line matching `wanted` (and rejects if the output ends before one).
 */
function watchLines(stream: ReadableStream<Uint8Array>, wanted: RegExp): { ready: Promise<void>; lines: Promise<string[]> } {
  let seen!: () => void;
  const ready = new Promise<void>((resolve) => (seen = resolve));
  const lines = (async () => {
    const all: string[] = [];
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      const complete = pending.split("\n");
      pending = complete.pop()!;
      all.push(...complete);
      if (complete.some((line) => wanted.test(line))) seen();
    }
    return all;
  })();
  return {
    ready: Promise.race([ready, lines.then((all) => Promise.reject(new Error(`bootserver ended before printing ${wanted}: ${all.join(" | ")}`)))]),
    lines,
  };
}

interface Row {
  sleds: number;
  booted: number;
  aggregate: number;
  slowest: number;
  fastest: number;
  reasked: number;
  cpuSeconds: number;
  cpuPerGib: number;
}

async function measure(serverLink: string, sledLink: string, image: string, sha256: Uint8Array, sleds: number): Promise<Row> {
  const server = Bun.spawn(["bun", join(ROOT, "apps/bootserver.ts"), "--boots", String(sleds), serverLink, image, "any"], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const output = watchLines(server.stdout, /^serving on /);
  await output.ready;
  const cpuBefore = await cpuSecondsOf(server.pid);
  const sled = Bun.spawn(
    ["bun", join(ROOT, "apps/sled.ts"), sledLink, "--checksum", toHex(sha256), "--sleds", String(sleds), "--json", "--timeout", "600"],
    { stdout: "pipe", stderr: "inherit" },
  );
  const sledOutput = await new Response(sled.stdout).text();
  await sled.exited;
  const serverExit = await Promise.race([server.exited, Bun.sleep(30_000).then(() => null)]);
  if (serverExit === null) server.kill();
  await server.exited;
  await output.lines;
  if (serverExit !== 0) console.error(`bootserver exited with ${serverExit}: ${await new Response(server.stderr).text()}`);
  const usage = server.resourceUsage();
  const cpuTotal = usage ? Number(usage.cpuTime.total) / 1e6 : NaN;
  const cpuSeconds = cpuTotal - cpuBefore;

  const reports = sledOutput
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as EmulatedSledReport);
  const booted = reports.filter((report) => report.outcome === "booted");
  const rates = booted.map((report) => report.megabytesPerSecond);
  const lastBootSeconds = Math.max(...reports.map((report) => report.elapsedMs)) / 1000;
  const delivered = booted.length * imageSize;
  return {
    sleds,
    booted: booted.length,
    aggregate: delivered / MB / lastBootSeconds,
    slowest: Math.min(...rates),
    fastest: Math.max(...rates),
    reasked: reports.reduce((sum, report) => sum + report.reasked, 0),
    cpuSeconds,
    cpuPerGib: cpuSeconds / (delivered / GIB),
  };
}

const raw = canUseRawNetwork();
if (!raw.ok) {
  console.error(`bench:netboot skipped: ${raw.why}`);
  process.exit(0);
}
const dir = await mkdtemp(join(tmpdir(), "bench-netboot-"));
try {
  const image = join(dir, "bench.img");
  const sha256 = await writeImage(image, imageSize);
  console.log(`boot server over veth, ${values["image-mib"]} MiB plain image (${HEADER_SIZE + imageSize} bytes file), emulated sleds in one process`);
  console.log("sleds  booted  aggregate MB/s  slowest MB/s  fastest MB/s  re-asks  server CPU s  CPU s/GiB");
  const rows: Row[] = [];
  await withVethPair(async ({ a, b }) => {
    for (const sleds of sledCounts) {
      const row = await measure(a, b, image, sha256, sleds);
      rows.push(row);
      console.log(
        `${String(row.sleds).padStart(5)}  ${`${row.booted}/${row.sleds}`.padStart(6)}  ${row.aggregate.toFixed(1).padStart(14)}  ` +
          `${row.slowest.toFixed(1).padStart(12)}  ${row.fastest.toFixed(1).padStart(12)}  ${String(row.reasked).padStart(7)}  ` +
          `${row.cpuSeconds.toFixed(2).padStart(12)}  ${row.cpuPerGib.toFixed(2).padStart(9)}`,
      );
    }
  }, "rbn");
  const single = rows.find((row) => row.sleds === 1);
  if (single) {
    console.log(
      `one sled: ${single.fastest.toFixed(1)} MB/s = ${(single.fastest / LINE_RATE_MB_PER_S).toFixed(2)} x gigabit line rate (${LINE_RATE_MB_PER_S} MB/s with 1024-byte chunks)`,
    );
  }
  const worst = Math.max(...rows.map((row) => row.cpuPerGib));
  console.log(`goals: every sled booted: ${rows.every((row) => row.booted === row.sleds) ? "yes" : "NO"}; ` +
    `server CPU <= ${GOAL_CPU_SECONDS_PER_GIB} s/GiB: ${worst <= GOAL_CPU_SECONDS_PER_GIB ? "yes" : "NO"} (worst ${worst.toFixed(2)})`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
