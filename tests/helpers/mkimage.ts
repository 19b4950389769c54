/**
 * mkimage as its tests run it: `bun apps/mkimage.ts` as a process, with a
 * HOME of its own (so a run as another user finds one it may use), as that
 * user when asked.
 */

import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ProgramRun, ROOT, runCommand, runProgram } from "./common.ts";

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
