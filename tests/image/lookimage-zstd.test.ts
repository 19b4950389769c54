/**
 * lookimage on zstd images, and `lookimage --extract RAW` on every
 * kind of image, run as a process.
 *
 * The zstd images are laid out here from lib/image/zstd-seekable.ts and
 * lib/image/format.ts (as mkimage --zstd writes them) and checked with
 * Debian's `zstd -d` and sha256sum before lookimage sees them; damaged ones
 * are made by changing bytes of a good one. Stored and zlib images are the
 * existing Rust tools' vectors (tests/vectors), with their raw pools, and a
 * multi-megabyte one compressed by python3's zlib. Extracted files are
 * compared with the raw pools by `cmp`.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { link, mkdir, mkdtemp, readdir, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  decodeHeader,
  encodeHeader,
  FLAG_ZSTD,
  HEADER_SIZE,
  type Header,
  ZSTD_VERSION,
} from "@ramdisk-tools/image/format.ts";
import {
  encodeSeekTable,
  SEEK_TABLE_ENTRY_SIZE,
  SEEK_TABLE_FOOTER_SIZE,
  type SeekTableEntry,
  SKIPPABLE_HEADER_SIZE,
  ZSTD_BLOCK_SIZE,
  ZSTD_DEFAULT_LEVEL,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { python, runCommand, runCommandBytes, sha256sum, VECTORS } from "../helpers/common.ts";
import { expectFailure, lookimage } from "../helpers/lookimage.ts";
import { seekablePayload } from "../helpers/zstd.ts";

// Each test runs lookimage as a process several times, on two cores shared with other work.
const SLOW = 60_000;
setDefaultTimeout(SLOW);

const BOOT_NOTE = "lookimage: warning: a zstd image boots only through this project's bootserver";

/** True when `cmp` finds the two files identical. */
async function same(a: string, b: string): Promise<boolean> {
  return (await runCommand(["cmp", "-s", a, b])).exitCode === 0;
}

/** A zstd image's parts, kept apart so tests can damage one and put the file together again. */
interface ZstdImage {
  header: Header;
  frames: Uint8Array[];
  entries: SeekTableEntry[];
  table: Uint8Array;
}

/** Lay out `raw` as mkimage --zstd does: 1 MiB blocks, one frame each, the seek table, the header. */
function zstdImage(raw: Uint8Array, imageName: string): ZstdImage {
  const { frames, entries, table } = seekablePayload(raw, ZSTD_BLOCK_SIZE, ZSTD_DEFAULT_LEVEL);
  const dataSize = frames.reduce((sum, frame) => sum + frame.length, 0) + table.length;
  const header: Header = {
    version: ZSTD_VERSION,
    flags: FLAG_ZSTD,
    dataSize,
    imageSize: raw.length,
    targetSize: 64 * 1024 * 1024,
    sha256: new Uint8Array(new Bun.CryptoHasher("sha256").update(raw).digest()),
    dataset: "rpool/ROOT/ramdisk",
    imageName,
  };
  return { header, frames, entries, table };
}

function imageBytes(image: ZstdImage): Uint8Array {
  return new Uint8Array(Buffer.concat([encodeHeader(image.header), ...image.frames, image.table]));
}

let scratch: string;
let raw: Uint8Array;
let rawPath: string;
let good: ZstdImage;
let goodPath: string;
const path = (name: string) => join(scratch, name);

/** Write the image, changed by `change` (which may alter any part, or return other bytes), under `name`. */
async function writeDamaged(name: string, change: (copy: ZstdImage) => Uint8Array | void): Promise<string> {
  const copy: ZstdImage = {
    header: { ...good.header },
    frames: good.frames.map((frame) => Uint8Array.from(frame)),
    entries: good.entries.map((entry) => ({ ...entry })),
    table: Uint8Array.from(good.table),
  };
  const bytes = change(copy) ?? imageBytes(copy);
  await Bun.write(path(name), bytes);
  return path(name);
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "lookimage-zstd-test-"));
  // 6 whole blocks and a short one, several frames for each verifying thread; a whole number
  // of 128 KiB netboot batches, so the only warning is that it boots only through our bootserver.
  raw = new Uint8Array(Buffer.concat([...samplePoolChunks(6 * ZSTD_BLOCK_SIZE + 256 * 1024, 5)]));
  rawPath = path("pool.raw");
  await Bun.write(rawPath, raw);
  good = zstdImage(raw, "zstd-testing");
  goodPath = path("good.img");
  await Bun.write(goodPath, imageBytes(good));
}, SLOW);

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
}, SLOW);

describe("a zstd image", () => {
  test("is what the format says, by independent tools: zstd -d gives the raw pool, sha256sum the header's sum", async () => {
    const payload = (await runCommandBytes(["tail", "-c", `+${HEADER_SIZE + 1}`, goodPath])).stdout;
    const decompressed = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: payload });
    expect(decompressed.exitCode).toBe(0);
    expect(Buffer.compare(decompressed.stdout, raw)).toBe(0);
    expect(Buffer.from(good.header.sha256).toString("hex")).toBe(await sha256sum(rawPath));
    const fields = python(
      "import struct, sys; print(*struct.unpack_from('<IIQQQQ', open(sys.argv[1], 'rb').read(40)))",
      goodPath,
    );
    expect(fields.trim()).toBe(`${0x1deb0075} ${0x80000002} 2 ${payload.length} ${raw.length} ${64 * 1024 * 1024}`);
  });

  test("a version 2 reader refuses its header; a zstd flag in a version 2 header is refused too", async () => {
    const header = (await Bun.file(goodPath).slice(0, HEADER_SIZE).bytes()) as Uint8Array;
    expect(() => decodeHeader(header)).toThrow(/^unsupported version 2147483650, expected 2$/);
    const v2 = await writeDamaged("v2-with-zstd-flag.img", (copy) => {
      copy.header.version = 2;
      copy.header.flags = FLAG_ZSTD | 1n;
    });
    expectFailure(
      await lookimage(v2),
      /flags COMPRESSED \| ZSTD in a version 2 header: .*inflate the payload as zlib$/,
    );
    // Without COMPRESSED the kernel would take the payload as the pool itself: here it even is one.
    const storedWithFlag = await writeDamaged("v2-stored-with-zstd-flag.img", (copy) => {
      const header = { ...copy.header, version: 2, flags: FLAG_ZSTD, dataSize: raw.length };
      return new Uint8Array(Buffer.concat([encodeHeader(header), raw]));
    });
    expectFailure(
      await lookimage(storedWithFlag),
      /flags ZSTD in a version 2 header: .*would take the payload as a stored pool$/,
    );
    const both = await writeDamaged("zstd-and-zlib.img", (copy) => {
      copy.header.flags = 3n;
    });
    const run = await lookimage(both);
    expectFailure(run, /header cannot have flag COMPRESSED: COMPRESSED \| ZSTD$/);
    expect(run.stdout).toBe("");
  });

  test("lookimage prints the header lines, the ratio, a warning that only our bootserver boots it, and exits 0", async () => {
    const payloadSize = Bun.file(goodPath).size - HEADER_SIZE;
    const expected = [
      "image name = zstd-testing",
      "flags = 0x2 (ZSTD)",
      `data size = ${payloadSize}`,
      `image size = ${raw.length}`,
      "target size = 67108864",
      `image sum = ${await sha256sum(rawPath)}`,
      "dataset name = rpool/ROOT/ramdisk",
      `ratio = ${(raw.length / payloadSize).toFixed(2)}x`,
      "",
    ].join("\n");
    for (const flags of [[], ["-s"]]) {
      const run = await lookimage(...flags, goodPath);
      expect(run.exitCode).toBe(0);
      expect(run.stdout).toBe(expected);
      expect(run.stderr).toBe(`${BOOT_NOTE}: the sled kernel and the control plane refuse its version\n`);
    }
  });

  test("--json gives the codec and the seek table's facts", async () => {
    const run = await lookimage("--json", goodPath);
    expect(run.exitCode).toBe(0);
    const report = JSON.parse(run.stdout);
    const sum = await sha256sum(rawPath);
    const payloadSize = Bun.file(goodPath).size - HEADER_SIZE;
    expect(report).toEqual({
      imageName: "zstd-testing",
      flags: 2,
      flagNames: ["ZSTD"],
      dataSize: payloadSize,
      imageSize: raw.length,
      targetSize: 64 * 1024 * 1024,
      sha256: sum,
      dataset: "rpool/ROOT/ramdisk",
      ratio: raw.length / payloadSize,
      compressed: false,
      codec: "zstd",
      zstd: { frames: 7, blockSize: ZSTD_BLOCK_SIZE },
      warnings: [expect.stringMatching(/^a zstd image boots only through this project's bootserver/)],
      verification: { checked: true, ok: true, bytes: raw.length, sha256: sum, error: null },
    });
    const skipped = JSON.parse((await lookimage("--json", "-s", goodPath)).stdout);
    expect(skipped.zstd).toBeNull();
    expect(skipped.verification).toEqual({ checked: false, ok: false, bytes: 0, sha256: null, error: null });
  });

  test("unknown flag bits of a zstd header are shown, in hex", async () => {
    const extra = await writeDamaged("extra-flag.img", (copy) => {
      copy.header.flags = FLAG_ZSTD | 0x10n;
    });
    const run = await lookimage("-s", extra);
    expect(run.exitCode).toBe(0);
    expect(run.stdout).toContain("flags = 0x12 (ZSTD | 0x10)\n");
  });
});

describe("a zstd image that does not match", () => {
  test("a byte flipped inside a frame: that block, on one line", async () => {
    const damaged = await writeDamaged("flipped-frame.img", (copy) => {
      copy.frames[2]![copy.frames[2]!.length >> 1]! ^= 0x40;
    });
    const run = await lookimage(damaged);
    expectFailure(
      run,
      /^lookimage: block 2: (checksum of the decompressed bytes is 0x[0-9a-f]{8}, the seek table says 0x[0-9a-f]{8}|frame does not decompress \(.+\)|frame decompresses to .+)$/,
    );
    expect(run.stdout).toContain("flags = 0x2 (ZSTD)\n");
    const report = JSON.parse((await lookimage("--json", damaged)).stdout);
    expect(report.verification).toEqual({
      checked: true,
      ok: false,
      bytes: 2 * ZSTD_BLOCK_SIZE,
      sha256: null,
      error: run.stderr.trimEnd().split("\n").at(-1)!.slice("lookimage: ".length),
    });
  });

  test("a frame whose magic is damaged", async () => {
    const damaged = await writeDamaged("frame-magic.img", (copy) => {
      copy.frames[5]![0] = 0;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: block 5: frame starts with 0xfd2fb500, not the zstd magic 0xfd2fb528$/,
    );
  });

  test("blocks that decode fine but do not make the header's image: SHA-256 mismatch", async () => {
    const damaged = await writeDamaged("wrong-sum.img", (copy) => {
      copy.header.sha256 = new Uint8Array(32).fill(0xab);
    });
    expectFailure(
      await lookimage(damaged),
      new RegExp(
        `^lookimage: image sum ${await sha256sum(rawPath)} does not match sum from header ${"ab".repeat(32)}$`,
      ),
    );
  });

  test("a seek table entry's checksum damaged", async () => {
    const damaged = await writeDamaged("table-checksum.img", (copy) => {
      copy.table[SKIPPABLE_HEADER_SIZE + 3 * SEEK_TABLE_ENTRY_SIZE + 8]! ^= 0x01;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: block 3: checksum of the decompressed bytes is 0x[0-9a-f]{8}, the seek table says 0x[0-9a-f]{8}$/,
    );
  });

  test("a seek table whose decompressed sizes do not add up to the image size", async () => {
    const damaged = await writeDamaged("table-size.img", (copy) => {
      copy.table[SKIPPABLE_HEADER_SIZE + 6 * SEEK_TABLE_ENTRY_SIZE + 4]! ^= 0x01;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: seek table's decompressed sizes add up to \d+ bytes, but the image size is \d+$/,
    );
  });

  test("a seek table that moves a byte of one block into the next: the first frame gives too much, and stops there", async () => {
    const damaged = await writeDamaged("table-shifted.img", (copy) => {
      copy.entries[0]!.decompressedSize -= 1;
      copy.entries[1]!.decompressedSize += 1;
      copy.table = encodeSeekTable(copy.entries);
    });
    expectFailure(
      await lookimage(damaged),
      new RegExp(
        `^lookimage: block 0: frame decompresses to more than the ${ZSTD_BLOCK_SIZE - 1} bytes the seek table says$`,
      ),
    );
  });

  test("compressed sizes that put frame boundaries in the wrong places", async () => {
    const damaged = await writeDamaged("table-boundaries.img", (copy) => {
      copy.entries[3]!.compressedSize += 100;
      copy.entries[4]!.compressedSize -= 100;
      copy.table = encodeSeekTable(copy.entries);
    });
    expectFailure(await lookimage(damaged), /^lookimage: block [34]: /);
  });

  test("the seek table's magic damaged", async () => {
    const damaged = await writeDamaged("table-magic.img", (copy) => {
      copy.table[copy.table.length - 1]! ^= 0x01;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: payload ends with 0x8e92eab1, not the seekable magic 0x8f92eab1: the seek table is missing or the payload is truncated$/,
    );
  });

  test("a frame count that disagrees with the table's size", async () => {
    const damaged = await writeDamaged("table-count.img", (copy) => {
      copy.table[copy.table.length - SEEK_TABLE_FOOTER_SIZE]! -= 1;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: seek table starts with 0x[0-9a-f]{8}, not the skippable frame magic 0x184d2a5e: wrong frame count or corrupted table$/,
    );
  });

  test("a payload cut short, header unchanged: the file is truncated", async () => {
    const bytes = imageBytes(good);
    const damaged = await writeDamaged("cut-file.img", () => bytes.subarray(0, bytes.length - 5000));
    const run = await lookimage(damaged);
    expectFailure(run, /but the header says \d+ \(4096 \+ data size \d+\): truncated$/);
    expect(run.stdout).toBe("");
  });

  test("a payload cut short with the header's data size to match: no seek table at its end", async () => {
    const damaged = await writeDamaged("cut-payload.img", (copy) => {
      const payload = Buffer.concat(copy.frames).subarray(0, (3 * ZSTD_BLOCK_SIZE) / 4);
      copy.header.dataSize = payload.length;
      return new Uint8Array(Buffer.concat([encodeHeader(copy.header), payload]));
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: payload ends with 0x[0-9a-f]{8}, not the seekable magic 0x8f92eab1: the seek table is missing or the payload is truncated$/,
    );
  });

  test("the last frame cut short, the seek table kept after it", async () => {
    const damaged = await writeDamaged("cut-frame.img", (copy) => {
      copy.frames[6] = copy.frames[6]!.subarray(0, copy.frames[6]!.length - 1000);
      copy.header.dataSize -= 1000;
    });
    expectFailure(
      await lookimage(damaged),
      /^lookimage: seek table's compressed sizes add up to \d+ bytes, but the payload has \d+ bytes before the table \(data size \d+ - table \d+\)$/,
    );
  });
});

describe("--extract", () => {
  /** Files in the scratch directory whose names say they are temporary. */
  const leftovers = async () => (await readdir(scratch)).filter((name) => name.includes(".tmp-"));

  test("round-trips every kind of image: zstd, stored and zlib (the Rust tools' vectors and a python zlib image)", async () => {
    const pythonZlib = path("python-z.img");
    const stream = (
      await runCommandBytes([
        "python3",
        "-c",
        "import sys, zlib; sys.stdout.buffer.write(zlib.compress(open(sys.argv[1], 'rb').read(), 6))",
        rawPath,
      ])
    ).stdout;
    const header = encodeHeader({ ...good.header, version: 2, flags: 1n, dataSize: stream.length });
    await Bun.write(pythonZlib, Buffer.concat([header, stream]));
    const cases: [string, string][] = [
      [goodPath, rawPath],
      [pythonZlib, rawPath],
      [join(VECTORS, "pool-1m.img"), join(VECTORS, "pool-1m.raw")],
      [join(VECTORS, "pool-1m-z.img"), join(VECTORS, "pool-1m.raw")],
      [join(VECTORS, "pool-odd.img"), join(VECTORS, "pool-odd.raw")],
      [join(VECTORS, "pool-odd-z.img"), join(VECTORS, "pool-odd.raw")],
    ];
    for (const [image, expected] of cases) {
      const output = path("extracted.raw");
      await rm(output, { force: true });
      const run = await lookimage("--extract", output, image);
      expect(run.exitCode).toBe(0);
      const plain = await lookimage(image);
      expect(run.stdout).toBe(`${plain.stdout}ok, raw image written!\n`);
      expect(await same(output, expected)).toBe(true);
      expect(await sha256sum(output)).toBe(await sha256sum(expected));
    }
    expect(await leftovers()).toEqual([]);
  });

  test("replaces an existing file, and with --json prints only the object", async () => {
    const output = path("existing.raw");
    await Bun.write(output, "old contents");
    const run = await lookimage("--json", "--extract", output, goodPath);
    expect(run.exitCode).toBe(0);
    expect(JSON.parse(run.stdout).verification.ok).toBe(true);
    expect(await same(output, rawPath)).toBe(true);
  });

  test("leaves nothing, and an existing file as it was, when the image does not verify", async () => {
    const flippedFrame = await writeDamaged("extract-flipped-frame.img", (copy) => {
      copy.frames[4]![100]! ^= 0x08;
    });
    const wrongSum = await writeDamaged("extract-wrong-sum.img", (copy) => {
      copy.header.sha256 = new Uint8Array(32);
    });
    // A stored image of the vector pool whose last byte is changed: all bytes are written before the SHA-256 says no.
    const stored = new Uint8Array(await Bun.file(join(VECTORS, "pool-1m.img")).bytes());
    stored[stored.length - 1]! ^= 0xff;
    const flippedStored = path("extract-flipped-stored.img");
    await Bun.write(flippedStored, stored);
    const zlibImage = new Uint8Array(await Bun.file(join(VECTORS, "pool-1m-z.img")).bytes());
    zlibImage[HEADER_SIZE + 1000]! ^= 0x10;
    const flippedZlib = path("extract-flipped-z.img");
    await Bun.write(flippedZlib, zlibImage);

    for (const [image, reason] of [
      [flippedFrame, /^lookimage: block 4: /],
      [wrongSum, /^lookimage: image sum [0-9a-f]{64} does not match sum from header 0{64}$/],
      [flippedStored, /^lookimage: image sum [0-9a-f]{64} does not match sum from header [0-9a-f]{64}$/],
      [flippedZlib, /^lookimage: zlib stream is corrupt/],
    ] as const) {
      const fresh = path("never.raw");
      expectFailure(await lookimage("--extract", fresh, image), reason);
      expect(await Bun.file(fresh).exists()).toBe(false);
      const existing = path("kept.raw");
      await Bun.write(existing, "keep me");
      expectFailure(await lookimage("--extract", existing, image), reason);
      expect(await Bun.file(existing).text()).toBe("keep me");
      expect(await leftovers()).toEqual([]);
    }
  });

  test("refuses the image's own path, also through a symbolic or a hard link, and leaves the image alone", async () => {
    const image = path("own.img");
    await Bun.write(image, imageBytes(good));
    const before = await sha256sum(image);
    await symlink(image, path("own-symlink.img"));
    await link(image, path("own-hardlink.img"));
    for (const output of [image, path("own-symlink.img"), path("own-hardlink.img"), join(scratch, ".", "own.img")]) {
      const run = await lookimage("--extract", output, image);
      expectFailure(run, /^lookimage: raw output .* is the image .*own\.img; refusing to overwrite it$/);
      expect(run.stdout).toBe("");
    }
    expect(await sha256sum(image)).toBe(before);
  });

  // A full disk, made as a 1 MiB tmpfs of our own (root only, as CI and the netboot tests run).
  test.skipIf(process.getuid?.() !== 0)("a disk that fills up: one line, exit 1, no file left", async () => {
    const small = path("small-fs");
    await mkdir(small, { recursive: true });
    const mounted = await runCommand(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small]);
    expect(mounted.stderr).toBe("");
    try {
      const output = join(small, "pool.raw");
      expectFailure(
        await lookimage("--extract", output, goodPath),
        /^lookimage: cannot write raw output .*pool\.raw: no space left on device$/i,
      );
      expect(await readdir(small)).toEqual([]);
    } finally {
      await runCommand(["umount", small]);
    }
  });

  test("a directory or a missing directory as output: one line, exit 1; with -s: a usage error", async () => {
    await mkdir(path("a-directory"), { recursive: true });
    expectFailure(
      await lookimage("--extract", path("a-directory"), goodPath),
      /^lookimage: raw output .*a-directory is a directory$/,
    );
    expectFailure(
      await lookimage("--extract", path("no/such/dir/pool.raw"), goodPath),
      /^lookimage: cannot write raw output .*pool\.raw: directory .*: no such file or directory$/i,
    );
    const both = await lookimage("-s", "--extract", path("x.raw"), goodPath);
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toMatch(/^lookimage: .*see lookimage --help\n$/);
    expect(await Bun.file(path("x.raw")).exists()).toBe(false);
  });
});
