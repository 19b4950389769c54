/**
 * mkimage end to end, run as the build runs it (`bun apps/mkimage.ts ...`):
 * uncompressed images byte for byte equal to the vectors the existing tool
 * made, compressed images whose header matches and whose payload python3's
 * zlib and `pigz -dz` inflate to the raw input, and its command line.
 * Refusals and interruptions are in mkimage-refusals.test.ts.
 */

import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { makeImage } from "@ramdisk-tools/image/make.ts";
import { ZLIB_BLOCK_SIZE } from "@ramdisk-tools/image/payload-encoders.ts";
import { FLUSH_INTERVAL, type ZlibLevel } from "@ramdisk-tools/image/zlib-stream.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";
import { python, runCommandBytes, VECTORS } from "../helpers/common.ts";
import { listing, MKIMAGE_TIMEOUT_MS, mkimage, mkimageScratch, sameBytes } from "../helpers/mkimage.ts";

const { caseDir } = mkimageScratch();

/** Pool-like bytes of any size, the same for the same size and seed. */
async function writePool(path: string, size: number, seed = 3): Promise<string> {
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of samplePoolChunks(size, seed)) {
    out.set(chunk, at);
    at += chunk.length;
  }
  await Bun.write(path, out);
  return path;
}

/**
 * Check an image with python3 alone: it builds the whole expected 4096-byte
 * header from the raw file and the arguments (struct.pack, hashlib) and
 * compares every byte, and inflates (zlib) or compares the payload. Returns
 * the differing header offsets and whether the payload is the raw input.
 */
function pythonCheck(
  image: string,
  raw: string,
  fields: { name: string; dataset?: string; targetSize: number; compressed: boolean },
) {
  const program = `
import sys, struct, hashlib, zlib, json
image = open(sys.argv[1], 'rb').read()
raw = open(sys.argv[2], 'rb').read()
name, dataset, target, compressed = sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == '1'
payload = image[4096:]
expected = struct.pack('<IIQQQQ32s128s128s', 0x1DEB0075, 2, 1 if compressed else 0, len(payload), len(raw), target,
                       hashlib.sha256(raw).digest(), dataset.encode(), name.encode()).ljust(4096, b'\\0')
differ = [i for i in range(4096) if i >= len(image) or image[i] != expected[i]]
if compressed:
    d = zlib.decompressobj()
    inflated = d.decompress(payload)
    payload_ok = d.eof and not d.unused_data and inflated == raw
else:
    payload_ok = payload == raw
print(json.dumps({'differ': differ[:16], 'payloadOk': payload_ok}))
`;
  const result = python(
    program,
    image,
    raw,
    fields.name,
    fields.dataset ?? "rpool/ROOT/ramdisk",
    String(fields.targetSize),
    fields.compressed ? "1" : "0",
  );
  return JSON.parse(result) as { differ: number[]; payloadOk: boolean };
}

async function pigzInflates(image: string, raw: string): Promise<boolean> {
  const payload = Bun.file(image).slice(4096);
  const pigz = await runCommandBytes(["pigz", "-dz"], { stdin: new Uint8Array(await payload.arrayBuffer()) });
  return pigz.exitCode === 0 && pigz.stdout.equals(Buffer.from(await Bun.file(raw).arrayBuffer()));
}

describe("uncompressed images are the vectors, byte for byte", () => {
  test(
    "pool-1m with checksum file, name and target size",
    async () => {
      const out = await caseDir();
      const run = await mkimage([
        "-i",
        `${VECTORS}/pool-1m.raw`,
        "-o",
        `${out}/pool.img`,
        "-O",
        `${out}/pool.csum`,
        "-N",
        "testing",
        "-s",
        "64",
      ]);
      expect(run).toEqual({
        exitCode: 0,
        stdout: "ok, image written!\nok, boot_image_csum file written!\n",
        stderr: "",
      });
      expect(await sameBytes(`${out}/pool.img`, `${VECTORS}/pool-1m.img`)).toBe(true);
      expect(await sameBytes(`${out}/pool.csum`, `${VECTORS}/pool-1m.csum`)).toBe(true);
      expect(await listing(out)).toEqual(["pool.csum", "pool.img"]);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "pool-odd with defaults, warned that it cannot be netbooted",
    async () => {
      const out = await caseDir();
      const run = await mkimage(["-i", `${VECTORS}/pool-odd.raw`, "-o", `${out}/odd.img`, "-N", "odd"]);
      expect(run.exitCode).toBe(0);
      expect(run.stdout).toBe("ok, image written!\n");
      const warnings = run.stderr.trim().split("\n");
      expect(warnings).toHaveLength(2);
      expect(warnings[0]).toMatch(/^mkimage: warning: .*cannot be netbooted.*300000 bytes is below 1 MiB/);
      expect(warnings[1]).toMatch(/^mkimage: warning: .*cannot be netbooted.*300000 bytes is not a multiple of 131072/);
      expect(await sameBytes(`${out}/odd.img`, `${VECTORS}/pool-odd.img`)).toBe(true);
      expect(await listing(out)).toEqual(["odd.img"]);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "replaces an existing image, and accepts an image exactly as large as the target",
    async () => {
      const out = await caseDir();
      await Bun.write(`${out}/pool.img`, "an older image");
      const run = await mkimage(["-i", `${VECTORS}/pool-1m.raw`, "-o", `${out}/pool.img`, "-N", "testing", "-s", "1"]);
      expect(run.exitCode).toBe(0);
      expect(
        pythonCheck(`${out}/pool.img`, `${VECTORS}/pool-1m.raw`, {
          name: "testing",
          targetSize: MIB,
          compressed: false,
        }),
      ).toEqual({
        differ: [],
        payloadOk: true,
      });
      expect(await listing(out)).toEqual(["pool.img"]);
    },
    MKIMAGE_TIMEOUT_MS,
  );
});

describe("compressed images", () => {
  /** The header of `a` equals that of `b` except data_size (bytes 16..24). */
  async function sameHeaderButDataSize(a: string, b: string) {
    const ha = new Uint8Array(await Bun.file(a).slice(0, 4096).arrayBuffer());
    const hb = new Uint8Array(await Bun.file(b).slice(0, 4096).arrayBuffer());
    const differ = [...ha.keys()].filter((i) => ha[i] !== hb[i] && (i < 16 || i >= 24));
    expect(differ).toEqual([]);
  }

  test(
    "pool-1m -z: the vector's header but data_size, a payload python and pigz inflate to the raw pool",
    async () => {
      const out = await caseDir();
      const raw = `${VECTORS}/pool-1m.raw`;
      const run = await mkimage([
        "-i",
        raw,
        "-o",
        `${out}/z.img`,
        "-O",
        `${out}/z.csum`,
        "-N",
        "recovery-testing",
        "-s",
        "64",
        "-z",
      ]);
      expect(run).toEqual({
        exitCode: 0,
        stdout: "ok, image written!\nok, boot_image_csum file written!\n",
        stderr: "",
      });
      await sameHeaderButDataSize(`${out}/z.img`, `${VECTORS}/pool-1m-z.img`);
      expect(
        pythonCheck(`${out}/z.img`, raw, { name: "recovery-testing", targetSize: 64 * MIB, compressed: true }),
      ).toEqual({
        differ: [],
        payloadOk: true,
      });
      expect(await pigzInflates(`${out}/z.img`, raw)).toBe(true);
      expect(await sameBytes(`${out}/z.csum`, `${VECTORS}/pool-1m-z.csum`)).toBe(true);
      // The zlib header zlib writes at level 9.
      expect([...new Uint8Array(await Bun.file(`${out}/z.img`).slice(4096, 4098).arrayBuffer())]).toEqual([0x78, 0xda]);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "pool-odd -z: the vector's header but data_size",
    async () => {
      const out = await caseDir();
      const run = await mkimage(["-i", `${VECTORS}/pool-odd.raw`, "-o", `${out}/z.img`, "-z"]);
      expect(run.exitCode).toBe(0);
      await sameHeaderButDataSize(`${out}/z.img`, `${VECTORS}/pool-odd-z.img`);
      expect(await pigzInflates(`${out}/z.img`, `${VECTORS}/pool-odd.raw`)).toBe(true);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  // Sizes around a thread's block (ZLIB_BLOCK_SIZE) and around a sync flush inside one (FLUSH_INTERVAL).
  const cases: [size: number, jobs: number][] = [
    [4096, 1],
    [FLUSH_INTERVAL - 1, 2],
    [FLUSH_INTERVAL + 1, 2],
    [ZLIB_BLOCK_SIZE - 1, 3],
    [ZLIB_BLOCK_SIZE, 2],
    [ZLIB_BLOCK_SIZE + 1, 4],
    [3 * ZLIB_BLOCK_SIZE + 17, 1],
    [3 * ZLIB_BLOCK_SIZE + 17, 7],
  ];
  for (const [size, jobs] of cases) {
    test(
      `${size} bytes with --jobs ${jobs}: every header byte, and the payload inflates to the input`,
      async () => {
        const out = await caseDir();
        const raw = await writePool(`${out}/in.raw`, size, size);
        const run = await mkimage([
          "-i",
          raw,
          "-o",
          `${out}/z.img`,
          "-N",
          "sized",
          "-s",
          "16",
          "-z",
          "--jobs",
          String(jobs),
        ]);
        expect(run.exitCode).toBe(0);
        expect(run.stdout).toBe("ok, image written!\n");
        expect(pythonCheck(`${out}/z.img`, raw, { name: "sized", targetSize: 16 * MIB, compressed: true })).toEqual({
          differ: [],
          payloadOk: true,
        });
        expect(await pigzInflates(`${out}/z.img`, raw)).toBe(true);
        expect(await listing(out)).toEqual(["in.raw", "z.img"]);
      },
      MKIMAGE_TIMEOUT_MS,
    );
  }

  test(
    "the same image whatever the number of threads",
    async () => {
      const out = await caseDir();
      const raw = await writePool(`${out}/in.raw`, 5 * MIB + 12345, 5);
      for (const jobs of ["1", "2", "5"])
        expect((await mkimage(["-i", raw, "-o", `${out}/${jobs}.img`, "-z", "--jobs", jobs])).exitCode).toBe(0);
      expect(await sameBytes(`${out}/1.img`, `${out}/2.img`)).toBe(true);
      expect(await sameBytes(`${out}/1.img`, `${out}/5.img`)).toBe(true);
      expect(await pigzInflates(`${out}/1.img`, raw)).toBe(true);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "other levels write other zlib headers and still inflate",
    async () => {
      const out = await caseDir();
      const raw = await writePool(`${out}/in.raw`, 700_000);
      for (const [level, header] of [
        ["1", [0x78, 0x01]],
        ["6", [0x78, 0x9c]],
      ] as const) {
        const run = await mkimage(["-i", raw, "-o", `${out}/z.img`, "-z", "--level", level]);
        expect(run.exitCode).toBe(0);
        expect([...new Uint8Array(await Bun.file(`${out}/z.img`).slice(4096, 4098).arrayBuffer())]).toEqual([
          ...header,
        ]);
        expect(await pigzInflates(`${out}/z.img`, raw)).toBe(true);
      }
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "a 127-byte name and dataset fill their fields",
    async () => {
      const out = await caseDir();
      const name = "n".repeat(127);
      const dataset = `rpool/${"d".repeat(121)}`;
      const run = await mkimage([
        "-i",
        `${VECTORS}/pool-odd.raw`,
        "-o",
        `${out}/z.img`,
        "-N",
        name,
        "--dataset",
        dataset,
        "-z",
        "-s",
        "1",
      ]);
      expect(run.exitCode).toBe(0);
      expect(
        pythonCheck(`${out}/z.img`, `${VECTORS}/pool-odd.raw`, { name, dataset, targetSize: MIB, compressed: true }),
      ).toEqual({
        differ: [],
        payloadOk: true,
      });
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "many small blocks on many workers come out in order (in-process, blocks smaller than the window)",
    async () => {
      const out = await caseDir();
      const raw = await writePool(`${out}/in.raw`, 1_000_003, 17);
      const header = await makeImage({
        input: raw,
        output: `${out}/z.img`,
        targetSize: 4 * MIB,
        imageName: "blocks",
        compression: { codec: "zlib", level: 9, jobs: 5, blockSize: 5000 },
        threads: IMAGE_THREADS,
      });
      expect(header.imageSize).toBe(1_000_003);
      expect(pythonCheck(`${out}/z.img`, raw, { name: "blocks", targetSize: 4 * MIB, compressed: true })).toEqual({
        differ: [],
        payloadOk: true,
      });
      expect(await pigzInflates(`${out}/z.img`, raw)).toBe(true);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "a worker's failure fails the job and leaves no file (in-process)",
    async () => {
      const out = await caseDir();
      const raw = await writePool(`${out}/in.raw`, 600_000);
      const made = makeImage({
        input: raw,
        output: `${out}/z.img`,
        targetSize: 4 * MIB,
        imageName: "",
        // Not a level zlib knows: each worker's deflate throws.
        compression: { codec: "zlib", level: 42 as ZlibLevel, jobs: 2 },
        threads: IMAGE_THREADS,
      });
      await expect(made).rejects.toThrow(/level/i);
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    MKIMAGE_TIMEOUT_MS,
  );
});

describe("command line", () => {
  test(
    "usage errors exit 2 with one line",
    async () => {
      const out = await caseDir();
      const raw = `${VECTORS}/pool-1m.raw`;
      const usage: [string[], RegExp][] = [
        [[], /Missing required arguments: input, output/],
        [["-i", raw], /Missing required argument: output/],
        [["-i", raw, "-o", `${out}/x.img`, "-s", "64M"], /-s must be a whole number/],
        // What Rust's str::parse::<u64> refuses too: a sign '-', spaces, a lone '+', two signs, nothing.
        ...["-8", " 8", "8 ", "+", "++8", "+-8", "1_0", ""].map((size): [string[], RegExp] => [
          ["-i", raw, "-o", `${out}/x.img`, "-s", size],
          /-s must be a whole number/,
        ]),
        // 2^33 MiB is 8 PiB: the existing tool writes it (and wraps from 2^44 MiB on); ours says why not.
        ...["8589934592", "17592186044416", "18446744073709551616"].map((size): [string[], RegExp] => [
          ["-i", raw, "-o", `${out}/x.img`, "-s", size],
          new RegExp(
            `^mkimage: -s ${size} is above 8589934591: a ramdisk of 8 PiB or more, which no sled could create`,
          ),
        ]),
        [["-i", raw, "-o", `${out}/x.img`, "-z", "--level", "0"], /--level must be a whole number from 1 to 9/],
        [["-i", raw, "-o", `${out}/x.img`, "-z", "--jobs", "0"], /--jobs must be a whole number from 1/],
        [["-i", raw, "-o", `${out}/x.img`, "--frobnicate"], /unknown option --frobnicate/],
        [["-i", raw, "-o", `${out}/x.img`, "-N"], /-N needs a value/],
      ];
      for (const [args, message] of usage) {
        const run = await mkimage(args);
        expect(run.exitCode).toBe(2);
        expect(run.stdout).toBe("");
        expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
        expect(run.stderr).toMatch(message);
      }
      expect(await listing(out)).toEqual([]);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "-s takes a leading '+' and leading zeros, as the existing tool's Rust u64 parse does",
    async () => {
      const out = await caseDir();
      for (const size of ["+8", "008", "+08"]) {
        const run = await mkimage(["-i", `${VECTORS}/pool-1m.raw`, "-o", `${out}/x.img`, "-s", size]);
        expect(run.exitCode).toBe(0);
        const target = new DataView((await Bun.file(`${out}/x.img`).slice(32, 40).arrayBuffer()) as ArrayBuffer);
        expect(target.getBigUint64(0, true)).toBe(8n * BigInt(MIB));
      }
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "-s 8589934591, the largest, is written exactly: (2^33 - 1) MiB, below 2^53 bytes",
    async () => {
      const out = await caseDir();
      const run = await mkimage(["-i", `${VECTORS}/pool-1m.raw`, "-o", `${out}/x.img`, "-s", "8589934591"]);
      expect(run.exitCode).toBe(0);
      const target = new DataView((await Bun.file(`${out}/x.img`).slice(32, 40).arrayBuffer()) as ArrayBuffer);
      expect(target.getBigUint64(0, true)).toBe((2n ** 33n - 1n) * BigInt(MIB));
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "--help shows the options and examples; --version the package version",
    async () => {
      const help = await mkimage(["--help"]);
      expect(help.exitCode).toBe(0);
      for (const flag of [
        "--input",
        "--output",
        "--checksum-file",
        "--target-size",
        "--name",
        "--compress",
        "--zstd",
        "--dataset",
        "--level",
        "--jobs",
      ]) {
        expect(help.stdout).toContain(flag);
      }
      expect(help.stdout).toContain("Examples:");
      const version = await mkimage(["--version"]);
      expect(version.exitCode).toBe(0);
      expect(version.stdout.trim()).toBe((await Bun.file(join(ROOT, "package.json")).json()).version);
    },
    MKIMAGE_TIMEOUT_MS,
  );
});
