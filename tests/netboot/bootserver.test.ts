/**
 * The boot server as a program, against docs/netboot.md: what it refuses
 * before opening a link, then the real `bun apps/bootserver.ts` on one end of
 * a veth pair created for the test and the sled emulator (`bun apps/sled.ts`)
 * on the other, booting one sled or many, from plain and compressed images,
 * and stopping as told. Raw pools and their SHA-256 come from python3; images
 * are made by `bun apps/mkimage.ts`, except the refused one, whose header
 * python3 writes (tests/helpers/netboot.ts servedImages). Its answers frame by
 * frame to a sled played by the test are in replies.test.ts.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { runProgram, VECTORS } from "../helpers/common.ts";
import { macText, OTHER, SLED } from "../helpers/frames.ts";
import { SERVED_POOL_SIZE as POOL_SIZE, runSleds, ServerProcess, servedImages } from "../helpers/netboot.ts";

setDefaultTimeout(90_000);

const images = servedImages();

/** `bun apps/bootserver.ts ARGS...` in the scratch directory, to its end. */
const bootserver = (args: string[]) => runProgram("bootserver", args, { cwd: images.dir });

describe("bootserver refuses", () => {
  test("an image whose size is not a multiple of 128 KiB, saying why", async () => {
    const { exitCode, stdout, stderr } = await bootserver(["rbs-none", "odd.img", "any"]);
    expect(exitCode).toBe(1);
    expect(stdout).toBe("");
    expect(stderr.trim().split("\n")).toEqual([
      expect.stringMatching(/^bootserver: cannot serve odd\.img: .*not a multiple of 131072/),
    ]);
  });

  test("an image below 1 MiB", async () => {
    const { exitCode, stderr } = await bootserver(["rbs-none", join(VECTORS, "pool-odd.img"), "any"]);
    expect(exitCode).toBe(1);
    expect(stderr).toContain("below 1 MiB");
  });

  test("a bad command line, with status 2", async () => {
    expect((await bootserver(["rbs-none", "a.img"])).exitCode).toBe(2);
    expect((await bootserver(["rbs-none", "a.img", "not-a-mac"])).stderr).toContain('"not-a-mac" is not a MAC address');
    expect((await bootserver(["--boots", "0", "rbs-none", "a.img", "any"])).exitCode).toBe(2);
    // Whole-number options quote what was typed, not what a number parser made of it.
    const numbers: [string[], string][] = [
      [["--boots", "2.5"], '--boots must be a whole number of at least 1, not "2.5"'],
      [["--max-sleds", "abc"], '--max-sleds must be a whole number of at least 1, not "abc"'],
      [["--zstd-cache", "abc"], '--zstd-cache must be a whole number from 1 to 4096, not "abc"'],
      [["--zstd-cache", "4097"], '--zstd-cache must be a whole number from 1 to 4096, not "4097"'],
      [["--zstd-cache", "0"], '--zstd-cache must be a whole number from 1 to 4096, not "0"'],
    ];
    for (const [options, message] of numbers) {
      const run = await bootserver([...options, "rbs-none", "a.img", "any"]);
      expect([run.exitCode, run.stderr]).toEqual([2, `bootserver: ${message}\n`]);
    }
  });
});

// --- On a veth pair -----------------------------------------------------------

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver network tests skipped: ${raw.why}`);

/** "N re-asked offsets" from each "finished" line. */
function serverReasked(lines: string[]): number[] {
  return lines.filter((line) => / finished /.test(line)).map((line) => Number(/(\d+) re-asked offsets/.exec(line)![1]));
}

network("bootserver on a veth pair", () => {
  test("-s boots one sled from a plain image and exits 0", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["-s", a, "a.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(images.dir, b, ["--checksum", images.pools.a.sha256]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(/^HELLO from [0-9a-f:]{17}: "sled netboot hello"$/));
        expect(server.lines).toContainEqual(expect.stringMatching(/^offering a\.img to /));
        expect(server.lines).toContainEqual(expect.stringMatching(/ finished a\.img: 2\.0 MiB in /));
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("boots a sled from a compressed image, serving the inflated bytes", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "1", a, "a-z.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        expect(server.lines).toContainEqual(expect.stringContaining(`a-z.img: image name "a-z", 2.0 MiB (compressed`));
        const sled = await runSleds(images.dir, b, ["--checksum", images.pools.a.sha256, "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
        expect(await server.exited()).toBe(0);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("boots 8 sleds at once, and --boots 8 exits 0 after the eighth", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "8", a, "a.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(images.dir, b, ["--checksum", images.pools.a.sha256, "--sleds", "8", "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(sled.reports.filter((report) => report.outcome === "booted").length).toBe(8);
        expect(await server.exited()).toBe(0);
        const finished = server.lines.filter((line) => / finished a\.img/.test(line)).map((line) => line.split(" ")[0]);
        expect(new Set(finished).size).toBe(8);
        expect(server.lines.at(-1)).toMatch(/8 finished so far$/);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("offers each image in turn until a sled takes the one it wants", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "2", a, "a.img", "b.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        const [wantsA, wantsB] = await Promise.all([
          runSleds(images.dir, b, ["--checksum", images.pools.a.sha256, "--mac", macText(SLED)]),
          runSleds(images.dir, b, ["--checksum", images.pools.b.sha256, "--mac", macText(OTHER)]),
        ]);
        expect([wantsA.exitCode, wantsB.exitCode]).toEqual([0, 0]);
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img`)));
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(OTHER)} finished b\\.img`)));
        expect(server.lines).toContainEqual(
          `offering a.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
        );
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("with --no-resend every sled boots with 0.5% of DATA lost, and the server counts the re-asked offsets", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--no-resend", "--boots", "4", a, "a.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(images.dir, b, [
          "--checksum",
          images.pools.a.sha256,
          "--sleds",
          "4",
          "--drop-rate",
          "0.005",
          "--seed",
          "11",
          "--json",
        ]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const sledReasks = sled.reports.reduce((sum, report) => sum + report.reasked, 0);
        const dropped = sled.reports.reduce((sum, report) => sum + report.faults.dropped, 0);
        expect(dropped).toBeGreaterThan(0);
        expect(sledReasks).toBeGreaterThanOrEqual(dropped);
        expect(serverReasked(server.lines).reduce((sum, count) => sum + count, 0)).toBe(sledReasks);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("-t fails when no sled says HELLO in time", async () => {
    await withVethPair(async ({ a }) => {
      const server = new ServerProcess(["-t", "1", a, "a.img", "any"], images.dir);
      try {
        expect(await server.exited()).toBe(1);
        expect((await server.stderr()).trim()).toBe("bootserver: no sled said HELLO within 1 second");
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("SIGTERM and SIGINT stop it cleanly with 143 and 130", async () => {
    await withVethPair(async ({ a }) => {
      for (const [signal, status] of [
        ["SIGTERM", 143],
        ["SIGINT", 130],
      ] as const) {
        const server = new ServerProcess([a, "a.img", "any"], images.dir);
        try {
          await server.waitFor(/^serving on /);
          server.process.kill(signal);
          expect(await server.exited(10_000)).toBe(status);
          expect(await server.stderr()).toBe("");
        } finally {
          server.kill();
        }
      }
    }, "rbs");
  });
});
