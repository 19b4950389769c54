/**
 * How fast the sled emulator absorbs DATA frames. A gigabit boot server sends
 * about 115k DATA frames per second to one sled; the emulator must keep up or
 * it measures itself instead of the server.
 *
 * 1. In memory: emulateSleds on a fake link whose "server" answers every READ
 *    at once from pre-built frames, so the figure is the emulator's own cost
 *    per frame (decode, slot bookkeeping, copy, SHA-256).
 * 2. Over a veth pair (root only): `bun apps/sled.ts` as a process against a
 *    blasting server in a child process of this script that answers each READ
 *    with one sendmmsg batch of pre-built frames. Both share the machine's
 *    cores, so this is a floor for the emulator on a real link.
 *
 *    The emulator's CPU per frame (from /usr/bin/time, less what starting the
 *    program costs) says how many frames a second it could absorb on a core
 *    of its own, whatever the blaster and the other load on the machine do.
 *
 * Usage: bun bench/sled.ts [--mib N] [--sleds N] [--runs N]   (default 64 MiB, 1 sled, 3 runs)
 */

import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  CHUNK_SIZE,
  datasetField,
  decodeFrame,
  encodeFrame,
  formatMac,
  type Mac,
  READ_SLOTS,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { consecutiveMacs, type EmulatedSledReport, emulateSleds, type SledLink } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";

const SERVER_MAC = new Uint8Array([0x02, 0x5e, 0xbe, 0x4c, 0x00, 0x01]);
const FIRST_SLED = new Uint8Array([0x02, 0x5e, 0xbe, 0x4c, 0x10, 0x00]);

function imageWithChecksum(size: number): { image: Uint8Array; checksum: Uint8Array } {
  const image = new Uint8Array(size);
  let state = 0x9e3779b9;
  const words = new Uint32Array(image.buffer);
  for (let i = 0; i < words.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    words[i] = state >>> 0;
  }
  const checksum = new Uint8Array(new Bun.CryptoHasher("sha256").update(image).digest().buffer);
  return { image, checksum };
}

/** Every DATA frame of the image for one sled, built once: frames[offset / 1024], and the empty end frame. */
function dataFrames(image: Uint8Array, sled: Mac): { chunks: Uint8Array[]; end: (offset: bigint) => Uint8Array } {
  const chunks: Uint8Array[] = [];
  for (let offset = 0; offset < image.length; offset += CHUNK_SIZE) {
    const bytes = image.subarray(offset, Math.min(offset + CHUNK_SIZE, image.length));
    chunks.push(encodeFrame(sled, SERVER_MAC, { type: "data", offset: BigInt(offset), bytes }));
  }
  return { chunks, end: (offset) => encodeFrame(sled, SERVER_MAC, { type: "data", offset, bytes: new Uint8Array(0) }) };
}

/** The frames a trivial server answers `frame` with: an OFFER for a HELLO, the DATA asked for by a READ. */
function answers(
  frame: Uint8Array,
  image: Uint8Array,
  checksum: Uint8Array,
  framesFor: (sled: Mac) => ReturnType<typeof dataFrames>,
): Uint8Array[] {
  const decoded = decodeFrame(frame);
  if (!decoded.ok) return [];
  const { source, message } = decoded.frame;
  if (message.type === "hello") {
    const offer = {
      type: "offer" as const,
      ramdiskSize: BigInt(image.length),
      imageSize: BigInt(image.length),
      sha256: checksum,
    };
    return [encodeFrame(source, SERVER_MAC, { ...offer, dataset: datasetField("bench") })];
  }
  if (message.type !== "read") return [];
  const frames = framesFor(source);
  return requestedOffsets(message).map((offset) => frames.chunks[Number(offset) / CHUNK_SIZE] ?? frames.end(offset));
}

function cachedFrames(image: Uint8Array): (sled: Mac) => ReturnType<typeof dataFrames> {
  const cache = new Map<string, ReturnType<typeof dataFrames>>();
  return (sled) => {
    const key = Buffer.from(sled).toString("hex");
    let frames = cache.get(key);
    if (!frames) {
      frames = dataFrames(image, sled);
      cache.set(key, frames);
    }
    return frames;
  };
}

function inMemory(mib: number, sleds: number): void {
  const { image, checksum } = imageWithChecksum(mib * 1024 * 1024);
  const framesFor = cachedFrames(image);
  const macs = consecutiveMacs(FIRST_SLED, sleds);
  for (const mac of macs) framesFor(mac);
  const queue: Uint8Array[] = [];
  let head = 0;
  let delivered = 0;
  const link: SledLink = {
    next() {
      if (head === queue.length) return null;
      delivered++;
      return queue[head++]!;
    },
    inject(frame) {
      if (head === queue.length) {
        queue.length = 0;
        head = 0;
      }
      queue.push(...answers(frame, image, checksum, framesFor));
    },
  };
  const started = performance.now();
  const reports = emulateSleds(link, { macs, checksum, timeoutMs: 600_000 });
  const seconds = (performance.now() - started) / 1000;
  const booted = reports.filter((report) => report.outcome === "booted").length;
  console.log(
    `in memory: ${sleds} sled(s) x ${mib} MiB, ${booted} booted: ${delivered} frames in ${seconds.toFixed(2)} s = ` +
      `${Math.round(delivered / seconds / 1000)}k frames/s, ${((sleds * image.length) / 1e6 / seconds).toFixed(0)} MB/s of image`,
  );
}

/** Child mode: answer HELLO and READ frames on `link` as fast as sendmmsg goes, until killed. */
function blast(linkName: string, mib: number, sleds: number): never {
  const { image, checksum } = imageWithChecksum(mib * 1024 * 1024);
  const framesFor = cachedFrames(image);
  // Built before "ready": building them on the first READ would outlast the sled's one-second re-ask.
  for (const mac of consecutiveMacs(FIRST_SLED, sleds)) framesFor(mac);
  const link = PcapLink.open(linkName, { timeoutMs: 10 });
  console.log("ready");
  for (;;) {
    const frame = link.next();
    if (frame) link.injectBatch(answers(frame, image, checksum, framesFor));
  }
}

/** Run `bun apps/sled.ts` under /usr/bin/time: its JSON reports and the CPU seconds it used. */
function timedSled(
  link: string,
  args: string[],
): { reports: EmulatedSledReport[]; cpuSeconds: number; stderr: string } {
  const times = join(mkdtempSync(join(tmpdir(), "rsl-bench-")), "times");
  try {
    const sled = Bun.spawnSync(
      ["/usr/bin/time", "-o", times, "-f", "%U %S", "bun", join(ROOT, "apps", "sled.ts"), link, "--json", ...args],
      { stderr: "pipe" },
    );
    const [user = 0, system = 0] = readFileSync(times, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number);
    const reports = sled.stdout
      .toString()
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line));
    return { reports, cpuSeconds: user + system, stderr: sled.stderr.toString().trim() };
  } finally {
    rmSync(dirname(times), { recursive: true, force: true });
  }
}

async function overVeth(mib: number, sleds: number, runs: number): Promise<void> {
  const raw = canUseRawNetwork();
  if (!raw.ok) {
    console.log(`over veth: skipped (${raw.why})`);
    return;
  }
  if (!existsSync("/usr/bin/time")) {
    console.log("over veth: skipped (needs /usr/bin/time to measure the emulator's CPU)");
    return;
  }
  const { checksum } = imageWithChecksum(mib * 1024 * 1024);
  const checksumHex = Buffer.from(checksum).toString("hex");
  await withVethPair(async ({ a, b }) => {
    // What starting the program costs, without any frame: a sled that times out at once.
    const startup = timedSled(b, ["--checksum", checksumHex, "--timeout", "0.001"]).cpuSeconds;
    const server = Bun.spawn(["bun", import.meta.path, "--blast", a, "--mib", String(mib), "--sleds", String(sleds)], {
      stdout: "pipe",
      stderr: "inherit",
    });
    try {
      await server.stdout.getReader().read(); // "ready": the server's frames are built and its link is open
      for (let run = 1; run <= runs; run++) {
        const { reports, cpuSeconds, stderr } = timedSled(b, [
          "--checksum",
          checksumHex,
          "--mac",
          formatMac(FIRST_SLED),
          "--sleds",
          String(sleds),
          "--timeout",
          "300",
        ]);
        const frames = reports.reduce((sum, report) => sum + report.batches * READ_SLOTS + report.dataDropped, 0);
        const rates = reports.map(
          (report) =>
            `${report.megabytesPerSecond.toFixed(0)} MB/s (${Math.round((report.megabytesPerSecond * 1e6) / CHUNK_SIZE / 1000)}k frames/s, ${report.reasked} re-asks)`,
        );
        const perFrameUs = ((cpuSeconds - startup) * 1e6) / frames;
        console.log(
          `over veth, run ${run}: ${reports.filter((report) => report.outcome === "booted").length}/${sleds} booted at ${rates.join(", ")}; ` +
            `emulator CPU ${perFrameUs.toFixed(1)} us/frame = ${Math.round(1000 / perFrameUs)}k frames/s per core` +
            (stderr ? `; stderr: ${stderr}` : ""),
        );
      }
      console.log(`over veth: (program start, ${startup.toFixed(2)} s of CPU, not counted per frame)`);
    } finally {
      server.kill();
      await server.exited;
    }
  }, "rsl");
}

const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "64" },
    sleds: { type: "string", default: "1" },
    runs: { type: "string", default: "3" },
    blast: { type: "string" },
  },
});
const mib = Number(values.mib);
if (values.blast) blast(values.blast, mib, Number(values.sleds));
inMemory(mib, Number(values.sleds));
await overVeth(mib, Number(values.sleds), Number(values.runs));
