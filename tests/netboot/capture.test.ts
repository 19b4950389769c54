/**
 * `bootserver --pcap FILE` and `bootserver --json-log`, end to end: a real
 * boot of an emulated sled (`bun apps/sled.ts`) over a veth pair made for
 * the test, recorded by the server, then read back by Debian's tshark with
 * wireshark/oxide-netboot.lua. Every DATA in the capture is compared with the
 * raw pool python3 wrote, and the OFFER's checksum with python3's hashlib.
 * The JSON log of the same boot is parsed line by line.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  BROADCAST_MAC,
  decodeFrame,
  encodeFrame,
  type Frame,
  type Mac,
  type Message,
  parseMac,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { commandOutput, programOutput, python, runProgram, startProgram } from "../helpers/common.ts";

const DISSECTOR = join(ROOT, "wireshark", "oxide-netboot.lua");
const TSHARK = Bun.which("tshark");
const POOL_SIZE = 2 * 1024 * 1024;
const raw = canUseRawNetwork();
const skip = !raw.ok || !TSHARK;
const why = !raw.ok ? raw.why : "tshark is not installed (apt-get install tshark)";

let dir = "";
let pool: Uint8Array;
let poolSha256 = "";

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "netboot-capture-"));
  poolSha256 = python(
    // Random nibbles: no pattern, yet compressible, as mkimage -z refuses input a zlib stream would make larger.
    "import hashlib, random, sys\nb = bytes(random.Random(5).choices(range(16), k=int(sys.argv[2])))\n" +
      "open(sys.argv[1], 'wb').write(b)\nprint(hashlib.sha256(b).hexdigest())",
    join(dir, "pool.raw"),
    String(POOL_SIZE),
  ).trim();
  pool = new Uint8Array(readFileSync(join(dir, "pool.raw")));
  await programOutput("mkimage", ["-i", "pool.raw", "-o", "pool.img", "-O", "csum", "-N", "capture", "-s", "8", "-z"], {
    cwd: dir,
  });
}, 60_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Send with `send` (again every second) until a frame of `type` for `me` arrives. */
async function expectFrame(
  link: PcapLink,
  me: Mac,
  type: Message["type"],
  send?: () => void,
  timeoutMs = 15_000,
): Promise<Frame> {
  const deadline = Date.now() + timeoutMs;
  let sentAt = 0;
  while (Date.now() < deadline) {
    if (send && Date.now() - sentAt > 1000) {
      send();
      sentAt = Date.now();
    }
    const bytes = link.next();
    if (!bytes) {
      await Bun.sleep(0);
      continue;
    }
    const decoded = decodeFrame(bytes);
    if (decoded.ok && decoded.frame.message.type === type && sameMac(decoded.frame.destination, me))
      return decoded.frame;
  }
  throw new Error(`no ${type} within ${timeoutMs} ms`);
}

/** tshark's fields of every netboot frame, one object per frame. */
async function tsharkFields(path: string, fields: string[]): Promise<Record<string, string>[]> {
  const out = await commandOutput([
    TSHARK!,
    "-r",
    path,
    "-X",
    `lua_script:${DISSECTOR}`,
    "-Y",
    "oxide_netboot",
    "-T",
    "fields",
    "-E",
    "separator=/t",
    ...fields.flatMap((f) => ["-e", f]),
  ]);
  return out
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => Object.fromEntries(line.split("\t").map((value, index) => [fields[index]!, value])));
}

describe.skipIf(skip)(`bootserver --pcap and --json-log${skip ? ` (skipped: ${why})` : ""}`, () => {
  test("records a whole boot that tshark decodes frame by frame, and logs it as JSON lines", async () => {
    await withVethPair(async ({ a, b }) => {
      const capturePath = join(dir, "boot.pcap");
      const server = runProgram(
        "bootserver",
        ["-s", "-t", "60", "--pcap", capturePath, "--json-log", a, "pool.img", "any"],
        { cwd: dir },
      );
      await Bun.sleep(1500); // the server opens its link; a sled says HELLO every 4 s anyway
      const sled = runProgram("sled", [b, "--checksum-file", "csum", "--timeout", "60", "--json"], { cwd: dir });
      const [
        { exitCode: sledExit, stdout: sledOut, stderr: sledErr },
        { exitCode: serverExit, stdout: serverOut, stderr: serverErr },
      ] = await Promise.all([sled, server]);
      expect({ sledExit, sledErr }).toEqual({ sledExit: 0, sledErr: "" });
      expect({ serverExit, serverErr }).toEqual({ serverExit: 0, serverErr: "" });
      const sledReport = JSON.parse(sledOut.trim().split("\n").at(-1)!);
      expect(sledReport.outcome).toBe("booted");

      // The JSON log: every line one object with an event and an ISO time.
      const records = serverOut
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line));
      for (const record of records) {
        expect(typeof record.event).toBe("string");
        expect(new Date(record.time).toISOString()).toBe(record.time);
      }
      const events = records.map((record) => record.event);
      expect(events[0]).toBe("listening");
      for (const event of ["hello", "offer", "session-start", "finished", "frames"]) expect(events).toContain(event);
      expect(events.indexOf("hello")).toBeLessThan(events.indexOf("offer"));
      const offer = records.find((record) => record.event === "offer");
      expect(offer).toMatchObject({
        image: "pool.img",
        image_size: POOL_SIZE,
        sha256: poolSha256,
        target_size: 8 * 1024 * 1024,
      });
      const finished = records.find((record) => record.event === "finished");
      expect(finished).toMatchObject({ image: "pool.img", bytes: POOL_SIZE, boots: 1 });
      expect(finished.seconds).toBeGreaterThan(0);
      expect(finished.mb_per_second).toBeGreaterThan(0);
      expect(Number.isInteger(finished.reasked)).toBe(true);
      console.log(`json-log: ${records.length} lines, events ${[...new Set(events)].join(", ")}`);

      // The capture: renamed into place, no temporary left beside it.
      expect(readdirSync(dir).filter((name) => name.startsWith(".boot.pcap"))).toEqual([]);
      const frames = await tsharkFields(capturePath, [
        "eth.src",
        "eth.dst",
        "oxide_netboot.type",
        "oxide_netboot.len",
        "oxide_netboot.offer.image_size",
        "oxide_netboot.offer.sha256",
        "oxide_netboot.read.count",
        "oxide_netboot.read.offset",
        "oxide_netboot.data.offset",
        "oxide_netboot.data.length",
        "oxide_netboot.data.bytes",
        "_ws.expert",
      ]);
      const ofType = (type: string) => frames.filter((frame) => frame["oxide_netboot.type"] === type);
      const [hellos, offers, reads, datas, finisheds] = [
        "0x00009001",
        "0x00009102",
        "0x00009003",
        "0x00009104",
        "0x00009005",
      ].map(ofType);
      expect(hellos!.length).toBeGreaterThanOrEqual(1);
      expect(offers!.length).toBeGreaterThanOrEqual(1);
      expect(finisheds!.length).toBe(1);
      expect(offers![0]!["oxide_netboot.offer.image_size"]).toBe(String(POOL_SIZE));
      expect(offers![0]!["oxide_netboot.offer.sha256"]!.replaceAll(":", "")).toBe(poolSha256);
      expect(offers![0]!["oxide_netboot.len"]).toBe("176");
      const batches = Math.ceil(POOL_SIZE / (128 * 1024));
      expect(reads!.length).toBeGreaterThanOrEqual(batches);
      for (const read of reads!) {
        expect(read["oxide_netboot.len"]).toBe("1032");
        expect(Number(read["oxide_netboot.read.count"])).toBeLessThanOrEqual(128);
      }

      // Every DATA carries the pool's bytes at its offset.
      const chunks = POOL_SIZE / 1024;
      const full = datas!.filter((frame) => frame["oxide_netboot.data.length"] !== "0");
      const ends = datas!.filter((frame) => frame["oxide_netboot.data.length"] === "0");
      const offsets = new Set<number>();
      for (const frame of full) {
        const offset = Number(frame["oxide_netboot.data.offset"]);
        const bytes = Buffer.from(frame["oxide_netboot.data.bytes"]!.replaceAll(":", ""), "hex");
        expect(Number(frame["oxide_netboot.data.length"])).toBe(bytes.length);
        expect(Buffer.compare(bytes, Buffer.from(pool.subarray(offset, offset + 1024)))).toBe(0);
        offsets.add(offset);
      }
      expect(offsets.size).toBe(chunks);
      expect(Math.max(...offsets)).toBe(POOL_SIZE - 1024);
      // One DATA per chunk, again for each re-ask, and again for each copy fast re-send sent; every DATA the
      // session counted is in the capture.
      expect(full.length).toBeGreaterThanOrEqual(chunks + finished.reasked);
      expect(full.length).toBeLessThanOrEqual(chunks + finished.reasked + finished.resent_frames);
      expect(datas!.length).toBe(finished.data_frames);
      // An end DATA answers each offset asked at or past the end (the emulator asks none when the image is whole batches).
      const askedPastEnd = reads!
        .flatMap((read) => (read["oxide_netboot.read.offset"] ?? "").split(","))
        .filter((offset) => offset !== "" && BigInt(offset) >= BigInt(POOL_SIZE));
      expect(ends.length).toBe(askedPastEnd.length);
      // Frames the sled sent come from it; the server's from the server.
      const sledMac = hellos![0]!["eth.src"];
      expect(new Set(reads!.map((frame) => frame["eth.src"]))).toEqual(new Set([sledMac]));
      expect(new Set(datas!.map((frame) => frame["eth.dst"]))).toEqual(new Set([sledMac]));
      console.log(
        `capture: ${frames.length} netboot frames: ${hellos!.length} HELLO, ${offers!.length} OFFER, ${reads!.length} READ, ` +
          `${full.length} DATA + ${ends.length} end DATA (${chunks} chunks, ${finished.reasked} re-asked), ${finisheds!.length} FINISHED`,
      );
    }, "rhd");
  }, 120_000);

  test("SIGTERM closes the capture: the file appears, whole, and the server exits 143", async () => {
    await withVethPair(async ({ a, b }) => {
      const capturePath = join(dir, "term.pcap");
      const server = startProgram("bootserver", ["--pcap", capturePath, a, "pool.img", "any"], { cwd: dir });
      await Bun.sleep(1500);
      const sled = runProgram("sled", [b, "--checksum-file", "csum", "--timeout", "60"], { cwd: dir });
      expect((await sled).exitCode).toBe(0);
      // A client played here asks for the last chunk and one past the end, then READs without a session.
      const client = PcapLink.open(b, { timeoutMs: 20 });
      const answers: string[] = [];
      try {
        const me = parseMac("02:72:68:64:00:01")!;
        const hello = encodeFrame(BROADCAST_MAC, me, { type: "hello", text: new TextEncoder().encode("capture test") });
        const offer = await expectFrame(client, me, "offer", () => client.inject(hello));
        const server = offer.source;
        const slots = new BigUint64Array(128);
        slots[0] = BigInt(POOL_SIZE - 1024);
        slots[1] = BigInt(POOL_SIZE);
        client.inject(encodeFrame(server, me, { type: "read", count: 2n, slots }));
        for (let i = 0; i < 2; i++) {
          const data = await expectFrame(client, me, "data");
          if (data.message.type === "data") answers.push(`${data.message.offset}:${data.message.bytes.length}`);
        }
        client.inject(encodeFrame(server, me, { type: "finished" }));
        await Bun.sleep(300);
        client.inject(encodeFrame(server, me, { type: "read", count: 1n, slots }));
        await expectFrame(client, me, "reset");
      } finally {
        client.close();
      }
      expect(answers.sort()).toEqual([`${POOL_SIZE - 1024}:1024`, `${POOL_SIZE}:0`].sort());
      expect(existsSync(capturePath)).toBe(false); // not until the server stops
      server.process.kill("SIGTERM");
      expect(await server.exited()).toBe(143);
      expect(await server.stderr()).toBe("");
      const frames = await tsharkFields(capturePath, [
        "oxide_netboot.type",
        "oxide_netboot.data.offset",
        "oxide_netboot.data.length",
        "_ws.expert.message",
      ]);
      const types = frames.map((frame) => frame["oxide_netboot.type"]);
      expect(types.filter((type) => type === "0x00009005").length).toBe(2);
      expect(types).toContain("0x00009106"); // the RESET
      expect(types.filter((type) => type === "0x00009104").length).toBeGreaterThanOrEqual(POOL_SIZE / 1024 + 2);
      const end = frames.filter(
        (frame) => frame["oxide_netboot.type"] === "0x00009104" && frame["oxide_netboot.data.length"] === "0",
      );
      expect(end.map((frame) => frame["oxide_netboot.data.offset"])).toEqual([String(POOL_SIZE)]);
      expect(end[0]!["_ws.expert.message"]).toMatch(/end of image/i);
      expect(readdirSync(dir).filter((name) => name.startsWith(".term.pcap"))).toEqual([]);
    }, "rhd");
  }, 120_000);
});
