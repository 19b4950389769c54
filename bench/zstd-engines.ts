/**
 * Which zstd engine, and which level, should mkimage --zstd use?
 *
 * The candidates are Bun's built-in zstd (`Bun.zstdCompressSync`, the same
 * library behind `node:zlib`'s zstd functions, which add an output bound on
 * decompression, and mkimage's own path: node:zlib's native handle into a
 * reused output buffer, lib/image/zstd-seekable.ts), Debian's libzstd
 * over bun:ffi with one reused context, and @bokuweb/zstd-wasm, the design
 * card's package.
 * Each compresses the same pool-like sample block by block, as a seekable
 * zstd image is built (one independent frame per block), at levels 1, 2, 3
 * and 6, for 1 MiB and 4 MiB blocks; then decompresses those frames. Debian's
 * zstd is the reference: `zstd -T1 -LEVEL` file to file on the whole sample
 * (one frame), and `zstd -b -B` (the same blocks, in memory, contexts
 * reused). Serial zlib level 9 is the bar a zstd image must beat in size and
 * speed: it is what a version 2 `-z` image holds (the parallel zlib path
 * gives the same size within a fraction of a percent, at this speed per core).
 *
 * The sample is lab/sample-pool.ts's, as for bench/mkimage.ts: seeded,
 * pool-like records of zeros, binaries, text and incompressible bytes.
 *
 * Speeds are MB (10^6 bytes of raw data) per CPU second, one thread: CPU
 * time rather than wall time, because the machine is shared (other work
 * steals the cores, and wall time charges that to whichever engine was
 * running); the best of --repeat rounds after a warm-up round. `zstd -b`
 * reports its own (wall-clock) figures.
 *
 *   bun bench/zstd-engines.ts [--size MIB] [--repeat N] [--levels 1,2,3,6]
 */

import { dlopen, FFIType, ptr } from "bun:ffi";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import * as zlib from "node:zlib";
import * as wasm from "@bokuweb/zstd-wasm";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { compressBlock } from "@ramdisk-tools/image/zstd-frames.ts";
import { frameCapacity } from "@ramdisk-tools/image/zstd-seekable.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { samplePoolChunks } from "@ramdisk-tools/lab/sample-pool.ts";
import yargs from "yargs";

const LEVELS = [1, 2, 3, 6];
const BLOCK_SIZES = [1 * MIB, 4 * MIB] as const;
const SEED = 1;

/** One way of compressing and decompressing a single frame. */
interface Engine {
  name: string;
  compress(raw: Uint8Array, level: number): Uint8Array;
  decompress(frame: Uint8Array, rawSize: number): Uint8Array;
}

/**
 * Debian's libzstd over bun:ffi, one compression context reused for every
 * frame (ZSTD_compressCCtx), as a C program would call it; undefined where
 * the library is missing. Measured against the others to see whether a
 * system library beats Bun's own zstd; mkimage does not use it.
 */
function libzstdEngine(): Engine | undefined {
  const open = () =>
    dlopen("libzstd.so.1", {
      ZSTD_versionString: { args: [], returns: FFIType.cstring },
      ZSTD_createCCtx: { args: [], returns: FFIType.ptr },
      ZSTD_compressCCtx: {
        args: [FFIType.ptr, FFIType.ptr, FFIType.u64, FFIType.ptr, FFIType.u64, FFIType.i32],
        returns: FFIType.u64,
      },
      ZSTD_isError: { args: [FFIType.u64], returns: FFIType.u32 },
    });
  let library: ReturnType<typeof open>;
  try {
    library = open();
  } catch {
    return undefined;
  }
  const zstd = library.symbols;
  const context = zstd.ZSTD_createCCtx();
  return {
    name: `libzstd ${zstd.ZSTD_versionString()} (FFI)`,
    compress: (raw, level) => {
      const out = new Uint8Array(frameCapacity(raw.length));
      const size = zstd.ZSTD_compressCCtx(context, ptr(out), out.length, ptr(raw), raw.length, level);
      if (zstd.ZSTD_isError(size)) throw new Error(`libzstd refused a block of ${raw.length} bytes`);
      return out.subarray(0, Number(size));
    },
    decompress: (frame) => Bun.zstdDecompressSync(frame),
  };
}

const engines: Engine[] = [
  {
    name: "node:zlib handle (mkimage)",
    compress: (raw, level) => compressBlock(raw, level),
    decompress: (frame, rawSize) => zlib.zstdDecompressSync(frame, { maxOutputLength: rawSize }),
  },
  {
    name: "Bun.zstd*Sync",
    compress: (raw, level) => Bun.zstdCompressSync(raw, { level }),
    decompress: (frame) => Bun.zstdDecompressSync(frame),
  },
  {
    name: "node:zlib zstd",
    compress: (raw, level) =>
      zlib.zstdCompressSync(raw, { params: { [zlib.constants.ZSTD_c_compressionLevel]: level } }),
    decompress: (frame, rawSize) => zlib.zstdDecompressSync(frame, { maxOutputLength: rawSize }),
  },
  {
    name: "zstd-wasm 0.0.27",
    compress: (raw, level) => wasm.compress(raw, level),
    decompress: (frame, rawSize) => wasm.decompress(frame, { defaultHeapSize: rawSize }),
  },
  ...[libzstdEngine()].filter((engine) => engine !== undefined),
];

function blocksOf(sample: Uint8Array, blockSize: number): Uint8Array[] {
  const blocks: Uint8Array[] = [];
  for (let at = 0; at < sample.length; at += blockSize) blocks.push(sample.subarray(at, at + blockSize));
  return blocks;
}

interface Row {
  engine: string;
  level: string;
  block: string;
  size: number;
  compressSeconds: number;
  decompressSeconds: number;
}

/** CPU seconds (user + system, all of this process's threads) that `run` takes. */
function seconds(run: () => void): number {
  const start = process.cpuUsage();
  run();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1e6;
}

/** Keep the best (shortest) times of two measurements of the same thing. */
function best(a: Row | undefined, b: Row): Row {
  if (!a) return b;
  return {
    ...a,
    compressSeconds: Math.min(a.compressSeconds, b.compressSeconds),
    decompressSeconds: Math.min(a.decompressSeconds, b.decompressSeconds),
  };
}

function measureEngine(engine: Engine, sample: Uint8Array, level: number, blockSize: number): Row {
  const blocks = blocksOf(sample, blockSize);
  let frames: Uint8Array[] = [];
  let restored: Uint8Array[] = [];
  const compressSeconds = seconds(() => {
    frames = blocks.map((block) => engine.compress(block, level));
  });
  const decompressSeconds = seconds(() => {
    restored = frames.map((frame, index) => engine.decompress(frame, blocks[index]!.length));
  });
  // Every engine must give back the exact input, or its speed means nothing.
  if (!Buffer.concat(restored).equals(sample))
    throw new Error(`${engine.name} level ${level}: round trip differs from the sample`);
  const size = frames.reduce((sum, frame) => sum + frame.length, 0);
  return {
    engine: engine.name,
    level: String(level),
    block: `${blockSize / MIB} MiB`,
    size,
    compressSeconds,
    decompressSeconds,
  };
}

/** Debian's zstd, file to file, one frame for the whole sample: what `zstd -T1 -LEVEL` costs a user. */
function measureCli(samplePath: string, dir: string, level: number): Row {
  const compressed = join(dir, "sample.zst");
  const restored = join(dir, "sample.out");
  /** CPU seconds the zstd process used. */
  const run = (args: string[]) => {
    const result = Bun.spawnSync(["zstd", "-q", "-f", ...args], { stderr: "pipe" });
    if (result.exitCode !== 0) throw new Error(`zstd ${args.join(" ")}: ${result.stderr.toString().trim()}`);
    return Number(result.resourceUsage.cpuTime.total) / 1e6;
  };
  const compressSeconds = run(["-T1", `-${level}`, samplePath, "-o", compressed]);
  const decompressSeconds = run(["-d", compressed, "-o", restored]);
  return {
    engine: "zstd CLI -T1, files",
    level: String(level),
    block: "whole",
    size: Bun.file(compressed).size,
    compressSeconds,
    decompressSeconds,
  };
}

/**
 * Debian's zstd benchmark mode (`zstd -b -B`): the same library in memory,
 * cutting the sample into independent blocks as our frames are, with its
 * contexts reused. It shows what libzstd itself does on this machine.
 */
function measureCliInMemory(samplePath: string, level: number, blockSize: number, sampleSize: number): Row {
  const result = Bun.spawnSync(["zstd", "-T1", `-b${level}`, `-B${blockSize}`, "-i2", samplePath], { stderr: "pipe" });
  const text = result.stdout.toString() + result.stderr.toString();
  const match = [...text.matchAll(/-> +(\d+) \(x[\d.]+\), +([\d.]+) MB\/s, +([\d.]+) MB\/s/g)].at(-1);
  if (result.exitCode !== 0 || !match)
    throw new Error(`zstd -b${level}: no result in ${JSON.stringify(text.slice(-200))}`);
  const timeAt = (mbPerSecond: string) => sampleSize / 1e6 / Number(mbPerSecond);
  return {
    engine: "zstd CLI -b, memory",
    level: String(level),
    block: `${blockSize / MIB} MiB`,
    size: Number(match[1]),
    compressSeconds: timeAt(match[2]!),
    decompressSeconds: timeAt(match[3]!),
  };
}

function measureZlib(sample: Uint8Array): Row {
  let stream = new Uint8Array();
  const compressSeconds = seconds(() => {
    stream = zlib.deflateSync(sample, { level: 9 });
  });
  const decompressSeconds = seconds(() => {
    zlib.inflateSync(stream);
  });
  return {
    engine: "node:zlib deflate",
    level: "9",
    block: "whole",
    size: stream.length,
    compressSeconds,
    decompressSeconds,
  };
}

function printRows(rows: Row[], sampleSize: number, zlibRow: Row): void {
  const mbps = (seconds: number) => (sampleSize / 1e6 / seconds).toFixed(0);
  const header = [
    "engine",
    "level",
    "block",
    "bytes",
    "ratio",
    "vs zlib-9 size",
    "compress MB/s",
    "vs zlib-9",
    "decompress MB/s",
  ];
  const lines = rows.map((row) => [
    row.engine,
    row.level,
    row.block,
    String(row.size),
    `${(sampleSize / row.size).toFixed(2)}x`,
    `${((row.size / zlibRow.size) * 100).toFixed(1)}%`,
    mbps(row.compressSeconds),
    `${(zlibRow.compressSeconds / row.compressSeconds).toFixed(1)}x faster`,
    mbps(row.decompressSeconds),
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => line[column]!.length)));
  for (const line of [header, ...lines])
    console.log(line.map((cell, column) => cell.padEnd(widths[column]!)).join("  "));
}

/**
 * Sizes on the raw pools the existing tools' vectors were made from (one
 * frame each: they are smaller than a block), against zlib level 9: a second
 * opinion on "no larger than zlib" from data this project did not generate.
 */
function printVectorSizes(levels: number[]): void {
  for (const name of ["pool-1m.raw", "pool-odd.raw"]) {
    const raw = readFileSync(join(ROOT, "tests", "vectors", name));
    const zlibSize = zlib.deflateSync(raw, { level: 9 }).length;
    const sizes = levels.map(
      (level) => `level ${level} ${((compressBlock(raw, level).length / zlibSize) * 100).toFixed(1)}%`,
    );
    console.log(`${name} (${raw.length} bytes): zlib-9 ${zlibSize} bytes; zstd size vs zlib-9: ${sizes.join(", ")}`);
  }
}

async function main(): Promise<void> {
  const argv = await yargs(process.argv.slice(2))
    .scriptName("zstd-engines")
    .usage("$0 [--size MIB] [--repeat N] [--levels L,...]: compare zstd engines and levels on a pool-like sample")
    .option("size", { type: "number", default: 128, describe: "sample size in MiB (64-256 is meaningful)" })
    .option("repeat", { type: "number", default: 3, describe: "rounds of measurements; the best time of each is kept" })
    .option("levels", {
      type: "string",
      default: LEVELS.join(","),
      describe: "zstd levels to measure, comma-separated",
    })
    .strict()
    .parse();
  const sampleSize = argv.size * MIB;
  await wasm.init();
  const sample = new Uint8Array(Buffer.concat([...samplePoolChunks(sampleSize, SEED)]));
  const dir = mkdtempSync(join(tmpdir(), "zstd-engines-"));
  try {
    const samplePath = join(dir, "sample.raw");
    await Bun.write(samplePath, sample);
    const levels = argv.levels.split(",").map(Number);
    console.log(
      `sample: ${argv.size} MiB from lab/sample-pool.ts (seed ${SEED}); MB per CPU second, one thread; best of ${argv.repeat} rounds ` +
        `(each measures every cell once); load average ${loadavg()[0]!.toFixed(1)}`,
    );
    const zlibRow = measureZlib(sample);
    const measured = new Map<string, Row>();
    const keep = (row: Row) => {
      const key = `${row.engine}/${row.level}/${row.block}`;
      measured.set(key, best(measured.get(key), row));
    };
    // Round 0 warms up and is not kept: the first use of fresh memory is slow
    // on a virtual machine, and it would be charged to whichever engine ran first.
    for (let round = 0; round <= argv.repeat; round++) {
      for (const level of levels) {
        const cli = measureCli(samplePath, dir, level);
        if (round > 0) keep(cli);
        for (const blockSize of BLOCK_SIZES) {
          for (const engine of engines) {
            const row = measureEngine(engine, sample, level, blockSize);
            if (round > 0) keep(row);
          }
        }
      }
    }
    for (const level of levels)
      for (const blockSize of BLOCK_SIZES) keep(measureCliInMemory(samplePath, level, blockSize, sampleSize));
    const rows = [zlibRow, ...[...measured.values()].sort((a, b) => Number(a.level) - Number(b.level))];
    printRows(rows, sampleSize, zlibRow);
    console.log(`load average at the end ${loadavg()[0]!.toFixed(1)} on ${availableParallelism()} cores`);
    printVectorSizes(levels);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
