/**
 * What mkimage refuses, run as the build runs it (`bun apps/mkimage.ts ...`):
 * every refusal is one line, exit 1, with no output and no temporary file
 * left; input that changes while being read is refused, and interruptions
 * (SIGTERM, SIGINT, SIGKILL mid-run) leave nothing at the output path.
 * Hostile file systems are in tests/files/mkimage-hostile.test.ts.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { appendFile, chmod, copyFile, link, mkdir, readdir, symlink, truncate } from "node:fs/promises";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { expectRefusal, type ProgramRun, runProgram, startProgram, VECTORS } from "../helpers/common.ts";
import {
  listing,
  MKIMAGE_TIMEOUT_MS,
  mkimage,
  mkimageScratch,
  nobodyReachesMkimage,
  sameBytes,
} from "../helpers/mkimage.ts";

/** As root the unreadable-input case runs mkimage as nobody, who must reach the program. */
const nobodyReachesApp = await nobodyReachesMkimage();

const scratch = mkimageScratch();
const { caseDir } = scratch;
/** A 64 MiB pool-like file, for runs long enough to interrupt. */
let bigRaw: string;
beforeAll(async () => {
  bigRaw = join(scratch.dir(), "big.raw");
  await writeSamplePool(bigRaw, 64 * MIB, 11);
}, MKIMAGE_TIMEOUT_MS);

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
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
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
        await chmod(scratch.dir(), 0o755);
        await chmod(out, 0o777);
      }
      const run = await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`], asRoot ? { user: 65534 } : {});
      expectRefused(run, /cannot read input .*in\.raw: permission denied/);
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
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
      MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "image larger than the target size",
    async () => {
      const out = await caseDir();
      await writeSamplePool(`${out}/in.raw`, MIB + 1, 3);
      expectRefused(
        await mkimage(["-i", `${out}/in.raw`, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, "-s", "1", "-z"]),
        /: the sled kernel would refuse this image: target size of 1048576 bytes is less than image size of 1048577$/,
      );
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
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
    MKIMAGE_TIMEOUT_MS,
  );
});

describe("input that changes while being read, and interruptions", () => {
  /** Start a long compression (64 MiB, one worker) and wait until its temporary image exists. */
  async function startLongRun(out: string, raw: string) {
    const child = startProgram("mkimage", [
      "-i",
      raw,
      "-o",
      `${out}/x.img`,
      "-O",
      `${out}/x.csum`,
      "-z",
      "--jobs",
      "1",
    ]);
    const deadline = Date.now() + 60_000;
    while (!(await readdir(out)).some((name) => name.startsWith(".x.img.tmp-"))) {
      if (Date.now() > deadline || child.process.exitCode !== null) throw new Error("mkimage did not start writing");
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
      expect(await child.process.exited).toBe(1);
      expect(await child.stderr()).toBe(
        `mkimage: input ${raw} shrank from ${64 * MIB} to ${32 * MIB} bytes while being read\n`,
      );
      expect(await listing(out)).toEqual(["in.raw", "x.img"]);
      expect(await Bun.file(`${out}/x.img`).text()).toBe("the previous image");
    },
    MKIMAGE_TIMEOUT_MS,
  );

  test(
    "input that grows: refused",
    async () => {
      const out = await caseDir();
      const raw = `${out}/in.raw`;
      await copyFile(bigRaw, raw);
      const child = await startLongRun(out, raw);
      await appendFile(raw, "more");
      expect(await child.process.exited).toBe(1);
      expect(await child.stderr()).toBe(`mkimage: input ${raw} grew beyond ${64 * MIB} bytes while being read\n`);
      expect(await listing(out)).toEqual(["in.raw"]);
    },
    MKIMAGE_TIMEOUT_MS,
  );

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(
      `${signal} mid-run: the process dies of it, leaving no output and no temporary file`,
      async () => {
        const out = await caseDir();
        const child = await startLongRun(out, bigRaw);
        child.process.kill(signal);
        await child.process.exited;
        expect(child.process.signalCode).toBe(signal);
        expect(await listing(out)).toEqual([]);
      },
      MKIMAGE_TIMEOUT_MS,
    );
  }

  test(
    "SIGKILL mid-run: nothing at the output path",
    async () => {
      const out = await caseDir();
      const child = await startLongRun(out, bigRaw);
      child.process.kill("SIGKILL");
      await child.process.exited;
      // No handler runs on SIGKILL, so the temporary file stays; the output path never sees a partial image.
      expect(await Bun.file(`${out}/x.img`).exists()).toBe(false);
      expect(await Bun.file(`${out}/x.csum`).exists()).toBe(false);
    },
    MKIMAGE_TIMEOUT_MS,
  );
});
