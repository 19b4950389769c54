/**
 * Every program's --help, --version and usage errors, run as real processes.
 * The options each program should document are read from its own yargs
 * definitions (apps/X.ts), so adding an option without help fails here.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { runProgram, VALID_ARGUMENTS } from "../helpers/common.ts";

const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
// Starting bun on a shared 2-core machine: room, but no assertion on time.
const TIMEOUT_MS = 30_000;

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

/** Where the programs run: from the root, without colour, so the output compared is plain text. */
const PLAIN = { cwd: ROOT, env: { ...process.env, NO_COLOR: "1" } };

for (const [program, validArgs] of Object.entries(VALID_ARGUMENTS)) {
  describe(program, () => {
    test("its options are found in its source", () => {
      expect(definedOptions(program).length).toBeGreaterThan(2);
    });

    test(
      "--help documents every option, its default, an example and the exit codes",
      async () => {
        const help = await runProgram(program, ["--help"], PLAIN);
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
        const shown = await runProgram(program, ["--version"], PLAIN);
        expect(shown.stderr).toBe("");
        expect(shown.stdout).toBe(`${version}\n`);
        expect(shown.exitCode).toBe(0);
      },
      TIMEOUT_MS,
    );

    test(
      "an unknown option exits 2 with one line on stderr",
      async () => {
        const refused = await runProgram(program, [...validArgs, "--bogus-option"], PLAIN);
        expect(refused.exitCode).toBe(2);
        expect(refused.stdout).toBe("");
        expect(refused.stderr).toMatch(new RegExp(`^${program}: [^\\n]*bogus-option[^\\n]*\\n$`));
      },
      TIMEOUT_MS,
    );
  });
}

describe("ramdisk-tools, the four programs in one", () => {
  test(
    "--help names every program and the exit codes; --version prints the package version",
    async () => {
      const help = await runProgram("ramdisk-tools", ["--help"], PLAIN);
      expect(help.stderr).toBe("");
      expect(help.exitCode).toBe(0);
      for (const program of Object.keys(VALID_ARGUMENTS))
        expect(help.stdout).toMatch(new RegExp(`^  ${program} `, "m"));
      expect(help.stdout).toMatch(/Exit status: 0 ok, 1 failure, 2 usage error/);
      expect(await runProgram("ramdisk-tools", ["--version"], PLAIN)).toEqual({
        exitCode: 0,
        stdout: `${version}\n`,
        stderr: "",
      });
    },
    TIMEOUT_MS,
  );

  test(
    "runs the program its first argument names, as that program (its --help, its name in errors)",
    async () => {
      for (const [program, validArgs] of Object.entries(VALID_ARGUMENTS)) {
        const own = await runProgram(program, ["--help"], PLAIN);
        expect(await runProgram("ramdisk-tools", [program, "--help"], PLAIN)).toEqual(own);
        const refused = await runProgram("ramdisk-tools", [program, ...validArgs, "--bogus-option"], PLAIN);
        expect(refused.exitCode).toBe(2);
        expect(refused.stderr).toMatch(new RegExp(`^${program}: [^\\n]*bogus-option[^\\n]*\\n$`));
      }
    },
    TIMEOUT_MS * 4,
  );

  test(
    "no program, or one it does not have, exits 2 with one line on stderr",
    async () => {
      for (const args of [[], ["mkimages"], ["--bogus-option"]]) {
        const refused = await runProgram("ramdisk-tools", args, PLAIN);
        expect(refused.exitCode).toBe(2);
        expect(refused.stdout).toBe("");
        expect(refused.stderr).toMatch(/^ramdisk-tools: [^\n]*one of mkimage, lookimage, bootserver, sled[^\n]*\n$/);
      }
    },
    TIMEOUT_MS,
  );
});

describe("--completion", () => {
  test(
    "prints a bash or a zsh script that asks the program itself, even without the program's required arguments",
    async () => {
      for (const program of Object.keys(VALID_ARGUMENTS)) {
        const bash = await runProgram(program, ["--completion", "bash"], PLAIN);
        expect(bash.stderr).toBe("");
        expect(bash.exitCode).toBe(0);
        expect(bash.stdout).toContain(`complete -o bashdefault -o default -F _${program}_complete ${program}\n`);
        expect(bash.stdout).toContain(`${program} --get-yargs-completions`);
        const zsh = await runProgram(program, ["--completion=zsh"], PLAIN);
        expect(zsh.exitCode).toBe(0);
        expect(zsh.stdout).toStartWith(`#compdef ${program}\n`);
        expect(zsh.stdout).toContain(`compdef _${program}_complete ${program}\n`);
      }
    },
    TIMEOUT_MS * 4,
  );

  test(
    "with no shell named follows $SHELL; an unknown shell exits 2 with one line",
    async () => {
      const zsh = await runProgram("sled", ["--completion"], { env: { ...process.env, SHELL: "/usr/bin/zsh" } });
      expect(zsh.stdout).toStartWith("#compdef sled\n");
      const bash = await runProgram("sled", ["--completion"], { env: { ...process.env, SHELL: "/bin/bash" } });
      expect(bash.stdout).toStartWith("# bash completion for sled");
      const refused = await runProgram("mkimage", ["--completion", "fish"], PLAIN);
      expect(refused).toEqual({
        exitCode: 2,
        stdout: "",
        stderr: 'mkimage: --completion takes bash or zsh, not "fish"\n',
      });
    },
    TIMEOUT_MS,
  );
});

describe("whole-number options", () => {
  test(
    "the sled emulator's quote what was typed, with the range, and exit 2",
    async () => {
      const cases: [string[], string][] = [
        [["--sleds", "abc"], '--sleds must be a whole number from 1 to 4096, not "abc"'],
        [["--sleds", "2.5"], '--sleds must be a whole number from 1 to 4096, not "2.5"'],
        [["--burst-length", "0"], '--burst-length must be a whole number of at least 1, not "0"'],
        [
          ["--port-rate", "1g", "--port-buffer", "lots"],
          '--port-buffer must be a whole number of at least 0, not "lots"',
        ],
      ];
      for (const [options, message] of cases) {
        const refused = await runProgram("sled", ["lo", "--checksum", "00", ...options], PLAIN);
        expect(refused).toEqual({ exitCode: 2, stdout: "", stderr: `sled: ${message}; see sled --help\n` });
      }
    },
    TIMEOUT_MS,
  );
});
