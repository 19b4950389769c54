/**
 * mkimage end to end, run as the build runs it (`bun apps/mkimage.ts ...`):
 * uncompressed images byte for byte equal to the vectors the existing tool
 * made, compressed images whose header matches and whose payload python3's
 * zlib and `pigz -dz` inflate to the raw input, every refusal leaving no
 * output and no temporary file, and interruptions leaving nothing behind.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFile, chmod, copyFile, link, mkdir, mkdtemp, readdir, rm, symlink, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/image/format.ts";
import { makeImage } from "@ramdisk-tools/image/make.ts";
import { ZLIB_BLOCK_SIZE } from "@ramdisk-tools/image/payload-encoders.ts";
import { FLUSH_INTERVAL, type ZlibLevel } from "@ramdisk-tools/image/zlib-stream.ts";
import { samplePoolChunks, writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { IMAGE_THREADS } from "../workers/entry-points.ts";
import {
  caseDirs,
  expectRefusal,
  type ProgramRun,
  python,
  ROOT,
  runCommandBytes,
  runProgram,
  VECTORS,
} from "./helpers/common.ts";
import { mkimage, nobodyReachesMkimage } from "./helpers/mkimage.ts";

const APP = join(ROOT, "apps", "mkimage.ts");
// Real processes, python3 and pigz on a shared machine: room, but no assertion on time.
const SLOW = 120_000;
/** As root the unreadable-input case runs mkimage as nobody, who must reach the program. */
const nobodyReachesApp = await nobodyReachesMkimage();

let dir: string;
/** A 64 MiB pool-like file, for runs long enough to interrupt. */
let bigRaw: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mkimage-test-"));
  bigRaw = join(dir, "big.raw");
  await writeSamplePool(bigRaw, 64 * MIB, 11);
}, SLOW);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
}, SLOW);

/** A fresh directory for one case, so its listing shows exactly what the run left. */
const caseDir = caseDirs(() => dir);

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

async function sameBytes(a: string, b: string): Promise<boolean> {
  return Buffer.from(await Bun.file(a).arrayBuffer()).equals(Buffer.from(await Bun.file(b).arrayBuffer()));
}

async function listing(path: string): Promise<string[]> {
  return (await readdir(path)).sort();
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
      SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
  );
});

describe("refusals: one line, exit 1, no output and no temporary file", () => {
  /** A refusal by mkimage (tests/helpers/common.ts expectRefusal). */
  function expectRefused(run: ProgramRun, message: RegExp) {
    expectRefusal(run, "mkimage", message);
  }

  test(
    "missing input",
    async () => {
      const out = await caseDir();
      expectRefused(
        await mkimage(["-i", `${out}/absent.raw`, "-o", `${out}/x.img`, "-O", `${out}/x.csum`]),
        /cannot read input .*absent\.raw: no such file or directory/,
      );
      expect(await listing(out)).toEqual([]);
    },
    SLOW,
  );

  test(
    "input path through a file",
    async () => {
      const out = await caseDir();
      await Bun.write(`${out}/file`, "x");
      expectRefused(
        await mkimage(["-i", `${out}/file/pool.raw`, "-o", `${out}/x.img`]),
        /cannot read input .*: not a directory/,
      );
      expect(await listing(out)).toEqual(["file"]);
    },
    SLOW,
  );

  // Root reads anything, so as root the program runs as nobody, which needs to reach the program and
  // write to the case directory.
  const asRoot = process.getuid?.() === 0;
  test.skipIf(!nobodyReachesApp)(
    "unreadable input",
    async () => {
      const out = await caseDir();
      await copyFile(`${VECTORS}/pool-1m.raw`, `${out}/in.raw`);
      await chmod(`${out}/in.raw`, 0o000);
      if (asRoot) {
        await chmod(dir, 0o755);
        await chmod(out, 0o777);
      }
      const run = await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`], asRoot ? { user: 65534 } : {});
      expectRefused(run, /cannot read input .*in\.raw: permission denied/);
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    SLOW,
  );

  test(
    "input that is a directory, or not a regular file",
    async () => {
      const out = await caseDir();
      await mkdir(`${out}/pool`);
      expectRefused(await mkimage(["-i", `${out}/pool`, "-o", `${out}/x.img`]), /input .*pool is a directory/);
      expectRefused(
        await mkimage(["-i", "/dev/null", "-o", `${out}/x.img`]),
        /input \/dev\/null is not a regular file/,
      );
      expect(await listing(out)).toEqual(["pool"]);
    },
    SLOW,
  );

  for (const size of [0, 1, 4095]) {
    test(
      `${size}-byte input: below the kernel's minimum`,
      async () => {
        const out = await caseDir();
        await Bun.write(`${out}/in.raw`, new Uint8Array(size).fill(7));
        expectRefused(
          await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, "-z"]),
          new RegExp(
            `^mkimage: the sled kernel would refuse this image: image size of ${size} bytes ` +
              "is below the kernel's minimum of 4096$",
          ),
        );
        expect(await listing(out)).toEqual(["in.raw"]);
      },
      SLOW,
    );
  }

  test(
    "input above 4 GiB (sparse)",
    async () => {
      const out = await caseDir();
      await Bun.write(`${out}/in.raw`, "");
      await truncate(`${out}/in.raw`, 4 * 1024 * MIB + 1);
      expectRefused(
        await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`, "-s", "8192"]),
        /refuse this image: image size of 4294967297 bytes is above the kernel's maximum of 4294967296 \(4 GiB\)$/,
      );
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    SLOW,
  );

  test(
    "image larger than the target size",
    async () => {
      const out = await caseDir();
      await writePool(`${out}/in.raw`, MIB + 1);
      expectRefused(
        await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, "-s", "1", "-z"]),
        /: the sled kernel would refuse this image: target size of 1048576 bytes is less than image size of 1048577$/,
      );
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    SLOW,
  );

  test(
    "-z on input that does not compress: the zlib stream would be larger than the image, which lookimage refuses",
    async () => {
      const out = await caseDir();
      const raw = `${out}/random.raw`;
      await Bun.write(raw, crypto.getRandomValues(new Uint8Array(MIB)));
      await Bun.write(`${out}/keep.img`, "an earlier image");
      for (const args of [
        ["-o", `${out}/x.img`, "-O", `${out}/x.csum`],
        ["-o", `${out}/keep.img`, "-O", `${out}/x.csum`, "--level", "1"],
      ]) {
        expectRefused(
          await mkimage(["-i", raw, ...args, "-z", "-s", "64"]),
          new RegExp(
            `^mkimage: cannot write a compressed image that lookimage refuses ` +
              `\\(image size ${MIB} < data size \\d+\\): ` +
              `.*random\\.raw does not compress; drop -z for a plain image$`,
          ),
        );
        expect(await listing(out)).toEqual(["keep.img", "random.raw"]);
        expect(await Bun.file(`${out}/keep.img`).text()).toBe("an earlier image");
      }
      // The plain image the message points to is written, and lookimage accepts it.
      const plain = await mkimage(["-i", raw, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, "-s", "64"]);
      expect(plain.exitCode).toBe(0);
      const look = await runProgram("lookimage", [`${out}/x.img`]);
      expect(look.exitCode).toBe(0);
    },
    SLOW,
  );

  test(
    "name or dataset of 128 bytes",
    async () => {
      const out = await caseDir();
      const raw = `${VECTORS}/pool-1m.raw`;
      expectRefused(
        await mkimage(["-i", raw, "-o", `${out}/x.img`, "-N", "n".repeat(128)]),
        /image name is 128 bytes long; at most 127/,
      );
      expectRefused(
        await mkimage(["-i", raw, "-o", `${out}/x.img`, "--dataset", "d".repeat(128)]),
        /dataset name is 128 bytes long; at most 127/,
      );
      // Bytes, not characters: 64 two-byte characters do not fit either.
      expectRefused(
        await mkimage(["-i", raw, "-o", `${out}/x.img`, "-N", "é".repeat(64)]),
        /image name is 128 bytes long/,
      );
      expect(await listing(out)).toEqual([]);
    },
    SLOW,
  );

  test(
    "output or checksum file that is the input, also through a symlink or a hard link",
    async () => {
      const out = await caseDir();
      const raw = `${out}/in.raw`;
      await copyFile(`${VECTORS}/pool-1m.raw`, raw);
      await symlink(raw, `${out}/via-symlink`);
      await link(raw, `${out}/via-hardlink`);
      const refusals: [string[], RegExp][] = [
        [["-o", raw], /output .*in\.raw is the input file/],
        [["-o", `${out}/../${out.split("/").at(-1)}/in.raw`], /output .* is the input file/],
        [["-o", `${out}/via-symlink`], /output .*via-symlink is the input file/],
        [["-o", `${out}/via-hardlink`], /output .*via-hardlink is the input file/],
        [["-o", `${out}/x.img`, "-O", raw], /checksum file .*in\.raw is the input file/],
        [["-o", `${out}/x.img`, "-O", `${out}/x.img`], /checksum file .*x\.img is the same file as output/],
      ];
      for (const [args, message] of refusals) expectRefused(await mkimage(["-i", raw, ...args, "-z"]), message);
      expect(await listing(out)).toEqual(["in.raw", "via-hardlink", "via-symlink"]);
      expect(await sameBytes(raw, `${VECTORS}/pool-1m.raw`)).toBe(true);
    },
    SLOW,
  );

  test(
    "output that is a directory, or in a missing directory",
    async () => {
      const out = await caseDir();
      await mkdir(`${out}/image`);
      expectRefused(
        await mkimage(["-i", `${VECTORS}/pool-1m.raw`, "-o", `${out}/image`]),
        /output .*image is a directory/,
      );
      expectRefused(
        await mkimage(["-i", `${VECTORS}/pool-1m.raw`, "-o", `${out}/missing/x.img`]),
        /cannot write output .*missing.*no such file or directory/,
      );
      expect(await listing(out)).toEqual(["image"]);
    },
    SLOW,
  );
});

describe("input that changes while being read, and interruptions", () => {
  /** Start a long compression (64 MiB, one worker) and wait until its temporary image exists. */
  async function startLongRun(out: string, raw: string) {
    const child = Bun.spawn(["bun", APP, "-i", raw, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, "-z", "--jobs", "1"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const deadline = Date.now() + 60_000;
    while (!(await readdir(out)).some((name) => name.startsWith(".x.img.tmp-"))) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error("mkimage did not start writing");
      await Bun.sleep(10);
    }
    return child;
  }

  test(
    "input that shrinks: refused, the existing output kept as it was",
    async () => {
      const out = await caseDir();
      const raw = `${out}/in.raw`;
      await copyFile(bigRaw, raw);
      await Bun.write(`${out}/x.img`, "the previous image");
      const child = await startLongRun(out, raw);
      await truncate(raw, 32 * MIB);
      expect(await child.exited).toBe(1);
      expect(await new Response(child.stderr).text()).toBe(
        `mkimage: input ${raw} shrank from ${64 * MIB} to ${32 * MIB} bytes while being read\n`,
      );
      expect(await listing(out)).toEqual(["in.raw", "x.img"]);
      expect(await Bun.file(`${out}/x.img`).text()).toBe("the previous image");
    },
    SLOW,
  );

  test(
    "input that grows: refused",
    async () => {
      const out = await caseDir();
      const raw = `${out}/in.raw`;
      await copyFile(bigRaw, raw);
      const child = await startLongRun(out, raw);
      await appendFile(raw, "more");
      expect(await child.exited).toBe(1);
      expect(await new Response(child.stderr).text()).toBe(
        `mkimage: input ${raw} grew beyond ${64 * MIB} bytes while being read\n`,
      );
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    SLOW,
  );

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(
      `${signal} mid-run: the process dies of it, leaving no output and no temporary file`,
      async () => {
        const out = await caseDir();
        const child = await startLongRun(out, bigRaw);
        child.kill(signal);
        await child.exited;
        expect(child.signalCode).toBe(signal);
        expect(await listing(out)).toEqual([]);
      },
      SLOW,
    );
  }

  test(
    "SIGKILL mid-run: nothing at the output path",
    async () => {
      const out = await caseDir();
      const child = await startLongRun(out, bigRaw);
      child.kill("SIGKILL");
      await child.exited;
      // No handler runs on SIGKILL, so the temporary file stays; the output path never sees a partial image.
      expect(await Bun.file(`${out}/x.img`).exists()).toBe(false);
      expect(await Bun.file(`${out}/x.csum`).exists()).toBe(false);
    },
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
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
    SLOW,
  );
});
