/**
 * A boot server that restarts, or a sled that goes quiet, must not cost a
 * boot: a RESET makes a real sled reboot (netboot.md, "RESET"). Here, without
 * a network: the record of what each sled took (lib/netboot/offer-record.ts),
 * the choice of an image for a READ with no session (lib/netboot/resume.ts),
 * and the dispatcher's part in both. The real server restarted mid-boot is in
 * restart.test.ts.
 */

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { dispatchCounters, FrameDispatcher } from "@ramdisk-tools/netboot/dispatch.ts";
import { MAX_RECORDED_SLEDS, OfferRecord, stateDirectory } from "@ramdisk-tools/netboot/offer-record.ts";
import type { ServedImage } from "@ramdisk-tools/netboot/served-image.ts";
import {
  CHUNK_SIZE,
  encodeFrame,
  formatMac,
  type Mac,
  parseMac,
  READ_SLOTS,
  type ReadRequest,
} from "@ramdisk-tools/protocol/frames.ts";
import { rawImageHandle } from "../../lib/netboot/raw-image.ts";
import { readFits, resumeDecision } from "../../lib/netboot/resume.ts";

const SERVER = parseMac("02:5e:18:00:00:01")!;
const SLED = parseMac("02:5e:18:00:00:a0")!;

/** A READ asking for the batch that starts at `first`, every slot filled in order. */
function batchRead(first: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(first + slot * CHUNK_SIZE);
  return { type: "read", count: BigInt(READ_SLOTS), slots };
}

/** A ServedImage as the record and the resume decision see it: a header, and raw bytes. */
function fakeImage(name: string, imageSize: number, shaByte: number): ServedImage {
  return {
    path: `/images/${name}`,
    name,
    header: { imageSize, targetSize: imageSize * 2, sha256: new Uint8Array(32).fill(shaByte) },
    bytes: rawImageHandle(imageSize),
    stamp: { size: 0, mtimeMs: 0, ino: 0, dev: 0 },
  } as unknown as ServedImage;
}

describe("the record of offers", () => {
  const dirs: string[] = [];
  const scratch = () => {
    const made = mkdtempSync(join(tmpdir(), "offer-record-test-"));
    dirs.push(made);
    return made;
  };
  afterAll(() => {
    for (const made of dirs) rmSync(made, { recursive: true, force: true });
  });

  test("is written whole on each change and read back by the next server; HELLO or FINISHED take a sled out", () => {
    const dir = scratch();
    const a = fakeImage("a.img", 2 * MIB, 0xaa);
    const record = OfferRecord.open(join(dir, "state"), "eth9", 1000, (message) => {
      throw new Error(message);
    });
    const file = join(dir, "state", "offers-eth9.json");
    expect(JSON.parse(readFileSync(file, "utf8"))).toEqual({ version: 1, sleds: [] });
    record.remember(SLED, a, 5000);
    const other = parseMac("02:5e:18:00:00:a1")!;
    record.remember(other, a, 6000);
    const written = JSON.parse(readFileSync(file, "utf8"));
    expect(written.sleds[0]).toEqual({
      sled: formatMac(SLED),
      path: "/images/a.img",
      sha256: "aa".repeat(32),
      imageSize: 2 * MIB,
      ramdiskSize: 4 * MIB,
      offeredAt: 5000,
    });
    record.forget(other);
    expect(JSON.parse(readFileSync(file, "utf8")).sleds).toHaveLength(1);
    // Nothing but the record in the directory: no temporary file left behind.
    expect(readdirSync(join(dir, "state"))).toEqual(["offers-eth9.json"]);

    const again = OfferRecord.open(join(dir, "state"), "eth9", 7000, () => {});
    expect(again.size).toBe(1);
    expect(again.get(SLED)).toMatchObject({ sha256: "aa".repeat(32), imageSize: 2 * MIB });
    // A day later it has gone: no boot takes a day.
    expect(OfferRecord.open(join(dir, "state"), "eth9", 5000 + 25 * 3600_000, () => {}).size).toBe(0);
  });

  test("a damaged record is reported and started over; a directory that cannot be made is an error", () => {
    const dir = scratch();
    writeFileSync(join(dir, "offers-eth9.json"), '{"version":1,"sleds":[{"sled":"nonsense"}]}');
    const problems: string[] = [];
    const record = OfferRecord.open(dir, "eth9", 0, (message) => problems.push(message));
    expect(record.size).toBe(0);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/offers-eth9\.json is not a record of offers \(a malformed entry/);
    writeFileSync(join(dir, "file"), "");
    expect(() => OfferRecord.open(join(dir, "file", "sub"), "eth9", 0, () => {})).toThrow(
      /^cannot create the state directory .*file\/sub: /,
    );
  });

  test("keeps at most MAX_RECORDED_SLEDS sleds, the oldest going first", () => {
    const record = OfferRecord.inMemory();
    const image = fakeImage("a.img", MIB, 1);
    const hex = (byte: number) => byte.toString(16).padStart(2, "0");
    const mac = (i: number) => parseMac(`02:00:00:00:${hex((i >> 8) & 255)}:${hex(i & 255)}`)!;
    for (let i = 0; i <= MAX_RECORDED_SLEDS; i++) record.remember(mac(i), image, i);
    expect(record.size).toBe(MAX_RECORDED_SLEDS);
    expect(record.get(mac(0))).toBeUndefined();
    expect(record.get(mac(MAX_RECORDED_SLEDS))).toBeDefined();
  });

  test("lives in --state-dir, else systemd's $STATE_DIRECTORY, else /var/lib/ramdisk-tools/bootserver", () => {
    expect(stateDirectory("/srv/x", { STATE_DIRECTORY: "/var/lib/a" })).toBe("/srv/x");
    expect(stateDirectory(undefined, { STATE_DIRECTORY: "/var/lib/a:/var/lib/b" })).toBe("/var/lib/a");
    expect(stateDirectory(undefined, {})).toBe("/var/lib/ramdisk-tools/bootserver");
  });
});

describe("which image a READ with no session reads", () => {
  const a = fakeImage("a.img", 2 * MIB, 0xaa);
  const b = fakeImage("b.img", 4 * MIB, 0xbb);
  const record = OfferRecord.inMemory();

  test("a recorded sled reads the image of that identity, whatever its name now, if its READ fits", () => {
    record.remember(SLED, a, 0);
    const entry = { ...record.get(SLED)!, image: undefined };
    const renamed = { ...fakeImage("renamed.img", 2 * MIB, 0xaa) };
    expect(resumeDecision(entry, batchRead(MIB), [b, renamed])).toMatchObject({ image: renamed });
    expect(resumeDecision(entry, batchRead(2 * MIB), [b, renamed])).toEqual({
      reason: "it asked for offset 2227200, which does not fit the 2097152-byte renamed.img it was offered",
    });
    expect(resumeDecision(entry, batchRead(0), [b])).toEqual({
      reason: `it was offered /images/a.img (sha256 ${"aa".repeat(32)}), which this server no longer serves`,
    });
  });

  test("without a record, the one image with room for every offset asked, else nothing", () => {
    expect(resumeDecision(undefined, batchRead(3 * MIB), [a, b])).toMatchObject({ image: b });
    expect(resumeDecision(undefined, batchRead(0), [a, b])).toEqual({
      reason: "no record of it, and its READ (up to offset 130048) fits 2 images served (a.img, b.img)",
    });
    expect(resumeDecision(undefined, batchRead(4 * MIB), [a, b])).toEqual({
      reason: "no record of it, and its READ (up to offset 4324352) fits none of the images served",
    });
    const odd = batchRead(0);
    odd.slots[3] = 5000n;
    expect(readFits(odd, 4 * MIB)).toBe(false);
  });

  test("the dispatcher asks about such a READ once, holds the latest, and serves or RESETs as told", () => {
    const sent: Uint8Array[] = [];
    const asked: Mac[] = [];
    const resets: string[] = [];
    const frames = new FrameDispatcher(
      SERVER,
      null,
      {
        send: (frame) => sent.push(frame),
        hello: () => {},
        finished: () => {},
        unknown: (sled) => asked.push(sled),
        reset: (_, reason) => resets.push(reason),
      },
      dispatchCounters(),
    );
    frames.dispatch(encodeFrame(SERVER, SLED, batchRead(0)));
    frames.dispatch(encodeFrame(SERVER, SLED, batchRead(0)));
    expect(asked).toHaveLength(1);
    expect(sent).toEqual([]);
    const inbox = { served: 0, reads: [] as ReadRequest[] };
    frames.resume(SLED, rawImageHandle(MIB));
    frames.attach(SLED, {
      serve: () => inbox.served++,
      read: (read) => inbox.reads.push(read),
      close: () => {},
    });
    expect(inbox.served).toBe(1);
    expect(inbox.reads).toHaveLength(1);
    expect(frames.counters.get("resumed")).toBe(1);
    // A READ for another server's MAC is not ours to answer, however well it fits.
    const other = parseMac("02:5e:18:00:00:02")!;
    const stranger = parseMac("02:5e:18:00:00:b0")!;
    frames.dispatch(encodeFrame(other, stranger, batchRead(0)));
    expect(asked).toHaveLength(1);
    expect(frames.counters.get("notForUs")).toBe(1);
    frames.dispatch(encodeFrame(SERVER, stranger, batchRead(0)));
    frames.reset(stranger, "nothing explains it");
    expect(sent).toHaveLength(1);
    expect(resets).toEqual(["nothing explains it"]);
    expect(frames.counters.get("resets")).toBe(1);
  });
});

describe("a resumed sled turned away", () => {
  test("asks for admission again on its next READ, as an offered sled does", () => {
    const admits: Mac[] = [];
    const frames = new FrameDispatcher(SERVER, null, {
      send: () => {},
      hello: () => {},
      finished: () => {},
      admit: (sled) => admits.push(sled),
      unknown: () => {},
    });
    frames.dispatch(encodeFrame(SERVER, SLED, batchRead(0)));
    frames.resume(SLED, rawImageHandle(MIB));
    frames.dispatch(encodeFrame(SERVER, SLED, batchRead(0)));
    // The main thread starts a resumed sled's session itself: no admit asked for.
    expect(admits).toEqual([]);
    frames.refuse(SLED);
    frames.dispatch(encodeFrame(SERVER, SLED, batchRead(0)));
    expect(admits).toEqual([SLED]);
  });
});
