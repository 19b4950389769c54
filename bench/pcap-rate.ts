/**
 * How fast lib/wire/libpcap.ts moves netboot DATA frames over a veth pair, and what
 * each frame costs in CPU. Needs root; run by hand:
 *
 *   bun bench/pcap-rate.ts [--frames N] [--size BYTES]
 *
 * The goal it is measured against: one sled at gigabit line rate with
 * 1024-byte chunks is about 115k frames/s, and the boot server should spend
 * at most 2 CPU-seconds per GiB delivered, about 2 µs per frame in all.
 *
 * 1. One side at a time, in this process: send a burst that the receiving
 *    ring can hold, then drain it; the median of several rounds after a
 *    warm-up round. On veth the kernel delivers a frame into the receiver's
 *    ring inside the sender's system call, so the send figures hold the whole
 *    kernel cost of a frame (a real NIC takes the receiving half off the
 *    server), and the receive figures are what reading costs on top.
 * 2. Both at once: this process sends N frames as fast as it can on an
 *    injection-only handle (as a boot server's session thread does), while a
 *    child process (this file with --receive) takes them with nextInto(), as
 *    a sled emulator would. A capture handle also listens on the sending end,
 *    as the boot server's dispatcher does, to show that outgoing frames never
 *    reach it. The machine has 2 cores shared with other work: the figures
 *    are noisy, and a receiver that falls behind drops frames (reported).
 */

import { parseArgs } from "node:util";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";

/** A full DATA frame: Ethernet header 14 + protocol header 12 + offset 8 + 1024 image bytes. */
const DATA_FRAME_SIZE = 14 + 12 + 8 + 1024;
/** The sled asks for 128 chunks at a time, so a boot server answers in batches of 128. */
const READ_BATCH = 128;
/** Frames per round of part 1: what the default 16 MiB capture ring holds with room to spare. */
const BURST = 40 * READ_BATCH;
/** Rounds of each kind in part 1; the first is a warm-up and not counted. */
const ROUNDS = 6;
const TARGET_FRAMES_PER_SECOND = 115_000;
const TARGET_CPU_US_PER_FRAME = 2;

interface Measurement {
  frames: number;
  seconds: number;
  cpuMicros: number;
}

const { values } = parseArgs({
  options: {
    frames: { type: "string", default: "300000" },
    size: { type: "string", default: String(DATA_FRAME_SIZE) },
    receive: { type: "string" },
  },
});
const frames = Number(values.frames);
const size = Number(values.size);

if (values.receive) {
  receive(values.receive, frames);
} else {
  const raw = canUseRawNetwork();
  if (!raw.ok) {
    console.error(`pcap-rate: ${raw.why}`);
    process.exit(1);
  }
  await withVethPair(async ({ a, b }) => {
    console.log(
      `${size}-byte frames over veth ${a} -> ${b}; goal ${TARGET_FRAMES_PER_SECOND} frames/s, <= ${TARGET_CPU_US_PER_FRAME} CPU µs/frame`,
    );
    console.log("1. one side at a time (median of rounds)");
    oneSideAtATime(a, b);
    console.log(`2. both at once, ${frames} frames, receiver in another process`);
    for (const batched of [false, true]) await bothAtOnce(a, b, batched);
  }, "rpc");
}

function dataFrame(destination: Uint8Array, source: Uint8Array): Uint8Array {
  const frame = new Uint8Array(size);
  frame.set(destination, 0);
  frame.set(source, 6);
  frame.set([0x1d, 0xe0], 12);
  for (let i = 14; i < size; i++) frame[i] = i & 0xff;
  return frame;
}

/** Run `work`, which returns how many frames it moved, and take its wall and CPU time. */
function measure(work: () => number): Measurement {
  const cpu = process.cpuUsage();
  const started = performance.now();
  const done = work();
  const used = process.cpuUsage(cpu);
  return { frames: done, seconds: (performance.now() - started) / 1000, cpuMicros: used.user + used.system };
}

function row(label: string, { frames: count, seconds, cpuMicros }: Measurement): string {
  const rate = String(Math.round(count / seconds)).padStart(8);
  const wall = ((seconds * 1e6) / count).toFixed(2).padStart(6);
  return `   ${label.padEnd(36)} ${rate} frames/s ${wall} µs/frame ${(cpuMicros / count).toFixed(2).padStart(6)} CPU µs/frame`;
}

function median(rounds: Measurement[]): Measurement {
  const sorted = rounds.slice(1).sort((x, y) => x.cpuMicros / x.frames - y.cpuMicros / y.frames);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function oneSideAtATime(a: string, b: string) {
  const sender = PcapLink.open(a, { capture: false });
  const receiver = PcapLink.open(b);
  try {
    const frame = dataFrame(receiver.mac, sender.mac);
    const batch = Array.from({ length: READ_BATCH }, () => frame);
    const buffer = new Uint8Array(2048);
    const results: Record<string, Measurement[]> = { inject: [], injectBatch: [], next: [], nextInto: [] };
    const drain = (read: () => boolean) => {
      let count = 0;
      while (count < BURST && read()) count++;
      return count;
    };
    // Rounds alternate between the two kinds, so both warm up alike.
    for (let round = 0; round < 2 * ROUNDS; round++) {
      const batched = round % 2 === 1;
      results[batched ? "injectBatch" : "inject"]!.push(
        measure(() => {
          if (batched) for (let i = 0; i < BURST; i += READ_BATCH) sender.injectBatch(batch);
          else for (let i = 0; i < BURST; i++) sender.inject(frame);
          return BURST;
        }),
      );
      results[batched ? "nextInto" : "next"]!.push(
        measure(() => (batched ? drain(() => receiver.nextInto(buffer) > 0) : drain(() => receiver.next() !== null))),
      );
    }
    console.log(row("inject(), one call per frame", median(results.inject!)));
    console.log(row(`injectBatch() of ${READ_BATCH}`, median(results.injectBatch!)));
    console.log(row("next(), a new buffer per frame", median(results.next!)));
    console.log(row("nextInto(), one reused buffer", median(results.nextInto!)));
    const moved = Object.values(results).flat();
    const short = moved.filter((measurement) => measurement.frames !== BURST).length;
    const { dropped } = receiver.stats();
    if (short || dropped)
      console.log(`   ${short} rounds moved fewer than ${BURST} frames; ${dropped} dropped by the kernel (ring full)`);
  } finally {
    sender.close();
    receiver.close();
  }
}

async function bothAtOnce(a: string, b: string, batched: boolean) {
  const child = Bun.spawn(
    ["bun", import.meta.path, "--receive", b, "--frames", String(frames), "--size", String(size)],
    {
      stdout: "pipe",
      stderr: "inherit",
    },
  );
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const nextLine = async () => {
    while (!text.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("the receiver ended early");
      text += value;
    }
    const line = text.slice(0, text.indexOf("\n"));
    text = text.slice(line.length + 1);
    return line;
  };
  const receiverMac = Uint8Array.from((await nextLine()).split(":"), (octet) => parseInt(octet, 16));
  const sender = PcapLink.open(a, { capture: false });
  const dispatcher = PcapLink.open(a);
  try {
    const frame = dataFrame(receiverMac, sender.mac);
    const batch = Array.from({ length: READ_BATCH }, () => frame);
    const sent = measure(() => {
      if (batched) for (let i = 0; i < frames; i += READ_BATCH) sender.injectBatch(batch);
      else for (let i = 0; i < frames; i++) sender.inject(frame);
      return frames;
    });
    const received = JSON.parse(await nextLine()) as Measurement & { dropped: number };
    console.log(row(batched ? `injectBatch() of ${READ_BATCH}` : "inject()", sent));
    console.log(row("nextInto() in the other process", received));
    console.log(
      `   received ${received.frames} of ${frames} (${received.dropped} dropped, ring full); ` +
        `the capture handle on the sending link queued ${dispatcher.stats().received} of them`,
    );
  } finally {
    sender.close();
    dispatcher.close();
    await child.exited;
  }
}

/** The child: print its MAC, take frames until `expected` arrived or the link was quiet, report. */
function receive(link: string, expected: number) {
  const quietMs = 500;
  const receiver = PcapLink.open(link, { timeoutMs: quietMs });
  try {
    console.log(Array.from(receiver.mac, (octet) => octet.toString(16).padStart(2, "0")).join(":"));
    const buffer = new Uint8Array(2048);
    // The clocks start with the first frame; give up if the sender never starts.
    for (let waited = 0; receiver.nextInto(buffer) === 0; waited += quietMs) {
      if (waited > 30_000) throw new Error("no frame arrived in 30 s");
    }
    let quiet = false;
    const measured = measure(() => {
      let count = 0;
      while (count < expected - 1) {
        quiet = receiver.nextInto(buffer) === 0;
        if (quiet) break;
        count++;
      }
      return count;
    });
    // A loop that ended on a timeout spent its last quietMs waiting, not receiving.
    const seconds = measured.seconds - (quiet ? quietMs / 1000 : 0);
    const report = {
      frames: measured.frames + 1,
      seconds,
      cpuMicros: measured.cpuMicros,
      dropped: receiver.stats().dropped,
    };
    console.log(JSON.stringify(report));
  } finally {
    receiver.close();
  }
}
