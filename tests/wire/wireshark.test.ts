/**
 * Capture files and the Wireshark dissector: lib/wire/pcap-file.ts writes what
 * independent readers (python3 struct, capinfos, tshark) read back frame for
 * frame, and wireshark/oxide-netboot.lua makes tshark print every field of
 * every frame type and flag the malformed ones.
 *
 * The tshark tests need Debian's `tshark` package (Wireshark with Lua); they
 * are skipped, saying so, where it is missing.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { BROADCAST_MAC, datasetField, encodeFrame, type Message, READ_SLOTS } from "@ramdisk-tools/protocol/frames.ts";
import { PcapFileError, PcapFileWriter } from "@ramdisk-tools/wire/pcap-file.ts";
import { commandOutput, hex, python, runCommand } from "../helpers/common.ts";

const DISSECTOR = join(ROOT, "wireshark", "oxide-netboot.lua");
const TSHARK = Bun.which("tshark");
const CAPINFOS = Bun.which("capinfos");
const PYTHON = Bun.which("python3");

const SLED = new Uint8Array([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
const SERVER = new Uint8Array([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);
/** 2023-11-14T22:13:20.0005Z, then 1.25 ms between frames. */
const FIRST_MICROSECOND = 1_700_000_000_000_500n;
const STEP_MICROSECONDS = 1250n;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "wireshark-test-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function setLen(frame: Uint8Array, len: number): Uint8Array {
  new DataView(frame.buffer, frame.byteOffset).setUint32(22, len);
  return frame;
}

interface PythonRecord {
  seconds: number;
  microseconds: number;
  kept: number;
  onWire: number;
  hex: string;
}

/** The capture as python3's struct module reads it: an independent decoder. */
function decodeWithPython(path: string): { header: number[]; records: PythonRecord[] } {
  const script = `
import json, struct, sys
data = open(sys.argv[1], "rb").read()
header = list(struct.unpack("<IHHiIII", data[:24]))
records, at = [], 24
while at < len(data):
    seconds, microseconds, kept, on_wire = struct.unpack("<IIII", data[at:at + 16])
    records.append({"seconds": seconds, "microseconds": microseconds, "kept": kept, "onWire": on_wire,
                    "hex": data[at + 16:at + 16 + kept].hex()})
    at += 16 + kept
print(json.dumps({"header": header, "records": records}))
`;
  return JSON.parse(python(script, path));
}

describe("PcapFileWriter", () => {
  test.skipIf(!PYTHON)("writes the classic pcap layout, read back by python3 struct", () => {
    const path = join(dir, "layout.pcap");
    const frames = [
      encodeFrame(BROADCAST_MAC, SLED, { type: "hello", text: new TextEncoder().encode("hi") }),
      encodeFrame(SLED, SERVER, { type: "data", offset: 1024n, bytes: new Uint8Array(1024).fill(0x5a) }),
      encodeFrame(SERVER, SLED, { type: "finished" }).subarray(0, 26),
    ];
    const capture = PcapFileWriter.open(path);
    // biome-ignore lint/correctness/noPrecisionLoss: the nearest double is the point, the writer must round it
    capture.write(frames[0]!, 1_700_000_000_123.4567);
    // Rounds to the next whole second: the microseconds must not read 1000000.
    // biome-ignore lint/correctness/noPrecisionLoss: the nearest double is the point, the writer must round it
    capture.write(frames[1]!, 1_700_000_000_999.9996);
    capture.write(frames[2]!, 0);
    expect(capture.frames).toBe(3);
    capture.close();

    const { header, records } = decodeWithPython(path);
    expect(header).toEqual([0xa1b2c3d4, 2, 4, 0, 0, 65535, 1]);
    expect(records.map(({ seconds, microseconds }) => [seconds, microseconds])).toEqual([
      [1_700_000_000, 123_457],
      [1_700_000_001, 0],
      [0, 0],
    ]);
    expect(records.map((record) => [record.kept, record.onWire])).toEqual([
      [60, 60],
      [1058, 1058],
      [26, 26],
    ]);
    expect(records.map((record) => record.hex)).toEqual(frames.map(hex));
  });

  test.skipIf(!PYTHON)("keeps snaplen bytes of a longer frame and records its length on the wire", () => {
    const path = join(dir, "snaplen.pcap");
    const frame = encodeFrame(SLED, SERVER, { type: "data", offset: 0n, bytes: new Uint8Array(1024).fill(7) });
    const capture = PcapFileWriter.open(path, { snaplen: 100 });
    capture.write(frame, 1000);
    capture.close();
    const { header, records } = decodeWithPython(path);
    expect(header[5]).toBe(100);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      seconds: 1,
      microseconds: 0,
      kept: 100,
      onWire: 1058,
      hex: hex(frame.subarray(0, 100)),
    });
  });

  test.skipIf(!PYTHON)(
    "loses nothing when records overflow its buffer, a frame larger than the buffer included",
    () => {
      const path = join(dir, "buffered.pcap");
      const frames = Array.from({ length: 50 }, (_, i) =>
        encodeFrame(SLED, SERVER, { type: "data", offset: BigInt(i * 1024), bytes: new Uint8Array(i * 20).fill(i) }),
      );
      const capture = PcapFileWriter.open(path, { bufferBytes: 300 });
      frames.forEach((frame, i) => capture.write(frame, 2000 + i));
      capture.close();
      const { records } = decodeWithPython(path);
      expect(records.map((record) => record.hex)).toEqual(frames.map(hex));
      expect(records.map((record) => record.microseconds)).toEqual(frames.map((_, i) => i * 1000));
    },
  );

  test("shows nothing under the target name until close, and leaves no temporary file", () => {
    const sub = mkdtempSync(join(dir, "atomic-"));
    const path = join(sub, "boot.pcap");
    const capture = PcapFileWriter.open(path, { bufferBytes: 64 });
    capture.write(encodeFrame(SERVER, SLED, { type: "finished" }), 1);
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(sub)).toHaveLength(1);
    capture.close();
    capture.close();
    expect(readdirSync(sub)).toEqual(["boot.pcap"]);
    expect(Bun.file(path).size).toBe(24 + 16 + 60);
    expect(() => capture.write(new Uint8Array(60), 1)).toThrow(`capture file ${path} is already closed`);
  });

  test("discard leaves an existing file at the target untouched", async () => {
    const sub = mkdtempSync(join(dir, "discard-"));
    const path = join(sub, "boot.pcap");
    await Bun.write(path, "previous capture");
    const capture = PcapFileWriter.open(path);
    capture.write(encodeFrame(SERVER, SLED, { type: "reset" }), 1);
    capture.discard();
    expect(readdirSync(sub)).toEqual(["boot.pcap"]);
    expect(await Bun.file(path).text()).toBe("previous capture");
  });

  test("says plainly why a capture file cannot be created, and refuses impossible values", () => {
    const path = join(dir, "no-such-directory", "boot.pcap");
    expect(() => PcapFileWriter.open(path)).toThrow(
      new PcapFileError(`cannot create capture file ${path}: no such file or directory`),
    );
    expect(() => PcapFileWriter.open(join(dir, "x.pcap"), { snaplen: 0 })).toThrow("snaplen 0 is not a whole number");
    const capture = PcapFileWriter.open(join(dir, "times.pcap"));
    expect(() => capture.write(new Uint8Array(60), -1)).toThrow("timestamp -1 ms is not a time after 1970");
    expect(() => capture.write(new Uint8Array(60), 2 ** 32 * 1000)).toThrow("past what a pcap record holds");
    capture.discard();
  });

  test.skipIf(process.getuid?.() !== 0)(
    "on a full file system the write that cannot be stored says so, and close leaves nothing behind",
    async () => {
      // A tmpfs of 64 KiB of our own (root only): the first 64 KiB block of records does not fit.
      const full = mkdtempSync(join(dir, "full-"));
      await commandOutput(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full]);
      try {
        const path = join(full, "boot.pcap");
        const capture = PcapFileWriter.open(path, { bufferBytes: 64 * 1024 });
        const frame = encodeFrame(SLED, SERVER, { type: "data", offset: 0n, bytes: new Uint8Array(1024) });
        const fill = () => {
          for (let i = 0; i < 200; i++) capture.write(frame, 1000 + i);
        };
        expect(fill).toThrow(new PcapFileError(`cannot write capture file ${path}: no space left on device`));
        expect(() => capture.close()).toThrow(
          new PcapFileError(`cannot write capture file ${path}: no space left on device`),
        );
        expect(readdirSync(full)).toEqual([]);
      } finally {
        if ((await runCommand(["umount", full])).exitCode !== 0) await runCommand(["umount", "-l", full]);
      }
    },
  );
});

/** One frame of each type, then malformed ones; `expect` is what tshark must show. */
interface Case {
  name: string;
  frame: Uint8Array;
  info: string;
  fields: Record<string, string>;
  tree: string[];
}

function buildCases(): Case[] {
  const sha256 = new Bun.CryptoHasher("sha256").update("pool").digest() as Uint8Array;
  const sha256Hex = hex(sha256);
  const offer = (overrides: Partial<Extract<Message, { type: "offer" }>> = {}) =>
    encodeFrame(SLED, SERVER, {
      type: "offer",
      ramdiskSize: 67108864n,
      imageSize: 1048576n,
      sha256,
      dataset: datasetField("rpool/ROOT/ramdisk"),
      ...overrides,
    });
  const firstBatch = new BigUint64Array(READ_SLOTS).map((_, slot) => BigInt(slot * 1024));
  const scattered = new BigUint64Array(READ_SLOTS);
  scattered[5] = 5120n;
  scattered[90] = 92160n;
  scattered[127] = 130048n;
  const wrongMagic = encodeFrame(SERVER, SLED, { type: "finished" });
  wrongMagic.set([0xde, 0xad, 0xbe, 0xef], 14);
  const unterminated = new Uint8Array(128).fill(0x41);

  return [
    {
      name: "HELLO",
      frame: encodeFrame(BROADCAST_MAC, SLED, { type: "hello", text: new TextEncoder().encode("sled netboot hello") }),
      info: 'HELLO "sled netboot hello"',
      fields: { type: "0x00009001", len: "18", text: "sled netboot hello", padding: "00".repeat(16) },
      tree: [
        "Type: HELLO (0x00009001)",
        "[Sent by: sled]",
        'Greeting: "sled netboot hello"',
        "Padding: 16 bytes beyond len",
      ],
    },
    {
      name: "OFFER",
      frame: offer(),
      info: 'OFFER image=1048576 ramdisk=67108864 dataset="rpool/ROOT/ramdisk"',
      fields: {
        type: "0x00009102",
        len: "176",
        ramdisk: "67108864",
        image: "1048576",
        sha256: sha256Hex,
        dataset: "rpool/ROOT/ramdisk",
      },
      tree: [
        "Type: OFFER (0x00009102)",
        "[Sent by: server]",
        "Ramdisk size: 67108864",
        "Image size: 1048576",
        `SHA-256: ${sha256Hex}`,
        'Dataset: "rpool/ROOT/ramdisk"',
      ],
    },
    {
      name: "READ, first batch",
      frame: encodeFrame(SERVER, SLED, { type: "read", count: 128n, slots: firstBatch }),
      info: "READ count=128 first=0",
      fields: {
        type: "0x00009003",
        len: "1032",
        count: "128",
        asked: "128",
        offsets: Array.from(firstBatch, String).join("|"),
        empty: "",
      },
      tree: [
        "Type: READ (0x00009003)",
        "Count: 128",
        "Slots asked: 128",
        "slot 0: offset 0",
        "slot 1: offset 1024",
        "slot 127: offset 130048",
      ],
    },
    {
      name: "READ, scattered re-request",
      frame: encodeFrame(SERVER, SLED, { type: "read", count: 3n, slots: scattered }),
      info: "READ count=3 first=5120",
      fields: { count: "3", asked: "3", offsets: "5120|92160|130048", empty: "125" },
      tree: [
        "Slots asked: 3",
        "slot 5: offset 5120",
        "slot 90: offset 92160",
        "slot 127: offset 130048",
        "[empty slots: 125 (0-4, 6-89, 91-126)]",
      ],
    },
    {
      name: "DATA",
      frame: encodeFrame(SLED, SERVER, { type: "data", offset: 1024n, bytes: new Uint8Array(1024).fill(0xab) }),
      info: "DATA offset=1024 len=1024",
      fields: { type: "0x00009104", len: "1032", dataOffset: "1024", dataLength: "1024", data: "ab".repeat(1024) },
      tree: ["Type: DATA (0x00009104)", "[Sent by: server]", "Offset: 1024", "[Data length: 1024]"],
    },
    {
      name: "DATA, end of image",
      frame: encodeFrame(SLED, SERVER, { type: "data", offset: 1048576n, bytes: new Uint8Array(0) }),
      info: "DATA offset=1048576 len=0 end of image",
      fields: { len: "8", dataOffset: "1048576", dataLength: "0", expert: "end of image: DATA with no bytes" },
      tree: [
        "Offset: 1048576",
        "[Data length: 0]",
        "[Expert Info (Chat/Sequence): end of image: DATA with no bytes]",
        "Padding: 26 bytes beyond len",
      ],
    },
    {
      name: "FINISHED, padded to 60 bytes",
      frame: encodeFrame(SERVER, SLED, { type: "finished" }),
      info: "FINISHED",
      fields: { type: "0x00009005", len: "0", padding: "00".repeat(34), expert: "" },
      tree: ["Type: FINISHED (0x00009005)", "[Sent by: sled]", "Length: 0", "Padding: 34 bytes beyond len"],
    },
    {
      name: "RESET, unpadded as on a veth",
      frame: encodeFrame(SLED, SERVER, { type: "reset" }).subarray(0, 26),
      info: "RESET",
      fields: { type: "0x00009106", len: "0", padding: "", expert: "" },
      tree: ["Type: RESET (0x00009106)", "[Sent by: server]", "Length: 0"],
    },
    {
      name: "wrong magic",
      frame: wrongMagic,
      info: "FINISHED [magic 0xdeadbeef is not 0x1de12345]",
      fields: { magic: "0xdeadbeef", expert: "magic 0xdeadbeef is not 0x1de12345" },
      tree: ["Magic: 0xdeadbeef", "[Expert Info (Error/Malformed): magic 0xdeadbeef is not 0x1de12345]"],
    },
    {
      name: "OFFER of len 100",
      frame: setLen(offer(), 100),
      info: "OFFER image=1048576 ramdisk=67108864 [OFFER len 100 is not 176]",
      fields: { len: "100", expert: "OFFER len 100 is not 176", dataset: "" },
      tree: ["[Expert Info (Error/Malformed): OFFER len 100 is not 176]", "Padding: 76 bytes beyond len"],
    },
    {
      name: "OFFER with an unterminated dataset and sizes the sled ignores",
      frame: offer({ ramdiskSize: 1000n, imageSize: 1048577n, dataset: unterminated }),
      info: `OFFER image=1048577 ramdisk=1000 dataset="${"A".repeat(128)}" [the sled ignores sizes below 1 MiB; image size is not a multiple of 128 KiB: the sled's checksum will fail; dataset byte 127 is not 0: the sled ignores this OFFER]`,
      fields: { dataset: "A".repeat(128) },
      tree: [
        "[Expert Info (Error/Malformed): dataset byte 127 is not 0: the sled ignores this OFFER]",
        "[Expert Info (Warning/Protocol): the sled ignores sizes below 1 MiB]",
      ],
    },
    {
      name: "READ of count 200",
      frame: encodeFrame(SERVER, SLED, { type: "read", count: 200n, slots: firstBatch }),
      info: "READ count=200 first=0 [count 200 is more than 128 slots]",
      fields: { count: "200", expert: "count 200 is more than 128 slots" },
      tree: ["Count: 200", "[Expert Info (Error/Malformed): count 200 is more than 128 slots]"],
    },
    {
      name: "HELLO whose len runs past the frame",
      frame: setLen(encodeFrame(BROADCAST_MAC, SLED, { type: "hello", text: new TextEncoder().encode("hi") }), 500),
      info: 'HELLO "hi" [len 500 is more than the 34 body bytes in the frame]',
      fields: { len: "500", expert: "len 500 is more than the 34 body bytes in the frame" },
      tree: ["[Expert Info (Error/Malformed): len 500 is more than the 34 body bytes in the frame]"],
    },
    {
      name: "DATA above the sled's 1476-byte limit",
      frame: encodeFrame(SLED, SERVER, { type: "data", offset: 0n, bytes: new Uint8Array(1469) }),
      info: "DATA offset=0 len=1469 [DATA len 1477 is not within 8..1476]",
      fields: { len: "1477", dataLength: "1469", expert: "DATA len 1477 is not within 8..1476" },
      tree: ["[Expert Info (Error/Malformed): DATA len 1477 is not within 8..1476]"],
    },
  ];
}

const FIELDS: Record<string, string> = {
  protocol: "_ws.col.Protocol",
  info: "_ws.col.Info",
  magic: "oxide_netboot.magic",
  type: "oxide_netboot.type",
  len: "oxide_netboot.len",
  text: "oxide_netboot.hello.text",
  ramdisk: "oxide_netboot.offer.ramdisk_size",
  image: "oxide_netboot.offer.image_size",
  sha256: "oxide_netboot.offer.sha256",
  dataset: "oxide_netboot.offer.dataset",
  count: "oxide_netboot.read.count",
  asked: "oxide_netboot.read.asked",
  offsets: "oxide_netboot.read.offset",
  empty: "oxide_netboot.read.empty_slots",
  dataOffset: "oxide_netboot.data.offset",
  dataLength: "oxide_netboot.data.length",
  data: "oxide_netboot.data.bytes",
  padding: "oxide_netboot.padding",
  expert: "_ws.expert.message",
  timestamp: "frame.time_epoch",
  length: "frame.len",
};

describe.skipIf(!TSHARK)(
  `the Wireshark dissector${TSHARK ? "" : " (skipped: tshark is not installed; apt-get install tshark)"}`,
  () => {
    const cases = buildCases();
    let path: string;
    let rows: Record<string, string>[];
    let trees: string[];

    async function tshark(...args: string[]): Promise<string> {
      const stdout = await commandOutput([TSHARK!, "-r", path, "-X", `lua_script:${DISSECTOR}`, ...args]);
      // A Lua runtime error does not fail tshark; it shows in the output.
      expect(stdout).not.toContain("Lua Error");
      return stdout;
    }

    beforeAll(async () => {
      path = join(dir, "every-frame.pcap");
      const capture = PcapFileWriter.open(path);
      cases.forEach((c, i) => capture.write(c.frame, Number(FIRST_MICROSECOND + BigInt(i) * STEP_MICROSECONDS) / 1000));
      capture.close();

      const names = Object.keys(FIELDS);
      const fieldArgs = names.flatMap((name) => ["-e", FIELDS[name]!]);
      const out = await tshark(
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
        ...fieldArgs,
      );
      rows = out
        .trimEnd()
        .split("\n")
        .map((line) => Object.fromEntries(line.split("\t").map((value, i) => [names[i]!, value])));
      trees = (await tshark("-V", "-O", "oxide_netboot")).split(/^Frame \d+: /m).slice(1);
    });

    test("tshark reads the capture frame for frame, with its timestamps", () => {
      expect(rows).toHaveLength(cases.length);
      rows.forEach((row, i) => {
        const microseconds = FIRST_MICROSECOND + BigInt(i) * STEP_MICROSECONDS;
        const seconds = microseconds / 1_000_000n;
        const fraction = (microseconds % 1_000_000n).toString().padStart(6, "0");
        expect(row.timestamp).toBe(`${seconds}.${fraction}000`);
        expect(row.length).toBe(String(cases[i]!.frame.length));
      });
    });

    test.skipIf(!CAPINFOS)("capinfos sees a classic pcap of Ethernet frames", async () => {
      const stdout = await commandOutput([CAPINFOS!, "-M", "-t", "-E", "-l", "-c", path]);
      expect(stdout).toMatch(/^File type:\s+pcap$/m);
      expect(stdout).toMatch(/^File encapsulation:\s+ether$/m);
      expect(stdout).toMatch(/^Packet size limit:\s+file hdr: 65535 bytes$/m);
      expect(stdout).toMatch(new RegExp(`^Number of packets:\\s+${cases.length}$`, "m"));
    });

    cases.forEach((c, i) => {
      test(`decodes ${c.name}`, () => {
        const row = rows[i]!;
        expect(row.protocol).toBe("NETBOOT");
        expect(row.info).toBe(c.info);
        for (const [name, value] of Object.entries(c.fields)) {
          expect({ field: FIELDS[name], value: row[name] }).toEqual({ field: FIELDS[name], value });
        }
        const lines = trees[i]!.split("\n").map((line) => line.trim());
        for (const line of c.tree) expect(lines).toContain(line);
      });
    });

    test("display filters select frames by decoded field", async () => {
      const numbers = async (filter: string) =>
        (await tshark("-Y", filter, "-T", "fields", "-e", "frame.number")).trim().split("\n");
      const position = (name: string) => String(cases.findIndex((c) => c.name === name) + 1);
      expect(await numbers("oxide_netboot.read.offset == 92160 && oxide_netboot.read.count < 128")).toEqual([
        position("READ, scattered re-request"),
      ]);
      expect(await numbers("oxide_netboot.data.end_of_image")).toEqual([position("DATA, end of image")]);
      expect(await numbers('_ws.expert.group == "Malformed" && oxide_netboot')).toEqual(
        [
          "wrong magic",
          "OFFER of len 100",
          "OFFER with an unterminated dataset and sizes the sled ignores",
          "READ of count 200",
          "HELLO whose len runs past the frame",
          "DATA above the sled's 1476-byte limit",
        ].map(position),
      );
    });
  },
);
