/**
 * Routing frames (lib/netboot/dispatch.ts) against docs/netboot.md, without a
 * network: what the dispatcher answers, hands to a session or drops, read
 * back by a decoder written from the document (tests/helpers/frames.ts).
 */

import { describe, expect, test } from "bun:test";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { dispatchCounters, FrameDispatcher, type SessionInbox } from "@ramdisk-tools/netboot/dispatch.ts";
import { encodeFrame, type Mac, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { rawImageHandle } from "../../lib/netboot/raw-image.ts";
import { BROADCAST, macText, OTHER, type Parsed, parse, readFrame, SERVER, SLED, TYPE } from "../helpers/frames.ts";

const POOL_SIZE = 2 * MIB;

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
