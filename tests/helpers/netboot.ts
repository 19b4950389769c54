/**
 * The pieces the bootserver tests share: pool files written by python3 (so
 * their SHA-256 comes from hashlib, not from us), images made by
 * `bun apps/mkimage.ts`, `bun apps/bootserver.ts` / `bun apps/sled.ts` run as
 * processes in a test's scratch directory, and a sled played by the test.
 */

import { afterAll, beforeAll } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { encodeFrame, type Mac, parseMac } from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { hex, programOutput, python, RunningCommand, runProgram } from "./common.ts";
import { BROADCAST, macText, type Parsed, parse } from "./frames.ts";

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

/** A line of `bootserver --json-log`: the event, and its fields. */
export type LogRecord = { event: string; [field: string]: unknown };

/**
 * `bun apps/bootserver.ts` as a process in `cwd` (startProgram), its standard
 * output collected line by line, and read as JSON lines with --json-log.
 *
 * @example const server = new ServerProcess(["-s", a, "a.img", "any"], dir); await server.waitFor(/^serving on /);
 */
export class ServerProcess extends RunningCommand {
  /** `env`: variables to set for it, beside the test's own. */
  constructor(args: string[], cwd: string, env: Record<string, string> = {}) {
    super(["bun", join(ROOT, "apps/bootserver.ts"), ...args], { cwd, env: { ...process.env, ...env } });
  }

  /** The JSON lines it printed (with --json-log), all or those of `event`. */
  events(event?: string): LogRecord[] {
    const records: LogRecord[] = this.lines.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line));
    return event === undefined ? records : records.filter((record) => record.event === event);
  }

  /** Wait until it has printed `count` JSON lines of `event` (with --json-log). */
  async waitForEvents(event: string, count = 1, timeoutMs = 30_000): Promise<void> {
    await this.waitForLines(new RegExp(`^\\{"event":"${event}"`), count, timeoutMs);
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

/** A version 2 image written by python3 from the format document (for images mkimage should not be asked to make). */
const WRITE_IMAGE = `
import hashlib, struct, sys
raw_path, out_path, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = open(raw_path, "rb").read()
header = struct.pack("<IIQQQQ", 0x1DEB0075, 2, 0, len(raw), len(raw), target) + hashlib.sha256(raw).digest()
header += b"rpool/ROOT/ramdisk".ljust(128, b"\\0") + b"odd".ljust(128, b"\\0")
open(out_path, "wb").write(header.ljust(4096, b"\\0") + raw)
`;

/** The size of the pools a and b of servedImages. */
export const SERVED_POOL_SIZE = 2 * 1024 * 1024;

/** A raw pool servedImages wrote: its path, its bytes, and its SHA-256 by python3's hashlib. */
export interface ServedPool {
  path: string;
  bytes: Uint8Array;
  sha256: string;
}

/**
 * The images the bootserver's own tests serve, made in a scratch directory
 * before the calling test file's tests and removed after them: pools a and b
 * (SERVED_POOL_SIZE each) and odd (one 4 KiB page more than 1 MiB: the kernel
 * would take it, a netbooting sled could not); a.img and b.img stored, a-z.img
 * compressed (by `bun apps/mkimage.ts`), and odd.img, whose header python3
 * writes. Read `dir` and `pools` once the tests run.
 *
 * @example const images = servedImages(); test("...", () => new ServerProcess([a, "a.img", "any"], images.dir));
 */
export function servedImages() {
  const images = { dir: "", pools: {} as Record<"a" | "b" | "odd", ServedPool> };
  const makePool = (name: "a" | "b" | "odd", size: number, seed: number) => {
    const path = join(images.dir, `${name}.raw`);
    const sha256 = writePool(path, size, seed);
    images.pools[name] = { path, bytes: new Uint8Array(readFileSync(path)), sha256 };
  };
  beforeAll(async () => {
    images.dir = mkdtempSync(join(tmpdir(), "bootserver-test-"));
    makePool("a", SERVED_POOL_SIZE, 1);
    makePool("b", SERVED_POOL_SIZE, 2);
    makePool("odd", 1024 * 1024 + 4096, 3);
    await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "4"], { cwd: images.dir });
    await programOutput("mkimage", ["-i", "a.raw", "-o", "a-z.img", "-N", "a-z", "-s", "4", "-z"], { cwd: images.dir });
    await programOutput("mkimage", ["-i", "b.raw", "-o", "b.img", "-N", "b", "-s", "4"], { cwd: images.dir });
    python(WRITE_IMAGE, join(images.dir, "odd.raw"), join(images.dir, "odd.img"), String(4 * 1024 * 1024));
  });
  afterAll(() => {
    if (images.dir) rmSync(images.dir, { recursive: true, force: true });
  });
  return images;
}

/**
 * Run `fn` with a bootserver started with `args` in `cwd` once it serves; killed after.
 *
 * @example await withServer([a, "a.img", "any"], dir, async (server) => { ... });
 */
export async function withServer<T>(
  args: string[],
  cwd: string,
  fn: (server: ServerProcess) => Promise<T>,
): Promise<T> {
  const server = new ServerProcess(args, cwd);
  try {
    await server.waitFor(/^serving on /);
    return await fn(server);
  } finally {
    server.kill();
  }
}

/** A sled played by the test: frames go out on `link`, and come back parsed (./frames.ts). */
export class ScriptedSled {
  readonly link: PcapLink;
  constructor(
    linkName: string,
    readonly mac: Mac,
  ) {
    this.link = PcapLink.open(linkName, { timeoutMs: 20 });
  }

  send(frame: Uint8Array) {
    this.link.inject(frame);
  }

  hello() {
    this.send(encodeFrame(BROADCAST, this.mac, { type: "hello", text: new TextEncoder().encode("scripted sled") }));
  }

  /** Frames addressed to this sled for `ms` milliseconds. */
  async collect(ms: number): Promise<Parsed[]> {
    const frames: Parsed[] = [];
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const frame = this.link.next();
      if (frame) {
        const parsed = parse(frame);
        if (parsed && hex(parsed.destination) === hex(this.mac)) frames.push(parsed);
      } else {
        await Bun.sleep(0);
      }
    }
    return frames;
  }

  /** The first frame of `type` addressed to this sled within `ms`. */
  async expect(type: number, ms = 10_000): Promise<Parsed> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const frame = this.link.next();
      const parsed = frame && parse(frame);
      if (parsed && parsed.type === type && hex(parsed.destination) === hex(this.mac)) return parsed;
      if (!frame) await Bun.sleep(0);
    }
    throw new Error(`no frame of type 0x${type.toString(16)} for ${macText(this.mac)} within ${ms} ms`);
  }

  close() {
    this.link.close();
  }
}

/**
 * Run `fn` with a ScriptedSled of MAC `mac` on `linkName`; its link closed after.
 *
 * @example await withScriptedSled(b, SLED, async (sled) => { sled.hello(); await sled.expect(TYPE.offer); });
 */
export async function withScriptedSled<T>(
  linkName: string,
  mac: Mac,
  fn: (sled: ScriptedSled) => Promise<T>,
): Promise<T> {
  const sled = new ScriptedSled(linkName, mac);
  try {
    return await fn(sled);
  } finally {
    sled.close();
  }
}

/**
 * The MAC address of a network link, as the kernel reports it.
 *
 * @example expect(offer.source).toEqual(linkMac(a));
 */
export function linkMac(link: string): Uint8Array {
  return parseMac(readFileSync(`/sys/class/net/${link}/address`, "utf8"))!;
}
