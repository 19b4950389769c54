/**
 * Fuzz tests of the image header (lib/image/format.ts): decodeHeader on
 * damaged, edge-sized and random headers, checked against the spec and a
 * python3 decoder; flagNames and payloadCodec on every edge. The generator,
 * tally and shared checks are tests/helpers/fuzz.ts's.
 */

import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import {
  decodeHeader,
  decodeHeaderFields,
  FLAG_COMPRESSED,
  FLAG_ZSTD,
  flagNames,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  kernelRefusals,
  MAGIC,
  nameDamage,
  netbootRefusals,
  VERSION,
  ZSTD_VERSION,
} from "@ramdisk-tools/image/format.ts";
import { IMAGE_VERSIONS, payloadCodec } from "@ramdisk-tools/image/zstd-image.ts";
import { hex, VECTORS } from "../helpers/common.ts";
import {
  concat,
  flipBits,
  fuzzFile,
  isOneLine,
  MAX_SAFE,
  nameField,
  outcome,
  pythonJson,
  Random,
  SIZE_EDGES,
  scaled,
  show,
  Tally,
  U32_MAX,
  U64_MAX,
} from "../helpers/fuzz.ts";

const scratch = fuzzFile();

/** A header to write byte by byte, names included as raw fields (not lib/image/format.ts's HeaderFields). */
interface RawHeader {
  magic: number;
  version: number;
  flags: bigint;
  dataSize: bigint;
  imageSize: bigint;
  targetSize: bigint;
  sha256: Uint8Array;
  /** The raw 128-byte fields, so tests can write what no encoder would. */
  dataset: Uint8Array;
  imageName: Uint8Array;
}

/** A header written from the table in format.md, independently of encodeHeader. */
function headerBytes(fields: RawHeader): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, fields.magic, true);
  view.setUint32(4, fields.version, true);
  view.setBigUint64(8, fields.flags, true);
  view.setBigUint64(16, fields.dataSize, true);
  view.setBigUint64(24, fields.imageSize, true);
  view.setBigUint64(32, fields.targetSize, true);
  out.set(fields.sha256.subarray(0, 32), 40);
  out.set(fields.dataset.subarray(0, 128), 72);
  out.set(fields.imageName.subarray(0, 128), 200);
  return out;
}

function validHeaderFields(random: Random): RawHeader {
  const imageSize = BigInt(4096 + random.scaled(64 * MIB));
  const compressed = random.chance(0.5);
  return {
    magic: MAGIC,
    version: VERSION,
    flags: compressed ? FLAG_COMPRESSED : 0n,
    dataSize: compressed ? BigInt(1 + random.scaled(Number(imageSize))) : imageSize,
    imageSize,
    targetSize: imageSize + BigInt(random.scaled(MIB)),
    sha256: random.bytes(32),
    dataset: nameField(random.chance(0.5) ? "rpool/ROOT/ramdisk" : ""),
    imageName: nameField(random.pick(["testing", "recovery-testing", "", "x".repeat(127)])),
  };
}

/** The four headers the existing Rust mkimage wrote, with their files' sizes. */
function vectorHeaders(): { header: Uint8Array; fileSize: number }[] {
  return ["pool-1m.img", "pool-1m-z.img", "pool-odd.img", "pool-odd-z.img"].map((name) => {
    const file = readFileSync(join(VECTORS, name));
    return { header: new Uint8Array(file.subarray(0, HEADER_SIZE)), fileSize: file.length };
  });
}

function u64At(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset, true);
}

/**
 * A name field as the existing tools read it (Rust's String::from_utf8 of all
 * 128 bytes, then trim_matches('\0'), at both ends); null when it is not UTF-8.
 */
function nameAsRead(field: Uint8Array): string | null {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(field).replace(/^\0+|\0+$/g, "");
  } catch {
    return null;
  }
}

/**
 * Check what decodeHeader made of `bytes`: an ImageFormatError with one line,
 * or a header whose every field can be stated from the bytes and the format's
 * rules. Then run the functions that take a decoded header. decodeHeaderFields
 * (the existing lookimage's reading) must read the same bytes alike, and
 * accept exactly what decodeHeader accepts plus sizes of 2^53 and more and
 * names whose last byte is not NUL.
 */
function checkHeader(tally: Tally, label: string, bytes: Uint8Array, fileSize?: number, versions?: readonly number[]) {
  tally.cases++;
  const result = outcome(() => decodeHeader(bytes, { fileSize, versions }));
  for (const problem of checkFields(bytes, fileSize, versions, result.ok)) tally.fail(label, problem);
  if (!result.ok) {
    tally.refusal(label, result.error, ImageFormatError);
    return null;
  }
  tally.accepted++;
  const header = result.value;
  const problems: string[] = [];
  if (bytes.length < HEADER_SIZE) problems.push(`accepted ${bytes.length} bytes`);
  if (new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(0, true) !== MAGIC)
    problems.push("accepted a bad magic");
  if (!(versions ?? [VERSION]).includes(header.version)) problems.push(`accepted version ${header.version}`);
  const sizes: [keyof Header, number][] = [
    ["dataSize", 16],
    ["imageSize", 24],
    ["targetSize", 32],
  ];
  for (const [field, offset] of sizes) {
    const value = header[field] as number;
    if (!Number.isSafeInteger(value) || BigInt(value) !== u64At(bytes, offset)) problems.push(`${field} ${value}`);
  }
  if (header.flags !== u64At(bytes, 8)) problems.push(`flags ${header.flags}`);
  if (hex(header.sha256) !== hex(bytes.subarray(40, 72))) problems.push("sha256 differs from bytes 40..72");
  if (bytes[199] !== 0 || bytes[327] !== 0) problems.push("accepted an unterminated name");
  if (header.dataset !== nameAsRead(bytes.subarray(72, 200)))
    problems.push(`dataset ${JSON.stringify(header.dataset)}`);
  if (header.imageName !== nameAsRead(bytes.subarray(200, 328)))
    problems.push(`image name ${JSON.stringify(header.imageName)}`);
  if (header.version === VERSION && (header.flags & FLAG_COMPRESSED) === 0n && header.dataSize !== header.imageSize) {
    problems.push("uncompressed with data size != image size");
  }
  if (fileSize !== undefined && fileSize !== HEADER_SIZE + header.dataSize)
    problems.push(`accepted file size ${fileSize}`);
  if (header.targetSize < header.imageSize) problems.push("accepted a target size below the image size");
  problems.push(...checkRefusals(header));
  for (const problem of problems) tally.fail(label, `${problem} (input ${show(bytes.subarray(0, 328))})`);
  return header;
}

/** decodeHeaderFields against decodeHeader's verdict and the bytes; the problems found. */
function checkFields(
  bytes: Uint8Array,
  fileSize: number | undefined,
  versions: readonly number[] | undefined,
  strictOk: boolean,
) {
  const problems: string[] = [];
  const result = outcome(() => decodeHeaderFields(bytes, { fileSize, versions }));
  if (!result.ok) {
    if (!(result.error instanceof ImageFormatError && isOneLine(result.error.message)))
      problems.push(`decodeHeaderFields threw ${result.error}`);
    if (strictOk) problems.push("decodeHeaderFields refused what decodeHeader accepts");
    return problems;
  }
  const fields = result.value;
  const sizes = [fields.dataSize, fields.imageSize, fields.targetSize];
  if (sizes.some((size, i) => size !== u64At(bytes, 16 + 8 * i))) problems.push(`fields' sizes ${sizes}`);
  if (fields.targetSize < fields.imageSize) problems.push("fields accepted a target size below the image size");
  if (
    fields.dataset !== nameAsRead(bytes.subarray(72, 200)) ||
    fields.imageName !== nameAsRead(bytes.subarray(200, 328))
  )
    problems.push(`fields' names ${JSON.stringify([fields.dataset, fields.imageName])}`);
  const strictWould = sizes.every((size) => size <= MAX_SAFE) && bytes[199] === 0 && bytes[327] === 0;
  if (strictWould !== strictOk) problems.push(`decodeHeader ${strictOk ? "accepts" : "refuses"} these fields`);
  for (const line of [...nameDamage(fields), ...kernelRefusals(fields), ...netbootRefusals(fields)])
    if (!isOneLine(line)) problems.push(`not one line: ${JSON.stringify(line)}`);
  return problems;
}

/** kernelRefusals, netbootRefusals, flagNames and payloadCodec on a decoded header, against the specs' rules. */
function checkRefusals(header: Header): string[] {
  const problems: string[] = [];
  const lines = [...kernelRefusals(header), ...netbootRefusals(header), flagNames(header.flags)];
  for (const line of lines) if (!isOneLine(line)) problems.push(`not one line: ${JSON.stringify(line)}`);
  // format.md: 4096 <= image_size <= 4 GiB and image_size <= target_size.
  const kernelAccepts =
    header.imageSize >= 4096 && header.imageSize <= 4 * 1024 * MIB && header.imageSize <= header.targetSize;
  if ((kernelRefusals(header).length === 0) !== kernelAccepts)
    problems.push(`kernelRefusals ${kernelRefusals(header)}`);
  // netboot.md: both sizes at least 1 MiB, and the image a whole number of 128 KiB batches.
  const netbootAccepts = header.imageSize >= MIB && header.targetSize >= MIB && header.imageSize % (128 * 1024) === 0;
  if ((netbootRefusals(header).length === 0) !== netbootAccepts)
    problems.push(`netbootRefusals ${netbootRefusals(header)}`);
  const codec = outcome(() => payloadCodec(header));
  const expected = expectedCodec(header.version, header.flags);
  if (codec.ok ? codec.value !== expected : expected !== null) {
    problems.push(`payloadCodec gave ${codec.ok ? codec.value : "a refusal"}, expected ${expected}`);
  }
  if (!codec.ok && !(codec.error instanceof ImageFormatError && isOneLine(codec.error.message))) {
    problems.push(`payloadCodec threw ${codec.error}`);
  }
  return problems;
}

/**
 * The codec docs/format.md gives a version and flags: version 2 is stored or
 * zlib by bit 0 and refused with ZSTD; the zstd version needs ZSTD without
 * COMPRESSED; other versions are refused (null).
 */
function expectedCodec(version: number, flags: bigint): string | null {
  const zstd = (flags & FLAG_ZSTD) !== 0n;
  const zlib = (flags & FLAG_COMPRESSED) !== 0n;
  if (version === VERSION) return zstd ? null : zlib ? "zlib" : "stored";
  if (version === ZSTD_VERSION) return zstd && !zlib ? "zstd" : null;
  return null;
}

describe("fuzz: image header", () => {
  test("bit flips, truncations, extensions and random headers end in a header or one ImageFormatError line", () => {
    const random = new Random(0x4ead0001);
    const tally = new Tally("decodeHeader (mutations)");
    const bases = [
      ...vectorHeaders().map(({ header }) => header),
      ...Array.from({ length: 12 }, () => headerBytes(validHeaderFields(random))),
    ];
    const baseResults = bases.map((base) => outcome(() => decodeHeader(base)));

    // Bit flips, mostly in the 328 bytes of fields; flips in the padding must change nothing.
    for (let i = 0; i < scaled(6000); i++) {
      const which = random.scaled(bases.length);
      const inPadding = random.chance(0.15);
      const mutated = inPadding
        ? flipBits(random, bases[which]!, 1 + random.scaled(8), 328, HEADER_SIZE)
        : flipBits(random, bases[which]!, 1 + random.scaled(4), 0, 328);
      const header = checkHeader(
        tally,
        `flip case ${i}`,
        mutated,
        undefined,
        random.chance(0.3) ? IMAGE_VERSIONS : undefined,
      );
      if (inPadding) {
        const before = baseResults[which]!;
        if (
          before.ok !== (header !== null) ||
          (header && before.ok && hex(header.sha256) !== hex(before.value.sha256))
        ) {
          tally.fail(`flip case ${i}`, "a flip in the padding changed the result");
        }
      }
    }
    // Truncation at every length: only a whole header decodes.
    const whole = bases[0]!;
    for (let length = 0; length <= HEADER_SIZE; length++) {
      const header = checkHeader(tally, `truncation to ${length}`, whole.subarray(0, length));
      if ((header !== null) !== (length === HEADER_SIZE)) tally.fail(`truncation to ${length}`, "wrong verdict");
    }
    // Extensions, and a header inside a larger buffer at an odd offset: bytes after 4096 do not matter.
    for (let i = 0; i < scaled(600); i++) {
      const which = random.scaled(bases.length);
      const lead = random.scaled(8);
      const buffer = concat(random.bytes(lead), bases[which]!, random.bytes(1 + random.scaled(5000)));
      const header = checkHeader(tally, `extension case ${i}`, buffer.subarray(lead));
      if ((header !== null) !== baseResults[which]!.ok)
        tally.fail(`extension case ${i}`, "trailing bytes changed the verdict");
    }
    // Random bytes behind a good magic and version, so the later checks are reached.
    for (let i = 0; i < scaled(1500); i++) {
      const bytes = random.bytes(HEADER_SIZE);
      new DataView(bytes.buffer).setUint32(0, MAGIC, true);
      if (random.chance(0.9)) new DataView(bytes.buffer).setUint32(4, random.pick([VERSION, ZSTD_VERSION]), true);
      if (random.chance(0.5)) bytes[199] = 0;
      if (random.chance(0.5)) bytes[327] = 0;
      for (const offset of [16, 24, 32]) if (random.chance(0.7)) bytes[offset + 7] = 0;
      checkHeader(tally, `random case ${i}`, bytes, undefined, random.chance(0.5) ? IMAGE_VERSIONS : undefined);
    }
    tally.report();
  });

  test("every size field at 0, 1, the edges and 2^64-1, with the file size right, short and long", () => {
    const random = new Random(0x4ead0002);
    const tally = new Tally("decodeHeader (size edges)");
    for (const flags of [0n, FLAG_COMPRESSED]) {
      for (const dataSize of SIZE_EDGES) {
        for (const imageSize of SIZE_EDGES) {
          for (const targetSize of SIZE_EDGES) {
            const fields = { ...validHeaderFields(random), flags, dataSize, imageSize, targetSize };
            const bytes = headerBytes(fields);
            const label = `flags ${flags} data ${dataSize} image ${imageSize} target ${targetSize}`;
            // decodeHeader refuses sizes above 2^53 - 1, a target size below the image size and,
            // uncompressed, data size != image size.
            const accepts =
              dataSize <= MAX_SAFE &&
              imageSize <= MAX_SAFE &&
              targetSize <= MAX_SAFE &&
              imageSize <= targetSize &&
              (flags !== 0n || dataSize === imageSize);
            const header = checkHeader(tally, label, bytes);
            if ((header !== null) !== accepts) tally.fail(label, `expected ${accepts ? "a header" : "a refusal"}`);
            if (!header) continue;
            const fileSize = HEADER_SIZE + header.dataSize;
            for (const delta of [0, -1, 1, -HEADER_SIZE]) {
              if (!Number.isSafeInteger(fileSize + delta) || fileSize + delta < 0) continue;
              const withFile = checkHeader(tally, `${label} file ${fileSize + delta}`, bytes, fileSize + delta);
              if ((withFile !== null) !== (delta === 0))
                tally.fail(`${label} file ${fileSize + delta}`, "wrong verdict");
            }
          }
        }
      }
    }
    tally.report();
  });

  test("names: unterminated, non-UTF-8, with NULs inside, at every length", () => {
    const random = new Random(0x4ead0003);
    const tally = new Tally("decodeHeader (names)");
    for (let i = 0; i < scaled(3000); i++) {
      const fields = validHeaderFields(random);
      const field = new Uint8Array(128);
      const length = random.scaled(129);
      for (let at = 0; at < length; at++) {
        // High bytes make invalid UTF-8 (lone continuations, truncated sequences, overlongs, surrogates).
        field[at] = random.chance(0.6) ? 0x80 + random.scaled(128) : random.chance(0.05) ? 0 : 1 + random.scaled(127);
      }
      const which = random.chance(0.5) ? "dataset" : "imageName";
      fields[which] = field;
      const header = checkHeader(tally, `name case ${i}`, headerBytes(fields));
      const readable = field[127] === 0 && nameAsRead(field) !== null;
      if ((header !== null) !== readable)
        tally.fail(`name case ${i}`, `expected ${readable ? "a header" : "a refusal"}`);
    }
    tally.report();
  });

  test("agrees with an independent python3 decoder on mutated headers", () => {
    const random = new Random(0x4ead0004);
    const tally = new Tally("decodeHeader vs python3");
    const bases = [
      ...vectorHeaders(),
      ...Array.from({ length: 6 }, () => ({ header: headerBytes(validHeaderFields(random)), fileSize: 0 })),
    ];
    const cases: { bytes: Uint8Array; fileSize: number | null; versions: number[] }[] = [];
    for (let i = 0; i < scaled(400); i++) {
      const base = random.pick(bases);
      let bytes: Uint8Array = base.header.slice();
      const kind = random.scaled(5);
      if (kind === 0) bytes = flipBits(random, bytes, 1 + random.scaled(3), 0, 328);
      else if (kind === 1)
        new DataView(bytes.buffer).setBigUint64(random.pick([16, 24, 32]), random.pick(SIZE_EDGES), true);
      else if (kind === 2) {
        // Non-UTF-8 bytes in a name, sometimes unterminated.
        const at = random.pick([72, 200]);
        for (let j = 0; j < 128; j++)
          bytes[at + j] = random.chance(0.5) ? 0x80 + random.scaled(128) : random.scaled(128);
        if (random.chance(0.8)) bytes[at + 127] = 0;
      } else if (kind === 3) new DataView(bytes.buffer).setBigUint64(8, random.u64(), true);
      else new DataView(bytes.buffer).setUint32(4, random.pick([VERSION, ZSTD_VERSION, 1, 3]), true);
      const fileSize = base.fileSize > 0 && random.chance(0.5) ? base.fileSize + random.pick([0, 0, 0, 1, -1]) : null;
      cases.push({ bytes, fileSize, versions: random.chance(0.5) ? [...IMAGE_VERSIONS] : [VERSION] });
    }
    const script = String.raw`
import json, struct, sys
LIMIT = 2**53 - 1
def name(field):
    # As the existing tools: the whole field as UTF-8, NULs trimmed at both ends; None refuses the header.
    try:
        return field.decode("utf-8").strip("\0")
    except UnicodeDecodeError:
        return None
out = []
for case in json.load(open(sys.argv[1])):
    h = bytes.fromhex(case["hex"])
    magic, version, flags, data, image, target = struct.unpack_from("<IIQQQQ", h, 0)
    sha, dataset, image_name = struct.unpack_from("<32s128s128s", h, 40)
    ok = (magic == 0x1DEB0075 and version in case["versions"]
          and max(data, image, target) <= LIMIT and image <= target
          and dataset[127] == 0 and image_name[127] == 0
          and name(dataset) is not None and name(image_name) is not None
          and not (version == 2 and not flags & 1 and data != image)
          and (case["fileSize"] is None or case["fileSize"] == 4096 + data))
    out.append({"ok": ok, "fields": [str(version), str(flags), str(data), str(image), str(target),
                sha.hex(), name(dataset), name(image_name)] if ok else None})
print(json.dumps(out))
`;
    const theirs = pythonJson(
      scratch(),
      script,
      cases.map(({ bytes, fileSize, versions }) => ({ hex: hex(bytes), fileSize, versions })),
    ) as { ok: boolean; fields: string[] | null }[];
    let agreedFields = 0;
    cases.forEach(({ bytes, fileSize, versions }, i) => {
      const header = checkHeader(tally, `python case ${i}`, bytes, fileSize ?? undefined, versions);
      const python = theirs[i]!;
      if ((header !== null) !== python.ok) {
        tally.fail(
          `python case ${i}`,
          `ours ${header ? "accepts" : "refuses"}, python ${python.ok ? "accepts" : "refuses"}`,
        );
        return;
      }
      if (!header) return;
      const ours = [header.version, header.flags, header.dataSize, header.imageSize, header.targetSize]
        .map(String)
        .concat(hex(header.sha256), header.dataset, header.imageName);
      if (JSON.stringify(ours) !== JSON.stringify(python.fields)) {
        tally.fail(`python case ${i}`, `fields ${JSON.stringify(ours)} vs python ${JSON.stringify(python.fields)}`);
      } else agreedFields++;
    });
    tally.report(`, fields agreed on ${agreedFields}`);
    expect(agreedFields).toBeGreaterThan(cases.length / 4);
  });

  test("flagNames names every 64-bit value so that the value can be read back", () => {
    const random = new Random(0x4ead0005);
    const tally = new Tally("flagNames");
    const values = [
      0n,
      1n,
      2n,
      3n,
      4n,
      U64_MAX,
      1n << 63n,
      ...Array.from({ length: scaled(3000) }, () => random.u64()),
    ];
    for (const flags of values) {
      tally.cases++;
      const names = flagNames(flags);
      let back = 0n;
      for (const name of names === "(empty)" ? [] : names.split(" | ")) {
        back |= name === "COMPRESSED" ? FLAG_COMPRESSED : name === "ZSTD" ? FLAG_ZSTD : BigInt(name);
      }
      if (back !== flags || !isOneLine(names))
        tally.fail(`flags 0x${flags.toString(16)}`, `named ${JSON.stringify(names)}`);
      else tally.accepted++;
    }
    tally.report();
  });

  test("payloadCodec: every version edge with every low flag combination and random high bits", () => {
    const random = new Random(0x4ead0006);
    const tally = new Tally("payloadCodec");
    const versions = [0, 1, VERSION, 3, ZSTD_VERSION, ZSTD_VERSION - 1, ZSTD_VERSION + 1, 0x8000_0000, U32_MAX];
    for (const version of versions) {
      for (let low = 0n; low < 16n; low++) {
        for (const high of [0n, 1n << 63n, random.u64() & ~15n]) {
          const flags = low | high;
          const label = `version 0x${version.toString(16)} flags 0x${flags.toString(16)}`;
          tally.cases++;
          const result = outcome(() => payloadCodec({ version, flags }));
          const expected = expectedCodec(version, flags);
          if (result.ok) {
            tally.accepted++;
            if (result.value !== expected) tally.fail(label, `gave ${result.value}, expected ${expected}`);
          } else {
            tally.refusal(label, result.error, ImageFormatError);
            if (expected !== null) tally.fail(label, `refused, expected ${expected}`);
          }
        }
      }
    }
    tally.report();
  });
});
