/**
 * The pigz construction of lib/image/zlib-stream.ts, checked against independent
 * implementations: python3's zlib (madler zlib) for headers, Adler-32 and
 * inflating, and `pigz -dz` for inflating.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateBlock } from "@ramdisk-tools/image/zlib-deflate.ts";
import {
  ADLER32_EMPTY,
  adler32,
  adler32Combine,
  DEFLATE_WINDOW,
  FLUSH_INTERVAL,
  nextWindow,
  type ZlibLevel,
  zlibHeader,
  zlibTrailer,
} from "@ramdisk-tools/image/zlib-stream.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { python, runCommandBytes } from "../helpers/common.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "zlib-stream-test-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

// Slow work (python3 and pigz runs on a shared machine) gets room; nothing here asserts on time.
const SLOW = 120_000;

let fileCount = 0;
async function tempFile(bytes: Uint8Array): Promise<string> {
  const path = join(dir, `data-${fileCount++}`);
  await Bun.write(path, bytes);
  return path;
}

/** Deterministic pool-like bytes (zeros, binaries, text, random records). */
function poolBytes(size: number, seed = 7): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of samplePoolChunks(size, seed)) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** A 20 KiB random pattern repeated: every match refers 20 KiB back, across block boundaries. */
function repeatingBytes(size: number): Uint8Array {
  const pattern = new Uint8Array(20 * 1024);
  let state = 0x2545f491;
  for (let i = 0; i < pattern.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    pattern[i] = state >>> 24;
  }
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += pattern.length) out.set(pattern.subarray(0, size - at), at);
  return out;
}

/** Build the whole zlib stream the way mkimage does, serially: header, blocks in order, trailer. */
function zlibStream(
  input: Uint8Array,
  blockSize: number,
  level: ZlibLevel,
): { stream: Uint8Array; blocks: Uint8Array[] } {
  const blocks: Uint8Array[] = [];
  let window: Uint8Array = new Uint8Array(0);
  let adler = ADLER32_EMPTY;
  for (let offset = 0; offset < input.length || offset === 0; offset += blockSize) {
    const block = input.slice(offset, offset + blockSize);
    const last = offset + blockSize >= input.length;
    const done = deflateBlock({ block, window, level, last });
    window = nextWindow(window, block);
    blocks.push(done.deflated);
    adler = adler32Combine(adler, done.adler32, done.rawLength);
  }
  const stream = Buffer.concat([zlibHeader(level), ...blocks, zlibTrailer(adler)]);
  return { stream: new Uint8Array(stream), blocks };
}

describe("zlibHeader", () => {
  test(
    "is the header zlib itself writes, for every level",
    () => {
      const fromZlib = JSON.parse(
        python("import zlib, json; print(json.dumps([list(zlib.compress(b'', l)[:2]) for l in range(1, 10)]))"),
      ) as number[][];
      for (let level = 1; level <= 9; level++) {
        expect([...zlibHeader(level as ZlibLevel)]).toEqual(fromZlib[level - 1]!);
      }
      expect([...zlibHeader(9)]).toEqual([0x78, 0xda]);
    },
    SLOW,
  );
});

/** python3's zlib.adler32 of each file, the independent check of our Adler-32 arithmetic. */
function pythonAdler32(paths: string[]): number[] {
  return python("import sys, zlib\nfor p in sys.argv[1:]: print(zlib.adler32(open(p, 'rb').read()))", ...paths)
    .trim()
    .split("\n")
    .map(Number);
}

describe("adler32", () => {
  test(
    "Bun.hash.adler32 agrees with python zlib.adler32",
    async () => {
      const cases = [
        new Uint8Array(0),
        Uint8Array.of(0),
        new TextEncoder().encode("Wikipedia"),
        new Uint8Array(5552).fill(0xff),
        new Uint8Array(5553).fill(0xff),
        new Uint8Array(3 * 1024 * 1024).fill(0xff),
        poolBytes(1024 * 1024 + 3),
      ];
      const paths = await Promise.all(cases.map(tempFile));
      const expected = pythonAdler32(paths);
      expect(cases.map(adler32)).toEqual(expected);
      expect(adler32(new Uint8Array(0))).toBe(ADLER32_EMPTY);
    },
    SLOW,
  );
});

describe("adler32Combine", () => {
  test(
    "gives python's zlib.adler32 of the concatenation",
    async () => {
      const whole = poolBytes(1024 * 1024);
      const ones = new Uint8Array(3 * 65521 + 7).fill(0xff);
      // Splits: empty parts, tiny parts, a part of exactly the modulus, parts beyond it, all-0xff parts (largest sums).
      const cases: [Uint8Array, Uint8Array][] = [
        [whole.subarray(0, 0), whole],
        [whole, whole.subarray(0, 0)],
        [whole.subarray(0, 1), whole.subarray(1)],
        [whole.subarray(0, 65521), whole.subarray(65521, 2 * 65521)],
        [whole.subarray(0, 500_000), whole.subarray(500_000)],
        [ones, ones],
        [ones.subarray(0, 65520), ones],
        [whole, ones],
      ];
      const paths: string[] = [];
      for (const [a, b] of cases) paths.push(await tempFile(new Uint8Array(Buffer.concat([a, b]))));
      const expected = pythonAdler32(paths);
      expect(cases.map(([a, b]) => adler32Combine(adler32(a), adler32(b), b.length))).toEqual(expected);
    },
    SLOW,
  );

  test(
    "folds many blocks in order",
    async () => {
      const whole = poolBytes(700_001, 3);
      let combined = ADLER32_EMPTY;
      for (let at = 0; at < whole.length; at += 4099) {
        const block = whole.subarray(at, at + 4099);
        combined = adler32Combine(combined, adler32(block), block.length);
      }
      const path = await tempFile(whole);
      expect(combined).toBe(
        Number(python("import sys, zlib; print(zlib.adler32(open(sys.argv[1], 'rb').read()))", path)),
      );
    },
    SLOW,
  );
});

describe("zlibTrailer", () => {
  test("is the Adler-32, most significant byte first", () => {
    expect([...zlibTrailer(0x11e60398)]).toEqual([0x11, 0xe6, 0x03, 0x98]);
    expect([...zlibTrailer(0xffffffff)]).toEqual([0xff, 0xff, 0xff, 0xff]);
  });
});

describe("nextWindow", () => {
  const input = poolBytes(100_000, 5);

  test("is the 32 KiB before the next block, also when blocks are shorter than the window", () => {
    for (const blockSize of [1000, 4096, DEFLATE_WINDOW - 1, DEFLATE_WINDOW, DEFLATE_WINDOW + 1, 40_000]) {
      let window: Uint8Array = new Uint8Array(0);
      for (let at = 0; at < input.length; at += blockSize) {
        const start = Math.max(0, at - DEFLATE_WINDOW);
        expect(window).toEqual(input.subarray(start, at));
        window = nextWindow(window, input.subarray(at, at + blockSize));
      }
    }
  });

  test("keeps no part of the buffers it was given", () => {
    const block = input.slice(0, 50_000);
    const window = nextWindow(new Uint8Array(0), block);
    expect(window.buffer).not.toBe(block.buffer);
    const small = input.slice(0, 100);
    expect(nextWindow(window, small).buffer).not.toBe(window.buffer);
    expect(nextWindow(window, small).buffer).not.toBe(small.buffer);
  });
});

describe("the stream made of blocks", () => {
  const BLOCK = 128 * 1024;
  const sizes = [1, 4096, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17];

  async function expectInflatesTo(stream: Uint8Array, input: Uint8Array) {
    const streamPath = await tempFile(stream);
    const inputPath = await tempFile(input);
    // madler zlib, as the sled kernel uses: one stream, trailer checked, nothing left over.
    const verdict = python(
      [
        "import sys, zlib",
        "d = zlib.decompressobj()",
        "out = d.decompress(open(sys.argv[1], 'rb').read())",
        "print(d.eof, len(d.unused_data), out == open(sys.argv[2], 'rb').read())",
      ].join("\n"),
      streamPath,
      inputPath,
    );
    expect(verdict.trim()).toBe("True 0 True");
    const pigz = await runCommandBytes(["pigz", "-dz"], { stdin: await Bun.file(streamPath).bytes() });
    expect(pigz.exitCode).toBe(0);
    expect(pigz.stdout.equals(Buffer.from(input))).toBe(true);
  }

  for (const size of sizes) {
    test(
      `inflates to the input: ${size} bytes of pool-like data, 128 KiB blocks, level 9`,
      async () => {
        const input = poolBytes(size);
        await expectInflatesTo(zlibStream(input, BLOCK, 9).stream, input);
      },
      SLOW,
    );
  }

  test(
    "inflates to the input at every level",
    async () => {
      const input = poolBytes(2 * BLOCK + 5);
      for (let level = 1; level <= 9; level++) {
        const { stream } = zlibStream(input, BLOCK, level as ZlibLevel);
        expect([...stream.subarray(0, 2)]).toEqual([...zlibHeader(level as ZlibLevel)]);
        await expectInflatesTo(stream, input);
      }
    },
    SLOW,
  );

  test(
    "uses the window: matches reach back into earlier blocks, even several blocks back",
    async () => {
      const input = repeatingBytes(400_000);
      for (const blockSize of [3000, 8192, BLOCK]) {
        const { stream } = zlibStream(input, blockSize, 9);
        // The 20 KiB pattern is incompressible on its own; only references into the window make it small.
        expect(stream.length).toBeLessThan(input.length / 10);
        await expectInflatesTo(stream, input);
      }
    },
    SLOW,
  );

  test(
    "ends every block but the last byte-aligned with an empty stored block, the last with BFINAL",
    async () => {
      const input = poolBytes(5 * BLOCK + 1);
      const { blocks } = zlibStream(input, BLOCK, 9);
      expect(blocks.length).toBe(6);
      for (const block of blocks.slice(0, -1)) expect([...block.subarray(-4)]).toEqual([0x00, 0x00, 0xff, 0xff]);
      // Given its window, the last block on its own is a complete (final) raw deflate stream.
      const lastPath = await tempFile(blocks.at(-1)!);
      const verdict = python(
        "import sys, zlib\nd = zlib.decompressobj(-15, zdict=open(sys.argv[2], 'rb').read())\nd.decompress(open(sys.argv[1], 'rb').read())\nprint(d.eof)",
        lastPath,
        await tempFile(input.subarray(5 * BLOCK - DEFLATE_WINDOW, 5 * BLOCK)),
      );
      expect(verdict.trim()).toBe("True");
    },
    SLOW,
  );

  test("flushes every 128 KiB whatever the block size, so blocks of any multiple of it give the same stream", () => {
    const input = poolBytes(5 * FLUSH_INTERVAL + 999, 21);
    const reference = zlibStream(input, FLUSH_INTERVAL, 9).stream;
    for (const blockSize of [2 * FLUSH_INTERVAL, 3 * FLUSH_INTERVAL, 1024 * 1024]) {
      expect(Buffer.from(zlibStream(input, blockSize, 9).stream).equals(Buffer.from(reference))).toBe(true);
    }
    // Inside a 1 MiB block, each 128 KiB segment but the last ends with a sync flush's empty stored block.
    const { blocks } = zlibStream(input, 1024 * 1024, 9);
    expect(blocks).toHaveLength(1);
    const flushes = Buffer.from(blocks[0]!).toString("hex").split("0000ffff").length - 1;
    expect(flushes).toBeGreaterThanOrEqual(5);
  });

  test(
    "an empty input is a valid stream",
    async () => {
      await expectInflatesTo(zlibStream(new Uint8Array(0), BLOCK, 9).stream, new Uint8Array(0));
    },
    SLOW,
  );
});
