/**
 * The boot server under fire, end to end on a veth pair
 * made for the test: `bun apps/bootserver.ts` on one end; on the other, 8
 * emulated sleds (`bun apps/sled.ts`) and this test process, which injects
 * over 100,000 malformed or hostile frames with PcapLink.injectBatch while
 * they boot. The server records what it sends (`--pcap`); every DATA in that
 * capture is read back with a decoder written here from netboot.md and
 * compared with the raw pool python3 wrote. Its resident memory is read from
 * /proc before and after a further storm.
 *
 * Then: 8 sleds with 1% loss, duplication and reordering of DATA; and a
 * server restarted mid-transfer, whose successor serves the sled on.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { programOutput, python } from "../helpers/common.ts";
import { macText } from "../helpers/frames.ts";
import { linkMac, runSleds, ServerProcess } from "../helpers/netboot.ts";

const IMAGE_SIZE = 4 * MIB;
const HOSTILE_FRAMES = 100_000;
/** Growth of the server's VmRSS allowed over a second storm of HOSTILE_FRAMES frames. */
const RSS_MARGIN_KIB = 16 * 1024;
const SLEDS = 8;
const FIRST_SLED = "02:72:68:64:10:00";
const raw = canUseRawNetwork();

const TYPE = { hello: 0x9001, offer: 0x9102, read: 0x9003, data: 0x9104, finished: 0x9005, reset: 0x9106 } as const;
const TWO_64 = 2n ** 64n;

let dir = "";
let pool: Uint8Array;
let bigPool: Uint8Array;

const WRITE_POOL =
  "import random, sys\nopen(sys.argv[1], 'wb').write(random.Random(int(sys.argv[3])).randbytes(int(sys.argv[2])))";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bootserver-hostile-"));
  python(WRITE_POOL, join(dir, "pool.raw"), String(IMAGE_SIZE), "11");
  python(WRITE_POOL, join(dir, "big.raw"), String(16 * MIB), "12");
  python(WRITE_POOL, join(dir, "small.raw"), String(MIB), "13");
  pool = new Uint8Array(readFileSync(join(dir, "pool.raw")));
  bigPool = new Uint8Array(readFileSync(join(dir, "big.raw")));
  await programOutput("mkimage", ["-i", "pool.raw", "-o", "pool.img", "-O", "pool.csum", "-N", "hostile", "-s", "8"], {
    cwd: dir,
  });
  await programOutput("mkimage", ["-i", "small.raw", "-o", "small.img", "-O", "small.csum", "-N", "small", "-s", "8"], {
    cwd: dir,
  });
  await programOutput("mkimage", ["-i", "big.raw", "-o", "big.img", "-O", "big.csum", "-N", "big", "-s", "64"], {
    cwd: dir,
  });
}, 60_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

// --- Frames, written and read here from netboot.md ---------------------------

function macBytes(text: string): Uint8Array {
  return Uint8Array.from(text.split(":").map((part) => parseInt(part, 16)));
}

/** Ethernet header, ethertype 0x1DE0, magic, type, len, then `body`; padded to 60 bytes. */
function frame(
  destination: Uint8Array,
  source: Uint8Array,
  type: number,
  body: Uint8Array,
  len = body.length,
  magic = 0x1de12345,
): Uint8Array {
  const bytes = new Uint8Array(Math.max(60, 26 + body.length));
  bytes.set(destination, 0);
  bytes.set(source, 6);
  const view = new DataView(bytes.buffer);
  view.setUint16(12, 0x1de0);
  view.setUint32(14, magic);
  view.setUint32(18, type);
  view.setUint32(22, len);
  bytes.set(body, 26);
  return bytes;
}

function readBody(count: bigint, slots: bigint[]): Uint8Array {
  const body = new Uint8Array(8 + 128 * 8);
  const view = new DataView(body.buffer);
  view.setBigUint64(0, count);
  slots.forEach((offset, slot) => view.setBigUint64(8 + slot * 8, offset));
  return body;
}

/** mulberry32: a fixed-seed generator, so a failing storm reproduces. */
function random(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]) => items[int(items.length)]!;
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));
  return { next, int, pick, bytes };
}

const HOSTILE_KINDS = [
  "random bytes",
  "wrong magic",
  "wrong len for its type",
  "READ count above 128",
  "READ offsets past the end, near 2^64, unaligned",
  "from a MAC not allowed",
  "claiming the server's MAC",
  "OFFER, DATA or RESET sent to the server",
] as const;
type HostileKind = (typeof HOSTILE_KINDS)[number];

/**
 * Makes hostile frames for a server at `server`. Well-formed READs go only
 * from `attacker`, an allowed MAC with a session of its own; the real sleds'
 * MACs appear only on frames the server must drop as malformed, so the storm
 * cannot RESET or confuse a real sled.
 */
function hostileFrames(seed: number, server: Uint8Array, attacker: Uint8Array, sleds: Uint8Array[]) {
  const rng = random(seed);
  const stranger = () => Uint8Array.from([0x02, 0x66, ...rng.bytes(4)]);
  const anySource = () => rng.pick([stranger(), attacker, server, ...sleds]);
  const types = [...Object.values(TYPE), 0, 0x9999, 0xffffffff];
  const counts = new Map<HostileKind, number>(HOSTILE_KINDS.map((kind) => [kind, 0]));
  const lens = [0, 1, 7, 8, 9, 175, 177, 1031, 1033, 1477, 1500, 0x7fffffff, 0xffffffff];
  const offsets = () => {
    const choice = rng.int(5);
    if (choice === 0) return BigInt(IMAGE_SIZE + rng.int(10) * 1024);
    if (choice === 1) return TWO_64 - 1n - BigInt(rng.int(4096));
    if (choice === 2) return BigInt(rng.int(IMAGE_SIZE)); // unaligned, almost always
    if (choice === 3) return BigInt(IMAGE_SIZE - 1 - rng.int(1024));
    return 2n ** 53n + BigInt(rng.int(3));
  };
  function next(): Uint8Array {
    const kind = rng.pick(HOSTILE_KINDS);
    counts.set(kind, counts.get(kind)! + 1);
    switch (kind) {
      case "random bytes": {
        // 14 bytes up to a full Ethernet frame (the link refuses others); half with the netboot ethertype, to pass the capture filter.
        const bytes = rng.bytes(14 + rng.int(1501));
        if (rng.int(2) === 0) {
          bytes.set(server, 0);
          new DataView(bytes.buffer).setUint16(12, 0x1de0);
        }
        return bytes;
      }
      case "wrong magic": {
        const bad = frame(server, anySource(), rng.pick(Object.values(TYPE)), new Uint8Array(0));
        new DataView(bad.buffer).setUint32(14, ((rng.int(2 ** 32 - 1) + 1) ^ 0x1de12345) >>> 0);
        return bad;
      }
      case "wrong len for its type": {
        const type = rng.pick(types);
        const right = { [TYPE.offer]: 176, [TYPE.read]: 1032, [TYPE.finished]: 0, [TYPE.reset]: 0 }[type];
        let len = rng.pick(lens);
        if (len === right || (type === TYPE.data && len >= 8 && len <= 1476) || type === TYPE.hello) len = 0xffffffff;
        return frame(
          rng.pick([server, Uint8Array.from([255, 255, 255, 255, 255, 255])]),
          anySource(),
          type,
          rng.bytes(rng.int(1100)),
          len,
        );
      }
      case "READ count above 128":
        return frame(
          server,
          anySource(),
          TYPE.read,
          readBody(129n + BigInt(rng.int(1000)) * BigInt(rng.pick([1, 1_000_000_007, 2 ** 40])), [offsets()]),
        );
      case "READ offsets past the end, near 2^64, unaligned": {
        const slots = Array.from({ length: 1 + rng.int(3) }, offsets);
        return frame(server, attacker, TYPE.read, readBody(BigInt(slots.length), slots));
      }
      case "from a MAC not allowed":
        return rng.pick([
          frame(server, stranger(), TYPE.read, readBody(1n, [offsets()])),
          frame(
            Uint8Array.from([255, 255, 255, 255, 255, 255]),
            stranger(),
            TYPE.hello,
            new TextEncoder().encode("hostile"),
          ),
          frame(server, stranger(), TYPE.finished, new Uint8Array(0)),
        ]);
      case "claiming the server's MAC":
        return rng.pick([
          frame(server, server, TYPE.read, readBody(1n, [offsets()])),
          frame(Uint8Array.from([255, 255, 255, 255, 255, 255]), server, TYPE.hello, new TextEncoder().encode("me")),
          frame(server, server, TYPE.finished, new Uint8Array(0)),
        ]);
      case "OFFER, DATA or RESET sent to the server":
        return rng.pick([
          frame(server, attacker, TYPE.offer, rng.bytes(176)),
          frame(server, attacker, TYPE.data, rng.bytes(8 + rng.int(1024))),
          frame(server, attacker, TYPE.reset, new Uint8Array(0)),
        ]);
    }
  }
  return { next, counts };
}

/**
 * Every DATA the server sent to one of `clients`, as recorded in its capture,
 * checked against `image`. (The capture also holds the hostile frames it
 * received, some of them claiming its MAC; none is addressed to a client.)
 */
function checkRecordedData(
  capturePath: string,
  server: Uint8Array,
  clients: Uint8Array[],
  image: Uint8Array,
): { data: number; ends: number; bad: string[] } {
  const capture = readFileSync(capturePath);
  const view = new DataView(capture.buffer, capture.byteOffset, capture.byteLength);
  expect(view.getUint32(0, true)).toBe(0xa1b2c3d4);
  let data = 0;
  let ends = 0;
  const bad: string[] = [];
  for (let at = 24; at < capture.length; ) {
    const kept = view.getUint32(at + 8, true);
    const f = capture.subarray(at + 16, at + 16 + kept);
    at += 16 + kept;
    if (f.length < 34 || macText(f.subarray(6, 12)) !== macText(server)) continue;
    if (!clients.some((client) => macText(client) === macText(f.subarray(0, 6)))) continue;
    const fv = new DataView(f.buffer, f.byteOffset, f.byteLength);
    if (fv.getUint16(12) !== 0x1de0 || fv.getUint32(18) !== TYPE.data) continue;
    const len = fv.getUint32(22);
    const offset = fv.getBigUint64(26);
    const bytes = f.subarray(34, 26 + len);
    data++;
    const expected =
      offset >= BigInt(image.length) ? new Uint8Array(0) : image.subarray(Number(offset), Number(offset) + 1024);
    if (bytes.length === 0) ends++;
    if (
      len < 8 ||
      bytes.length !== expected.length ||
      Buffer.compare(Buffer.from(bytes), Buffer.from(expected)) !== 0
    ) {
      bad.push(`DATA at ${offset}: ${bytes.length} bytes, expected ${expected.length}`);
    }
  }
  return { data, ends, bad };
}

// --- Processes -----------------------------------------------------------------

function spawnServer(args: string[]) {
  return new ServerProcess(["--json-log", ...args], dir);
}

function vmRssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]);
}

/** Inject `total` frames from `make` in batches, yielding between them so the children get the cores too. */
async function storm(
  link: PcapLink,
  total: number,
  make: () => Uint8Array,
  until?: () => boolean,
): Promise<{ sent: number; beforeUntil: number }> {
  // Made in advance, so the injection itself goes as fast as the link takes it.
  const frames = Array.from({ length: total }, make);
  let sent = 0;
  let beforeUntil = 0;
  while (sent < total || (until && !until())) {
    const batch = sent < total ? frames.slice(sent, sent + 1000) : Array.from({ length: 1000 }, make);
    link.injectBatch(batch);
    sent += batch.length;
    if (until && !until()) beforeUntil = sent;
    await Bun.sleep(1);
  }
  return { sent, beforeUntil };
}

describe.skipIf(!raw.ok)(`bootserver under fire${raw.ok ? "" : ` (skipped: ${raw.why})`}`, () => {
  test(`8 sleds boot through ${HOSTILE_FRAMES} hostile frames; every DATA is the image's bytes; memory stays flat`, async () => {
    await withVethPair(async ({ a, b }) => {
      const server = linkMac(a);
      const attacker = macBytes("02:72:68:64:20:01");
      const sledMacs = Array.from({ length: SLEDS }, (_, i) =>
        macBytes(FIRST_SLED.replace(/00$/, i.toString(16).padStart(2, "0"))),
      );
      const allow = [...sledMacs, attacker].flatMap((mac) => ["--allow", macText(mac)]);
      const capturePath = join(dir, "hostile.pcap");
      const proc = spawnServer(["--pcap", capturePath, ...allow, a, "pool.img", "any"]);
      const injector = PcapLink.open(b, { timeoutMs: 20 });
      try {
        await proc.waitForEvents("listening");
        // The attacker takes an offer, so its READs reach a session thread and are answered.
        const hello = frame(
          Uint8Array.from([255, 255, 255, 255, 255, 255]),
          attacker,
          TYPE.hello,
          new TextEncoder().encode("attacker"),
        );
        injector.inject(hello);
        await proc.waitForEvents("offer");
        const hostile = hostileFrames(1, server, attacker, sledMacs);

        let sledsDone = false;
        // Every DATA held 150 ms in the sleds: a 4 MiB boot then takes at least 4.8 s, so the storm meets the boots (the link takes some 30,000 frames a second here).
        const slow = ["--delay-rate", "1", "--delay-ms", "150"];
        const sleds = runSleds(dir, b, [
          "--json",
          "--checksum-file",
          "pool.csum",
          "--sleds",
          String(SLEDS),
          "--mac",
          FIRST_SLED,
          ...slow,
        ]).finally(() => (sledsDone = true));
        const { sent, beforeUntil: whileBooting } = await storm(
          injector,
          HOSTILE_FRAMES,
          hostile.next,
          () => sledsDone,
        );
        const result = await sleds;
        expect(result.stderr).toBe("");
        expect(result.reports.map((report) => report.outcome)).toEqual(Array(SLEDS).fill("booted"));
        expect(result.exitCode).toBe(0);
        expect(proc.process.exitCode).toBeNull(); // still serving

        // Storms with the sleds gone: memory must not grow with the frames. The first may admit the attacker's
        // READs to a session (a thread of its own, and a new spare): measured across the one after it.
        await storm(injector, HOSTILE_FRAMES, hostile.next);
        await Bun.sleep(1000);
        const rssBefore = vmRssKiB(proc.process.pid);
        const { sent: again } = await storm(injector, HOSTILE_FRAMES, hostile.next);
        await Bun.sleep(1000);
        const rssAfter = vmRssKiB(proc.process.pid);
        expect(proc.process.exitCode).toBeNull();

        proc.process.kill("SIGTERM");
        expect(await proc.exited()).toBe(143);
        expect(await proc.stderr()).toBe("");
        const frames = proc.events().find((record) => record.event === "frames")!;
        const finished = proc.events().filter((record) => record.event === "finished");
        expect(finished.length).toBe(SLEDS);
        const checked = checkRecordedData(capturePath, server, [...sledMacs, attacker], pool);
        expect(checked.bad.slice(0, 5)).toEqual([]);
        expect(checked.data).toBeGreaterThanOrEqual(SLEDS * (IMAGE_SIZE / 1024));
        expect(checked.ends).toBeGreaterThan(0); // the attacker's offsets past the end were answered as such
        expect(rssAfter - rssBefore).toBeLessThan(RSS_MARGIN_KIB);
        console.log(
          `hostile storm: ${sent} frames (${whileBooting} of them before the ${SLEDS} sleds were done), then ${again} more; by kind: ` +
            [...hostile.counts].map(([kind, count]) => `${kind} ${count}`).join(", "),
        );
        console.log(`server counted: ${JSON.stringify(frames)}`);
        console.log(
          `server sent ${checked.data} DATA frames (${checked.ends} end markers), all equal to the image at their offset`,
        );
        console.log(
          `server VmRSS ${rssBefore} KiB before the second storm, ${rssAfter} KiB after (margin ${RSS_MARGIN_KIB} KiB)`,
        );
      } finally {
        injector.close();
        proc.kill();
      }
    }, "rhd");
  }, 120_000);

  test("8 sleds boot with 1% DATA loss, 1% duplication and 1% reordering", async () => {
    await withVethPair(async ({ a, b }) => {
      // 1 MiB: a lost DATA costs its batch the sled's 1 s re-ask timer, and nearly every batch loses one.
      const proc = spawnServer(["--boots", String(SLEDS), a, "small.img", "any"]);
      try {
        await proc.waitForEvents("listening");
        const flags = ["--drop-rate", "0.01", "--duplicate-rate", "0.01", "--reorder-rate", "0.01", "--seed", "3"];
        const result = await runSleds(dir, b, [
          "--json",
          "--checksum-file",
          "small.csum",
          "--sleds",
          String(SLEDS),
          ...flags,
        ]);
        expect(result.reports.map((report) => report.outcome)).toEqual(Array(SLEDS).fill("booted"));
        expect(result.exitCode).toBe(0);
        expect(await proc.exited()).toBe(0);
        const faults = result.reports.reduce(
          (sum, report) => ({
            dropped: sum.dropped + report.faults.dropped,
            duplicated: sum.duplicated + report.faults.duplicated,
            reordered: sum.reordered + report.faults.reordered,
            reasked: sum.reasked + report.reasked,
          }),
          { dropped: 0, duplicated: 0, reordered: 0, reasked: 0 },
        );
        expect(faults.dropped).toBeGreaterThan(0);
        expect(faults.duplicated).toBeGreaterThan(0);
        expect(faults.reordered).toBeGreaterThan(0);
        console.log(`faults over ${SLEDS} sleds: ${JSON.stringify(faults)}`);
      } finally {
        proc.kill();
      }
    }, "rhd");
  }, 120_000);

  test("a server restarted mid-transfer serves the sled on where it was, without a RESET or a new offer", async () => {
    await withVethPair(async ({ a, b }) => {
      const first = spawnServer([a, "big.img", "any"]);
      let second: ServerProcess | undefined;
      try {
        await first.waitForEvents("listening");
        // Every DATA held 20 ms: at most 128 KiB per 20 ms, so 16 MiB takes at least 2.6 s however fast the machine.
        const slow = ["--delay-rate", "1", "--delay-ms", "20"];
        const sled = runSleds(dir, b, ["--json", "--checksum-file", "big.csum", "--restart-on-reset", ...slow]);
        await first.waitForEvents("offer");
        await Bun.sleep(300); // well inside the transfer
        first.process.kill("SIGKILL");
        await first.exited();
        expect(first.events().map((record) => record.event)).not.toContain("finished");
        second = spawnServer(["--boots", "1", a, "big.img", "any"]);
        await second.waitForEvents("resumed", 1, 30_000);
        const result = await sled;
        expect(result.reports.map((report) => report.outcome)).toEqual(["booted"]);
        expect(result.reports[0].resets).toBe(0);
        expect(result.exitCode).toBe(0);
        expect(await second.exited()).toBe(0);
        const events = second.events().map((record) => record.event);
        expect(events).not.toContain("reset");
        expect(events).not.toContain("offer");
        console.log(`restart: first server killed mid-transfer of ${bigPool.length} bytes; the sled booted, no RESET`);
      } finally {
        first.kill();
        second?.kill();
      }
    }, "rhd");
  }, 120_000);
});
