/**
 * What the fuzz tests share: the fixed-seed generator and its draws, the
 * tally of cases, and the checks every target gets.
 *
 * The fuzz tests (`tests/PACKAGE/MODULE.fuzz.test.ts`, one file per module
 * they attack) are property and fuzz tests of every parser that reads untrusted
 * bytes: the image header, the netboot frames, the sled emulator's input
 * (with its own DATA fast path), the zstd seek table and blocks, and the
 * zlib inflater and zstd readers behind verifyPayload.
 *
 * Each target gets valid inputs built from the specs (docs/format.md,
 * docs/netboot.md) and damaged copies of them: bit
 * flips, truncation at every length, extension, size fields at 0, 1, the
 * edges (4095, 4096, 2^32, 2^53 - 1, 2^53, 2^64 - 1), unterminated and
 * non-UTF-8 names, READ counts 0..200, offsets near 2^64. Every input must
 * end in a correct result or the module's own error with a one-line message;
 * any other exception, a multi-line message or a hang is a failure. Where a
 * spec says what the answer is, the test says it too; where an independent
 * decoder exists (python3's struct and zlib, Debian's `zstd -d`), the results
 * are compared with it, and where the project has two decoders for one thing
 * (decodeFrame and the sled's DATA path; decompressBlock into its own
 * buffer and into a recycled one), they are compared with each other.
 *
 * Inputs come from a fixed-seed generator, so a failure names a case that
 * reproduces. Case counts are in the thousands here and scale with the
 * FUZZ_SCALE environment variable (`bun run fuzz` sets 50); each test prints
 * its counts. No allocation may be sized by an untrusted field before it is
 * checked: the inputs that would expose one (seek tables claiming 2^27 to
 * 2^32 - 1 frames, headers claiming 2^53 - 1 payload bytes, zlib and zstd
 * bombs of 1 GiB) run while the process's peak resident memory is watched.
 */

import { afterAll, beforeAll, expect, setDefaultTimeout } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { Xorshift32 } from "@ramdisk-tools/random/xorshift32.ts";
import { hex, python } from "./common.ts";

/** `bun run fuzz` multiplies every case count by this. */
export const SCALE = Math.max(1, Number(process.env.FUZZ_SCALE ?? "1") || 1);
/** A case count scaled by FUZZ_SCALE. */
export const scaled = (cases: number) => Math.round(cases * SCALE);

/**
 * Each fuzz file's default test timeout: python and zstd processes and
 * thousands of inflates on two busy cores, and a scaled run takes
 * proportionally longer.
 */
export const FUZZ_TIMEOUT_MS = 120_000 * SCALE;

/** Edges of the number types the parsers read. */
export const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
export const U32_MAX = 2 ** 32 - 1;
export const U64_MAX = 2n ** 64n - 1n;
/** Every 64-bit size field is tried at each of these. */
export const SIZE_EDGES: readonly bigint[] = [
  0n,
  1n,
  4095n,
  4096n,
  4097n,
  2n ** 32n - 1n,
  2n ** 32n,
  2n ** 32n + 1n,
  MAX_SAFE,
  MAX_SAFE + 1n,
  MAX_SAFE + 2n,
  U64_MAX,
];

/**
 * The project's generator (lib/random/xorshift32.ts) with the draws the fuzz
 * targets need. `scaled` scales a draw into 0..n-1 where the generator's
 * `below` takes it modulo n: the fixed case sets here (and the counts
 * robustness.md gives) were drawn that way.
 */
export class Random extends Xorshift32 {
  /** Uniform in 0..n-1 (n up to 2^32). */
  scaled(n: number): number {
    return Math.floor(this.fraction() * n);
  }
  chance(probability: number): boolean {
    return this.fraction() < probability;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.scaled(items.length)]!;
  }
  u64(): bigint {
    return (BigInt(this.next()) << 32n) | BigInt(this.next());
  }
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

/**
 * Raw image-like bytes: runs of zeros, of text and of random bytes, so
 * compressors see both matches and literals.
 */
export function imageLike(random: Random, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  while (at < length) {
    const run = Math.min(length - at, 1 + random.scaled(2048));
    const kind = random.scaled(3);
    if (kind === 1) for (let i = 0; i < run; i++) out[at + i] = 97 + random.scaled(8);
    else if (kind === 2) out.set(random.bytes(run), at);
    at += run;
  }
  return out;
}

/** The parts one after another, in a new array. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** A short, reproducible description of an input for a failure message. */
export function show(bytes: Uint8Array): string {
  return bytes.length <= 96 ? hex(bytes) : `${bytes.length} bytes ${hex(bytes.subarray(0, 64))}..`;
}

/** Flip `count` random bits of a copy of `bytes` within [from, to). */
export function flipBits(random: Random, bytes: Uint8Array, count: number, from = 0, to = bytes.length): Uint8Array {
  // new Uint8Array, not slice(): compressBlock returns a Buffer, whose slice() is a view.
  const out = new Uint8Array(bytes);
  if (to <= from) return out;
  for (let i = 0; i < count; i++) out[from + random.scaled(to - from)]! ^= 1 << random.scaled(8);
  return out;
}

/**
 * Counts and failures of one fuzz target. Failures are collected rather than
 * asserted one by one, so a run reports the first few failing cases together,
 * each with its case number and input.
 */
export class Tally {
  cases = 0;
  accepted = 0;
  refused = 0;
  readonly failures: string[] = [];
  constructor(readonly target: string) {}

  fail(label: string, what: string): void {
    if (this.failures.length < 12) this.failures.push(`${label}: ${what}`);
    else if (this.failures.length === 12) this.failures.push("...");
  }

  /** Check a caught error: the expected class, with a one-line message. */
  refusal(label: string, error: unknown, ...allowed: (abstract new (...args: never[]) => Error)[]): string | null {
    this.refused++;
    if (!allowed.some((kind) => error instanceof kind)) {
      this.fail(label, `threw ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
      return null;
    }
    const message = (error as Error).message;
    if (!isOneLine(message)) this.fail(label, `message is not one line: ${JSON.stringify(message)}`);
    return message;
  }

  report(extra = ""): void {
    console.log(`fuzz ${this.target}: ${this.cases} cases, ${this.accepted} accepted, ${this.refused} refused${extra}`);
    expect(this.failures).toEqual([]);
  }
}

/** True for a non-empty message without line breaks, as every refusal must be. */
export function isOneLine(message: string): boolean {
  return message.length > 0 && !/[\r\n]/.test(message);
}

/** Run `attempt`, returning its value or the error it threw. */
export function outcome<T>(attempt: () => T): { ok: true; value: T } | { ok: false; error: unknown } {
  try {
    return { ok: true, value: attempt() };
  } catch (error) {
    return { ok: false, error };
  }
}

/**
 * How far the process's peak resident memory rises above its resident memory
 * before `run`, in MiB: Linux's VmHWM, reset through /proc/self/clear_refs,
 * so an allocation sized by a hostile field shows even if it is freed again
 * before `run` returns. Worker threads count too: they share the process.
 */
export async function peakGrowthMiB(run: () => Promise<void>): Promise<number> {
  Bun.gc(true);
  const before = process.memoryUsage().rss;
  writeFileSync("/proc/self/clear_refs", "5");
  await run();
  const peak = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  if (!peak) throw new Error("no VmHWM in /proc/self/status");
  return (Number(peak[1]) * 1024 - before) / MIB;
}

/**
 * Growth allowed while running hostile inputs: room for the 64 MiB block a
 * seek table may honestly promise, far below the gigabytes a trusted hostile
 * size would take.
 */
export const MEMORY_SLACK_MIB = 256;

/**
 * Set up a fuzz test file that writes files: its default timeout for the
 * scale, and a scratch directory made before its tests and removed after
 * them. Call it at the top of the file; the function it returns gives the
 * directory inside a test.
 *
 * @example const scratch = fuzzFile(); ... writeFileSync(join(scratch(), "case.img"), bytes);
 */
export function fuzzFile(): () => string {
  setDefaultTimeout(FUZZ_TIMEOUT_MS);
  let dir: string | undefined;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "fuzz-test-"));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return () => {
    if (!dir) throw new Error("the fuzz scratch directory exists only while the file's tests run");
    return dir;
  };
}

/** Run a python3 program on `input`, handed over as a JSON file in `dir`; what it prints, parsed as JSON. */
export function pythonJson(dir: string, script: string, input: unknown): unknown {
  const path = join(dir, `python-input-${Bun.hash(script).toString(16)}.json`);
  writeFileSync(path, JSON.stringify(input));
  return JSON.parse(python(script, path));
}

/** A 128-byte name field (dataset or image name) holding `text`, NUL-padded, its last byte NUL. */
export function nameField(text: string): Uint8Array {
  const field = new Uint8Array(128);
  field.set(new TextEncoder().encode(text).subarray(0, 127));
  return field;
}
