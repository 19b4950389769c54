/**
 * mkimage against hostile conditions, as real processes (`bun apps/mkimage.ts
 * ...`): a read-only output directory, a full disk, output
 * paths that are symbolic links, paths the file system refuses. Every
 * refusal must be a non-zero exit with one line on stderr and no partial
 * output: nothing at the output path, no `.NAME.tmp-*` file beside it, and
 * an existing output left as it was.
 *
 * Read-only and full file systems are tmpfs mounts the test makes itself
 * (root only; root ignores file modes, so the mode-555 case runs as nobody).
 * Interruptions (SIGTERM, SIGINT, SIGKILL mid-run) and the other refusals
 * are in tests/image/mkimage-refusals.test.ts.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, readlink, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  caseDirs,
  commandOutput,
  expectRefusal,
  type ProgramRun,
  python,
  runCommand,
  sha256sum,
  VECTORS,
} from "../helpers/common.ts";
import { mkimage, nobodyReachesMkimage } from "../helpers/mkimage.ts";

/** 1 MiB, a multiple of 128 KiB: with -s 64 mkimage has no warning to print. */
const POOL_1M = join(VECTORS, "pool-1m.raw");
// Real processes on a shared machine: room, but no assertion on time.
const SLOW = 120_000;
const asRoot = process.getuid?.() === 0;
const nobodyReachesApp = await nobodyReachesMkimage();

let dir: string;
/** 4 MiB of random bytes: zlib cannot shrink them below the 1 MiB of a small tmpfs. */
let random4m: string;
/** tmpfs mounts still mounted, unmounted by afterAll if a test could not. */
const mounts = new Set<string>();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "mkimage-hostile-"));
  random4m = join(dir, "random-4m.raw");
  await writeFile(random4m, randomBytes(4 * 1024 * 1024));
}, SLOW);
afterAll(async () => {
  for (const mount of mounts) await unmount(mount);
  await rm(dir, { recursive: true, force: true });
}, SLOW);

/** A fresh directory for one case, so its listing shows exactly what the run left. */
const caseDir = caseDirs(() => dir);

/** Mount a tmpfs of our own at `path` (`options` as mount -o takes them). */
async function mountTmpfs(path: string, options: string) {
  await commandOutput(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path]);
  mounts.add(path);
}

async function unmount(path: string) {
  if ((await runCommand(["umount", path])).exitCode !== 0) await runCommand(["umount", "-l", path]);
  mounts.delete(path);
}

/** A refusal by mkimage (tests/helpers/common.ts expectRefusal). */
function expectRefused(run: ProgramRun, message: RegExp) {
  expectRefusal(run, "mkimage", message);
}

async function listing(path: string): Promise<string[]> {
  return (await readdir(path)).sort();
}

/**
 * Check a stored image with python3 alone: magic, version, flags, sizes and
 * SHA-256 (hashlib) in its header, and a payload equal to the raw input.
 */
function storedImageOf(image: string, raw: string): boolean {
  const program = `
import sys, struct, hashlib
image = open(sys.argv[1], 'rb').read()
raw = open(sys.argv[2], 'rb').read()
magic, version, flags, data_size, image_size, target = struct.unpack_from('<IIQQQQ', image)
ok = (magic, version, flags, data_size, image_size) == (0x1DEB0075, 2, 0, len(raw), len(raw)) \\
    and image[40:72] == hashlib.sha256(raw).digest() and image[4096:] == raw
print('yes' if ok else 'no')
`;
  return python(program, image, raw).trim() === "yes";
}

describe("a read-only output directory", () => {
  // A tmpfs mounted read-only binds root too; one with files in it is made writable, filled, then remounted.
  test.skipIf(!asRoot)(
    "a read-only file system (root only: mounts a tmpfs): refused, existing files kept",
    async () => {
      const readOnly = await caseDir();
      const writable = await caseDir();
      await mountTmpfs(readOnly, "size=1m");
      try {
        await Bun.write(join(readOnly, "x.img"), "the previous image");
        await Bun.write(join(readOnly, "x.csum"), "the previous checksum");
        const remounted = await runCommand(["mount", "-o", "remount,ro", readOnly]);
        expect(remounted.stderr).toBe("");
        for (const codec of [[], ["-z"]]) {
          const args = [
            "-i",
            POOL_1M,
            "-o",
            join(readOnly, "x.img"),
            "-O",
            join(readOnly, "x.csum"),
            "-s",
            "64",
            ...codec,
          ];
          expectRefused(await mkimage(args), /^mkimage: cannot write output .*x\.img: read-only file system$/);
        }
        // The image is written (beside its output, on a writable disk) before the checksum file fails:
        // neither may appear.
        await Bun.write(join(writable, "x.img"), "the previous image");
        expectRefused(
          await mkimage([
            "-i",
            POOL_1M,
            "-o",
            join(writable, "x.img"),
            "-O",
            join(readOnly, "new.csum"),
            "-s",
            "64",
            "-z",
          ]),
          /^mkimage: cannot write checksum file .*new\.csum: read-only file system$/,
        );
        expect(await listing(readOnly)).toEqual(["x.csum", "x.img"]);
        expect(await Bun.file(join(readOnly, "x.img")).text()).toBe("the previous image");
        expect(await Bun.file(join(readOnly, "x.csum")).text()).toBe("the previous checksum");
        expect(await listing(writable)).toEqual(["x.img"]);
        expect(await Bun.file(join(writable, "x.img")).text()).toBe("the previous image");
      } finally {
        await unmount(readOnly);
      }
    },
    SLOW,
  );

  // As root the program runs as nobody, which needs to reach the program, the input and the case directory.
  test.skipIf(!nobodyReachesApp)(
    "a directory of mode 555 (as nobody when root): refused, the existing output kept",
    async () => {
      const out = await caseDir();
      const raw = join(dir, "pool-1m.raw");
      await copyFile(POOL_1M, raw);
      await chmod(raw, 0o644);
      await chmod(dir, 0o755);
      await Bun.write(join(out, "x.img"), "the previous image");
      await chmod(out, 0o555);
      try {
        for (const codec of [[], ["-z"]]) {
          const run = await mkimage(
            ["-i", raw, "-o", join(out, "x.img"), "-O", join(out, "x.csum"), "-s", "64", ...codec],
            asRoot ? { user: 65534 } : {},
          );
          expectRefused(run, /^mkimage: cannot write output .*x\.img: permission denied$/);
        }
        expect(await listing(out)).toEqual(["x.img"]);
        expect(await Bun.file(join(out, "x.img")).text()).toBe("the previous image");
      } finally {
        await chmod(out, 0o755);
      }
    },
    SLOW,
  );
});

describe("a full disk (root only: a 1 MiB tmpfs of the test's own)", () => {
  test.skipIf(!asRoot)(
    "a 4 MiB input, stored and -z: refused, the existing output kept",
    async () => {
      const small = await caseDir();
      await mountTmpfs(small, "size=1m");
      try {
        await Bun.write(join(small, "x.img"), "the previous image");
        for (const codec of [[], ["-z"]]) {
          const run = await mkimage([
            "-i",
            random4m,
            "-o",
            join(small, "x.img"),
            "-O",
            join(small, "x.csum"),
            "-s",
            "64",
            ...codec,
          ]);
          expectRefused(run, /^mkimage: cannot write output .*x\.img: no space left on device$/);
          expect(await listing(small)).toEqual(["x.img"]);
          expect(await Bun.file(join(small, "x.img")).text()).toBe("the previous image");
        }
      } finally {
        await unmount(small);
      }
    },
    SLOW,
  );

  test.skipIf(!asRoot)(
    "the checksum file on a full disk after the image fits: no image published either",
    async () => {
      const out = await caseDir();
      const small = await caseDir();
      await mountTmpfs(small, "size=1m");
      try {
        // Fill the tmpfs to its last page: dd stops at "no space left on device".
        const filled = await runCommand(["dd", "if=/dev/zero", `of=${join(small, "filler")}`, "bs=4096"]);
        expect(filled.exitCode).not.toBe(0);
        expect(filled.stderr).toMatch(/no space left on device/i);
        await Bun.write(join(out, "x.img"), "the previous image");
        for (const codec of [[], ["-z"]]) {
          const run = await mkimage([
            "-i",
            POOL_1M,
            "-o",
            join(out, "x.img"),
            "-O",
            join(small, "x.csum"),
            "-s",
            "64",
            ...codec,
          ]);
          expectRefused(run, /^mkimage: cannot write checksum file .*x\.csum: no space left on device$/);
          expect(await listing(out)).toEqual(["x.img"]);
          expect(await Bun.file(join(out, "x.img")).text()).toBe("the previous image");
          expect(await listing(small)).toEqual(["filler"]);
        }
      } finally {
        await unmount(small);
      }
    },
    SLOW,
  );
});

describe("an output path that is a symbolic link", () => {
  test(
    "to a file elsewhere: the file it names is replaced, the link stays",
    async () => {
      const links = await caseDir();
      const targets = await caseDir();
      await Bun.write(join(targets, "pool.img"), "the previous image");
      await Bun.write(join(targets, "pool.csum"), "the previous checksum");
      await symlink(join(targets, "pool.img"), join(links, "current.img"));
      // Relative, as links in a build tree usually are.
      await symlink(`../${targets.split("/").at(-1)}/pool.csum`, join(links, "current.csum"));
      const run = await mkimage([
        "-i",
        POOL_1M,
        "-o",
        join(links, "current.img"),
        "-O",
        join(links, "current.csum"),
        "-s",
        "64",
      ]);
      expect(run).toEqual({
        exitCode: 0,
        stdout: "ok, image written!\nok, boot_image_csum file written!\n",
        stderr: "",
      });
      expect((await lstat(join(links, "current.img"))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(links, "current.img"))).toBe(join(targets, "pool.img"));
      expect(storedImageOf(join(targets, "pool.img"), POOL_1M)).toBe(true);
      expect(Buffer.from(await Bun.file(join(targets, "pool.csum")).arrayBuffer()).toString("hex")).toBe(
        await sha256sum(POOL_1M),
      );
      // The temporary files were beside the targets, and are gone.
      expect(await listing(links)).toEqual(["current.csum", "current.img"]);
      expect(await listing(targets)).toEqual(["pool.csum", "pool.img"]);
    },
    SLOW,
  );

  test(
    "dangling, into a missing directory, or a loop: refused like GNU cp's 'not writing through', the link left alone",
    async () => {
      const out = await caseDir();
      await symlink(join(out, "absent.img"), join(out, "dangling"));
      await symlink(join(out, "no", "such", "dir.img"), join(out, "nowhere"));
      await symlink(join(out, "loop-b"), join(out, "loop-a"));
      await symlink(join(out, "loop-a"), join(out, "loop-b"));
      const cases: [string[], RegExp][] = [
        [
          ["-o", join(out, "dangling")],
          /^mkimage: output .*dangling is a symbolic link to .*absent\.img, which does not resolve \(no such file or directory\); not writing through it$/,
        ],
        [
          ["-o", join(out, "nowhere")],
          /^mkimage: output .*nowhere is a symbolic link to .*dir\.img, which does not resolve \(no such file or directory\); not writing through it$/,
        ],
        [
          ["-o", join(out, "loop-a")],
          /^mkimage: output .*loop-a is a symbolic link to .*loop-b, which does not resolve \(too many (levels of )?symbolic links.*\); not writing through it$/i,
        ],
        [
          ["-o", join(out, "x.img"), "-O", join(out, "dangling")],
          /^mkimage: checksum file .*dangling is a symbolic link to .*absent\.img, which does not resolve/,
        ],
      ];
      for (const [args, message] of cases) {
        for (const codec of [[], ["-z"]])
          expectRefused(await mkimage(["-i", POOL_1M, ...args, "-s", "64", ...codec]), message);
      }
      expect(await listing(out)).toEqual(["dangling", "loop-a", "loop-b", "nowhere"]);
      expect(await readlink(join(out, "dangling"))).toBe(join(out, "absent.img"));
    },
    SLOW,
  );

  test(
    "to a directory: refused as a directory",
    async () => {
      const out = await caseDir();
      await mkdir(join(out, "images"));
      await symlink(join(out, "images"), join(out, "current.img"));
      expectRefused(
        await mkimage(["-i", POOL_1M, "-o", join(out, "current.img"), "-s", "64"]),
        /^mkimage: output .*current\.img is a directory$/,
      );
      expect(await listing(out)).toEqual(["current.img", "images"]);
      expect(await listing(join(out, "images"))).toEqual([]);
    },
    SLOW,
  );

  test(
    "to the input, as the checksum file, through a linked directory or a chain of links: refused, the input intact",
    async () => {
      const out = await caseDir();
      const raw = join(out, "in.raw");
      await copyFile(POOL_1M, raw);
      await symlink(out, join(out, "same-dir"));
      await symlink(raw, join(out, "link-1"));
      await symlink(join(out, "link-1"), join(out, "link-2"));
      const cases: [string[], RegExp][] = [
        [["-o", join(out, "x.img"), "-O", join(out, "link-2")], /^mkimage: checksum file .*link-2 is the input file/],
        [["-o", join(out, "same-dir", "in.raw")], /^mkimage: output .*same-dir\/in\.raw is the input file/],
        [["-o", join(out, "link-2")], /^mkimage: output .*link-2 is the input file/],
      ];
      for (const [args, message] of cases)
        expectRefused(await mkimage(["-i", raw, ...args, "-s", "64", "-z"]), message);
      expect(await listing(out)).toEqual(["in.raw", "link-1", "link-2", "same-dir"]);
      expect(await sha256sum(raw)).toBe(await sha256sum(POOL_1M));
    },
    SLOW,
  );
});

describe("paths the file system refuses", () => {
  test(
    "a parent that is a file: refused with 'not a directory', the file kept",
    async () => {
      const out = await caseDir();
      await Bun.write(join(out, "file"), "a plain file");
      expectRefused(
        await mkimage(["-i", POOL_1M, "-o", join(out, "file", "x.img"), "-s", "64"]),
        /^mkimage: cannot write output .*file\/x\.img: not a directory$/,
      );
      expectRefused(
        await mkimage(["-i", POOL_1M, "-o", join(out, "x.img"), "-O", join(out, "file", "x.csum"), "-s", "64", "-z"]),
        /^mkimage: cannot write checksum file .*file\/x\.csum: not a directory$/,
      );
      expect(await listing(out)).toEqual(["file"]);
      expect(await Bun.file(join(out, "file")).text()).toBe("a plain file");
    },
    SLOW,
  );

  test(
    "a file name of 256 bytes: refused with 'file name too long'",
    async () => {
      const out = await caseDir();
      for (const name of ["n".repeat(256), "é".repeat(128)]) {
        expectRefused(
          await mkimage(["-i", POOL_1M, "-o", join(out, name), "-s", "64"]),
          /^mkimage: cannot write output .*: file name too long$/,
        );
        expectRefused(
          await mkimage(["-i", POOL_1M, "-o", join(out, "x.img"), "-O", join(out, name), "-s", "64"]),
          /^mkimage: cannot write checksum file .*: file name too long$/,
        );
      }
      expect(await listing(out)).toEqual([]);
    },
    SLOW,
  );

  // The temporary name adds about 25 bytes to the output's; a legal name must not fail for it.
  test(
    "a file name of exactly 255 bytes, ASCII or multi-byte: written, no temporary file left",
    async () => {
      const out = await caseDir();
      const names = ["n".repeat(255), `${"é".repeat(127)}x`];
      for (const name of names) {
        expect(Buffer.byteLength(name)).toBe(255);
        const run = await mkimage([
          "-i",
          POOL_1M,
          "-o",
          join(out, name),
          "-O",
          join(out, `${name.slice(0, -4)}csum`),
          "-s",
          "64",
        ]);
        expect(run).toEqual({
          exitCode: 0,
          stdout: "ok, image written!\nok, boot_image_csum file written!\n",
          stderr: "",
        });
        expect(storedImageOf(join(out, name), POOL_1M)).toBe(true);
      }
      expect(await listing(out)).toEqual(names.flatMap((name) => [name, `${name.slice(0, -4)}csum`]).sort());
    },
    SLOW,
  );
});
