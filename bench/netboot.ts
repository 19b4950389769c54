/**
 * The boot server under the conditions of a real lab network, and
 * what it costs: over a veth pair, the real programs run as processes, as a
 * lab would run them: `bun apps/bootserver.ts --boots N LINK IMAGE any` on one
 * end and `bun apps/sled.ts LINK --sleds N --json` with one of the emulator's
 * network models (lib/sled/faults.ts) on the other. Needs root; run with
 * `bun run bench:netboot`.
 *
 *   bun bench/netboot.ts [--rows loss,burst,port,slow,flood,images,send] [--sleds 1,32] [--mib-one 64] [--mib-many 16]
 *                        [--cap 45] [--ours-flags "..."] [--peer-flags "..."] [--image-mib 256]
 *                        [--send-seconds 8] [--big-gib 4] [--veth-prefix rbn]
 *
 * Every row but the images rows runs twice in the same run: "ours" is the
 * server with its defaults (fast re-send, pacing at gigabit per sled,
 * admission: OURS_FLAGS), the peer is the same server with those turned off,
 * which is today's behaviour (PEER_FLAGS). Rows (`--rows`, comma-separated):
 * - loss: 0, 0.1%, 0.5% and 1% of DATA frames lost at random;
 * - burst: 0.2% lost in bursts of 4 frames (--burst-rate 0.0005 --burst-length 4);
 * - port: each sled behind a gigabit switch port with 64 KiB of buffer;
 * - slow: a lossless sled that waits 20 ms after each batch;
 * - flood: 2 sleds boot quietly, then again while this script injects 5,000
 *   HELLOs from distinct MACs and 5,000 READs from MACs never offered anything;
 * each for 1 sled (`--mib-one` MiB image) and for 32 (`--mib-many` MiB each);
 * - images: a table of its own, from bench/netboot-images.ts (imageRows): a
 *   `--image-mib` MiB sample pool as a plain, a zlib and a zstd image, served
 *   one sled at a time by the server with its defaults; the zstd and zlib
 *   images' boot rate, server CPU and first DATA against the plain image's,
 *   median of 3 runs;
 * - send: two tables of their own, from bench/netboot-send.ts (sendRows,
 *   memoryRows): the server's CPU per GiB sent to sleds that READ without
 *   listening against a floor sender of the same frames (C, sendmmsg), at
 *   line rate and at saturation, the cores a rack would need; and its
 *   resident memory serving a `--big-gib` GiB plain and zlib image, with the
 *   rate of a sled that says HELLO as it starts.
 *
 * Figures per row and server: time until the last sled booted (or "not
 * booted in N s": `--cap` bounds every row, since today's server stalls a
 * second per damaged batch), MB/s per sled (slowest, and mean) and in all
 * (image bytes of all booted sleds over that time; MB = 10^6 bytes), DATA
 * frames the server sent per image frame (what reached the sleds' capture
 * before the models, over the frames they took), server CPU seconds per GiB
 * delivered (user + system after it was ready to serve), its peak resident
 * memory and, sampled every 100 ms, its most threads.
 *
 * The emulator shares the machine's 2 cores with the server. A modelled port
 * can deliver no faster than the emulator reads, so each row says when the
 * emulator was busy most of the time or its capture buffer overflowed: then
 * it, not the server, set the pace (`bun run bench:sled` measures its
 * receive rate alone). Figures on this shared machine are indicative only.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_DATASET, encodeHeader, MIB, toHex, VERSION } from "@ramdisk-tools/image/format.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  BROADCAST_MAC,
  CHUNK_SIZE,
  encodeFrame,
  type Mac,
  parseMac,
  READ_SLOTS,
} from "@ramdisk-tools/protocol/frames.ts";
import { consecutiveMacs, type EmulatedSledReport } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink, readLinkMac } from "@ramdisk-tools/wire/libpcap.ts";
import { goal, printRows } from "./measure.ts";
import { IMAGE_DEFAULTS, imageRows } from "./netboot-images.ts";
import { memoryRows, SEND_DEFAULTS, sendRows } from "./netboot-send.ts";
import { processCpuSeconds, watchLines } from "./server-process.ts";

/** The server as it ships: its defaults are fast re-send, pacing at 1g per sled and admission. */
const OURS_FLAGS: readonly string[] = [];
/** Today's behaviour: the same server with re-send, pacing and admission turned off. */
const PEER_FLAGS: readonly string[] = ["--no-resend", "--rate", "off", "--no-admission"];

const ROOT = join(import.meta.dir, "..");
const GIB = 1024 * MIB;
const MB = 1_000_000;
/** Gigabit line rate in image bytes with 1024-byte chunks (1082 bytes of link time each: lib/wire/rate.ts). */
const LINE_RATE_MB_PER_S = ((1e9 / 8 / 1082) * CHUNK_SIZE) / MB;
/** An emulator busy this share of the wall time may be what limits a row. */
const EMULATOR_BUSY = 0.9;
/** Link time of one DATA frame at gigabit: an emulator needing more CPU per frame cannot absorb line rate. */
const GIGABIT_FRAME_US = (1082 * 8) / 1e3;
const FLOOD_HELLOS = 5000;
const FLOOD_READS = 5000;
const FLOOD_SLEDS = 2;

const { values } = parseArgs({
  options: {
    rows: { type: "string", default: "loss,burst,port,slow,flood,images,send" },
    sleds: { type: "string", default: "1,32" },
    "mib-one": { type: "string", default: "64" },
    "mib-many": { type: "string", default: "16" },
    /** Seconds a row may take before its sleds give up. */
    cap: { type: "string", default: "45" },
    "ours-flags": { type: "string" },
    "peer-flags": { type: "string" },
    "image-mib": { type: "string", default: String(IMAGE_DEFAULTS.imageMib) },
    /** The send rows: seconds measured per server, and GiB of each image in the memory rows (0: none). */
    "send-seconds": { type: "string", default: String(SEND_DEFAULTS.seconds) },
    "big-gib": { type: "string", default: String(SEND_DEFAULTS.bigGib) },
    /** Names of the veth pair made for the run start with this. */
    "veth-prefix": { type: "string", default: "rbn" },
  },
});
const ROW_GROUPS = ["loss", "burst", "port", "slow", "flood", "images", "send"];
const rowGroups = values.rows.split(",").filter(Boolean);
for (const group of rowGroups) {
  if (group === "first-data") {
    console.error('bench:netboot: the "first-data" rows are now the "images" rows: --rows images');
    process.exit(2);
  }
  if (!ROW_GROUPS.includes(group)) {
    console.error(`bench:netboot: unknown row group "${group}"; choose from ${ROW_GROUPS.join(", ")}`);
    process.exit(2);
  }
}
const sledCounts = values.sleds.split(",").map(Number);
const capSeconds = Number(values.cap);
const flagsOf = (text: string | undefined, fallback: readonly string[]) =>
  text === undefined ? [...fallback] : text.split(/\s+/).filter(Boolean);
const SERVERS = [
  { name: "ours", flags: flagsOf(values["ours-flags"], OURS_FLAGS) },
  { name: "peer", flags: flagsOf(values["peer-flags"], PEER_FLAGS) },
] as const;

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

/** CPU seconds the sled program spends starting and exiting, taken off its CPU per frame. */
const emulatorStartCpuSeconds = (async () => {
  const child = Bun.spawn(["bun", join(ROOT, "apps/sled.ts"), "--version"], { stdout: "ignore" });
  await child.exited;
  const usage = child.resourceUsage();
  return usage ? Number(usage.cpuTime.total) / 1e6 : 0;
})();

/** One network condition: the sled program's model flags, for a number of sleds. */
interface Condition {
  group: string;
  label: string;
  sleds: number;
  model: string[];
  /** Inject the HELLO and READ flood while the sleds boot. */
  flood?: boolean;
}

/** What one server did under one condition. */
interface Run {
  sleds: number;
  booted: number;
  /** Until the last sled booted (or gave up). */
  seconds: number;
  slowest: number;
  mean: number;
  aggregate: number;
  framesPerImageFrame: number;
  cpuPerGib: number;
  peakBytes: number;
  threads: number;
  /** The emulator's CPU per DATA frame received, less what starting it costs; NaN for a row with stalls. */
  emulatorUsPerFrame: number;
  /** Why the emulator may have set the pace, or "". */
  emulatorNote: string;
}

/** Threads and resident memory of a process, sampled until stopped; the most seen. */
function sampleProcess(pid: number): { stop(): { threads: number } } {
  let threads = 0;
  const timer = setInterval(async () => {
    try {
      const status = await Bun.file(`/proc/${pid}/status`).text();
      threads = Math.max(threads, Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 0));
    } catch {
      // The process has exited.
    }
  }, 100);
  return {
    stop() {
      clearInterval(timer);
      return { threads };
    },
  };
}

/**
 * The flood: HELLOs from FLOOD_HELLOS distinct MACs and READs of a
 * first batch from FLOOD_READS other MACs never offered anything, built with
 * lib/protocol/frames.ts and sent from the sleds' end of the link in bursts of 250
 * spread over about two seconds, so they overlap the sleds' start and boot.
 */
async function flood(link: string, server: Mac): Promise<void> {
  const injector = PcapLink.open(link, { capture: false });
  try {
    const hello = new TextEncoder().encode("flood");
    const slots = new BigUint64Array(READ_SLOTS).map((_, slot) => BigInt(slot * CHUNK_SIZE));
    const hellos = consecutiveMacs(parseMac("02:f1:00:00:00:00")!, FLOOD_HELLOS).map((mac) =>
      encodeFrame(BROADCAST_MAC, mac, { type: "hello", text: hello }),
    );
    const reads = consecutiveMacs(parseMac("02:f2:00:00:00:00")!, FLOOD_READS).map((mac) =>
      encodeFrame(server, mac, { type: "read", count: BigInt(READ_SLOTS), slots }),
    );
    const frames = [...hellos, ...reads];
    for (let at = 0; at < frames.length; at += 250) {
      injector.injectBatch(frames.slice(at, at + 250));
      await Bun.sleep(50);
    }
  } finally {
    injector.close();
  }
}

/** Boot `condition.sleds` sleds from a server started with `flags`; the figures of the run. */
async function run(
  serverLink: string,
  sledLink: string,
  image: { path: string; sha256: Uint8Array; size: number },
  flags: string[],
  condition: Condition,
): Promise<Run> {
  const server = Bun.spawn(
    [
      "bun",
      join(ROOT, "apps/bootserver.ts"),
      ...flags,
      "--boots",
      String(condition.sleds),
      serverLink,
      image.path,
      "any",
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  const stderr = new Response(server.stderr).text();
  const output = watchLines(server.stdout, /^serving on /);
  await output.ready;
  const cpuBefore = await processCpuSeconds(server.pid);
  const sampler = sampleProcess(server.pid);
  const sled = Bun.spawn(
    [
      "bun",
      join(ROOT, "apps/sled.ts"),
      sledLink,
      "--checksum",
      toHex(image.sha256),
      "--sleds",
      String(condition.sleds),
      "--json",
      "--timeout",
      String(capSeconds),
      ...condition.model,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  const started = performance.now();
  const flooded = condition.flood ? flood(sledLink, readLinkMac(serverLink)) : Promise.resolve();
  const [sledOutput, sledErrors] = await Promise.all([
    new Response(sled.stdout).text(),
    new Response(sled.stderr).text(),
    sled.exited,
    flooded,
  ]);
  const sledWallSeconds = (performance.now() - started) / 1000;
  const reports = sledOutput
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as EmulatedSledReport);
  const booted = reports.filter((report) => report.outcome === "booted");
  // A server whose sleds did not all boot never reaches its boot count: stop it at once.
  const serverExit =
    booted.length === condition.sleds ? await Promise.race([server.exited, Bun.sleep(10_000).then(() => null)]) : null;
  if (serverExit === null) server.kill();
  await server.exited;
  await output.lines;
  const { threads } = sampler.stop();
  if (serverExit !== 0 && serverExit !== null) console.error(`bootserver exited with ${serverExit}: ${await stderr}`);
  const usage = server.resourceUsage();
  const cpuSeconds = (usage ? Number(usage.cpuTime.total) / 1e6 : NaN) - cpuBefore;

  const rates = booted.map((report) => report.megabytesPerSecond);
  const seconds = Math.max(...reports.map((report) => report.elapsedMs)) / 1000;
  const delivered = booted.length * image.size;
  const received = reports.reduce((sum, report) => sum + report.dataReceived, 0);
  const accepted = reports.reduce((sum, report) => sum + report.dataAccepted, 0);
  const sledUsage = sled.resourceUsage();
  const sledCpuSeconds = sledUsage ? Number(sledUsage.cpuTime.total) / 1e6 : 0;
  const sledBusy = sledCpuSeconds / sledWallSeconds;
  // Only for rows where the sleds never wait (no 1 s re-asks, no slow sled): a waiting emulator burns CPU polling.
  const stalled =
    booted.length < condition.sleds ||
    reports.some((report) => report.reasked > 0) ||
    condition.model.includes("--batch-delay");
  const emulatorUsPerFrame = stalled ? NaN : ((sledCpuSeconds - (await emulatorStartCpuSeconds)) * 1e6) / received;
  const notes: string[] = [];
  if (sledBusy >= EMULATOR_BUSY) notes.push(`emulator busy ${(100 * sledBusy).toFixed(0)}% of the time`);
  if (condition.sleds === 1 && emulatorUsPerFrame > GIGABIT_FRAME_US)
    notes.push(`emulator ${emulatorUsPerFrame.toFixed(1)} us CPU per frame, more than a gigabit frame time`);
  const lost = /lost (\d+) frames/.exec(sledErrors);
  if (lost) notes.push(`emulator's capture buffer lost ${lost[1]} frames`);
  return {
    sleds: condition.sleds,
    booted: booted.length,
    seconds,
    slowest: rates.length > 0 ? Math.min(...rates) : 0,
    mean: rates.length > 0 ? rates.reduce((sum, rate) => sum + rate, 0) / rates.length : 0,
    aggregate: delivered / MB / seconds,
    framesPerImageFrame: received / accepted,
    cpuPerGib: cpuSeconds / (delivered / GIB),
    peakBytes: usage?.maxRSS ?? NaN,
    threads,
    emulatorUsPerFrame,
    emulatorNote: notes.join("; "),
  };
}

const HEADER =
  "condition                                server  booted   time s  slowest MB/s  mean MB/s  all MB/s  sent/image  CPU s/GiB  peak MiB  threads  emulator us/frame";

function line(label: string, server: string, result: Run): string {
  const time = result.booted === result.sleds ? result.seconds.toFixed(2) : `not booted in ${capSeconds} s`.padStart(8);
  const cells = [
    label.padEnd(40),
    server.padEnd(6),
    `${result.booted}/${result.sleds}`.padStart(6),
    time.padStart(8),
    result.slowest.toFixed(1).padStart(12),
    result.mean.toFixed(1).padStart(9),
    result.aggregate.toFixed(1).padStart(8),
    result.framesPerImageFrame.toFixed(3).padStart(10),
    (Number.isFinite(result.cpuPerGib) ? result.cpuPerGib.toFixed(2) : "-").padStart(9),
    (result.peakBytes / MIB).toFixed(0).padStart(8),
    String(result.threads).padStart(7),
    (Number.isNaN(result.emulatorUsPerFrame) ? "-" : result.emulatorUsPerFrame.toFixed(1)).padStart(17),
  ];
  return cells.join("  ") + (result.emulatorNote ? `  (${result.emulatorNote})` : "");
}

/** Ours over the peer: time (how many times faster) and aggregate rate. */
function ratio(ours: Run, peer: Run): string {
  const peerDone = peer.booted === peer.sleds;
  const oursDone = ours.booted === ours.sleds;
  const speed =
    oursDone && peerDone
      ? `${(peer.seconds / ours.seconds).toFixed(2)}x as fast`
      : `${oursDone ? "" : "ours"}${oursDone || peerDone ? "" : " and "}${peerDone ? "" : "the peer"} did not boot all sleds in ${capSeconds} s`;
  const times = (a: number, b: number) => (Number.isFinite(a / b) ? `${(a / b).toFixed(2)}x` : "-");
  return (
    `${"".padEnd(40)}  ours/peer: ${speed}; aggregate ${times(ours.aggregate, peer.aggregate)}; ` +
    `sent/image ${times(ours.framesPerImageFrame, peer.framesPerImageFrame)}; CPU/GiB ${times(ours.cpuPerGib, peer.cpuPerGib)}`
  );
}

function conditions(): Condition[] {
  const list: Condition[] = [];
  const add = (group: string, label: string, model: string[], flood = false) => {
    if (!rowGroups.includes(group)) return;
    for (const sleds of group === "flood" ? [FLOOD_SLEDS] : sledCounts)
      list.push({ group, label, sleds, model, flood });
  };
  add("loss", "loss 0", []);
  add("loss", "loss 0.1%", ["--drop-rate", "0.001", "--seed", "1"]);
  add("loss", "loss 0.5%", ["--drop-rate", "0.005", "--seed", "1"]);
  add("loss", "loss 1%", ["--drop-rate", "0.01", "--seed", "1"]);
  add("burst", "0.2% lost in bursts of 4", ["--burst-rate", "0.0005", "--burst-length", "4", "--seed", "1"]);
  add("port", "1g port, 64 KiB buffer", ["--port-rate", "1g", "--port-buffer", "65536"]);
  add("slow", "slow sled, 20 ms per batch", ["--batch-delay", "20"]);
  add("flood", "quiet", []);
  add("flood", "HELLO and READ flood", [], true);
  return list;
}

/** The figures of every condition, for both servers; keyed by `${label}/${sleds}`. */
type Results = Map<string, { ours: Run; peer: Run }>;

function printGoals(results: Results): void {
  const get = (label: string, sleds: number) => results.get(`${label}/${sleds}`);
  const lines: string[] = [];
  const clean = get("loss 0", 1);
  for (const [label, share] of [
    ["loss 0.5%", 0.5],
    ["loss 1%", 0.3],
  ] as const) {
    const lossy = get(label, 1);
    if (clean && lossy) {
      const kept = lossy.ours.booted === 1 ? lossy.ours.mean / clean.ours.mean : 0;
      lines.push(
        goal(
          kept >= share,
          `1 sled at ${label}: ${(100 * kept).toFixed(0)}% of its loss-free rate, goal >= ${100 * share}%`,
        ),
      );
    }
  }
  const clean32 = get("loss 0", 32);
  const lossy32 = get("loss 0.5%", 32);
  if (clean32 && lossy32) {
    const all = lossy32.ours.booted === 32;
    const times = lossy32.ours.seconds / clean32.ours.seconds;
    lines.push(
      goal(
        all && times <= 2,
        `32 sleds at 0.5% loss: ${lossy32.ours.booted}/32 booted in ${times.toFixed(2)}x the loss-free time, goal all within 2x`,
      ),
    );
  }
  const port = get("1g port, 64 KiB buffer", 1);
  if (port) {
    const share = port.ours.mean / LINE_RATE_MB_PER_S;
    lines.push(
      goal(
        port.ours.booted === 1 && share >= 0.8,
        `1 sled behind a 1g port with 64 KiB: ${port.ours.mean.toFixed(1)} MB/s = ${(100 * share).toFixed(0)}% of line rate (${LINE_RATE_MB_PER_S.toFixed(1)} MB/s), goal >= 80%` +
          (port.ours.emulatorNote ? ` (${port.ours.emulatorNote}: the emulator may be the limit)` : ""),
      ),
    );
  }
  for (const sleds of sledCounts) {
    const lossy = get("loss 0.5%", sleds);
    if (lossy)
      lines.push(
        goal(
          lossy.ours.framesPerImageFrame <= 1.6,
          `frames sent per image frame at 0.5% loss, ${sleds} sled(s): ${lossy.ours.framesPerImageFrame.toFixed(3)}, goal <= 1.6`,
        ),
      );
    const slow = get("slow sled, 20 ms per batch", sleds);
    if (slow)
      lines.push(
        goal(
          slow.ours.framesPerImageFrame <= 1.05,
          `frames sent per image frame to a lossless sled taking 20 ms per batch, ${sleds} sled(s): ${slow.ours.framesPerImageFrame.toFixed(3)}, goal <= 1.05`,
        ),
      );
  }
  const quiet = get("quiet", FLOOD_SLEDS);
  const flooded = get("HELLO and READ flood", FLOOD_SLEDS);
  if (quiet && flooded) {
    const extra = flooded.ours.seconds - quiet.ours.seconds;
    lines.push(
      goal(
        flooded.ours.booted === FLOOD_SLEDS && extra <= 3,
        `flood: ${FLOOD_SLEDS} sleds booted ${extra.toFixed(2)} s after their quiet time, goal within a few (3) seconds`,
      ),
      goal(
        flooded.ours.peakBytes < 400 * MIB,
        `flood: server peak ${(flooded.ours.peakBytes / MIB).toFixed(0)} MiB, goal < 400 MiB`,
      ),
      goal(flooded.ours.threads < 64, `flood: server at most ${flooded.ours.threads} threads, goal < 64`),
    );
  }
  if (lines.length > 0) console.log(`\ngoals, ours:\n${lines.map((text) => `  ${text}`).join("\n")}`);
}

async function networkRows(dir: string): Promise<void> {
  const list = conditions();
  if (list.length === 0) return;
  const sizes = new Map<number, { path: string; sha256: Uint8Array; size: number }>();
  const sizeFor = (sleds: number) => Number(sleds === 1 ? values["mib-one"] : values["mib-many"]) * MIB;
  for (const condition of list) {
    const size = sizeFor(condition.sleds);
    if (!sizes.has(size)) {
      const path = join(dir, `bench-${size / MIB}.img`);
      sizes.set(size, { path, sha256: await writeImage(path, size), size });
    }
  }
  console.log(
    `boot server over veth: ours = bootserver ${SERVERS[0].flags.join(" ") || "(defaults)"}, peer = bootserver ${SERVERS[1].flags.join(" ") || "(defaults)"}; ` +
      `1 sled: ${values["mib-one"]} MiB image, more: ${values["mib-many"]} MiB each; rows capped at ${capSeconds} s`,
  );
  console.log(
    `the emulator shares the cores with the server: a row says when it was busy >= ${100 * EMULATOR_BUSY}% of its time, its capture ` +
      `buffer overflowed, or (1 sled) it spent more CPU per frame than a gigabit frame lasts (${GIGABIT_FRAME_US.toFixed(2)} us), ` +
      "i.e. when it may have set the pace (a modelled port delivers no faster than the emulator reads; " +
      "`bun run bench:sled` measures its receive rate alone)",
  );
  console.log(HEADER);
  const results: Results = new Map();
  await withVethPair(async ({ a, b }) => {
    for (const condition of list) {
      const image = sizes.get(sizeFor(condition.sleds))!;
      const label = `${condition.label}, ${condition.sleds} sled${condition.sleds > 1 ? "s" : ""}`;
      const [ours, peer] = [
        await run(a, b, image, SERVERS[0].flags, condition),
        await run(a, b, image, SERVERS[1].flags, condition),
      ];
      console.log(line(label, "ours", ours));
      console.log(line("", "peer", peer));
      console.log(ratio(ours, peer));
      results.set(`${condition.label}/${condition.sleds}`, { ours, peer });
    }
  }, values["veth-prefix"]);
  printGoals(results);
  for (const image of sizes.values()) await rm(image.path);
}

const raw = canUseRawNetwork();
if (!raw.ok) {
  console.error(`bench:netboot skipped: ${raw.why}`);
  process.exit(0);
}
const dir = await mkdtemp(join(tmpdir(), "bench-netboot-"));
try {
  await networkRows(dir);
  if (rowGroups.includes("images")) {
    const options = { imageMib: Number(values["image-mib"]), runs: IMAGE_DEFAULTS.runs };
    const { heading, rows } = await withVethPair((pair) => imageRows(pair, dir, options), values["veth-prefix"]);
    console.log(`\n${heading}`);
    printRows(rows);
  }
  if (rowGroups.includes("send")) {
    await withVethPair(async (pair) => {
      const send = await sendRows(pair, dir, {
        seconds: Number(values["send-seconds"]),
        imageMib: SEND_DEFAULTS.imageMib,
      });
      console.log(`\n${send.heading}`);
      printRows(send.rows);
      if (Number(values["big-gib"]) > 0) {
        const memory = await memoryRows(pair, dir, Number(values["big-gib"]));
        console.log(`\n${memory.heading}`);
        printRows(memory.rows);
      }
    }, values["veth-prefix"]);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
