/**
 * lib/wire/libpcap.ts on a real veth pair: what is captured, what is not, what a
 * frame looks like on arrival, and how failures read. Needs root; skipped
 * with the reason otherwise.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { canUseRawNetwork, createVethPair, type VethPair, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { libpcapVersion, PcapError } from "@ramdisk-tools/wire/libpcap-ffi.ts";
import { commandOutput, runCommand } from "../helpers/common.ts";

const raw = canUseRawNetwork();
const NETBOOT = 0x1de0;
const IPV4 = 0x0800;

/** An Ethernet II frame: destination, source, ethertype, then `payload`. */
function ethernetFrame(
  destination: Uint8Array,
  source: Uint8Array,
  ethertype: number,
  payload: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const frame = new Uint8Array(14 + payload.length);
  frame.set(destination, 0);
  frame.set(source, 6);
  frame[12] = ethertype >> 8;
  frame[13] = ethertype & 0xff;
  frame.set(payload, 14);
  return frame;
}

/** Payload bytes that differ from frame to frame, so a mix-up shows. */
function payload(length: number, seed: number): Uint8Array<ArrayBuffer> {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed * 7 + 1) & 0xff);
}

/** Open handles and close them all afterwards, whatever happens. */
async function withLinks<T>(open: () => PcapLink[], fn: (links: PcapLink[]) => T | Promise<T>): Promise<T> {
  const links: PcapLink[] = [];
  try {
    for (const link of open()) links.push(link);
    return await fn(links);
  } finally {
    for (const link of links) link.close();
  }
}

/** The kernel's own count of frames a link received, independent of libpcap. */
function rxPackets(link: string): number {
  return Number(readFileSync(`/sys/class/net/${link}/statistics/rx_packets`, "utf8"));
}

test.skipIf(!raw.ok)("libpcapVersion names libpcap", () => {
  expect(libpcapVersion()).toMatch(/^libpcap version \d+\.\d+/);
});

describe.skipIf(!raw.ok)(`PcapLink on a veth pair${raw.ok ? "" : ` (skipped: ${raw.why})`}`, () => {
  let pair: VethPair;
  beforeAll(async () => {
    pair = await createVethPair("rpc");
  });
  afterAll(async () => {
    await pair?.remove();
  });

  test("mac is the link's address as ip reports it", async () => {
    const shown = await commandOutput(["ip", "-j", "link", "show", "dev", pair.a]);
    await withLinks(
      () => [PcapLink.open(pair.a)],
      ([a]) => {
        const address = (JSON.parse(shown) as { address: string }[])[0]!.address;
        expect(Buffer.from(a!.mac).toString("hex").match(/../g)!.join(":")).toBe(address);
      },
    );
  });

  test("a 0x1DE0 frame injected on one end arrives byte for byte on the other", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b)],
      ([a, b]) => {
        const sent = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(1036, 1));
        a!.inject(sent);
        expect(b!.next()).toEqual(sent);
        // A view into a larger buffer is sent from its own offset, not the buffer's start.
        const backing = new Uint8Array(2000).fill(0xee);
        const second = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(200, 2));
        backing.set(second, 333);
        a!.inject(backing.subarray(333, 333 + second.length));
        expect(b!.next()).toEqual(second);
      },
    );
  });

  test("each returned frame is a copy that the next capture does not overwrite", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b)],
      ([a, b]) => {
        const frames = [1, 2, 3].map((seed) => ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(100 + seed, seed)));
        for (const frame of frames) a!.inject(frame);
        const received = frames.map(() => b!.next());
        expect(received).toEqual(frames);
      },
    );
  });

  test("frames of another ethertype are not captured (kernel filter)", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b)],
      ([a, b]) => {
        const before = rxPackets(pair.b);
        const ipv4 = ethernetFrame(b!.mac, a!.mac, IPV4, payload(100, 3));
        const netboot = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(100, 4));
        a!.inject(ipv4);
        a!.inject(netboot);
        // Both reached the link, but only the netboot frame reached the capture.
        expect(b!.next()).toEqual(netboot);
        expect(b!.next()).toBeNull();
        expect(rxPackets(pair.b) - before).toBe(2);
        expect(b!.stats().received).toBe(1);
      },
    );
  });

  test("a handle does not capture frames sent out of its own link (direction in)", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.a, { capture: false }), PcapLink.open(pair.b)],
      ([listener, sender, b]) => {
        const outgoing = ethernetFrame(b!.mac, sender!.mac, NETBOOT, payload(1036, 5));
        sender!.inject(outgoing);
        listener!.inject(outgoing);
        expect(b!.next()).toEqual(outgoing);
        expect(b!.next()).toEqual(outgoing);
        expect(listener!.next()).toBeNull();
        // Not even queued: the kernel keeps outgoing frames out of the ring (PACKET_IGNORE_OUTGOING).
        expect(listener!.stats().received).toBe(0);
        // The same handle does capture what comes in.
        const incoming = ethernetFrame(listener!.mac, b!.mac, NETBOOT, payload(60, 6));
        b!.inject(incoming);
        expect(listener!.next()).toEqual(incoming);
      },
    );
  });

  test("a frame shorter than 60 bytes arrives unpadded on veth", async () => {
    // A real NIC pads to 60 bytes (docs/netboot.md); veth hands the frame over as sent,
    // so decoders must be tested with padded frames too, not only with what veth delivers.
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b)],
      ([a, b]) => {
        const finished = ethernetFrame(
          b!.mac,
          a!.mac,
          NETBOOT,
          Uint8Array.of(0x1d, 0xe1, 0x23, 0x45, 0, 0, 0x90, 0x05, 0, 0, 0, 0),
        );
        expect(finished.length).toBe(26);
        a!.inject(finished);
        const received = b!.next();
        expect(received?.length).toBe(26);
        expect(received).toEqual(finished);
      },
    );
  });

  test("an injection-only handle captures nothing", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b, { capture: false }), PcapLink.open(pair.b)],
      ([a, injectOnly, b]) => {
        const frame = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(100, 7));
        a!.inject(frame);
        expect(b!.next()).toEqual(frame); // it did arrive on the link
        expect(injectOnly!.next()).toBeNull();
        expect(injectOnly!.stats().received).toBe(0);
        // and it sends
        const reply = ethernetFrame(a!.mac, injectOnly!.mac, NETBOOT, payload(80, 8));
        injectOnly!.inject(reply);
        expect(a!.next()).toEqual(reply);
      },
    );
  });

  test("next() returns null when nothing arrives within the timeout", async () => {
    await withLinks(
      () => [PcapLink.open(pair.b, { timeoutMs: 20 })],
      ([b]) => {
        expect(b!.next()).toBeNull();
        expect(b!.next()).toBeNull();
      },
    );
  });

  test("nextBatch takes the frames already captured, at most max at a time, in order", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b, { timeoutMs: 20 })],
      ([a, b]) => {
        const frames = [1, 2, 3, 4, 5].map((seed) => ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(64, seed)));
        for (const frame of frames) a!.inject(frame);
        const received: Uint8Array[] = [];
        for (let taken = b!.nextBatch(2, received); taken > 0; taken = b!.nextBatch(2, received)) {
          expect(taken).toBeLessThanOrEqual(2);
        }
        expect(received).toEqual(frames);
        expect(b!.nextBatch(0, received)).toBe(0);
      },
    );
  });

  test("nextInto copies into the caller's buffer, cuts to its length, and returns 0 on timeout", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b, { timeoutMs: 20 })],
      ([a, b]) => {
        const first = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(1044, 11));
        const second = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(30, 12));
        a!.inject(first);
        a!.inject(second);
        const buffer = new Uint8Array(2048).fill(0xaa);
        expect(b!.nextInto(buffer)).toBe(first.length);
        expect(buffer.subarray(0, first.length)).toEqual(first);
        expect(buffer[first.length]).toBe(0xaa); // nothing written past the frame
        const short = new Uint8Array(20);
        expect(b!.nextInto(short)).toBe(20);
        expect(short).toEqual(second.subarray(0, 20));
        expect(b!.nextInto(buffer)).toBe(0);
      },
    );
  });

  test("injectBatch sends every frame in order, more than one sendmmsg call's worth", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a, { capture: false }), PcapLink.open(pair.b)],
      ([a, b]) => {
        // 600 frames of varied sizes: three calls of at most 256. Every third is a view
        // into one shared buffer, to show each frame is sent from its own offset.
        const shared = new Uint8Array(300 * 1024).fill(0xee);
        let offset = 5;
        const expected = Array.from({ length: 600 }, (_, i) =>
          ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(20 + ((i * 37) % 1000), i)),
        );
        const frames = expected.map((frame, i) => {
          if (i % 3 !== 0) return frame;
          shared.set(frame, offset);
          offset += frame.length + 3;
          return shared.subarray(offset - frame.length - 3, offset - 3);
        });
        a!.injectBatch(frames);
        const received: Uint8Array[] = [];
        for (let frame = b!.next(); frame; frame = b!.next()) received.push(frame);
        expect(received.length).toBe(600);
        expect(received).toEqual(expected);
        a!.injectBatch([]);
        expect(b!.next()).toBeNull();
      },
    );
  });

  test("injectBatch checks every frame first, and names the frame the kernel refuses", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a), PcapLink.open(pair.b)],
      ([a, b]) => {
        const good = [1, 2, 3].map((seed) => ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(100, seed)));
        expect(() => a!.injectBatch([...good, new Uint8Array(10)])).toThrow(
          new PcapError(`cannot send a 10-byte frame on ${pair.a}: shorter than the 14-byte Ethernet header`),
        );
        expect(b!.next()).toBeNull(); // nothing went out
        const oversized = ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(1600, 4));
        expect(() => a!.injectBatch([good[0]!, good[1]!, oversized, good[2]!])).toThrow(
          new PcapError(`cannot send frame 3 of 4 (1614 bytes) on ${pair.a}: sendmmsg: Message too long`),
        );
        expect(b!.next()).toEqual(good[0]!);
        expect(b!.next()).toEqual(good[1]!);
        expect(b!.next()).toBeNull();
      },
    );
  });

  test("inject refuses a frame shorter than an Ethernet header, and libpcap's reason for an oversized one", async () => {
    await withLinks(
      () => [PcapLink.open(pair.a)],
      ([a]) => {
        expect(() => a!.inject(new Uint8Array(13))).toThrow(
          new PcapError(`cannot send a 13-byte frame on ${pair.a}: shorter than the 14-byte Ethernet header`),
        );
        const oversized = ethernetFrame(a!.mac, a!.mac, NETBOOT, payload(1600, 9)); // MTU 1500
        expect(() => a!.inject(oversized)).toThrow(PcapError);
        expect(() => a!.inject(oversized)).toThrow(
          `cannot send a 1614-byte frame on ${pair.a}: send: Message too long`,
        );
      },
    );
  });

  test("close() twice is fine, and a closed handle says so", () => {
    const a = PcapLink.open(pair.a);
    a.close();
    a.close();
    expect(() => a.next()).toThrow(new PcapError(`link ${pair.a} is closed`));
    expect(() => a.inject(new Uint8Array(60))).toThrow(PcapError);
  });

  test("a link that goes away: next() and inject() throw PcapError with libpcap's text", async () => {
    const doomed = await createVethPair("rpc");
    try {
      await withLinks(
        () => [PcapLink.open(doomed.a), PcapLink.open(doomed.b)],
        async ([a, b]) => {
          await commandOutput(["ip", "link", "del", doomed.a]);
          expect(() => b!.next()).toThrow(
            new PcapError(`cannot read a frame from ${doomed.b}: The interface disappeared`),
          );
          expect(() => a!.inject(ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(50, 13)))).toThrow(
            new PcapError(`cannot send a 64-byte frame on ${doomed.a}: send: No such device or address`),
          );
        },
      );
    } finally {
      await doomed.remove();
    }
  });

  test("a blocking next() in a worker thread receives frames", async () => {
    const source = `
      import { PcapLink } from ${JSON.stringify(new URL("../../lib/wire/libpcap.ts", import.meta.url).pathname)};
      self.onmessage = ({ data }) => {
        const link = PcapLink.open(data.link, { timeoutMs: 2000 });
        self.postMessage({ ready: true });
        try { self.postMessage({ frame: link.next() }); } finally { link.close(); }
      };`;
    const url = URL.createObjectURL(new Blob([source], { type: "application/typescript" }));
    const worker = new Worker(url);
    const inbox: { ready?: boolean; frame?: Uint8Array | null }[] = [];
    let wake = () => {};
    worker.onmessage = ({ data }) => {
      inbox.push(data);
      wake();
    };
    const nextMessage = async () => {
      while (inbox.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      return inbox.shift()!;
    };
    try {
      worker.postMessage({ link: pair.b });
      expect(await nextMessage()).toEqual({ ready: true });
      await withLinks(
        () => [PcapLink.open(pair.a)],
        ([a]) => a!.inject(ethernetFrame(new Uint8Array(6).fill(0xff), a!.mac, NETBOOT, payload(300, 10))),
      );
      const { frame } = await nextMessage();
      expect(frame?.length).toBe(314);
      expect(frame?.subarray(14)).toEqual(payload(300, 10));
    } finally {
      worker.terminate();
      URL.revokeObjectURL(url);
    }
  });

  test("inject and injectBatch wait for room when the send buffer is full instead of failing", async () => {
    // A slow queueing discipline holds sent frames, so the socket's send buffer fills
    // (the socket is non-blocking underneath); every frame must still go out, in order.
    await withVethPair(async ({ a: aName, b: bName }) => {
      const tc = await runCommand([
        "tc",
        "qdisc",
        "add",
        "dev",
        aName,
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "16kb",
        "limit",
        "4mb",
      ]);
      expect(tc.stderr).toBe("");
      await withLinks(
        () => [PcapLink.open(aName), PcapLink.open(bName)],
        ([a, b]) => {
          const count = 1200;
          const frames = Array.from({ length: count }, (_, i) =>
            ethernetFrame(b!.mac, a!.mac, NETBOOT, payload(1036, i)),
          );
          for (const frame of frames.slice(0, count / 2)) a!.inject(frame);
          a!.injectBatch(frames.slice(count / 2));
          let received = 0;
          for (let frame = b!.next(); frame; frame = b!.next()) {
            expect(frame.subarray(14)).toEqual(payload(1036, received));
            received++;
          }
          expect(received).toBe(count);
        },
      );
    }, "rpc");
  });
});

describe.skipIf(!raw.ok)("createVethPair", () => {
  test("makes two linked ends that are up, without IPv6, and remove() deletes them, twice safely", async () => {
    const pair = await createVethPair("rpc");
    try {
      for (const end of [pair.a, pair.b]) {
        expect(end.length).toBeLessThanOrEqual(15);
        expect(end.startsWith("rpc")).toBe(true);
        expect(readFileSync(`/sys/class/net/${end}/operstate`, "utf8").trim()).toBe("up");
        expect(readFileSync(`/proc/sys/net/ipv6/conf/${end}/disable_ipv6`, "utf8").trim()).toBe("1");
      }
      const shown = JSON.parse(await commandOutput(["ip", "-j", "link", "show", "dev", pair.a])) as {
        link: string;
      }[];
      expect(shown[0]!.link).toBe(pair.b);
    } finally {
      await pair.remove();
      await pair.remove();
    }
    for (const end of [pair.a, pair.b])
      expect((await runCommand(["ip", "link", "show", "dev", end])).exitCode).not.toBe(0);
  });
});

describe.skipIf(!raw.ok)("PcapLink.open failures", () => {
  test("a link that does not exist: PcapError with the link's name and libpcap's text", () => {
    expect(() => PcapLink.open("rpcnosuchlink0")).toThrow(
      new PcapError("cannot open link rpcnosuchlink0: No such device exists"),
    );
  });

  test("a negative timeout is refused before libpcap is asked", () => {
    expect(() => PcapLink.open("lo", { timeoutMs: -1 })).toThrow(PcapError);
  });
});
