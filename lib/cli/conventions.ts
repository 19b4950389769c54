/**
 * What every program does at its edges: one-line errors on standard error,
 * exit codes (0 ok, 1 failure, 2 usage), and no stack trace for a person.
 */

import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, oneLine, UserError } from "@ramdisk-tools/errors/errors.ts";
import type { Argv } from "yargs";
import { hideBin, Parser } from "yargs/helpers";
import { COMPLETION_SHELLS, type CompletionShell, completionScript, defaultShell } from "./completion.ts";
import { type DeclaredOptions, getoptsArguments, optionSpecs } from "./getopts.ts";
import { escapedBytes, programArguments } from "./raw-arguments.ts";

/**
 * A whole-number option read from the text the user typed, as the existing
 * mkimage reads `-s` (Rust's `str::parse::<u64>`): decimal digits, optionally
 * after one `+`; no sign `-`, no spaces, nothing empty. Anything else, or a
 * number outside `min` to `max`, is a usage error that quotes the text
 * (a yargs number option would have turned "abc" into NaN first).
 * `aboveMax`, when given, is the reason a number above `max` is refused.
 *
 * @example const jobs = wholeNumber("--jobs", args.jobs, 1, 256);
 */
export function wholeNumber(
  flag: string,
  value: string | number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
  aboveMax?: string,
): number {
  const text = String(value);
  const number = /^\+?\d+$/.test(text) ? Number(text) : NaN;
  if (aboveMax !== undefined && number > max) {
    throw new UserError(`${flag} ${text} is above ${max}: ${aboveMax}`, EXIT_USAGE);
  }
  if (!Number.isSafeInteger(number) || number < min || number > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`;
    throw new UserError(`${flag} must be a whole number ${range}, not "${text}"`, EXIT_USAGE);
  }
  return number;
}

/** What every program's --help says about its exit status, unless it has more to say. */
export const EXIT_STATUS_HELP = "Exit status: 0 ok, 1 failure, 2 usage error.";

/**
 * The command-line conventions all the programs share, applied to a yargs
 * parser once its options and examples are declared: --help, --version (the
 * toolkit's, which the program hands down from its package.json), the exit status in the help's epilogue, unknown options refused,
 * `--completion [bash|zsh]` (lib/cli/completion.ts), and a usage error thrown as a
 * UserError with exit code 2, on one line that points to --help. `strict: "options"` refuses unknown options only, for a
 * program whose positional arguments it checks itself.
 *
 * @example const args = await usageConventions(yargs(argv).option("level", {...}), "sled", { version }).parseAsync();
 */
export function usageConventions<T>(parser: Argv<T>, program: string, conventions: Conventions): Argv<T> {
  printCompletionIfAsked(program, hideBin(process.argv));
  return withConventions(parser, program, conventions);
}

/** What a program tells the shared conventions, and may change in them. */
interface Conventions {
  /** The toolkit's version, for --version. */
  version: string;
  exitStatus?: string;
  strict?: "all" | "options";
}

function withConventions<T>(
  parser: Argv<T>,
  program: string,
  { version, exitStatus = EXIT_STATUS_HELP, strict = "all" }: Conventions,
): Argv<T> {
  const checked = strict === "all" ? parser.strict() : parser.strictOptions();
  return checked
    .option("completion", {
      type: "string",
      describe: `print a ${COMPLETION_SHELLS.join(" or ")} completion script for ${program} (default: $SHELL's) and exit`,
    })
    .epilogue(exitStatus)
    .help()
    .version(version)
    .wrap(null)
    .fail((message, error) => {
      throw new UserError(`${message ?? error?.message ?? "bad arguments"}; see ${program} --help`, EXIT_USAGE);
    });
}

/** The hidden first argument a completion script calls the program with (lib/cli/completion.ts). */
const COMPLETION_REQUEST = "--get-yargs-completions";

/**
 * Parse the program's arguments as the existing Rust tools parse theirs
 * (getopts: lib/cli/getopts.ts), with the conventions of usageConventions.
 * An argument that is not UTF-8 is refused, as those tools refuse it
 * (lib/cli/raw-arguments.ts). The free arguments, those that are neither
 * options nor their values, are returned as they are for the program to
 * judge, as the existing tools leave them to theirs.
 *
 * @example const { args, free } = await parseLikeGetopts(yargs().option("name", {...}), "mkimage", version);
 */
export async function parseLikeGetopts<T>(parser: Argv<T>, program: string, version: string) {
  const { args: given, undecodable } = programArguments(hideBin(process.argv));
  if (undecodable) {
    throw new UserError(
      `argument ${undecodable.index + 1} ("${escapedBytes(undecodable.bytes)}") is not UTF-8: names and paths ` +
        `are taken only as UTF-8 text, as the existing ${program} takes them; see ${program} --help`,
      EXIT_USAGE,
    );
  }
  const checked = withConventions(parser, program, { version, strict: "options" });
  if (given[0] === COMPLETION_REQUEST) return { args: await checked.parseAsync(given), free: [] };
  // yargs' getOptions() is public, but missing from its type declarations.
  const { options, free } = getoptsArguments(given, optionSpecs(checked as unknown as DeclaredOptions), program);
  printCompletionIfAsked(program, options);
  return { args: await checked.parseAsync(options), free };
}

/**
 * With `--completion [SHELL]` among the program's arguments, print the
 * completion script and exit 0 at once. Checked before the program's parser
 * runs, as --help is, so that its required options and positionals need not
 * be given (yargs checks positionals before any middleware could see the flag).
 */
function printCompletionIfAsked(program: string, args: string[]): void {
  const { completion } = Parser(args, { string: ["completion"] });
  if (completion === undefined) return;
  const shell = String(completion) || defaultShell();
  if (!(COMPLETION_SHELLS as readonly string[]).includes(shell)) {
    throw new UserError(`--completion takes ${COMPLETION_SHELLS.join(" or ")}, not "${shell}"`, EXIT_USAGE);
  }
  process.stdout.write(completionScript(program, shell as CompletionShell));
  process.exit(EXIT_OK);
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
