/**
 * Fuzz tests of the netboot frames (lib/protocol/frames.ts): decodeFrame on
 * mutated and random frames, every truncation and padding, every type with
 * every `len` edge, READ counts 0..200. The generator, tally and shared
 * checks are tests/helpers/fuzz.ts's, the frame generators
 * tests/helpers/fuzz-frames.ts's.
 */

import { describe, setDefaultTimeout, test } from "bun:test";
import {
  BODY_OFFSET,
  type Decoded,
  decodeFrame,
  encodeFrame,
  READ_SLOTS,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { hex } from "../helpers/common.ts";
import {
  concat,
  FUZZ_TIMEOUT_MS,
  isOneLine,
  MAX_SAFE,
  outcome,
  Random,
  scaled,
  show,
  Tally,
  U64_MAX,
} from "../helpers/fuzz.ts";
import {
  LEN_EDGES,
  mutateFrame,
  randomFrame,
  randomRead,
  SERVER_MAC,
  SLED_MAC,
  setU32,
  TYPE_VALUES,
} from "../helpers/fuzz-frames.ts";

setDefaultTimeout(FUZZ_TIMEOUT_MS);

/**
 * Check what decodeFrame made of `bytes`: it never throws; a refusal is one
 * line; an accepted frame encodes back to the same bytes up to the end of
 * its `len` (so every field was read from the right place), and a READ's
 * requested offsets follow netboot.md point 3.
 */
function checkFrame(tally: Tally, label: string, bytes: Uint8Array): Decoded | null {
  tally.cases++;
  const result = outcome(() => decodeFrame(bytes));
  if (!result.ok) {
    tally.fail(label, `decodeFrame threw ${result.error} on ${show(bytes)}`);
    return null;
  }
  const decoded = result.value;
  if (!decoded.ok) {
    tally.refused++;
    if (!isOneLine(decoded.reason)) tally.fail(label, `reason not one line: ${JSON.stringify(decoded.reason)}`);
    return decoded;
  }
  tally.accepted++;
  const { destination, source, message } = decoded.frame;
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(22);
  const again = encodeFrame(destination, source, message);
  if (
    again.length !== Math.max(60, BODY_OFFSET + len) ||
    hex(again.subarray(0, BODY_OFFSET + len)) !== hex(bytes.subarray(0, BODY_OFFSET + len))
  ) {
    tally.fail(label, `re-encodes differently: ${show(bytes)} -> ${show(again)}`);
  }
  if (message.type === "read") {
    const problem = requestedOffsetsProblem(message);
    if (problem) tally.fail(label, problem);
  }
  return decoded;
}

/**
 * netboot.md point 3: every non-zero slot is asked for, in slot order, and
 * offset 0 too exactly when fewer than `count` slots are non-zero.
 */
function requestedOffsetsProblem(read: ReadRequest): string | null {
  const offsets = requestedOffsets(read);
  const nonZero = [...read.slots].filter((offset) => offset !== 0n);
  const expected = BigInt(nonZero.length) < read.count ? [0n, ...nonZero] : nonZero;
  return offsets.join() === expected.join()
    ? null
    : `requestedOffsets ${offsets.length} offsets, expected ${expected.length}`;
}

describe("fuzz: netboot frames", () => {
  test("mutated and random frames decode to a frame that re-encodes to the same bytes, or to a one-line reason", () => {
    const random = new Random(0xf4a0001);
    const tally = new Tally("decodeFrame (mutations)");
    for (let i = 0; i < scaled(8000); i++) {
      const frame = randomFrame(random);
      const mutated = random.chance(0.9) ? mutateFrame(random, frame) : frame;
      checkFrame(tally, `mutation case ${i}`, mutated);
    }
    // Random bytes, sometimes with the ethertype, magic and a known type in place so the body checks run.
    for (let i = 0; i < scaled(3000); i++) {
      const bytes = random.bytes(random.scaled(1600));
      if (bytes.length >= BODY_OFFSET && random.chance(0.7)) {
        bytes.set([0x1d, 0xe0, 0x1d, 0xe1, 0x23, 0x45], 12);
        if (random.chance(0.8)) setU32(bytes, 18, random.pick(TYPE_VALUES));
        if (random.chance(0.5)) setU32(bytes, 22, random.scaled(bytes.length - BODY_OFFSET + 2));
      }
      checkFrame(tally, `random case ${i}`, bytes);
    }
    tally.report();
  });

  test("truncation at every length, and padding of every kind, as netboot.md says", () => {
    const random = new Random(0xf4a0002);
    const tally = new Tally("decodeFrame (truncation, padding)");
    for (let i = 0; i < 12; i++) {
      const frame = randomFrame(random);
      const len = new DataView(frame.buffer).getUint32(22);
      const whole = checkFrame(tally, `base ${i}`, frame);
      for (let length = 0; length < frame.length; length++) {
        const decoded = checkFrame(tally, `base ${i} cut to ${length}`, frame.subarray(0, length));
        // A frame is whole once it holds its headers and `len` body bytes; bytes past that are padding.
        const whole = length >= BODY_OFFSET + len;
        if (decoded?.ok && !whole) tally.fail(`base ${i} cut to ${length}`, "accepted a frame shorter than its len");
      }
      if (!whole?.ok) continue;
      for (let j = 0; j < scaled(100); j++) {
        const padding = random.chance(0.5)
          ? new Uint8Array(1 + random.scaled(64))
          : random.bytes(1 + random.scaled(1600));
        const padded = checkFrame(tally, `base ${i} padded ${j}`, concat(frame, padding));
        if (!padded?.ok || JSON.stringify(padded.frame, bigints) !== JSON.stringify(whole.frame, bigints)) {
          tally.fail(`base ${i} padded ${j}`, "padding changed the decoded frame");
        }
      }
    }
    tally.report();
  });

  test("every type with every len edge: only the len netboot.md gives that type decodes", () => {
    const random = new Random(0xf4a0003);
    const tally = new Tally("decodeFrame (len edges)");
    for (const type of TYPE_VALUES) {
      for (const len of LEN_EDGES) {
        for (const room of [0, 1, -1, 100]) {
          // The frame holds `len` body bytes plus `room` (negative: fewer than len), capped for huge lens.
          const body = Math.max(0, Math.min(len, 1600) + room);
          const frame = random.bytes(Math.max(60, BODY_OFFSET + body));
          frame.set([...SERVER_MAC, ...SLED_MAC, 0x1d, 0xe0, 0x1d, 0xe1, 0x23, 0x45]);
          setU32(frame, 18, type);
          setU32(frame, 22, len);
          // A READ count within the 128 slots, so only len decides.
          if (type === 0x9003 && frame.length >= BODY_OFFSET + 8)
            frame.fill(0, BODY_OFFSET, BODY_OFFSET + 7).fill(1, BODY_OFFSET + 7, BODY_OFFSET + 8);
          const label = `type 0x${type.toString(16)} len ${len} frame ${frame.length}`;
          const decoded = checkFrame(tally, label, frame);
          const fits = BODY_OFFSET + len <= frame.length;
          const lenRight =
            type === 0x9001
              ? true
              : type === 0x9102
                ? len === 176
                : type === 0x9003
                  ? len === 1032
                  : type === 0x9104
                    ? len >= 8 && len <= 1476
                    : len === 0;
          if (decoded && decoded.ok !== (fits && lenRight))
            tally.fail(label, `expected ${fits && lenRight ? "a frame" : "a refusal"}`);
        }
      }
    }
    tally.report();
  });

  test("READ counts 0..200 with slots full, scattered or empty, offsets up to 2^64-1", () => {
    const random = new Random(0xf4a0004);
    const tally = new Tally("decodeFrame (READ counts)");
    for (let count = 0; count <= 200; count++) {
      for (let i = 0; i < scaled(12); i++) {
        const read = randomRead(random, 0);
        const frame = encodeFrame(SERVER_MAC, SLED_MAC, { ...read, count: BigInt(count) });
        const decoded = checkFrame(tally, `count ${count} case ${i}`, frame);
        // 128 slots: a sled never asks for more.
        if (decoded && decoded.ok !== count <= READ_SLOTS) tally.fail(`count ${count} case ${i}`, "wrong verdict");
      }
    }
    for (const count of [2n ** 32n, MAX_SAFE, U64_MAX]) {
      const frame = encodeFrame(SERVER_MAC, SLED_MAC, { ...randomRead(random, 0), count });
      const decoded = checkFrame(tally, `count ${count}`, frame);
      if (decoded?.ok) tally.fail(`count ${count}`, "accepted");
    }
    tally.report();
  });
});

/** JSON.stringify replacer for frames: bigints and byte arrays as text. */
function bigints(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Uint8Array || value instanceof BigUint64Array) return Array.from(value, String).join(",");
  return value;
}
