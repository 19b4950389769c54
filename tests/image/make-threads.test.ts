/**
 * The thread plumbing under mkimage: the general worker pool and its ordered
 * hand-off (lib/threads/pool.ts), the reusable block buffers and their holds
 * (lib/image/block-buffers.ts), and the SHA-256 thread (lib/image/block-hasher.ts), each
 * with real worker threads.
 */
import { describe, expect, test } from "bun:test";
import { BlockHasher } from "@ramdisk-tools/image/block-hasher.ts";
import { type CompressedBlock, decompressBlock, type ZstdBlockJob } from "@ramdisk-tools/image/zstd-frames.ts";
import { runInOrder, WorkerPool } from "@ramdisk-tools/threads/pool.ts";
import { BlockBuffers } from "../../lib/image/block-buffers.ts";
import { IMAGE_THREADS } from "../../workers/entry-points.ts";

const KIB = 1024;

/** Bytes that compress a little, different for every `seed`. */
function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(new SharedArrayBuffer(length));
  for (let i = 0; i < length; i++) out[i] = (i * seed + (i >> 7)) & 0xff;
  return out;
}

async function* each<T>(items: readonly T[]): AsyncGenerator<T> {
  for (const item of items) yield item;
}

describe("runInOrder on a WorkerPool", () => {
  test("results come back in the items' order, with at most `inFlight` items out at once", async () => {
    // A large block first, so a later, small one finishes before it on the other thread.
    const blocks = [bytes(4096 * KIB, 3), ...Array.from({ length: 11 }, (_, i) => bytes(KIB + i, i + 5))];
    const pool = new WorkerPool<ZstdBlockJob, CompressedBlock>(IMAGE_THREADS.zstdFrames, 2);
    const taken: number[] = [];
    let sent = 0;
    let mostOut = 0;
    try {
      await runInOrder(
        pool,
        each(blocks.map((raw, index) => ({ raw, index }))),
        3,
        ({ raw }) => {
          sent++;
          mostOut = Math.max(mostOut, sent - taken.length);
          return { job: { raw, level: 1 } };
        },
        async (done, { raw, index }) => {
          const block = { index, ...done.entry };
          expect(Buffer.compare(decompressBlock(done.frame, block), raw)).toBe(0);
          taken.push(index);
        },
      );
    } finally {
      pool.close();
    }
    expect(taken).toEqual(blocks.map((_, index) => index));
    expect(mostOut).toBe(3);
  });

  test("a job that fails fails the run with its worker's message", async () => {
    const pool = new WorkerPool<ZstdBlockJob, CompressedBlock>(IMAGE_THREADS.zstdFrames, 2);
    try {
      const levels = [3, 3, 23, 3];
      const run = runInOrder(
        pool,
        each(levels),
        4,
        (level) => ({ job: { raw: bytes(KIB, level), level } }),
        async () => {},
      );
      await expect(run).rejects.toThrow(/^zstd level 23 is not a whole number from 1 to 22$/);
    } finally {
      pool.close();
    }
  });
});

describe("BlockBuffers", () => {
  test("a buffer given back is taken again, seen at the length asked, in shared memory when asked", () => {
    const buffers = new BlockBuffers(64 * KIB, { shared: true });
    const first = buffers.take(10);
    expect(first.length).toBe(10);
    expect(first.buffer).toBeInstanceOf(SharedArrayBuffer);
    buffers.give(first);
    expect(buffers.take().buffer).toBe(first.buffer);
    // A buffer of another size is not one of these.
    buffers.give(new Uint8Array(KIB));
    expect(buffers.take().buffer.byteLength).toBe(64 * KIB);
  });

  test("a held buffer is taken again only once its hold has settled, even a failed one", async () => {
    const buffers = new BlockBuffers(KIB);
    const block = buffers.take();
    let release!: () => void;
    buffers.hold(
      block,
      new Promise<void>((resolve) => {
        release = resolve;
      }),
    );
    buffers.give(block);
    expect(buffers.take().buffer).not.toBe(block.buffer);
    release();
    await Bun.sleep(0);
    expect(buffers.take().buffer).toBe(block.buffer);

    const failing = buffers.take();
    buffers.hold(failing, Promise.reject(new Error("hash thread failed")));
    buffers.give(failing);
    await Bun.sleep(0);
    expect(buffers.take().buffer).toBe(failing.buffer);
  });
});

describe("BlockHasher", () => {
  test("the digest of blocks hashed on its thread is the SHA-256 of their bytes in order", async () => {
    const blocks = [bytes(1024 * KIB, 7), bytes(5, 9), bytes(300 * KIB, 11)];
    const hasher = new BlockHasher(IMAGE_THREADS.blockHasher);
    try {
      await Promise.all(blocks.map((block) => hasher.update(block)));
      const expected = new Bun.CryptoHasher("sha256");
      for (const block of blocks) expected.update(block);
      expect(Buffer.from(await hasher.digest()).toString("hex")).toBe(expected.digest("hex"));
      // A digest starts the next one afresh: nothing hashed is the SHA-256 of no bytes.
      expect(Buffer.from(await hasher.digest()).toString("hex")).toBe(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      );
      expect(() => hasher.update(new Uint8Array(4))).toThrow(/shared memory only/);
    } finally {
      hasher.close();
    }
  });
});
