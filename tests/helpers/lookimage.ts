/**
 * lookimage as its tests run it: `bun apps/lookimage.ts` as a process, and
 * what a refusal must look like on its stderr (lib/cli/conventions.ts runMain).
 */

import { expect } from "bun:test";
import { type ProgramRun, runProgram } from "./common.ts";

/**
 * Run `bun apps/lookimage.ts ARGS...` to its end.
 *
 * @example const shown = await lookimage("pool.img");
 */
export function lookimage(...args: string[]): Promise<ProgramRun> {
  return runProgram("lookimage", args);
}

/**
 * A failure: exit 1 and one line on stderr besides warnings about the header,
 * `lookimage: ` and the reason, no stack trace.
 *
 * @example expectFailure(await lookimage("short.img"), /shorter than/);
 */
export function expectFailure(run: ProgramRun, reason: RegExp) {
  expect(run.exitCode).toBe(1);
  const lines = run.stderr
    .trimEnd()
    .split("\n")
    .filter((line) => !line.startsWith("lookimage: warning: "));
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^lookimage: /);
  expect(lines[0]).toMatch(reason);
  expect(run.stderr).not.toMatch(/\bat .*\.ts:\d+/);
}
