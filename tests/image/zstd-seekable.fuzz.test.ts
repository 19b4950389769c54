/**
 * Fuzz tests of the zstd payload (lib/image/zstd-seekable.ts,
 * zstd-frames.ts, zstd-image.ts): damaged seek tables and frames, lying
 * entries, hostile sizes under a memory watch, damaged image files, with
 * Debian's `zstd -d` as the independent decoder. The generator, tally and
 * shared checks are tests/helpers/fuzz.ts's.
 */

import { describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { HEADER_SIZE, ImageFormatError } from "@ramdisk-tools/image/format.ts";
import { compressBlock, decompressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { readSeekTable } from "@ramdisk-tools/image/zstd-image.ts";
import {
  blockChecksum,
  blockIndexForOffset,
  decodeSeekTable,
  type SeekTable,
  ZSTD_MAX_BLOCK_SIZE,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import { commandOutput, hex, runCommandBytes } from "../helpers/common.ts";
import {
  concat,
  flipBits,
  fuzzFile,
  imageLike,
  MEMORY_SLACK_MIB,
  outcome,
  peakGrowthMiB,
  Random,
  scaled,
  show,
  Tally,
  U32_MAX,
  U64_MAX,
} from "../helpers/fuzz.ts";
import { zstdPayload, zstdRleBomb } from "../helpers/zstd.ts";

const scratch = fuzzFile();

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
  test("damaged seek tables, truncations, extensions and edge fields: a checked table or one ImageFormatError line", async () => {
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
      const path = join(scratch(), `readable-${i}.zst`);
      writeFileSync(path, payload);
      return path;
    });
    await commandOutput(["zstd", "-d", "-q", "-f", ...files]);
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
  test("a frame whose last block never comes is refused, as zstd -d refuses it", async () => {
    const raw = imageLike(new Random(0x257d0005), 200);
    // Magic; descriptor 0x20 (single segment, 1-byte content size); content size; raw block header of 200 bytes.
    const frameOf = (last: number) =>
      concat(Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, 0x20, 200, ((200 << 3) & 0xff) | last, (200 << 3) >> 8, 0), raw);
    const zstd = (frame: Uint8Array) => {
      const path = join(scratch(), "one-raw-block.zst");
      writeFileSync(path, frame);
      return runCommandBytes(["zstd", "-d", "-c", path]);
    };
    const block = {
      index: 0,
      compressedSize: frameOf(1).length,
      decompressedSize: raw.length,
      checksum: blockChecksum(raw),
    };
    // The independent decoder: the whole frame gives the bytes, the unended one is refused.
    expect(hex((await zstd(frameOf(1))).stdout)).toBe(hex(raw));
    expect((await zstd(frameOf(0))).exitCode).not.toBe(0);
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
      const path = join(scratch(), "zstd-hostile.img");
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
      const path = join(scratch(), `read-seek-table-${i}.img`);
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
