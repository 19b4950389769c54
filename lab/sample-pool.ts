/**
 * Deterministic pool-like sample data for the demo, tests and benchmarks.
 *
 * A real ramdisk pool holds long runs of zeros (free space and sparse
 * metadata), executables and libraries (compressible but not text), text
 * (configuration, manifests, scripts) and already-compressed files that do
 * not compress at all. The generator lays out records of those four kinds,
 * chosen and sized by a fixed-seed generator, so every run of the same size
 * and seed yields the same bytes, and compressors see about the ratio real
 * images show (the vectors made by the existing tools compress 2.8x to 3.9x).
 * No downloads: everything is made here.
 */

import { Xorshift32 } from "@ramdisk-tools/random/xorshift32.ts";

const WORDS = (
  "zfs pool dataset ramdisk kernel sled oxide boot image root mount device driver " +
  "service manifest property network link address interface firmware process thread " +
  "memory page block checksum compress archive system library header payload target " +
  "the of and to in is for with on by from at as that this be are or it not"
).split(" ");

const RECORD_UNIT = 4096;

function fillText(out: Uint8Array, random: Xorshift32) {
  let at = 0;
  while (at < out.length) {
    const word = WORDS[random.below(WORDS.length)]!;
    for (let i = 0; i < word.length && at < out.length; i++) out[at++] = word.charCodeAt(i);
    if (at < out.length) out[at++] = random.below(12) === 0 ? 10 : 32;
  }
}

function fillBinary(out: Uint8Array, random: Xorshift32) {
  // Executables repeat themselves: the same instruction sequences, call
  // targets and relocations recur at short and middling distances, with
  // fresh operands between them. So the record is built as a compressor
  // would see it: a short run of literals (opcode-like bytes with random
  // operands), then a copy of 3 to 34 earlier bytes from up to 16 KiB back,
  // over and over. This gives the ratio deflate gets on real binaries (about
  // 2.5x to 3x).
  const opcodes = [0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0xc3, 0x55, 0x41, 0x5d, 0x31, 0xc0, 0xff, 0x74, 0x00, 0x24];
  let at = 0;
  while (at < out.length) {
    const literals = 1 + random.below(6);
    for (let i = 0; i < literals && at < out.length; i++) {
      out[at++] = random.below(3) === 0 ? random.next() & 0xff : opcodes[random.below(opcodes.length)]!;
    }
    if (at < 64) continue;
    const distance = 1 + random.below(Math.min(at, random.below(4) === 0 ? 16384 : 1024));
    const length = 3 + random.below(32);
    for (let i = 0; i < length && at < out.length; i++, at++) out[at] = out[at - distance]!;
  }
}

function fillRandom(out: Uint8Array, random: Xorshift32) {
  const words = new Uint32Array(out.buffer, out.byteOffset, out.length >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = random.next();
  for (let i = words.length << 2; i < out.length; i++) out[i] = random.next() & 0xff;
}

/**
 * Yield `size` bytes of pool-like data in chunks of at most `chunkSize`
 * bytes, the same bytes for the same size and seed.
 *
 * @example for (const chunk of samplePoolChunks(64 * 1024 * 1024)) sink.write(chunk);
 */
export function* samplePoolChunks(size: number, seed = 1, chunkSize = 4 * 1024 * 1024): Generator<Uint8Array> {
  const random = new Xorshift32(seed);
  let left = size;
  let record: Uint8Array = new Uint8Array(0);
  let recordAt = 0;
  while (left > 0) {
    const chunk = new Uint8Array(Math.min(chunkSize, left));
    let at = 0;
    while (at < chunk.length) {
      if (recordAt === record.length) {
        record = new Uint8Array(RECORD_UNIT * (1 + random.below(64)));
        recordAt = 0;
        // Out of 20: 6 zeros (free space), 6 binaries, 5 text, 3 incompressible.
        const kind = random.below(20);
        if (kind >= 17) fillRandom(record, random);
        else if (kind >= 12) fillText(record, random);
        else if (kind >= 6) fillBinary(record, random);
      }
      const take = Math.min(chunk.length - at, record.length - recordAt);
      chunk.set(record.subarray(recordAt, recordAt + take), at);
      at += take;
      recordAt += take;
    }
    left -= chunk.length;
    yield chunk;
  }
}

/**
 * Write `size` bytes of pool-like data to `path`, streaming (memory stays at
 * one chunk whatever the size).
 *
 * @example await writeSamplePool("/tmp/pool.raw", 256 * 1024 * 1024);
 */
export async function writeSamplePool(path: string, size: number, seed = 1): Promise<void> {
  const writer = Bun.file(path).writer();
  for (const chunk of samplePoolChunks(size, seed)) {
    writer.write(chunk);
    await writer.flush();
  }
  await writer.end();
}
