/**
 * The zstd verification's threads and their ring of slots
 * (lib/image/verify-zstd.ts), through verifyPayload and extractPayload with
 * one, two and three threads. The blocks are 2 MiB, so the ring has its
 * fewest slots (4) and an image of 9 blocks wraps around it twice: a slot is
 * filled again only after the hasher is done with it, or these digests would
 * be wrong. The SHA-256 each run must find is sha256sum's of the raw file,
 * and an extracted file is compared with it by `cmp`.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { resolveTarget } from "@ramdisk-tools/files/pending-file.ts";
import { encodeHeader, FLAG_ZSTD, type Header, toHex, ZSTD_VERSION } from "@ramdisk-tools/image/format.ts";
import { extractPayload, verifyPayload } from "@ramdisk-tools/image/verify.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { runCommand, sha256sum } from "../helpers/common.ts";
import { seekablePayload } from "../helpers/zstd.ts";

setDefaultTimeout(60_000);

const BLOCK = 2 * MIB;
/** Nine whole blocks and a short one: more than twice round a ring of 4 slots. */
const RAW_SIZE = 9 * BLOCK + 384 * 1024;
const THREADS = [1, 2, 3];

let scratch: string;
let raw: Uint8Array;
let rawPath: string;
let expectedSha256: string;
let parts: ReturnType<typeof seekablePayload>;
let header: Header;

/** The image file with the frames in `damaged` flipped in their middle byte. */
async function writeImage(name: string, damaged: number[] = []): Promise<string> {
  const frames = parts.frames.map((frame, index) => {
    if (!damaged.includes(index)) return frame;
    const copy = Uint8Array.from(frame);
    copy[copy.length >> 1]! ^= 0x40;
    return copy;
  });
  const path = join(scratch, name);
  await Bun.write(path, Buffer.concat([encodeHeader(header), ...frames, parts.table]));
  return path;
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "verify-zstd-test-"));
  raw = new Uint8Array(Buffer.concat([...samplePoolChunks(RAW_SIZE, 17)]));
  rawPath = join(scratch, "pool.raw");
  await Bun.write(rawPath, raw);
  expectedSha256 = await sha256sum(rawPath);
  parts = seekablePayload(raw, BLOCK, 1);
  header = {
    version: ZSTD_VERSION,
    flags: FLAG_ZSTD,
    dataSize: parts.frames.reduce((total, frame) => total + frame.length, 0) + parts.table.length,
    imageSize: raw.length,
    targetSize: 64 * MIB,
    sha256: Uint8Array.from(Buffer.from(expectedSha256, "hex")),
    dataset: "rpool/ROOT/ramdisk",
    imageName: "ring",
  };
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe("zstd verification threads", () => {
  test("every thread count finds sha256sum's digest, round the ring and back, and counts every frame byte read", async () => {
    const path = await writeImage("good.img");
    const frameBytes = parts.frames.reduce((total, frame) => total + frame.length, 0);
    for (const zstdThreads of THREADS) {
      let lastProgress = 0;
      const verdict = await verifyPayload(path, header, {
        threads: IMAGE_THREADS,
        zstdThreads,
        onProgress: (done) => {
          lastProgress = done;
        },
      });
      expect({ zstdThreads, error: verdict.error, bytes: verdict.bytes }).toEqual({
        zstdThreads,
        error: null,
        bytes: RAW_SIZE,
      });
      expect(toHex(verdict.sha256!)).toBe(expectedSha256);
      expect(lastProgress).toBeLessThanOrEqual(frameBytes);
    }
  });

  test("the first bad block in image order is named, whichever thread meets its own first", async () => {
    const twoBad = await writeImage("two-bad.img", [1, 7]);
    const lateBad = await writeImage("late-bad.img", [8]);
    for (const zstdThreads of THREADS) {
      const first = await verifyPayload(twoBad, header, { threads: IMAGE_THREADS, zstdThreads });
      expect(first.error).toMatch(/^block 1: /);
      expect(first.sha256).toBeNull();
      expect(first.bytes).toBe(BLOCK);
      // Past the second turn of the ring: its slot held blocks 0 and 4 before.
      const late = await verifyPayload(lateBad, header, { threads: IMAGE_THREADS, zstdThreads });
      expect(late.error).toMatch(/^block 8: /);
      expect(late.bytes).toBe(8 * BLOCK);
    }
  });

  test("--extract with several threads writes the raw pool byte for byte", async () => {
    const path = await writeImage("extract.img");
    for (const zstdThreads of THREADS) {
      const output = join(scratch, `extracted-${zstdThreads}.raw`);
      const verdict = await extractPayload(path, header, await resolveTarget("raw output", output), {
        threads: IMAGE_THREADS,
        zstdThreads,
      });
      expect(verdict.error).toBeNull();
      expect((await runCommand(["cmp", rawPath, output])).exitCode).toBe(0);
    }
  });
});
