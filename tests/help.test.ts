/**
 * Every program's --help, --version and usage errors, run as real processes.
 * The options each program should document are read from its own yargs
 * definitions (apps/X.ts), so adding an option without help fails here.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, runProgram } from "./helpers/common.ts";

const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
// Starting bun on a shared 2-core machine: room, but no assertion on time.
const TIMEOUT_MS = 30_000;

/** Arguments that are valid apart from the unknown option, so the unknown option is what is refused. */
const PROGRAMS: Record<string, string[]> = {
  mkimage: ["-i", "pool.raw", "-o", "pool.img"],
  lookimage: ["pool.img"],
  sled: ["eth1", "--checksum-file", "pool.csum"],
  bootserver: ["eth1", "pool.img", "any"],
};

interface DefinedOption {
  name: string;
  aliases: string[];
  hasDefault: boolean;
}

/** The options apps/PROGRAM.ts defines with `.option("name", { ... })`, read from its source. */
function definedOptions(program: string): DefinedOption[] {
  const source = readFileSync(join(ROOT, "apps", `${program}.ts`), "utf8");
  const chunks = source.split(/\.option\(/).slice(1);
  return chunks.map((chunk) => {
    // The option's own definition ends where the next call in the chain starts.
    const definition = chunk.split(/\n\s*\.\w+\(/)[0]!;
    const name = /^\s*"([^"]+)"/.exec(definition)?.[1];
    if (!name) throw new Error(`cannot read an option name in apps/${program}.ts at: ${definition.slice(0, 60)}`);
    const alias = /alias:\s*(?:"([^"]+)"|\[([^\]]*)\])/.exec(definition);
    const aliases = alias
      ? alias[1]
        ? [alias[1]]
        : [...alias[2]!.matchAll(/"([^"]+)"/g)].map((match) => match[1]!)
      : [];
    return { name, aliases, hasDefault: /\bdefault:/.test(definition) };
  });
}

function flag(name: string): string {
  return name.length === 1 ? `-${name}` : `--${name}`;
}

function run(program: string, args: string[]) {
  return runProgram(program, args, { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } });
}

for (const [program, validArgs] of Object.entries(PROGRAMS)) {
  describe(program, () => {
    test("its options are found in its source", () => {
      expect(definedOptions(program).length).toBeGreaterThan(2);
    });

    test(
      "--help documents every option, its default, an example and the exit codes",
      async () => {
        const help = await run(program, ["--help"]);
        expect(help.stderr).toBe("");
        expect(help.exitCode).toBe(0);
        const lines = help.stdout.split("\n");
        for (const option of definedOptions(program)) {
          const names = [option.name, ...option.aliases].map(flag);
          const line = lines.find((text) => names.some((name) => new RegExp(`(^|\\s)${name}(,|\\s|$)`).test(text)));
          expect(line, `${program} --help has no line for ${names.join("/")}`).toBeDefined();
          if (option.hasDefault)
            expect(line, `${program} --help shows no default for ${names.join("/")}`).toContain("[default:");
        }
        expect(help.stdout).toContain("Examples:");
        expect(help.stdout).toMatch(new RegExp(`^\\s+${program} \\S`, "m"));
        expect(help.stdout).toMatch(/Exit status: 0\b/);
        expect(help.stdout).toMatch(/\b1 [^;,.]*failure/);
        expect(help.stdout).toMatch(/\b2 [^;,.]*usage/);
      },
      TIMEOUT_MS,
    );

    test(
      "--version prints the package version",
      async () => {
        const shown = await run(program, ["--version"]);
        expect(shown.stderr).toBe("");
        expect(shown.stdout).toBe(`${version}\n`);
        expect(shown.exitCode).toBe(0);
      },
      TIMEOUT_MS,
    );

    test(
      "an unknown option exits 2 with one line on stderr",
      async () => {
        const refused = await run(program, [...validArgs, "--bogus-option"]);
        expect(refused.exitCode).toBe(2);
        expect(refused.stdout).toBe("");
        expect(refused.stderr).toMatch(new RegExp(`^${program}: [^\\n]*bogus-option[^\\n]*\\n$`));
      },
      TIMEOUT_MS,
    );
  });
}
