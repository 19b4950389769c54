/**
 * The seekable zstd payload of lib/image/zstd-seekable.ts, checked by independent
 * decoders: Debian's `zstd` (decompression, frame listing, and the XXH64 it
 * writes with --check) and python3's struct module (the seek table layout).
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import {
  type CompressedBlock,
  compressBlock,
  decompressBlock,
  type ZstdBlockJob,
} from "@ramdisk-tools/image/zstd-frames.ts";
import {
  blockChecksum,
  blockIndexForOffset,
  decodeSeekTable,
  encodeSeekTable,
  frameCapacity,
  SEEK_TABLE_ENTRY_SIZE,
  SEEK_TABLE_FOOTER_SIZE,
  type SeekTableEntry,
  SKIPPABLE_HEADER_SIZE,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import type { WorkerReply } from "@ramdisk-tools/threads/pool.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { pythonWithInput, runCommand, runCommandBytes } from "../helpers/common.ts";
import { seekablePayload } from "../helpers/zstd.ts";

const KIB = 1024;
/** Small blocks keep the tests quick; the format does not depend on the size. */
const BLOCK = 256 * KIB;

// Hooks and tests that compress megabytes or run zstd and python3, on two cores shared with other work.
const SLOW = 30_000;
setDefaultTimeout(SLOW);

const dir = mkdtempSync(join(tmpdir(), "zstd-seekable-test-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
}, SLOW);

function poolBytes(size: number, seed = 7): Uint8Array {
  return new Uint8Array(Buffer.concat([...samplePoolChunks(size, seed)]));
}

interface Payload {
  raw: Uint8Array;
  frames: Uint8Array[];
  entries: SeekTableEntry[];
  table: Uint8Array;
  payload: Uint8Array;
}

/** Build a payload the way mkimage does: one frame per block, then the table. */
function buildPayload(raw: Uint8Array, blockSize = BLOCK, level = 3): Payload {
  const { frames, entries, table } = seekablePayload(raw, blockSize, level);
  return { raw, frames, entries, table, payload: new Uint8Array(Buffer.concat([...frames, table])) };
}

/** Expect `run` to throw an ImageFormatError whose one-line message matches `reason`. */
function expectRefusal(run: () => unknown, reason: RegExp): void {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(ImageFormatError);
  const message = (caught as Error).message;
  expect(message).toMatch(reason);
  expect(message).not.toContain("\n");
}

/** A copy of `bytes` with a little-endian u32 written at `offset` (negative: from the end). */
function withU32(bytes: Uint8Array, offset: number, value: number): Uint8Array {
  const copy = Uint8Array.from(bytes);
  new DataView(copy.buffer).setUint32(offset < 0 ? copy.length + offset : offset, value, true);
  return copy;
}

describe("a payload of our frames and seek table", () => {
  const cases: [string, number, number][] = [
    ["several whole blocks", 3 * BLOCK, BLOCK],
    ["a size not a multiple of the block size", 3 * BLOCK + 12_345, BLOCK],
    ["a single block shorter than the block size", 100_000, BLOCK],
    ["exactly one block", BLOCK, BLOCK],
    ["4 MiB blocks with a short last one", 9 * 1024 * KIB + 4096, 4 * 1024 * KIB],
  ];
  for (const [name, size, blockSize] of cases) {
    test(`zstd -d restores the exact input: ${name}`, async () => {
      const built = buildPayload(poolBytes(size), blockSize);
      const path = join(dir, `payload-${size}.zst`);
      await Bun.write(path, built.payload);
      const restored = await runCommandBytes(["zstd", "-d", "-q", "-c", path]);
      expect(restored.stderr).toBe("");
      expect(restored.exitCode).toBe(0);
      expect(Buffer.compare(restored.stdout, built.raw)).toBe(0);

      const listing = await runCommand(["zstd", "-l", "-v", path]);
      expect(listing.exitCode).toBe(0);
      expect(listing.stdout).toContain(`# Zstandard Frames: ${Math.ceil(size / blockSize)}\n`);
      expect(listing.stdout).toContain("# Skippable Frames: 1\n");
      expect(listing.stdout).toContain(`(${size} B)`); // the decompressed size, from the frame headers
    });
  }

  test("every frame decompresses alone to its block, at the offsets the table gives", async () => {
    const built = buildPayload(poolBytes(3 * BLOCK + 999));
    const table = decodeSeekTable(built.payload, { payloadSize: built.payload.length, imageSize: built.raw.length });
    expect(table.blocks.length).toBe(4);
    for (const block of table.blocks) {
      const frame = built.payload.subarray(block.compressedOffset, block.compressedOffset + block.compressedSize);
      const alone = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: frame });
      expect(alone.exitCode).toBe(0);
      const expected = built.raw.subarray(block.decompressedOffset, block.decompressedOffset + block.decompressedSize);
      expect(Buffer.compare(alone.stdout, expected)).toBe(0);
    }
  });

  test("the table's checksums are the low 32 bits of XXH64, as zstd --check computes them", async () => {
    const built = buildPayload(poolBytes(2 * BLOCK + 5000));
    for (const [index, entry] of built.entries.entries()) {
      const block = built.raw.subarray(index * BLOCK, (index + 1) * BLOCK);
      // zstd --check ends its frame with the same value: XXH64's low 32 bits, little-endian.
      const checked = await runCommandBytes(["zstd", "-q", "-c", "--check", "-1"], { stdin: block });
      expect(checked.exitCode).toBe(0);
      expect(entry.checksum).toBe(checked.stdout.readUInt32LE(checked.stdout.length - 4));
    }
  });

  test("the seek table's bytes, read by python3's struct module", () => {
    const built = buildPayload(poolBytes(2 * BLOCK + 77));
    const script = `
import json, struct, sys
data = sys.stdin.buffer.read()
count, descriptor, magic = struct.unpack_from("<IBI", data, len(data) - 9)
start = len(data) - 9 - 12 * count - 8
skippable, frame_size = struct.unpack_from("<II", data, start)
entries = [struct.unpack_from("<III", data, start + 8 + 12 * i) for i in range(count)]
print(json.dumps({"magic": magic, "descriptor": descriptor, "skippable": skippable, "frameSize": frame_size,
                  "framesEnd": start, "entries": entries}))
`;
    const parsed = JSON.parse(pythonWithInput(built.payload, script));
    expect(parsed.magic).toBe(0x8f92eab1);
    expect(parsed.descriptor).toBe(0x80);
    expect(parsed.skippable).toBe(0x184d2a5e);
    expect(parsed.frameSize).toBe(3 * 12 + 9);
    expect(parsed.framesEnd).toBe(built.frames.reduce((sum, frame) => sum + frame.length, 0));
    expect(parsed.entries).toEqual(
      built.entries.map((entry, index) => [built.frames[index]!.length, entry.decompressedSize, entry.checksum]),
    );
    expect(parsed.entries.map((entry: number[]) => entry[1])).toEqual([BLOCK, BLOCK, 77]);
  });
});

describe("encodeSeekTable and decodeSeekTable", () => {
  test("round trip: entries come back with their offsets", () => {
    const entries: SeekTableEntry[] = [
      { compressedSize: 100, decompressedSize: 4096, checksum: 0xdeadbeef },
      { compressedSize: 1, decompressedSize: 8192, checksum: 0 },
      { compressedSize: 0xffff_ffff - 200, decompressedSize: 1, checksum: 0xffff_ffff },
    ];
    const table = encodeSeekTable(entries);
    expect(table.length).toBe(SKIPPABLE_HEADER_SIZE + 3 * SEEK_TABLE_ENTRY_SIZE + SEEK_TABLE_FOOTER_SIZE);
    const payloadSize = 100 + 1 + (0xffff_ffff - 200) + table.length;
    const decoded = decodeSeekTable(table, { payloadSize, imageSize: 4096 + 8192 + 1 });
    expect(decoded.tableSize).toBe(table.length);
    expect(decoded.imageSize).toBe(12289);
    expect(decoded.blocks).toEqual([
      { index: 0, ...entries[0]!, compressedOffset: 0, decompressedOffset: 0 },
      { index: 1, ...entries[1]!, compressedOffset: 100, decompressedOffset: 4096 },
      { index: 2, ...entries[2]!, compressedOffset: 101, decompressedOffset: 12288 },
    ]);
  });

  test("an empty image is a table of no frames, and zstd -d makes nothing of it", async () => {
    const table = encodeSeekTable([]);
    expect(decodeSeekTable(table, { payloadSize: table.length, imageSize: 0 }).blocks).toEqual([]);
    const path = join(dir, "empty.zst");
    await Bun.write(path, table);
    const restored = await runCommandBytes(["zstd", "-d", "-q", "-c", path]);
    expect(restored.exitCode).toBe(0);
    expect(restored.stdout.length).toBe(0);
  });

  test("encodeSeekTable refuses what decodeSeekTable would", () => {
    expectRefusal(
      () => encodeSeekTable([{ compressedSize: 2 ** 32, decompressedSize: 1, checksum: 0 }]),
      /^frame 0's compressed size of 4294967296 does not fit/,
    );
    const good = { compressedSize: 9, decompressedSize: 4096, checksum: 0 };
    expectRefusal(
      () => encodeSeekTable([good, { ...good, decompressedSize: 0 }]),
      /^frame 1 of 9 bytes for a block of 0/,
    );
    expectRefusal(
      () => encodeSeekTable([{ ...good, decompressedSize: 64 * 1024 * 1024 + 1 }]),
      /blocks hold 1 to 67108864 bytes$/,
    );
  });
});

describe("decodeSeekTable refuses a damaged payload with a one-line reason", () => {
  const built = buildPayload(poolBytes(3 * BLOCK + 4321));
  const expect_ = { payloadSize: built.payload.length, imageSize: built.raw.length };
  const tableStart = built.payload.length - built.table.length;

  test("the intact payload decodes", () => {
    expect(decodeSeekTable(built.payload, expect_).blocks.length).toBe(4);
  });

  test("a corrupted skippable frame size", () => {
    const damaged = withU32(built.payload, tableStart + 4, built.table.length - 8 + 12);
    expectRefusal(
      () => decodeSeekTable(damaged, expect_),
      /^seek table frame size is 69 bytes, but its frame count needs 57$/,
    );
  });

  test("a corrupted skippable frame magic", () => {
    const damaged = withU32(built.payload, tableStart, 0x184d2a50);
    expectRefusal(() => decodeSeekTable(damaged, expect_), /starts with 0x184d2a50, not the skippable frame magic/);
  });

  test("a bad seekable magic", () => {
    const damaged = withU32(built.payload, -4, 0x8f92eab0);
    expectRefusal(() => decodeSeekTable(damaged, expect_), /ends with 0x8f92eab0, not the seekable magic 0x8f92eab1/);
  });

  test("a wrong frame count, one more or one less", () => {
    for (const count of [3, 5]) {
      const damaged = withU32(built.payload, -SEEK_TABLE_FOOTER_SIZE, count);
      expectRefusal(() => decodeSeekTable(damaged, expect_), /not the skippable frame magic/);
    }
  });

  test("an absurd frame count, before anything is allocated for it", () => {
    const damaged = withU32(built.payload, -SEEK_TABLE_FOOTER_SIZE, 0xffff_ffff);
    expectRefusal(
      () => decodeSeekTable(damaged, expect_),
      new RegExp(
        `^seek table claims 4294967295 frames, but a payload of ${built.payload.length} bytes holds the entries of at most \\d+$`,
      ),
    );
  });

  test("reserved descriptor bits, or no checksums", () => {
    const descriptorAt = built.payload.length - 5;
    const reserved = Uint8Array.from(built.payload);
    reserved[descriptorAt] = 0x80 | 0x04;
    expectRefusal(() => decodeSeekTable(reserved, expect_), /^seek table descriptor 0x84 has reserved bits set$/);
    const unchecked = Uint8Array.from(built.payload);
    unchecked[descriptorAt] = 0x00;
    expectRefusal(() => decodeSeekTable(unchecked, expect_), /says there are no checksums/);
  });

  test("compressed sizes that do not add up to the frames before the table", () => {
    const first = built.entries[0]!.compressedSize;
    const damaged = withU32(built.payload, tableStart + SKIPPABLE_HEADER_SIZE, first + 1);
    expectRefusal(
      () => decodeSeekTable(damaged, expect_),
      new RegExp(
        `^seek table's compressed sizes add up to ${tableStart + 1} bytes, but the payload has ${tableStart} bytes before the table`,
      ),
    );
  });

  test("decompressed sizes that do not add up to the image size", () => {
    const damaged = withU32(built.payload, tableStart + SKIPPABLE_HEADER_SIZE + 4, BLOCK - 1);
    expectRefusal(
      () => decodeSeekTable(damaged, expect_),
      new RegExp(
        `^seek table's decompressed sizes add up to ${built.raw.length - 1} bytes, but the image size is ${built.raw.length}$`,
      ),
    );
  });

  test("an entry with no decompressed bytes", () => {
    const damaged = withU32(built.payload, tableStart + SKIPPABLE_HEADER_SIZE + 12 + 4, 0);
    expectRefusal(
      () => decodeSeekTable(damaged, expect_),
      /^seek table entry 1 has \d+ compressed and 0 decompressed bytes/,
    );
  });

  test("an entry promising an oversized block", () => {
    const damaged = withU32(built.payload, tableStart + SKIPPABLE_HEADER_SIZE + 4, 0xffff_0000);
    expectRefusal(() => decodeSeekTable(damaged, expect_), /^seek table entry 0 promises a block of 4294901760 bytes/);
  });

  test("a payload truncated at the end", () => {
    for (const cut of [1, 4, built.table.length, built.payload.length - 10]) {
      const truncated = built.payload.subarray(0, built.payload.length - cut);
      expectRefusal(
        () => decodeSeekTable(truncated, { ...expect_, payloadSize: truncated.length }),
        /seek table is missing or the payload is truncated|too short to end with a seek table/,
      );
    }
  });

  test("a payload missing bytes inside its frames", () => {
    const truncated = new Uint8Array(Buffer.concat([built.payload.subarray(0, 1000), built.payload.subarray(1500)]));
    expectRefusal(
      () => decodeSeekTable(truncated, { ...expect_, payloadSize: truncated.length }),
      new RegExp(
        `compressed sizes add up to ${tableStart} bytes, but the payload has ${tableStart - 500} bytes before the table`,
      ),
    );
  });
});

describe("blockIndexForOffset", () => {
  const sizes = [4096, 8192, 1, 4096];
  const entries = sizes.map((decompressedSize) => ({ compressedSize: 10, decompressedSize, checksum: 0 }));
  const table = decodeSeekTable(encodeSeekTable(entries), {
    payloadSize: 40 + encodeSeekTable(entries).length,
    imageSize: 4096 + 8192 + 1 + 4096,
  });

  test("finds the block at each boundary", () => {
    const cases: [number, number][] = [
      [0, 0],
      [4095, 0],
      [4096, 1],
      [12287, 1],
      [12288, 2],
      [12289, 3],
      [16384, 3],
    ];
    for (const [offset, index] of cases) expect([offset, blockIndexForOffset(table, offset)]).toEqual([offset, index]);
  });

  test("is -1 at or past the end and for offsets that are not bytes", () => {
    for (const offset of [16385, 16386, 2 ** 40, -1, 0.5, Number.NaN]) {
      expect([offset, blockIndexForOffset(table, offset)]).toEqual([offset, -1]);
    }
  });

  test("agrees with a linear scan over a real payload", () => {
    const built = buildPayload(poolBytes(2 * BLOCK + 3));
    const decoded = decodeSeekTable(built.payload, { payloadSize: built.payload.length, imageSize: built.raw.length });
    for (const offset of [0, BLOCK - 1, BLOCK, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 2]) {
      expect(blockIndexForOffset(decoded, offset)).toBe(Math.floor(offset / BLOCK));
    }
    expect(blockIndexForOffset(decoded, 2 * BLOCK + 3)).toBe(-1);
  });
});

describe("decompressBlock", () => {
  // Random bytes do not compress, so zstd stores them as they are: a flipped
  // byte inside the frame still decodes, and only the checksum can tell.
  const raw = crypto.getRandomValues(new Uint8Array(64 * KIB));
  const frame = compressBlock(raw, 3);
  const block = { index: 5, compressedSize: frame.length, decompressedSize: raw.length, checksum: blockChecksum(raw) };

  test("gives back the block", () => {
    expect(Buffer.compare(decompressBlock(frame, block), raw)).toBe(0);
  });

  test("detects a flipped byte by the checksum", async () => {
    const damaged = Uint8Array.from(frame);
    damaged[damaged.length - 100]! ^= 0x01;
    expect((await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: damaged })).exitCode).toBe(0); // zstd alone does not notice
    expectRefusal(
      () => decompressBlock(damaged, block),
      /^block 5: checksum of the decompressed bytes is 0x[0-9a-f]{8}, the seek table says 0x[0-9a-f]{8}$/,
    );
  });

  test("detects a wrong checksum in the table", () => {
    expectRefusal(() => decompressBlock(frame, { ...block, checksum: block.checksum ^ 1 }), /^block 5: checksum/);
  });

  test("refuses a frame that gives more than its entry says, without inflating it all", () => {
    const zeros = compressBlock(new Uint8Array(64 * 1024 * KIB), 1); // 64 MiB of zeros in a few KiB
    expectRefusal(
      () => decompressBlock(zeros, { index: 0, compressedSize: zeros.length, decompressedSize: 4096, checksum: 0 }),
      /^block 0: frame decompresses to more than the 4096 bytes the seek table says$/,
    );
  });

  test("refuses a frame that gives fewer bytes than its entry says", () => {
    const cut = frame.subarray(0, frame.length - 1000);
    expectRefusal(
      () => decompressBlock(cut, { ...block, compressedSize: cut.length }),
      /^block 5: frame (decompresses to \d+ bytes, the seek table says 65536|does not decompress)/,
    );
  });

  test("refuses a frame of another length than its entry, or without the zstd magic", () => {
    expectRefusal(
      () => decompressBlock(frame.subarray(1), block),
      /^block 5: frame is \d+ bytes, the seek table says \d+$/,
    );
    const notZstd = withU32(frame, 0, 0x184d2a5e);
    expectRefusal(
      () => decompressBlock(notZstd, block),
      /^block 5: frame starts with 0x184d2a5e, not the zstd magic 0xfd2fb528$/,
    );
  });

  test("compressBlock honours the level asked on every call, not only the first", () => {
    const pool = poolBytes(BLOCK, 9);
    // Twice each: a codec reused across calls could keep the level of the first call only.
    const sizes = [19, 19, 1, 1].map((level) => compressBlock(pool, level).length);
    expect(sizes[1]).toBe(sizes[0]!);
    expect(sizes[3]).toBe(sizes[2]!);
    expect(sizes[0]).toBeLessThan(sizes[2]! * 0.95);
  });

  test("compressBlock refuses levels zstd does not have", () => {
    for (const level of [0, 23, 2.5])
      expect(() => compressBlock(raw, level)).toThrow(/not a whole number from 1 to 22/);
  });
});

describe("workers/zstd-frames.ts", () => {
  type Reply = WorkerReply<CompressedBlock>;
  function ask(worker: Worker, job: ZstdBlockJob, transfer: ArrayBuffer[]): Promise<Reply> {
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<Reply>) => resolve(event.data);
      worker.onerror = (event) => reject(new Error(event.message));
      worker.postMessage(job, transfer);
    });
  }

  test("compresses a block from shared memory into the buffer handed over, and reports a refusal", async () => {
    const worker = new Worker(IMAGE_THREADS.zstdFrames);
    try {
      const raw = poolBytes(BLOCK + 10);
      const shared = new Uint8Array(new SharedArrayBuffer(raw.length));
      shared.set(raw);
      const out = new Uint8Array(frameCapacity(raw.length));
      const compressed = await ask(worker, { raw: shared, level: 3, out }, [out.buffer]);
      expect(out.byteLength).toBe(0); // transferred, not copied
      if (!compressed.ok) throw new Error(`worker answered ${JSON.stringify(compressed)}`);
      const { frame, entry } = compressed.value;
      expect(frame.buffer.byteLength).toBe(frameCapacity(raw.length)); // the same buffer, back for reuse
      expect(entry).toEqual({
        compressedSize: frame.length,
        decompressedSize: raw.length,
        checksum: blockChecksum(raw),
      });
      const decompressed = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: frame });
      expect(Buffer.compare(decompressed.stdout, raw)).toBe(0);
      expect(Buffer.compare(shared, raw)).toBe(0); // read only

      const refused = await ask(worker, { raw: shared, level: 23 }, []);
      expect(refused).toEqual({ ok: false, message: expect.stringMatching(/^zstd level 23 is not a whole number/) });
    } finally {
      worker.terminate();
    }
  });
});
