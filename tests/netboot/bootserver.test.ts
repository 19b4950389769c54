/**
 * The boot server against docs/netboot.md.
 *
 * First the parts that need no network: answering a READ (lib/netboot/session.ts)
 * and routing frames (lib/netboot/dispatch.ts), with frames read back by a decoder
 * written here from the document rather than lib/protocol/frames.ts's. Then the real
 * `bun apps/bootserver.ts` on one end of a veth pair created for the test,
 * with the sled emulator (`bun apps/sled.ts`) or a client scripted here on
 * the other end. Raw pools and their SHA-256 come from python3 (random,
 * hashlib, zlib); images are made by `bun apps/mkimage.ts`, except the
 * refused ones, whose header python3 writes.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { dispatchCounters, FrameDispatcher, type SessionInbox } from "@ramdisk-tools/netboot/dispatch.ts";
import { rawImageHandle } from "@ramdisk-tools/netboot/raw-image.ts";
import { SledSession } from "@ramdisk-tools/netboot/session.ts";
import { encodeFrame, type Mac, parseMac, READ_SLOTS, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { python, runProgram, VECTORS } from "../helpers/common.ts";
import { mkimage, runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(90_000);

const MIB = 1024 * 1024;
const POOL_SIZE = 2 * MIB;
const TWO_64 = 2n ** 64n;
const SERVER = parseMac("02:5e:b5:00:00:01")!;
const SLED = parseMac("02:5e:b5:00:00:a0")!;
const OTHER = parseMac("02:5e:b5:00:00:b0")!;
const BROADCAST = new Uint8Array(6).fill(0xff);

// --- An independent reading of frames, straight from netboot.md -----------

const TYPE = { hello: 0x9001, offer: 0x9102, read: 0x9003, data: 0x9104, finished: 0x9005, reset: 0x9106 } as const;

interface Parsed {
  destination: Uint8Array;
  source: Uint8Array;
  type: number;
  len: number;
  body: Uint8Array;
  frameLength: number;
}

/** Ethertype 0x1DE0, magic 0x1DE12345, then type and len, big-endian; null for anything else. */
function parse(frame: Uint8Array): Parsed | null {
  if (frame.length < 26) return null;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.getUint16(12) !== 0x1de0 || view.getUint32(14) !== 0x1de12345) return null;
  const len = view.getUint32(22);
  return {
    destination: frame.slice(0, 6),
    source: frame.slice(6, 12),
    type: view.getUint32(18),
    len,
    body: frame.slice(26, 26 + len),
    frameLength: frame.length,
  };
}

function dataOf(parsed: Parsed): { offset: bigint; bytes: Uint8Array } {
  return { offset: new DataView(parsed.body.buffer).getBigUint64(0), bytes: parsed.body.subarray(8) };
}

function readFrame(source: Mac, destination: Mac, count: bigint, slots: Record<number, bigint>): Uint8Array {
  const slotArray = new BigUint64Array(READ_SLOTS);
  for (const [slot, offset] of Object.entries(slots)) slotArray[Number(slot)] = offset;
  return encodeFrame(destination, source, { type: "read", count, slots: slotArray });
}

function readRequest(count: bigint, slots: Record<number, bigint>): ReadRequest {
  const slotArray = new BigUint64Array(READ_SLOTS);
  for (const [slot, offset] of Object.entries(slots)) slotArray[Number(slot)] = offset;
  return { type: "read", count, slots: slotArray };
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function macText(mac: Mac): string {
  return Array.from(mac, (byte) => byte.toString(16).padStart(2, "0")).join(":");
}

// --- Test data from python3 -------------------------------------------------

let dir = "";
/** Raw pools by name, and their SHA-256 as python3's hashlib computes it. */
const pools: Record<string, { path: string; bytes: Uint8Array; sha256: string }> = {};

/** A version 2 image written by python3 from the format document (for images mkimage should not be asked to make). */
const WRITE_IMAGE = `
import hashlib, struct, sys
raw_path, out_path, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = open(raw_path, "rb").read()
header = struct.pack("<IIQQQQ", 0x1DEB0075, 2, 0, len(raw), len(raw), target) + hashlib.sha256(raw).digest()
header += b"rpool/ROOT/ramdisk".ljust(128, b"\\0") + b"odd".ljust(128, b"\\0")
open(out_path, "wb").write(header.ljust(4096, b"\\0") + raw)
`;

function makePool(name: string, size: number, seed: number) {
  const path = join(dir, `${name}.raw`);
  const sha256 = writePool(path, size, seed);
  pools[name] = { path, bytes: new Uint8Array(readFileSync(path)), sha256 };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "bootserver-test-"));
  makePool("a", POOL_SIZE, 1);
  makePool("b", POOL_SIZE, 2);
  // One 4 KiB page more than 1 MiB: the kernel would take it, a netbooting sled could not.
  makePool("odd", MIB + 4096, 3);
  mkimage(dir, ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "4"]);
  mkimage(dir, ["-i", "a.raw", "-o", "a-z.img", "-N", "a-z", "-s", "4", "-z"]);
  mkimage(dir, ["-i", "b.raw", "-o", "b.img", "-N", "b", "-s", "4"]);
  python(WRITE_IMAGE, join(dir, "odd.raw"), join(dir, "odd.img"), String(4 * MIB));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// --- Answering READs --------------------------------------------------------

describe("SledSession", () => {
  const image = new Uint8Array(POOL_SIZE).map((_, i) => (i * 7 + (i >> 10)) & 0xff);

  /** A session serving `image` whose frames land in `sent`, parsed. */
  function session() {
    const sent: Parsed[] = [];
    const sled = new SledSession(SLED, SERVER, (frames) => {
      for (const frame of frames) sent.push(parse(frame.slice())!);
    });
    sled.serve(image);
    return { sled, sent };
  }

  function answers(read: ReadRequest): Parsed[] {
    const { sled, sent } = session();
    sled.answer(read);
    return sent;
  }

  test("answers scattered slots at exactly their offsets, one DATA each", () => {
    const sent = answers(
      readRequest(4n, { 3: 5000n, 40: BigInt(POOL_SIZE - 100), 77: BigInt(POOL_SIZE), 127: TWO_64 - 1n }),
    );
    expect(sent.map((frame) => dataOf(frame).offset)).toEqual([
      5000n,
      BigInt(POOL_SIZE - 100),
      BigInt(POOL_SIZE),
      TWO_64 - 1n,
    ]);
    expect(dataOf(sent[0]!).bytes).toEqual(image.slice(5000, 6024));
    expect(dataOf(sent[1]!).bytes).toEqual(image.slice(POOL_SIZE - 100));
    expect(dataOf(sent[2]!).bytes.length).toBe(0);
    expect(dataOf(sent[3]!).bytes.length).toBe(0);
    for (const frame of sent) {
      expect(frame.type).toBe(TYPE.data);
      expect(frame.len).toBe(8 + dataOf(frame).bytes.length);
      expect(frame.frameLength).toBeGreaterThanOrEqual(60);
      expect(frame.destination).toEqual(SLED);
      expect(frame.source).toEqual(SERVER);
    }
  });

  test("answers offset 0 only when fewer slots than count are set", () => {
    expect(answers(readRequest(2n, { 9: 4096n })).map((frame) => dataOf(frame).offset)).toEqual([0n, 4096n]);
    expect(answers(readRequest(1n, { 9: 4096n })).map((frame) => dataOf(frame).offset)).toEqual([4096n]);
    const first = answers(readRequest(1n, {}));
    expect(first.map((frame) => dataOf(frame).offset)).toEqual([0n]);
    expect(dataOf(first[0]!).bytes).toEqual(image.slice(0, 1024));
  });

  test("counts offsets asked again, not new ones", () => {
    const { sled, sent } = session();
    const batch: Record<number, bigint> = {};
    for (let slot = 0; slot < READ_SLOTS; slot++) batch[slot] = BigInt(slot * 1024);
    sled.answer(readRequest(128n, batch));
    sled.answer(readRequest(2n, { 5: 5n * 1024n, 90: 90n * 1024n }));
    const next: Record<number, bigint> = {};
    for (let slot = 0; slot < READ_SLOTS; slot++) next[slot] = BigInt((128 + slot) * 1024);
    sled.answer(readRequest(128n, next));
    // Every offset answered once, plus the console probes (lib/netboot/console-cost.ts): one in the first answer,
    // and, once the sled has re-asked, another in the next full batch.
    const probes = sled.counters.get("probeFrames");
    expect(probes).toBeGreaterThanOrEqual(2);
    expect(sent.length).toBe(258 + probes);
    expect(sled.counters.get("reasked")).toBe(2);
    expect(sled.counters.get("deliveredBytes")).toBe(256 * 1024);
    expect(sled.counters.get("sentBytes")).toBe(258 * 1024);
    expect(sled.counters.get("reads")).toBe(3);
  });
});

// --- Routing frames ---------------------------------------------------------

describe("FrameDispatcher", () => {
  const offerFrame = () =>
    encodeFrame(SLED, SERVER, {
      type: "offer",
      ramdiskSize: 4n * BigInt(MIB),
      imageSize: BigInt(POOL_SIZE),
      sha256: new Uint8Array(32),
      dataset: new Uint8Array(128),
    });

  function harness(allowed: Mac[] | null = null) {
    const sent: Parsed[] = [];
    const hellos: string[] = [];
    const finished: string[] = [];
    const reads: ReadRequest[] = [];
    const dispatcher = new FrameDispatcher(
      SERVER,
      allowed,
      {
        send: (frame) => sent.push(parse(frame)!),
        hello: (sled, text) => hellos.push(`${macText(sled)} ${new TextDecoder().decode(text)}`),
        finished: (sled) => finished.push(macText(sled)),
      },
      dispatchCounters(),
    );
    const inbox: SessionInbox & { closed: boolean; served: number } = {
      closed: false,
      served: 0,
      serve() {
        this.served++;
      },
      read: (read) => reads.push(read),
      close() {
        this.closed = true;
      },
    };
    return { dispatcher, sent, hellos, finished, reads, inbox };
  }

  test("RESETs a READ from a sled without a session, and hands a sled's READs to its session", () => {
    const { dispatcher, sent, reads, inbox } = harness();
    dispatcher.dispatch(readFrame(SLED, SERVER, 1n, { 0: 4096n }));
    expect(sent.length).toBe(1);
    expect(sent[0]!.type).toBe(TYPE.reset);
    expect(sent[0]!.len).toBe(0);
    expect(sent[0]!.destination).toEqual(SLED);
    expect(dispatcher.counters.get("resets")).toBe(1);

    dispatcher.offer(SLED, offerFrame(), rawImageHandle(8), inbox);
    expect(inbox.served).toBe(1);
    expect(sent.map((frame) => frame.type)).toEqual([TYPE.reset, TYPE.offer]);
    dispatcher.dispatch(readFrame(SLED, SERVER, 1n, { 0: 4096n }));
    expect(reads.length).toBe(1);
    expect(sent.length).toBe(2);
  });

  test("a FINISHED ends the session: later READs draw a RESET", () => {
    const { dispatcher, sent, finished, inbox } = harness();
    dispatcher.offer(SLED, offerFrame(), rawImageHandle(8), inbox);
    dispatcher.dispatch(encodeFrame(SERVER, SLED, { type: "finished" }));
    expect(finished).toEqual([macText(SLED)]);
    expect(inbox.closed).toBe(true);
    dispatcher.dispatch(readFrame(SLED, SERVER, 1n, { 0: 4096n }));
    expect(sent.at(-1)!.type).toBe(TYPE.reset);
  });

  test("ignores, and counts, malformed frames, frames for others and sleds not allowed", () => {
    const { dispatcher, sent, hellos, reads } = harness([SLED]);
    const read = readFrame(SLED, SERVER, 1n, { 0: 4096n });
    const wrongMagic = read.slice();
    wrongMagic[14]! ^= 0xff;
    const shortLen = read.slice();
    new DataView(shortLen.buffer).setUint32(22, 1000);
    const overCount = readFrame(SLED, SERVER, 129n, { 0: 4096n });
    const truncated = read.slice(0, 500);
    const unknownType = read.slice();
    new DataView(unknownType.buffer).setUint32(18, 0x9999);
    const longFinished = encodeFrame(SERVER, SLED, { type: "finished" });
    new DataView(longFinished.buffer).setUint32(22, 4);
    const malformed = [
      wrongMagic,
      shortLen,
      overCount,
      truncated,
      unknownType,
      longFinished,
      read.slice(0, 20),
      new Uint8Array(0),
    ];
    for (const frame of malformed) dispatcher.dispatch(frame);
    dispatcher.dispatch(readFrame(SLED, OTHER, 1n, { 0: 4096n })); // to another server
    dispatcher.dispatch(readFrame(OTHER, SERVER, 1n, { 0: 4096n })); // from a sled not allowed
    dispatcher.dispatch(encodeFrame(BROADCAST, OTHER, { type: "hello", text: new TextEncoder().encode("x") }));
    dispatcher.dispatch(readFrame(SERVER, SERVER, 1n, { 0: 4096n })); // our own
    expect(sent).toEqual([]);
    expect(hellos).toEqual([]);
    expect(reads).toEqual([]);
    expect(dispatcher.counters.snapshot()).toMatchObject({
      frames: malformed.length + 4,
      malformed: malformed.length,
      notForUs: 1,
      notAllowed: 2,
      ownFrames: 1,
      resets: 0,
    });
    // With padding beyond len, as a real NIC delivers a short frame, a frame still counts.
    const padded = new Uint8Array(64);
    padded.set(encodeFrame(BROADCAST, SLED, { type: "hello", text: new TextEncoder().encode("hi") }).subarray(0, 28));
    dispatcher.dispatch(padded);
    expect(hellos).toEqual([`${macText(SLED)} hi`]);
  });
});

// --- The program, without a network ---------------------------------------

/** `bun apps/bootserver.ts ARGS...` in the scratch directory, to its end. */
const bootserver = (args: string[]) => runProgram("bootserver", args, { cwd: dir });

describe("bootserver refuses", () => {
  test("an image whose size is not a multiple of 128 KiB, saying why", async () => {
    const { exitCode, stdout, stderr } = await bootserver(["rbs-none", "odd.img", "any"]);
    expect(exitCode).toBe(1);
    expect(stdout).toBe("");
    expect(stderr.trim().split("\n")).toEqual([
      expect.stringMatching(/^bootserver: cannot serve odd\.img: .*not a multiple of 131072/),
    ]);
  });

  test("an image below 1 MiB", async () => {
    const { exitCode, stderr } = await bootserver(["rbs-none", join(VECTORS, "pool-odd.img"), "any"]);
    expect(exitCode).toBe(1);
    expect(stderr).toContain("below 1 MiB");
  });

  test("a bad command line, with status 2", async () => {
    expect((await bootserver(["rbs-none", "a.img"])).exitCode).toBe(2);
    expect((await bootserver(["rbs-none", "a.img", "not-a-mac"])).stderr).toContain('"not-a-mac" is not a MAC address');
    expect((await bootserver(["--boots", "0", "rbs-none", "a.img", "any"])).exitCode).toBe(2);
    // Whole-number options quote what was typed, not what a number parser made of it.
    const numbers: [string[], string][] = [
      [["--boots", "2.5"], '--boots must be a whole number of at least 1, not "2.5"'],
      [["--max-sleds", "abc"], '--max-sleds must be a whole number of at least 1, not "abc"'],
      [["--zstd-cache", "abc"], '--zstd-cache must be a whole number from 1 to 4096, not "abc"'],
      [["--zstd-cache", "4097"], '--zstd-cache must be a whole number from 1 to 4096, not "4097"'],
      [["--zstd-cache", "0"], '--zstd-cache must be a whole number from 1 to 4096, not "0"'],
    ];
    for (const [options, message] of numbers) {
      const run = await bootserver([...options, "rbs-none", "a.img", "any"]);
      expect([run.exitCode, run.stderr]).toEqual([2, `bootserver: ${message}\n`]);
    }
  });
});

// --- On a veth pair -----------------------------------------------------------

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver network tests skipped: ${raw.why}`);

async function withServer<T>(args: string[], fn: (server: ServerProcess) => Promise<T>): Promise<T> {
  const server = new ServerProcess(args, dir);
  try {
    await server.waitFor(/^serving on /);
    return await fn(server);
  } finally {
    server.kill();
  }
}

/** A sled played by the test: frames go out on `link`, and come back parsed. */
class ScriptedSled {
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

async function withScriptedSled<T>(linkName: string, mac: Mac, fn: (sled: ScriptedSled) => Promise<T>): Promise<T> {
  const sled = new ScriptedSled(linkName, mac);
  try {
    return await fn(sled);
  } finally {
    sled.close();
  }
}

function linkMac(link: string): Uint8Array {
  return parseMac(readFileSync(`/sys/class/net/${link}/address`, "utf8"))!;
}

/** "N re-asked offsets" from each "finished" line. */
function serverReasked(lines: string[]): number[] {
  return lines.filter((line) => / finished /.test(line)).map((line) => Number(/(\d+) re-asked offsets/.exec(line)![1]));
}

network("bootserver on a veth pair", () => {
  test("-s boots one sled from a plain image and exits 0", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["-s", a, "a.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(dir, b, ["--checksum", pools.a!.sha256]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(/^HELLO from [0-9a-f:]{17}: "sled netboot hello"$/));
        expect(server.lines).toContainEqual(expect.stringMatching(/^offering a\.img to /));
        expect(server.lines).toContainEqual(expect.stringMatching(/ finished a\.img: 2\.0 MiB in /));
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("boots a sled from a compressed image, serving the inflated bytes", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "1", a, "a-z.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        expect(server.lines).toContainEqual(expect.stringContaining(`a-z.img: image name "a-z", 2.0 MiB (compressed`));
        const sled = await runSleds(dir, b, ["--checksum", pools.a!.sha256, "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
        expect(await server.exited()).toBe(0);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("boots 8 sleds at once, and --boots 8 exits 0 after the eighth", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "8", a, "a.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(dir, b, ["--checksum", pools.a!.sha256, "--sleds", "8", "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(sled.reports.filter((report) => report.outcome === "booted").length).toBe(8);
        expect(await server.exited()).toBe(0);
        const finished = server.lines.filter((line) => / finished a\.img/.test(line)).map((line) => line.split(" ")[0]);
        expect(new Set(finished).size).toBe(8);
        expect(server.lines.at(-1)).toMatch(/8 finished so far$/);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("offers each image in turn until a sled takes the one it wants", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "2", a, "a.img", "b.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const [wantsA, wantsB] = await Promise.all([
          runSleds(dir, b, ["--checksum", pools.a!.sha256, "--mac", macText(SLED)]),
          runSleds(dir, b, ["--checksum", pools.b!.sha256, "--mac", macText(OTHER)]),
        ]);
        expect([wantsA.exitCode, wantsB.exitCode]).toEqual([0, 0]);
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img`)));
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(OTHER)} finished b\\.img`)));
        expect(server.lines).toContainEqual(
          `offering a.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
        );
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("--sled pins an image to a sled", async () => {
    await withVethPair(async ({ a, b }) => {
      await withServer([a, "--sled", `${macText(OTHER)}=b.img`, "a.img", "any"], async (server) => {
        await withScriptedSled(b, OTHER, async (sled) => {
          for (let hello = 0; hello < 2; hello++) {
            sled.hello();
            const offer = await sled.expect(TYPE.offer);
            expect(hex(offer.body.subarray(16, 48))).toBe(pools.b!.sha256);
          }
        });
        expect(await server.waitForLines(/^offering /, 2)).toEqual([
          `offering b.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
          `offering b.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
        ]);
      });
    }, "rbs");
  });

  test("with --no-resend every sled boots with 0.5% of DATA lost, and the server counts the re-asked offsets", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--no-resend", "--boots", "4", a, "a.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(dir, b, [
          "--checksum",
          pools.a!.sha256,
          "--sleds",
          "4",
          "--drop-rate",
          "0.005",
          "--seed",
          "11",
          "--json",
        ]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const sledReasks = sled.reports.reduce((sum, report) => sum + report.reasked, 0);
        const dropped = sled.reports.reduce((sum, report) => sum + report.faults.dropped, 0);
        expect(dropped).toBeGreaterThan(0);
        expect(sledReasks).toBeGreaterThanOrEqual(dropped);
        expect(serverReasked(server.lines).reduce((sum, count) => sum + count, 0)).toBe(sledReasks);
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("answers a READ's scattered slots at exactly their offsets, the end with empty DATA", async () => {
    await withVethPair(async ({ a, b }) => {
      // Without fast re-send: this sled never asks for a next batch, and must see each answer once.
      await withServer(["--no-resend", "--boots", "1", a, "a.img", "any"], async (server) => {
        const image = pools.a!.bytes;
        const size = BigInt(POOL_SIZE);
        await withScriptedSled(b, SLED, async (sled) => {
          sled.hello();
          const offer = await sled.expect(TYPE.offer);
          const body = new DataView(offer.body.buffer);
          expect(offer.len).toBe(176);
          expect(offer.source).toEqual(linkMac(a));
          expect(body.getBigUint64(0)).toBe(4n * BigInt(MIB));
          expect(body.getBigUint64(8)).toBe(size);
          expect(hex(offer.body.subarray(16, 48))).toBe(pools.a!.sha256);
          const dataset = new Uint8Array(128);
          dataset.set(new TextEncoder().encode("rpool/ROOT/ramdisk"));
          expect(offer.body.subarray(48, 176)).toEqual(dataset);

          const serverMac = offer.source;
          const asked: Record<number, bigint> = {
            3: 5000n,
            40: size - 100n,
            77: size,
            100: TWO_64 - 1n,
            127: 1000n * 1024n,
          };
          sled.send(readFrame(SLED, serverMac, 5n, asked));
          const answers = await sled.collect(1000);
          expect(answers.every((frame) => frame.type === TYPE.data)).toBe(true);
          const byOffset = new Map(answers.map((frame) => [dataOf(frame).offset, dataOf(frame).bytes]));
          expect(answers.length).toBe(5);
          expect([...byOffset.keys()].sort()).toEqual(Object.values(asked).sort());
          expect(byOffset.get(5000n)).toEqual(image.slice(5000, 6024));
          expect(byOffset.get(size - 100n)).toEqual(image.slice(POOL_SIZE - 100));
          expect(byOffset.get(size)!.length).toBe(0);
          expect(byOffset.get(TWO_64 - 1n)!.length).toBe(0);
          expect(byOffset.get(1000n * 1024n)).toEqual(image.slice(1000 * 1024, 1001 * 1024));
          for (const frame of answers) {
            expect(frame.len).toBe(8 + dataOf(frame).bytes.length);
            expect(frame.frameLength).toBeGreaterThanOrEqual(60);
          }

          // Offset 0 is asked for when fewer slots than count are set.
          sled.send(readFrame(SLED, serverMac, 2n, { 9: 4096n }));
          const withZero = await sled.collect(1000);
          expect(withZero.map((frame) => dataOf(frame).offset).sort()).toEqual([0n, 4096n]);
          expect(dataOf(withZero.find((frame) => dataOf(frame).offset === 0n)!).bytes).toEqual(image.slice(0, 1024));

          sled.send(encodeFrame(serverMac, SLED, { type: "finished" }));
        });
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img: `)));
      });
    }, "rbs");
  });

  test("RESETs a READ that no image explains, saying why, and serves only the sleds it was told to", async () => {
    await withVethPair(async ({ a, b }) => {
      await withServer([a, "--allow", macText(OTHER), "a.img", macText(SLED)], async (server) => {
        const stranger = parseMac("02:5e:b5:00:00:c0")!;
        await withScriptedSled(b, SLED, async (sled) => {
          // Far past a.img: no sled reading it would ask for this (a READ that fits is served: bootserver-restart.test.ts).
          sled.send(readFrame(SLED, linkMac(a), 1n, { 0: 1n << 40n }));
          const reset = await sled.expect(TYPE.reset);
          expect(reset.len).toBe(0);
          expect(reset.source).toEqual(linkMac(a));
          expect(reset.frameLength).toBeGreaterThanOrEqual(60);
          await server.waitFor(
            new RegExp(
              `^RESET to ${macText(SLED)}: no record of it, and its READ \\(up to offset ${1n << 40n}\\) fits none of the images served$`,
            ),
          );
          sled.hello();
          await sled.expect(TYPE.offer);
        });
        await withScriptedSled(b, OTHER, async (sled) => {
          sled.hello();
          await sled.expect(TYPE.offer);
        });
        await withScriptedSled(b, stranger, async (sled) => {
          sled.hello();
          sled.send(readFrame(stranger, linkMac(a), 1n, { 0: 4096n }));
          expect(await sled.collect(1500)).toEqual([]);
        });
        await server.waitFor(new RegExp(`^offering a\\.img to ${macText(OTHER)}`));
        expect(server.lines.filter((line) => line.startsWith("HELLO from ")).map((line) => line.split(" ")[2])).toEqual(
          [`${macText(SLED)}:`, `${macText(OTHER)}:`],
        );
      });
    }, "rbs");
  });

  test("ignores malformed frames while a sled boots", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess([a, "a.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const serverMac = linkMac(a);
        const read = readFrame(SLED, serverMac, 1n, { 0: 4096n });
        const wrongMagic = read.slice();
        wrongMagic[15]! ^= 0x55;
        const wrongLen = read.slice();
        new DataView(wrongLen.buffer).setUint32(22, 1024);
        const overLong = read.slice();
        new DataView(overLong.buffer).setUint32(22, 5000);
        const unknownType = read.slice();
        new DataView(unknownType.buffer).setUint32(18, 0x9007);
        const finishedWithBody = encodeFrame(serverMac, SLED, { type: "finished" });
        new DataView(finishedWithBody.buffer).setUint32(22, 2);
        const helloTooLong = encodeFrame(BROADCAST, SLED, { type: "hello", text: new TextEncoder().encode("hi") });
        new DataView(helloTooLong.buffer).setUint32(22, 100);
        // Frames claiming the booting sled's MAC that are not frames of the protocol.
        const variants = [
          wrongMagic,
          wrongLen,
          overLong,
          unknownType,
          finishedWithBody,
          helloTooLong,
          readFrame(SLED, serverMac, 129n, { 0: 4096n }),
          readFrame(SLED, serverMac, 2n ** 63n, { 0: 4096n }),
          read.slice(0, 30),
        ];
        let booted = false;
        const booting = runSleds(dir, b, ["--checksum", pools.a!.sha256, "--mac", macText(SLED), "--json"]).finally(
          () => (booted = true),
        );
        let sent = 0;
        await withScriptedSled(b, OTHER, async (noise) => {
          while (!booted) {
            for (const frame of variants) noise.send(frame);
            sent += variants.length;
            await Bun.sleep(2);
          }
          // A well-formed READ of offsets near 2^64 from a sled without a session: a RESET, nothing read.
          noise.send(readFrame(OTHER, serverMac, 3n, { 0: TWO_64 - 1n, 64: TWO_64 - 1024n, 127: 2n ** 63n }));
          await noise.expect(TYPE.reset);
        });
        const sled = await booting;
        expect(sled.exitCode).toBe(0);
        expect(sled.reports[0].outcome).toBe("booted");
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img: `)));
        server.process.kill("SIGTERM");
        expect(await server.exited()).toBe(143);
        expect(sent).toBeGreaterThan(100);
        expect(server.lines.at(-1)).toMatch(
          new RegExp(
            `^of \\d+ frames received: ${sent} malformed, 1 answered with RESET \\(each logged with the reason\\)$`,
          ),
        );
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("offers the rebuilt image after the file changed, without a restart", async () => {
    await withVethPair(async ({ a, b }) => {
      const served = join(dir, "served.img");
      writeFileSync(served, readFileSync(join(dir, "a.img")));
      await withServer([a, served, "any"], async (server) => {
        await withScriptedSled(b, SLED, async (sled) => {
          sled.hello();
          expect(hex((await sled.expect(TYPE.offer)).body.subarray(16, 48))).toBe(pools.a!.sha256);
          writeFileSync(`${served}.new`, readFileSync(join(dir, "b.img")));
          renameSync(`${served}.new`, served);
          sled.hello();
          expect(hex((await sled.expect(TYPE.offer)).body.subarray(16, 48))).toBe(pools.b!.sha256);
        });
        expect(await server.waitFor(/^reloaded /)).toBe(
          `reloaded ${served}: the file changed (now sha256 ${pools.b!.sha256})`,
        );
      });
    }, "rbs");
  });

  test("-t fails when no sled says HELLO in time", async () => {
    await withVethPair(async ({ a }) => {
      const server = new ServerProcess(["-t", "1", a, "a.img", "any"], dir);
      try {
        expect(await server.exited()).toBe(1);
        expect((await server.stderr()).trim()).toBe("bootserver: no sled said HELLO within 1 second");
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("SIGTERM and SIGINT stop it cleanly with 143 and 130", async () => {
    await withVethPair(async ({ a }) => {
      for (const [signal, status] of [
        ["SIGTERM", 143],
        ["SIGINT", 130],
      ] as const) {
        const server = new ServerProcess([a, "a.img", "any"], dir);
        try {
          await server.waitFor(/^serving on /);
          server.process.kill(signal);
          expect(await server.exited(10_000)).toBe(status);
          expect(await server.stderr()).toBe("");
        } finally {
          server.kill();
        }
      }
    }, "rbs");
  });
});
