/**
 * The netboot frames of lib/protocol/frames.ts against docs/netboot.md. Byte
 * layouts are checked by an independent decoder: python3's struct module,
 * reading big-endian fields after the 14-byte Ethernet header.
 */

import { describe, expect, test } from "bun:test";
import {
  DataFrameWriter,
  datasetField,
  decodeFrame,
  encodeFrame,
  type Frame,
  formatMac,
  type Message,
  parseMac,
  READ_SLOTS,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { hex, pythonWithInput } from "../helpers/common.ts";
import { SERVER, SLED } from "../helpers/frames.ts";

const BROADCAST = parseMac("ff:ff:ff:ff:ff:ff")!;
const U64_MAX = 2n ** 64n - 1n;

/**
 * Unpack each frame with python3: Ethernet header as '>6s6sH' at 0, then
 * `format` at offset 14. Integers come back as decimal strings (u64 would not
 * survive JSON numbers), bytes as hex; the frame's length comes along.
 */
function pythonUnpack(
  frames: { frame: Uint8Array; format: string }[],
): { ether: string[]; fields: string[]; length: number }[] {
  const script = `
import json, struct, sys
out = []
for item in json.load(sys.stdin):
    frame = bytes.fromhex(item["hex"])
    show = lambda v: v.hex() if isinstance(v, bytes) else str(v)
    ether = struct.unpack_from(">6s6sH", frame, 0)
    fields = struct.unpack_from(item["format"], frame, 14)
    out.append({"ether": [show(v) for v in ether], "fields": [show(v) for v in fields], "length": len(frame)})
json.dump(out, sys.stdout)
`;
  const input = JSON.stringify(
    frames.map(({ frame, format }) => ({ hex: Buffer.from(frame).toString("hex"), format })),
  );
  return JSON.parse(pythonWithInput(Buffer.from(input), script));
}

function decodeOk(bytes: Uint8Array): Frame {
  const decoded = decodeFrame(bytes);
  if (!decoded.ok) throw new Error(`expected a frame, got: ${decoded.reason}`);
  return decoded.frame;
}

function decodeRefused(bytes: Uint8Array): string {
  let decoded: ReturnType<typeof decodeFrame> | undefined;
  expect(() => (decoded = decodeFrame(bytes))).not.toThrow();
  if (!decoded || decoded.ok) throw new Error("expected the frame to be refused");
  return decoded.reason;
}

/** A frame with the given raw header fields and body, written by hand (not by encodeFrame). */
function rawFrame(
  fields: { ethertype?: number; magic?: number; type: number; len: number },
  body: Uint8Array,
  total?: number,
): Uint8Array {
  const frame = new Uint8Array(total ?? 26 + body.length);
  const view = new DataView(frame.buffer);
  frame.set(SLED, 0);
  frame.set(SERVER, 6);
  view.setUint16(12, fields.ethertype ?? 0x1de0);
  view.setUint32(14, fields.magic ?? 0x1de12345);
  view.setUint32(18, fields.type);
  view.setUint32(22, fields.len);
  frame.set(body.subarray(0, Math.max(0, frame.length - 26)), 26);
  return frame;
}

function patterned(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed * 7 + (i >> 8)) & 0xff);
}

describe("every frame type, encoded, matches the layout of netboot.md", () => {
  const sha256 = patterned(32, 1);
  const slots = new BigUint64Array(READ_SLOTS);
  for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(slot) * 1024n + 0x1_0000_0000n;
  const greeting = new TextEncoder().encode("hello from a sled");
  const data = patterned(1024, 2);
  const messages: { message: Message; destination: Uint8Array; source: Uint8Array; format: string }[] = [
    {
      message: { type: "hello", text: greeting },
      destination: BROADCAST,
      source: SLED,
      format: `>III${greeting.length}s`,
    },
    {
      message: {
        type: "offer",
        ramdiskSize: 64n << 20n,
        imageSize: 1n << 20n,
        sha256,
        dataset: datasetField("rpool/ROOT/ramdisk"),
      },
      destination: SLED,
      source: SERVER,
      format: ">IIIQQ32s128s",
    },
    { message: { type: "read", count: 128n, slots }, destination: SERVER, source: SLED, format: `>IIIQ${READ_SLOTS}Q` },
    {
      message: { type: "data", offset: 5n * 1024n, bytes: data },
      destination: SLED,
      source: SERVER,
      format: ">IIIQ1024s",
    },
    {
      message: { type: "data", offset: 3n << 20n, bytes: new Uint8Array(0) },
      destination: SLED,
      source: SERVER,
      format: ">IIIQ",
    },
    { message: { type: "finished" }, destination: SERVER, source: SLED, format: ">III" },
    { message: { type: "reset" }, destination: SLED, source: SERVER, format: ">III" },
  ];
  const encoded = messages.map(({ message, destination, source }) => encodeFrame(destination, source, message));
  const unpacked = pythonUnpack(encoded.map((frame, i) => ({ frame, format: messages[i]!.format })));

  test("Ethernet header: destination, source, ethertype 0x1DE0; frames at least 60 bytes", () => {
    for (const [i, { destination, source }] of messages.entries()) {
      expect(unpacked[i]!.ether).toEqual([hex(destination), hex(source), String(0x1de0)]);
      expect(unpacked[i]!.length).toBe(Math.max(60, 26 + Number(unpacked[i]!.fields[2])));
    }
  });

  test("HELLO: magic, type 0x9001, len = text length, the text", () => {
    expect(unpacked[0]!.fields).toEqual([String(0x1de12345), String(0x9001), String(greeting.length), hex(greeting)]);
  });

  test("OFFER: type 0x9102, len 176, ramdisk size, image size, SHA-256, NUL-padded dataset", () => {
    const dataset = new Uint8Array(128);
    dataset.set(new TextEncoder().encode("rpool/ROOT/ramdisk"));
    expect(unpacked[1]!.fields).toEqual([
      String(0x1de12345),
      String(0x9102),
      "176",
      String(64 * 1024 * 1024),
      String(1024 * 1024),
      hex(sha256),
      hex(dataset),
    ]);
  });

  test("READ: type 0x9003, len 1032, count, then the 128 slots in order", () => {
    expect(unpacked[2]!.fields).toEqual([
      String(0x1de12345),
      String(0x9003),
      "1032",
      "128",
      ...Array.from(slots, (offset) => offset.toString()),
    ]);
  });

  test("DATA: type 0x9104, len 8 + bytes, offset, bytes; an empty DATA has len 8", () => {
    expect(unpacked[3]!.fields).toEqual([String(0x1de12345), String(0x9104), "1032", "5120", hex(data)]);
    expect(unpacked[4]!.fields).toEqual([String(0x1de12345), String(0x9104), "8", String(3 * 1024 * 1024)]);
  });

  test("FINISHED 0x9005 and RESET 0x9106: len 0, padded with zeros to 60 bytes", () => {
    expect(unpacked[5]!.fields).toEqual([String(0x1de12345), String(0x9005), "0"]);
    expect(unpacked[6]!.fields).toEqual([String(0x1de12345), String(0x9106), "0"]);
    for (const frame of [encoded[5]!, encoded[6]!]) expect(frame.subarray(26).every((byte) => byte === 0)).toBe(true);
  });

  test("each encoded frame decodes back to its message and addresses", () => {
    for (const [i, { message, destination, source }] of messages.entries()) {
      const frame = decodeOk(encoded[i]!);
      expect(hex(frame.destination)).toBe(hex(destination));
      expect(hex(frame.source)).toBe(hex(source));
      expect(frame.message).toEqual(message);
    }
  });
});

describe("decoding frames built by hand", () => {
  test("a 60-byte FINISHED (26 bytes of headers and NIC padding) is accepted", () => {
    const frame = rawFrame({ type: 0x9005, len: 0 }, new Uint8Array(0), 60);
    expect(frame.length).toBe(60);
    expect(decodeOk(frame).message).toEqual({ type: "finished" });
  });

  test("a 26-byte RESET, as a veth delivers it unpadded, is accepted", () => {
    expect(decodeOk(rawFrame({ type: 0x9106, len: 0 }, new Uint8Array(0))).message).toEqual({ type: "reset" });
  });

  test("bytes beyond len are padding: a DATA carries only len - 8 bytes", () => {
    const body = new Uint8Array(40).fill(0xee);
    new DataView(body.buffer).setBigUint64(0, 7n * 1024n);
    const message = decodeOk(rawFrame({ type: 0x9104, len: 8 + 4 }, body)).message;
    expect(message).toEqual({ type: "data", offset: 7168n, bytes: new Uint8Array(4).fill(0xee) });
  });

  test("an OFFER whose dataset byte 127 is not NUL still decodes (the sled, not the decoder, refuses it)", () => {
    const dataset = new Uint8Array(128).fill(0x41);
    const frame = encodeFrame(SLED, SERVER, {
      type: "offer",
      ramdiskSize: 1n << 21n,
      imageSize: 1n << 20n,
      sha256: new Uint8Array(32),
      dataset,
    });
    const message = decodeOk(frame).message;
    expect(message.type === "offer" && message.dataset[127]).toBe(0x41);
  });

  const refusals: [string, Uint8Array, RegExp][] = [
    ["wrong ethertype", rawFrame({ ethertype: 0x0800, type: 0x9005, len: 0 }, new Uint8Array(34)), /ethertype 0x0800/],
    ["wrong magic", rawFrame({ magic: 0x1de12346, type: 0x9005, len: 0 }, new Uint8Array(34)), /magic 0x1de12346/],
    ["unknown type", rawFrame({ type: 0x9007, len: 0 }, new Uint8Array(34)), /unknown type 0x9007/],
    [
      "a server type from the wrong direction bit",
      rawFrame({ type: 0x9105, len: 0 }, new Uint8Array(34)),
      /unknown type 0x9105/,
    ],
    [
      "len longer than the frame",
      rawFrame({ type: 0x9001, len: 35 }, new Uint8Array(34)),
      /len 35 is more than the 34/,
    ],
    ["shorter than the headers", new Uint8Array(25), /25 bytes/],
    ["OFFER len 175", rawFrame({ type: 0x9102, len: 175 }, new Uint8Array(176)), /offer len 175 is not 176/],
    ["OFFER len 177", rawFrame({ type: 0x9102, len: 177 }, new Uint8Array(177)), /offer len 177 is not 176/],
    ["READ len 1024", rawFrame({ type: 0x9003, len: 1024 }, new Uint8Array(1032)), /read len 1024 is not 1032/],
    ["READ len 1040", rawFrame({ type: 0x9003, len: 1040 }, new Uint8Array(1040)), /read len 1040 is not 1032/],
    ["DATA len 7", rawFrame({ type: 0x9104, len: 7 }, new Uint8Array(34)), /data len 7 is outside 8\.\.1476/],
    [
      "DATA len 1477",
      rawFrame({ type: 0x9104, len: 1477 }, new Uint8Array(1477)),
      /data len 1477 is outside 8\.\.1476/,
    ],
    ["FINISHED len 4", rawFrame({ type: 0x9005, len: 4 }, new Uint8Array(34)), /finished len 4 is not 0/],
  ];
  for (const [what, frame, reason] of refusals) {
    test(`refused with a reason, never a throw: ${what}`, () => {
      expect(decodeRefused(frame)).toMatch(reason);
    });
  }

  test("refused: READ count 129", () => {
    const body = new Uint8Array(1032);
    new DataView(body.buffer).setBigUint64(0, 129n);
    expect(decodeRefused(rawFrame({ type: 0x9003, len: 1032 }, body))).toMatch(/read count 129 is more than 128/);
  });

  test("DATA len 8 and 1476 are the edges still accepted", () => {
    expect(decodeOk(rawFrame({ type: 0x9104, len: 8 }, new Uint8Array(8))).message).toMatchObject({
      type: "data",
      offset: 0n,
    });
    const message = decodeOk(rawFrame({ type: 0x9104, len: 1476 }, new Uint8Array(1476).fill(3))).message;
    expect(message.type === "data" && message.bytes.length).toBe(1468);
  });

  test("random bytes with a valid header prefix never make the decoder throw", () => {
    let state = 12345;
    const random = () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state / 2 ** 32;
    };
    const types = [0x9001, 0x9102, 0x9003, 0x9104, 0x9005, 0x9106, 0x9000, 0xffffffff];
    for (let i = 0; i < 5000; i++) {
      const length = Math.floor(random() * 1600);
      const frame = Uint8Array.from({ length }, () => Math.floor(random() * 256));
      if (length >= 26 && random() < 0.8) {
        const view = new DataView(frame.buffer);
        view.setUint16(12, 0x1de0);
        view.setUint32(14, 0x1de12345);
        view.setUint32(18, types[Math.floor(random() * types.length)]!);
        if (random() < 0.7) view.setUint32(22, Math.floor(random() * (length - 25)));
      }
      expect(() => decodeFrame(frame)).not.toThrow();
    }
  });
});

describe("requestedOffsets: the offsets a READ asks for, by slot position", () => {
  function read(count: bigint, set: [number, bigint][]): ReadRequest {
    const slots = new BigUint64Array(READ_SLOTS);
    for (const [slot, offset] of set) slots[slot] = offset;
    return { type: "read", count, slots };
  }

  test("a full first batch asks for offset 0 too", () => {
    const first = read(
      128n,
      Array.from({ length: 128 }, (_, slot) => [slot, BigInt(slot * 1024)] as [number, bigint]),
    );
    const offsets = requestedOffsets(first);
    expect(offsets).toHaveLength(128);
    expect(new Set(offsets)).toEqual(new Set(Array.from({ length: 128 }, (_, slot) => BigInt(slot * 1024))));
  });

  test("a later full batch: 128 non-zero slots, no offset 0", () => {
    const later = read(
      128n,
      Array.from({ length: 128 }, (_, slot) => [slot, BigInt(131072 + slot * 1024)] as [number, bigint]),
    );
    expect(requestedOffsets(later)).toEqual(Array.from({ length: 128 }, (_, slot) => BigInt(131072 + slot * 1024)));
  });

  test("scattered re-ask slots 3, 77 and 127 with count 3: exactly those offsets, not the first 3 slots", () => {
    const reask = read(3n, [
      [3, 0x20c00n],
      [77, 0x33400n],
      [127, 0x3fc00n],
    ]);
    expect(requestedOffsets(reask)).toEqual([0x20c00n, 0x33400n, 0x3fc00n]);
  });

  test("a lone re-ask of offset 0: count 1, every slot zero", () => {
    expect(requestedOffsets(read(1n, []))).toEqual([0n]);
  });

  test("offset 0 among re-asked slots: count 2, one non-zero slot", () => {
    expect(new Set(requestedOffsets(read(2n, [[50, 51200n]])))).toEqual(new Set([0n, 51200n]));
  });

  test("count 0 asks for nothing", () => {
    expect(requestedOffsets(read(0n, []))).toEqual([]);
  });
});

describe("64-bit fields keep every bit", () => {
  test("offsets and sizes near 2^64 survive encode and decode", () => {
    const slots = new BigUint64Array(READ_SLOTS);
    slots[0] = U64_MAX;
    slots[64] = U64_MAX - 1023n;
    slots[127] = 2n ** 63n;
    const offer = encodeFrame(SLED, SERVER, {
      type: "offer",
      ramdiskSize: U64_MAX,
      imageSize: U64_MAX - 1n,
      sha256: new Uint8Array(32),
      dataset: new Uint8Array(128),
    });
    const readFrame = encodeFrame(SERVER, SLED, { type: "read", count: 3n, slots });
    const dataFrame = encodeFrame(SLED, SERVER, { type: "data", offset: U64_MAX, bytes: new Uint8Array([1, 2, 3]) });

    expect(decodeOk(offer).message).toMatchObject({ ramdiskSize: U64_MAX, imageSize: U64_MAX - 1n });
    const decodedRead = decodeOk(readFrame).message as ReadRequest;
    expect(requestedOffsets(decodedRead)).toEqual([U64_MAX, U64_MAX - 1023n, 2n ** 63n]);
    expect(decodeOk(dataFrame).message).toMatchObject({ offset: U64_MAX });

    const [offerFields, readFields, dataFields] = pythonUnpack([
      { frame: offer, format: ">IIIQQ" },
      { frame: readFrame, format: `>IIIQ${READ_SLOTS}Q` },
      { frame: dataFrame, format: ">IIIQ3s" },
    ]);
    expect(offerFields!.fields.slice(3)).toEqual([U64_MAX.toString(), (U64_MAX - 1n).toString()]);
    expect(readFields!.fields[4]).toBe(U64_MAX.toString());
    expect(readFields!.fields[4 + 64]).toBe((U64_MAX - 1023n).toString());
    expect(readFields!.fields[4 + 127]).toBe((2n ** 63n).toString());
    expect(dataFields!.fields.slice(3)).toEqual([U64_MAX.toString(), "010203"]);
  });
});

describe("DataFrameWriter", () => {
  test("each frame equals encodeFrame's, whatever the previous frame left in the buffer", () => {
    const writer = new DataFrameWriter(SLED, SERVER);
    const cases: [bigint, Uint8Array][] = [
      [0n, patterned(1024, 3)],
      [1024n, patterned(1468, 4)],
      [U64_MAX, new Uint8Array(0)],
      [2048n, patterned(20, 5)],
      [4096n, patterned(1024, 6)],
      [1n << 32n, patterned(1, 7)],
    ];
    for (const [offset, bytes] of cases) {
      const written = writer.frame(offset, bytes).slice();
      expect(hex(written)).toBe(hex(encodeFrame(SLED, SERVER, { type: "data", offset, bytes })));
    }
  });

  test("answer() sends 1024 image bytes at an offset inside, fewer at the end, none at or past it", () => {
    const image = patterned(4096, 9);
    const writer = new DataFrameWriter(SLED, SERVER);
    const cases: [bigint, Uint8Array][] = [
      [0n, image.slice(0, 1024)],
      [1500n, image.slice(1500, 2524)],
      [3072n, image.slice(3072)],
      [3500n, image.slice(3500)],
      [4095n, image.slice(4095)],
      [4096n, new Uint8Array(0)],
      [4097n, new Uint8Array(0)],
    ];
    for (const [offset, bytes] of cases) {
      expect(hex(writer.answer(offset, image).slice())).toBe(
        hex(encodeFrame(SLED, SERVER, { type: "data", offset, bytes })),
      );
      expect(writer.imageBytes).toBe(bytes.length);
    }
  });

  test("answer() reads nothing outside the image for offsets near 2^53 and 2^64", () => {
    // An image in the middle of a larger buffer: bytes on either side must never be sent.
    const whole = patterned(3 * 4096, 11);
    const image = whole.subarray(4096, 8192);
    const writer = new DataFrameWriter(SLED, SERVER);
    for (const offset of [
      U64_MAX,
      U64_MAX - 1023n,
      2n ** 64n - 1024n,
      2n ** 63n,
      2n ** 53n,
      2n ** 53n + 1n,
      2n ** 53n - 1n,
      2n ** 32n,
    ]) {
      const frame = writer.answer(offset, image).slice();
      expect(writer.imageBytes).toBe(0);
      expect(hex(frame)).toBe(hex(encodeFrame(SLED, SERVER, { type: "data", offset, bytes: new Uint8Array(0) })));
    }
  });
});

describe("MAC addresses", () => {
  test("parseMac takes ':' or '-' and formatMac prints lower case", () => {
    expect(formatMac(parseMac("02-5E-00-0a-Bc-ff")!)).toBe("02:5e:00:0a:bc:ff");
    for (const bad of ["02:5e:00:00:00", "02:5e:00:00:00:00:01", "zz:00:00:00:00:00", "", "0250:00:00:00:00"]) {
      expect(parseMac(bad)).toBeNull();
    }
  });
});
