/**
 * Answering a READ (lib/netboot/session.ts) against docs/netboot.md, without
 * a network: the DATA frames a session sends are read back by a decoder
 * written from the document (tests/helpers/frames.ts) rather than
 * lib/protocol/frames.ts's. Fast re-send is in fast-resend.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { READ_SLOTS, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { SledSession } from "../../lib/netboot/session.ts";
import { dataOf, type Parsed, parse, readRequest, SERVER, SLED, TYPE } from "../helpers/frames.ts";

const POOL_SIZE = 2 * 1024 * 1024;
const TWO_64 = 2n ** 64n;

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
