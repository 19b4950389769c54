/**
 * How fast the boot server serves emulated sleds over a veth pair, and what
 * it costs in CPU. Needs root; run with `bun run bench:netboot`.
 *
 *   bun bench/netboot.ts [--sleds 1,8,32] [--image-mib 256] [--first-data-only] [--veth-prefix rbn]
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
 * Then time to first DATA for a zstd image against a zlib image of the same
 * sample pool (both made by `bun apps/mkimage.ts`, `--zstd` and `-z`), one
 * sled each: the server is started, and a sled played by this script says
 * HELLO every 50 ms from that moment (a real sled says it every 4 s, which
 * would round the figures to 4 s), takes the OFFER and READs the first
 * 128 KiB batch. Measured from the server's start, so the zlib server's
 * inflating the whole pool before it listens counts, as it would for a sled
 * powered on with the server. Then `bun apps/sled.ts` boots the whole image
 * from the same server, which checks the bytes and gives the transfer rate.
 * Issue 4's goal: the first DATA within a second of the HELLO whatever the
 * image size.
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
import { PcapLink } from "../lib/pcap.ts";
import { BROADCAST_MAC, CHUNK_SIZE, decodeFrame, encodeFrame, parseMac, READ_SLOTS, sameMac } from "../lib/protocol.ts";
import { samplePoolChunks, writeSamplePool } from "../lib/sample-pool.ts";
import type { EmulatedSledReport } from "../lib/sled-runner.ts";
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
    /** Only the time to first DATA rows (zstd against zlib). */
    "first-data-only": { type: "boolean", default: false },
    /** Names of the veth pair made for the run start with this. */
    "veth-prefix": { type: "string", default: "rbn" },
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
    encodeHeader({
      version: VERSION,
      flags: 0n,
      dataSize: size,
      imageSize: size,
      targetSize: size,
      sha256,
      dataset: DEFAULT_DATASET,
      imageName: "bench",
    }),
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
function watchLines(
  stream: ReadableStream<Uint8Array>,
  wanted: RegExp,
): { ready: Promise<void>; lines: Promise<string[]> } {
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
    ready: Promise.race([
      ready,
      lines.then((all) => Promise.reject(new Error(`bootserver ended before printing ${wanted}: ${all.join(" | ")}`))),
    ]),
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

async function measure(
  serverLink: string,
  sledLink: string,
  image: string,
  sha256: Uint8Array,
  sleds: number,
): Promise<Row> {
  const server = Bun.spawn(
    ["bun", join(ROOT, "apps/bootserver.ts"), "--boots", String(sleds), serverLink, image, "any"],
    {
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  const output = watchLines(server.stdout, /^serving on /);
  await output.ready;
  const cpuBefore = await cpuSecondsOf(server.pid);
  const sled = Bun.spawn(
    [
      "bun",
      join(ROOT, "apps/sled.ts"),
      sledLink,
      "--checksum",
      toHex(sha256),
      "--sleds",
      String(sleds),
      "--json",
      "--timeout",
      "600",
    ],
    { stdout: "pipe", stderr: "inherit" },
  );
  const sledOutput = await new Response(sled.stdout).text();
  await sled.exited;
  const serverExit = await Promise.race([server.exited, Bun.sleep(30_000).then(() => null)]);
  if (serverExit === null) server.kill();
  await server.exited;
  await output.lines;
  if (serverExit !== 0)
    console.error(`bootserver exited with ${serverExit}: ${await new Response(server.stderr).text()}`);
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

/** The MAC of the sled this script plays for the first-DATA rows. */
const SCRIPTED_SLED = parseMac("02:5e:b5:00:0f:01")!;
/** How often the scripted sled says HELLO until it is offered an image. */
const SCRIPTED_HELLO_MS = 50;

interface FirstData {
  /** From the server's start to its "serving on" line (image loaded, link open), its first OFFER, and the first DATA. */
  readyMs: number;
  offerMs: number;
  firstDataMs: number;
  /** The emulator's whole boot from the same server. */
  booted: boolean;
  megabytesPerSecond: number;
}

/** Start a server on `image`, play a sled's discovery and first READ against it, then boot the emulator from it. */
async function firstData(
  serverLink: string,
  sledLink: string,
  image: string,
  checksumFile: string,
): Promise<FirstData> {
  const link = PcapLink.open(sledLink, { timeoutMs: 1 });
  const started = performance.now();
  const server = Bun.spawn(["bun", join(ROOT, "apps/bootserver.ts"), serverLink, image, "any"], {
    stdout: "pipe",
    stderr: "pipe",
  });
  let readyMs = NaN;
  const output = watchLines(server.stdout, /^serving on /);
  output.ready.then(() => (readyMs = performance.now() - started)).catch(() => {});
  try {
    const hello = encodeFrame(BROADCAST_MAC, SCRIPTED_SLED, {
      type: "hello",
      text: new TextEncoder().encode("bench sled"),
    });
    let offerMs = NaN;
    let serverMac: Uint8Array | undefined;
    let nextHello = 0;
    while (!serverMac) {
      if (server.exitCode !== null)
        throw new Error(`bootserver exited with ${server.exitCode}: ${await new Response(server.stderr).text()}`);
      if (performance.now() >= nextHello) {
        link.inject(hello);
        nextHello = performance.now() + SCRIPTED_HELLO_MS;
      }
      const frame = link.next();
      const decoded = frame && decodeFrame(frame);
      if (
        decoded &&
        decoded.ok &&
        decoded.frame.message.type === "offer" &&
        sameMac(decoded.frame.destination, SCRIPTED_SLED)
      ) {
        offerMs = performance.now() - started;
        serverMac = decoded.frame.source;
      } else if (!frame) await Bun.sleep(0);
    }
    // The first batch, as a sled asks it: slots 1..127 hold their offsets, offset 0 is the count's extra one.
    const slots = new BigUint64Array(READ_SLOTS).map((_, slot) => BigInt(slot * CHUNK_SIZE));
    link.inject(encodeFrame(serverMac, SCRIPTED_SLED, { type: "read", count: BigInt(READ_SLOTS), slots }));
    let firstDataMs = NaN;
    while (Number.isNaN(firstDataMs)) {
      const frame = link.next();
      const decoded = frame && decodeFrame(frame);
      if (
        decoded &&
        decoded.ok &&
        decoded.frame.message.type === "data" &&
        sameMac(decoded.frame.destination, SCRIPTED_SLED)
      ) {
        firstDataMs = performance.now() - started;
      } else if (!frame) await Bun.sleep(0);
    }
    link.inject(encodeFrame(serverMac, SCRIPTED_SLED, { type: "finished" }));
    const sled = Bun.spawn(
      ["bun", join(ROOT, "apps/sled.ts"), sledLink, "--checksum-file", checksumFile, "--json", "--timeout", "600"],
      {
        stdout: "pipe",
        stderr: "inherit",
      },
    );
    const reports = (await new Response(sled.stdout).text())
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as EmulatedSledReport);
    await sled.exited;
    const booted = reports.length === 1 && reports[0]!.outcome === "booted";
    await output.ready;
    return { readyMs, offerMs, firstDataMs, booted, megabytesPerSecond: reports[0]?.megabytesPerSecond ?? NaN };
  } finally {
    link.close();
    server.kill("SIGTERM");
    await server.exited;
    await output.lines.catch(() => {});
  }
}

/** The first-DATA rows: a zlib and a zstd image of the same sample pool, made by mkimage. */
async function firstDataRows(dir: string, serverLink: string, sledLink: string): Promise<void> {
  const pool = join(dir, "first-data.raw");
  await writeSamplePool(pool, imageSize);
  const kinds = [
    { name: "zlib", flag: "-z" },
    { name: "zstd", flag: "--zstd" },
  ];
  const results: Record<string, FirstData> = {};
  console.log(
    `\ntime to first DATA, ${values["image-mib"]} MiB sample pool, one sled, from the server's start (HELLO every ${SCRIPTED_HELLO_MS} ms)`,
  );
  console.log("image  file MiB  ready ms  OFFER ms  first DATA ms  first DATA after ready ms  whole boot MB/s  booted");
  for (const { name, flag } of kinds) {
    const image = join(dir, `first-data-${name}.img`);
    const checksum = join(dir, `first-data-${name}.csum`);
    const made = Bun.spawnSync(["bun", join(ROOT, "apps/mkimage.ts"), "-i", pool, "-o", image, "-O", checksum, flag], {
      stderr: "pipe",
    });
    if (made.exitCode !== 0) throw new Error(`mkimage ${flag} failed: ${made.stderr.toString()}`);
    const result = await firstData(serverLink, sledLink, image, checksum);
    results[name] = result;
    console.log(
      `${name.padEnd(5)}  ${(Bun.file(image).size / MIB).toFixed(1).padStart(8)}  ${result.readyMs.toFixed(0).padStart(8)}  ` +
        `${result.offerMs.toFixed(0).padStart(8)}  ${result.firstDataMs.toFixed(0).padStart(13)}  ` +
        `${(result.firstDataMs - result.readyMs).toFixed(0).padStart(25)}  ${result.megabytesPerSecond.toFixed(1).padStart(15)}  ${result.booted ? "yes" : "NO"}`,
    );
  }
  const { zlib, zstd } = results as { zlib: FirstData; zstd: FirstData };
  console.log(
    `from the server's start, zstd's first DATA comes ${(zlib.firstDataMs / zstd.firstDataMs).toFixed(1)}x sooner than zlib's; ` +
      `goal, zstd's first DATA within 1000 ms of a HELLO to a ready server: ${zstd.firstDataMs - zstd.readyMs <= 1000 ? "yes" : "NO"} ` +
      `(${(zstd.firstDataMs - zstd.readyMs).toFixed(0)} ms, HELLOs ${SCRIPTED_HELLO_MS} ms apart)`,
  );
}

const raw = canUseRawNetwork();
if (!raw.ok) {
  console.error(`bench:netboot skipped: ${raw.why}`);
  process.exit(0);
}
/** The throughput rows: a plain image served to each count of sleds. */
async function throughputRows(dir: string): Promise<void> {
  const image = join(dir, "bench.img");
  const sha256 = await writeImage(image, imageSize);
  console.log(
    `boot server over veth, ${values["image-mib"]} MiB plain image (${HEADER_SIZE + imageSize} bytes file), emulated sleds in one process`,
  );
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
  }, values["veth-prefix"]);
  const single = rows.find((row) => row.sleds === 1);
  if (single) {
    console.log(
      `one sled: ${single.fastest.toFixed(1)} MB/s = ${(single.fastest / LINE_RATE_MB_PER_S).toFixed(2)} x gigabit line rate (${LINE_RATE_MB_PER_S} MB/s with 1024-byte chunks)`,
    );
  }
  const worst = Math.max(...rows.map((row) => row.cpuPerGib));
  console.log(
    `goals: every sled booted: ${rows.every((row) => row.booted === row.sleds) ? "yes" : "NO"}; ` +
      `server CPU <= ${GOAL_CPU_SECONDS_PER_GIB} s/GiB: ${worst <= GOAL_CPU_SECONDS_PER_GIB ? "yes" : "NO"} (worst ${worst.toFixed(2)})`,
  );
  await rm(image);
}

const dir = await mkdtemp(join(tmpdir(), "bench-netboot-"));
try {
  if (!values["first-data-only"]) await throughputRows(dir);
  await withVethPair(({ a, b }) => firstDataRows(dir, a, b), values["veth-prefix"]);
} finally {
  await rm(dir, { recursive: true, force: true });
}
