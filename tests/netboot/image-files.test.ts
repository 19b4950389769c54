/**
 * The boot server serves raw images from their files, not from its memory,
 * and keeps running whatever happens to a file while sleds boot from it.
 *
 * A slow emulated sled (`--batch-delay`) is mid-boot when the test replaces
 * the image file by a rename, removes it, or truncates it in place: the first
 * two leave the file the sled was offered readable to the server, so the sled
 * boots with the right checksum; a truncated file has lost the bytes the sled
 * still needs, so the sled is RESET, the server says which image and why, and
 * serves the file again once it is whole. The server's resident memory stays
 * far below the image it serves, and a zlib image's inflated copy lives in
 * $TMPDIR only while the server runs, with no name.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  closeSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { parseMac, READ_SLOTS, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { imageSource } from "../../lib/netboot/image-source.ts";
import { RawImageFill, rawImageHandle } from "../../lib/netboot/raw-image.ts";
import { SledSession } from "../../lib/netboot/session.ts";
import { programOutput, runProgram } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(120_000);

const POOL_SIZE = 16 * MIB;
const BIG_POOL_SIZE = 256 * MIB;
/** 128 batches of 20 ms: the sled is about 2.6 s into its boot. */
const SLOW_SLED = ["--json", "--batch-delay", "20"];

let dir = "";
let sha256A = "";
let sha256B = "";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bootserver-files-test-"));
  sha256A = writePool(join(dir, "a.raw"), POOL_SIZE, 21);
  sha256B = writePool(join(dir, "b.raw"), POOL_SIZE, 22);
  await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "32"], { cwd: dir });
  await programOutput("mkimage", ["-i", "b.raw", "-o", "b.img", "-N", "b", "-s", "32"], { cwd: dir });
  await programOutput("mkimage", ["-i", "a.raw", "-o", "a-z.img", "-N", "a", "-s", "32", "-z"], { cwd: dir });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The server's peak resident memory so far, in bytes (its /proc status). */
function peakResident(server: ServerProcess): number {
  const status = readFileSync(`/proc/${server.process.pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/** Start a slow sled, do `change` to the image once it is under way, and return the sled's run. */
async function bootWhile(link: string, checksum: string, change: () => void) {
  const sled = runSleds(dir, link, ["--checksum", checksum, ...SLOW_SLED]);
  await Bun.sleep(800);
  change();
  return sled;
}

describe("SledSession serving from a file", () => {
  const SIZE = 2 * MIB;
  const image = new Uint8Array(SIZE).map((_, i) => (i * 13 + (i >> 10)) & 0xff);
  const SLED = parseMac("02:5e:17:00:00:a0")!;
  const SERVER = parseMac("02:5e:17:00:00:01")!;

  /** The frames a session sends for `reads`, serving `source`. */
  function framesFor(source: Parameters<SledSession["serve"]>[0], reads: ReadRequest[]): Uint8Array[] {
    const sent: Uint8Array[] = [];
    const session = new SledSession(
      SLED,
      SERVER,
      (frames) => sent.push(...frames.map((frame) => frame.slice())),
      undefined,
      {
        resend: false,
      },
    );
    session.serve(source);
    for (const read of reads) session.answer(read);
    return sent;
  }

  function read(count: bigint, slots: Record<number, bigint>): ReadRequest {
    const array = new BigUint64Array(READ_SLOTS);
    for (const [slot, offset] of Object.entries(slots)) array[Number(slot)] = offset;
    return { type: "read", count, slots: array };
  }

  test("sends, byte for byte, what it sends from memory: batches, re-asks, offset 0, the end, far apart", () => {
    const path = join(dir, "unit.img");
    const file = new Uint8Array(4096 + SIZE);
    file.set(image, 4096);
    writeFileSync(path, file);
    const fd = openSync(path, "r");
    try {
      const handle = rawImageHandle(SIZE, { fd, start: 4096, name: "unit.img" });
      const fill = new RawImageFill(handle);
      fill.filledTo(SIZE);
      fill.settle(true);
      const batch = (first: number) =>
        read(
          128n,
          Object.fromEntries(Array.from({ length: READ_SLOTS }, (_, slot) => [slot, BigInt(first + slot * 1024)])),
        );
      const reads = [
        batch(0),
        batch(SIZE - 128 * 1024),
        batch(SIZE - 64 * 1024), // half past the end
        read(3n, { 5: 5n * 1024n, 90: 90n * 1024n }), // a re-ask with offset 0 in it
        read(4n, { 3: 5000n, 40: BigInt(SIZE - 100), 77: BigInt(SIZE), 127: 2n ** 64n - 1n }),
        read(3n, { 0: 1024n, 1: BigInt(SIZE / 2), 2: 2048n }), // far apart
      ];
      const fromFile = framesFor(imageSource(handle), reads);
      const fromMemory = framesFor(image, reads);
      expect(fromFile.length).toBe(128 * 3 + 3 + 4 + 3);
      expect(fromFile).toEqual(fromMemory);
    } finally {
      closeSync(fd);
    }
  });
});

test("a zlib image with nowhere to be inflated is refused in one line, before any link is opened", async () => {
  const missing = join(dir, "no-such-directory");
  const { exitCode, stdout, stderr } = await runProgram("bootserver", ["no-link-0", "a-z.img", "any"], {
    cwd: dir,
    env: { ...process.env, TMPDIR: missing },
  });
  expect(exitCode).toBe(1);
  expect(stdout).toBe("");
  expect(stderr).toBe(
    `bootserver: cannot serve a-z.img: cannot make a file to inflate it into in ${missing}: no such file or directory\n`,
  );
});

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver file tests skipped: ${raw.why}`);

network("bootserver with image files that change under it", () => {
  test("a file replaced by a rename mid-boot: the sled boots the image it was offered, the next the new one", async () => {
    copyFileSync(join(dir, "a.img"), join(dir, "served.img"));
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--json-log", a, "served.img", "any"], dir);
      try {
        await server.waitFor(/"event":"listening"/);
        const sled = await bootWhile(b, sha256A, () => {
          copyFileSync(join(dir, "b.img"), join(dir, "next.img"));
          renameSync(join(dir, "next.img"), join(dir, "served.img"));
        });
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
        const next = await runSleds(dir, b, ["--checksum", sha256B, "--json"]);
        expect(next.reports.map((report) => report.outcome)).toEqual(["booted"]);
        expect(server.process.exitCode).toBeNull();
        expect(server.events("error")).toEqual([]);
      } finally {
        server.kill();
      }
    }, "r17");
  });

  test("a file removed mid-boot: the sled boots; later HELLOs are told why there is nothing to offer", async () => {
    copyFileSync(join(dir, "a.img"), join(dir, "served.img"));
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--json-log", a, "served.img", "any"], dir);
      try {
        await server.waitFor(/"event":"listening"/);
        const sled = await bootWhile(b, sha256A, () => rmSync(join(dir, "served.img")));
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
        const next = await runSleds(dir, b, ["--checksum", sha256A, "--json"], 3);
        expect(next.reports.map((report) => report.outcome)).not.toContain("booted");
        const errors = server.events("error").map((record) => record.message);
        expect(errors).toContainEqual(
          expect.stringMatching(/^cannot offer served\.img to .*: cannot read served\.img: /),
        );
        expect(server.process.exitCode).toBeNull();
      } finally {
        server.kill();
      }
    }, "r17");
  });

  test("a file truncated mid-boot: the sled is RESET, the server says which image and why, and serves it again once whole", async () => {
    copyFileSync(join(dir, "a.img"), join(dir, "served.img"));
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--json-log", a, "served.img", "any"], dir);
      try {
        await server.waitFor(/"event":"loaded"/);
        const sled = await bootWhile(b, sha256A, () => truncateSync(join(dir, "served.img"), 4096 + MIB));
        expect(sled.reports.map((report) => report.outcome)).toEqual(["reset"]);
        expect(sled.reports[0].bytes).toBeLessThan(POOL_SIZE);
        const errors = server.events("error").map((record) => record.message as string);
        expect(errors).toContainEqual(
          expect.stringMatching(/served\.img was truncated under the server: it holds 1048576 of its 16777216 bytes/),
        );
        expect(server.process.exitCode).toBeNull();

        copyFileSync(join(dir, "a.img"), join(dir, "served.img"));
        const again = await runSleds(dir, b, ["--checksum", sha256A, "--json"]);
        expect(again.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
      } finally {
        server.kill();
      }
    }, "r17");
  });

  test("memory does not grow with the image; a zlib image is inflated to an unnamed file in $TMPDIR", async () => {
    const scratch = join(dir, "tmp");
    mkdirSync(scratch, { recursive: true });
    const sha256 = writePool(join(dir, "big.raw"), BIG_POOL_SIZE, 23);
    await programOutput("mkimage", ["-i", "big.raw", "-o", "big.img", "-N", "big", "-s", "512"], { cwd: dir });
    await programOutput("mkimage", ["-i", "big.raw", "-o", "big-z.img", "-N", "big", "-s", "512", "-z"], { cwd: dir });
    rmSync(join(dir, "big.raw"));
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(
        ["--json-log", "--boots", "2", "--sled", "02:5e:17:00:00:02=big-z.img", a, "big.img", "any"],
        dir,
        { TMPDIR: scratch },
      );
      try {
        await server.waitFor(/"event":"listening"/);
        // The inflated copy is open but has no name, from the start.
        expect(readdirSync(scratch)).toEqual([]);
        const sleds = await runSleds(dir, b, [
          "--checksum",
          sha256,
          "--json",
          "--sleds",
          "2",
          "--mac",
          "02:5e:17:00:00:01",
        ]);
        expect(sleds.reports.map((report) => [report.outcome, report.bytes])).toEqual([
          ["booted", BIG_POOL_SIZE],
          ["booted", BIG_POOL_SIZE],
        ]);
        const offered = server.events("offer").map((record) => record.image);
        expect(offered.sort()).toEqual(["big-z.img", "big.img"]);
        // Holding the two images would take 512 MiB alone.
        expect(peakResident(server)).toBeLessThan(BIG_POOL_SIZE);
        expect(readdirSync(scratch)).toEqual([]);
        expect(await server.exited()).toBe(0);
      } finally {
        server.kill();
      }
    }, "r17");
  });
});
