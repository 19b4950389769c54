/**
 * The pieces the bootserver tests share: pool files written by python3 (so
 * their SHA-256 comes from hashlib, not from us), images made by
 * `bun apps/mkimage.ts`, and `bun apps/bootserver.ts` / `bun apps/sled.ts`
 * run as processes in a test's scratch directory.
 */

import { join } from "node:path";
import { programEnv, python, ROOT, runProgram } from "./common.ts";

/** A pool-like raw file: random records, zeros and text, from a fixed seed; prints its SHA-256. */
const WRITE_POOL = `
import hashlib, random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
out = bytearray()
while len(out) < size:
    kind = rng.randrange(3)
    n = 4096 * rng.randrange(1, 9)
    if kind == 0: out += rng.randbytes(n)
    elif kind == 1: out += bytes(n)
    else: out += (b"zfs dataset ramdisk sled %d " % rng.randrange(1000)) * (n // 24)
out = bytes(out[:size])
open(path, "wb").write(out)
print(hashlib.sha256(out).hexdigest())
`;

/**
 * Write a pool-like raw file of `size` bytes from `seed` with python3; its SHA-256 (hex) by hashlib.
 *
 * @example const sha256 = writePool(join(dir, "a.raw"), 2 * MIB, 1);
 */
export function writePool(path: string, size: number, seed: number): string {
  return python(WRITE_POOL, path, String(size), String(seed)).trim();
}

/**
 * Run `bun apps/mkimage.ts ARGS...` in `cwd`; throws with its stderr if it fails.
 *
 * @example mkimage(dir, ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "4"]);
 */
export function mkimage(cwd: string, args: string[]): void {
  const result = Bun.spawnSync(["bun", join(ROOT, "apps/mkimage.ts"), ...args], { cwd });
  if (result.exitCode !== 0) throw new Error(`mkimage ${args.join(" ")} failed: ${result.stderr.toString()}`);
}

/**
 * `bun apps/bootserver.ts` as a process in `cwd`, its standard output collected line by line.
 *
 * @example const server = new ServerProcess(["-s", a, "a.img", "any"], dir); await server.waitFor(/^serving on /);
 */
export class ServerProcess {
  readonly lines: string[] = [];
  readonly process: Bun.Subprocess<"ignore", "pipe", "pipe">;
  readonly #done: Promise<void>;

  /** `env`: variables to set for it, beside the test's own. */
  constructor(args: string[], cwd: string, env: Record<string, string> = {}) {
    const child = Bun.spawn(["bun", join(ROOT, "apps/bootserver.ts"), ...args], {
      cwd,
      env: programEnv(cwd, { ...process.env, ...env }),
      stdout: "pipe",
      stderr: "pipe",
    });
    this.process = child;
    this.#done = (async () => {
      const decoder = new TextDecoder();
      let pending = "";
      for await (const chunk of child.stdout) {
        pending += decoder.decode(chunk, { stream: true });
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
          `bootserver printed no line matching ${pattern}:\n${this.lines.join("\n")}\n${await this.stderr()}`,
        );
      }
      await Bun.sleep(20);
    }
  }

  async exited(timeoutMs = 30_000): Promise<number | null> {
    const code = await Promise.race([this.process.exited, Bun.sleep(timeoutMs).then(() => null)]);
    await this.#done;
    return code;
  }

  stderr(): Promise<string> {
    return new Response(this.process.stderr).text();
  }

  kill() {
    if (this.process.exitCode === null) this.process.kill("SIGKILL");
  }
}

/**
 * Run `bun apps/sled.ts LINK --timeout SECONDS ARGS...` in `cwd` to its end
 * (SECONDS 60 unless given); its output, and the JSON reports among its lines
 * (with --json).
 *
 * @example const sled = await runSleds(dir, b, ["--json", "--sleds", "4"]);
 */
export async function runSleds(cwd: string, link: string, args: string[], timeoutSeconds = 60) {
  const { exitCode, stdout, stderr } = await runProgram("sled", [link, "--timeout", String(timeoutSeconds), ...args], {
    cwd,
  });
  return { exitCode, stdout, stderr, reports: sledReports(stdout) };
}

/**
 * The JSON reports among the lines `sled --json` printed, one per sled.
 *
 * @example const [report] = sledReports(await new Response(child.stdout).text());
 */
export function sledReports(stdout: string) {
  return stdout
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line));
}
