/**
 * `bun link` (package.json `bin`) puts the programs on the PATH: run from a
 * fresh Bun install directory, each name then runs its program through the
 * `#!/usr/bin/env bun` line of apps/NAME.ts.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdir, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { commandOutput, runCommand, VALID_ARGUMENTS } from "../helpers/common.ts";

const TIMEOUT_MS = 60_000;
const { version } = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { version: string };

let dir: string;
/** The linked commands' directory, then one holding only bun (for the #! line), and nothing else. */
let env: Record<string, string>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "install-test-"));
  const bunOnly = join(dir, "bun-only");
  await mkdir(bunOnly);
  await symlink(process.execPath, join(bunOnly, "bun"));
  env = { BUN_INSTALL: dir, HOME: dir, PATH: `${join(dir, "bin")}:${bunOnly}` };
  await commandOutput(["bun", "link"], { cwd: ROOT, env: { ...process.env, BUN_INSTALL: dir } });
}, TIMEOUT_MS);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

test(
  "after bun link, mkimage, lookimage, bootserver, sled and ramdisk-tools are commands on the PATH",
  async () => {
    for (const program of [...Object.keys(VALID_ARGUMENTS), "ramdisk-tools"]) {
      expect(await runCommand([program, "--version"], { cwd: dir, env })).toEqual({
        exitCode: 0,
        stdout: `${version}\n`,
        stderr: "",
      });
    }
    for (const [program, validArgs] of Object.entries(VALID_ARGUMENTS)) {
      const refused = await runCommand([program, ...validArgs, "--bogus-option"], { cwd: dir, env });
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toMatch(new RegExp(`^${program}: [^\\n]*bogus-option[^\\n]*\\n$`));
    }
    const help = await runCommand(["ramdisk-tools", "lookimage", "--help"], { cwd: dir, env });
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toStartWith("Usage: lookimage ");
  },
  TIMEOUT_MS,
);
