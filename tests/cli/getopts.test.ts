/**
 * mkimage and lookimage take the command lines the existing Rust tools take
 * (they parse with the getopts crate: lib/cli/getopts.ts), run as real
 * processes: attached values, values that look like options, repeated
 * options refused, free arguments, `--`, and arguments that are not UTF-8.
 * Where ours refuses, it does so on one line with exit 2 and leaves no file.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFile, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getoptsArguments, type OptionSpec } from "../../lib/cli/getopts.ts";
import { caseDirs, type ProgramRun, runProgram, VECTORS } from "../helpers/common.ts";

// Each case starts bun, on two cores shared with other work: room, but no assertion on time.
setDefaultTimeout(60_000);

const RAW = join(VECTORS, "pool-1m.raw");

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "getopts-test-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const caseDir = caseDirs(() => dir);

/** The image name and dataset fields of an image file, as bytes up to their first NUL. */
async function nameFields(path: string): Promise<{ imageName: Buffer; dataset: Buffer }> {
  const header = Buffer.from(await Bun.file(path).slice(0, 4096).arrayBuffer());
  const upToNul = (from: number) => header.subarray(from, header.indexOf(0, from));
  return { imageName: upToNul(200), dataset: upToNul(72) };
}

/** A usage refusal: exit 2, nothing on stdout, one line on stderr naming `message`. */
function expectUsageRefusal(run: ProgramRun, program: string, message: RegExp) {
  expect(run.exitCode).toBe(2);
  expect(run.stdout).toBe("");
  expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  expect(run.stderr).toStartWith(`${program}: `);
  expect(run.stderr.trimEnd()).toMatch(message);
}

describe("mkimage", () => {
  test("attached values (-iRAW -oOUT -OCSUM -Nname -s64) write the existing tool's image, byte for byte", async () => {
    const out = await caseDir();
    const run = await runProgram("mkimage", [`-i${RAW}`, `-o${out}/x.img`, `-O${out}/x.csum`, "-Ntesting", "-s64"]);
    expect(run).toEqual({ exitCode: 0, stdout: "ok, image written!\nok, boot_image_csum file written!\n", stderr: "" });
    expect(await Bun.file(`${out}/x.img`).bytes()).toEqual(await Bun.file(join(VECTORS, "pool-1m.img")).bytes());
    expect(await Bun.file(`${out}/x.csum`).bytes()).toEqual(await Bun.file(join(VECTORS, "pool-1m.csum")).bytes());
  });

  test("grouped short options: -zs 64 and -zNname", async () => {
    const out = await caseDir();
    const grouped = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/a.img`, "-zs", "64", "-Nrecovery-x"]);
    expect(grouped.exitCode).toBe(0);
    const separate = await runProgram("mkimage", [
      "-i",
      RAW,
      "-o",
      `${out}/b.img`,
      "-z",
      "-s",
      "64",
      "-N",
      "recovery-x",
    ]);
    expect(separate.exitCode).toBe(0);
    expect(await Bun.file(`${out}/a.img`).bytes()).toEqual(await Bun.file(`${out}/b.img`).bytes());
    const nameInGroup = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/c.img`, "-zNrecovery-y"]);
    expect(nameInGroup.exitCode).toBe(0);
    expect((await nameFields(`${out}/c.img`)).imageName.toString()).toBe("recovery-y");
  });

  test("a value that looks like an option is the value: -N -foo, -N --x, -N --, -N --help, --name=--zstd", async () => {
    const out = await caseDir();
    const cases: [string[], string][] = [
      [["-N", "-foo"], "-foo"],
      [["-N", "--x"], "--x"],
      [["-N", "--"], "--"],
      [["-N", "--help"], "--help"],
      [["-N", "-z"], "-z"],
      [["--name=--zstd"], "--zstd"],
      [["--name", "-s"], "-s"],
    ];
    for (const [index, [args, name]] of cases.entries()) {
      const path = `${out}/${index}.img`;
      const run = await runProgram("mkimage", ["-i", RAW, "-o", path, ...args]);
      expect(run).toEqual({ exitCode: 0, stdout: "ok, image written!\n", stderr: "" });
      expect((await nameFields(path)).imageName.toString()).toBe(name);
    }
    // The value of -o may look like an option too.
    const dashed = await runProgram("mkimage", ["-i", RAW, "-o", "-x.img"], { cwd: out });
    expect(dashed.exitCode).toBe(0);
    expect(await Bun.file(`${out}/-x.img`).exists()).toBe(true);
  });

  test("a repeated option is refused on one line, as the existing tool refuses it, and nothing is written", async () => {
    const repeats: [string[], RegExp][] = [
      [["-z", "-z"], /^mkimage: -z given more than once; see mkimage --help$/],
      [["-zz"], /-z given more than once/],
      [["-N", "a", "-N", "b"], /-N given more than once/],
      [["-i", RAW], /-i given more than once/],
      [["-z", "--compress"], /--compress given more than once \(as -z before\)/],
      [["--zstd", "--zstd"], /--zstd given more than once/],
      [["-s", "8", "--target-size=8"], /--target-size given more than once \(as -s before\)/],
    ];
    for (const [args, message] of repeats) {
      const out = await caseDir();
      const run = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/x.img`, "-O", `${out}/x.csum`, ...args]);
      expectUsageRefusal(run, "mkimage", message);
      expect(await readdir(out)).toEqual([]);
    }
  });

  test("free arguments are ignored, as the existing tool ignores them, each with a warning", async () => {
    const out = await caseDir();
    const plain = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/plain.img`, "-N", "x"]);
    expect(plain.exitCode).toBe(0);
    const extra = await runProgram("mkimage", ["extra", "-i", RAW, "-o", `${out}/extra.img`, "-N", "x", "more"]);
    expect(extra.exitCode).toBe(0);
    expect(extra.stdout).toBe("ok, image written!\n");
    expect(extra.stderr).toBe(
      'mkimage: warning: ignoring "extra", as the existing mkimage does\n' +
        'mkimage: warning: ignoring "more", as the existing mkimage does\n',
    );
    expect(await Bun.file(`${out}/extra.img`).bytes()).toEqual(await Bun.file(`${out}/plain.img`).bytes());
    // After --, everything is a free argument, options included.
    const ended = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/ended.img`, "-N", "x", "--", "-z"]);
    expect(ended.exitCode).toBe(0);
    expect(ended.stderr).toBe('mkimage: warning: ignoring "-z", as the existing mkimage does\n');
    expect(await Bun.file(`${out}/ended.img`).bytes()).toEqual(await Bun.file(`${out}/plain.img`).bytes());
  });

  test("unknown options, a missing value and a value given to a flag: one line, exit 2", async () => {
    const out = await caseDir();
    const cases: [string[], RegExp][] = [
      [["-x"], /unknown option -x; see mkimage --help$/],
      [["-zx"], /unknown option -x \(in -zx\)/],
      [["--frobnicate"], /unknown option --frobnicate/],
      [["-N"], /-N needs a value/],
      [["--name"], /--name needs a value/],
      [["--compress=yes"], /--compress takes no value, not "yes"/],
    ];
    for (const [args, message] of cases) {
      expectUsageRefusal(await runProgram("mkimage", ["-i", RAW, "-o", `${out}/x.img`, ...args]), "mkimage", message);
    }
    expect(await readdir(out)).toEqual([]);
  });
});

describe("lookimage", () => {
  test("-s -s is refused as the existing tool refuses it; -s once prints the vector's lines", async () => {
    const image = join(VECTORS, "pool-1m.img");
    expectUsageRefusal(await runProgram("lookimage", ["-s", "-s", image]), "lookimage", /-s given more than once/);
    expectUsageRefusal(
      await runProgram("lookimage", ["--skip-checksum", "-s", image]),
      "lookimage",
      /-s given more than once \(as --skip-checksum before\)/,
    );
    const once = await runProgram("lookimage", ["-s", image]);
    expect(once).toEqual({
      exitCode: 0,
      stdout: await Bun.file(join(VECTORS, "pool-1m.lookimage.txt")).text(),
      stderr: "",
    });
  });

  test("after --, a name that starts with a dash is the image, also first on the command line", async () => {
    const out = await caseDir();
    await copyFile(join(VECTORS, "pool-1m.img"), join(out, "-dash.img"));
    const expected = await Bun.file(join(VECTORS, "pool-1m.lookimage.txt")).text();
    // Bun itself drops a `--` that comes first after the script; lookimage reads it back from its command line.
    for (const args of [
      ["--", "-dash.img"],
      ["-s", "--", "-dash.img"],
    ]) {
      expect(await runProgram("lookimage", args, { cwd: out })).toEqual({ exitCode: 0, stdout: expected, stderr: "" });
    }
  });

  test("anything but one image is the existing tool's question, on one line", async () => {
    const image = join(VECTORS, "pool-1m.img");
    expectUsageRefusal(await runProgram("lookimage", []), "lookimage", /which image file .*none given/);
    expectUsageRefusal(await runProgram("lookimage", [image, image]), "lookimage", /which image file .*not 2/);
  });
});

describe("arguments that are not UTF-8", () => {
  const notUtf8 = (text: string) => Buffer.from(text, "latin1");

  test("a name or dataset with a byte that is not UTF-8 is refused on one line, and nothing is written", async () => {
    const cases: [(string | Uint8Array)[], RegExp][] = [
      [["-N", notUtf8("\xff")], /^mkimage: argument 6 \("\\xff"\) is not UTF-8: /],
      [[notUtf8("-Nrecovery\xc3(")], /argument 5 \("-Nrecovery\\xc3\("\) is not UTF-8/],
      [["--dataset", notUtf8("rpool/\xfe")], /argument 6 \("rpool\/\\xfe"\) is not UTF-8/],
    ];
    for (const [args, message] of cases) {
      const out = await caseDir();
      const run = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/x.img`, ...args]);
      expectUsageRefusal(run, "mkimage", message);
      expect(await readdir(out)).toEqual([]);
    }
  });

  test("an output path with a byte that is not UTF-8 is refused, writing no file of any name", async () => {
    const out = await caseDir();
    const run = await runProgram("mkimage", ["-i", RAW, "-o", notUtf8(`${out}/out\xff.img`)]);
    expectUsageRefusal(run, "mkimage", /argument 4 \(".*\/out\\xff\.img"\) is not UTF-8/);
    expect(await readdir(out)).toEqual([]);
    const look = await runProgram("lookimage", [notUtf8("pool\xff.img")]);
    expectUsageRefusal(look, "lookimage", /^lookimage: argument 1 \("pool\\xff\.img"\) is not UTF-8/);
  });

  test("a U+FFFD typed as such (EF BF BD) is text, and is written as typed", async () => {
    const out = await caseDir();
    const run = await runProgram("mkimage", ["-i", RAW, "-o", `${out}/x.img`, "-N", "name\uFFFD"]);
    expect(run).toEqual({ exitCode: 0, stdout: "ok, image written!\n", stderr: "" });
    expect((await nameFields(`${out}/x.img`)).imageName).toEqual(Buffer.from("name\xef\xbf\xbd", "latin1"));
  });
});

describe("getoptsArguments, the reading itself", () => {
  const specs: OptionSpec[] = [
    { names: ["name", "N"], value: "required" },
    { names: ["compress", "z"], value: "none" },
    { names: ["completion"], value: "optional" },
  ];
  const read = (...args: string[]) => getoptsArguments(args, specs, "mkimage");

  test("writes each option back once, in a form yargs cannot misread", () => {
    expect(read("-zNa b", "x")).toEqual({ options: ["--compress", "--name=a b"], free: ["x"] });
    expect(read("--name=", "-z")).toEqual({ options: ["--name=", "--compress"], free: [] });
    expect(read("-N", "")).toEqual({ options: ["--name="], free: [] });
  });

  test("a lone dash is a free argument; -- ends the options; a one-letter long name is the short option", () => {
    expect(read("-", "-z")).toEqual({ options: ["--compress"], free: ["-"] });
    expect(read("a", "--", "-z", "--", "-Nx")).toEqual({ options: [], free: ["a", "-z", "--", "-Nx"] });
    expect(read("--N", "x")).toEqual({ options: ["--name=x"], free: [] });
  });

  test("an optional value: after =, or a next word that is not an option", () => {
    expect(read("--completion", "bash")).toEqual({ options: ["--completion=bash"], free: [] });
    expect(read("--completion", "-z")).toEqual({ options: ["--completion", "--compress"], free: [] });
    expect(read("--completion=")).toEqual({ options: ["--completion="], free: [] });
  });

  test("refusals are usage errors (exit 2) on one line", () => {
    for (const [args, message] of [
      [["-z", "-N", "a", "--name", "b"], "--name given more than once (as -N before); see mkimage --help"],
      [["-y"], "unknown option -y; see mkimage --help"],
      [["--name"], "--name needs a value; see mkimage --help"],
      [["--compress="], '--compress takes no value, not ""; see mkimage --help'],
    ] as [string[], string][]) {
      expect(() => read(...args)).toThrow(message);
      try {
        read(...args);
      } catch (error) {
        expect((error as { exitCode: number }).exitCode).toBe(2);
      }
    }
  });
});
