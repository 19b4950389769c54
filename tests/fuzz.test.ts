/**
 * Property and fuzz tests of every parser that reads untrusted bytes: the
 * image header, the netboot frames, the sled emulator's input
 * (with its own DATA fast path), the zstd seek table and blocks, and the
 * zlib inflater and zstd readers behind verifyPayload.
 *
 * Each target gets valid inputs built from the specs (docs/format.md,
 * docs/netboot.md) and damaged copies of them: bit
 * flips, truncation at every length, extension, size fields at 0, 1, the
 * edges (4095, 4096, 2^32, 2^53 - 1, 2^53, 2^64 - 1), unterminated and
 * non-UTF-8 names, READ counts 0..200, offsets near 2^64. Every input must
 * end in a correct result or the module's own error with a one-line message;
 * any other exception, a multi-line message or a hang is a failure. Where a
 * spec says what the answer is, the test says it too; where an independent
 * decoder exists (python3's struct and zlib, Debian's `zstd -d`), the results
 * are compared with it, and where the project has two decoders for one thing
 * (decodeFrame and the sled's DATA path; decompressBlock into its own
 * buffer and into a recycled one), they are compared with each other.
 *
 * Inputs come from a fixed-seed generator, so a failure names a case that
 * reproduces. Case counts are in the thousands here and scale with the
 * FUZZ_SCALE environment variable (`bun run fuzz` sets 50); each test prints
 * its counts. No allocation may be sized by an untrusted field before it is
 * checked: the inputs that would expose one (seek tables claiming 2^27 to
 * 2^32 - 1 frames, headers claiming 2^53 - 1 payload bytes, zlib and zstd
 * bombs of 1 GiB) run while the process's peak resident memory is watched.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateRawSync, deflateSync, constants as zlibConstants } from "node:zlib";
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
import { type HashReport, hashStage } from "@ramdisk-tools/image/hash-stage.ts";
import { type InflateReport, inflateStage } from "@ramdisk-tools/image/inflate-stage.ts";
import { verifyPayload } from "@ramdisk-tools/image/verify.ts";
import { compressBlock, decompressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { IMAGE_VERSIONS, payloadCodec, readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";
import {
  blockChecksum,
  blockIndexForOffset,
  decodeSeekTable,
  encodeSeekTable,
  type SeekTable,
  type SeekTableEntry,
  ZSTD_MAX_BLOCK_SIZE,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import {
  BODY_OFFSET,
  type Decoded,
  decodeFrame,
  encodeFrame,
  type Mac,
  type Message,
  READ_SLOTS,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { SledClient, type SledReport } from "@ramdisk-tools/sled/client.ts";
import { Xorshift32 } from "@ramdisk-tools/sled/random.ts";
import { PieceSender } from "@ramdisk-tools/threads/link.ts";
import { python, VECTORS } from "./helpers/common.ts";

/** `bun run fuzz` multiplies every case count by this. */
const SCALE = Math.max(1, Number(process.env.FUZZ_SCALE ?? "1") || 1);
const scaled = (cases: number) => Math.round(cases * SCALE);

// Python and zstd processes and thousands of inflates on two busy cores; a
// scaled run takes proportionally longer.
setDefaultTimeout(120_000 * SCALE);

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const U32_MAX = 2 ** 32 - 1;
const U64_MAX = 2n ** 64n - 1n;
const MIB = 1024 * 1024;
/** Every 64-bit size field is tried at each of these. */
const SIZE_EDGES: readonly bigint[] = [
  0n,
  1n,
  4095n,
  4096n,
  4097n,
  2n ** 32n - 1n,
  2n ** 32n,
  2n ** 32n + 1n,
  MAX_SAFE,
  MAX_SAFE + 1n,
  MAX_SAFE + 2n,
  U64_MAX,
];

/**
 * The project's generator (lib/sled/random.ts) with the draws the fuzz targets
 * need. `scaled` scales a draw into 0..n-1 where the generator's `below` takes
 * it modulo n: the fixed case sets here (and the counts robustness.md gives)
 * were drawn that way.
 */
class Random extends Xorshift32 {
  /** Uniform in 0..n-1 (n up to 2^32). */
  scaled(n: number): number {
    return Math.floor(this.fraction() * n);
  }
  chance(probability: number): boolean {
    return this.fraction() < probability;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.scaled(items.length)]!;
  }
  u64(): bigint {
    return (BigInt(this.next()) << 32n) | BigInt(this.next());
  }
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

/**
 * Raw image-like bytes: runs of zeros, of text and of random bytes, so
 * compressors see both matches and literals.
 */
function imageLike(random: Random, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  while (at < length) {
    const run = Math.min(length - at, 1 + random.scaled(2048));
    const kind = random.scaled(3);
    if (kind === 1) for (let i = 0; i < run; i++) out[at + i] = 97 + random.scaled(8);
    else if (kind === 2) out.set(random.bytes(run), at);
    at += run;
  }
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** A short, reproducible description of an input for a failure message. */
function show(bytes: Uint8Array): string {
  return bytes.length <= 96 ? hex(bytes) : `${bytes.length} bytes ${hex(bytes.subarray(0, 64))}..`;
}

/** Flip `count` random bits of a copy of `bytes` within [from, to). */
function flipBits(random: Random, bytes: Uint8Array, count: number, from = 0, to = bytes.length): Uint8Array {
  // new Uint8Array, not slice(): compressBlock returns a Buffer, whose slice() is a view.
  const out = new Uint8Array(bytes);
  if (to <= from) return out;
  for (let i = 0; i < count; i++) out[from + random.scaled(to - from)]! ^= 1 << random.scaled(8);
  return out;
}

/**
 * Counts and failures of one fuzz target. Failures are collected rather than
 * asserted one by one, so a run reports the first few failing cases together,
 * each with its case number and input.
 */
class Tally {
  cases = 0;
  accepted = 0;
  refused = 0;
  readonly failures: string[] = [];
  constructor(readonly target: string) {}

  fail(label: string, what: string): void {
    if (this.failures.length < 12) this.failures.push(`${label}: ${what}`);
    else if (this.failures.length === 12) this.failures.push("...");
  }

  /** Check a caught error: the expected class, with a one-line message. */
  refusal(label: string, error: unknown, ...allowed: (abstract new (...args: never[]) => Error)[]): string | null {
    this.refused++;
    if (!allowed.some((kind) => error instanceof kind)) {
      this.fail(label, `threw ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
      return null;
    }
    const message = (error as Error).message;
    if (!isOneLine(message)) this.fail(label, `message is not one line: ${JSON.stringify(message)}`);
    return message;
  }

  report(extra = ""): void {
    console.log(`fuzz ${this.target}: ${this.cases} cases, ${this.accepted} accepted, ${this.refused} refused${extra}`);
    expect(this.failures).toEqual([]);
  }
}

function isOneLine(message: string): boolean {
  return message.length > 0 && !/[\r\n]/.test(message);
}

/** Run `attempt`, returning its value or the error it threw. */
function outcome<T>(attempt: () => T): { ok: true; value: T } | { ok: false; error: unknown } {
  try {
    return { ok: true, value: attempt() };
  } catch (error) {
    return { ok: false, error };
  }
}

/**
 * How far the process's peak resident memory rises above its resident memory
 * before `run`, in MiB: Linux's VmHWM, reset through /proc/self/clear_refs,
 * so an allocation sized by a hostile field shows even if it is freed again
 * before `run` returns. Worker threads count too: they share the process.
 */
async function peakGrowthMiB(run: () => Promise<void>): Promise<number> {
  Bun.gc(true);
  const before = process.memoryUsage().rss;
  writeFileSync("/proc/self/clear_refs", "5");
  await run();
  const peak = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  if (!peak) throw new Error("no VmHWM in /proc/self/status");
  return (Number(peak[1]) * 1024 - before) / MIB;
}

/**
 * Growth allowed while running hostile inputs: room for the 64 MiB block a
 * seek table may honestly promise, far below the gigabytes a trusted hostile
 * size would take.
 */
const MEMORY_SLACK_MIB = 256;

/**
 * A zstd frame of RLE blocks (RFC 8878: block type 1, one byte repeated up to
 * 128 KiB): `size` bytes of output from 4 bytes per 128 KiB. With
 * `contentSize` the frame header declares that size, true or not.
 */
function zstdRleBomb(size: number, contentSize: bigint | null): Uint8Array {
  // Frame header descriptor: an 8-byte content size field or none; window descriptor 0x38: 128 KiB.
  const out: number[] = [0x28, 0xb5, 0x2f, 0xfd, contentSize === null ? 0x00 : 0xc0, 0x38];
  if (contentSize !== null) for (let i = 0n; i < 8n; i++) out.push(Number((contentSize >> (8n * i)) & 0xffn));
  const blockSize = 128 * 1024;
  for (let at = 0; at < size; at += blockSize) {
    const last = at + blockSize >= size ? 1 : 0;
    const header = (Math.min(blockSize, size - at) << 3) | (1 << 1) | last;
    out.push(header & 0xff, (header >> 8) & 0xff, header >> 16, 0);
  }
  return Uint8Array.from(out);
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "fuzz-test-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Run a python3 program on `input`, handed over as a JSON file; what it prints, parsed as JSON. */
function pythonJson(script: string, input: unknown): unknown {
  const path = join(dir, `python-input-${Bun.hash(script).toString(16)}.json`);
  writeFileSync(path, JSON.stringify(input));
  return JSON.parse(python(script, path));
}

// ---------------------------------------------------------------------------
// The image header (lib/image/format.ts)

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

function nameField(text: string): Uint8Array {
  const field = new Uint8Array(128);
  field.set(new TextEncoder().encode(text).subarray(0, 127));
  return field;
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

// ---------------------------------------------------------------------------
// Netboot frames (lib/protocol/frames.ts)

const SLED_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0xa0);
const SERVER_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0x01);
const OTHER_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0x66);
const TYPE_VALUES = [0x9001, 0x9102, 0x9003, 0x9104, 0x9005, 0x9106];
/** Every `len` edge of netboot.md's table: 0, 8 (DATA), 176 (OFFER), 1032 (READ), 1476 (DATA), and past them. */
const LEN_EDGES = [0, 1, 7, 8, 9, 175, 176, 177, 1031, 1032, 1033, 1475, 1476, 1477, 1500, 2 ** 31, U32_MAX];
/** Offsets a hostile READ or DATA may carry. */
const OFFSET_EDGES: readonly bigint[] = [
  0n,
  1n,
  1023n,
  1024n,
  4096n,
  2n ** 32n,
  MAX_SAFE,
  MAX_SAFE + 1n,
  U64_MAX - 1023n,
  U64_MAX - 1n,
  U64_MAX,
];

function randomMessage(random: Random): Message {
  switch (random.scaled(6)) {
    case 0:
      return { type: "hello", text: random.bytes(random.scaled(random.chance(0.9) ? 40 : 1500)) };
    case 1:
      return {
        type: "offer",
        ramdiskSize: random.chance(0.5) ? random.pick(SIZE_EDGES) : random.u64(),
        imageSize: random.chance(0.5) ? random.pick(SIZE_EDGES) : random.u64(),
        sha256: random.bytes(32),
        dataset: random.chance(0.7) ? nameField("rpool/ROOT/ramdisk") : random.bytes(128),
      };
    case 2:
      return randomRead(random, random.scaled(READ_SLOTS + 1));
    case 3:
      return {
        type: "data",
        offset: random.chance(0.5) ? random.pick(OFFSET_EDGES) : BigInt(random.scaled(4096)) * 1024n,
        bytes: random.bytes(random.chance(0.3) ? 0 : random.scaled(1469)),
      };
    case 4:
      return { type: "finished" };
    default:
      return { type: "reset" };
  }
}

function randomRead(random: Random, count: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  const fill = random.scaled(3);
  for (let slot = 0; slot < READ_SLOTS; slot++) {
    if (fill === 0 || (fill === 1 && random.chance(0.1))) {
      slots[slot] = random.chance(0.3) ? random.pick(OFFSET_EDGES) : BigInt(random.scaled(2 ** 20)) * 1024n;
    }
  }
  return { type: "read", count: BigInt(count), slots };
}

function randomFrame(random: Random): Uint8Array {
  const macs = [SLED_MAC, SERVER_MAC, OTHER_MAC];
  return encodeFrame(random.pick(macs), random.pick(macs), randomMessage(random));
}

function setU32(bytes: Uint8Array, offset: number, value: number): void {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(offset, value);
}

/** One random damage of a frame: bit flips, a cut, an extension, a new len or type, overwritten bytes. */
function mutateFrame(random: Random, frame: Uint8Array): Uint8Array {
  switch (random.scaled(6)) {
    case 0:
      return flipBits(random, frame, 1 + random.scaled(6), 0, Math.min(frame.length, BODY_OFFSET + 24));
    case 1:
      return frame.slice(0, random.scaled(frame.length + 1));
    case 2:
      return concat(frame, random.bytes(1 + random.scaled(1600)));
    case 3: {
      const out = frame.slice();
      setU32(out, 22, random.chance(0.7) ? random.pick(LEN_EDGES) : random.next());
      return out;
    }
    case 4: {
      const out = frame.slice();
      setU32(out, 18, random.chance(0.5) ? 0x9000 + random.scaled(0x200) : random.next());
      return out;
    }
    default: {
      const out = frame.slice();
      const at = random.scaled(out.length);
      out.set(random.bytes(Math.min(out.length - at, 1 + random.scaled(16))), at);
      return out;
    }
  }
}

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

// ---------------------------------------------------------------------------
// The sled emulator's input (lib/sled/client.ts): it must take any frame.

const COUNTED: (keyof SledReport)[] = ["invalid", "ignored", "dataDropped", "offersRefused", "resets"];

function counted(report: SledReport): number {
  return COUNTED.reduce((sum, key) => sum + (report[key] as number), 0);
}

function offerFrame(imageSize: number, sha256: Uint8Array, source = SERVER_MAC): Uint8Array {
  return encodeFrame(SLED_MAC, source, {
    type: "offer",
    ramdiskSize: BigInt(imageSize),
    imageSize: BigInt(imageSize),
    sha256,
    dataset: nameField("rpool/ROOT/ramdisk"),
  });
}

/**
 * Check everything a sled sends: a frame of ours that decodes, from the
 * sled's MAC, HELLO, READ or FINISHED; a READ asks for exactly `count`
 * offsets, all whole 1024-byte chunks.
 */
function checkSent(tally: Tally, label: string, frame: Uint8Array): void {
  const decoded = decodeFrame(frame);
  if (!decoded.ok) return tally.fail(label, `sled sent a frame that does not decode: ${decoded.reason}`);
  const { source, message } = decoded.frame;
  if (hex(source) !== hex(SLED_MAC)) tally.fail(label, "sled sent from another MAC");
  if (!["hello", "read", "finished"].includes(message.type)) tally.fail(label, `sled sent ${message.type}`);
  if (message.type === "read") {
    const offsets = requestedOffsets(message);
    if (BigInt(offsets.length) !== message.count || offsets.some((offset) => offset % 1024n !== 0n)) {
      tally.fail(label, `sled sent a READ of count ${message.count} asking for ${offsets.join(" ")}`);
    }
  }
}

describe("fuzz: sled emulator input", () => {
  test("any frame in any phase: no exception, and only what decodeFrame refuses counts as invalid", () => {
    const random = new Random(0x51ed0001);
    const tally = new Tally("SledClient.receive");
    const checksum = random.bytes(32);
    for (let run = 0; run < scaled(60); run++) {
      let now = 0;
      const sent: Uint8Array[] = [];
      const sled = new SledClient({
        mac: SLED_MAC,
        checksum,
        send: (frame) => sent.push(frame.slice()),
        timeoutMs: random.chance(0.3) ? 5_000 + random.scaled(60_000) : undefined,
        restartOnReset: random.chance(0.5),
      });
      sled.start(now);
      // Most runs accept an OFFER first, so DATA and RESET reach the transfer state.
      const imageSize = (8 + random.scaled(64)) * 128 * 1024 + (random.chance(0.2) ? random.scaled(1024) : 0);
      if (random.chance(0.8)) sled.receive(offerFrame(imageSize, checksum), now);
      for (let i = 0; i < 200; i++) {
        const label = `run ${run} frame ${i}`;
        let frame: Uint8Array;
        const kind = random.scaled(4);
        if (kind === 0) {
          // DATA for an offset near the current batch, from the server: some fill slots.
          const offset =
            BigInt(random.scaled(Math.ceil(imageSize / 1024) + 256)) * 1024n + (random.chance(0.1) ? 1n : 0n);
          frame = encodeFrame(SLED_MAC, random.chance(0.8) ? SERVER_MAC : OTHER_MAC, {
            type: "data",
            offset: random.chance(0.1) ? random.pick(OFFSET_EDGES) : offset,
            bytes: random.bytes(random.chance(0.05) ? 0 : random.pick([1024, 1468, random.scaled(1469)])),
          });
          if (random.chance(0.3)) frame = mutateFrame(random, frame);
        } else if (kind === 1) {
          frame = mutateFrame(
            random,
            random.chance(0.3)
              ? offerFrame(imageSize, checksum, random.pick([SERVER_MAC, OTHER_MAC]))
              : randomFrame(random),
          );
        } else if (kind === 2) {
          frame = randomFrame(random);
        } else {
          frame = random.bytes(random.scaled(1600));
        }
        const before = sled.report(now);
        const phase = sled.phase;
        tally.cases++;
        const result = outcome(() => sled.receive(frame, now));
        if (!result.ok) {
          tally.fail(label, `receive threw ${result.error} on ${show(frame)} in ${phase}`);
          continue;
        }
        const after = sled.report(now);
        const invalid = !decodeFrame(frame).ok;
        if (invalid) tally.refused++;
        else tally.accepted++;
        if (phase === "done") {
          if (counted(after) !== counted(before)) tally.fail(label, "a done sled counted a frame");
        } else {
          // The hot DATA path and decodeFrame must agree on what is malformed.
          if (after.invalid - before.invalid !== (invalid ? 1 : 0)) {
            tally.fail(
              label,
              `invalid went ${before.invalid} -> ${after.invalid}, decodeFrame says ${invalid ? "malformed" : "well-formed"}: ${show(frame)}`,
            );
          }
          if (counted(after) - counted(before) > 1) tally.fail(label, "one frame counted twice");
        }
        if (random.chance(0.05)) now += random.scaled(5_000);
        const ticked = outcome(() => sled.tick(now));
        if (!ticked.ok) tally.fail(label, `tick threw ${ticked.error}`);
      }
      sent.forEach((frame, i) => checkSent(tally, `run ${run} sent ${i}`, frame));
    }
    tally.report();
  });

  test("a sled boots through hostile frames from other MACs and malformed frames from its server", () => {
    const random = new Random(0x51ed0002);
    const tally = new Tally("SledClient under hostile frames");
    const image = imageLike(random, MIB);
    const checksum = new Uint8Array(new Bun.CryptoHasher("sha256").update(image).digest());
    const wanted = pythonJson(
      "import hashlib, json, sys; print(json.dumps(hashlib.sha256(bytes.fromhex(json.load(open(sys.argv[1])))).hexdigest()))",
      hex(image),
    );
    expect(wanted).toBe(hex(checksum));
    let hostile = 0;
    for (let run = 0; run < scaled(2); run++) {
      const queue: Uint8Array[] = [];
      const sled = new SledClient({ mac: SLED_MAC, checksum, send: (frame) => queue.push(frame.slice()) });
      let now = 0;
      sled.start(now);
      sled.receive(offerFrame(image.length, checksum), now);
      for (let step = 0; step < 20_000 && sled.phase !== "done"; step++) {
        const frame = queue.shift();
        if (!frame) {
          now += 1_100;
          sled.tick(now);
          continue;
        }
        checkSent(tally, `run ${run} sent`, frame);
        const decoded = decodeFrame(frame);
        if (!decoded.ok || decoded.frame.message.type !== "read") continue;
        for (const offset of requestedOffsets(decoded.frame.message)) {
          // The server of netboot.md: 1024 bytes at the offset, fewer at the end, none past it.
          const at = Number(offset);
          const bytes = at < image.length ? image.subarray(at, at + 1024) : new Uint8Array(0);
          // Noise before each answer: well-formed frames from another MAC, malformed ones from the server.
          for (let n = random.scaled(3); n > 0; n--) {
            const noise = mutateFrame(random, randomFrame(random));
            if (noise.length >= 12)
              noise.set(decodeFrame(noise).ok ? OTHER_MAC : random.pick([SERVER_MAC, OTHER_MAC]), 6);
            hostile++;
            tally.cases++;
            const result = outcome(() => sled.receive(noise, now));
            if (!result.ok) tally.fail(`run ${run}`, `receive threw ${result.error}`);
          }
          tally.cases++;
          sled.receive(encodeFrame(SLED_MAC, SERVER_MAC, { type: "data", offset, bytes }), now);
        }
      }
      const report = sled.report(now);
      if (report.outcome === "booted") tally.accepted++;
      else tally.fail(`run ${run}`, `outcome ${report.outcome}: ${report.detail}`);
    }
    tally.report(`, ${hostile} hostile frames among them`);
  });
});

// ---------------------------------------------------------------------------
// The zstd payload (lib/image/zstd-seekable.ts, lib/image/zstd-image.ts)

interface ZstdPayload {
  raw: Uint8Array;
  entries: SeekTableEntry[];
  payload: Uint8Array;
  tableSize: number;
}

/** A seekable payload the way the format describes it: one frame per block, then the table. */
function zstdPayload(random: Random): ZstdPayload {
  const blocks = Array.from({ length: 1 + random.scaled(6) }, () => imageLike(random, 1 + random.scaled(6000)));
  const frames = blocks.map((block) => compressBlock(block, 1 + random.scaled(3)));
  const entries = blocks.map((block, i) => ({
    compressedSize: frames[i]!.length,
    decompressedSize: block.length,
    checksum: blockChecksum(block),
  }));
  const table = encodeSeekTable(entries);
  return { raw: concat(...blocks), entries, payload: concat(...frames, table), tableSize: table.length };
}

/**
 * Check a decoded seek table against the payload and the expectations: the
 * blocks tile the frames and the image, each 1..ZSTD_MAX_BLOCK_SIZE bytes; then
 * blockIndexForOffset on edge offsets, and decompressBlock on every block.
 * Returns the raw image when every block decompressed and passed its checksum.
 */
function checkTable(
  tally: Tally,
  blocks: Tally,
  label: string,
  payload: Uint8Array,
  imageSize: number,
  table: SeekTable,
): Uint8Array | null {
  let compressed = 0;
  let decompressed = 0;
  for (const [index, block] of table.blocks.entries()) {
    if (
      block.index !== index ||
      block.compressedOffset !== compressed ||
      block.decompressedOffset !== decompressed ||
      block.compressedSize < 1 ||
      block.decompressedSize < 1 ||
      block.decompressedSize > ZSTD_MAX_BLOCK_SIZE
    ) {
      tally.fail(label, `block ${index} ${JSON.stringify(block)} does not follow the one before`);
    }
    compressed += block.compressedSize;
    decompressed += block.decompressedSize;
  }
  if (compressed + table.tableSize !== payload.length || decompressed !== imageSize || table.imageSize !== imageSize) {
    tally.fail(label, `blocks cover ${compressed} + ${table.tableSize} payload bytes and ${decompressed} image bytes`);
  }
  const probes = [
    -1,
    0,
    imageSize - 1,
    imageSize,
    imageSize + 1,
    2 ** 53,
    Number.NaN,
    Infinity,
    0.5,
    ZSTD_MAX_BLOCK_SIZE,
  ];
  for (const block of table.blocks)
    probes.push(block.decompressedOffset, block.decompressedOffset + block.decompressedSize - 1);
  for (const offset of probes) {
    const index = outcome(() => blockIndexForOffset(table, offset));
    const inside = Number.isSafeInteger(offset) && offset >= 0 && offset < imageSize;
    const block = index.ok ? table.blocks[index.value] : undefined;
    const right =
      index.ok &&
      (inside
        ? block !== undefined &&
          block.decompressedOffset <= offset &&
          offset < block.decompressedOffset + block.decompressedSize
        : index.value === -1);
    if (!right) tally.fail(label, `blockIndexForOffset(${offset}) gave ${index.ok ? index.value : index.error}`);
  }
  const parts: Uint8Array[] = [];
  for (const block of table.blocks) {
    const blockLabel = `${label} block ${block.index}`;
    blocks.cases++;
    const frame = payload.subarray(block.compressedOffset, block.compressedOffset + block.compressedSize);
    const result = outcome(() => decompressBlock(frame, block));
    if (!result.ok) {
      blocks.refusal(blockLabel, result.error, ImageFormatError);
      continue;
    }
    blocks.accepted++;
    if (result.value.length !== block.decompressedSize || blockChecksum(result.value) !== block.checksum) {
      blocks.fail(blockLabel, "returned bytes that do not match the entry");
    }
    parts.push(result.value);
  }
  return parts.length === table.blocks.length ? concat(...parts) : null;
}

describe("fuzz: zstd seekable payload", () => {
  test("damaged seek tables, truncations, extensions and edge fields: a checked table or one ImageFormatError line", () => {
    const random = new Random(0x257d0001);
    const tally = new Tally("decodeSeekTable");
    const blocks = new Tally("decompressBlock (via tables)");
    const bases = Array.from({ length: 8 }, () => zstdPayload(random));
    /** Payloads every block of which decompressed, for `zstd -d` to read too. */
    const readable: { payload: Uint8Array; raw: Uint8Array }[] = [];
    const attempt = (label: string, payload: Uint8Array, imageSize: number, tail = payload) => {
      tally.cases++;
      const result = outcome(() => decodeSeekTable(tail, { payloadSize: payload.length, imageSize }));
      if (!result.ok) {
        // A tail shorter than the table it announces is the caller's mistake, which decodeSeekTable reports as a RangeError.
        tally.refusal(label, result.error, ImageFormatError, ...(tail === payload ? [] : [RangeError]));
        return null;
      }
      tally.accepted++;
      const raw = checkTable(tally, blocks, label, payload, imageSize, result.value);
      if (raw && readable.length < 200) readable.push({ payload, raw });
      return result.value;
    };

    for (const [b, base] of bases.entries()) {
      if (!attempt(`base ${b}`, base.payload, base.raw.length)) tally.fail(`base ${b}`, "a valid payload was refused");
    }
    // Bit flips, mostly in the seek table.
    for (let i = 0; i < scaled(4000); i++) {
      const base = random.pick(bases);
      const from = random.chance(0.8) ? base.payload.length - base.tableSize : 0;
      attempt(`flip case ${i}`, flipBits(random, base.payload, 1 + random.scaled(4), from), base.raw.length);
    }
    // Truncation at every length, as the whole payload or as a tail of a longer one.
    const cut = bases[0]!;
    for (let length = 0; length < cut.payload.length; length++) {
      attempt(`truncation to ${length}`, cut.payload.subarray(0, length), cut.raw.length);
      attempt(`tail of ${length}`, cut.payload, cut.raw.length, cut.payload.subarray(cut.payload.length - length));
    }
    // Extensions, and junk between the frames and the table.
    for (let i = 0; i < scaled(500); i++) {
      const base = random.pick(bases);
      const junk = random.bytes(1 + random.scaled(100));
      const framesEnd = base.payload.length - base.tableSize;
      const payload = random.chance(0.5)
        ? concat(base.payload, junk)
        : concat(base.payload.subarray(0, framesEnd), junk, base.payload.subarray(framesEnd));
      attempt(`extension case ${i}`, payload, base.raw.length);
    }
    // Every field at its edges: frame count, descriptor, skippable frame size, and each entry's three fields.
    for (const [b, base] of bases.entries()) {
      const table = base.payload.length - base.tableSize;
      const frames = base.entries.length;
      const footer = base.payload.length - 9;
      const write = (label: string, offset: number, value: number, size: 1 | 4 = 4) => {
        const payload = base.payload.slice();
        const view = new DataView(payload.buffer);
        if (size === 1) view.setUint8(offset, value);
        else view.setUint32(offset, value, true);
        return attempt(`base ${b} ${label}`, payload, base.raw.length);
      };
      for (const count of [0, 1, frames - 1, frames + 1, 2 ** 27 - 1, 2 ** 27, 2 ** 27 + 1, 2 ** 31, U32_MAX]) {
        if (count !== frames && write(`frame count ${count}`, footer, count))
          tally.fail(`base ${b} frame count ${count}`, "accepted");
      }
      for (let descriptor = 0; descriptor < 256; descriptor++) {
        // zstd's seekable format: bit 7 says checksums follow, bits 6..2 are reserved and must be 0.
        const valid = (descriptor & 0x80) !== 0 && (descriptor & 0x7c) === 0;
        if ((write(`descriptor 0x${descriptor.toString(16)}`, footer + 4, descriptor, 1) !== null) !== valid) {
          tally.fail(`base ${b} descriptor 0x${descriptor.toString(16)}`, "wrong verdict");
        }
      }
      for (const size of [0, 1, base.tableSize - 9, base.tableSize - 7, U32_MAX]) {
        if (write(`frame size ${size}`, table + 4, size)) tally.fail(`base ${b} frame size ${size}`, "accepted");
      }
      for (let entry = 0; entry < frames; entry++) {
        for (const [field, at] of [
          ["compressed size", 0],
          ["decompressed size", 4],
          ["checksum", 8],
        ] as const) {
          for (const value of [0, 1, 4095, 4096, ZSTD_MAX_BLOCK_SIZE, ZSTD_MAX_BLOCK_SIZE + 1, 2 ** 31, U32_MAX]) {
            write(`entry ${entry} ${field} ${value}`, table + 8 + entry * 12 + at, value);
          }
        }
      }
      for (const imageSize of [0, 1, base.raw.length - 1, base.raw.length + 1, Number.MAX_SAFE_INTEGER]) {
        if (attempt(`base ${b} image size ${imageSize}`, base.payload, imageSize))
          tally.fail(`base ${b} image size ${imageSize}`, "accepted");
      }
    }
    tally.report();
    blocks.report();

    // Debian's zstd reads every payload our tables and blocks accepted, to the same bytes.
    const files = readable.map(({ payload }, i) => {
      const path = join(dir, `readable-${i}.zst`);
      writeFileSync(path, payload);
      return path;
    });
    const run = Bun.spawnSync(["zstd", "-d", "-q", "-f", ...files], { stdout: "ignore", stderr: "pipe" });
    if (run.exitCode !== 0) throw new Error(`zstd -d failed: ${run.stderr.toString()}`);
    const disagree = readable.filter(({ raw }, i) => hex(readFileSync(files[i]!.replace(/\.zst$/, ""))) !== hex(raw));
    console.log(`fuzz zstd -d: ${readable.length} accepted payloads decompressed by zstd too`);
    expect(disagree.length).toBe(0);
    expect(readable.length).toBeGreaterThan(bases.length);
  });

  test("damaged frames and lying entries: decompressBlock gives the entry's bytes or one ImageFormatError line, into a buffer of its own or the caller's", () => {
    const random = new Random(0x257d0002);
    const tally = new Tally("decompressBlock (direct)");
    const agreement = new Tally("decompressBlock into a recycled buffer");
    // verifyPayload's zstd threads decompress into recycled buffers, stale bytes and all.
    const out = random.bytes(2 * MIB);
    const sources = Array.from({ length: 16 }, () => imageLike(random, 1 + random.scaled(20_000)));
    const frames = sources.map((raw) => compressBlock(raw, 1 + random.scaled(3)));
    const skippable = Uint8Array.of(0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4);
    for (let i = 0; i < scaled(3000); i++) {
      const which = random.scaled(sources.length);
      const raw = sources[which]!;
      let frame = frames[which]!;
      const kind = random.scaled(5);
      if (kind === 0) frame = flipBits(random, frame, 1 + random.scaled(4));
      else if (kind === 1) frame = frame.subarray(0, random.scaled(frame.length));
      else if (kind === 2) frame = concat(frame, random.bytes(1 + random.scaled(64)));
      else if (kind === 3) frame = concat(frame, random.chance(0.5) ? skippable : compressBlock(new Uint8Array(0), 1));
      const decompressedSize = random.chance(0.6)
        ? raw.length
        : random.pick([1, 4095, 4096, raw.length - 1, raw.length + 1, 1 + random.scaled(MIB)]);
      const block = {
        index: which,
        compressedSize: frame.length,
        decompressedSize: Math.max(1, decompressedSize),
        checksum: blockChecksum(raw),
      };
      const label = `case ${i}`;
      tally.cases++;
      agreement.cases++;
      const result = outcome(() => decompressBlock(frame, block));
      const into = outcome(() => decompressBlock(frame, block, out));
      if (result.ok !== into.ok || (result.ok && into.ok && hex(result.value) !== hex(into.value))) {
        agreement.fail(
          label,
          `${result.ok ? "accepted" : "refused"} alone, ${into.ok ? "accepted" : "refused"} into a buffer: ${show(frame)}`,
        );
      } else if (into.ok) agreement.accepted++;
      else agreement.refusal(label, into.error, ImageFormatError);
      if (!result.ok) {
        tally.refusal(label, result.error, ImageFormatError);
        if (kind === 4 && decompressedSize === raw.length)
          tally.fail(label, `refused an intact frame: ${(result.error as Error).message}`);
        continue;
      }
      tally.accepted++;
      if (hex(result.value) !== hex(raw)) tally.fail(label, "returned bytes other than the block's");
    }
    // A frame whose entry disagrees with its own length is refused before decompressing.
    for (const compressedSize of [0, 1, frames[0]!.length - 1, frames[0]!.length + 1]) {
      tally.cases++;
      const result = outcome(() =>
        decompressBlock(frames[0]!, { index: 0, compressedSize, decompressedSize: sources[0]!.length, checksum: 0 }),
      );
      if (result.ok) tally.fail(`compressed size ${compressedSize}`, "accepted");
      else tally.refusal(`compressed size ${compressedSize}`, result.error, ImageFormatError);
    }
    tally.report();
    agreement.report();
  });

  /**
   * A frame of one raw block whose Last_Block bit is clear: all its bytes
   * are there, but the frame never ends. `zstd -d` refuses it ("premature
   * end"), so a payload holding it is not the plain .zst docs/format.md
   * promises. node:zlib's zstd gives the bytes without complaint, so
   * decompressBlock checks that the frame's block headers end exactly at its
   * last byte (isWholeFrame, RFC 8878 3.1.1).
   */
  test("a frame whose last block never comes is refused, as zstd -d refuses it", () => {
    const raw = imageLike(new Random(0x257d0005), 200);
    // Magic; descriptor 0x20 (single segment, 1-byte content size); content size; raw block header of 200 bytes.
    const frameOf = (last: number) =>
      concat(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x20, 200, ((200 << 3) & 0xff) | last, (200 << 3) >> 8, 0), raw);
    const zstd = (frame: Uint8Array) => {
      const path = join(dir, "one-raw-block.zst");
      writeFileSync(path, frame);
      return Bun.spawnSync(["zstd", "-d", "-c", path], { stdout: "pipe", stderr: "pipe" });
    };
    const block = {
      index: 0,
      compressedSize: frameOf(1).length,
      decompressedSize: raw.length,
      checksum: blockChecksum(raw),
    };
    // The independent decoder: the whole frame gives the bytes, the unended one is refused.
    expect(hex(zstd(frameOf(1)).stdout)).toBe(hex(raw));
    expect(zstd(frameOf(0)).exitCode).not.toBe(0);
    expect(hex(decompressBlock(frameOf(1), block))).toBe(hex(raw));
    expect(() => decompressBlock(frameOf(0), block)).toThrow(ImageFormatError);
    expect(() => decompressBlock(frameOf(0), block, new Uint8Array(raw.length))).toThrow(ImageFormatError);
  });

  test("hostile sizes allocate nothing: 2^32 frames, a 2^53 payload, 1 GiB bombs for a 4 KiB block", async () => {
    const random = new Random(0x257d0003);
    const tally = new Tally("zstd hostile sizes");
    const base = zstdPayload(random);
    const bombs = [
      zstdRleBomb(1024 * MIB, null),
      zstdRleBomb(1024 * MIB, 1024n * BigInt(MIB)),
      zstdRleBomb(1024 * MIB, U64_MAX),
    ];
    const grown = await peakGrowthMiB(async () => {
      const footer = base.payload.length - 9;
      for (const count of [2 ** 27, 2 ** 27 + 1, 2 ** 31, U32_MAX]) {
        const payload = base.payload.slice();
        new DataView(payload.buffer).setUint32(footer, count, true);
        tally.cases++;
        const result = outcome(() =>
          decodeSeekTable(payload, { payloadSize: payload.length, imageSize: base.raw.length }),
        );
        if (result.ok) tally.fail(`count ${count}`, "accepted");
        else tally.refusal(`count ${count}`, result.error, ImageFormatError);
      }
      // readSeekTable trusts the header's data size only as far as the file backs it.
      const path = join(dir, "zstd-hostile.img");
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), base.payload));
      const lies = [
        0,
        1,
        8,
        9,
        16,
        17,
        base.payload.length - 1,
        base.payload.length + 1,
        2 ** 32,
        2 ** 40,
        Number.MAX_SAFE_INTEGER,
      ];
      for (const dataSize of lies) {
        for (const imageSize of [base.raw.length, 0, Number.MAX_SAFE_INTEGER]) {
          tally.cases++;
          const label = `data size ${dataSize} image size ${imageSize}`;
          try {
            await readSeekTable(Bun.file(path), { dataSize, imageSize });
            tally.fail(label, "accepted");
          } catch (error) {
            tally.refusal(label, error, ImageFormatError);
          }
        }
      }
      // Footers claiming 2^27 and 2^32 - 1 frames, in a file whose header tells its size or claims 2^53 - 1 bytes.
      for (const count of [2 ** 27, U32_MAX]) {
        const payload = base.payload.slice();
        new DataView(payload.buffer).setUint32(footer, count, true);
        writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), payload));
        for (const dataSize of [payload.length, Number.MAX_SAFE_INTEGER]) {
          tally.cases++;
          try {
            await readSeekTable(Bun.file(path), { dataSize, imageSize: base.raw.length });
            tally.fail(`file count ${count} data size ${dataSize}`, "accepted");
          } catch (error) {
            tally.refusal(`file count ${count} data size ${dataSize}`, error, ImageFormatError);
          }
        }
      }
      // Frames of 1 GiB (no content size, a true one, 2^64 - 1) under entries that promise far less.
      for (const [b, bomb] of bombs.entries()) {
        for (const decompressedSize of [1, 4096, ZSTD_MAX_BLOCK_SIZE]) {
          tally.cases++;
          const result = outcome(() =>
            decompressBlock(bomb, { index: 0, compressedSize: bomb.length, decompressedSize, checksum: 0 }),
          );
          if (result.ok) tally.fail(`bomb ${b} for ${decompressedSize}`, "accepted");
          else tally.refusal(`bomb ${b} for ${decompressedSize}`, result.error, ImageFormatError);
        }
      }
    });
    tally.report(`, peak memory ${grown.toFixed(0)} MiB above the start`);
    expect(grown).toBeLessThan(MEMORY_SLACK_MIB);
  });

  test("readSeekTable on damaged image files: a table or one ImageFormatError line", async () => {
    const random = new Random(0x257d0004);
    const tally = new Tally("readSeekTable (files)");
    const bases = Array.from({ length: 4 }, () => zstdPayload(random));
    for (let i = 0; i < scaled(150); i++) {
      const base = random.pick(bases);
      const kind = random.scaled(3);
      const payload =
        kind === 0
          ? flipBits(random, base.payload, 1 + random.scaled(3), base.payload.length - base.tableSize)
          : kind === 1
            ? base.payload.subarray(0, random.scaled(base.payload.length))
            : base.payload;
      const path = join(dir, `read-seek-table-${i}.img`);
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), payload));
      const dataSize = random.chance(0.7)
        ? payload.length
        : random.pick([0, 9, 17, base.payload.length, payload.length + 1, 2 ** 32]);
      tally.cases++;
      try {
        const table = await readSeekTable(Bun.file(path), { dataSize, imageSize: base.raw.length });
        tally.accepted++;
        if (dataSize !== payload.length || table.imageSize !== base.raw.length)
          tally.fail(`case ${i}`, "accepted a table that does not fit");
      } catch (error) {
        tally.refusal(`case ${i}`, error, ImageFormatError);
      }
      rmSync(path);
    }
    tally.report();
  });
});

// ---------------------------------------------------------------------------
// The zlib payload inflater of lib/image/verify.ts, against python3's zlib

interface InflateRun {
  report: InflateReport | "hang";
  hashed: HashReport | null;
}

const HANG_MS = 15_000;

function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T | "hang"> {
  let timer: Timer | undefined;
  const deadline = new Promise<"hang">((resolve) => (timer = setTimeout(() => resolve("hang"), ms)));
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Run the inflate stage and the SHA-256 stage on this thread, linked by
 * MessageChannels as verifyPayload links them across threads, feeding the
 * stream in pieces of `pieceSize` bytes.
 */
async function inflateOnThisThread(stream: Uint8Array, imageSize: number, pieceSize: number): Promise<InflateRun> {
  const toInflate = new MessageChannel();
  const toHash = new MessageChannel();
  const feeder = new PieceSender(toInflate.port1);
  const inflating = inflateStage({ input: toInflate.port2, output: toHash.port1, imageSize });
  const hashing = hashStage({ input: toHash.port2 });
  const feeding = (async () => {
    for (let at = 0; at < stream.length; at += pieceSize) {
      await feeder.room();
      const piece = feeder.buffer(pieceSize).subarray(0, Math.min(pieceSize, stream.length - at));
      piece.set(stream.subarray(at, at + piece.length));
      feeder.send(piece);
    }
    feeder.end();
  })().catch(() => {});
  try {
    const report = await withDeadline(inflating, HANG_MS);
    const hashed = report !== "hang" && report.kind === "inflated" ? await withDeadline(hashing, HANG_MS) : null;
    return { report, hashed: hashed === "hang" ? null : hashed };
  } finally {
    feeder.close();
    await feeding;
    for (const port of [toInflate.port1, toInflate.port2, toHash.port1, toHash.port2]) port.close();
  }
}

/**
 * python3's zlib on each stream: "end" (the stream ended; consumed = bytes
 * it took), "short" (no end marker) or "error", the output length before
 * that (for an error, give or take the output of the last input byte, which
 * python discards with the exception) and the output's SHA-256.
 */
const PYTHON_INFLATE = String.raw`
import hashlib, json, sys, zlib
out = []
for case in json.load(open(sys.argv[1])):
    data = bytes.fromhex(case)
    d = zlib.decompressobj()
    produced, h, status, fed = 0, hashlib.sha256(), "short", 0
    while fed < len(data) and not d.eof:
        piece = data[fed:fed + 4096]
        saved = d.copy()
        try:
            chunk = d.decompress(piece)
        except zlib.error:
            # Again byte by byte, to count the output before the error.
            d, status = saved, "error"
            for i in range(len(piece)):
                try:
                    chunk = d.decompress(piece[i:i + 1])
                except zlib.error:
                    break
                produced += len(chunk); h.update(chunk)
            break
        produced += len(chunk); h.update(chunk)
        fed += len(piece)
    if status != "error" and d.eof:
        status = "end"
    consumed = fed - len(d.unused_data) if status == "end" else None
    out.append({"status": status, "produced": produced, "consumed": consumed, "sha256": h.hexdigest()})
print(json.dumps(out))
`;

interface PythonInflate {
  status: "end" | "short" | "error";
  produced: number;
  consumed: number | null;
  sha256: string;
}

/** Output one input byte can yield at most: a few 258-byte matches, or a stored byte. */
const ONE_BYTE_OUTPUT = 4 * 258;

/** A zlib stream of `raw` as node:zlib (zlib itself) writes it, sometimes with sync flushes inside. */
function zlibStream(random: Random, raw: Uint8Array): Uint8Array {
  const level = random.scaled(10);
  if (random.chance(0.7) || raw.length < 2) return new Uint8Array(deflateSync(raw, { level }));
  const split = 1 + random.scaled(raw.length - 1);
  const first = deflateRawSync(raw.subarray(0, split), { level, finishFlush: zlibConstants.Z_SYNC_FLUSH });
  const second = deflateRawSync(raw.subarray(split), { level });
  const trailer = new Uint8Array(4);
  new DataView(trailer.buffer).setUint32(0, Bun.hash.adler32(raw) >>> 0);
  // Two raw deflate runs, the first ending non-final and byte-aligned: one valid zlib stream (format.md).
  return concat(Uint8Array.of(0x78, 0x9c), first, second, trailer);
}

interface InflateCase {
  stream: Uint8Array;
  imageSize: number;
  pieceSize: number;
}

/**
 * Inflate every case on this thread and judge it by python3's zlib on the
 * same stream. The output never passes image_size + 1. A stream python ends
 * is inflated to python's bytes (hashed the same) and python's count of
 * stream bytes; one it finds cut short or corrupt is refused with "ends
 * early" or "is corrupt"; one whose output passes image_size is refused as
 * inflating to more, having produced exactly image_size + 1 bytes. When the
 * damage in a corrupt stream lies right at the limit, the limit or the damage
 * may be met first, and either refusal is right.
 */
type InflateStatuses = Record<"ended" | "cut short" | "corrupt" | "past image size", number>;

function showStatuses(statuses: InflateStatuses): string {
  return ` (python: ${Object.entries(statuses)
    .map(([status, count]) => `${count} ${status}`)
    .join(", ")})`;
}

async function checkInflates(tally: Tally, cases: InflateCase[]): Promise<InflateStatuses> {
  const theirs = pythonJson(
    PYTHON_INFLATE,
    cases.map(({ stream }) => hex(stream)),
  ) as PythonInflate[];
  const statuses: InflateStatuses = { ended: 0, "cut short": 0, corrupt: 0, "past image size": 0 };
  for (const [i, { stream, imageSize, pieceSize }] of cases.entries()) {
    const label = `case ${i} (${stream.length}-byte stream, image size ${imageSize}, pieces of ${pieceSize})`;
    tally.cases++;
    let run: InflateRun;
    try {
      run = await inflateOnThisThread(stream, imageSize, pieceSize);
    } catch (error) {
      tally.fail(label, `threw ${error}`);
      continue;
    }
    const python = theirs[i]!;
    const { report, hashed } = run;
    if (report === "hang") {
      tally.fail(label, "hung");
      continue;
    }
    const limit = imageSize + 1;
    if (report.produced > limit) tally.fail(label, `produced ${report.produced} bytes, past image size + 1`);
    if (report.kind === "failed") {
      tally.refused++;
      if (!isOneLine(report.reason)) tally.fail(label, `reason not one line: ${JSON.stringify(report.reason)}`);
    } else tally.accepted++;
    const uncertain = python.status === "error" ? ONE_BYTE_OUTPUT : 0;
    const pastLimit = python.status === "error" ? python.produced > limit : python.produced >= limit;
    if (pastLimit) {
      statuses["past image size"]++;
      if (report.kind !== "failed" || !report.reason.includes("inflates to more than") || report.produced !== limit) {
        tally.fail(label, `python inflates ${python.produced} bytes, past the limit; ours: ${JSON.stringify(report)}`);
      }
    } else if (python.status === "end") {
      statuses.ended++;
      if (report.kind !== "inflated" || report.produced !== python.produced || report.consumed !== python.consumed) {
        tally.fail(
          label,
          `python: end after ${python.consumed} bytes with ${python.produced} out; ours: ${JSON.stringify(report)}`,
        );
      } else if (!hashed || hashed.bytes !== python.produced || hex(hashed.sha256) !== python.sha256) {
        tally.fail(label, "hashed bytes differ from python's output");
      }
    } else if (python.produced + uncertain < limit) {
      statuses[python.status === "short" ? "cut short" : "corrupt"]++;
      const expected = python.status === "short" ? "zlib stream ends early" : "zlib stream is corrupt";
      if (report.kind !== "failed" || !report.reason.startsWith(expected)) {
        tally.fail(label, `python: ${python.status} after ${python.produced} out; ours: ${JSON.stringify(report)}`);
      }
    } else if (report.kind !== "failed") {
      tally.fail(label, `python: ${python.status} near the limit; ours: ${JSON.stringify(report)}`);
    }
  }
  return statuses;
}

describe("fuzz: payload verification (zlib inflater, verifyPayload)", () => {
  test("mutated zlib streams end as python3's zlib says, never past image_size + 1, never hanging", async () => {
    const random = new Random(0x21b0001);
    const tally = new Tally("inflateStage vs python3 zlib");
    const cases: InflateCase[] = [];
    for (let i = 0; i < scaled(1000); i++) {
      const raw = imageLike(random, random.chance(0.1) ? 0 : random.scaled(random.chance(0.05) ? 100_000 : 8_000));
      let stream = zlibStream(random, raw);
      const kind = random.scaled(7);
      if (kind === 0) stream = flipBits(random, stream, 1 + random.scaled(3));
      else if (kind === 1) stream = stream.subarray(0, random.scaled(stream.length));
      else if (kind === 2)
        stream = concat(stream, random.chance(0.5) ? random.bytes(1 + random.scaled(64)) : zlibStream(random, raw));
      else if (kind === 3) {
        stream = new Uint8Array(stream);
        const at = random.scaled(stream.length);
        stream.set(random.bytes(Math.min(stream.length - at, 1 + random.scaled(8))), at);
      }
      const imageSize = random.chance(0.6)
        ? raw.length
        : random.pick([0, 1, raw.length - 1, raw.length + 1, random.scaled(raw.length + 1), Number.MAX_SAFE_INTEGER]);
      // Pieces of 1 byte up to 1 MiB, but at most 256 of them per stream.
      const pieceSize = Math.max(random.pick([1, 7, 512, 4096, 65536, 1 << 20]), Math.ceil(stream.length / 256));
      cases.push({ stream, imageSize: Math.max(0, imageSize), pieceSize });
    }
    const statuses = await checkInflates(tally, cases);
    tally.report(showStatuses(statuses));
    // The mutations reach every outcome.
    expect(Math.min(...Object.values(statuses))).toBeGreaterThan(0);
  });

  test("every 2-byte zlib header with a valid check, and trailing bytes right at a piece boundary", async () => {
    const random = new Random(0x21b0003);
    const tally = new Tally("inflateStage (zlib headers, boundaries)");
    const raw = imageLike(random, 3000);
    const body = new Uint8Array(deflateSync(raw, { level: 9 })).subarray(2);
    const cases: InflateCase[] = [];
    // RFC 1950: CMF (method, window), FLG (FCHECK makes CMF*256+FLG a multiple of 31, FDICT, FLEVEL).
    for (let cmf = 0; cmf < 256; cmf++) {
      for (let flg = 0; flg < 256; flg++) {
        if (((cmf << 8) | flg) % 31 !== 0) continue;
        // With FDICT a 4-byte dictionary id follows, which the inflater must refuse to guess.
        const stream = concat(Uint8Array.of(cmf, flg), flg & 0x20 ? random.bytes(4) : new Uint8Array(0), body);
        cases.push({ stream, imageSize: raw.length, pieceSize: random.chance(0.1) ? 1 + random.scaled(3) : 4096 });
      }
    }
    // The stream's end, and trailing bytes, falling exactly on, before and after a piece boundary.
    const whole = new Uint8Array(deflateSync(raw));
    for (const trailing of [0, 1, 7]) {
      for (const delta of [-2, -1, 0, 1, 2]) {
        const stream = concat(whole, random.bytes(trailing));
        cases.push({ stream, imageSize: raw.length, pieceSize: Math.max(1, whole.length + delta) });
        cases.push({ stream, imageSize: raw.length, pieceSize: Math.max(1, Math.ceil(whole.length / 2) + delta) });
      }
    }
    const statuses = await checkInflates(tally, cases);
    tally.report(showStatuses(statuses));
    expect(statuses.corrupt).toBeGreaterThan(1000);
  });

  test("a 1 GiB bomb in 1 MiB of zlib stops at image_size + 1 with memory flat", async () => {
    const tally = new Tally("inflateStage (bomb)");
    // 1 MiB of zeros as one non-final deflate run; repeated, each copy adds 1 MiB of zeros.
    const mebibyte = deflateRawSync(new Uint8Array(MIB), { level: 9, finishFlush: zlibConstants.Z_SYNC_FLUSH });
    const bomb = concat(
      Uint8Array.of(0x78, 0xda),
      ...Array.from({ length: 1024 }, () => mebibyte),
      Uint8Array.of(0x03, 0x00, 0, 0, 0, 1),
    );
    const grown = await peakGrowthMiB(async () => {
      for (const imageSize of [0, 4096, MIB, 8 * MIB]) {
        tally.cases++;
        const { report } = await inflateOnThisThread(bomb, imageSize, 64 * 1024);
        if (
          report === "hang" ||
          report.kind !== "failed" ||
          report.produced !== imageSize + 1 ||
          !isOneLine(report.reason)
        ) {
          tally.fail(`image size ${imageSize}`, `${JSON.stringify(report)}`);
        } else tally.refused++;
      }
    });
    tally.report(` (${bomb.length}-byte stream of 1 GiB; peak memory ${grown.toFixed(0)} MiB above the start)`);
    expect(grown).toBeLessThan(MEMORY_SLACK_MIB);
  });

  test("verifyPayload on image files made from mutated streams: null or one line, as python3 judges", async () => {
    const random = new Random(0x21b0002);
    const tally = new Tally("verifyPayload (files)");
    const cases: { stream: Uint8Array; raw: Uint8Array; imageSize: number; sha256: Uint8Array }[] = [];
    for (let i = 0; i < Math.max(10, scaled(10)); i++) {
      const raw = imageLike(random, 4096 + random.scaled(300_000));
      let stream = zlibStream(random, raw);
      const kind = random.scaled(5);
      if (kind === 0) stream = flipBits(random, stream, 1);
      else if (kind === 1) stream = stream.subarray(0, random.scaled(stream.length));
      else if (kind === 2) stream = concat(stream, random.bytes(1 + random.scaled(16)));
      const sha256 = new Uint8Array(new Bun.CryptoHasher("sha256").update(raw).digest());
      if (kind === 3) sha256[random.scaled(32)]! ^= 1 << random.scaled(8);
      cases.push({
        stream,
        raw,
        imageSize: random.chance(0.8) ? raw.length : raw.length + random.pick([-1, 1]),
        sha256,
      });
    }
    const theirs = pythonJson(
      PYTHON_INFLATE,
      cases.map(({ stream }) => hex(stream)),
    ) as PythonInflate[];
    for (const [i, { stream, imageSize, sha256 }] of cases.entries()) {
      const label = `case ${i}`;
      const path = join(dir, `verify-${i}.img`);
      const header: Header = {
        version: VERSION,
        flags: FLAG_COMPRESSED,
        dataSize: stream.length,
        imageSize,
        targetSize: imageSize,
        sha256,
        dataset: "rpool/ROOT/ramdisk",
        imageName: "fuzz",
      };
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), stream));
      tally.cases++;
      const verdict = await withDeadline(verifyPayload(path, header), HANG_MS);
      rmSync(path);
      if (verdict === "hang") {
        tally.fail(label, "hung");
        continue;
      }
      const python = theirs[i]!;
      const good =
        stream.length > 0 &&
        imageSize >= stream.length &&
        python.status === "end" &&
        python.consumed === stream.length &&
        python.produced === imageSize &&
        python.sha256 === hex(sha256);
      if (verdict.error === null) tally.accepted++;
      else {
        tally.refused++;
        if (!isOneLine(verdict.error)) tally.fail(label, `error not one line: ${JSON.stringify(verdict.error)}`);
      }
      if ((verdict.error === null) !== good)
        tally.fail(label, `verdict ${JSON.stringify(verdict.error)}, python: ${JSON.stringify(python)}`);
      if (verdict.bytes > imageSize + 1) tally.fail(label, `${verdict.bytes} bytes, past image size + 1`);
    }
    tally.report();
  });

  test("verifyPayload on zstd image files: a damaged payload passes only if zstd -d reads it to the right bytes", async () => {
    const random = new Random(0x21b0004);
    const tally = new Tally("verifyPayload (zstd files)");
    const files: { path: string; raw: Uint8Array; intact: boolean; accepted: boolean }[] = [];
    for (let i = 0; i < Math.max(8, scaled(8)); i++) {
      const base = zstdPayload(random);
      const kind = random.scaled(4);
      const payload =
        kind === 0
          ? flipBits(random, base.payload, 1 + random.scaled(3))
          : kind === 1
            ? flipBits(random, base.payload, 1, base.payload.length - base.tableSize)
            : kind === 2
              ? base.payload.subarray(0, random.scaled(base.payload.length))
              : base.payload;
      const header: Header = {
        version: ZSTD_VERSION,
        flags: FLAG_ZSTD,
        dataSize: payload.length,
        imageSize: base.raw.length,
        targetSize: base.raw.length,
        sha256: new Uint8Array(new Bun.CryptoHasher("sha256").update(base.raw).digest()),
        dataset: "rpool/ROOT/ramdisk",
        imageName: "fuzz",
      };
      const path = join(dir, `verify-zstd-${i}.img`);
      writeFileSync(path, concat(new Uint8Array(HEADER_SIZE), payload));
      tally.cases++;
      const verdict = await withDeadline(verifyPayload(path, header), HANG_MS);
      writeFileSync(`${path}.zst`, payload);
      if (verdict === "hang") {
        tally.fail(`case ${i}`, "hung");
        continue;
      }
      if (verdict.error === null) tally.accepted++;
      else {
        tally.refused++;
        if (!isOneLine(verdict.error)) tally.fail(`case ${i}`, `error not one line: ${JSON.stringify(verdict.error)}`);
      }
      if (verdict.bytes > base.raw.length) tally.fail(`case ${i}`, `${verdict.bytes} bytes, past the image size`);
      files.push({ path: `${path}.zst`, raw: base.raw, intact: kind === 3, accepted: verdict.error === null });
    }
    // Debian's zstd on every payload; it may fail on some, so each output is judged on its own.
    Bun.spawnSync(["zstd", "-d", "-q", "-f", ...files.map(({ path }) => path)], { stdout: "ignore", stderr: "ignore" });
    for (const [i, { path, raw, intact, accepted }] of files.entries()) {
      const output = outcome(() => readFileSync(path.replace(/\.zst$/, "")));
      const zstdReadsIt = output.ok && hex(output.value) === hex(raw);
      if (accepted && !zstdReadsIt)
        tally.fail(`case ${i}`, "verifyPayload passed a payload zstd -d does not read to the image");
      if (intact && !accepted) tally.fail(`case ${i}`, "verifyPayload refused an intact payload");
    }
    tally.report();
  });
});
