/**
 * The scripted side of bench/netboot-send.ts and bench/netboot-memory.ts:
 * sleds that READ without listening, and the images they are served.
 *
 * Each scripted sled says HELLO, takes its OFFER, then asks for batch after
 * batch (wrapping at the end of the image), keeping a few batches asked
 * ahead of the DATA that has arrived (the link's receive counter,
 * /sys/class/net/LINK/statistics), so the server never waits for a READ and
 * the script never reads a DATA frame.
 */

import { readFileSync } from "node:fs";
import {
  BROADCAST_MAC,
  CHUNK_SIZE,
  decodeFrame,
  encodeFrame,
  type Mac,
  parseMac,
  READ_SLOTS,
  sameMac,
} from "@ramdisk-tools/protocol/frames.ts";
import { consecutiveMacs } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";

/** Batches each scripted sled keeps asked ahead of the DATA that arrived. */
const AHEAD = 3;
/** The scripted sleds' MAC addresses, as many as a row uses at most. */
export const SCRIPTED_MACS = consecutiveMacs(parseMac("02:5e:5e:00:00:01")!, 4);

/** A link's counter from /sys/class/net/LINK/statistics. */
function linkCounter(link: string, name: string): number {
  return Number(readFileSync(`/sys/class/net/${link}/statistics/${name}`, "utf8"));
}

/**
 * Say HELLO as each of `sleds` until each has its OFFER; the server's MAC.
 *
 * @example const server = await helloAll(pair.b, SCRIPTED_MACS.slice(0, 1));
 */
export async function helloAll(link: string, sleds: readonly Mac[]): Promise<Mac> {
  const capture = PcapLink.open(link, { timeoutMs: 1 });
  try {
    let server: Mac | null = null;
    const offered = new Set<number>();
    const deadline = performance.now() + 60_000;
    while (offered.size < sleds.length) {
      if (performance.now() > deadline) throw new Error("no OFFER within 60 s");
      sleds.forEach((sled, index) => {
        if (!offered.has(index))
          capture.inject(encodeFrame(BROADCAST_MAC, sled, { type: "hello", text: new TextEncoder().encode("bench") }));
      });
      const until = performance.now() + 50;
      while (performance.now() < until) {
        const bytes = capture.next();
        if (!bytes) {
          await Bun.sleep(0);
          continue;
        }
        const decoded = decodeFrame(bytes);
        if (!decoded.ok || decoded.frame.message.type !== "offer") continue;
        const index = sleds.findIndex((sled) => sameMac(sled, decoded.frame.destination));
        if (index >= 0) offered.add(index);
        server = decoded.frame.source;
      }
    }
    return server!;
  } finally {
    capture.close();
  }
}

/**
 * Sleds that READ without listening (see the module comment): `sleds`
 * (offered already by `server`) ask batch after batch of an image of
 * `imageSize` bytes until `stop()`; `sample()` says how many frames have
 * arrived so far.
 *
 * @example const client = readWithoutListening(pair.b, server, macs, size); await client.stop();
 */
export function readWithoutListening(link: string, server: Mac, sleds: readonly Mac[], imageSize: number) {
  const sender = PcapLink.open(link, { capture: false });
  const base = linkCounter(link, "rx_packets");
  const next = sleds.map(() => 0);
  let asked = 0;
  let running = true;
  const slots = new BigUint64Array(READ_SLOTS);
  const loop = (async () => {
    for (let turn = 0; running; ) {
      const arrived = linkCounter(link, "rx_packets") - base;
      while (asked - arrived < AHEAD * READ_SLOTS * sleds.length) {
        const index = turn++ % sleds.length;
        const first = next[index]!;
        for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(first + slot * CHUNK_SIZE);
        next[index] = (first + READ_SLOTS * CHUNK_SIZE) % imageSize;
        sender.inject(encodeFrame(server, sleds[index]!, { type: "read", count: BigInt(READ_SLOTS), slots }));
        asked += READ_SLOTS;
      }
      await Bun.sleep(1);
    }
  })();
  return {
    sample: () => linkCounter(link, "rx_packets") - base,
    stop: async () => {
      running = false;
      await loop;
      sender.close();
    },
  };
}
