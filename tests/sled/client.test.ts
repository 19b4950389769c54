/**
 * The sled emulator against docs/netboot.md: the state machine with a
 * fake clock and frames built by the test, and the fault injector. Expected
 * digests come from python3's hashlib. The `sled` program over a veth pair is
 * in program.test.ts.
 */

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import {
  encodeFrame,
  formatMac,
  type Message,
  parseMac,
  READ_SLOTS,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { DataFaults, REORDER_HOLD_MS } from "@ramdisk-tools/sled/faults.ts";
import { hex } from "../helpers/common.ts";
import { SERVER, SLED } from "../helpers/frames.ts";
import { answer, data, imageOf, offer, pythonSha256, serve, testSled } from "../helpers/sled.ts";

const OTHER_SERVER = parseMac("02:5e:00:00:00:02")!;
const BATCH = 128 * 1024;

// Digests come from a python3 process per test; on a busy machine that alone can pass bun's default 5 s.
setDefaultTimeout(30_000);

function padded(image: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(image.subarray(0, length));
  return out;
}

describe("discovery", () => {
  test("a HELLO broadcast at power-on and every 4 s: ASCII text, no NUL, from the sled's MAC", () => {
    const sled = testSled(new Uint8Array(32));
    sled.session.start(0);
    expect(sled.sent).toHaveLength(1);
    const [hello] = sled.sent;
    expect(formatMac(hello!.destination)).toBe("ff:ff:ff:ff:ff:ff");
    expect(formatMac(hello!.source)).toBe(formatMac(SLED));
    const text = (hello!.message as Extract<Message, { type: "hello" }>).text;
    expect(text.length).toBeGreaterThan(0);
    expect(text.every((byte) => byte >= 0x20 && byte < 0x7f)).toBe(true);
    for (const [now, hellos] of [
      [1000, 1],
      [3999, 1],
      [4000, 2],
      [7999, 2],
      [8000, 3],
      [12000, 4],
    ] as const) {
      sled.session.tick(now);
      expect(sled.ofType("hello")).toHaveLength(hellos);
    }
    expect(sled.session.phase).toBe("discovery");
  });

  const wanted = imageOf(32, 9);
  const refused: [string, Uint8Array][] = [
    ["another SHA-256", offer({ sha256: imageOf(32, 10) })],
    ["an image below 1 MiB", offer({ sha256: wanted, imageSize: MIB - 1024, ramdiskSize: 2 * MIB })],
    ["a ramdisk below 1 MiB", offer({ sha256: wanted, imageSize: MIB, ramdiskSize: MIB - 1 })],
    ["an image larger than the ramdisk", offer({ sha256: wanted, imageSize: 2 * MIB + BATCH, ramdiskSize: 2 * MIB })],
    ["a dataset without NUL at byte 127", offer({ sha256: wanted, dataset: new Uint8Array(128).fill(0x61) })],
  ];
  for (const [what, frame] of refused) {
    test(`an OFFER with ${what} is ignored and the sled keeps saying HELLO`, () => {
      const sled = testSled(wanted);
      sled.session.start(0);
      sled.session.receive(frame, 100);
      expect(sled.session.phase).toBe("discovery");
      expect(sled.ofType("read")).toHaveLength(0);
      sled.session.tick(4000);
      expect(sled.ofType("hello")).toHaveLength(2);
      expect(sled.session.report(4000).offersRefused).toBe(1);
    });
  }

  test("an OFFER of len 175 is dropped before any check", () => {
    const sled = testSled(wanted);
    sled.session.start(0);
    const frame = offer({ sha256: wanted });
    new DataView(frame.buffer).setUint32(22, 175);
    sled.session.receive(frame, 10);
    expect(sled.session.phase).toBe("discovery");
    expect(sled.session.report(10).invalid).toBe(1);
  });

  test("an OFFER at the edges (image = ramdisk = 1 MiB, 127-byte dataset name) is accepted with a READ to its sender", () => {
    const sled = testSled(wanted);
    sled.session.start(0);
    const dataset = new Uint8Array(128).fill(0x61);
    dataset[127] = 0;
    sled.session.receive(offer({ sha256: wanted, imageSize: MIB, ramdiskSize: MIB, dataset }, OTHER_SERVER), 50);
    expect(sled.session.phase).toBe("transfer");
    const reads = sled.sent.filter((frame) => frame.message.type === "read");
    expect(reads).toHaveLength(1);
    expect(formatMac(reads[0]!.destination)).toBe(formatMac(OTHER_SERVER));
    expect(formatMac(reads[0]!.source)).toBe(formatMac(SLED));
    sled.session.tick(4000);
    expect(sled.ofType("hello")).toHaveLength(1);
  });
});

describe("transfer", () => {
  const image = imageOf(MIB, 3);
  const checksum = pythonSha256(image);

  function accepted() {
    const sled = testSled(checksum);
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum }), 0);
    return sled;
  }

  test("the first READ fills all 128 slots in order: 0, 1024, ... 130048, count 128", () => {
    const read = accepted().lastRead();
    expect(read.count).toBe(128n);
    expect(Array.from(read.slots)).toEqual(Array.from({ length: READ_SLOTS }, (_, slot) => BigInt(slot * 1024)));
  });

  test("no new offsets until every slot is answered; then the next batch starts at 128 KiB", () => {
    const sled = accepted();
    for (let slot = 0; slot < 127; slot++) sled.session.receive(answer(image, BigInt(slot * 1024)), 5);
    expect(sled.ofType("read")).toHaveLength(1);
    sled.session.receive(answer(image, 127n * 1024n), 6);
    expect(sled.ofType("read")).toHaveLength(2);
    expect(Array.from(sled.lastRead().slots)).toEqual(
      Array.from({ length: READ_SLOTS }, (_, slot) => BigInt(BATCH + slot * 1024)),
    );
  });

  test("a slot unanswered for over a second is asked again in its own position, others zero, count = how many", () => {
    const sled = accepted();
    const missing = new Set([3, 77, 127]);
    for (let slot = 0; slot < READ_SLOTS; slot++) {
      if (!missing.has(slot)) sled.session.receive(answer(image, BigInt(slot * 1024)), 10);
    }
    sled.session.tick(1000);
    expect(sled.ofType("read")).toHaveLength(1);
    sled.session.tick(1001);
    const reask = sled.lastRead();
    expect(sled.ofType("read")).toHaveLength(2);
    expect(reask.count).toBe(3n);
    const expected = Array.from({ length: READ_SLOTS }, (_, slot) => (missing.has(slot) ? BigInt(slot * 1024) : 0n));
    expect(Array.from(reask.slots)).toEqual(expected);

    sled.session.receive(answer(image, 77n * 1024n), 1500);
    sled.session.tick(2001);
    expect(sled.ofType("read")).toHaveLength(2);
    sled.session.tick(2002);
    expect(sled.lastRead().count).toBe(2n);
    expect(requestedOffsets(sled.lastRead())).toEqual([3n * 1024n, 127n * 1024n]);
    expect(sled.session.report(2002).reasked).toBe(5);
  });

  test("a lone re-ask of offset 0 is a READ of count 1 with every slot zero", () => {
    const sled = accepted();
    for (let slot = 1; slot < READ_SLOTS; slot++) sled.session.receive(answer(image, BigInt(slot * 1024)), 10);
    sled.session.tick(1200);
    const reask = sled.lastRead();
    expect(reask.count).toBe(1n);
    expect(reask.slots.every((offset) => offset === 0n)).toBe(true);
  });

  test("DATA is dropped unless its offset waits in a slot: duplicates, unasked offsets, other MACs, bad len or magic, cut short", () => {
    const sled = accepted();
    sled.session.receive(answer(image, 0n), 1);
    sled.session.receive(answer(image, 0n), 2);
    sled.session.receive(data(512, image.subarray(512, 1536)), 3);
    sled.session.receive(data(BATCH, image.subarray(BATCH, BATCH + 1024)), 4);
    sled.session.receive(data(2048, image.subarray(2048, 3072), OTHER_SERVER), 5);
    const short = data(1024, image.subarray(1024, 2048));
    new DataView(short.buffer).setUint32(22, 7);
    sled.session.receive(short, 6);
    const long = new Uint8Array(26 + 1477);
    long.set(data(1024, image.subarray(1024, 2048)).subarray(0, 26 + 8 + 1024));
    new DataView(long.buffer).setUint32(22, 1477);
    sled.session.receive(long, 7);
    const cut = data(1024, image.subarray(1024, 2048)).subarray(0, 26 + 8 + 1000);
    sled.session.receive(cut, 8);
    const badMagic = data(1024, image.subarray(1024, 2048));
    badMagic[17] = badMagic[17]! ^ 1;
    sled.session.receive(badMagic, 9);
    const report = sled.session.report(9);
    expect(report.bytes).toBe(1024);
    expect(report.dataDropped).toBe(4);
    expect(report.invalid).toBe(4);
    // Slot 1 (offset 1024) was never filled by the refused frames: it is still asked for.
    sled.session.tick(1500);
    expect(requestedOffsets(sled.lastRead())).toContain(1024n);
  });

  test("an OFFER from another server during transfer is ignored", () => {
    const sled = accepted();
    sled.session.receive(offer({ sha256: checksum }, OTHER_SERVER), 1);
    expect(sled.session.report(1).ignored).toBe(1);
    expect(sled.ofType("read")).toHaveLength(1);
  });

  test("a 1 MiB image boots: 8 batches, FINISHED once to the server, no 9th READ", () => {
    const sled = accepted();
    serve(sled, image, 10);
    expect(sled.session.outcome).toBe("booted");
    expect(sled.ofType("read")).toHaveLength(8);
    const finished = sled.sent.filter((frame) => frame.message.type === "finished");
    expect(finished).toHaveLength(1);
    expect(formatMac(finished[0]!.destination)).toBe(formatMac(SERVER));
    sled.session.receive(answer(image, 0n), 20);
    sled.session.tick(10_000);
    expect(sled.sent.filter((frame) => frame.message.type === "finished")).toHaveLength(1);
    const report = sled.session.report(20);
    expect(report).toMatchObject({ bytes: MIB, batches: 8, reasked: 0, detail: "" });
  });

  test("a corrupted chunk makes a checksum mismatch, and the digest named is python's of the bytes received", () => {
    const sled = accepted();
    const bad = image.slice();
    bad[5000] = bad[5000]! ^ 1;
    serve(sled, bad, 10);
    expect(sled.session.outcome).toBe("checksum mismatch");
    expect(sled.session.report(10).detail).toContain(hex(pythonSha256(bad)));
  });

  test("an empty DATA inside the image ends it early: FINISHED after that batch, length 256 KiB, mismatch", () => {
    const sled = accepted();
    serve(sled, image, 10, (offset) => offset < BigInt(BATCH));
    for (const offset of requestedOffsets(sled.lastRead())) {
      sled.session.receive(
        offset === BigInt(BATCH + 5 * 1024) ? data(Number(offset), new Uint8Array(0)) : answer(image, offset),
        11,
      );
    }
    expect(sled.ofType("read")).toHaveLength(2);
    expect(sled.ofType("finished")).toHaveLength(1);
    expect(sled.session.outcome).toBe("checksum mismatch");
    const received = padded(image, 2 * BATCH);
    received.fill(0, BATCH + 5 * 1024, BATCH + 6 * 1024);
    expect(sled.session.report(11).detail).toContain(
      `first ${2 * BATCH} ramdisk bytes is ${hex(pythonSha256(received))}`,
    );
  });
});

describe("end of an image that is not a multiple of 128 KiB", () => {
  const image = imageOf(MIB + 1000, 4);
  const length = MIB + BATCH;

  test("the last batch is asked in full, past the end; empty DATA frees those slots; the digest covers trailing zeros, so it is refused", () => {
    const checksum = pythonSha256(image);
    const sled = testSled(checksum);
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum, imageSize: image.length, ramdiskSize: 2 * MIB }), 0);
    serve(sled, image, 1);
    const reads = sled.ofType("read");
    expect(reads).toHaveLength(9);
    expect(reads.at(-1)!.slots.at(-1)).toBe(BigInt(length - 1024));
    expect(sled.ofType("finished")).toHaveLength(1);
    expect(sled.session.outcome).toBe("checksum mismatch");
    expect(sled.session.report(1).detail).toContain(hex(pythonSha256(padded(image, length))));
    expect(sled.session.report(1).detail).toContain("not a multiple of 128 KiB");
  });

  test("a sled whose boot archive holds the digest of the image plus zeros to 128 KiB boots from it", () => {
    const checksum = pythonSha256(padded(image, length));
    const sled = testSled(checksum);
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum, imageSize: image.length, ramdiskSize: 2 * MIB }), 0);
    serve(sled, image, 1);
    expect(sled.session.outcome).toBe("booted");
  });

  test("a slot past the end left unanswered is asked again, not skipped", () => {
    const checksum = pythonSha256(padded(image, length));
    const sled = testSled(checksum);
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum, imageSize: image.length, ramdiskSize: 2 * MIB }), 0);
    serve(sled, image, 1, (offset) => offset < BigInt(length - 1024));
    expect(sled.session.outcome).toBeNull();
    sled.session.tick(1002);
    expect(requestedOffsets(sled.lastRead())).toEqual([BigInt(length - 1024)]);
    sled.session.receive(data(length - 1024, new Uint8Array(0)), 1003);
    expect(sled.session.outcome).toBe("booted");
  });
});

test("bytes a DATA carries beyond 1024 land in the ramdisk, across a batch boundary too, as a whole-ramdisk model says", () => {
  const image = imageOf(MIB, 5);
  const long = imageOf(1468, 6);
  /** The answers of one batch, in arrival order: some longer or shorter than 1024 bytes, one pair swapped. */
  const batchAnswers = (start: number): [number, Uint8Array][] => {
    const answers: [number, Uint8Array][] = [];
    for (let offset = start; offset < start + BATCH; offset += 1024) {
      // The last chunk of batch 0 runs 444 bytes into batch 1, whose first chunk then covers only 100 of them.
      const bytes =
        offset === BATCH - 1024
          ? long
          : offset === BATCH
            ? image.subarray(offset, offset + 100)
            : image.subarray(offset, offset + 1024);
      answers.push([offset, offset === 3072 ? image.subarray(3072, 3072 + 1400) : bytes]);
    }
    // 4096 arrives before 3072, whose 1400 bytes then overwrite the start of it.
    if (start === 0) [answers[3], answers[4]] = [answers[4]!, answers[3]!];
    return answers;
  };
  // The model: one whole zeroed ramdisk, every DATA written at its offset in arrival order.
  const ramdisk = new Uint8Array(MIB + BATCH);
  for (let start = 0; start < MIB; start += BATCH)
    for (const [offset, bytes] of batchAnswers(start)) ramdisk.set(bytes, offset);
  const wanted = pythonSha256(ramdisk.subarray(0, MIB));
  expect(hex(wanted)).not.toBe(hex(pythonSha256(image)));

  const sled = testSled(wanted);
  sled.session.start(0);
  sled.session.receive(offer({ sha256: wanted }), 0);
  for (let batch = 0; batch < sled.ofType("read").length; batch++) {
    const asked = requestedOffsets(sled.ofType("read")[batch]!).map(Number);
    const answers = batchAnswers(batch * BATCH);
    expect(asked).toEqual(answers.map(([offset]) => offset).sort((a, b) => a - b));
    for (const [offset, bytes] of answers) sled.session.receive(data(offset, bytes), 1);
  }
  expect(sled.session.outcome).toBe("booted");
});

describe("RESET and timeout", () => {
  const checksum = imageOf(32, 11);

  test("RESET from the server ends the attempt as reset; a RESET from another MAC is ignored", () => {
    const sled = testSled(checksum);
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum }), 0);
    sled.session.receive(encodeFrame(SLED, OTHER_SERVER, { type: "reset" }), 1);
    expect(sled.session.phase).toBe("transfer");
    sled.session.receive(encodeFrame(SLED, SERVER, { type: "reset" }), 2);
    expect(sled.session.outcome).toBe("reset");
    expect(sled.ofType("finished")).toHaveLength(0);
  });

  test("with restartOnReset the sled says HELLO again and can accept a new OFFER", () => {
    const sled = testSled(checksum, { restartOnReset: true });
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum }), 0);
    sled.session.receive(encodeFrame(SLED, SERVER, { type: "reset" }), 2);
    expect(sled.session.phase).toBe("discovery");
    expect(sled.ofType("hello")).toHaveLength(2);
    sled.session.receive(offer({ sha256: checksum }, OTHER_SERVER), 3);
    expect(sled.session.phase).toBe("transfer");
    expect(formatMac(sled.sent.at(-1)!.destination)).toBe(formatMac(OTHER_SERVER));
    expect(sled.session.report(3).resets).toBe(1);
  });

  test("a sled that is not booted by its timeout fails, naming the last refused offer", () => {
    const sled = testSled(checksum, { timeoutMs: 10_000 });
    sled.session.start(0);
    sled.session.receive(offer({ sha256: imageOf(32, 12) }), 5);
    for (const now of [4000, 8000, 9999]) sled.session.tick(now);
    expect(sled.session.outcome).toBeNull();
    sled.session.tick(10_000);
    expect(sled.session.outcome).toBe("timeout");
    expect(sled.session.report(10_000).detail).toMatch(
      /no acceptable offer after 3 HELLO .*sha256 .* is not the wanted/,
    );
  });
});

describe("DataFaults", () => {
  const frames = Array.from({ length: 2000 }, (_, i) => data(i * 1024, new Uint8Array([i & 0xff, i >> 8])));
  const idOf = (frame: Uint8Array) => frame[34]! | (frame[35]! << 8);

  function run(options: ConstructorParameters<typeof DataFaults>[0], input = frames, stepMs = 1): number[] {
    const faults = new DataFaults(options);
    const out: number[] = [];
    let now = 0;
    for (const frame of input) {
      faults.admit(frame, now);
      for (let each = faults.take(now); each; each = faults.take(now)) out.push(idOf(each));
      now += stepMs;
    }
    for (let each = faults.take(Infinity); each; each = faults.take(Infinity)) out.push(idOf(each));
    return out;
  }

  test("the same seed damages the same frames; another seed others", () => {
    const options = { dropRate: 0.05, duplicateRate: 0.05, reorderRate: 0.05, seed: 7 };
    expect(run(options)).toEqual(run(options));
    expect(run(options)).not.toEqual(run({ ...options, seed: 8 }));
  });

  test("drop rate 0.1 loses about a tenth, nothing else changes", () => {
    const faults = new DataFaults({ dropRate: 0.1, seed: 3 });
    const out = run({ dropRate: 0.1, seed: 3 });
    for (const frame of frames) faults.admit(frame, 0);
    expect(faults.counters.dropped).toBe(2000 - out.length);
    expect(out.length).toBeGreaterThan(1700);
    expect(out.length).toBeLessThan(1900);
    expect(out).toEqual([...out].sort((a, b) => a - b));
  });

  test("duplicates arrive twice, back to back", () => {
    const out = run({ duplicateRate: 1, seed: 1 }, frames.slice(0, 5));
    expect(out).toEqual([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
  });

  test("a reordered frame arrives right after the next one, or alone once no other came for a while", () => {
    expect(run({ reorderRate: 1, seed: 1 }, frames.slice(0, 5))).toEqual([1, 0, 3, 2, 4]);
    const faults = new DataFaults({ reorderRate: 1, seed: 1 });
    faults.admit(frames[7]!, 0);
    expect(faults.take(0)).toBeNull();
    expect(faults.take(REORDER_HOLD_MS - 1)).toBeNull();
    expect(idOf(faults.take(REORDER_HOLD_MS)!)).toBe(7);
  });

  test("a delayed frame arrives once its delay has passed, after frames that were not delayed", () => {
    const faults = new DataFaults({ delayRate: 1, delayMs: 100, seed: 1 });
    faults.admit(frames[0]!, 0);
    expect(faults.take(99)).toBeNull();
    expect(idOf(faults.take(100)!)).toBe(0);
  });

  test("frames other than DATA pass untouched even at drop rate 1", () => {
    const faults = new DataFaults({ dropRate: 1, seed: 1 });
    const reset = encodeFrame(SLED, SERVER, { type: "reset" });
    faults.admit(frames[0]!, 0);
    faults.admit(reset, 0);
    expect(faults.take(0)).toBe(reset);
    expect(faults.take(0)).toBeNull();
  });

  test("a sled behind 5% loss, duplicates and reordering still boots, by re-asking", () => {
    const image = imageOf(MIB, 8);
    const checksum = pythonSha256(image);
    const sled = testSled(checksum);
    const faults = new DataFaults({ dropRate: 0.05, duplicateRate: 0.05, reorderRate: 0.05, seed: 5 });
    sled.session.start(0);
    sled.session.receive(offer({ sha256: checksum }), 0);
    let answered = 0;
    for (let now = 0; now < 60_000 && sled.session.outcome === null; now += 10) {
      for (; answered < sled.ofType("read").length; answered++) {
        for (const offset of requestedOffsets(sled.ofType("read")[answered]!)) faults.admit(answer(image, offset), now);
      }
      for (let frame = faults.take(now); frame; frame = faults.take(now)) sled.session.receive(frame, now);
      sled.session.tick(now);
    }
    expect(sled.session.outcome).toBe("booted");
    const report = sled.session.report(0);
    expect(faults.counters.dropped).toBeGreaterThan(0);
    expect(report.reasked).toBeGreaterThanOrEqual(faults.counters.dropped);
    expect(report.dataDropped).toBeGreaterThan(0);
  });
});
