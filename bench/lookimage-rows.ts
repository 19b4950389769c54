/**
 * lookimage rows for the bench (bench/mkimage.ts calls lookimageRows): our
 * lookimage against what a person would otherwise run to check an image,
 * on the same files in the same run.
 *
 * - A compressed image: `lookimage IMAGE` vs `tail -c +4097 IMAGE | pigz -dz
 *   | sha256sum` (pigz inflates on one thread, with reading, writing and the
 *   check value on others). The goal: at least 1.5 times as fast.
 * - The same pool stored: `lookimage STORED` vs `sha256sum RAW`.
 * - A zstd image (lookimageZstdRows): `lookimage IMAGE` vs `tail -c +4097
 *   IMAGE | zstd -d -c | sha256sum` (Debian's zstd decompresses on one
 *   thread, sha256sum hashes on another); the goal: at least 2x as
 *   fast. And vs the floor (bench/verify-floor.ts): at most 1.5x its time.
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
import { decodeHeader, encodeHeader, HEADER_SIZE, type Header, toHex } from "@ramdisk-tools/image/format.ts";
import { IMAGE_VERSIONS, type PayloadCodec, payloadCodec } from "@ramdisk-tools/image/zstd-image.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { formatBytes } from "@ramdisk-tools/progress/progress.ts";
import { type BenchRow, goal, type Measured, printRows, race, seconds, timeRows } from "./measure.ts";
import { verifyFloor } from "./verify-floor.ts";

/** The goal: verifying a compressed image at least 1.5 times as fast as `pigz -dz | sha256sum`. */
export const GOAL_SPEEDUP = 1.5;
/** Goals: a zstd image at least 2x as fast as `zstd -d | sha256sum`, and within 1.5x of Bun's own floor. */
const GOALS = { zstdVsCli: 2, zstdVsFloor: 1.5 };
const ROUNDS = 3;
const LOOKIMAGE = ["bun", join(ROOT, "apps", "lookimage.ts")];

/** The header of the image at `path`, version 2 or zstd. */
async function readHeader(path: string): Promise<Header> {
  return decodeHeader(await Bun.file(path).slice(0, HEADER_SIZE).bytes(), {
    fileSize: Bun.file(path).size,
    versions: IMAGE_VERSIONS,
  });
}

/** Throw unless the peer printed the header's SHA-256, so both did the same work. */
function checkPeer(header: Header, result: { peer: Measured }): void {
  const expected = toHex(header.sha256);
  const digest = result.peer.stdout.split(" ")[0];
  if (digest !== expected) throw new Error(`the peer's SHA-256 ${digest} differs from the header's ${expected}`);
}

/** Put a file in the page cache, so the runs compare computing, not the disk. */
function warm(path: string): void {
  Bun.spawnSync(["cat", path], { stdout: "ignore" });
}

/**
 * Race lookimage on `image`, which must be a `codec` image, against the
 * peer's shell pipeline (the image is its $1), checking the peer's digest.
 */
async function raceOnImage(
  image: string,
  codec: PayloadCodec,
  peerPipeline: string,
): Promise<{ header: Header; ours: Measured; peer: Measured }> {
  const header = await readHeader(image);
  if (payloadCodec(header) !== codec) throw new Error(`${image} is not a ${codec} image`);
  warm(image);
  const result = await race(ROUNDS, [...LOOKIMAGE, image], ["sh", "-c", peerPipeline, "sh", image]);
  checkPeer(header, result);
  return { header, ...result };
}

/**
 * Time our lookimage against `pigz -dz | sha256sum` on `compressedImagePath`
 * (a zlib image of the pool in `rawPath`), and against `sha256sum` on a
 * stored image of `rawPath` written to (and removed from) `workDir`. Throws
 * when a command fails or the peer's digest differs from the header's.
 *
 * @example printRows(await lookimageRows(scratch, raw, zlibImage));
 */
export async function lookimageRows(
  workDir: string,
  rawPath: string,
  compressedImagePath: string,
): Promise<BenchRow[]> {
  const { header, ...zlib } = await raceOnImage(
    compressedImagePath,
    "zlib",
    'tail -c +4097 "$1" | pigz -dz | sha256sum',
  );

  // The stored twin: our header (data size = image size), then the raw bytes.
  const stored = join(workDir, "lookimage-bench-stored.img");
  try {
    const storedHeader = encodeHeader({ ...header, flags: 0n, dataSize: header.imageSize });
    const writer = Bun.file(stored).writer();
    writer.write(storedHeader);
    for await (const chunk of Bun.file(rawPath).stream()) writer.write(chunk);
    await writer.end();
    warm(rawPath);
    const plain = await race(ROUNDS, [...LOOKIMAGE, stored], ["sha256sum", rawPath]);
    checkPeer(header, plain);
    return [
      ...timeRows(`lookimage (zlib, ${formatBytes(header.imageSize)})`, "pigz -dz | sha256sum", zlib.ours, zlib.peer, {
        speedup: GOAL_SPEEDUP,
      }),
      ...timeRows("lookimage (stored)", "sha256sum", plain.ours, plain.peer),
    ];
  } finally {
    await rm(stored, { force: true });
  }
}

/**
 * Time our lookimage against `zstd -d -c | sha256sum` on `zstdImagePath`, a
 * zstd image (docs/format.md), and against the floor of Bun decompressing
 * and hashing it in memory (bench/verify-floor.ts). Throws when a command
 * fails or a digest differs from the header's.
 *
 * @example printRows(await lookimageZstdRows(zstdImage));
 */
export async function lookimageZstdRows(zstdImagePath: string): Promise<BenchRow[]> {
  const { header, ...zstd } = await raceOnImage(
    zstdImagePath,
    "zstd",
    'tail -c +4097 "$1" | zstd -d -q -c | sha256sum',
  );
  const what = `lookimage (zstd, ${formatBytes(header.imageSize)})`;
  const lines = timeRows(what, "zstd -d | sha256sum", zstd.ours, zstd.peer, { speedup: GOALS.zstdVsCli });
  const rate = (seconds: number) => `${(header.imageSize / seconds / 1e6).toFixed(0)} MB/s`;
  lines.push({
    name: `${what} vs zstd -d | sha256sum: rate`,
    ours: rate(zstd.ours.seconds),
    peer: rate(zstd.peer.seconds),
    ratio: `${(zstd.peer.seconds / zstd.ours.seconds).toFixed(2)}x the peer's`,
  });
  const floor = await verifyFloor(zstdImagePath);
  const times = zstd.ours.seconds / floor.seconds;
  lines.push({
    name: `${what} vs Bun's decompress + SHA-256 floor, 2 threads: time`,
    ours: seconds(zstd.ours.seconds),
    peer: seconds(floor.seconds),
    ratio: goal(
      times <= GOALS.zstdVsFloor,
      `${times.toFixed(2)}x the floor (decompress ${seconds(floor.decompress)}, SHA-256 ${seconds(floor.hash)} on one thread), goal at most ${GOALS.zstdVsFloor}x`,
    ),
  });
  // What of that is start-up, the same for any image: Bun, the modules, yargs, the command line.
  const startup = await race(ROUNDS, [...LOOKIMAGE, "--version"], ["bun", "-e", "0"]);
  const work = zstd.ours.seconds - startup.ours.seconds;
  lines.push({
    name: "lookimage start-up (--version) vs bun -e 0: time",
    ours: seconds(startup.ours.seconds),
    peer: seconds(startup.peer.seconds),
    ratio: `${(startup.ours.seconds - startup.peer.seconds).toFixed(3)} s more than Bun's own start`,
  });
  lines.push({
    name: `${what} less its start-up vs the floor: time`,
    ours: seconds(work),
    peer: seconds(floor.seconds),
    ratio: `${(work / floor.seconds).toFixed(2)}x the floor`,
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
    printRows(zstd ? await lookimageZstdRows(image) : await lookimageRows(workDir, raw, image));
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}
