/**
 * The standalone release (scripts/build.ts) end to end, run from a directory
 * whose PATH holds no bun, as on a lab machine: the one executable through
 * its links and by its first argument; mkimage -z makes an image (the same
 * bytes as `bun apps/mkimage.ts`), python3 and sha256sum check it
 * independently, lookimage reads it, and the compiled bootserver boots the
 * compiled emulated sled over a veth pair; the archive unpacks to programs
 * that run, and the completion scripts work in real bash and zsh.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PROGRAMS } from "@ramdisk-tools/cli/programs.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { buildRelease, EXECUTABLE, type Release } from "../../scripts/build.ts";
import { ENTRY_POINTS } from "../../workers/entry-points.ts";
import {
  commandOutput,
  python,
  RunningCommand,
  type RunOptions,
  runCommand,
  runProgram,
  sha256sum,
  VALID_ARGUMENTS,
} from "../helpers/common.ts";

// Compiling a ~100 MiB binary and packing it on a shared 2-core machine: generous room, no assertion on time.
const BUILD_TIMEOUT_MS = 300_000;
const RUN_TIMEOUT_MS = 120_000;
const POOL_SIZE = 2 * 1024 * 1024;

let dir: string;
let bin: string;
let release: Release;
/** No bun here: PATH is one empty directory. */
let env: Record<string, string>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "binaries-test-"));
  bin = join(dir, "dist");
  release = await buildRelease(bin);
  const emptyPath = join(dir, "path");
  await mkdir(emptyPath);
  env = { PATH: emptyPath, HOME: dir };
}, BUILD_TIMEOUT_MS);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("the build made one executable with a link per program, and bun is not on the test's PATH", async () => {
  expect(release.executable.path).toBe(join(bin, EXECUTABLE));
  expect(release.executable.bytes).toBeGreaterThan(0);
  for (const program of PROGRAMS) expect(readlinkSync(join(bin, program))).toBe(EXECUTABLE);
  const which = await runCommand(["/usr/bin/which", "bun"], { env });
  expect(which.exitCode).not.toBe(0);
});

test(
  "mkimage -z and lookimage, compiled, make and read a compressed image",
  async () => {
    await writeSamplePool(join(dir, "pool.raw"), POOL_SIZE);
    const made = await runCommand(
      [join(bin, "mkimage"), "-i", "pool.raw", "-o", "pool.img", "-O", "pool.csum", "-N", "binaries", "-s", "64", "-z"],
      { cwd: dir, env },
    );
    expect(made.stderr).toBe("");
    expect(made.exitCode).toBe(0);
    expect(made.stdout).toBe("ok, image written!\nok, boot_image_csum file written!\n");

    // Independent checks: sha256sum of the pool is the checksum file; python3's zlib inflates the payload to the pool.
    const poolSum = await sha256sum(join(dir, "pool.raw"));
    expect(Buffer.from(await readFile(join(dir, "pool.csum"))).toString("hex")).toBe(poolSum);
    const inflated = python(
      "import sys, zlib, hashlib; d = open(sys.argv[1], 'rb').read()[4096:]; print(hashlib.sha256(zlib.decompress(d)).hexdigest())",
      join(dir, "pool.img"),
    );
    expect(inflated.trim()).toBe(poolSum);

    const looked = await runCommand([join(bin, "lookimage"), "pool.img"], { cwd: dir, env });
    expect(looked.stderr).toBe("");
    expect(looked.exitCode).toBe(0);
    const lines = looked.stdout.trimEnd().split("\n");
    expect(lines.slice(0, 2)).toEqual(["image name = binaries", "flags = 0x1 (COMPRESSED)"]);
    expect(lines).toContain(`image size = ${POOL_SIZE}`);
    expect(lines).toContain(`target size = ${64 * 1024 * 1024}`);
    expect(lines).toContain(`image sum = ${poolSum}`);
  },
  RUN_TIMEOUT_MS,
);

const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };

test(
  "the executable answers --help, --version and a wrong program name itself",
  async () => {
    const help = await runCommand([join(bin, EXECUTABLE), "--help"], { cwd: dir, env });
    expect(help.stderr).toBe("");
    expect(help.exitCode).toBe(0);
    for (const program of PROGRAMS) expect(help.stdout).toMatch(new RegExp(`^  ${program} `, "m"));
    expect(help.stdout).toMatch(/Exit status: 0 ok, 1 failure, 2 usage error/);
    expect(await runCommand([join(bin, EXECUTABLE), "--version"], { cwd: dir, env })).toEqual({
      exitCode: 0,
      stdout: `${version}\n`,
      stderr: "",
    });
    for (const args of [[], ["mkimagex", "-i", "x"]]) {
      const refused = await runCommand([join(bin, EXECUTABLE), ...args], { cwd: dir, env });
      expect(refused.exitCode).toBe(2);
      expect(refused.stdout).toBe("");
      expect(refused.stderr).toMatch(/^ramdisk-tools: [^\n]*mkimage, lookimage, bootserver, sled[^\n]*\n$/);
    }
  },
  RUN_TIMEOUT_MS,
);

for (const program of PROGRAMS) {
  test(
    `${program}, through its link and as \`${EXECUTABLE} ${program}\`: the same --help as from source, --version, usage errors`,
    async () => {
      const fromSource = await runProgram(program, ["--help"]);
      expect(fromSource.exitCode).toBe(0);
      for (const [command, args] of [
        [program, []],
        [EXECUTABLE, [program]],
      ] as const) {
        const help = await runCommand([join(bin, command), ...args, "--help"], { cwd: dir, env });
        expect(help).toEqual({ exitCode: 0, stdout: fromSource.stdout, stderr: "" });
        expect(await runCommand([join(bin, command), ...args, "--version"], { cwd: dir, env })).toEqual({
          exitCode: 0,
          stdout: `${version}\n`,
          stderr: "",
        });
        const refused = await runCommand(
          [join(bin, command), ...args, ...VALID_ARGUMENTS[program]!, "--bogus-option"],
          { cwd: dir, env },
        );
        expect(refused.exitCode).toBe(2);
        expect(refused.stdout).toBe("");
        expect(refused.stderr).toMatch(new RegExp(`^${program}: [^\\n]*bogus-option[^\\n]*\\n$`));
      }
    },
    RUN_TIMEOUT_MS,
  );
}

test(
  "`ramdisk-tools mkimage` writes the same bytes and says the same as `bun apps/mkimage.ts`, zlib and zstd",
  async () => {
    expect(Bun.file(join(dir, "pool.raw")).size).toBe(POOL_SIZE);
    for (const codec of ["-z", "--zstd"]) {
      const args = (name: string) => ["-i", "pool.raw", "-o", `${name}.img`, "-O", `${name}.csum`, "-N", "same", codec];
      const compiled = await runCommand([join(bin, EXECUTABLE), "mkimage", ...args("compiled")], { cwd: dir, env });
      const source = await runProgram("mkimage", args("source"), { cwd: dir });
      expect(compiled).toEqual(source);
      expect(source.exitCode).toBe(0);
      for (const suffix of [".img", ".csum"]) {
        const made = await readFile(join(dir, `compiled${suffix}`));
        expect(made.length).toBeGreaterThan(0);
        expect(Buffer.compare(made, await readFile(join(dir, `source${suffix}`)))).toBe(0);
      }
    }
  },
  RUN_TIMEOUT_MS,
);

test(
  "the release archive is under 120 MiB and unpacks to the executable, its links, LICENSE, README and the dissector",
  async () => {
    expect(release.archive.bytes).toBeLessThan(120 * 1024 * 1024);
    const unpacked = join(dir, "unpacked");
    await mkdir(unpacked);
    await commandOutput(["tar", "-xzf", release.archive.path, "-C", unpacked]);
    const [top] = readdirSync(unpacked);
    expect(top).toBe(`${EXECUTABLE}-${version}-linux-x64`);
    const root = join(unpacked, top!);
    for (const program of PROGRAMS) expect(readlinkSync(join(root, program))).toBe(EXECUTABLE);
    expect(readFileSync(join(root, "LICENSE"), "utf8")).toBe(readFileSync(join(ROOT, "LICENSE"), "utf8"));
    expect(readFileSync(join(root, "README.md"), "utf8")).toBe(readFileSync(join(ROOT, "README.md"), "utf8"));
    expect(readFileSync(join(root, "wireshark", "oxide-netboot.lua"), "utf8")).toBe(
      readFileSync(join(ROOT, "wireshark", "oxide-netboot.lua"), "utf8"),
    );
    // The unpacked link runs, with no bun on the PATH.
    const looked = await runCommand([join(root, "lookimage"), "-s", "pool.img"], { cwd: dir, env });
    expect(looked.stderr).toBe("");
    expect(looked.stdout).toStartWith("image name = binaries\n");
    expect(looked.exitCode).toBe(0);
  },
  RUN_TIMEOUT_MS,
);

/** Where a shell script runs: the release's links first on the PATH (and still no bun). */
function linksFirst(): RunOptions {
  return { cwd: dir, env: { ...env, PATH: `${bin}:${env.PATH}` } };
}

test(
  "bash completes the programs' options from the scripts they print with --completion bash",
  async () => {
    const completed = await runCommand(
      [
        "/usr/bin/bash",
        "-c",
        `source <(mkimage --completion bash)
complete -p mkimage
COMP_WORDS=(mkimage --ta); COMP_CWORD=1; _mkimage_complete; printf '%s\n' "\${COMPREPLY[@]}"
source <(sled --completion bash)
COMP_WORDS=(sled veth0 --drop); COMP_CWORD=2; _sled_complete; printf '%s\n' "\${COMPREPLY[@]}"`,
      ],
      linksFirst(),
    );
    expect(completed.stderr).toBe("");
    expect(completed.stdout).toBe(
      "complete -o bashdefault -o default -F _mkimage_complete mkimage\n--target-size\n--drop-rate\n",
    );
    expect(completed.exitCode).toBe(0);
  },
  RUN_TIMEOUT_MS,
);

test(
  "zsh registers the completion --completion zsh prints, and it offers the options with their help",
  async () => {
    // Outside an interactive line editor _describe cannot draw a menu: a stand-in prints what it was given.
    const completed = await runCommand(
      [
        "/usr/bin/zsh",
        "-c",
        `autoload -U compinit && compinit -u -D
source <(lookimage --completion zsh)
print -r -- "$_comps[lookimage]"
_describe() { print -rl -- "\${(@P)2}" }
words=(lookimage --ex); CURRENT=2; _lookimage_complete`,
      ],
      linksFirst(),
    );
    expect(completed.stderr).toBe("");
    const [registered, ...offered] = completed.stdout.trimEnd().split("\n");
    expect(registered).toBe("_lookimage_complete");
    expect(offered).toContain(
      "--extract:also write the raw pool to this file, atomically, only if the payload verifies",
    );
    expect(offered).toContain("--json:print the facts as one JSON object (docs/lookimage-json.md)");
    expect(completed.exitCode).toBe(0);
  },
  RUN_TIMEOUT_MS,
);

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(
  `bootserver and sled, compiled, over a veth pair${raw.ok ? "" : ` (skipped: ${raw.why})`}`,
  () => {
    test(
      "`ramdisk-tools bootserver` boots one emulated sled (sled, its link) from the image",
      async () => {
        expect(Bun.file(join(dir, "pool.img")).size).toBeGreaterThan(0);
        await withVethPair(async ({ a, b }) => {
          // By its first argument here, through its link elsewhere: both ways find the embedded threads.
          const server = new RunningCommand(
            [join(bin, EXECUTABLE), "bootserver", "--boots", "1", a, "pool.img", "any"],
            {
              cwd: dir,
              env,
            },
          );
          try {
            // Sleds say HELLO every 4 s; start the sled once the server listens, so the first HELLO is heard.
            await server.waitFor(/serving on/);
            const sled = await runCommand([join(bin, "sled"), b, "--checksum-file", "pool.csum", "--timeout", "60"], {
              cwd: dir,
              env,
            });
            expect(sled.stderr).toBe("");
            expect(sled.stdout).toMatch(new RegExp(`^\\S+ booted: ${POOL_SIZE} bytes`, "m"));
            expect(sled.exitCode).toBe(0);
            expect(await server.exited()).toBe(0);
          } finally {
            server.kill();
            await server.process.exited;
          }
        }, "rbn");
      },
      RUN_TIMEOUT_MS,
    );
  },
);

describe("threads start only from the entry points workers/entry-points.ts names, which a binary finds too", () => {
  const root = ROOT;
  const sources = (folders: string) =>
    [...new Bun.Glob(`{${folders}}/**/*.ts`).scanSync(root)]
      .filter((path) => !path.includes("node_modules/"))
      .map((path) => ({ path, text: readFileSync(join(root, path), "utf8") }));
  const offending = (folders: string, pattern: RegExp) =>
    sources(folders)
      .filter(({ text }) => pattern.test(text))
      .map(({ path }) => path);

  test("workers/ holds exactly the entry points named, each once", () => {
    const files = readdirSync(join(root, "workers"))
      .filter((name) => name !== "entry-points.ts")
      .map((name) => join(root, "workers", name))
      .sort();
    expect(ENTRY_POINTS.map((url) => fileURLToPath(url)).sort()).toEqual(files);
  });

  test("no module names an entry point's file but workers/entry-points.ts", () => {
    // `new URL("../workers/x.ts", import.meta.url)` misses inside a compiled binary (lib/threads/entry-point-url.ts),
    // and a package that names a thread entry point imports, through it, itself.
    const entryPointPath = /["'`][^"'`\s]*workers\/(?!entry-points\.ts)[^"'`\s]*\.ts["'`]/;
    expect(offending("apps,lib,lab,workers,bench,scripts", entryPointPath)).toEqual([]);
    expect(offending("apps,lib,lab,workers,bench,scripts", /new Worker\(\s*(new URL|["'`])/)).toEqual([]);
    // Nothing in lib/ names a file outside its package at all: scripts/check-one-way.ts (tests/lint/rules.test.ts).
  });
});
