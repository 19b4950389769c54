/**
 * The command-line syntax of the existing Rust image tools, which parse
 * their arguments with the `getopts` crate, so that mkimage and lookimage
 * take every command line a build script wrote for those tools:
 *
 * - a short option's value may be attached (`-Nname`, `-o$OUT`), and short
 *   flags may be grouped (`-zs 64`, `-zNname`); a long option's value may
 *   follow an `=` (`--name=x`) or come as the next word;
 * - an option that takes a value takes the next word whatever it looks like
 *   (`-N -foo`, `-N --x`, `-N --` name the image `-foo`, `--x`, `--`);
 * - `--` ends the options; a lone `-` is not an option;
 * - each option may be given once: a repeated one (`-z -z`, `-N a -N b`,
 *   `-z --compress`) is refused;
 * - words that are not options nor their values (free arguments) may come
 *   anywhere, and it is for the program to say what they mean.
 *
 * getoptsArguments reads a command line by these rules against the options a
 * yargs parser declares and writes it back in a form yargs reads without
 * guessing (`--name=value`, `--flag`, then `--` and the free arguments), so
 * yargs still does the rest: types, defaults, required options, --help.
 * Pure: the caller reports the errors and the free arguments.
 */

import { EXIT_USAGE, UserError } from "@ramdisk-tools/errors/errors.ts";

/** One declared option: its names (the first is the one written back), and whether it takes a value. */
export interface OptionSpec {
  names: readonly string[];
  /** "optional": a value after `=`, or a next word that is not an option (`--completion [SHELL]`). */
  value: "none" | "required" | "optional";
}

/** A command line read the getopts way. */
export interface GetoptsReading {
  /** The options, one word each, as `--name` or `--name=value`. */
  options: string[];
  /** The free arguments, in order. */
  free: string[];
}

/** A yargs parser, as much of its getOptions() as is read here. */
export interface DeclaredOptions {
  getOptions(): {
    key: Record<string, unknown>;
    alias: Record<string, string[]>;
    boolean: string[];
    narg: Record<string, unknown>;
  };
}

/**
 * The options a yargs parser declares (with .option(), .help(), .version()),
 * each once with all its names: a flag for a boolean, a required value for
 * an option declared with `requiresArg`, an optional one otherwise.
 *
 * @example optionSpecs(yargs().option("name", { alias: "N", type: "string", requiresArg: true }))
 */
export function optionSpecs(parser: DeclaredOptions): OptionSpec[] {
  const declared = parser.getOptions();
  const seen = new Set<string>();
  const specs: OptionSpec[] = [];
  for (const key of Object.keys(declared.key)) {
    if (seen.has(key)) continue;
    const names = [key, ...(declared.alias[key] ?? [])];
    for (const name of names) seen.add(name);
    const value = declared.boolean.includes(key) ? "none" : key in declared.narg ? "required" : "optional";
    specs.push({ names, value });
  }
  return specs;
}

/** A usage error in the getopts reading, worded for a person. */
function usage(message: string, program: string): UserError {
  return new UserError(`${message}; see ${program} --help`, EXIT_USAGE);
}

/** getopts' test for an option word: a dash and at least one more character. */
function isOption(word: string): boolean {
  return word.startsWith("-") && word.length > 1;
}

/**
 * Read `args` as getopts reads a command line (see the top of this file),
 * against `specs`. Throws a usage UserError for an unknown option, a value
 * missing or given to a flag, and an option given more than once.
 *
 * @example getoptsArguments(["-Nx", "-z", "in"], specs, "mkimage") // { options: ["--name=x", "--compress"], free: ["in"] }
 */
export function getoptsArguments(
  args: readonly string[],
  specs: readonly OptionSpec[],
  program: string,
): GetoptsReading {
  const byName = new Map<string, OptionSpec>();
  for (const spec of specs) for (const name of spec.names) byName.set(name, spec);
  const given = new Map<OptionSpec, string>();
  const options: string[] = [];
  const free: string[] = [];

  const take = (spec: OptionSpec, typed: string, value: string | null) => {
    const before = given.get(spec);
    if (before !== undefined) {
      const also = before === typed ? "" : ` (as ${before} before)`;
      throw usage(`${typed} given more than once${also}`, program);
    }
    given.set(spec, typed);
    options.push(value === null ? `--${spec.names[0]}` : `--${spec.names[0]}=${value}`);
  };

  for (let at = 0; at < args.length; at++) {
    const word = args[at]!;
    if (!isOption(word)) {
      free.push(word);
      continue;
    }
    if (word === "--") {
      free.push(...args.slice(at + 1));
      break;
    }
    const next = args[at + 1];
    if (word.startsWith("--")) {
      const equals = word.indexOf("=");
      const name = equals < 0 ? word.slice(2) : word.slice(2, equals);
      const attached = equals < 0 ? null : word.slice(equals + 1);
      const typed = `--${name}`;
      const spec = byName.get(name);
      if (!spec) throw usage(`unknown option ${typed}`, program);
      if (spec.value === "none") {
        if (attached !== null) throw usage(`${typed} takes no value, not "${attached}"`, program);
        take(spec, typed, null);
      } else if (attached !== null) take(spec, typed, attached);
      else if (spec.value === "optional") {
        const takesNext = next !== undefined && !isOption(next);
        take(spec, typed, takesNext ? next : null);
        if (takesNext) at++;
      } else {
        if (next === undefined) throw usage(`${typed} needs a value`, program);
        take(spec, typed, next);
        at++;
      }
      continue;
    }
    // A group of short options: flags, then at most one that takes a value, from the rest of the word or the next.
    const letters = [...word.slice(1)];
    for (let i = 0; i < letters.length; i++) {
      const typed = `-${letters[i]}`;
      const spec = byName.get(letters[i]!);
      if (!spec) throw usage(`unknown option ${typed}${letters.length > 1 ? ` (in ${word})` : ""}`, program);
      if (spec.value === "none") {
        take(spec, typed, null);
        continue;
      }
      const rest = letters.slice(i + 1).join("");
      if (rest !== "") take(spec, typed, rest);
      else if (spec.value === "optional" && (next === undefined || isOption(next))) take(spec, typed, null);
      else {
        if (next === undefined) throw usage(`${typed} needs a value`, program);
        take(spec, typed, next);
        at++;
      }
      break;
    }
  }
  return { options, free };
}
