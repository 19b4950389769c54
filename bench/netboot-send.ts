/**
 * The boot server's send path against its floor, and its memory against the
 * size of what it serves. Needs root; `bun run bench:netboot-send`, or as the
 * "send" rows of `bun run bench:netboot` (both call sendRows).
 *
 *   bun bench/netboot-send.ts [--seconds 8] [--image-mib 64] [--big-gib 4] [--veth-prefix rbs]
 *
 * Send path. `bun apps/bootserver.ts --rate RATE LINK IMAGE any` serves a
 * plain `--image-mib` sample image on one end of a veth pair; on the other,
 * this script plays sleds that READ without listening: each says HELLO,
 * takes its OFFER, then asks for batch after batch (wrapping at the end of
 * the image), keeping a few batches asked ahead of the DATA that has
 * arrived (the link's receive counter, /sys/class/net/LINK/statistics), so
 * the server never waits for a READ and this script never reads a DATA
 * frame. The floor is bench/floor-sender.c, compiled here with cc (or, where
 * there is no cc, bench/floor-sender.ts: the same loop through bun:ffi),
 * sending the same 1058-byte DATA frames on the same link from a buffer,
 * with sendmmsg(2), for as long. Rows:
 * - line rate: 1 sled, `--rate 1g`, against the floor paced at 1 Gbit/s in
 *   chunks of 43 frames, as the server paces;
 * - saturation: 4 sleds, `--rate off`, against the floor unpaced, 128
 *   frames a call;
 * each the server's CPU seconds (user + system, all threads, from /proc)
 * per GiB of image sent over `--seconds` after a second of warm-up, goal
 * within 1.3x the floor's; and the rack: cores for 32 sleds at 1 Gbit/s
 * (3.7M DATA frames a second) at the measured CPU per frame at line rate.
 *
 * Memory (skipped with `--big-gib 0`): a `--big-gib` GiB pool, its first
 * 64 MiB sample data and the rest zeros (a sparse file, so the images are
 * quick to make), as a plain and a zlib image served together. Twice, one
 * scripted sled on each image, at 1 Gbit/s and pipelined as above, from the
 * moment the server is ready: its rate in its first two seconds (while
 * both images load) against its rate over two seconds once both are loaded
 * (goal 80%), and the server's peak resident memory over the run (goal under
 * 512 MiB).
 *
 * The machine has 2 cores shared with whatever else runs, this script's
 * sleds included: CPU time per GiB moves less than rates do.
 */
import { existsSync, readdirSync, readFileSync, truncateSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { HEADER_SIZE, MIB } from "@ramdisk-tools/image/format.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, type VethPair, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  BROADCAST_MAC,
  CHUNK_SIZE,
  DataFrameWriter,
  decodeFrame,
  encodeFrame,
  type Mac,
  parseMac,
  READ_SLOTS,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { consecutiveMacs } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { readLinkMac } from "@ramdisk-tools/wire/link-mac.ts";
import { type BenchRow, goal, printRows } from "./measure.ts";
import { eachLines, processCpuSeconds, watchLines } from "./server-process.ts";

const ROOT = join(import.meta.dir, "..");
const GIB = 1024 * MIB;
/** What the send rows are given when no one says otherwise. */
export const SEND_DEFAULTS = { seconds: 8, imageMib: 64, bigGib: 4 };
/** Long enough for the server's threads to have compiled their hot code. */
const WARM_UP_MS = 3000;
/** Batches each scripted sled keeps asked ahead of the DATA that arrived. */
const AHEAD = 3;
/** Frames per sendmmsg when pacing (lib/netboot/pacing.ts sends a batch as 43 + 43 + 42). */
const PACED_CHUNK = 43;
const UNPACED_CHUNK = READ_SLOTS;
const GOAL_FLOOR_RATIO = 1.3;
const GOAL_RSS = 512 * MIB;
const GOAL_EARLY_SHARE = 0.8;
/** A full rack: 32 sleds at 1 Gbit/s, 1082 bytes of link time per DATA frame (lib/wire/rate.ts). */
const RACK_FRAMES_PER_SECOND = (32 * 1e9) / 8 / 1082;
const FIRST_MAC = consecutiveMacs(parseMac("02:5e:5e:00:00:01")!, 4);

/** A link's counter from /sys/class/net/LINK/statistics. */
function linkCounter(link: string, name: string): number {
  return Number(readFileSync(`/sys/class/net/${link}/statistics/${name}`, "utf8"));
}

/** CPU seconds so far of each thread of a process, by thread id, with its name. */
function threadCpuSeconds(pid: number): Map<string, { name: string; seconds: number }> {
  const threads = new Map<string, { name: string; seconds: number }>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // ended meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    threads.set(tid, { name, seconds: (Number(fields[11]) + Number(fields[12])) / 100 });
  }
  return threads;
}

/**
 * Where one sled's server spent its CPU between two threadCpuSeconds: its
 * session thread (the busiest worker), the dispatcher (the next; the spare
 * session is idle) and the rest (main thread, JIT, GC).
 */
function threadShares(before: ReturnType<typeof threadCpuSeconds>, after: ReturnType<typeof threadCpuSeconds>) {
  const spent = [...after].map(([tid, thread]) => ({
    worker: thread.name === "Worker",
    seconds: thread.seconds - (before.get(tid)?.seconds ?? 0),
  }));
  const workers = spent.filter((thread) => thread.worker).sort((a, b) => b.seconds - a.seconds);
  const total = spent.reduce((sum, thread) => sum + thread.seconds, 0);
  const session = workers[0]?.seconds ?? 0;
  const dispatcher = workers[1]?.seconds ?? 0;
  return { session, dispatcher, rest: total - session - dispatcher };
}

/** Peak resident memory of a process so far (VmHWM). */
function peakResident(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/** Say HELLO as each of `sleds` until each has its OFFER; the server's MAC. */
async function helloAll(link: string, sleds: readonly Mac[]): Promise<Mac> {
  const capture = PcapLink.open(link, { timeoutMs: 1 });
  try {
    let server: Mac | null = null;
    const offered = new Set<number>();
    const deadline = performance.now() + 60_000;
    while (offered.size < sleds.length) {
      if (performance.now() > deadline) throw new Error("no OFFER within 60 s");
      sleds.forEach((sled, index) => {
        if (!offered.has(index))
          capture.inject(encodeFrame(BROADCAST_MAC, sled, { type: "hello", text: new TextEncoder().encode("bench") }));
      });
      const until = performance.now() + 50;
      while (performance.now() < until) {
        const bytes = capture.next();
        if (!bytes) {
          await Bun.sleep(0);
          continue;
        }
        const decoded = decodeFrame(bytes);
        if (!decoded.ok || decoded.frame.message.type !== "offer") continue;
        const index = sleds.findIndex((sled) => sameMac(sled, decoded.frame.destination));
        if (index >= 0) offered.add(index);
        server = decoded.frame.source;
      }
    }
    return server!;
  } finally {
    capture.close();
  }
}

/**
 * Sleds that READ without listening (see the module comment): `sleds`
 * (offered already by `server`) ask batch after batch of an image of
 * `imageSize` bytes until `stop()`; `sample()` says how many frames have
 * arrived so far.
 */
function readWithoutListening(link: string, server: Mac, sleds: readonly Mac[], imageSize: number) {
  const sender = PcapLink.open(link, { capture: false });
  const base = linkCounter(link, "rx_packets");
  const next = sleds.map(() => 0);
  let asked = 0;
  let running = true;
  const slots = new BigUint64Array(READ_SLOTS);
  const loop = (async () => {
    for (let turn = 0; running; ) {
      const arrived = linkCounter(link, "rx_packets") - base;
      while (asked - arrived < AHEAD * READ_SLOTS * sleds.length) {
        const index = turn++ % sleds.length;
        const first = next[index]!;
        for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(first + slot * CHUNK_SIZE);
        next[index] = (first + READ_SLOTS * CHUNK_SIZE) % imageSize;
        sender.inject(encodeFrame(server, sleds[index]!, { type: "read", count: BigInt(READ_SLOTS), slots }));
        asked += READ_SLOTS;
      }
      await Bun.sleep(1);
    }
  })();
  return {
    sample: () => linkCounter(link, "rx_packets") - base,
    stop: async () => {
      running = false;
      await loop;
      sender.close();
    },
  };
}

/** What one send-path run measured: frames a second and CPU seconds per GiB of image sent. */
interface SendRun {
  framesPerSecond: number;
  cpuPerGib: number;
  /** CPU microseconds per DATA frame. */
  usPerFrame: number;
  /** The server's: microseconds per DATA frame in its session thread, its dispatcher and the rest (threadShares). */
  threads?: { session: number; dispatcher: number; rest: number };
}

function sendRun(frames: number, cpuSeconds: number, wallSeconds: number): SendRun {
  return {
    framesPerSecond: frames / wallSeconds,
    cpuPerGib: cpuSeconds / ((frames * CHUNK_SIZE) / GIB),
    usPerFrame: (cpuSeconds / frames) * 1e6,
  };
}

/** The server serving `image` at `rate` to `sleds` scripted sleds that READ without listening, for `seconds`. */
async function serverRun(pair: VethPair, image: string, size: number, rate: string, sleds: number, seconds: number) {
  const server = Bun.spawn(["bun", join(ROOT, "apps/bootserver.ts"), "--rate", rate, pair.a, image, "any"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  try {
    await watchLines(server.stdout, /^serving on /).ready;
    const macs = FIRST_MAC.slice(0, sleds);
    const serverMac = await helloAll(pair.b, macs);
    const client = readWithoutListening(pair.b, serverMac, macs, size);
    await Bun.sleep(WARM_UP_MS);
    const [frames0, cpu0, t0] = [client.sample(), await processCpuSeconds(server.pid), performance.now()];
    const threads0 = threadCpuSeconds(server.pid);
    await Bun.sleep(seconds * 1000);
    const [frames1, cpu1, t1] = [client.sample(), await processCpuSeconds(server.pid), performance.now()];
    const shares = threadShares(threads0, threadCpuSeconds(server.pid));
    await client.stop();
    const frames = frames1 - frames0;
    const perFrame = (cpuSeconds: number) => (cpuSeconds / frames) * 1e6;
    return {
      ...sendRun(frames, cpu1 - cpu0, (t1 - t0) / 1000),
      threads: {
        session: perFrame(shares.session),
        dispatcher: perFrame(shares.dispatcher),
        rest: perFrame(shares.rest),
      },
    };
  } finally {
    server.kill("SIGTERM");
    await server.exited;
  }
}

/**
 * The floor sender (compiled C where cc is, else the bun:ffi loop), for
 * `seconds`; its figures. The scripted sleds' sending socket is open on the
 * other end meanwhile, as in the server's runs: the kernel hands every frame
 * that arrives there to it (its filter drops them), which the sender pays.
 */
async function floorRun(
  floor: string[],
  pair: VethPair,
  framesFile: string,
  chunk: number,
  seconds: number,
  rate: number,
) {
  const sledSocket = PcapLink.open(pair.b, { capture: false });
  try {
    const run = Bun.spawn(
      [...floor, pair.a, framesFile, String(FRAME_SIZE), String(chunk), String(seconds), String(rate)],
      { stdout: "pipe", stderr: "inherit" },
    );
    const out = (await new Response(run.stdout).text()).trim();
    if ((await run.exited) !== 0) throw new Error(`floor sender failed: ${out}`);
    const [frames, cpu] = out.split(" ").map(Number);
    return sendRun(frames!, cpu!, seconds);
  } finally {
    sledSocket.close();
  }
}

/** A DATA frame of a full chunk: 14 + 12 + 8 + 1024 bytes. */
const FRAME_SIZE = 1058;

/** The floor sender's command: bench/floor-sender.c built into `dir` with cc, else bench/floor-sender.ts. */
function floorCommand(dir: string): { command: string[]; name: string } {
  const binary = join(dir, "floor-sender");
  const built = Bun.spawnSync(["cc", "-O2", "-o", binary, join(import.meta.dir, "floor-sender.c")], { stderr: "pipe" });
  if (built.success && existsSync(binary)) return { command: [binary], name: "C floor" };
  return { command: ["bun", join(import.meta.dir, "floor-sender.ts")], name: "bun:ffi floor" };
}

/** The DATA frames answering the first batch of `image` (a plain image file) to `sled`, as the server sends them. */
function writeFloorFrames(path: string, image: string, server: Mac, sled: Mac): void {
  const raw = readFileSync(image).subarray(HEADER_SIZE, HEADER_SIZE + READ_SLOTS * CHUNK_SIZE);
  const writer = new DataFrameWriter(sled, server);
  const frames = new Uint8Array(READ_SLOTS * FRAME_SIZE);
  for (let slot = 0; slot < READ_SLOTS; slot++)
    frames.set(writer.answer(BigInt(slot * CHUNK_SIZE), raw), slot * FRAME_SIZE);
  Bun.write(path, frames);
}

function makeImage(pool: string, image: string, flags: string[] = []): void {
  const made = Bun.spawnSync(["bun", join(ROOT, "apps/mkimage.ts"), "-i", pool, "-o", image, ...flags], {
    stderr: "pipe",
  });
  if (made.exitCode !== 0) throw new Error(`mkimage ${flags.join(" ")} failed: ${made.stderr.toString()}`);
}

const cpuGib = (run: SendRun) => `${run.cpuPerGib.toFixed(2)} s/GiB`;
const kfps = (run: SendRun) => `${(run.framesPerSecond / 1000).toFixed(0)}k frames/s`;

/**
 * The send-path rows: a heading and the rows to print under it.
 *
 * @example const { heading, rows } = await sendRows(pair, dir, SEND_DEFAULTS);
 */
export async function sendRows(
  pair: VethPair,
  dir: string,
  options: { seconds: number; imageMib: number },
): Promise<{ heading: string; rows: BenchRow[] }> {
  const pool = join(dir, "send.raw");
  const image = join(dir, "send.img");
  const size = options.imageMib * MIB;
  await writeSamplePool(pool, size);
  makeImage(pool, image);
  await rm(pool);
  const floor = floorCommand(dir);
  const framesFile = join(dir, "floor.frames");
  writeFloorFrames(framesFile, image, readLinkMac(pair.a), FIRST_MAC[0]!);

  const lineOurs = await serverRun(pair, image, size, "1g", 1, options.seconds);
  const lineFloor = await floorRun(floor.command, pair, framesFile, PACED_CHUNK, options.seconds, 1e9);
  const fullOurs = await serverRun(pair, image, size, "off", 4, options.seconds);
  const fullFloor = await floorRun(floor.command, pair, framesFile, UNPACED_CHUNK, options.seconds, 0);
  const ratio = (ours: SendRun, peer: SendRun) => {
    const times = ours.cpuPerGib / peer.cpuPerGib;
    return goal(times <= GOAL_FLOOR_RATIO, `${times.toFixed(2)}x the floor's CPU, goal <= ${GOAL_FLOOR_RATIO}x`);
  };
  const cores = (run: SendRun) => `${((run.usPerFrame / 1e6) * RACK_FRAMES_PER_SECOND).toFixed(1)} cores`;
  const heading =
    `send path: bootserver serving a ${options.imageMib} MiB plain image to sleds that READ without listening, ` +
    `against the ${floor.name} (bench/floor-sender.c) sending the same frames on the same veth; ` +
    `${options.seconds} s each after ${WARM_UP_MS / 1000} s of warm-up`;
  const rows: BenchRow[] = [
    {
      name: "line rate, 1 sled, --rate 1g: CPU per GiB sent",
      ours: cpuGib(lineOurs),
      peer: cpuGib(lineFloor),
      ratio: ratio(lineOurs, lineFloor),
    },
    { name: "line rate, 1 sled, --rate 1g: frames sent", ours: kfps(lineOurs), peer: kfps(lineFloor), ratio: "" },
    {
      name: "saturation, 4 sleds, --rate off: CPU per GiB sent",
      ours: cpuGib(fullOurs),
      peer: cpuGib(fullFloor),
      ratio: ratio(fullOurs, fullFloor),
    },
    { name: "saturation, 4 sleds, --rate off: frames sent", ours: kfps(fullOurs), peer: kfps(fullFloor), ratio: "" },
    {
      name: "CPU per DATA frame, line rate / saturation",
      ours: `${lineOurs.usPerFrame.toFixed(2)} / ${fullOurs.usPerFrame.toFixed(2)} us`,
      peer: `${lineFloor.usPerFrame.toFixed(2)} / ${fullFloor.usPerFrame.toFixed(2)} us`,
      ratio: `${(lineOurs.usPerFrame - lineFloor.usPerFrame).toFixed(2)} / ${(fullOurs.usPerFrame - fullFloor.usPerFrame).toFixed(2)} us above the floor`,
    },
    {
      name: "line rate, CPU per frame: session thread / dispatcher / the rest",
      ours: `${lineOurs.threads!.session.toFixed(2)} / ${lineOurs.threads!.dispatcher.toFixed(2)} / ${lineOurs.threads!.rest.toFixed(2)} us`,
      peer: `${lineFloor.usPerFrame.toFixed(2)} us`,
      ratio: `the session thread is ${(lineOurs.threads!.session / lineFloor.usPerFrame).toFixed(2)}x the floor`,
    },
    {
      name: "rack: cores for 32 sleds at 1 Gbit/s (3.7M frames/s), at line rate's cost",
      ours: cores(lineOurs),
      peer: cores(lineFloor),
      ratio: `${(lineOurs.usPerFrame / lineFloor.usPerFrame).toFixed(2)}x the floor's`,
    },
  ];
  return { heading, rows };
}

/**
 * Run and print the send rows, then the memory rows with `bigGib` GiB images (none for 0).
 *
 * @example await withVethPair((pair) => printSendRows(pair, dir, SEND_DEFAULTS, 4));
 */
export async function printSendRows(
  pair: VethPair,
  dir: string,
  options: { seconds: number; imageMib: number },
  bigGib: number,
): Promise<void> {
  const send = await sendRows(pair, dir, options);
  console.log(`\n${send.heading}`);
  printRows(send.rows);
  if (bigGib > 0) {
    const memory = await memoryRows(pair, dir, bigGib);
    console.log(`\n${memory.heading}`);
    printRows(memory.rows);
  }
}

/** A server's standard output, line by line as it comes. */
function collectLines(stream: ReadableStream<Uint8Array>): string[] {
  const lines: string[] = [];
  void eachLines(stream, (complete) => lines.push(...complete));
  return lines;
}

async function until(check: () => boolean, what: string, ms = 600_000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`${what} within ${ms / 1000} s`);
    await Bun.sleep(50);
  }
}

/** How one sled fared on one image from the server's start, and the server's peak memory. */
interface MemoryRun {
  /** MB/s (10^6 bytes) over the first RATE_SECONDS, and over as long once both images are checked. */
  early: number;
  loaded: number;
  peak: number;
  /** Seconds each image took to check (hash, or inflate and hash). */
  loadSeconds: number[];
}

const RATE_SECONDS = 2;

/**
 * The server serving `images` (from `dir`), one scripted sled pinned to
 * `pinned`, which says HELLO as soon as the server is ready and then READs
 * without listening at its pace (the server's default 1 Gbit/s).
 */
async function memoryRun(pair: VethPair, dir: string, images: string[], pinned: string, size: number) {
  const mac = FIRST_MAC[0]!;
  const macText = Array.from(mac, (byte) => byte.toString(16).padStart(2, "0")).join(":");
  const server = Bun.spawn(
    ["bun", join(ROOT, "apps/bootserver.ts"), "--json-log", "--sled", `${macText}=${pinned}`, pair.a, ...images, "any"],
    { stdout: "pipe", stderr: "inherit", env: { ...process.env, TMPDIR: dir }, cwd: dir },
  );
  const lines = collectLines(server.stdout);
  const events = (event: string) => lines.filter((line) => line.includes(`"event":"${event}"`));
  try {
    await until(() => events("listening").length > 0, "the server was not ready");
    const serverMac = await helloAll(pair.b, [mac]);
    const client = readWithoutListening(pair.b, serverMac, [mac], size);
    const rate = async () => {
      const before = client.sample();
      await Bun.sleep(RATE_SECONDS * 1000);
      return ((client.sample() - before) * CHUNK_SIZE) / RATE_SECONDS / 1e6;
    };
    const early = await rate();
    await until(
      () => events("loaded").length + events("refused").length >= images.length,
      "the images were not loaded",
    );
    if (events("refused").length > 0) throw new Error(`an image was refused: ${events("refused")[0]}`);
    const loaded = await rate();
    await client.stop();
    const loadSeconds = events("loaded").map((line) => (JSON.parse(line) as { seconds: number }).seconds);
    return { early, loaded, peak: peakResident(server.pid), loadSeconds } satisfies MemoryRun;
  } finally {
    server.kill("SIGTERM");
    await server.exited;
  }
}

/**
 * The memory rows: a `bigGib` GiB pool (64 MiB of sample data, then zeros)
 * as a plain and a zlib image, served together (see the module comment).
 *
 * @example const { heading, rows } = await memoryRows(pair, dir, 4);
 */
export async function memoryRows(
  pair: VethPair,
  dir: string,
  bigGib: number,
): Promise<{ heading: string; rows: BenchRow[] }> {
  const size = bigGib * GIB;
  const pool = join(dir, "big.raw");
  await writeSamplePool(pool, 64 * MIB);
  truncateSync(pool, size);
  makeImage(pool, join(dir, "big.img"));
  makeImage(pool, join(dir, "big-z.img"), ["-z"]);
  await rm(pool);
  const images = ["big.img", "big-z.img"];
  const plain = await memoryRun(pair, dir, images, "big.img", size);
  const zlib = await memoryRun(pair, dir, images, "big-z.img", size);
  await rm(join(dir, "big.img"));
  await rm(join(dir, "big-z.img"));
  const peak = Math.max(plain.peak, zlib.peak);
  const mbps = (value: number) => `${value.toFixed(1)} MB/s`;
  const early = (run: MemoryRun) => {
    const share = run.early / run.loaded;
    return goal(
      share >= GOAL_EARLY_SHARE,
      `${(100 * share).toFixed(0)}% of its rate once both are checked, goal ${100 * GOAL_EARLY_SHARE}%`,
    );
  };
  const heading =
    `memory: a ${bigGib} GiB plain and a ${bigGib} GiB zlib image served together (sparse: 64 MiB of sample data, then zeros), ` +
    `one sled pinned to each in turn, saying HELLO as the server starts and READing at 1 Gbit/s; ` +
    `rates over ${RATE_SECONDS} s, from its first READ and once both images are checked`;
  const rows: BenchRow[] = [
    {
      name: `peak resident memory vs the images' ${2 * bigGib} GiB`,
      ours: `${(peak / MIB).toFixed(0)} MiB`,
      peer: `${2 * bigGib * 1024} MiB`,
      ratio: goal(peak < GOAL_RSS, `goal < ${GOAL_RSS / MIB} MiB`),
    },
    {
      name: "sled on the plain image, from the start vs checked",
      ours: mbps(plain.early),
      peer: mbps(plain.loaded),
      ratio: early(plain),
    },
    {
      name: "sled on the zlib image, from the start vs checked",
      ours: mbps(zlib.early),
      peer: mbps(zlib.loaded),
      ratio: early(zlib),
    },
    {
      name: "time to check the plain / inflate and check the zlib image",
      ours: `${plain.loadSeconds.map((value) => value.toFixed(1)).join(" / ")} s`,
      peer: "",
      ratio: "while serving, beside the sessions",
    },
  ];
  return { heading, rows };
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: String(SEND_DEFAULTS.seconds) },
      "image-mib": { type: "string", default: String(SEND_DEFAULTS.imageMib) },
      "big-gib": { type: "string", default: String(SEND_DEFAULTS.bigGib) },
      "veth-prefix": { type: "string", default: "rbs" },
    },
  });
  const raw = canUseRawNetwork();
  if (!raw.ok) {
    console.error(`bench:netboot-send skipped: ${raw.why}`);
    process.exit(0);
  }
  const dir = await mkdtemp(join(tmpdir(), "bench-netboot-send-"));
  try {
    const options = { seconds: Number(values.seconds), imageMib: Number(values["image-mib"]) };
    await withVethPair((pair) => printSendRows(pair, dir, options, Number(values["big-gib"])), values["veth-prefix"]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
