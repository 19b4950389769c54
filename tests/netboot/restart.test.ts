/**
 * A boot server that restarts, or a sled that goes quiet, must not cost a
 * boot: a RESET makes a real sled reboot (netboot.md, "RESET"). The real
 * `bun apps/bootserver.ts --json-log` on one end of a veth pair made for the
 * test, killed (SIGKILL, SIGTERM) mid-boot and started again, with the sled
 * emulator (`bun apps/sled.ts`, a separate process that fails on any RESET)
 * on the other end. The server is paced (--rate) so that a small image's boot
 * lasts long enough for the kill to land in the middle of it. The record of
 * offers and the resume decision alone are in resume.test.ts.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { toHex } from "@ramdisk-tools/image/format.ts";
import { canUseRawNetwork, createVethPair, type VethPair, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { commandOutput, programOutput, runCommand, startProgram } from "../helpers/common.ts";
import { ServerProcess, sledReports, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(180_000);

const raw = canUseRawNetwork();
const describeNetwork = raw.ok ? describe : describe.skip;
if (!raw.ok) console.warn(`skipping restart tests on veth: ${raw.why}`);

const KINDS = ["plain", "zlib", "zstd"] as const;
type Kind = (typeof KINDS)[number];
let dir = "";

beforeAll(async () => {
  if (!raw.ok) return;
  dir = mkdtempSync(join(tmpdir(), "bootserver-restart-test-"));
  for (const [index, kind] of KINDS.entries()) {
    writePool(join(dir, `${kind}.raw`), 4 * MIB, 40 + index);
    const flags = { plain: [], zlib: ["-z"], zstd: ["--zstd", "--block-size", "1"] }[kind];
    await programOutput(
      "mkimage",
      ["-i", `${kind}.raw`, "-o", `${kind}.img`, "-O", `${kind}.csum`, "-N", kind, "-s", "8", ...flags],
      { cwd: dir },
    );
    rmSync(join(dir, `${kind}.raw`));
  }
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A group of emulated sleds booting one kind of image: `count` of them from `first` on (consecutive MACs). */
interface SledGroup {
  kind: Kind;
  count: number;
  first: string;
}

/** The sleds of `groups`, each group a process of the emulator; the first MAC of group g is 02:5e:18:0g:00:00. */
function groups(counts: Partial<Record<Kind, number>>): SledGroup[] {
  return KINDS.filter((kind) => counts[kind]).map((kind, index) => ({
    kind,
    count: counts[kind]!,
    first: `02:5e:18:0${index + 1}:00:00`,
  }));
}

/** `--sled MAC=IMAGE` for each sled of `groups`: each is offered its image at once, no rotation. */
function pins(sleds: SledGroup[]): string[] {
  return sleds.flatMap(({ kind, count, first }) =>
    Array.from({ length: count }, (_, index) => [
      "--sled",
      `${first.slice(0, -2)}${index.toString(16).padStart(2, "0")}=${kind}.img`,
    ]).flat(),
  );
}

/** Start the emulator for each group on `link`; resolves with each group's JSON reports and exit status. */
function bootSleds(link: string, sleds: SledGroup[], extra: string[] = []) {
  return sleds.map(({ kind, count, first }) => {
    const sled = startProgram(
      "sled",
      [
        link,
        "--timeout",
        "60",
        "--json",
        "--checksum-file",
        `${kind}.csum`,
        "--mac",
        first,
        "--sleds",
        String(count),
        ...extra,
      ],
      { cwd: dir },
    );
    const result = (async () => {
      const { stdout, stderr, exitCode } = await sled.result();
      const reports = sledReports(stdout) as { outcome: string; resets: number; mac: string; detail: string }[];
      return { kind, exitCode, stderr, reports };
    })();
    return { child: sled.process, result };
  });
}

function server(args: string[]): ServerProcess {
  return new ServerProcess(["--json-log", ...args], dir);
}

/** Every sled booted its image, with no RESET. */
async function expectBooted(booting: ReturnType<typeof bootSleds>, sleds: SledGroup[]) {
  for (const [index, { result }] of booting.entries()) {
    const { kind, exitCode, stderr, reports } = await result;
    expect({ kind, outcomes: reports.map((report) => report.outcome), stderr }).toEqual({
      kind,
      outcomes: Array(sleds[index]!.count).fill("booted"),
      stderr: "",
    });
    expect(reports.map((report) => report.resets)).toEqual(reports.map(() => 0));
    expect(exitCode).toBe(0);
  }
}

/**
 * Serve `sleds` with `args`, stop the server with `signal` once every sled
 * has been served a while (mid-boot: the server is paced), start it again
 * with `again` within a second, and return both servers and the sleds.
 */
async function restartMidBoot(
  sledLink: string,
  sleds: SledGroup[],
  args: string[],
  signal: "SIGKILL" | "SIGTERM",
  between: () => void = () => {},
  again: string[] = args,
) {
  const total = sleds.reduce((sum, group) => sum + group.count, 0);
  const first = server(args);
  let second: ServerProcess | undefined;
  try {
    await first.waitForEvents("listening", 1);
    const booting = bootSleds(sledLink, sleds);
    await first.waitForEvents("session-start", total);
    await Bun.sleep(400);
    first.process.kill(signal);
    const firstStatus = await first.exited();
    expect(first.events("finished")).toEqual([]);
    between();
    second = server(again);
    return { first, firstStatus, second, booting, total };
  } catch (error) {
    first.kill();
    second?.kill();
    throw error;
  }
}

describeNetwork("restarting the bootserver mid-boot (veth, sled emulator)", () => {
  test("killed (SIGKILL) with one sled per image (plain, zlib, zstd): each finishes from the record, no RESET", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ plain: 1, zlib: 1, zstd: 1 });
      const state = join(dir, "state-kill-1");
      const args = ["--state-dir", state, "--rate", "16m", "--boots", "3", ...pins(sleds), a, "plain.img", "any"];
      const run = await restartMidBoot(b, sleds, args, "SIGKILL");
      try {
        await expectBooted(run.booting, sleds);
        expect(await run.second.exited()).toBe(0);
        const resumed = run.second.events("resumed");
        expect(resumed.map((record) => record.image).sort()).toEqual(["plain.img", "zlib.img", "zstd.img"]);
        expect(resumed.every((record) => /^it was offered /.test(record.how as string))).toBe(true);
        expect(run.second.events("reset")).toEqual([]);
        expect(run.second.events("frames")[0]).toMatchObject({ resets: 0, resumed: 3 });
        // Finished sleds leave the record.
        expect(JSON.parse(readFileSync(join(state, `offers-${a}.json`), "utf8")).sleds).toEqual([]);
      } finally {
        run.second.kill();
      }
    }, "r18");
  });

  test("killed (SIGKILL) with eight sleds of the three kinds: all eight finish, no RESET", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ plain: 3, zlib: 3, zstd: 2 });
      const args = [
        "--state-dir",
        join(dir, "state-kill-8"),
        "--rate",
        "16m",
        "--boots",
        "8",
        ...pins(sleds),
        a,
        "plain.img",
        "any",
      ];
      const run = await restartMidBoot(b, sleds, args, "SIGKILL");
      try {
        await expectBooted(run.booting, sleds);
        expect(await run.second.exited()).toBe(0);
        expect(run.second.events("resumed")).toHaveLength(8);
        expect(run.second.events("frames")[0]).toMatchObject({ resets: 0, resumed: 8 });
      } finally {
        run.second.kill();
      }
    }, "r18");
  });

  test("stopped with SIGTERM: the exit line says who can resume, and all eight finish after the restart", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ plain: 3, zlib: 3, zstd: 2 });
      const state = join(dir, "state-term");
      const args = ["--state-dir", state, "--rate", "16m", "--boots", "8", ...pins(sleds), a, "plain.img", "any"];
      const run = await restartMidBoot(b, sleds, args, "SIGTERM");
      try {
        expect(run.firstStatus).toBe(143);
        expect(run.first.events("stopped")).toEqual([
          expect.objectContaining({ signal: "SIGTERM", mid_boot: 8, record: join(state, `offers-${a}.json`) }),
        ]);
        await expectBooted(run.booting, sleds);
        expect(await run.second.exited()).toBe(0);
        expect(run.second.events("frames")[0]).toMatchObject({ resets: 0, resumed: 8 });
      } finally {
        run.second.kill();
      }
    }, "r18");
  });

  test("the state directory removed, one image served: the sleds are resumed from their READs alone", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ zlib: 2 });
      const state = join(dir, "state-removed");
      const args = ["--state-dir", state, "--rate", "16m", "--boots", "2", a, "zlib.img", "any"];
      const run = await restartMidBoot(b, sleds, args, "SIGKILL", () => {
        expect(existsSync(join(state, `offers-${a}.json`))).toBe(true);
        rmSync(state, { recursive: true });
      });
      try {
        await expectBooted(run.booting, sleds);
        expect(await run.second.exited()).toBe(0);
        const resumed = run.second.events("resumed");
        expect(resumed.map((record) => record.how)).toEqual([
          "no record of it, and its READ fits only zlib.img",
          "no record of it, and its READ fits only zlib.img",
        ]);
        expect(run.second.events("frames")[0]).toMatchObject({ resets: 0 });
      } finally {
        run.second.kill();
      }
    }, "r18");
  });

  test("restarted without one of its images: that image's sleds get a RESET saying why, the others finish", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ plain: 2, zlib: 2 });
      const state = join(dir, "state-changed");
      const before = ["--state-dir", state, "--rate", "16m", ...pins(sleds), a, "plain.img", "zlib.img", "any"];
      const after = ["--state-dir", state, "--rate", "16m", "--boots", "2", a, "plain.img", "zstd.img", "any"];
      const run = await restartMidBoot(b, sleds, before, "SIGKILL", () => {}, after);
      try {
        const [plain, zlib] = await Promise.all(run.booting.map(({ result }) => result));
        expect(plain!.reports.map((report) => [report.outcome, report.resets])).toEqual([
          ["booted", 0],
          ["booted", 0],
        ]);
        expect(zlib!.reports.map((report) => report.outcome)).toEqual(["reset", "reset"]);
        expect(zlib!.exitCode).not.toBe(0);
        expect(await run.second.exited()).toBe(0);
        const resets = run.second.events("reset");
        expect(resets.map((record) => record.sled).sort()).toEqual(["02:5e:18:02:00:00", "02:5e:18:02:00:01"]);
        for (const reset of resets) {
          expect(reset.reason).toBe(
            `it was offered ${join(dir, "zlib.img")} (sha256 ${toHex(readFileSync(join(dir, "zlib.csum")))}), which this server no longer serves`,
          );
        }
        expect(run.second.events("frames")[0]).toMatchObject({ resets: 2 });
      } finally {
        run.second.kill();
      }
    }, "r18");
  });
});

describeNetwork("stopping the bootserver", () => {
  test("SIGINT: the exit line says what becomes of the sleds mid-boot; a --state-dir it cannot make stops it at start", async () => {
    await withVethPair(async ({ a }) => {
      const running = new ServerProcess(["--no-state-dir", a, "plain.img", "any"], dir);
      try {
        await running.waitFor(/^serving on /);
        running.process.kill("SIGINT");
        expect(await running.exited()).toBe(130);
        expect(running.lines).toContain(
          "stopped by SIGINT: 0 sleds mid-boot, not recorded (--no-state-dir); started again, the server serves on only those whose READ fits exactly one image",
        );
      } finally {
        running.kill();
      }
      writeFileSync(join(dir, "not-a-dir"), "");
      const refused = new ServerProcess(["--state-dir", join(dir, "not-a-dir", "state"), a, "plain.img", "any"], dir);
      expect(await refused.exited()).toBe(1);
      expect(await refused.stderr()).toMatch(
        /^bootserver: --state-dir: cannot create the state directory \S+not-a-dir\/state: [^\n]+\n$/,
      );
    }, "r18");
  });
});

describeNetwork("a quiet sled (veth, sled emulator)", () => {
  test("a sled stopped (SIGSTOP) for longer than the 20 s a session waits is served when it goes on, not RESET", async () => {
    await withVethPair(async ({ a, b }) => {
      const sleds = groups({ zstd: 1 });
      const running = server([
        "--state-dir",
        join(dir, "state-quiet"),
        "--rate",
        "16m",
        "--boots",
        "1",
        a,
        "zstd.img",
        "any",
      ]);
      try {
        await running.waitForEvents("listening", 1);
        const [sled] = bootSleds(b, sleds);
        await running.waitForEvents("session-start", 1);
        await Bun.sleep(400);
        sled!.child.kill("SIGSTOP");
        await running.waitFor(/has been quiet for 20 s, \d+ of 4194304 bytes of zstd\.img into its session/, 30_000);
        sled!.child.kill("SIGCONT");
        await expectBooted([sled!], sleds);
        expect(await running.exited()).toBe(0);
        expect(running.events("resumed")).toEqual([
          expect.objectContaining({ sled: "02:5e:18:01:00:00", image: "zstd.img", how: "it was offered zstd.img" }),
        ]);
        expect(running.events("frames")[0]).toMatchObject({ resets: 0, resumed: 1 });
      } finally {
        running.kill();
      }
    }, "r18");
  }, 120_000);
});

/**
 * Three veth pairs on one bridge that forgets every address at once (ageing
 * time 0), so it floods every frame to every port, as a hub does: each
 * server's capture sees the frames the sleds send to the other one.
 */
async function withSharedSegment(fn: (links: { first: string; second: string; sleds: string }) => Promise<void>) {
  const bridge = `r18br${crypto.randomUUID().replaceAll("-", "").slice(0, 9)}`;
  const pairs: VethPair[] = [];
  const ip = (...args: string[]) => commandOutput(["ip", ...args]);
  try {
    await ip("link", "add", bridge, "type", "bridge", "ageing_time", "0", "stp_state", "0");
    writeFileSync(`/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`, "1\n");
    await ip("link", "set", bridge, "up");
    for (let i = 0; i < 3; i++) {
      const pair = await createVethPair("r18");
      pairs.push(pair);
      await ip("link", "set", pair.b, "master", bridge);
    }
    await fn({ first: pairs[0]!.a, second: pairs[1]!.a, sleds: pairs[2]!.a });
  } finally {
    for (const pair of pairs) await pair.remove();
    await runCommand(["ip", "link", "del", bridge]);
  }
}

describeNetwork("two servers on one segment", () => {
  test("neither answers nor RESETs the other's sleds, even while one of them restarts", async () => {
    await withSharedSegment(async ({ first, second, sleds: sledLink }) => {
      const sleds = groups({ plain: 1, zlib: 1 });
      const argsA = [
        "--state-dir",
        join(dir, "state-two-a"),
        "--rate",
        "16m",
        "--boots",
        "1",
        first,
        "plain.img",
        "any",
      ];
      const b = server([
        "--state-dir",
        join(dir, "state-two-b"),
        "--rate",
        "16m",
        "--boots",
        "1",
        second,
        "zlib.img",
        "any",
      ]);
      let a = server(argsA);
      try {
        await a.waitForEvents("listening", 1);
        await b.waitForEvents("listening", 1);
        const booting = bootSleds(sledLink, sleds);
        await a.waitForEvents("session-start", 1);
        await b.waitForEvents("session-start", 1);
        await Bun.sleep(400);
        a.process.kill("SIGKILL");
        await a.exited();
        a = server(argsA);
        await expectBooted(booting, sleds);
        expect(await a.exited()).toBe(0);
        expect(await b.exited()).toBe(0);
        for (const each of [a, b]) {
          expect(each.events("reset")).toEqual([]);
          expect(each.events("frames")[0]).toMatchObject({ resets: 0 });
          expect(each.events("frames")[0]!.notForUs).toBeGreaterThan(0);
        }
        // Each sled was served by one server only: b never offered or served the plain sled, a the zlib one.
        expect(b.events("session-start").map((record) => record.sled)).toEqual(["02:5e:18:02:00:00"]);
        expect(a.events("resumed").map((record) => record.sled)).toEqual(["02:5e:18:01:00:00"]);
      } finally {
        a.kill();
        b.kill();
      }
    });
  }, 120_000);
});
