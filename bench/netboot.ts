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
 * - send: two tables of their own, from bench/netboot-send.ts (sendRows)
 *   and bench/netboot-memory.ts (memoryRows): the server's CPU per GiB sent
 *   to sleds that READ without listening against a floor sender of the same
 *   frames (C, sendmmsg), at line rate and at saturation, the cores a rack
 *   would need; and its resident memory serving a `--big-gib` GiB plain and
 *   zlib image, with the rate of a sled that says HELLO as it starts.
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
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { goal, printRows } from "./measure.ts";
import { CONSOLE_DEFAULTS, consoleRows } from "./netboot-console.ts";
import { IMAGE_DEFAULTS, imageRows } from "./netboot-images.ts";
import {
  type Condition,
  EMULATOR_BUSY,
  FLOOD_SLEDS,
  GIGABIT_FRAME_US,
  HEADER,
  LINE_RATE_MB_PER_S,
  printPair,
  type Run,
  run,
  writeImage,
} from "./netboot-run.ts";
import { printSendRows, SEND_DEFAULTS } from "./netboot-send.ts";

/** The server as it ships: its defaults are fast re-send, pacing at 1g per sled and admission. */
const OURS_FLAGS: readonly string[] = [];
/** Today's behaviour: the same server with re-send, pacing and admission turned off. */
const PEER_FLAGS: readonly string[] = ["--no-resend", "--rate", "off", "--no-admission"];

const { values } = parseArgs({
  options: {
    rows: { type: "string", default: "loss,burst,port,slow,flood,console,images,send" },
    sleds: { type: "string", default: "1,32" },
    "mib-one": { type: "string", default: "64" },
    "mib-many": { type: "string", default: "16" },
    /** Seconds a row may take before its sleds give up. */
    cap: { type: "string", default: "45" },
    "ours-flags": { type: "string" },
    "peer-flags": { type: "string" },
    "image-mib": { type: "string", default: String(IMAGE_DEFAULTS.imageMib) },
    /** The console rows' image, their console speeds in baud (0: free) and their cap. */
    "console-mib": { type: "string", default: String(CONSOLE_DEFAULTS.imageMib) },
    consoles: { type: "string", default: CONSOLE_DEFAULTS.bauds.join(",") },
    "console-cap": { type: "string", default: String(CONSOLE_DEFAULTS.capSeconds) },
    /** The send rows: seconds measured per server, and GiB of each image in the memory rows (0: none). */
    "send-seconds": { type: "string", default: String(SEND_DEFAULTS.seconds) },
    "big-gib": { type: "string", default: String(SEND_DEFAULTS.bigGib) },
    /** Names of the veth pair made for the run start with this. */
    "veth-prefix": { type: "string", default: "rbn" },
  },
});
const ROW_GROUPS = ["loss", "burst", "port", "slow", "flood", "console", "images", "send"];
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

function conditions(): Condition[] {
  const list: Condition[] = [];
  const add = (group: string, label: string, model: string[], flood = false) => {
    if (!rowGroups.includes(group)) return;
    for (const sleds of group === "flood" ? [FLOOD_SLEDS] : sledCounts)
      list.push({ group, label, sleds, model, flood, capSeconds });
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
      const [ours, peer] = [
        await run(a, b, image, SERVERS[0].flags, condition),
        await run(a, b, image, SERVERS[1].flags, condition),
      ];
      printPair(condition, ours, peer);
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
  if (rowGroups.includes("console")) {
    const options = {
      imageMib: Number(values["console-mib"]),
      bauds: values.consoles.split(",").map(Number),
      capSeconds: Number(values["console-cap"]),
    };
    await withVethPair((pair) => consoleRows(pair, dir, options), values["veth-prefix"]);
  }
  if (rowGroups.includes("images")) {
    const options = { imageMib: Number(values["image-mib"]), runs: IMAGE_DEFAULTS.runs };
    const { heading, rows } = await withVethPair((pair) => imageRows(pair, dir, options), values["veth-prefix"]);
    console.log(`\n${heading}`);
    printRows(rows);
  }
  if (rowGroups.includes("send")) {
    const options = { seconds: Number(values["send-seconds"]), imageMib: SEND_DEFAULTS.imageMib };
    await withVethPair((pair) => printSendRows(pair, dir, options, Number(values["big-gib"])), values["veth-prefix"]);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
