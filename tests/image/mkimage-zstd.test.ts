/**
 * mkimage --zstd end to end, run as a process as the build would
 * run it, and checked by tools that share no code with ours: Debian's
 * `zstd -d` turns the payload back into the raw input and `zstd -lv` counts
 * its frames; python3's struct reads the header and the seek table, hashlib
 * the checksum; our lookimage verifies and extracts it; a strict version 2
 * reader refuses it. Refusals leave no file behind.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { decodeHeader, HEADER_SIZE, ImageFormatError } from "@ramdisk-tools/image/format.ts";
import { makeImage } from "@ramdisk-tools/image/make.ts";
import { ZSTD_BLOCK_SIZE } from "@ramdisk-tools/image/zstd-seekable.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { type ProgramRun, python, runCommand, runCommandBytes, runProgram, sha256sum } from "../helpers/common.ts";

// Every test runs several processes (bun, zstd, python3) on two cores shared with other work:
// room, but no assertion on time.
const SLOW = 120_000;
setDefaultTimeout(SLOW);

const BOOT_NOTE = "mkimage: warning: a zstd image boots only through this project's bootserver";

/** Every case gets a directory of its own, so its listing shows exactly what a run left; all go at the end. */
const caseDirs: string[] = [];
async function freshDir(): Promise<string> {
  caseDirs.push(await mkdtemp(join(tmpdir(), "mkimage-zstd-test-")));
  return caseDirs.at(-1)!;
}
afterAll(async () => {
  await Promise.all(caseDirs.map((dir) => rm(dir, { recursive: true, force: true })));
}, SLOW);

/** Pool-like bytes (lab/sample-pool.ts), written to `path`. */
async function writeRaw(path: string, size: number, seed: number): Promise<Uint8Array> {
  const raw = new Uint8Array(Buffer.concat([...samplePoolChunks(size, seed)]));
  await Bun.write(path, raw);
  return raw;
}

/** The payload after the 4096-byte header, cut off by `tail` rather than by our code. */
async function payloadOf(image: string): Promise<Buffer> {
  const tail = await runCommandBytes(["tail", "-c", `+${HEADER_SIZE + 1}`, image]);
  expect(tail.exitCode).toBe(0);
  return tail.stdout;
}

/** What python3 reads in the image: every header field, and the seek table at the payload's end. */
function pythonReads(image: string) {
  const program = String.raw`
import hashlib, json, struct, sys
data = open(sys.argv[1], "rb").read()
magic, version, flags, data_size, image_size, target = struct.unpack_from("<IIQQQQ", data, 0)
sha = data[40:72]
dataset, name = (field.rstrip(b"\0").decode() for field in struct.unpack_from("128s128s", data, 72))
payload = data[4096:]
count, descriptor, seekable = struct.unpack_from("<IBI", payload, len(payload) - 9)
table = payload[len(payload) - 9 - 12 * count - 8:]
skippable, frame_size = struct.unpack_from("<II", table, 0)
entries = [struct.unpack_from("<III", table, 8 + 12 * i) for i in range(count)]
print(json.dumps({
    "magic": magic, "version": version, "flags": flags, "dataSize": data_size, "imageSize": image_size,
    "targetSize": target, "sha256": sha.hex(), "dataset": dataset, "name": name,
    "namesTerminated": data[199] == 0 and data[327] == 0, "paddingZero": not any(data[328:4096]),
    "payloadBytes": len(payload), "skippable": skippable, "frameSize": frame_size, "descriptor": descriptor,
    "seekable": seekable, "decompressedSizes": [e[1] for e in entries],
    "framesEnd": sum(e[0] for e in entries) + len(table),
}))
`;
  return JSON.parse(python(program, image));
}

/** The block sizes a raw image of `size` bytes is cut into. */
function blockSizes(size: number, blockSize = ZSTD_BLOCK_SIZE): number[] {
  return Array.from({ length: Math.ceil(size / blockSize) }, (_, i) => Math.min(blockSize, size - i * blockSize));
}

/** Frames `zstd -lv` counts in a payload: [zstd frames, skippable frames, decompressed bytes]. */
async function zstdCounts(payload: Uint8Array, dir: string): Promise<[number, number, number]> {
  const path = join(dir, "payload.zst");
  writeFileSync(path, payload);
  const listed = await runCommand(["zstd", "-lv", path]);
  expect(listed.exitCode).toBe(0);
  const text = listed.stdout + listed.stderr;
  const number = (pattern: RegExp) => Number(text.match(pattern)?.[1]);
  return [
    number(/# Zstandard Frames: (\d+)/),
    number(/# Skippable Frames: (\d+)/),
    number(/Decompressed Size: .*\((\d+) B\)/),
  ];
}

describe("mkimage --zstd writes the zstd image of docs/format.md", () => {
  // A whole number of netboot batches, a size that is not, one block exactly, the least the kernel takes;
  // blocks of the default size (ZSTD_BLOCK_SIZE) and of the sizes --block-size asks for.
  const cases: [size: number, jobs: number, blockMib: number | null][] = [
    [9 * MIB + 256 * 1024, 2, null],
    [3 * MIB + 256 * 1024, 2, 1],
    [5 * MIB + 12345, 3, 2],
    [MIB, 1, null],
    [4096, 2, 1],
  ];
  for (const [size, jobs, blockMib] of cases) {
    const blockSize = blockMib === null ? ZSTD_BLOCK_SIZE : blockMib * MIB;
    const blockArgs = blockMib === null ? [] : ["--block-size", String(blockMib)];
    test(`${size} bytes, --jobs ${jobs}, blocks of ${blockSize} bytes: zstd -d gives the input, a frame per block, every field as python3 reads it`, async () => {
      const dir = await freshDir();
      const raw = await writeRaw(join(dir, "in.raw"), size, size);
      const made = await runProgram("mkimage", [
        "-i",
        join(dir, "in.raw"),
        "-o",
        join(dir, "z.img"),
        "-O",
        join(dir, "z.csum"),
        "-N",
        "zstd-test",
        "-s",
        "16",
        "--zstd",
        "--jobs",
        String(jobs),
        ...blockArgs,
      ]);
      expect(made.exitCode).toBe(0);
      expect(made.stdout).toBe("ok, image written!\nok, boot_image_csum file written!\n");
      const warnings = made.stderr.trimEnd().split("\n");
      expect(warnings[0]).toStartWith(BOOT_NOTE);
      for (const line of warnings) expect(line).toStartWith("mkimage: warning: ");

      const payload = await payloadOf(join(dir, "z.img"));
      const decompressed = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: payload });
      expect(decompressed.exitCode).toBe(0);
      expect(Buffer.compare(decompressed.stdout, raw)).toBe(0);
      expect(await zstdCounts(payload, dir)).toEqual([blockSizes(size, blockSize).length, 1, size]);

      const sha256 = new Bun.CryptoHasher("sha256").update(raw).digest("hex");
      expect(pythonReads(join(dir, "z.img"))).toEqual({
        magic: 0x1deb0075,
        version: 0x80000002,
        flags: 2,
        dataSize: payload.length,
        imageSize: size,
        targetSize: 16 * MIB,
        sha256,
        dataset: "rpool/ROOT/ramdisk",
        name: "zstd-test",
        namesTerminated: true,
        paddingZero: true,
        payloadBytes: payload.length,
        skippable: 0x184d2a5e,
        frameSize: 12 * blockSizes(size, blockSize).length + 9,
        descriptor: 0x80,
        seekable: 0x8f92eab1,
        decompressedSizes: blockSizes(size, blockSize),
        framesEnd: payload.length,
      });
      const sum = await sha256sum(join(dir, "in.raw"));
      expect(Buffer.from(await Bun.file(join(dir, "z.csum")).bytes()).toString("hex")).toBe(sum!);
      expect((await readdir(dir)).sort()).toEqual(["in.raw", "payload.zst", "z.csum", "z.img"]);
    });
  }

  test("the same image whatever the number of threads", async () => {
    const dir = await freshDir();
    await writeRaw(join(dir, "in.raw"), 4 * MIB + 999, 8);
    for (const jobs of ["1", "2", "5"]) {
      const made = await runProgram("mkimage", [
        "-i",
        join(dir, "in.raw"),
        "-o",
        join(dir, `${jobs}.img`),
        "--zstd",
        "--jobs",
        jobs,
      ]);
      expect(made.exitCode).toBe(0);
    }
    const one = await Bun.file(join(dir, "1.img")).bytes();
    expect(Buffer.compare(await Bun.file(join(dir, "2.img")).bytes(), one)).toBe(0);
    expect(Buffer.compare(await Bun.file(join(dir, "5.img")).bytes(), one)).toBe(0);
  });

  test("many small blocks on many workers come out in order (in-process, a frame per block)", async () => {
    const dir = await freshDir();
    const raw = await writeRaw(join(dir, "in.raw"), 1_000_003, 17);
    const header = await makeImage({
      input: join(dir, "in.raw"),
      output: join(dir, "z.img"),
      targetSize: 4 * MIB,
      imageName: "blocks",
      compression: { codec: "zstd", level: 2, jobs: 5, blockSize: 5000 },
      threads: IMAGE_THREADS,
    });
    expect(header.imageSize).toBe(raw.length);
    const payload = await payloadOf(join(dir, "z.img"));
    const decompressed = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: payload });
    expect(Buffer.compare(decompressed.stdout, raw)).toBe(0);
    expect(await zstdCounts(payload, dir)).toEqual([blockSizes(raw.length, 5000).length, 1, raw.length]);
  });

  test("--level: another level, another payload, the same raw image; 12 is a zstd level, not a zlib one", async () => {
    const dir = await freshDir();
    const raw = await writeRaw(join(dir, "in.raw"), 2 * MIB, 4);
    const sizes: number[] = [];
    for (const level of ["1", "12", "19"]) {
      const made = await runProgram("mkimage", [
        "-i",
        join(dir, "in.raw"),
        "-o",
        join(dir, "z.img"),
        "--zstd",
        "--level",
        level,
      ]);
      expect(made.exitCode).toBe(0);
      const payload = await payloadOf(join(dir, "z.img"));
      const decompressed = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: payload });
      expect(Buffer.compare(decompressed.stdout, raw)).toBe(0);
      sizes.push(payload.length);
    }
    // Pool-like data compresses better at higher levels.
    expect(sizes[2]!).toBeLessThan(sizes[0]!);
  });
});

describe("readers", () => {
  let dir: string;
  let raw: Uint8Array;
  beforeAll(async () => {
    dir = await freshDir();
    raw = await writeRaw(join(dir, "in.raw"), 3 * MIB + 4096, 9);
    const made = await runProgram("mkimage", [
      "-i",
      join(dir, "in.raw"),
      "-o",
      join(dir, "z.img"),
      "-N",
      "readers",
      "-s",
      "8",
      "--zstd",
    ]);
    if (made.exitCode !== 0) throw new Error(`mkimage --zstd failed: ${made.stderr}`);
  }, SLOW);

  test("lookimage verifies it and shows its codec", async () => {
    const looked = await runProgram("lookimage", [join(dir, "z.img")]);
    expect(looked.exitCode).toBe(0);
    expect(looked.stdout).toContain("flags = 0x2 (ZSTD)\n");
    expect(looked.stdout).toContain(`image size = ${raw.length}\n`);
  });

  test("lookimage --extract writes the raw input back, byte for byte", async () => {
    const extracted = await runProgram("lookimage", ["--extract", join(dir, "back.raw"), join(dir, "z.img")]);
    expect(extracted.exitCode).toBe(0);
    expect((await runCommand(["cmp", join(dir, "in.raw"), join(dir, "back.raw")])).exitCode).toBe(0);
  });

  test("input that does not compress: a payload larger than the image, which lookimage accepts", async () => {
    const random = join(dir, "random.raw");
    await Bun.write(random, crypto.getRandomValues(new Uint8Array(MIB + 128 * 1024)));
    const made = await runProgram("mkimage", ["-i", random, "-o", join(dir, "random.img"), "-s", "8", "--zstd"]);
    expect(made.exitCode).toBe(0);
    const facts = pythonReads(join(dir, "random.img"));
    expect(facts.dataSize).toBeGreaterThan(facts.imageSize);
    const looked = await runProgram("lookimage", [join(dir, "random.img")]);
    expect(looked.exitCode).toBe(0);
    expect(looked.stdout).toContain(`data size = ${facts.dataSize}\n`);
  });

  test("a strict version 2 reader (decodeHeader with its default versions, as the sled kernel) refuses the header", async () => {
    const file = Bun.file(join(dir, "z.img"));
    const header = await file.slice(0, HEADER_SIZE).bytes();
    expect(() => decodeHeader(header, { fileSize: file.size })).toThrow(ImageFormatError);
    expect(() => decodeHeader(header, { fileSize: file.size })).toThrow(/unsupported version 2147483650, expected 2/);
  });
});

describe("refusals and usage errors leave no file", () => {
  /** Exit `code` with a single `mkimage: ` line matching `message`, nothing on stdout. */
  function expectOneLine(outcome: ProgramRun, code: number, message: RegExp) {
    expect(outcome.exitCode).toBe(code);
    expect(outcome.stdout.length).toBe(0);
    expect(outcome.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(outcome.stderr).toMatch(/^mkimage: /);
    expect(outcome.stderr).toMatch(message);
  }

  test("what the sled kernel would refuse, and what would overwrite the input: exit 1", async () => {
    const dir = await freshDir();
    await writeRaw(join(dir, "small.raw"), 4095, 1);
    await writeRaw(join(dir, "in.raw"), MIB + 1, 2);
    const image = ["-o", join(dir, "z.img"), "-O", join(dir, "z.csum"), "--zstd"];
    const refusals: [string[], RegExp][] = [
      [["-i", join(dir, "absent.raw"), ...image], /cannot read input .*absent\.raw: no such file or directory/],
      [["-i", join(dir, "small.raw"), ...image], /would refuse this image: image size of 4095 bytes is below/],
      [
        ["-i", join(dir, "in.raw"), ...image, "-s", "1"],
        /would refuse this image: target size of 1048576 bytes is less than image size of 1048577\n/,
      ],
      [["-i", join(dir, "in.raw"), ...image, "-N", "n".repeat(128)], /image name is 128 bytes long/],
      [["-i", join(dir, "in.raw"), "-o", join(dir, "in.raw"), "--zstd"], /output .*in\.raw is the input file/],
    ];
    for (const [args, message] of refusals) expectOneLine(await runProgram("mkimage", args), 1, message);
    expect((await readdir(dir)).sort()).toEqual(["in.raw", "small.raw"]);
  });

  test("-z with --zstd, levels zstd does not have, block sizes out of range or without --zstd: exit 2", async () => {
    const dir = await freshDir();
    await writeRaw(join(dir, "in.raw"), MIB, 3);
    const image = ["-i", join(dir, "in.raw"), "-o", join(dir, "z.img")];
    const usage: [string[], RegExp][] = [
      [[...image, "-z", "--zstd"], /-z \(zlib\) and --zstd cannot be used together/],
      [[...image, "--zstd", "--level", "0"], /--level with --zstd must be a whole number from 1 to 22, not "0"/],
      [[...image, "--zstd", "--level", "23"], /--level with --zstd must be a whole number from 1 to 22, not "23"/],
      [[...image, "--zstd", "--jobs", "0"], /--jobs must be a whole number from 1/],
      [[...image, "--zstd", "--block-size", "0"], /--block-size must be a whole number from 1 to 64, not "0"/],
      [[...image, "--zstd", "--block-size", "65"], /--block-size must be a whole number from 1 to 64, not "65"/],
      [[...image, "--zstd", "--block-size", "1.5"], /--block-size must be a whole number from 1 to 64, not "1.5"/],
      [[...image, "-z", "--block-size", "2"], /--block-size is for --zstd images only/],
      [[...image, "--block-size", "2"], /--block-size is for --zstd images only/],
    ];
    for (const [args, message] of usage) expectOneLine(await runProgram("mkimage", args), 2, message);
    expect(await readdir(dir)).toEqual(["in.raw"]);
  });

  test("a worker's failure fails the job and leaves no file (in-process)", async () => {
    const dir = await freshDir();
    await writeRaw(join(dir, "in.raw"), 600_000, 5);
    const made = makeImage({
      input: join(dir, "in.raw"),
      output: join(dir, "z.img"),
      targetSize: 4 * MIB,
      imageName: "",
      // Not a zstd level: each worker's compressBlock throws.
      compression: { codec: "zstd", level: 42, jobs: 2 },
      threads: IMAGE_THREADS,
    });
    await expect(made).rejects.toThrow(/zstd level 42/);
    expect(await readdir(dir)).toEqual(["in.raw"]);
  });
});
