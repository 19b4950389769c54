/**
 * Fuzz tests of payload verification (lib/image/verify.ts): the zlib
 * inflater against python3's zlib, zlib bombs under a memory watch, and
 * verifyPayload on image files with damaged zlib and zstd payloads. The
 * generator, tally and shared checks are tests/helpers/fuzz.ts's.
 */

import { describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateRawSync, deflateSync, constants as zlibConstants } from "node:zlib";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import {
  FLAG_COMPRESSED,
  FLAG_ZSTD,
  HEADER_SIZE,
  type Header,
  VERSION,
  ZSTD_VERSION,
} from "@ramdisk-tools/image/format.ts";
import { type HashReport, hashStage } from "@ramdisk-tools/image/hash-stage.ts";
import { type InflateReport, inflateStage } from "@ramdisk-tools/image/inflate-stage.ts";
import { verifyPayload } from "@ramdisk-tools/image/verify.ts";
import { PieceSender } from "@ramdisk-tools/threads/piece-queue.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { hex, runCommand } from "../helpers/common.ts";
import {
  concat,
  flipBits,
  fuzzFile,
  imageLike,
  isOneLine,
  MEMORY_SLACK_MIB,
  outcome,
  peakGrowthMiB,
  pythonJson,
  Random,
  scaled,
  Tally,
} from "../helpers/fuzz.ts";
import { zstdPayload } from "../helpers/zstd.ts";

const scratch = fuzzFile();

interface InflateRun {
  report: InflateReport | "hang";
  hashed: HashReport | null;
}

const HANG_MS = 15_000;

function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T | "hang"> {
  let timer: Timer | undefined;
  const deadline = new Promise<"hang">((resolve) => (timer = setTimeout(() => resolve("hang"), ms)));
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Run the inflate stage and the SHA-256 stage on this thread, linked by
 * MessageChannels as verifyPayload links them across threads, feeding the
 * stream in pieces of `pieceSize` bytes.
 */
async function inflateOnThisThread(stream: Uint8Array, imageSize: number, pieceSize: number): Promise<InflateRun> {
  const toInflate = new MessageChannel();
  const toHash = new MessageChannel();
  const feeder = new PieceSender(toInflate.port1);
  const inflating = inflateStage({ input: toInflate.port2, output: toHash.port1, imageSize });
  const hashing = hashStage({ input: toHash.port2 });
  const feeding = (async () => {
    for (let at = 0; at < stream.length; at += pieceSize) {
      await feeder.room();
      const piece = feeder.buffer(pieceSize).subarray(0, Math.min(pieceSize, stream.length - at));
      piece.set(stream.subarray(at, at + piece.length));
      feeder.send(piece);
    }
    feeder.end();
  })().catch(() => {});
  try {
    const report = await withDeadline(inflating, HANG_MS);
    const hashed = report !== "hang" && report.kind === "inflated" ? await withDeadline(hashing, HANG_MS) : null;
    return { report, hashed: hashed === "hang" ? null : hashed };
  } finally {
    feeder.close();
    await feeding;
    for (const port of [toInflate.port1, toInflate.port2, toHash.port1, toHash.port2]) port.close();
  }
}

/**
 * python3's zlib on each stream: "end" (the stream ended; consumed = bytes
 * it took), "short" (no end marker) or "error", the output length before
 * that (for an error, give or take the output of the last input byte, which
 * python discards with the exception) and the output's SHA-256.
 */
const PYTHON_INFLATE = `
import hashlib, json, sys, zlib
out = []
for case in json.load(open(sys.argv[1])):
    data = bytes.fromhex(case)
    d = zlib.decompressobj()
    produced, h, status, fed = 0, hashlib.sha256(), "short", 0
    while fed < len(data) and not d.eof:
        piece = data[fed:fed + 4096]
        saved = d.copy()
        try:
            chunk = d.decompress(piece)
        except zlib.error:
            # Again byte by byte, to count the output before the error.
            d, status = saved, "error"
            for i in range(len(piece)):
                try:
                    chunk = d.decompress(piece[i:i + 1])
                except zlib.error:
                    break
                produced += len(chunk); h.update(chunk)
            break
        produced += len(chunk); h.update(chunk)
        fed += len(piece)
    if status != "error" and d.eof:
        status = "end"
    consumed = fed - len(d.unused_data) if status == "end" else None
    out.append({"status": status, "produced": produced, "consumed": consumed, "sha256": h.hexdigest()})
print(json.dumps(out))
`;

interface PythonInflate {
  status: "end" | "short" | "error";
  produced: number;
  consumed: number | null;
  sha256: string;
}

/** Output one input byte can yield at most: a few 258-byte matches, or a stored byte. */
const ONE_BYTE_OUTPUT = 4 * 258;

/** A zlib stream of `raw` as node:zlib (zlib itself) writes it, sometimes with sync flushes inside. */
function zlibStream(random: Random, raw: Uint8Array): Uint8Array {
  const level = random.scaled(10);
  if (random.chance(0.7) || raw.length < 2) return new Uint8Array(deflateSync(raw, { level }));
  const split = 1 + random.scaled(raw.length - 1);
  const first = deflateRawSync(raw.subarray(0, split), { level, finishFlush: zlibConstants.Z_SYNC_FLUSH });
  const second = deflateRawSync(raw.subarray(split), { level });
  const trailer = new Uint8Array(4);
  new DataView(trailer.buffer).setUint32(0, Bun.hash.adler32(raw) >>> 0);
  // Two raw deflate runs, the first ending non-final and byte-aligned: one valid zlib stream (format.md).
  return concat(Uint8Array.of(0x78, 0x9c), first, second, trailer);
}

interface InflateCase {
  stream: Uint8Array;
  imageSize: number;
  pieceSize: number;
}

/**
 * Inflate every case on this thread and judge it by python3's zlib on the
 * same stream. The output never passes image_size + 1. A stream python ends
 * is inflated to python's bytes (hashed the same) and python's count of
 * stream bytes; one it finds cut short or corrupt is refused with "ends
 * early" or "is corrupt"; one whose output passes image_size is refused as
 * inflating to more, having produced exactly image_size + 1 bytes. When the
 * damage in a corrupt stream lies right at the limit, the limit or the damage
 * may be met first, and either refusal is right.
 */
type InflateStatuses = Record<"ended" | "cut short" | "corrupt" | "past image size", number>;

function showStatuses(statuses: InflateStatuses): string {
  return ` (python: ${Object.entries(statuses)
    .map(([status, count]) => `${count} ${status}`)
    .join(", ")})`;
}

async function checkInflates(tally: Tally, cases: InflateCase[]): Promise<InflateStatuses> {
  const theirs = pythonJson(
    scratch(),
    PYTHON_INFLATE,
    cases.map(({ stream }) => hex(stream)),
  ) as PythonInflate[];
  const statuses: InflateStatuses = { ended: 0, "cut short": 0, corrupt: 0, "past image size": 0 };
  for (const [i, { stream, imageSize, pieceSize }] of cases.entries()) {
    const label = `case ${i} (${stream.length}-byte stream, image size ${imageSize}, pieces of ${pieceSize})`;
    tally.cases++;
    let run: InflateRun;
    try {
      run = await inflateOnThisThread(stream, imageSize, pieceSize);
    } catch (error) {
      tally.fail(label, `threw ${error}`);
      continue;
    }
    const python = theirs[i]!;
    const { report, hashed } = run;
    if (report === "hang") {
      tally.fail(label, "hung");
      continue;
    }
    const limit = imageSize + 1;
    if (report.produced > limit) tally.fail(label, `produced ${report.produced} bytes, past image size + 1`);
    if (report.kind === "failed") {
      tally.refused++;
      if (!isOneLine(report.reason)) tally.fail(label, `reason not one line: ${JSON.stringify(report.reason)}`);
    } else tally.accepted++;
    const uncertain = python.status === "error" ? ONE_BYTE_OUTPUT : 0;
    const pastLimit = python.status === "error" ? python.produced > limit : python.produced >= limit;
    if (pastLimit) {
      statuses["past image size"]++;
      if (report.kind !== "failed" || !report.reason.includes("inflates to more than") || report.produced !== limit) {
        tally.fail(label, `python inflates ${python.produced} bytes, past the limit; ours: ${JSON.stringify(report)}`);
      }
    } else if (python.status === "end") {
      statuses.ended++;
      if (report.kind !== "inflated" || report.produced !== python.produced || report.consumed !== python.consumed) {
        tally.fail(
          label,
          `python: end after ${python.consumed} bytes with ${python.produced} out; ours: ${JSON.stringify(report)}`,
        );
      } else if (!hashed || hashed.bytes !== python.produced || hex(hashed.sha256) !== python.sha256) {
        tally.fail(label, "hashed bytes differ from python's output");
      }
    } else if (python.produced + uncertain < limit) {
      statuses[python.status === "short" ? "cut short" : "corrupt"]++;
      const expected = python.status === "short" ? "zlib stream ends early" : "zlib stream is corrupt";
      if (report.kind !== "failed" || !report.reason.startsWith(expected)) {
        tally.fail(label, `python: ${python.status} after ${python.produced} out; ours: ${JSON.stringify(report)}`);
      }
    } else if (report.kind !== "failed") {
      tally.fail(label, `python: ${python.status} near the limit; ours: ${JSON.stringify(report)}`);
    }
  }
  return statuses;
}

describe("fuzz: payload verification (zlib inflater, verifyPayload)", () => {
  test("mutated zlib streams end as python3's zlib says, never past image_size + 1, never hanging", async () => {
    const random = new Random(0x21b0001);
    const tally = new Tally("inflateStage vs python3 zlib");
    const cases: InflateCase[] = [];
    for (let i = 0; i < scaled(1000); i++) {
      const raw = imageLike(random, random.chance(0.1) ? 0 : random.scaled(random.chance(0.05) ? 100_000 : 8_000));
      let stream = zlibStream(random, raw);
      const kind = random.scaled(7);
      if (kind === 0) stream = flipBits(random, stream, 1 + random.scaled(3));
      else if (kind === 1) stream = stream.subarray(0, random.scaled(stream.length));
      else if (kind === 2)
        stream = concat(stream, random.chance(0.5) ? random.bytes(1 + random.scaled(64)) : zlibStream(random, raw));
      else if (kind === 3) {
        stream = new Uint8Array(stream);
        const at = random.scaled(stream.length);
        stream.set(random.bytes(Math.min(stream.length - at, 1 + random.scaled(8))), at);
      }
      const imageSize = random.chance(0.6)
        ? raw.length
        : random.pick([0, 1, raw.length - 1, raw.length + 1, random.scaled(raw.length + 1), Number.MAX_SAFE_INTEGER]);
      // Pieces of 1 byte up to 1 MiB, but at most 256 of them per stream.
      const pieceSize = Math.max(random.pick([1, 7, 512, 4096, 65536, 1 << 20]), Math.ceil(stream.length / 256));
      cases.push({ stream, imageSize: Math.max(0, imageSize), pieceSize });
    }
    const statuses = await checkInflates(tally, cases);
    tally.report(showStatuses(statuses));
    // The mutations reach every outcome.
    expect(Math.min(...Object.values(statuses))).toBeGreaterThan(0);
  });

  test("every 2-byte zlib header with a valid check, and trailing bytes right at a piece boundary", async () => {
    const random = new Random(0x21b0003);
    const tally = new Tally("inflateStage (zlib headers, boundaries)");
    const raw = imageLike(random, 3000);
    const body = new Uint8Array(deflateSync(raw, { level: 9 })).subarray(2);
    const cases: InflateCase[] = [];
    // RFC 1950: CMF (method, window), FLG (FCHECK makes CMF*256+FLG a multiple of 31, FDICT, FLEVEL).
    for (let cmf = 0; cmf < 256; cmf++) {
      for (let flg = 0; flg < 256; flg++) {
        if (((cmf << 8) | flg) % 31 !== 0) continue;
        // With FDICT a 4-byte dictionary id follows, which the inflater must refuse to guess.
        const stream = concat(Uint8Array.of(cmf, flg), flg & 0x20 ? random.bytes(4) : new Uint8Array(0), body);
        cases.push({ stream, imageSize: raw.length, pieceSize: random.chance(0.1) ? 1 + random.scaled(3) : 4096 });
      }
    }
    // The stream's end, and trailing bytes, falling exactly on, before and after a piece boundary.
    const whole = new Uint8Array(deflateSync(raw));
    for (const trailing of [0, 1, 7]) {
      for (const delta of [-2, -1, 0, 1, 2]) {
        const stream = concat(whole, random.bytes(trailing));
        cases.push({ stream, imageSize: raw.length, pieceSize: Math.max(1, whole.length + delta) });
        cases.push({ stream, imageSize: raw.length, pieceSize: Math.max(1, Math.ceil(whole.length / 2) + delta) });
      }
    }
    const statuses = await checkInflates(tally, cases);
    tally.report(showStatuses(statuses));
    expect(statuses.corrupt).toBeGreaterThan(1000);
  });

  test("a 1 GiB bomb in 1 MiB of zlib stops at image_size + 1 with memory flat", async () => {
    const tally = new Tally("inflateStage (bomb)");
    // 1 MiB of zeros as one non-final deflate run; repeated, each copy adds 1 MiB of zeros.
    const mebibyte = deflateRawSync(new Uint8Array(MIB), { level: 9, finishFlush: zlibConstants.Z_SYNC_FLUSH });
    const bomb = concat(
      Uint8Array.of(0x78, 0xda),
      ...Array.from({ length: 1024 }, () => mebibyte),
      Uint8Array.of(0x03, 0x00, 0, 0, 0, 1),
    );
    const grown = await peakGrowthMiB(async () => {
      for (const imageSize of [0, 4096, MIB, 8 * MIB]) {
        tally.cases++;
        const { report } = await inflateOnThisThread(bomb, imageSize, 64 * 1024);
        if (
          report === "hang" ||
          report.kind !== "failed" ||
          report.produced !== imageSize + 1 ||
          !isOneLine(report.reason)
        ) {
          tally.fail(`image size ${imageSize}`, `${JSON.stringify(report)}`);
        } else tally.refused++;
      }
    });
    tally.report(` (${bomb.length}-byte stream of 1 GiB; peak memory ${grown.toFixed(0)} MiB above the start)`);
    expect(grown).toBeLessThan(MEMORY_SLACK_MIB);
  });

  test("verifyPayload on image files made from mutated streams: null or one line, as python3 judges", async () => {
    const random = new Random(0x21b0002);
    const tally = new Tally("verifyPayload (files)");
    const cases: { stream: Uint8Array; raw: Uint8Array; imageSize: number; sha256: Uint8Array }[] = [];
    for (let i = 0; i < Math.max(10, scaled(10)); i++) {
      const raw = imageLike(random, 4096 + random.scaled(300_000));
      let stream = zlibStream(random, raw);
      const kind = random.scaled(5);
      if (kind === 0) stream = flipBits(random, stream, 1);
      else if (kind === 1) stream = stream.subarray(0, random.scaled(stream.length));
      else if (kind === 2) stream = concat(stream, random.bytes(1 + random.scaled(16)));
      const sha256 = new Uint8Array(new Bun.CryptoHasher("sha256").update(raw).digest());
      if (kind === 3) sha256[random.scaled(32)]! ^= 1 << random.scaled(8);
      cases.push({
        stream,
        raw,
        imageSize: random.chance(0.8) ? raw.length : raw.length + random.pick([-1, 1]),
        sha256,
      });
    }
    const theirs = pythonJson(
      scratch(),
      PYTHON_INFLATE,
      cases.map(({ stream }) => hex(stream)),
    ) as PythonInflate[];
    for (const [i, { stream, imageSize, sha256 }] of cases.entries()) {
      const label = `case ${i}`;
      const path = join(scratch(), `verify-${i}.img`);
      const header: Header = {
        version: VERSION,
        flags: FLAG_COMPRESSED,
        dataSize: stream.length,
        imageSize,
        targetSize: imageSize,
        sha256,
        dataset: "rpool/ROOT/ramdisk",
        imageName: "fuzz",
      };
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), stream));
      tally.cases++;
      const verdict = await withDeadline(verifyPayload(path, header, { threads: IMAGE_THREADS }), HANG_MS);
      rmSync(path);
      if (verdict === "hang") {
        tally.fail(label, "hung");
        continue;
      }
      const python = theirs[i]!;
      const good =
        stream.length > 0 &&
        imageSize >= stream.length &&
        python.status === "end" &&
        python.consumed === stream.length &&
        python.produced === imageSize &&
        python.sha256 === hex(sha256);
      if (verdict.error === null) tally.accepted++;
      else {
        tally.refused++;
        if (!isOneLine(verdict.error)) tally.fail(label, `error not one line: ${JSON.stringify(verdict.error)}`);
      }
      if ((verdict.error === null) !== good)
        tally.fail(label, `verdict ${JSON.stringify(verdict.error)}, python: ${JSON.stringify(python)}`);
      if (verdict.bytes > imageSize + 1) tally.fail(label, `${verdict.bytes} bytes, past image size + 1`);
    }
    tally.report();
  });

  test("verifyPayload on zstd image files: a damaged payload passes only if zstd -d reads it to the right bytes", async () => {
    const random = new Random(0x21b0004);
    const tally = new Tally("verifyPayload (zstd files)");
    const files: { path: string; raw: Uint8Array; intact: boolean; accepted: boolean }[] = [];
    for (let i = 0; i < Math.max(8, scaled(8)); i++) {
      const base = zstdPayload(random);
      const kind = random.scaled(4);
      const payload =
        kind === 0
          ? flipBits(random, base.payload, 1 + random.scaled(3))
          : kind === 1
            ? flipBits(random, base.payload, 1, base.payload.length - base.tableSize)
            : kind === 2
              ? base.payload.subarray(0, random.scaled(base.payload.length))
              : base.payload;
      const header: Header = {
        version: ZSTD_VERSION,
        flags: FLAG_ZSTD,
        dataSize: payload.length,
        imageSize: base.raw.length,
        targetSize: base.raw.length,
        sha256: new Uint8Array(new Bun.CryptoHasher("sha256").update(base.raw).digest()),
        dataset: "rpool/ROOT/ramdisk",
        imageName: "fuzz",
      };
      const path = join(scratch(), `verify-zstd-${i}.img`);
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), payload));
      tally.cases++;
      const verdict = await withDeadline(verifyPayload(path, header, { threads: IMAGE_THREADS }), HANG_MS);
      writeFileSync(`${path}.zst`, payload);
      if (verdict === "hang") {
        tally.fail(`case ${i}`, "hung");
        continue;
      }
      if (verdict.error === null) tally.accepted++;
      else {
        tally.refused++;
        if (!isOneLine(verdict.error)) tally.fail(`case ${i}`, `error not one line: ${JSON.stringify(verdict.error)}`);
      }
      if (verdict.bytes > base.raw.length) tally.fail(`case ${i}`, `${verdict.bytes} bytes, past the image size`);
      files.push({ path: `${path}.zst`, raw: base.raw, intact: kind === 3, accepted: verdict.error === null });
    }
    // Debian's zstd on every payload; it may fail on some, so each output is judged on its own.
    await runCommand(["zstd", "-d", "-q", "-f", ...files.map(({ path }) => path)]);
    for (const [i, { path, raw, intact, accepted }] of files.entries()) {
      const output = outcome(() => readFileSync(path.replace(/\.zst$/, "")));
      const zstdReadsIt = output.ok && hex(output.value) === hex(raw);
      if (accepted && !zstdReadsIt)
        tally.fail(`case ${i}`, "verifyPayload passed a payload zstd -d does not read to the image");
      if (intact && !accepted) tally.fail(`case ${i}`, "verifyPayload refused an intact payload");
    }
    tally.report();
  });
});
