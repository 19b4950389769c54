/**
 * lookimage rows for the bench (bench/mkimage.ts calls lookimageRows): our
 * lookimage against what a person would otherwise run to check an image,
 * on the same files in the same run.
 *
 * - A compressed image: `lookimage IMAGE` vs `tail -c +4097 IMAGE | pigz -dz
 *   | sha256sum` (pigz inflates on one thread, with reading, writing and the
 *   check value on others). Issue 2's goal: at least 1.5 times as fast.
 * - The same pool stored: `lookimage STORED` vs `sha256sum RAW`.
 * - A zstd image (lookimageZstdRows): `lookimage IMAGE` vs `tail -c +4097
 *   IMAGE | zstd -d -c | sha256sum` (Debian's zstd decompresses on one
 *   thread, sha256sum hashes on another).
 *
 * Each command runs ROUNDS times, ours and the peer's alternating, after one
 * untimed read that puts the files in the page cache; the fastest run of
 * each counts, as the one least disturbed by whatever else the machine is
 * doing. The peer's digest must equal the header's, so both did the same work.
 *
 *   bun bench/lookimage-rows.ts RAW COMPRESSED_IMAGE   (rows for one pair of files; zlib or zstd)
 */

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeHeader, encodeHeader, HEADER_SIZE, type Header, toHex } from "../lib/format.ts";
import { formatBytes } from "../lib/progress.ts";
import { IMAGE_VERSIONS, payloadCodec } from "../lib/zstd-image.ts";

/** One line of the bench table; the numbers are there for goal checks. */
export interface LookimageRow {
  name: string;
  ours: string;
  peer: string;
  ratio: string;
  oursSeconds?: number;
  peerSeconds?: number;
}

/** Issue 2: verifying a compressed image at least 1.5 times as fast as `pigz -dz | sha256sum`. */
export const GOAL_SPEEDUP = 1.5;
const ROUNDS = 3;
const LOOKIMAGE = ["bun", join(import.meta.dir, "..", "apps", "lookimage.ts")];
const TIME = "/usr/bin/time";

interface Timed {
  seconds: number;
  /** User plus system CPU time, when /usr/bin/time is there to say. */
  cpuSeconds?: number;
  peakRss?: number;
  stdout: string;
}

async function timed(command: string[], workDir: string): Promise<Timed> {
  const haveTime = await Bun.file(TIME).exists();
  const usage = join(workDir, `lookimage-bench-time-${process.pid}`);
  const wrapped = haveTime ? [TIME, "-f", "%M %U %S", "-o", usage, ...command] : command;
  const started = performance.now();
  const run = Bun.spawnSync(wrapped, { stdout: "pipe", stderr: "pipe" });
  const seconds = (performance.now() - started) / 1000;
  if (run.exitCode !== 0) throw new Error(`${command.join(" ")} failed (${run.exitCode}): ${run.stderr.toString().trim()}`);
  const result: Timed = { seconds, stdout: run.stdout.toString() };
  if (haveTime) {
    const [kib, user, system] = (await Bun.file(usage).text()).trim().split("\n").at(-1)!.split(" ").map(Number);
    await rm(usage, { force: true });
    result.cpuSeconds = user! + system!;
    result.peakRss = kib! * 1024;
  }
  return result;
}

/** Run ours and the peer's ROUNDS times, alternating; the fastest run of each. */
async function race(ours: string[], peer: string[], workDir: string): Promise<{ ours: Timed; peer: Timed }> {
  let best: { ours?: Timed; peer?: Timed } = {};
  for (let round = 0; round < ROUNDS; round++) {
    const o = await timed(ours, workDir);
    const p = await timed(peer, workDir);
    if (!best.ours || o.seconds < best.ours.seconds) best.ours = o;
    if (!best.peer || p.seconds < best.peer.seconds) best.peer = p;
  }
  return best as { ours: Timed; peer: Timed };
}

const seconds = (s: number) => `${s.toFixed(2)} s`;

function rows(what: string, peerName: string, result: { ours: Timed; peer: Timed }, goal?: number): LookimageRow[] {
  const { ours, peer } = result;
  const speedup = peer.seconds / ours.seconds;
  const verdict = goal === undefined ? "" : speedup >= goal ? ` (goal ${goal}x met)` : ` (goal ${goal}x NOT met)`;
  const lines: LookimageRow[] = [
    {
      name: `${what} vs ${peerName}: time`,
      ours: seconds(ours.seconds),
      peer: seconds(peer.seconds),
      ratio: `${speedup.toFixed(2)}x as fast${verdict}`,
      oursSeconds: ours.seconds,
      peerSeconds: peer.seconds,
    },
  ];
  if (ours.cpuSeconds !== undefined && peer.cpuSeconds !== undefined) {
    lines.push({
      name: `${what} vs ${peerName}: CPU time`,
      ours: seconds(ours.cpuSeconds),
      peer: seconds(peer.cpuSeconds),
      ratio: `${((100 * ours.cpuSeconds) / peer.cpuSeconds).toFixed(0)}% of the peer's CPU`,
    });
  }
  if (ours.peakRss !== undefined) {
    lines.push({ name: `${what}: peak memory (max RSS)`, ours: formatBytes(ours.peakRss), peer: "", ratio: "" });
  }
  return lines;
}

/** The header of the image at `path`, version 2 or zstd. */
async function readHeader(path: string): Promise<Header> {
  return decodeHeader(await Bun.file(path).slice(0, HEADER_SIZE).bytes(), { fileSize: Bun.file(path).size, versions: IMAGE_VERSIONS });
}

/** Throw unless the peer printed the header's SHA-256, so both did the same work. */
function checkPeer(header: Header, result: { peer: Timed }): void {
  const expected = toHex(header.sha256);
  const digest = result.peer.stdout.split(" ")[0];
  if (digest !== expected) throw new Error(`the peer's SHA-256 ${digest} differs from the header's ${expected}`);
}

/** Put a file in the page cache, so the runs compare computing, not the disk. */
function warm(path: string): void {
  Bun.spawnSync(["cat", path], { stdout: "ignore" });
}

/**
 * Time our lookimage against `pigz -dz | sha256sum` on `compressedImagePath`
 * (a zlib image of the pool in `rawPath`), and against `sha256sum` on a
 * stored image of `rawPath` written to (and removed from) `workDir`. Throws
 * when a command fails or the peer's digest differs from the header's.
 *
 * @example
 * for (const r of await lookimageRows(scratch, raw, zlibImage)) row(r.name, r.ours, r.peer, r.ratio);
 */
export async function lookimageRows(workDir: string, rawPath: string, compressedImagePath: string): Promise<LookimageRow[]> {
  const header = await readHeader(compressedImagePath);
  if (payloadCodec(header) !== "zlib") throw new Error(`${compressedImagePath} is not a zlib image`);

  warm(compressedImagePath);
  const zlib = await race(
    [...LOOKIMAGE, compressedImagePath],
    ["sh", "-c", 'tail -c +4097 "$1" | pigz -dz | sha256sum', "sh", compressedImagePath],
    workDir,
  );
  checkPeer(header, zlib);

  // The stored twin: our header (data size = image size), then the raw bytes.
  const stored = join(workDir, "lookimage-bench-stored.img");
  try {
    const storedHeader = encodeHeader({ ...header, flags: 0n, dataSize: header.imageSize });
    const writer = Bun.file(stored).writer();
    writer.write(storedHeader);
    for await (const chunk of Bun.file(rawPath).stream()) writer.write(chunk);
    await writer.end();
    warm(rawPath);
    const plain = await race([...LOOKIMAGE, stored], ["sha256sum", rawPath], workDir);
    checkPeer(header, plain);
    return [
      ...rows(`lookimage (zlib, ${formatBytes(header.imageSize)})`, "pigz -dz | sha256sum", zlib, GOAL_SPEEDUP),
      ...rows("lookimage (stored)", "sha256sum", plain),
    ];
  } finally {
    await rm(stored, { force: true });
  }
}

/**
 * Time our lookimage against `zstd -d -c | sha256sum` on `zstdImagePath`, a
 * zstd image (docs/format.md). Throws when a command fails or the peer's
 * digest differs from the header's.
 *
 * @example
 * for (const r of await lookimageZstdRows(scratch, zstdImage)) row(r.name, r.ours, r.peer, r.ratio);
 */
export async function lookimageZstdRows(workDir: string, zstdImagePath: string): Promise<LookimageRow[]> {
  const header = await readHeader(zstdImagePath);
  if (payloadCodec(header) !== "zstd") throw new Error(`${zstdImagePath} is not a zstd image`);
  warm(zstdImagePath);
  const zstd = await race(
    [...LOOKIMAGE, zstdImagePath],
    ["sh", "-c", 'tail -c +4097 "$1" | zstd -d -q -c | sha256sum', "sh", zstdImagePath],
    workDir,
  );
  checkPeer(header, zstd);
  const what = `lookimage (zstd, ${formatBytes(header.imageSize)})`;
  const lines = rows(what, "zstd -d | sha256sum", zstd);
  const rate = (seconds: number) => `${(header.imageSize / seconds / 1e6).toFixed(0)} MB/s`;
  lines.push({
    name: `${what} vs zstd -d | sha256sum: raw bytes per second`,
    ours: rate(zstd.ours.seconds),
    peer: rate(zstd.peer.seconds),
    ratio: "",
  });
  return lines;
}

if (import.meta.main) {
  const [raw, image] = process.argv.slice(2);
  if (!raw || !image) {
    console.error("usage: bun bench/lookimage-rows.ts RAW COMPRESSED_IMAGE");
    process.exit(2);
  }
  const workDir = await mkdtemp(join(tmpdir(), "bench-lookimage-"));
  try {
    const zstd = payloadCodec(await readHeader(image)) === "zstd";
    for (const r of zstd ? await lookimageZstdRows(workDir, image) : await lookimageRows(workDir, raw, image)) {
      console.log(`${r.name.padEnd(52)} ${r.ours.padStart(10)} ${r.peer.padStart(10)}   ${r.ratio}`);
    }
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}
