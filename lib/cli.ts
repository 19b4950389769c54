/**
 * What every program does at its edges: one-line errors on standard error,
 * exit codes (0 ok, 1 failure, 2 usage), and no stack trace for a person.
 */

/** A failure to report to the user as one line, with its exit code. */
export class UserError extends Error {
  override name = "UserError";
  constructor(message: string, readonly exitCode: number = 1) {
    super(message);
  }
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** The message of anything thrown, on one line. */
export function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s*[\r\n]+\s*/g, "; ").trim();
}

/**
 * Run a program's main function: print `PROGRAM: message` for any error and
 * exit with its code (UserError's own, else 1). Set RAMDISK_DEBUG=1 to see
 * the stack of an unexpected error.
 *
 * @example await runMain("lookimage", () => lookimage(process.argv.slice(2)));
 */
export async function runMain(program: string, main: () => Promise<number | void>): Promise<never> {
  try {
    const code = await main();
    process.exit(code ?? EXIT_OK);
  } catch (error) {
    if (process.env.RAMDISK_DEBUG && error instanceof Error) console.error(error.stack);
    console.error(`${program}: ${oneLine(error)}`);
    process.exit(error instanceof UserError ? error.exitCode : EXIT_FAILURE);
  }
}
