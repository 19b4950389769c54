/**
 * The zstd image variant of lib/image/zstd-image.ts: a version no version 2 reader
 * accepts, the ZSTD flag, and the seek table and blocks read from a file
 * that mkimage --zstd wrote.
 * Checked against python3's struct module (header bytes), Debian's `zstd -d`
 * (payload) and sha256sum (the header's checksum of the raw image).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  decodeHeader,
  flagNames,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  VERSION,
  ZSTD_VERSION,
} from "@ramdisk-tools/image/format.ts";
import { makeImage } from "@ramdisk-tools/image/make.ts";
import { decompressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { IMAGE_VERSIONS, payloadCodec, readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";
import { type Block, ZSTD_BLOCK_SIZE, ZSTD_DEFAULT_LEVEL } from "@ramdisk-tools/image/zstd-seekable.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import type { BunFile } from "bun";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { python, runCommandBytes, sha256sum, VECTORS } from "../helpers/common.ts";

/** One block of an image file, as a reader with the seek table takes it: its frame alone, decompressed and checked. */
async function readBlock(file: BunFile, block: Block): Promise<Uint8Array> {
  const start = HEADER_SIZE + block.compressedOffset;
  return decompressBlock(await file.slice(start, start + block.compressedSize).bytes(), block);
}

// Hooks and tests that compress megabytes or run zstd and python3, on two cores shared with other work.
const SLOW = 30_000;
setDefaultTimeout(SLOW);

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "zstd-image-test-"));
}, SLOW);
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
}, SLOW);

/** Write a zstd image of `raw` with mkimage --zstd (in-process). */
async function writeZstdImage(path: string, raw: Uint8Array): Promise<Header> {
  await Bun.write(`${path}.raw`, raw);
  return await makeImage({
    input: `${path}.raw`,
    output: path,
    targetSize: 64 * 1024 * 1024,
    imageName: "zstd-testing",
    compression: { codec: "zstd", level: ZSTD_DEFAULT_LEVEL, jobs: 2 },
    threads: IMAGE_THREADS,
  });
}

describe("a zstd image file", () => {
  const raw = new Uint8Array(Buffer.concat([...samplePoolChunks(2 * ZSTD_BLOCK_SIZE + 384 * 1024, 11)]));
  let path: string;
  let header: Header;
  beforeAll(async () => {
    path = join(dir, "zstd.img");
    header = await writeZstdImage(path, raw);
  }, SLOW);

  test("its header has version 0x80000002 and flags 0x2, read by python3", () => {
    const fields = python(
      "import struct, sys; print(*struct.unpack_from('<IIQQQ', open(sys.argv[1], 'rb').read(40)))",
      path,
    );
    expect(fields.trim()).toBe(`${0x1deb0075} ${0x80000002} 2 ${header.dataSize} ${raw.length}`);
  });

  test("a strict version 2 reader refuses the header, as the sled kernel does", async () => {
    const bytes = await Bun.file(path).slice(0, HEADER_SIZE).bytes();
    expect(() => decodeHeader(bytes)).toThrow(/^unsupported version 2147483650, expected 2$/);
    const decoded = decodeHeader(bytes, { versions: IMAGE_VERSIONS, fileSize: Bun.file(path).size });
    expect(decoded.version).toBe(ZSTD_VERSION);
    expect(payloadCodec(decoded)).toBe("zstd");
  });

  test("zstd -d turns its payload into the raw image, whose sha256sum is the header's", async () => {
    const restored = await runCommandBytes(["sh", "-c", `tail -c +${HEADER_SIZE + 1} "$0" | zstd -d -q -c`, path]);
    expect(restored.exitCode).toBe(0);
    expect(Buffer.compare(restored.stdout, raw)).toBe(0);
    const rawPath = join(dir, "restored.raw");
    await Bun.write(rawPath, restored.stdout);
    const sum = await sha256sum(rawPath);
    expect(sum).toBe(Buffer.from(header.sha256).toString("hex"));
  });

  test("readSeekTable and readBlock give back every block", async () => {
    const file = Bun.file(path);
    const table = await readSeekTable(file, header);
    expect(table.blocks.map((block) => block.decompressedSize)).toEqual([ZSTD_BLOCK_SIZE, ZSTD_BLOCK_SIZE, 384 * 1024]);
    for (const block of table.blocks) {
      const expected = raw.subarray(block.decompressedOffset, block.decompressedOffset + block.decompressedSize);
      expect(Buffer.compare(await readBlock(file, block), expected)).toBe(0);
    }
  });

  test("a corrupted frame in the file is refused when its block is read", async () => {
    const table = await readSeekTable(Bun.file(path), header);
    const damagedPath = join(dir, "damaged.img");
    const bytes = await Bun.file(path).bytes();
    const second = table.blocks[1]!;
    bytes[HEADER_SIZE + second.compressedOffset + Math.floor(second.compressedSize / 2)]! ^= 0x40;
    await Bun.write(damagedPath, bytes);
    const damaged = Bun.file(damagedPath);
    expect(Buffer.compare(await readBlock(damaged, table.blocks[0]!), raw.subarray(0, ZSTD_BLOCK_SIZE))).toBe(0);
    await expect(readBlock(damaged, second)).rejects.toThrow(/^block 1: (checksum|frame)/);
  });

  test("a truncated file is refused when its seek table is read", async () => {
    const truncatedPath = join(dir, "truncated.img");
    await Bun.write(truncatedPath, (await Bun.file(path).bytes()).subarray(0, HEADER_SIZE + header.dataSize - 100));
    await expect(readSeekTable(Bun.file(truncatedPath), header)).rejects.toThrow(ImageFormatError);
    await expect(readSeekTable(Bun.file(truncatedPath), header)).rejects.toThrow(/truncated/);
  });
});

describe("flags and versions", () => {
  test("flagNames prints the bits as lookimage does", () => {
    expect(flagNames(0n)).toBe("(empty)");
    expect(flagNames(1n)).toBe("COMPRESSED");
    expect(flagNames(2n)).toBe("ZSTD");
    expect(flagNames(3n)).toBe("COMPRESSED | ZSTD");
    expect(flagNames(0x15n)).toBe("COMPRESSED | 0x14");
  });

  test("payloadCodec reads version 2 images as before and refuses mixed-up headers", () => {
    expect(payloadCodec({ version: VERSION, flags: 0n })).toBe("stored");
    expect(payloadCodec({ version: VERSION, flags: 1n })).toBe("zlib");
    expect(payloadCodec({ version: ZSTD_VERSION, flags: 2n })).toBe("zstd");
    expect(payloadCodec({ version: ZSTD_VERSION, flags: 6n })).toBe("zstd");
    expect(() => payloadCodec({ version: ZSTD_VERSION, flags: 0n })).toThrow(
      /^a version 0x80000002 \(zstd\) header needs flag ZSTD; its flags are \(empty\)$/,
    );
    expect(() => payloadCodec({ version: ZSTD_VERSION, flags: 1n })).toThrow(
      /needs flag ZSTD; its flags are COMPRESSED$/,
    );
    expect(() => payloadCodec({ version: ZSTD_VERSION, flags: 3n })).toThrow(
      /^a version 0x80000002 \(zstd\) header cannot have flag COMPRESSED: COMPRESSED \| ZSTD$/,
    );
  });

  test("ZSTD in a version 2 header is refused saying what the kernel would do with each COMPRESSED bit", () => {
    const refusal = (flags: bigint) => {
      try {
        payloadCodec({ version: VERSION, flags });
      } catch (error) {
        return (error as Error).message;
      }
      throw new Error(`flags ${flags} were accepted`);
    };
    expect(refusal(2n)).toBe(
      "flags ZSTD in a version 2 header: ZSTD belongs to version 0x80000002 only, " +
        "and the sled kernel ignores that bit, so it would take the payload as a stored pool",
    );
    expect(refusal(3n)).toBe(
      "flags COMPRESSED | ZSTD in a version 2 header: ZSTD belongs to version 0x80000002 only, " +
        "and the sled kernel ignores that bit, so it would inflate the payload as zlib",
    );
    expect(refusal(0x12n)).toEndWith("would take the payload as a stored pool");
    expect(refusal(0x13n)).toEndWith("would inflate the payload as zlib");
  });

  test("the existing tools' zlib vector is still read as zlib", async () => {
    const bytes = await Bun.file(join(VECTORS, "pool-1m-z.img")).slice(0, HEADER_SIZE).bytes();
    const decoded = decodeHeader(bytes, { versions: IMAGE_VERSIONS });
    expect(payloadCodec(decoded)).toBe("zlib");
    expect(flagNames(decoded.flags)).toBe("COMPRESSED");
  });
});
