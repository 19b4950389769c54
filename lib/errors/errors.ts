/**
 * How the programs fail: a UserError carries the one line a person reads and
 * the exit code, and every error becomes text in one way (oneLine,
 * systemReason). A module of its own with no heavy imports, because worker
 * threads report their failures with it and must start fast.
 */

import { getSystemErrorMessage } from "node:util";

/** A failure to report to the user as one line, with its exit code. */
export class UserError extends Error {
  override name = "UserError";
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
  }
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/**
 * The message of anything thrown, on one line: the one way this project turns
 * an error into text for a person (a program's last words, a thread's report).
 *
 * @example oneLine(new Error("zlib stream is corrupt\nat byte 7")) // "zlib stream is corrupt; at byte 7"
 */
export function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s*[\r\n]+\s*/g, "; ").trim();
}

/**
 * A failed system call's reason in the system's words, for a message that
 * already names the file: "no such file or directory" rather than Bun's
 * "ENOENT: no such file or directory, open 'x'". Anything without an errno
 * is told as oneLine tells it.
 *
 * @example throw new UserError(`cannot read input ${path}: ${systemReason(error)}`);
 */
export function systemReason(error: unknown): string {
  const errno = (error as NodeJS.ErrnoException | undefined)?.errno;
  if (typeof errno === "number" && errno !== 0) {
    try {
      return getSystemErrorMessage(errno < 0 ? errno : -errno);
    } catch {
      // Not a number the system knows: the error's own words then.
    }
  }
  return oneLine(error);
}
