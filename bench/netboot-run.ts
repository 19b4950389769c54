/**
 * One boot of emulated sleds from a bootserver, both run as processes over a
 * veth pair, and its figures: what bench/netboot.ts and
 * bench/netboot-console.ts measure each row with, and how a row is printed.
 */

import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { DEFAULT_DATASET, encodeHeader, toHex, VERSION } from "@ramdisk-tools/image/format.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import {
  BROADCAST_MAC,
  CHUNK_SIZE,
  encodeFrame,
  type Mac,
  parseMac,
  READ_SLOTS,
} from "@ramdisk-tools/protocol/frames.ts";
import { consecutiveMacs, type EmulatedSledReport } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { readLinkMac } from "@ramdisk-tools/wire/link-mac.ts";
import { processCpuSeconds, watchLines } from "./server-process.ts";

export const GIB = 1024 * MIB;
export const MB = 1_000_000;
/** Gigabit line rate in image bytes with 1024-byte chunks (1082 bytes of link time each: lib/wire/rate.ts). */
export const LINE_RATE_MB_PER_S = ((1e9 / 8 / 1082) * CHUNK_SIZE) / MB;
/** An emulator busy this share of the wall time may be what limits a row. */
export const EMULATOR_BUSY = 0.9;
/** Link time of one DATA frame at gigabit: an emulator needing more CPU per frame cannot absorb line rate. */
export const GIGABIT_FRAME_US = (1082 * 8) / 1e3;
export const FLOOD_HELLOS = 5000;
export const FLOOD_READS = 5000;
export const FLOOD_SLEDS = 2;

/** Write a plain (uncompressed) boot image of sample pool data; returns its SHA-256. */
export async function writeImage(path: string, size: number): Promise<Uint8Array> {
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
export interface Condition {
  group: string;
  label: string;
  sleds: number;
  model: string[];
  /** Seconds the sleds may take before they give up. */
  capSeconds: number;
  /** Inject the HELLO and READ flood while the sleds boot. */
  flood?: boolean;
}

/** What one server did under one condition. */
export interface Run {
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
  /** The row's cap, for its "not booted" line. */
  capSeconds: number;
  /** DATA frames the sleds received and did not take (copies), over the frames they took. */
  copiesPerImageFrame: number;
  /** Console lines the sleds printed, all told, and the most seconds one sled spent printing. */
  consoleLines: number;
  consoleSeconds: number;
  /** RESETs the sleds received. */
  resets: number;
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
export async function run(
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
      // A bench run leaves no record of offers behind (docs/operators.md, "Restarting the server").
      "--no-state-dir",
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
      String(condition.capSeconds),
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
    capSeconds: condition.capSeconds,
    copiesPerImageFrame: reports.reduce((sum, report) => sum + report.dataDropped, 0) / accepted,
    consoleLines: reports.reduce((sum, report) => sum + report.consoleLines, 0),
    consoleSeconds: Math.max(0, ...reports.map((report) => report.consoleMs / 1000)),
    resets: reports.reduce((sum, report) => sum + report.resets, 0),
  };
}

export const HEADER =
  "condition                                server  booted   time s  slowest MB/s  mean MB/s  all MB/s  sent/image  CPU s/GiB  peak MiB  threads  emulator us/frame  copies  console lines, s  RESETs";

function line(label: string, server: string, result: Run): string {
  const time =
    result.booted === result.sleds ? result.seconds.toFixed(2) : `not booted in ${result.capSeconds} s`.padStart(8);
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
    `${(100 * result.copiesPerImageFrame).toFixed(2)}%`.padStart(6),
    `${result.consoleLines}, ${result.consoleSeconds.toFixed(2)}`.padStart(16),
    String(result.resets).padStart(6),
  ];
  return cells.join("  ") + (result.emulatorNote ? `  (${result.emulatorNote})` : "");
}

/** A condition as a row names it: its label and how many sleds. */
export function conditionName(condition: Condition): string {
  return `${condition.label}, ${condition.sleds} sled${condition.sleds > 1 ? "s" : ""}`;
}

/** Print one condition's rows: ours, the peer, and their ratio. */
export function printPair(condition: Condition, ours: Run, peer: Run): void {
  console.log(line(conditionName(condition), "ours", ours));
  console.log(line("", "peer", peer));
  console.log(ratio(ours, peer));
}

/** Ours over the peer: time (how many times faster) and aggregate rate. */
function ratio(ours: Run, peer: Run): string {
  const peerDone = peer.booted === peer.sleds;
  const oursDone = ours.booted === ours.sleds;
  const speed =
    oursDone && peerDone
      ? `${(peer.seconds / ours.seconds).toFixed(2)}x as fast`
      : `${oursDone ? "" : "ours"}${oursDone || peerDone ? "" : " and "}${peerDone ? "" : "the peer"} did not boot all sleds in ${ours.capSeconds} s`;
  const times = (a: number, b: number) => (Number.isFinite(a / b) ? `${(a / b).toFixed(2)}x` : "-");
  return (
    `${"".padEnd(40)}  ours/peer: ${speed}; aggregate ${times(ours.aggregate, peer.aggregate)}; ` +
    `sent/image ${times(ours.framesPerImageFrame, peer.framesPerImageFrame)}; CPU/GiB ${times(ours.cpuPerGib, peer.cpuPerGib)}`
  );
}

/**
 * `bun apps/mkimage.ts -i POOL -o IMAGE FLAGS...`, to its end; throws with
 * mkimage's message if it fails.
 *
 * @example runMkimage(pool, join(dir, "big-z.img"), ["-z"]);
 */
export function runMkimage(pool: string, image: string, flags: string[] = []): void {
  const made = Bun.spawnSync(["bun", join(ROOT, "apps/mkimage.ts"), "-i", pool, "-o", image, ...flags], {
    stderr: "pipe",
  });
  if (made.exitCode !== 0) throw new Error(`mkimage ${flags.join(" ")} failed: ${made.stderr.toString()}`);
}
