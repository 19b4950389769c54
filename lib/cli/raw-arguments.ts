/**
 * The program's arguments as it was given them, read from its own command
 * line (Linux's /proc/self/cmdline) where Bun's process.argv differs from it
 * in two ways:
 *
 * - Bun decodes each argument from UTF-8 and turns each byte that is not
 *   UTF-8 into U+FFFD, so `-N $'\xff'` would arrive as a name nobody typed
 *   and `-o $'out\xff.img'` as the path of another file. The existing Rust
 *   tools stop on any argument that is not UTF-8 (Rust's std::env::args
 *   panics), so ours refuse it too, knowing it from its bytes: a U+FFFD typed
 *   as such (EF BF BD) is text like any other.
 * - `bun SCRIPT -- ARGS` drops the `--` that comes first, which getopts reads
 *   as the end of the options (`lookimage -- -odd.img`); it is put back.
 */

import { readFileSync } from "node:fs";

const strict = new TextDecoder("utf-8", { fatal: true });

/** An argument that is not UTF-8: its place among the program's arguments (from 0) and its bytes. */
export interface UndecodableArgument {
  index: number;
  bytes: Uint8Array;
}

/** The program's arguments as given, and the first that is not UTF-8, if any. */
export interface ProgramArguments {
  args: string[];
  undecodable: UndecodableArgument | null;
}

/** The process's command line, one entry of bytes per word; null where it cannot be read. */
function commandLineBytes(): Uint8Array[] | null {
  let raw: Buffer;
  try {
    raw = readFileSync("/proc/self/cmdline");
  } catch {
    return null;
  }
  const words: Uint8Array[] = [];
  let start = 0;
  for (let at = raw.indexOf(0); at >= 0; at = raw.indexOf(0, start)) {
    words.push(raw.subarray(start, at));
    start = at + 1;
  }
  return words;
}

/**
 * `args` (the program's arguments as Bun gives them, hideBin(process.argv))
 * checked against the bytes of the command line, whose last words they are.
 * Where the command line cannot be read, an argument holding U+FFFD counts
 * as not UTF-8, since what was typed cannot be told.
 *
 * @example const { args, undecodable } = programArguments(hideBin(process.argv));
 */
export function programArguments(args: readonly string[]): ProgramArguments {
  const words = commandLineBytes();
  if (!words || words.length < args.length) {
    const index = args.findIndex((arg) => arg.includes("\uFFFD"));
    return {
      args: [...args],
      undecodable: index < 0 ? null : { index, bytes: new TextEncoder().encode(args[index]) },
    };
  }
  const dropped = words.length > args.length && isDoubleDash(words[words.length - args.length - 1]!);
  const given = words.slice(words.length - args.length - (dropped ? 1 : 0));
  const index = given.findIndex((bytes) => !isUtf8(bytes));
  return {
    args: dropped ? ["--", ...args] : [...args],
    undecodable: index < 0 ? null : { index, bytes: given[index]! },
  };
}

function isDoubleDash(bytes: Uint8Array): boolean {
  return bytes.length === 2 && bytes[0] === 0x2d && bytes[1] === 0x2d;
}

function isUtf8(bytes: Uint8Array): boolean {
  try {
    strict.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/**
 * Bytes as text for a message: printable ASCII as it is, every other byte as
 * `\xNN`, so that the bytes that are not UTF-8 show exactly.
 *
 * @example escapedBytes(Uint8Array.of(0x6f, 0xff)) // "o\\xff"
 */
export function escapedBytes(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) {
    text += byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, "0")}`;
  }
  return text;
}
