/**
 * What many test files need alike: where the project and the golden test
 * vectors lie, python3 as the independent decoder, and our programs run as
 * real processes (`bun apps/NAME.ts`), the way the build and users run them.
 */

import { expect } from "bun:test";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";

/** The project's root (the work tree). */

/**
 * The environment to run one of our programs in `cwd` with: this process's,
 * and $STATE_DIRECTORY in `cwd`, so that a bootserver a test starts keeps its
 * record of offers (lib/netboot/offer-record.ts) in the test's scratch
 * directory, removed with it, never in the system's /var/lib. (Bun.spawn
 * passes the environment the process started with: setting process.env
 * would not reach the children.)
 *
 * @example Bun.spawn(["bun", "apps/bootserver.ts", ...args], { cwd: dir, env: programEnv(dir) });
 */
export function programEnv(cwd: string | undefined, env: Record<string, string | undefined> = process.env) {
  return { ...env, STATE_DIRECTORY: join(cwd ?? tmpdir(), ".bootserver-state") };
}

/** The existing tools' outputs the tests compare against (tests/vectors/README.md says which tool made each). */
export const VECTORS = join(ROOT, "tests", "vectors");

let pythonPath: string | undefined;

/** The python3 interpreter's path, found once: a version manager's shim costs a process per run. */
function python3(): string {
  pythonPath ??= Bun.spawnSync(["python3", "-c", "import sys; print(sys.executable)"]).stdout.toString().trim();
  return pythonPath;
}

/**
 * Run a python3 program with arguments and, optionally, bytes on its standard
 * input; its standard output as printed (untrimmed), or a thrown error with its
 * stderr. The python3 interpreter itself is found once: a version manager's
 * shim costs a process per run.
 *
 * @example const digest = pythonWithInput(bytes, "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())");
 */
export function pythonWithInput(stdin: Uint8Array | undefined, program: string, ...args: string[]): string {
  const run = Bun.spawnSync([python3(), "-c", program, ...args], {
    stdin: stdin ?? "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  if (run.exitCode !== 0) throw new Error(`python3 failed: ${run.stderr.toString()}`);
  return run.stdout.toString();
}

/**
 * Run a python3 program with arguments; see pythonWithInput.
 *
 * @example const facts = JSON.parse(python("import json, sys; print(json.dumps(sys.argv[1:]))", "a", "b"));
 */
export function python(program: string, ...args: string[]): string {
  return pythonWithInput(undefined, program, ...args);
}

/**
 * For each program, arguments that are valid apart from anything added to
 * them, so that an added unknown option is what a program refuses.
 */
export const VALID_ARGUMENTS: Record<string, string[]> = {
  mkimage: ["-i", "pool.raw", "-o", "pool.img"],
  lookimage: ["pool.img"],
  sled: ["eth1", "--checksum-file", "pool.csum"],
  bootserver: ["eth1", "pool.img", "any"],
};

/** How a command ended: its exit status and everything it printed, standard output as bytes. */
export interface CommandRun {
  exitCode: number;
  stdout: Buffer;
  stderr: string;
}

/** How one of our programs ended: its exit status and everything it printed. */
export interface ProgramRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Where and how a command runs. */
export interface RunOptions {
  cwd?: string;
  /** Replaces the environment when given. */
  env?: Record<string, string | undefined>;
  /** Bytes on its standard input; none (end of file at once) when absent. */
  stdin?: Uint8Array;
  /** Run as this user and group id (through setpriv), with no supplementary groups. */
  user?: number;
}

/**
 * Exec the command whose words are given in hex as arguments: Bun.spawn takes
 * only strings and sends them as UTF-8, so a word that is not UTF-8 goes
 * through python3's execvp as bytes.
 */
const EXEC_BYTES = "import os, sys; words = [bytes.fromhex(word) for word in sys.argv[1:]]; os.execvp(words[0], words)";

/**
 * Run any command to its end as a real process and collect its exit status
 * and output, standard output as bytes: the one way the tests start a process
 * that runs to its end (runCommand, runProgram and commandOutput shape what it
 * gives). A word given as bytes reaches the program as exactly those bytes,
 * UTF-8 or not.
 *
 * @example const { exitCode, stdout } = await runCommandBytes(["zstd", "-d", "-q", "-c"], { stdin: payload });
 */
export async function runCommandBytes(words: (string | Uint8Array)[], options: RunOptions = {}): Promise<CommandRun> {
  const asUser =
    options.user === undefined
      ? []
      : ["setpriv", `--reuid=${options.user}`, `--regid=${options.user}`, "--clear-groups"];
  const command = [...asUser, ...words].every((word) => typeof word === "string")
    ? ([...asUser, ...words] as string[])
    : [...asUser, python3(), "-c", EXEC_BYTES, ...words.map((word) => Buffer.from(word).toString("hex"))];
  const child = Bun.spawn(command, {
    cwd: options.cwd,
    env: programEnv(options.cwd, options.env),
    stdin: options.stdin ?? "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(child.stdout).arrayBuffer(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { exitCode, stdout: Buffer.from(stdout), stderr };
}

/**
 * Run any command to its end (runCommandBytes), its standard output as text.
 *
 * @example const { exitCode, stdout } = await runCommand([join(bin, "mkimage"), "--version"], { env });
 */
export async function runCommand(words: (string | Uint8Array)[], options: RunOptions = {}): Promise<ProgramRun> {
  const run = await runCommandBytes(words, options);
  return { exitCode: run.exitCode, stdout: new TextDecoder().decode(run.stdout), stderr: run.stderr };
}

/**
 * Run `bun apps/NAME.ts ARGS...` to its end as a real process, the way the
 * build and users run it, and collect its exit status and output.
 *
 * @example const { exitCode, stderr } = await runProgram("lookimage", ["pool.img"], { cwd: dir });
 */
export function runProgram(name: string, args: (string | Uint8Array)[], options: RunOptions = {}): Promise<ProgramRun> {
  return runCommand([...programCommand(name), ...args], options);
}

/**
 * Run one of our programs that must succeed (runProgram): its standard output
 * as text, or a thrown error with its exit status and stderr.
 *
 * @example await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-s", "4"], { cwd: dir });
 */
export function programOutput(name: string, args: string[], options: RunOptions = {}): Promise<string> {
  return commandOutput([...programCommand(name), ...args], options);
}

/** The words that run `apps/NAME.ts` as the build and users run it. */
function programCommand(name: string): string[] {
  return ["bun", join(ROOT, "apps", `${name}.ts`)];
}

/**
 * A command started in the background, for a test that works beside it while
 * it runs (a server, a sled, a run to interrupt): its standard output
 * collected line by line as it comes, the process at hand to signal. Started
 * as runCommandBytes starts one, with words that are all text and nothing on
 * its standard input.
 *
 * @example const server = new RunningCommand([join(bin, "bootserver"), link, "pool.img", "any"], { cwd: dir });
 */
export class RunningCommand {
  readonly lines: string[] = [];
  readonly process: Bun.Subprocess<"ignore", "pipe", "pipe">;
  readonly #done: Promise<void>;
  #stdout = "";
  #stderr: Promise<string> | undefined;

  constructor(
    readonly words: string[],
    options: Omit<RunOptions, "stdin" | "user"> = {},
  ) {
    const child = Bun.spawn(words, {
      cwd: options.cwd,
      env: programEnv(options.cwd, options.env),
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    this.process = child;
    this.#done = (async () => {
      const decoder = new TextDecoder();
      let pending = "";
      for await (const chunk of child.stdout) {
        const text = decoder.decode(chunk, { stream: true });
        this.#stdout += text;
        pending += text;
        const complete = pending.split("\n");
        pending = complete.pop()!;
        this.lines.push(...complete);
      }
      if (pending) this.lines.push(pending);
    })();
  }

  /** Wait until a line matches; fails with what was printed so far. */
  async waitFor(pattern: RegExp, timeoutMs = 30_000): Promise<string> {
    return (await this.waitForLines(pattern, 1, timeoutMs))[0]!;
  }

  /** Wait until `count` lines match, and return them. */
  async waitForLines(pattern: RegExp, count: number, timeoutMs = 30_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = this.lines.filter((candidate) => pattern.test(candidate));
      if (lines.length >= count) return lines;
      if (Date.now() > deadline || this.process.exitCode !== null) {
        throw new Error(
          `${this.words.join(" ")} printed no line matching ${pattern}:\n${this.lines.join("\n")}\n${await this.stderr()}`,
        );
      }
      await Bun.sleep(20);
    }
  }

  /** Its exit status once its output is read, or null if it runs on past `timeoutMs`. */
  async exited(timeoutMs = 30_000): Promise<number | null> {
    const code = await Promise.race([this.process.exited, Bun.sleep(timeoutMs).then(() => null)]);
    if (code !== null) await this.#done;
    return code;
  }

  /** How it ended, however long that takes: its exit status and everything it printed. */
  async result(): Promise<ProgramRun> {
    const [exitCode, stderr] = await Promise.all([this.process.exited, this.stderr(), this.#done]);
    return { exitCode, stdout: this.#stdout, stderr };
  }

  /** Everything it printed on standard error, once it has closed it. */
  stderr(): Promise<string> {
    this.#stderr ??= new Response(this.process.stderr).text();
    return this.#stderr;
  }

  /** Kill it (SIGKILL) unless it has ended. */
  kill() {
    if (this.process.exitCode === null) this.process.kill("SIGKILL");
  }
}

/**
 * Start `bun apps/NAME.ts ARGS...` in the background (RunningCommand), the
 * way the build and users run it.
 *
 * @example const sled = startProgram("sled", [link, "--checksum-file", "csum"], { cwd: dir }); sled.process.kill("SIGSTOP");
 */
export function startProgram(
  name: string,
  args: string[],
  options: Omit<RunOptions, "stdin" | "user"> = {},
): RunningCommand {
  return new RunningCommand([...programCommand(name), ...args], options);
}

/**
 * Run a command that must succeed: its standard output as text, or a thrown
 * error with its exit status and stderr.
 *
 * @example const digest = (await commandOutput(["sha256sum", path])).split(" ")[0];
 */
export async function commandOutput(words: string[], options: RunOptions = {}): Promise<string> {
  const run = await runCommand(words, options);
  if (run.exitCode !== 0) throw new Error(`${words.join(" ")} exited ${run.exitCode}: ${run.stderr}`);
  return run.stdout;
}

/**
 * SHA-256 of a file by `sha256sum`, an implementation that is not ours, in hex.
 *
 * @example expect(await sha256sum(rawPath)).toBe(toHex(header.sha256));
 */
export async function sha256sum(path: string): Promise<string> {
  return (await commandOutput(["sha256sum", path])).split(" ")[0]!;
}

/**
 * Fresh numbered directories under `root()` (read when each is made, so a
 * beforeAll may set it), one per case, so a case's listing shows exactly
 * what the run left.
 *
 * @example const caseDir = caseDirs(() => dir); const out = await caseDir();
 */
export function caseDirs(root: () => string): () => Promise<string> {
  let count = 0;
  return async () => {
    const path = join(root(), `case-${count++}`);
    await mkdir(path);
    return path;
  };
}

/**
 * A refusal by one of our programs: exit 1, nothing on stdout, exactly one
 * line on stderr, `PROGRAM: ` and a reason matching `message`, no stack trace
 * (lib/cli/conventions.ts runMain).
 *
 * @example expectRefusal(await runProgram("mkimage", ["-i", "absent", "-o", "x"]), "mkimage", /no such file/);
 */
export function expectRefusal(
  run: { exitCode: number | null; stdout: string; stderr: string },
  program: string,
  message: RegExp,
) {
  expect(run.exitCode).toBe(1);
  expect(run.stdout).toBe("");
  expect(run.stderr.endsWith("\n")).toBe(true);
  expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  expect(run.stderr.startsWith(`${program}: `)).toBe(true);
  expect(run.stderr).not.toMatch(/\n\s+at /);
  expect(run.stderr.trimEnd()).toMatch(message);
}

/** The bytes in lower-case hex. */
export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}
