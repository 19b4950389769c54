/**
 * The boot server's memory against the size of what it serves: the "memory"
 * rows of `bun run bench:netboot-send` (bench/netboot-send.ts prints them
 * after its send rows; `--big-gib 0` leaves them out).
 *
 * A `--big-gib` GiB pool, its first 64 MiB sample data and the rest zeros (a
 * sparse file, so the images are quick to make), as a plain and a zlib image
 * served together. Twice, one scripted sled (bench/scripted-sleds.ts) on each
 * image, at 1 Gbit/s and pipelined, from the moment the server is ready: its
 * rate in its first two seconds (while both images load) against its rate
 * over two seconds once both are loaded (goal 80%), and the server's peak
 * resident memory over the run (goal under 512 MiB).
 */

import { truncateSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import type { VethPair } from "@ramdisk-tools/lab/veth.ts";
import { CHUNK_SIZE } from "@ramdisk-tools/protocol/frames.ts";
import { type BenchRow, goal } from "./measure.ts";
import { GIB, runMkimage } from "./netboot-run.ts";
import { helloAll, readWithoutListening, SCRIPTED_MACS } from "./scripted-sleds.ts";
import { collectLines, peakResident } from "./server-process.ts";

const GOAL_RSS = 512 * MIB;
const GOAL_EARLY_SHARE = 0.8;

/** Wait until `check()` holds, looking every 50 ms; throws "WHAT within N s" after `ms`. */
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
  const mac = SCRIPTED_MACS[0]!;
  const macText = Array.from(mac, (byte) => byte.toString(16).padStart(2, "0")).join(":");
  const server = Bun.spawn(
    [
      "bun",
      join(ROOT, "apps/bootserver.ts"),
      "--no-state-dir",
      "--json-log",
      "--sled",
      `${macText}=${pinned}`,
      pair.a,
      ...images,
      "any",
    ],
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
  runMkimage(pool, join(dir, "big.img"));
  runMkimage(pool, join(dir, "big-z.img"), ["-z"]);
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
