/**
 * The console rows of bench:netboot: the same boots with each emulated
 * sled printing as the sled kernel does (`sled --console-baud`: a line per
 * DATA it did not ask for and a status line a second, each holding up its
 * receive loop for its serial time), at each console speed, against the
 * same server with `--no-resend`, the policy of the existing server (wait
 * for the sled's own re-ask), in the same run.
 *
 * Rows, for every console speed (0: free, 3 Mbaud, 115,200, 9600 baud):
 * no loss (1 sled and 32), 0.5% and 1% random loss, 0.2% lost in bursts of
 * 4, and 0.5% loss behind a gigabit switch port with 64 KiB of buffer (1
 * sled each); then 32 sleds at 0.5% loss with 115,200-baud consoles. A
 * loss-free row is the median of three alternating runs of each server. Each
 * row prints the copies the sleds received (DATA not taken, over the frames
 * taken), the console lines and the most seconds one sled spent printing,
 * and the RESETs the sleds received; the goals of issue 16 follow.
 */
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import type { VethPair } from "@ramdisk-tools/lab/veth.ts";
import { goal } from "./measure.ts";
import { type Condition, conditionName, HEADER, printPair, type Run, run, writeImage } from "./netboot-run.ts";

export const CONSOLE_DEFAULTS = { imageMib: 16, bauds: [0, 3_000_000, 115_200, 9600], capSeconds: 150 };

/** The reference policy: the same server, waiting for the sled's re-ask instead of sending copies. */
const PEER_FLAGS = ["--no-resend"];

/** Lossy rows' goals: ours at least this many times as fast as --no-resend, per console speed. */
const SPEEDUP_GOALS = new Map([
  [0, 20],
  [3_000_000, 12],
  [115_200, 2.5],
  [9600, 1],
]);

const LOSSY = [
  { label: "0.5% loss", model: ["--drop-rate", "0.005", "--seed", "1"] },
  { label: "1% loss", model: ["--drop-rate", "0.01", "--seed", "1"] },
  { label: "0.2% in bursts of 4", model: ["--burst-rate", "0.0005", "--burst-length", "4", "--seed", "1"] },
  {
    label: "0.5% loss, 1g port 64 KiB",
    model: ["--drop-rate", "0.005", "--seed", "1", "--port-rate", "1g", "--port-buffer", "65536"],
  },
];

/** Runs of each loss-free row, alternating ours and the peer; the median by time is printed. */
const LOSS_FREE_RUNS = 3;

function medianRun(runs: Run[]): Run {
  const sorted = [...runs].sort((a, b) => a.seconds - b.seconds);
  return sorted[sorted.length >> 1]!;
}

function baudName(baud: number): string {
  return baud === 0 ? "no console" : baud >= 1e6 ? `${baud / 1e6} Mbaud` : `${baud} baud`;
}

interface ConsoleRow {
  condition: Condition;
  baud: number;
  lossy: boolean;
  ours: Run;
  peer: Run;
}

/**
 * Run the console rows on `pair` with an `imageMib` MiB plain image; print
 * them and their goals.
 *
 * @example await withVethPair((pair) => consoleRows(pair, dir, CONSOLE_DEFAULTS));
 */
export async function consoleRows(
  pair: VethPair,
  dir: string,
  options: { imageMib: number; bauds: number[]; capSeconds: number },
): Promise<void> {
  const size = options.imageMib * MIB;
  const path = join(dir, `console-${options.imageMib}.img`);
  const image = { path, sha256: await writeImage(path, size), size };
  const rows: { condition: Condition; baud: number; lossy: boolean }[] = [];
  const add = (label: string, sleds: number, baud: number, model: string[], lossy: boolean) =>
    rows.push({
      condition: {
        group: "console",
        label: `${label}, ${baudName(baud)}`,
        sleds,
        model: [...model, "--console-baud", String(baud)],
        capSeconds: options.capSeconds,
      },
      baud,
      lossy,
    });
  for (const baud of options.bauds) {
    add("no loss", 1, baud, [], false);
    add("no loss", 32, baud, [], false);
    for (const { label, model } of LOSSY) add(label, 1, baud, model, true);
  }
  add("0.5% loss", 32, 115_200, LOSSY[0]!.model, true);

  console.log(
    `\nconsole rows: each sled prints a line per DATA it did not ask for and a status line a second at the given speed; ` +
      `ours = bootserver (defaults), peer = bootserver ${PEER_FLAGS.join(" ")}; ${options.imageMib} MiB image per sled; ` +
      `capped at ${options.capSeconds} s`,
  );
  console.log(HEADER);
  const done: ConsoleRow[] = [];
  for (const row of rows) {
    // A loss-free boot takes a fraction of a second and its goal is within 5%: the median of alternating runs.
    const runs = row.lossy ? 1 : LOSS_FREE_RUNS;
    const oursRuns: Run[] = [];
    const peerRuns: Run[] = [];
    for (let i = 0; i < runs; i++) {
      oursRuns.push(await run(pair.a, pair.b, image, [], row.condition));
      peerRuns.push(await run(pair.a, pair.b, image, PEER_FLAGS, row.condition));
    }
    const ours = medianRun(oursRuns);
    const peer = medianRun(peerRuns);
    printPair(row.condition, ours, peer);
    done.push({ ...row, ours, peer });
  }
  printConsoleGoals(done);
}

function printConsoleGoals(rows: ConsoleRow[]): void {
  const lines: string[] = [];
  const booted = (result: Run) => result.booted === result.sleds;
  for (const { condition, baud, lossy, ours, peer } of rows) {
    const name = conditionName(condition);
    const speedup = booted(ours) ? (booted(peer) ? peer.seconds : peer.capSeconds) / ours.seconds : 0;
    const atLeast = booted(peer) ? "" : "at least ";
    if (!lossy) {
      lines.push(
        goal(
          booted(ours) && ours.copiesPerImageFrame <= 0.001 && ours.seconds <= 1.05 * peer.seconds,
          `${name}: copies ${(100 * ours.copiesPerImageFrame).toFixed(3)}% of frames (goal <= 0.1%), ` +
            `time ${(ours.seconds / peer.seconds).toFixed(3)}x --no-resend's (goal <= 1.05x)`,
        ),
      );
    } else {
      const wanted = condition.sleds > 1 ? 2 : SPEEDUP_GOALS.get(baud);
      if (wanted !== undefined)
        lines.push(
          goal(
            speedup >= wanted,
            `${name}: ${atLeast}${speedup.toFixed(2)}x as fast as --no-resend, goal >= ${wanted}x`,
          ),
        );
    }
  }
  const resets = rows.reduce((sum, row) => sum + row.ours.resets, 0);
  lines.push(goal(resets === 0, `RESETs received by sleds served by ours, all console rows: ${resets}, goal 0`));
  console.log(`\nconsole goals, ours:\n${lines.map((text) => `  ${text}`).join("\n")}`);
}
