/**
 * The floor sender of bench/netboot-send.ts where there is no C compiler:
 * bench/floor-sender.c's loop through bun:ffi (PcapLink.injectBatch, one
 * sendmmsg(2) per CHUNK frames), with the same arguments and output. It
 * pays Bun's call overhead per chunk, so it is a floor a little above the
 * C one.
 *
 *   bun bench/floor-sender.ts LINK FRAMES_FILE FRAME_SIZE CHUNK SECONDS RATE
 */
import { readFileSync } from "node:fs";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";

const [link, framesFile, frameSize, chunk, seconds, rate] = process.argv.slice(2);
const size = Number(frameSize);
const bytes = readFileSync(framesFile!);
const frames = Array.from({ length: Math.floor(bytes.length / size) }, (_, index) =>
  bytes.subarray(index * size, (index + 1) * size),
);
const perCall = Number(chunk);
const chunks = Array.from({ length: frames.length }, (_, first) =>
  Array.from({ length: perCall }, (_, index) => frames[(first + index) % frames.length]!),
);
const frameSeconds = Number(rate) > 0 ? ((size + 24) * 8) / Number(rate) : 0;
const sender = PcapLink.open(link!, { capture: false });
const sleeper = new Int32Array(new SharedArrayBuffer(4));
const cpuBefore = process.cpuUsage();
const start = performance.now() / 1000;
let next = start;
let sent = 0;
while (performance.now() / 1000 - start < Number(seconds)) {
  const wait = next - performance.now() / 1000;
  if (wait > 0) Atomics.wait(sleeper, 0, 0, wait * 1000);
  sender.injectBatch(chunks[sent % frames.length]!);
  sent += perCall;
  next = Math.max(next + perCall * frameSeconds, performance.now() / 1000 - 0.001);
}
const cpu = process.cpuUsage(cpuBefore);
sender.close();
console.log(`${sent} ${((cpu.user + cpu.system) / 1e6).toFixed(3)}`);
