/**
 * The boot server serving zstd images: block by block
 * through a shared cache, never a byte of a block that fails its check.
 *
 * Raw pools and their SHA-256 come from python3 (random, hashlib); images
 * are made by `bun apps/mkimage.ts --zstd`, and python3 finds a frame to
 * damage by reading the seek table from the end of the payload, as
 * docs/format.md lays it out. The block cache is exercised directly with
 * readers that hold blocks while others read, then the real
 * `bun apps/bootserver.ts` serves `bun apps/sled.ts` over a veth pair
 * created for the test.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { decodeSeekTable } from "@ramdisk-tools/image/zstd-seekable.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { type ZstdImageMemory, ZstdImageReader, zstdImageMemory } from "@ramdisk-tools/netboot/block-cache.ts";
import { startReadAhead } from "@ramdisk-tools/netboot/served-image.ts";
import { SERVER_THREADS } from "../../workers/entry-points.ts";
import { programOutput, python } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(120_000);

/** Five whole 1 MiB blocks and a short last one of 256 KiB: still whole 128 KiB batches. */
const POOL_SIZE = 5 * MIB + 256 * 1024;
const HEADER_SIZE = 4096;
/** The frame damaged in bad.img. */
const BAD_BLOCK = 2;

let dir = "";
let pool = new Uint8Array(0);
let poolSha256 = "";

/** Copy an image, flipping bytes in the middle of one frame found through the seek table (docs/format.md). */
const DAMAGE_FRAME = `
import struct, sys
src, dst, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = bytearray(open(src, "rb").read())
frames, descriptor, magic = struct.unpack("<IBI", data[-9:])
assert magic == 0x8F92EAB1 and descriptor & 0x80
table = len(data) - 9 - 12 * frames
start = 4096 + sum(struct.unpack("<I", data[table + 12 * i:table + 12 * i + 4])[0] for i in range(block))
size = struct.unpack("<I", data[table + 12 * block:table + 12 * block + 4])[0]
for at in range(start + size // 2, start + size // 2 + 16):
    data[at] ^= 0x5A
open(dst, "wb").write(data)
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bootserver-zstd-test-"));
  poolSha256 = writePool(join(dir, "pool.raw"), POOL_SIZE, 7);
  pool = new Uint8Array(readFileSync(join(dir, "pool.raw")));
  // 1 MiB frames (not the default 4 MiB), so this small pool makes six blocks for the cache to juggle.
  await programOutput(
    "mkimage",
    [
      "-i",
      "pool.raw",
      "-o",
      "pool.img",
      "-O",
      "pool.csum",
      "-N",
      "zstd-test",
      "-s",
      "8",
      "--zstd",
      "--block-size",
      "1",
    ],
    { cwd: dir },
  );
  python(DAMAGE_FRAME, join(dir, "pool.img"), join(dir, "bad.img"), String(BAD_BLOCK));
  // The same pool in mkimage's default 4 MiB blocks: one whole block and a short one.
  await programOutput("mkimage", ["-i", "pool.raw", "-o", "default.img", "-N", "zstd-test", "-s", "8", "--zstd"], {
    cwd: dir,
  });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The payload of an image file in shared memory, with a cache of `cacheBytes`. */
function imageMemory(file: string, cacheBytes: number): ZstdImageMemory {
  const bytes = readFileSync(join(dir, file)).subarray(HEADER_SIZE);
  const payload = new SharedArrayBuffer(bytes.length);
  new Uint8Array(payload).set(bytes);
  const table = decodeSeekTable(new Uint8Array(payload), { payloadSize: bytes.length, imageSize: POOL_SIZE });
  return zstdImageMemory(payload, table, cacheBytes);
}

describe("ZstdImageReader", () => {
  test("the checksum file mkimage wrote is python's SHA-256 of the pool", () => {
    expect(readFileSync(join(dir, "pool.csum")).toString("hex")).toBe(poolSha256);
  });

  test("default.img is in 4 MiB blocks, pool.img in 1 MiB ones", () => {
    const sizes = (file: string) => {
      const bytes = readFileSync(join(dir, file)).subarray(HEADER_SIZE);
      return decodeSeekTable(bytes, { payloadSize: bytes.length, imageSize: POOL_SIZE }).blocks.map(
        (block) => block.decompressedSize,
      );
    };
    expect(sizes("default.img")).toEqual([4 * MIB, POOL_SIZE - 4 * MIB]);
    expect(sizes("pool.img")).toEqual([MIB, MIB, MIB, MIB, MIB, POOL_SIZE - 5 * MIB]);
  });

  test("gives the pool's bytes at any offset, fewer at the end, none at or past it", () => {
    const reader = new ZstdImageReader(imageMemory("pool.img", 2 * MIB));
    for (const at of [0, 1000, MIB - 10, MIB, 3 * MIB + 5, POOL_SIZE - 1024, POOL_SIZE - 100, 0]) {
      expect(Buffer.from(reader.chunk(BigInt(at)))).toEqual(
        Buffer.from(pool.subarray(at, Math.min(at + 1024, POOL_SIZE))),
      );
    }
    for (const past of [BigInt(POOL_SIZE), BigInt(POOL_SIZE) + 1n, 2n ** 53n + 1n, 2n ** 64n - 1n]) {
      expect(reader.chunk(past).length).toBe(0);
    }
    reader.release();
  });

  test("a block one reader holds is not overwritten while others fill the rest of a small cache", () => {
    // Two slots for six blocks, shared by three readers.
    const memory = imageMemory("pool.img", 2 * MIB);
    const holder = new ZstdImageReader(memory);
    const held = holder.chunk(4096n);
    const others = [new ZstdImageReader(memory), new ZstdImageReader(memory)];
    for (let round = 0; round < 3; round++) {
      for (let block = 0; block < 6; block++) {
        for (const reader of others) {
          const at = block * MIB + 2048 * (round + 1);
          expect(Buffer.from(reader.chunk(BigInt(at)))).toEqual(Buffer.from(pool.subarray(at, at + 1024)));
        }
      }
    }
    expect(Buffer.from(held)).toEqual(Buffer.from(pool.subarray(4096, 5120)));
    holder.release();
    for (const reader of others) reader.release();
  });

  test("threads sharing a two-slot cache each read the pool's bytes, never another block's", async () => {
    // Each thread reads random 1 KiB chunks and checks them against the pool; with two slots for six
    // blocks and three threads, slots are evicted and refilled under readers all the time.
    const memory = imageMemory("pool.img", 2 * MIB);
    const shared = new SharedArrayBuffer(pool.length);
    new Uint8Array(shared).set(pool);
    const code = `
      import { ZstdImageReader } from ${JSON.stringify(join(ROOT, "lib/netboot/block-cache.ts"))};
      self.onmessage = ({ data: { memory, pool, seed } }) => {
        const expected = new Uint8Array(pool);
        const reader = new ZstdImageReader(memory);
        let state = seed, wrong = 0;
        for (let i = 0; i < 3000; i++) {
          state = (state * 1103515245 + 12345) % 2147483648;
          const at = Math.floor((state / 2147483648) * (expected.length / 1024)) * 1024;
          const chunk = reader.chunk(BigInt(at));
          for (let k = 0; k < chunk.length; k += 61) if (chunk[k] !== expected[at + k]) { wrong++; break; }
          if (i % 3 === 0) reader.release();
        }
        reader.release();
        self.postMessage(wrong);
      };`;
    const url = URL.createObjectURL(new Blob([code], { type: "application/javascript" }));
    const wrong = await Promise.all(
      [1, 2, 3].map(
        (seed) =>
          new Promise<number>((resolve, reject) => {
            const worker = new Worker(url);
            worker.onmessage = (event) => {
              resolve(event.data as number);
              worker.terminate();
            };
            worker.onerror = (event) => reject(new Error(event.message));
            worker.postMessage({ memory, pool: shared, seed });
          }),
      ),
    );
    expect(wrong).toEqual([0, 0, 0]);
  });

  test("prefetch decompresses a block into the cache unpinned, within the same slots, and skips a damaged one", () => {
    // Two slots for six blocks. The slot table (lib/netboot/block-cache.ts): 3 head words, then state, block, stamp per slot.
    const memory = imageMemory("pool.img", 2 * MIB);
    const words = new Int32Array(memory.cache, 0, 3 + 2 * 3);
    const cached = () => [words[3 + 1], words[6 + 1]].filter((block) => block! >= 0).sort();
    const reader = new ZstdImageReader(memory);
    const other = new ZstdImageReader(memory);
    for (let block = 0; block < 6; block++) {
      reader.prefetch(block * MIB + 5000);
      expect(cached()).toContain(block);
      expect([words[3], words[6]]).toEqual([0, 0]); // nothing left pinned
      // The prefetched block is the one served, and right.
      const at = block * MIB + 3072;
      expect(Buffer.from(other.chunk(BigInt(at)))).toEqual(Buffer.from(pool.subarray(at, at + 1024)));
      other.release();
    }
    expect(memory.cache.byteLength).toBe(imageMemory("pool.img", 2 * MIB).cache.byteLength);
    expect(reader.nextBlockOffset(MIB + 10)).toBe(2 * MIB);
    expect(reader.nextBlockOffset(POOL_SIZE - 1)).toBe(POOL_SIZE);
    reader.prefetch(POOL_SIZE); // past the end: nothing to do

    const damaged = new ZstdImageReader(imageMemory("bad.img", 2 * MIB));
    damaged.prefetch(BAD_BLOCK * MIB);
    expect(() => damaged.chunk(BigInt(BAD_BLOCK * MIB))).toThrow(new RegExp(`^block ${BAD_BLOCK}: `));
  });

  test("the read-ahead thread decompresses the blocks sessions hint at, until it is retired", async () => {
    const memory = imageMemory("pool.img", 2 * MIB);
    const words = new Int32Array(memory.cache, 0, 3 + 2 * 3);
    // Blocks written in full and left unpinned: state 0 (a slot being written shows its block with state -1).
    const ready = () => [3, 6].filter((slot) => words[slot] === 0).map((slot) => words[slot + 1]);
    const retire = startReadAhead(memory, SERVER_THREADS.blockCache);
    try {
      const session = new ZstdImageReader(memory);
      for (const block of [4, 1]) {
        session.hint(block * MIB + 100);
        const deadline = Date.now() + 20_000;
        while (!ready().includes(block) && Date.now() < deadline) await Bun.sleep(5);
        expect(ready()).toContain(block);
      }
      // What it put there is the pool's bytes.
      const at = MIB + 2048;
      expect(Buffer.from(session.chunk(BigInt(at)))).toEqual(Buffer.from(pool.subarray(at, at + 1024)));
      session.release();
    } finally {
      retire();
    }
  });

  test("refuses a block whose frame is damaged, naming it, and still serves the others", () => {
    const reader = new ZstdImageReader(imageMemory("bad.img", 64 * MIB));
    expect(() => reader.chunk(BigInt(BAD_BLOCK * MIB + 4096))).toThrow(new RegExp(`^block ${BAD_BLOCK}: `));
    expect(() => reader.chunk(BigInt(BAD_BLOCK * MIB))).toThrow(new RegExp(`^block ${BAD_BLOCK}: `));
    const at = (BAD_BLOCK + 1) * MIB;
    expect(Buffer.from(reader.chunk(BigInt(at)))).toEqual(Buffer.from(pool.subarray(at, at + 1024)));
    reader.release();
  });
});

// --- On a veth pair -----------------------------------------------------------

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver zstd network tests skipped: ${raw.why}`);

/** Every sled checks the checksum file mkimage wrote and reports as JSON. */
const SLED_ARGS = ["--checksum-file", "pool.csum", "--json"];

network("bootserver serving a zstd image on a veth pair", () => {
  // pool.img has 1 MiB blocks; default.img mkimage's default 4 MiB (a whole one and a short one).
  const cases: [sleds: number, image: string][] = [
    [1, "pool.img"],
    [4, "pool.img"],
    [2, "default.img"],
  ];
  for (const [sleds, image] of cases) {
    test(`boots ${sleds} sled${sleds === 1 ? "" : "s"} from ${image} with the right checksum`, async () => {
      await withVethPair(async ({ a, b }) => {
        const server = new ServerProcess(["--boots", String(sleds), a, image, "any"], dir);
        try {
          await server.waitFor(/^serving on /);
          const loaded = server.lines.find((line) =>
            line.includes(`${image}: image name "zstd-test", 5.3 MiB (zstd, `),
          );
          expect(loaded).toContain("each block's checksum is checked as sleds read it");
          const sled = await runSleds(dir, b, [...SLED_ARGS, "--sleds", String(sleds)]);
          expect(sled.exitCode).toBe(0);
          expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual(
            Array(sleds).fill(["booted", POOL_SIZE]),
          );
          expect(await server.exited()).toBe(0);
          expect(server.lines.filter((line) => line.includes(` finished ${image}: `)).length).toBe(sleds);
        } finally {
          server.kill();
        }
      }, "rzs");
    });
  }

  test("boots 2 sleds from an image larger than the block cache, reading ahead through evicted slots", async () => {
    // 96 one-MiB blocks through a 64 MiB cache (--zstd-cache): blocks are read ahead, evicted and decompressed again.
    const bigSha256 = writePool(join(dir, "big.raw"), 96 * MIB, 8);
    await programOutput(
      "mkimage",
      ["-i", "big.raw", "-o", "big.img", "-N", "zstd-big", "-s", "128", "--zstd", "--block-size", "1"],
      { cwd: dir },
    );
    rmSync(join(dir, "big.raw"));
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--boots", "2", "--zstd-cache", "64", a, "big.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(dir, b, ["--checksum", bigSha256, "--json", "--sleds", "2"]);
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual(
          Array(2).fill(["booted", 96 * MIB]),
        );
        expect(await server.exited()).toBe(0);
      } finally {
        server.kill();
      }
    }, "rzs");
  });

  test("RESETs a sled that reaches a damaged frame, sends none of its bytes, says why and keeps serving", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess([a, "bad.img", "any"], dir);
      try {
        await server.waitFor(/^serving on /);
        const sled = await runSleds(dir, b, SLED_ARGS);
        expect(sled.exitCode).toBe(1);
        expect(sled.reports.length).toBe(1);
        const [report] = sled.reports;
        expect(report.outcome).toBe("reset");
        // Every byte the sled took is from before the damaged block.
        expect(report.bytes).toBeLessThanOrEqual(BAD_BLOCK * MIB);
        const warning = await server.waitFor(/RESET/);
        expect(warning).toMatch(
          new RegExp(
            `^warning: [0-9a-f:]{17}: sent a RESET instead of bytes that failed their check: block ${BAD_BLOCK}: `,
          ),
        );
        // Still up, and answering: a second sled gets an offer and is RESET too.
        expect(server.process.exitCode).toBeNull();
        const again = await runSleds(dir, b, [...SLED_ARGS, "--mac", "02:5e:b5:00:00:a1"]);
        expect(again.reports.map((each) => each.outcome)).toEqual(["reset"]);
        server.process.kill("SIGTERM");
        expect(await server.exited()).toBe(143);
        expect(await server.stderr()).toBe("");
      } finally {
        server.kill();
      }
    }, "rzs");
  });
});
