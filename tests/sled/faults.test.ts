/**
 * The emulator's network models (lib/sled/faults.ts) and its slow sled: first
 * as pure functions of arrival times and seeds, against the arithmetic of a
 * FIFO drained at a fixed rate and the expected share of burst losses; then
 * `bun apps/sled.ts` with each model against a real `bun apps/bootserver.ts`
 * over a veth pair, where every boot must complete and the counters must add
 * up. Today's server recovers from a lost frame only through the sled's 1 s
 * re-ask, so the boots use a small image and a generous timeout.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  datasetField,
  decodeFrame,
  encodeFrame,
  type Message,
  parseMac,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { DataFaults, SwitchPort } from "@ramdisk-tools/sled/faults.ts";
import type { EmulatedSledReport } from "@ramdisk-tools/sled/runner.ts";
import { wireBytes } from "@ramdisk-tools/wire/rate.ts";
import { SledClient } from "../../lib/sled/client.ts";
import { programOutput } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

const SLED = parseMac("02:5e:fa:00:00:01")!;
const SERVER = parseMac("02:5e:fa:00:00:02")!;
/** A DATA frame with 1024 image bytes: 14 + 12 + 8 + 1024 bytes, 1082 bytes of link time. */
const FULL_DATA = encodeFrame(SLED, SERVER, { type: "data", offset: 0n, bytes: new Uint8Array(1024) });

describe("SwitchPort", () => {
  test("a DATA frame takes 1082 bytes of link time: 8.656 us at 1 Gbit/s", () => {
    expect(FULL_DATA.length).toBe(1058);
    expect(wireBytes(FULL_DATA.length)).toBe(1082);
    expect(wireBytes(26)).toBe(60 + 24);
    expect(new SwitchPort(1e9, 65536).offer(FULL_DATA.length, 5)).toBeCloseTo(5 + 0.008656, 9);
  });

  test("128 frames at 10 Gbit/s into a 1 Gbit/s port with 64 KiB of buffer: exactly the frames the arithmetic drops", () => {
    // Frames arrive every 1082 * 8 / 10^10 s (d) and drain every 10 d; with k frames
    // accepted before frame i, the bytes still queued at its arrival are 108.2 * (10k - i),
    // so it fits iff 108.2 * (10k - i) + 1082 <= 65536, i.e. 10k - i <= 595.
    const arrivalMs = (i: number) => ((i * 1082 * 8) / 1e10) * 1000;
    const expected: number[] = [];
    for (let i = 0; i < 128; i++) if (10 * expected.length - i <= 595) expected.push(i);
    // Frames 0..66 fill the buffer, then one frame in ten finds room.
    expect(expected).toEqual([...Array.from({ length: 67 }, (_, i) => i), 75, 85, 95, 105, 115, 125]);

    const port = new SwitchPort(1e9, 64 * 1024);
    const accepted: number[] = [];
    const departures: number[] = [];
    for (let i = 0; i < 128; i++) {
      const leaves = port.offer(FULL_DATA.length, arrivalMs(i));
      if (leaves !== null) {
        accepted.push(i);
        departures.push(leaves);
      }
    }
    expect(accepted).toEqual(expected);
    // Back to back at the port's rate from the first frame's arrival.
    departures.forEach((leaves, n) => {
      expect(leaves).toBeCloseTo((n + 1) * 0.008656, 9);
    });
  });

  test("frames spaced at the port's rate are never dropped and leave one frame time after arriving", () => {
    const port = new SwitchPort(1e9, 64 * 1024);
    const sizes = [60, 1058, 500, 1058, 1502];
    let at = 0;
    for (let i = 0; i < 100_000; i++) {
      const length = sizes[i % sizes.length]!;
      const frameMs = (wireBytes(length) * 8) / 1e6;
      const leaves = port.offer(length, at);
      expect(leaves).not.toBeNull();
      expect(leaves! - at).toBeCloseTo(frameMs, 6);
      at += frameMs;
    }
  });

  test("a queue that drained while the link was quiet takes a whole buffer's burst again", () => {
    const port = new SwitchPort(1e9, 64 * 1024);
    const burst = (startMs: number) => {
      let accepted = 0;
      for (let i = 0; i < 128; i++) if (port.offer(FULL_DATA.length, startMs + i * 0.0001) !== null) accepted++;
      return accepted;
    };
    const first = burst(0);
    expect(first).toBeLessThan(128);
    expect(burst(100)).toBe(first);
  });
});

describe("DataFaults", () => {
  /** Admit `count` DATA frames; returns, per frame, whether it reached the sled. */
  function delivered(faults: DataFaults, count: number): boolean[] {
    const out: boolean[] = [];
    for (let i = 0; i < count; i++) {
      faults.admit(FULL_DATA, i);
      out.push(faults.take(i) !== null);
    }
    return out;
  }

  test("burst loss loses runs of burstLength frames, close to the configured share over many frames", () => {
    const rate = 0.0005;
    const length = 4;
    const frames = 1_000_000;
    const faults = new DataFaults({ burstRate: rate, burstLength: length, seed: 9 });
    const out = delivered(faults, frames);
    const lost = out.filter((ok) => !ok).length;
    expect(faults.counters.burstDropped).toBe(lost);
    expect(faults.counters.dropped).toBe(0);
    // Runs of lost frames are whole events: a multiple of the burst length (two events can adjoin).
    let run = 0;
    for (const ok of [...out, true]) {
      if (!ok) run++;
      else if (run > 0) {
        expect(run % length).toBe(0);
        run = 0;
      }
    }
    // About 500 events: the share is P*N / (1 - P + P*N) = 0.1997%, within 15%.
    const mean = (rate * length) / (1 - rate + rate * length);
    expect(lost / frames).toBeGreaterThan(mean * 0.85);
    expect(lost / frames).toBeLessThan(mean * 1.15);
  });

  test("random loss at 0.5% loses about 0.5%; the same seed loses the same frames, another seed others", () => {
    const out = delivered(new DataFaults({ dropRate: 0.005, seed: 3 }), 400_000);
    const share = out.filter((ok) => !ok).length / out.length;
    expect(share).toBeGreaterThan(0.0045);
    expect(share).toBeLessThan(0.0055);
    expect(delivered(new DataFaults({ dropRate: 0.005, seed: 3 }), 20_000)).toEqual(out.slice(0, 20_000));
    expect(delivered(new DataFaults({ dropRate: 0.005, seed: 4 }), 20_000)).not.toEqual(out.slice(0, 20_000));
  });

  test("sleds seeded 1, 2, 3 (one per emulated sled) do not lose the same frames", () => {
    const patterns = [1, 2, 3].map((seed) =>
      delivered(new DataFaults({ dropRate: 0.01, seed }), 5000)
        .map((ok, i) => (ok ? -1 : i))
        .filter((i) => i >= 0),
    );
    expect(patterns[0]).not.toEqual(patterns[1]);
    expect(patterns[1]).not.toEqual(patterns[2]);
    expect(patterns[0]!.slice(0, 3)).not.toEqual(patterns[1]!.slice(0, 3));
  });

  test("behind a port a frame reaches the sled at its departure time, not before", () => {
    const faults = new DataFaults({ portRate: 1e9 });
    faults.admit(FULL_DATA, 10, 10);
    expect(faults.take(10)).toBeNull();
    expect(faults.nextDue()).toBeCloseTo(10.008656, 9);
    expect(faults.take(10.008)).toBeNull();
    expect(faults.take(10.009)).toBe(FULL_DATA);
    expect(faults.nextDue()).toBe(Number.POSITIVE_INFINITY);
  });

  test("behind a port, a frame the emulator read late is held only for what is left of its queueing time", () => {
    const faults = new DataFaults({ portRate: 1e9 });
    // Received at 10, read at 11: it left the port at 10.008656 and is due at once.
    faults.admit(FULL_DATA, 11, 10);
    expect(faults.take(11)).toBe(FULL_DATA);
  });

  test("a burst of 128 frames read at once behind a 1 Gbit/s port with 64 KiB: the port drops what it cannot queue", () => {
    const faults = new DataFaults({ portRate: 1e9, portBufferBytes: 64 * 1024 });
    for (let i = 0; i < 128; i++) faults.admit(FULL_DATA, 0, 0);
    // All at the same instant: 60 frames of 1082 bytes fit in 65536, the other 68 are dropped.
    expect(faults.counters.portDropped).toBe(68);
    let out = 0;
    for (let now = 0; now <= 1; now += 0.001) while (faults.take(now)) out++;
    expect(out).toBe(60);
  });
});

describe("a slow sled (batchDelayMs)", () => {
  test("waits the delay after a complete batch before its next READ; DATA meanwhile is not taken", () => {
    const checksum = new Uint8Array(32);
    const sent: Message[] = [];
    const sled = new SledClient({
      mac: SLED,
      checksum,
      batchDelayMs: 20,
      send: (frame) => {
        const decoded = decodeFrame(frame);
        if (decoded.ok) sent.push(decoded.frame.message);
      },
    });
    const reads = () => sent.filter((message) => message.type === "read");
    sled.start(0);
    sled.receive(
      encodeFrame(SLED, SERVER, {
        type: "offer",
        ramdiskSize: BigInt(4 * MIB),
        imageSize: BigInt(MIB),
        sha256: checksum,
        dataset: datasetField("x"),
      }),
      0,
    );
    const first = reads()[0]!;
    if (first.type !== "read") throw new Error("no READ");
    for (const offset of requestedOffsets(first)) {
      sled.receive(encodeFrame(SLED, SERVER, { type: "data", offset, bytes: new Uint8Array(1024) }), 5);
    }
    expect(sled.nextBatchAt).toBe(25);
    // A copy of an answer arriving while the sled waits finds no slot.
    sled.receive(encodeFrame(SLED, SERVER, { type: "data", offset: 0n, bytes: new Uint8Array(1024) }), 10);
    sled.tick(24.9);
    expect(reads()).toHaveLength(1);
    sled.tick(25);
    expect(reads()).toHaveLength(2);
    expect(sled.nextBatchAt).toBeNull();
    const report = sled.report(25);
    expect(report.dataAccepted).toBe(128);
    expect(report.dataDropped).toBe(1);
  });
});

// Today's server loses a second per damaged batch; an image of 32 batches keeps that under a minute or so.
const IMAGE_SIZE = 4 * MIB;
const IMAGE_FRAMES = IMAGE_SIZE / 1024;
/** Seconds a boot may take: generous, for a server that stalls a second per lost frame on a busy machine. */
const BOOT_TIMEOUT_S = 240;
setDefaultTimeout((BOOT_TIMEOUT_S + 60) * 1000);

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(
  `each network model against the boot server over veth${raw.ok ? "" : ` (skipped: ${raw.why})`}`,
  () => {
    let dir: string;
    let sha256: string;

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "sled-faults-test-"));
      sha256 = writePool(join(dir, "a.raw"), IMAGE_SIZE, 5);
      await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "8"], { cwd: dir });
    });
    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** Boot one emulated sled with `model` from a bootserver; its report once the server has exited 0. */
    async function bootWith(model: string[]): Promise<EmulatedSledReport> {
      return await withVethPair(async ({ a, b }) => {
        const server = new ServerProcess(["--boots", "1", a, "a.img", "any"], dir);
        try {
          await server.waitFor(/^serving on /);
          const sled = await runSleds(dir, b, ["--checksum", sha256, "--json", ...model], BOOT_TIMEOUT_S);
          expect(sled.stderr).toBe("");
          expect(sled.exitCode).toBe(0);
          expect(await server.exited()).toBe(0);
          expect(sled.reports).toHaveLength(1);
          const report = sled.reports[0] as EmulatedSledReport;
          expect(report.outcome).toBe("booted");
          expect(report.bytes).toBe(IMAGE_SIZE);
          expect(report.dataAccepted).toBe(IMAGE_FRAMES);
          return report;
        } finally {
          server.kill();
        }
      }, "rsf");
    }

    /** DATA frames the models and the sled account for; the rest of what arrived is still queued in the port. */
    function accountedFor(report: EmulatedSledReport): number {
      const { faults } = report;
      return report.dataAccepted + report.dataDropped + faults.dropped + faults.burstDropped + faults.portDropped;
    }

    test("burst loss (--burst-rate 0.002 --burst-length 4): boots, every lost frame sent again", async () => {
      const report = await bootWith(["--burst-rate", "0.002", "--burst-length", "4", "--seed", "2"]);
      expect(report.faults.burstDropped).toBeGreaterThan(0);
      expect(report.faults.burstDropped % 4).toBe(0);
      // Each lost frame came again, whether the server re-sent it on its own or the sled re-asked it.
      expect(report.dataReceived).toBeGreaterThanOrEqual(report.dataAccepted + report.faults.burstDropped);
      expect(report.dataReceived).toBe(accountedFor(report));
    });

    test("a 1 Gbit/s port with 64 KiB of buffer (--port-rate 1g --port-buffer 65536): boots, the counters add up", async () => {
      const report = await bootWith(["--port-rate", "1g", "--port-buffer", "65536"]);
      expect(report.faults.dropped + report.faults.burstDropped).toBe(0);
      expect(report.dataReceived).toBeGreaterThanOrEqual(report.dataAccepted + report.faults.portDropped);
      // Frames still queued in the modelled port when the sled finished are the only ones not accounted for.
      expect(report.dataReceived).toBeGreaterThanOrEqual(accountedFor(report));
      expect(report.dataReceived - accountedFor(report)).toBeLessThanOrEqual(Math.floor(65536 / 1082));
    });

    test("a slow sled (--batch-delay 20): boots, no frame lost, 20 ms or more per batch", async () => {
      const report = await bootWith(["--batch-delay", "20"]);
      expect(report.dataReceived).toBe(accountedFor(report));
      expect(report.reasked).toBe(0);
      // 32 batches, 31 waits of at least 20 ms between them.
      expect(report.elapsedMs).toBeGreaterThanOrEqual(31 * 20);
    });
  },
);
