/**
 * Timing commands for the benchmarks, and printing what they measured as
 * rows of the same table: what was compared, our figure, the peer's figure,
 * and their ratio. bench/mkimage.ts and bench/lookimage-rows.ts use it.
 *
 * A command runs as a process under /usr/bin/time when it is there, which
 * adds its CPU time (user + system, children included) and peak memory to
 * the wall time. CPU time says more than wall time on a machine other work
 * shares: wall time charges the stolen cores to whichever command ran.
 */

import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatBytes } from "@ramdisk-tools/progress/progress.ts";

/** What one run of a command cost. */
export interface Measured {
  /** Wall-clock time. */
  seconds: number;
  /** User plus system CPU time of the command and its children, when /usr/bin/time measured it. */
  cpuSeconds?: number;
  /** Maximum resident set size in bytes, when /usr/bin/time measured it. */
  peakRss?: number;
  /** What the command printed on standard output. */
  stdout: string;
}

/** One line of a bench table; `ratio` says how ours compares with the peer named in `name`. */
export interface BenchRow {
  name: string;
  ours: string;
  peer: string;
  ratio: string;
}

export const TIME = "/usr/bin/time";
const haveTime = await Bun.file(TIME).exists();

/**
 * Run a command to completion, failing loudly, after a global `sync` (so
 * one step's dirty pages do not slow the next); its cost.
 *
 * @example const { seconds, cpuSeconds } = await measure(["zstd", "-q", "-f", "-T2", "-2", raw, "-o", out]);
 */
export async function measure(command: string[]): Promise<Measured> {
  Bun.spawnSync(["sync"]);
  const usage = join(tmpdir(), `bench-time-${process.pid}`);
  const wrapped = haveTime ? [TIME, "-f", "%M %U %S", "-o", usage, ...command] : command;
  const started = performance.now();
  const run = Bun.spawnSync(wrapped, { stdout: "pipe", stderr: "pipe" });
  const seconds = (performance.now() - started) / 1000;
  if (run.exitCode !== 0)
    throw new Error(`${command.join(" ")} failed (${run.exitCode}): ${run.stderr.toString().trim()}`);
  const measured: Measured = { seconds, stdout: run.stdout.toString() };
  if (haveTime) {
    const [kib, user, system] = (await Bun.file(usage).text()).trim().split("\n").at(-1)!.split(" ").map(Number);
    await rm(usage, { force: true });
    measured.cpuSeconds = user! + system!;
    measured.peakRss = kib! * 1024;
  }
  return measured;
}

/**
 * Run ours and the peer's command `rounds` times, alternating, and keep the
 * fastest run of each: the one least disturbed by whatever else the machine
 * is doing. For short commands, where one run is mostly noise.
 *
 * @example const { ours, peer } = await race(3, [...LOOKIMAGE, image], ["sha256sum", raw]);
 */
export async function race(
  rounds: number,
  ours: string[],
  peer: string[],
): Promise<{ ours: Measured; peer: Measured }> {
  const best: { ours?: Measured; peer?: Measured } = {};
  for (let round = 0; round < rounds; round++) {
    const o = await measure(ours);
    const p = await measure(peer);
    if (!best.ours || o.seconds < best.ours.seconds) best.ours = o;
    if (!best.peer || p.seconds < best.peer.seconds) best.peer = p;
  }
  return best as { ours: Measured; peer: Measured };
}

/** Seconds as the tables show them: "1.23 s". */
export const seconds = (s: number) => `${s.toFixed(2)} s`;

/** "(goal met)" or "(goal NOT met)" after `text`. */
export function goal(met: boolean, text: string): string {
  return `${text} ${met ? "(goal met)" : "(goal NOT met)"}`;
}

/** Goals a comparison is held to, if any. */
export interface Goals {
  /** Least speedup over the peer (peer time / our time); below 1 means "at most this much slower". */
  speedup?: number;
  /** Most memory ours may use, in bytes. */
  peakRss?: number;
}

/**
 * The rows comparing two measured runs: wall time (ours as a multiple of
 * the peer's speed), and, when /usr/bin/time measured them, CPU time and
 * peak memory; each against its goal, if given.
 *
 * @example printRows(timeRows("lookimage (stored)", "sha256sum", ours, peer));
 */
export function timeRows(
  what: string,
  peerName: string,
  ours: Measured,
  peer: Measured,
  goals: Goals = {},
): BenchRow[] {
  const speedup = peer.seconds / ours.seconds;
  const speed = `${speedup.toFixed(2)}x as fast`;
  const rows: BenchRow[] = [
    {
      name: `${what} vs ${peerName}: time`,
      ours: seconds(ours.seconds),
      peer: seconds(peer.seconds),
      ratio:
        goals.speedup === undefined
          ? speed
          : goal(speedup >= goals.speedup, `${speed}, goal ${goals.speedup.toFixed(2)}x`),
    },
  ];
  if (ours.cpuSeconds !== undefined && peer.cpuSeconds !== undefined) {
    rows.push({
      name: `${what} vs ${peerName}: CPU time`,
      ours: seconds(ours.cpuSeconds),
      peer: seconds(peer.cpuSeconds),
      ratio: `${((100 * ours.cpuSeconds) / peer.cpuSeconds).toFixed(0)}% of the peer's CPU`,
    });
  }
  if (ours.peakRss !== undefined && peer.peakRss !== undefined) {
    rows.push({
      name: `${what} vs ${peerName}: peak memory`,
      ours: formatBytes(ours.peakRss),
      peer: formatBytes(peer.peakRss),
      ratio:
        goals.peakRss === undefined
          ? `${(ours.peakRss / peer.peakRss).toFixed(2)}x the peer's`
          : goal(
              ours.peakRss < goals.peakRss,
              `${(ours.peakRss / peer.peakRss).toFixed(2)}x the peer's, limit ${formatBytes(goals.peakRss)}`,
            ),
    });
  }
  return rows;
}

/**
 * The row comparing two output sizes: ours against the peer's, in percent,
 * with the compression ratio of each over `rawSize`.
 *
 * @example printRows([sizeRow("mkimage --zstd vs zstd -T2 -2", ourBytes, zstdBytes, rawSize)]);
 */
export function sizeRow(what: string, ours: number, peer: number, rawSize: number, maxPercent?: number): BenchRow {
  const percent = (100 * (ours - peer)) / peer;
  const text = `${percent >= 0 ? "+" : ""}${percent.toFixed(2)}% (ratio ${(rawSize / ours).toFixed(2)}x vs ${(rawSize / peer).toFixed(2)}x)`;
  return {
    name: `${what}: size`,
    ours: formatBytes(ours),
    peer: formatBytes(peer),
    ratio:
      maxPercent === undefined
        ? text
        : goal(percent <= maxPercent, `${text}, goal at most ${maxPercent >= 0 ? "+" : ""}${maxPercent}%`),
  };
}

/**
 * Print rows as one table: name, ours, peer, ratio.
 *
 * @example printRows([{ name: "", ours: "ours", peer: "peer", ratio: "" }]);
 */
export function printRows(rows: readonly BenchRow[]): void {
  for (const row of rows)
    console.log(`${row.name.padEnd(68)} ${row.ours.padStart(11)} ${row.peer.padStart(11)}   ${row.ratio}`);
}
