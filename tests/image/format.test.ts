/**
 * The header layout of lib/image/format.ts against an independent decoder
 * (python3's struct.unpack, written from docs/format.md), the
 * existing tools' vectors, and each way decodeHeader refuses a header and
 * decodeHeaderFields (the existing lookimage's reading) does not.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import {
  DEFAULT_DATASET,
  decodeHeader,
  decodeHeaderFields,
  encodeHeader,
  encodeName,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  kernelRefusals,
  NAME_MAX_BYTES,
  nameDamage,
  netbootRefusals,
  payloadHeader,
  payloadSizeRefusal,
  toHex,
  ZSTD_VERSION,
} from "@ramdisk-tools/image/format.ts";
import { python, VECTORS } from "../helpers/common.ts";

const VECTOR_IMAGES = ["pool-1m.img", "pool-1m-z.img", "pool-odd.img", "pool-odd-z.img"];

/**
 * Decode every 4096-byte header in a file with struct.unpack, one JSON
 * object per header; sizes as strings so 64-bit values survive JSON.
 */
const PYTHON_DECODER = String.raw`
import json, struct, sys
data = open(sys.argv[1], "rb").read()
for at in range(0, len(data), 4096):
    h = data[at:at + 4096]
    magic, version, flags, data_size, image_size, target_size = struct.unpack_from("<IIQQQQ", h, 0)
    sha, dataset, name, padding = struct.unpack_from("<32s128s128s3768s", h, 40)
    print(json.dumps({
        "magic": magic, "version": version, "flags": str(flags),
        "dataSize": str(data_size), "imageSize": str(image_size), "targetSize": str(target_size),
        "sha256": sha.hex(),
        # Names as the existing tools read them: the whole field as UTF-8, NULs trimmed at both ends.
        "dataset": dataset.decode("utf-8").strip("\0"), "datasetLast": dataset[127],
        "imageName": name.decode("utf-8").strip("\0"), "imageNameLast": name[127],
        "paddingZero": padding == bytes(3768),
    }))
`;

interface PythonHeader {
  magic: number;
  version: number;
  flags: string;
  dataSize: string;
  imageSize: string;
  targetSize: string;
  sha256: string;
  dataset: string;
  datasetLast: number;
  imageName: string;
  imageNameLast: number;
  paddingZero: boolean;
}

let scratch: string;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "format-test-"));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function pythonDecode(headers: Uint8Array[]): Promise<PythonHeader[]> {
  const path = join(scratch, `headers-${crypto.randomUUID()}`);
  const all = new Uint8Array(headers.length * HEADER_SIZE);
  headers.forEach((header, index) => all.set(header.subarray(0, HEADER_SIZE), index * HEADER_SIZE));
  await Bun.write(path, all);
  let decoded: string;
  try {
    decoded = python(PYTHON_DECODER, path);
  } finally {
    await rm(path);
  }
  return decoded
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as PythonHeader);
}

/** What decodeHeader should return for a header python decoded, when it accepts it. */
function expectSameFacts(ours: Header, python: PythonHeader) {
  expect(python.magic).toBe(0x1deb0075);
  expect(ours.version).toBe(python.version);
  expect(ours.flags).toBe(BigInt(python.flags));
  expect(BigInt(ours.dataSize)).toBe(BigInt(python.dataSize));
  expect(BigInt(ours.imageSize)).toBe(BigInt(python.imageSize));
  expect(BigInt(ours.targetSize)).toBe(BigInt(python.targetSize));
  expect(toHex(ours.sha256)).toBe(python.sha256);
  expect(ours.dataset).toBe(python.dataset);
  expect(ours.imageName).toBe(python.imageName);
}

/** A header whose name fields hold exactly these bytes (the rest of each field NUL). */
function withNames(dataset: number[], imageName: number[]): Uint8Array {
  const bytes = encodeHeader(sampleHeader({ dataset: "", imageName: "" }));
  bytes.set(dataset, 72);
  bytes.set(imageName, 200);
  return bytes;
}

/** The bytes of a string whose characters are bytes ("\xff" is the byte 0xff). */
function text(value: string): number[] {
  return [...Buffer.from(value, "latin1")];
}

const SHA = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff);

/** A compressed header with a distinct value in every field, so a misplaced field shows. */
function sampleHeader(overrides: Partial<Header> = {}): Header {
  return {
    version: 2,
    flags: 1n,
    dataSize: 0x0102_0304_0506,
    imageSize: 0x0a0b_0c0d_0e0f,
    targetSize: 0x1112_1314_1516,
    sha256: SHA,
    dataset: "rpool/ROOT/ramdisk-test",
    imageName: "recovery-sample",
    ...overrides,
  };
}

describe("encodeHeader", () => {
  test("puts every field at its documented offset (python struct.unpack agrees)", async () => {
    const header = sampleHeader();
    const bytes = encodeHeader(header);
    expect(bytes.length).toBe(HEADER_SIZE);
    const [python] = await pythonDecode([bytes]);
    expectSameFacts(header, python!);
    expect(python!.datasetLast).toBe(0);
    expect(python!.imageNameLast).toBe(0);
    expect(python!.paddingZero).toBe(true);
    // Magic as the bytes on disk that format.md gives.
    expect([...bytes.subarray(0, 4)]).toEqual([0x75, 0x00, 0xeb, 0x1d]);
  });

  test("round-trips through decodeHeader", () => {
    const header = sampleHeader({ flags: 0n, dataSize: 5 * MIB, imageSize: 5 * MIB });
    expect(decodeHeader(encodeHeader(header))).toEqual(header);
  });

  test("names of exactly 127 bytes fit, with byte 127 of the field left NUL", async () => {
    const dataset = "d".repeat(NAME_MAX_BYTES);
    const imageName = `${"é".repeat(63)}n`; // 2-byte UTF-8 characters: 127 bytes
    const header = sampleHeader({ dataset, imageName });
    const bytes = encodeHeader(header);
    const [python] = await pythonDecode([bytes]);
    expect(python!.dataset).toBe(dataset);
    expect(python!.imageName).toBe(imageName);
    expect(python!.datasetLast).toBe(0);
    expect(python!.imageNameLast).toBe(0);
    expect(decodeHeader(bytes)).toEqual(header);
  });

  test("refuses names of 128 bytes, counted in UTF-8 bytes", () => {
    expect(() => encodeHeader(sampleHeader({ dataset: "d".repeat(128) }))).toThrow(
      /dataset name is 128 bytes long; at most 127/,
    );
    expect(() => encodeHeader(sampleHeader({ imageName: "é".repeat(64) }))).toThrow(
      /image name is 128 bytes long; at most 127/,
    );
    expect(() => encodeName("image name", "n".repeat(128))).toThrow(ImageFormatError);
  });

  test("refuses a name with a NUL, a checksum of the wrong length and sizes that are not whole bytes", () => {
    expect(() => encodeHeader(sampleHeader({ imageName: "a\0b" }))).toThrow(/image name contains a NUL byte/);
    expect(() => encodeHeader(sampleHeader({ sha256: new Uint8Array(31) }))).toThrow(/sha256 is 31 bytes, not 32/);
    expect(() => encodeHeader(sampleHeader({ dataSize: -1 }))).toThrow(/data size of -1/);
    expect(() => encodeHeader(sampleHeader({ imageSize: 1.5 }))).toThrow(/image size of 1.5/);
    expect(() => encodeHeader(sampleHeader({ targetSize: 2 ** 53 }))).toThrow(/target size of/);
  });
});

describe("decodeHeader", () => {
  test("reads the existing tools' vectors as python does", async () => {
    const headers = await Promise.all(
      VECTOR_IMAGES.map((name) => Bun.file(join(VECTORS, name)).slice(0, HEADER_SIZE).bytes()),
    );
    const python = await pythonDecode(headers);
    for (const [index, name] of VECTOR_IMAGES.entries()) {
      const path = join(VECTORS, name);
      const ours = decodeHeader(headers[index]!, { fileSize: Bun.file(path).size });
      expectSameFacts(ours, python[index]!);
    }
  });

  test("every byte of the header is read as its field (one byte changed at each of the 4096 offsets)", async () => {
    const base = encodeHeader(sampleHeader({ dataset: "pool", imageName: "name" }));
    const mutated = Array.from({ length: HEADER_SIZE }, (_, offset) => {
      const bytes = base.slice();
      bytes[offset] = bytes[offset] === 0x41 ? 0x42 : 0x41; // printable, so names stay valid UTF-8
      return bytes;
    });
    const python = await pythonDecode(mutated);
    const unchanged = decodeHeader(base);
    for (let offset = 0; offset < HEADER_SIZE; offset++) {
      const facts = python[offset]!;
      const decode = () => decodeHeader(mutated[offset]!);
      if (offset < 4) {
        expect(decode).toThrow(/bad magic/);
      } else if (offset < 8) {
        expect(decode).toThrow(/unsupported version/);
      } else if (BigInt(facts.targetSize) < BigInt(facts.imageSize)) {
        expect(decode).toThrow(/target size of \d+ bytes is less than image size of \d+/);
      } else if (
        [facts.dataSize, facts.imageSize, facts.targetSize].some(
          (size) => BigInt(size) > BigInt(Number.MAX_SAFE_INTEGER),
        )
      ) {
        expect(decode).toThrow(/beyond any real image/);
      } else if (offset === 199) {
        expect(facts.datasetLast).not.toBe(0);
        expect(decode).toThrow(/dataset name is not NUL-terminated \(byte 199/);
      } else if (offset === 327) {
        expect(facts.imageNameLast).not.toBe(0);
        expect(decode).toThrow(/image name is not NUL-terminated \(byte 327/);
      } else if (offset >= 328) {
        // Padding: format.md says zero, but no reader looks at it.
        expect(facts.paddingZero).toBe(false);
        expect(decode()).toEqual(unchanged);
      } else {
        expectSameFacts(decode(), facts);
      }
    }
  });

  test("refuses a file shorter than the header", () => {
    expect(() => decodeHeader(encodeHeader(sampleHeader()).subarray(0, 4095))).toThrow(
      /file is 4095 bytes, shorter than the 4096-byte header/,
    );
    expect(() => decodeHeader(new Uint8Array(0))).toThrow(/file is 0 bytes/);
  });

  test("refuses a bad magic and a version other than 2", () => {
    const bytes = encodeHeader(sampleHeader());
    const badMagic = bytes.slice();
    badMagic[0] = 0x76;
    expect(() => decodeHeader(badMagic)).toThrow(/bad magic 0x1deb0076, expected 0x1deb0075/);
    const version1 = bytes.slice();
    new DataView(version1.buffer).setUint32(4, 1, true);
    expect(() => decodeHeader(version1)).toThrow(/unsupported version 1, expected 2/);
    expect(decodeHeader(version1, { versions: [1, 2] }).version).toBe(1);
  });

  test("refuses unterminated dataset and image names; decodeHeaderFields reads them as the existing lookimage does", () => {
    const bytes = encodeHeader(sampleHeader());
    const dataset = bytes.slice();
    dataset.fill(0x61, 72, 200);
    expect(() => decodeHeader(dataset)).toThrow(/dataset name is not NUL-terminated \(byte 199 is not 0\)/);
    expect(decodeHeaderFields(dataset).dataset).toBe("a".repeat(128));
    const imageName = bytes.slice();
    imageName.fill(0x61, 200, 328);
    expect(() => decodeHeader(imageName)).toThrow(/image name is not NUL-terminated \(byte 327 is not 0\)/);
    expect(decodeHeaderFields(imageName).imageName).toBe("a".repeat(128));
  });

  test("reads names as the existing tools do: the whole field as UTF-8, NULs trimmed at both ends", () => {
    const header = decodeHeader(withNames(text("rpool/ROOT/ramdisk\0old"), text("test\0\0ing\xc3\xa9")));
    expect(header.dataset).toBe("rpool/ROOT/ramdisk\0old");
    expect(header.imageName).toBe("test\0\0ing\u00e9");
    // Rust's trim_matches('\0') takes the leading NULs too.
    const leading = decodeHeader(withNames(text("\0\0rpool/ROOT/ramdisk"), text("\0x\0y")));
    expect(leading.dataset).toBe("rpool/ROOT/ramdisk");
    expect(leading.imageName).toBe("x\0y");
    // A byte order mark is a character of the name, as in Rust's String::from_utf8.
    expect(decodeHeader(withNames(text("\xef\xbb\xbfx"), [])).dataset).toBe("\ufeffx");
    // Not UTF-8 anywhere in the field, even after the first NUL: refused, naming the first bad byte.
    expect(() => decodeHeader(withNames([], text("ok\0\xff")))).toThrow(
      new ImageFormatError("image name is not valid UTF-8 (from byte 203)"),
    );
    expect(() => decodeHeader(withNames(text("ab\xe2\x82"), []))).toThrow(
      new ImageFormatError("dataset name is not valid UTF-8 (from byte 74)"),
    );
    expect(() => decodeHeader(withNames(text("\xed\xa0\x80"), []))).toThrow(/dataset name is not valid UTF-8/);
  });

  test("nameDamage says where a reader that stops at the first NUL sees another name, or none ends", () => {
    expect(nameDamage(decodeHeaderFields(encodeHeader(sampleHeader())))).toEqual([]);
    expect(
      nameDamage(decodeHeaderFields(withNames(text("rpool/ROOT/ramdisk\0old"), text("\xc3\xa9t\xc3\xa9\0\0x")))),
    ).toEqual([
      "dataset name holds a NUL at byte 90 with more bytes after it: " +
        'the sled kernel reads it only up to there, as "rpool/ROOT/ramdisk"',
      "image name holds a NUL at byte 205 with more bytes after it: " +
        'a reader that stops at the first NUL sees "\u00e9t\u00e9"',
    ]);
    // Leading NULs, which the name shown has lost: the kernel reads an empty dataset.
    expect(nameDamage(decodeHeaderFields(withNames(text("\0rpool"), text("x"))))).toEqual([
      'dataset name holds a NUL at byte 72 with more bytes after it: the sled kernel reads it only up to there, as ""',
    ]);
    const full = withNames(text("d".repeat(128)), text(`${"i".repeat(100)}\0${"j".repeat(27)}`));
    expect(nameDamage(decodeHeaderFields(full))).toEqual([
      "the sled kernel would refuse this image: the dataset name field does not end in a NUL (byte 199 is 0x64)",
      "the image name field does not end in a NUL (byte 327 is 0x6a): a reader that stops only at a NUL reads past it",
      `image name holds a NUL at byte 300 with more bytes after it: a reader that stops at the first NUL sees "${"i".repeat(100)}"`,
    ]);
  });

  test("refuses an uncompressed header whose data size differs from its image size", () => {
    const bytes = encodeHeader(sampleHeader({ flags: 0n, dataSize: 8192, imageSize: 4096 }));
    expect(() => decodeHeader(bytes)).toThrow(
      /data size of 8192 bytes differs from image size of 4096 in an uncompressed image/,
    );
    // The same sizes are fine when compressed (data size is then the zlib stream's).
    expect(decodeHeader(encodeHeader(sampleHeader({ flags: 1n, dataSize: 8192, imageSize: 4096 }))).dataSize).toBe(
      8192,
    );
  });

  test("refuses a file whose length is not 4096 + data size, both ways", () => {
    const bytes = encodeHeader(sampleHeader({ dataSize: 1000 }));
    expect(decodeHeader(bytes, { fileSize: 5096 }).dataSize).toBe(1000);
    expect(() => decodeHeader(bytes, { fileSize: 5095 })).toThrow(
      /file is 5095 bytes but the header says 5096 .*: truncated/,
    );
    expect(() => decodeHeader(bytes, { fileSize: 5097 })).toThrow(
      /file is 5097 bytes but the header says 5096 .*: has trailing bytes/,
    );
  });

  test("refuses a target size below the image size, as the existing tools do at the header", () => {
    const bytes = encodeHeader(sampleHeader({ imageSize: 8192, targetSize: 8191 }));
    const refusal = "target size of 8191 bytes is less than image size of 8192";
    expect(() => decodeHeaderFields(bytes)).toThrow(new ImageFormatError(refusal));
    expect(() => decodeHeader(bytes)).toThrow(new ImageFormatError(refusal));
    expect(decodeHeader(encodeHeader(sampleHeader({ imageSize: 8192, targetSize: 8192 }))).targetSize).toBe(8192);
  });

  test("sizes of 2^53 and more: decodeHeader refuses them, decodeHeaderFields reads them exactly", () => {
    const cases: [number, bigint[]][] = [
      [16, [2n ** 53n, 2n ** 64n - 1n]],
      [24, [2n ** 53n]],
      [32, [2n ** 53n, 2n ** 64n - 1n]],
    ];
    for (const [offset, values] of cases) {
      for (const value of values) {
        const bytes = encodeHeader(sampleHeader({ dataSize: 4096, imageSize: 4096, targetSize: 4096 }));
        const view = new DataView(bytes.buffer);
        // The image size may not pass the target size, so both go up together.
        if (offset === 24) view.setBigUint64(32, value, true);
        view.setBigUint64(offset, value, true);
        expect(() => decodeHeader(bytes)).toThrow(new RegExp(`of ${value} bytes is beyond any real image`));
        const fields = decodeHeaderFields(bytes);
        expect([fields.dataSize, fields.imageSize, fields.targetSize][(offset - 16) / 8]).toBe(value);
        view.setBigUint64(offset, 2n ** 53n - 1n, true);
        if (offset === 24) view.setBigUint64(32, 2n ** 53n - 1n, true);
        expect(() => decodeHeader(bytes)).not.toThrow();
      }
    }
  });

  test("payloadHeader gives the sizes as numbers, or says why no payload could match them", () => {
    const fields = decodeHeaderFields(encodeHeader(sampleHeader({ dataSize: 100, imageSize: 5000 })));
    expect(payloadHeader(fields)).toEqual({
      header: { version: 2, flags: 1n, dataSize: 100, imageSize: 5000, sha256: SHA },
      refusal: null,
    });
    expect(payloadHeader({ ...fields, imageSize: 2n ** 60n, targetSize: 2n ** 60n })).toEqual({
      header: null,
      refusal: "image size of 1152921504606846976 bytes is beyond any real image",
    });
    // A target size past 2^53 does not stand in the way: a payload is not checked against it.
    expect(payloadHeader({ ...fields, targetSize: 2n ** 64n - 1n }).header?.imageSize).toBe(5000);
  });
});

describe("kernelRefusals", () => {
  const sized = (imageSize: number, targetSize: number) => sampleHeader({ imageSize, targetSize });

  test("accepts 4096 <= image size <= 4 GiB <= target size", () => {
    expect(kernelRefusals(sized(4096, 4096))).toEqual([]);
    expect(kernelRefusals(sized(4 * 1024 * MIB, 4 * 1024 * MIB))).toEqual([]);
    expect(kernelRefusals(sized(MIB, 64 * MIB))).toEqual([]);
  });

  test("names each reason", () => {
    expect(kernelRefusals(sized(4095, 4096))).toEqual([
      "image size of 4095 bytes is below the kernel's minimum of 4096",
    ]);
    expect(kernelRefusals(sized(4 * 1024 * MIB + 1, 8 * 1024 * MIB))).toEqual([
      "image size of 4294967297 bytes is above the kernel's maximum of 4294967296 (4 GiB)",
    ]);
    expect(kernelRefusals(sized(2 * MIB, MIB))).toEqual([
      "target size of 1048576 bytes is less than image size of 2097152",
    ]);
    expect(kernelRefusals(sized(100, 50))).toHaveLength(2);
  });
});

describe("payloadSizeRefusal", () => {
  test("a version 2 payload must be 1 to image_size bytes, in the existing lookimage's words", () => {
    expect(payloadSizeRefusal({ version: 2, dataSize: 4096, imageSize: 4096 })).toBeNull();
    expect(payloadSizeRefusal({ version: 2, dataSize: 1, imageSize: 4096 })).toBeNull();
    expect(payloadSizeRefusal({ version: 2, dataSize: 0, imageSize: 4096 })).toBe("data size is 0");
    expect(payloadSizeRefusal({ version: 2, dataSize: 4097, imageSize: 4096 })).toBe(
      "image size 4096 < data size 4097",
    );
  });

  test("a zstd payload answers to its seek table, whatever its size", () => {
    expect(payloadSizeRefusal({ version: ZSTD_VERSION, dataSize: 4097, imageSize: 4096 })).toBeNull();
  });
});

describe("netbootRefusals", () => {
  test("accepts sizes of at least 1 MiB in whole 128 KiB batches", () => {
    expect(netbootRefusals({ imageSize: MIB, targetSize: MIB })).toEqual([]);
    expect(netbootRefusals({ imageSize: MIB + 128 * 1024, targetSize: 4096 * MIB })).toEqual([]);
  });

  test("names each reason", () => {
    expect(netbootRefusals({ imageSize: MIB - 128 * 1024, targetSize: 64 * MIB })).toEqual([
      "image size of 917504 bytes is below 1 MiB, so a netbooting sled ignores the offer",
    ]);
    expect(netbootRefusals({ imageSize: MIB, targetSize: MIB - 1 })).toEqual([
      "target size of 1048575 bytes is below 1 MiB, so a netbooting sled ignores the offer",
    ]);
    expect(netbootRefusals({ imageSize: MIB + 1, targetSize: 64 * MIB })).toEqual([
      "image size of 1048577 bytes is not a multiple of 131072 (128 KiB), so a netbooting sled would fail its checksum",
    ]);
  });

  test("the odd vector could not be netbooted, the 1 MiB one could", async () => {
    const header = async (name: string) =>
      decodeHeader(await Bun.file(join(VECTORS, name)).slice(0, HEADER_SIZE).bytes());
    expect(netbootRefusals(await header("pool-odd.img"))).toHaveLength(2);
    expect(netbootRefusals(await header("pool-1m.img"))).toEqual([]);
    expect(kernelRefusals(await header("pool-odd-z.img"))).toEqual([]);
  });
});

test("DEFAULT_DATASET is what the existing tools write", async () => {
  const [python] = await pythonDecode([await Bun.file(join(VECTORS, "pool-1m.img")).slice(0, HEADER_SIZE).bytes()]);
  expect(python!.dataset).toBe(DEFAULT_DATASET);
});
