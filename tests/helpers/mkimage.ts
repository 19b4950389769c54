/**
 * mkimage as its tests run it: `bun apps/mkimage.ts` as a process, with a
 * HOME of its own (so a run as another user finds one it may use), as that
 * user when asked; a scratch directory with one fresh directory per case;
 * and what a case looks at afterwards.
 */

import { afterAll, beforeAll } from "bun:test";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { caseDirs, type ProgramRun, runCommand, runProgram } from "./common.ts";

/** Real processes, python3 and pigz on a shared machine: room, but no assertion on time. */
export const MKIMAGE_TIMEOUT_MS = 120_000;

/**
 * Run `bun apps/mkimage.ts ARGS...` to its end, as user `user` (and group of
 * the same id) when given.
 *
 * @example expect((await mkimage(["-i", raw, "-o", image])).exitCode).toBe(0);
 */
export function mkimage(args: string[], options: { user?: number } = {}): Promise<ProgramRun> {
  return runProgram("mkimage", args, { user: options.user, env: { ...process.env, HOME: tmpdir() } });
}

/**
 * Whether mkimage can be run as nobody (uid 65534), the user the tests of
 * unreadable and unwritable paths run it as when they are root (root reads
 * and writes anything): true when not root, where they run as themselves.
 *
 * @example test.skipIf(!(await nobodyReachesMkimage()))("unreadable input", ...);
 */
export async function nobodyReachesMkimage(): Promise<boolean> {
  if (process.getuid?.() !== 0) return true;
  return (await runCommand(["test", "-r", join(ROOT, "apps", "mkimage.ts")], { user: 65534 })).exitCode === 0;
}

/**
 * A scratch directory made before the calling test file's tests and removed
 * after them: `dir()` is its path once made, and `caseDir()` a fresh
 * directory in it for one case, so its listing shows exactly what the run
 * left.
 *
 * @example const { caseDir } = mkimageScratch(); const out = await caseDir();
 */
export function mkimageScratch() {
  let dir = "";
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "mkimage-test-"));
  }, MKIMAGE_TIMEOUT_MS);
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  }, MKIMAGE_TIMEOUT_MS);
  return { dir: () => dir, caseDir: caseDirs(() => dir) };
}

/**
 * The names in directory `path`, sorted.
 *
 * @example expect(await listing(out)).toEqual(["in.raw", "x.img"]);
 */
export async function listing(path: string): Promise<string[]> {
  return (await readdir(path)).sort();
}

/**
 * Whether two files hold the same bytes.
 *
 * @example expect(await sameBytes(`${out}/x.img`, join(VECTORS, "pool-1m.img"))).toBe(true);
 */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  return Buffer.from(await Bun.file(a).arrayBuffer()).equals(Buffer.from(await Bun.file(b).arrayBuffer()));
}
