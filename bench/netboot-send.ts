/**
 * The boot server's send path against its floor, and its memory against the
 * size of what it serves (bench/netboot-memory.ts). Needs root; `bun run
 * bench:netboot-send`, or as the "send" rows of `bun run bench:netboot`
 * (both call printSendRows).
 *
 *   bun bench/netboot-send.ts [--seconds 8] [--image-mib 64] [--big-gib 4] [--veth-prefix rbs]
 *
 * Send path. `bun apps/bootserver.ts --rate RATE LINK IMAGE any` serves a
 * plain `--image-mib` sample image on one end of a veth pair; on the other,
 * this script plays sleds that READ without listening
 * (bench/scripted-sleds.ts), so the server never waits for a READ and this
 * script never reads a DATA frame. The floor is bench/floor-sender.c,
 * compiled here with cc (or, where there is no cc, bench/floor-sender.ts:
 * the same loop through bun:ffi), sending the same 1058-byte DATA frames on
 * the same link from a buffer, with sendmmsg(2), for as long. Rows:
 * - line rate: 1 sled, `--rate 1g`, against the floor paced at 1 Gbit/s in
 *   chunks of 43 frames, as the server paces;
 * - saturation: 4 sleds, `--rate off`, against the floor unpaced, 128
 *   frames a call;
 * each the server's CPU seconds (user + system, all threads, from /proc)
 * per GiB of image sent over `--seconds` after a second of warm-up, goal
 * within 1.3x the floor's; and the rack: cores for 32 sleds at 1 Gbit/s
 * (3.7M DATA frames a second) at the measured CPU per frame at line rate.
 *
 * Memory (skipped with `--big-gib 0`): the rows of bench/netboot-memory.ts,
 * printed after these.
 *
 * The machine has 2 cores shared with whatever else runs, this script's
 * sleds included: CPU time per GiB moves less than rates do.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { HEADER_SIZE } from "@ramdisk-tools/image/format.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, type VethPair, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { CHUNK_SIZE, DataFrameWriter, type Mac, READ_SLOTS } from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { readLinkMac } from "@ramdisk-tools/wire/link-mac.ts";
import { type BenchRow, goal, printRows } from "./measure.ts";
import { memoryRows } from "./netboot-memory.ts";
import { GIB, runMkimage } from "./netboot-run.ts";
import { helloAll, readWithoutListening, SCRIPTED_MACS } from "./scripted-sleds.ts";
import { processCpuSeconds, threadCpuSeconds, threadShares, watchLines } from "./server-process.ts";

/** What the send rows are given when no one says otherwise. */
export const SEND_DEFAULTS = { seconds: 8, imageMib: 64, bigGib: 4 };
/** Long enough for the server's threads to have compiled their hot code. */
const WARM_UP_MS = 3000;
/** Frames per sendmmsg when pacing (lib/netboot/pacing.ts sends a batch as 43 + 43 + 42). */
const PACED_CHUNK = 43;
const UNPACED_CHUNK = READ_SLOTS;
const GOAL_FLOOR_RATIO = 1.3;
/** A full rack: 32 sleds at 1 Gbit/s, 1082 bytes of link time per DATA frame (lib/wire/rate.ts). */
const RACK_FRAMES_PER_SECOND = (32 * 1e9) / 8 / 1082;

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
  const server = Bun.spawn(
    ["bun", join(ROOT, "apps/bootserver.ts"), "--no-state-dir", "--rate", rate, pair.a, image, "any"],
    {
      stdout: "pipe",
      stderr: "inherit",
    },
  );
  try {
    await watchLines(server.stdout, /^serving on /).ready;
    const macs = SCRIPTED_MACS.slice(0, sleds);
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
  runMkimage(pool, image);
  await rm(pool);
  const floor = floorCommand(dir);
  const framesFile = join(dir, "floor.frames");
  writeFloorFrames(framesFile, image, readLinkMac(pair.a), SCRIPTED_MACS[0]!);

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
