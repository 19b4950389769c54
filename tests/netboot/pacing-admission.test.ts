/**
 * The boot server under real network conditions: fast re-send of a
 * batch whose next READ is late, pacing of each sled's DATA, and admission
 * (HELLOs answered without a thread, rate limits, `--max-sleds`, frames from
 * group or zero addresses dropped).
 *
 * First the pieces without a network: the token buckets, rates and wire
 * costs, the dispatcher's admission (the re-send timeout and the copy
 * policy are in tests/netboot/fast-resend.test.ts). Then the real `bun
 * apps/bootserver.ts --json-log` on one end of a veth pair made for the
 * test, with the sled emulator (`bun apps/sled.ts`, which drops DATA at
 * random with --drop-rate) or frames built here on the other end.
 * Assertions are on counts (frames sent, re-sent, re-asked) and on upper
 * bounds of rates, which a loaded machine can only make easier to meet.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { dispatchCounters, FrameDispatcher, type SessionInbox } from "@ramdisk-tools/netboot/dispatch.ts";
import { parseRate, wireBytes } from "@ramdisk-tools/wire/rate.ts";
import { AdmissionLimits, TokenBucket } from "../../lib/netboot/admission.ts";
import { Pacer } from "../../lib/netboot/pacing.ts";
import { SERVER, SLED } from "../helpers/frames.ts";

const wireBits = (length: number) => wireBytes(length) * 8;

import {
  BROADCAST_MAC,
  CHUNK_SIZE,
  encodeFrame,
  isUnicastSource,
  type Mac,
  parseMac,
  READ_SLOTS,
  type ReadRequest,
} from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { rawImageHandle } from "../../lib/netboot/raw-image.ts";
import { programOutput, runProgram } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(180_000);

const hello = (source: Mac) => encodeFrame(BROADCAST_MAC, source, { type: "hello", text: new Uint8Array([104, 105]) });

/** A READ of the batch starting at `first`, every slot filled in order, as the sled's first READ of a batch. */
function batchRead(first: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(first + slot * CHUNK_SIZE);
  return { type: "read", count: BigInt(READ_SLOTS), slots };
}

describe("pacing", () => {
  test("rates parse with decimal suffixes; off and 0 turn pacing off; nonsense is refused", () => {
    expect(parseRate("1g")).toBe(1e9);
    expect(parseRate("200m")).toBe(2e8);
    expect(parseRate("500K")).toBe(5e5);
    expect(parseRate("2.5g")).toBe(2.5e9);
    expect(parseRate("1000")).toBe(1000);
    expect(parseRate("off")).toBeNull();
    expect(parseRate("0")).toBeNull();
    for (const bad of ["fast", "-1g", "1t", ""]) expect(() => parseRate(bad)).toThrow(/is not a rate/);
  });

  test("a frame costs its bytes padded to 60, plus FCS, preamble and gap: gigabit carries about 118 MB/s of DATA", () => {
    expect(wireBits(1058)).toBe((1058 + 24) * 8);
    expect(wireBits(26)).toBe((60 + 24) * 8);
    const imageBytesPerSecond = (1e9 / wireBits(14 + 12 + 8 + 1024)) * 1024;
    expect(imageBytesPerSecond / 1e6).toBeGreaterThan(117);
    expect(imageBytesPerSecond / 1e6).toBeLessThan(119);
  });

  test("spaces a batch out to at least its wire time, in chunks", () => {
    const frame = new Uint8Array(1058);
    const frames = Array(128).fill(frame);
    const pacer = new Pacer(100e6, null);
    const chunks: number[] = [];
    const started = performance.now();
    let waited = 0;
    for (let batch = 0; batch < 4; batch++) waited += pacer.send(frames, (chunk) => chunks.push(chunk.length));
    const elapsed = performance.now() - started;
    // 512 frames of 8656 bits at 100 Mb/s is 44.3 ms; the last chunk goes out at its start, so all but its 42 frames.
    expect(elapsed).toBeGreaterThan((0.9 * ((512 - 42) * wireBits(1058))) / 1e5);
    expect(waited).toBeGreaterThan(0); // how much depends on how long the test itself was kept off the CPU
    expect(chunks).toEqual(Array(4).fill([43, 43, 42]).flat());
    expect(chunks.reduce((a, b) => a + b, 0)).toBe(512);
  });
});

describe("admission", () => {
  test("a token bucket gives its burst, then its rate", () => {
    const bucket = new TokenBucket(3, 10, 0);
    expect([bucket.take(0), bucket.take(0), bucket.take(0), bucket.take(0)]).toEqual([true, true, true, false]);
    expect(bucket.take(50)).toBe(false);
    expect(bucket.take(100)).toBe(true);
  });

  test("HELLOs are limited per MAC and in all, and forgotten MACs leave nothing behind", () => {
    const limits = new AdmissionLimits(0);
    const one = [0, 1, 2, 3, 4].map(() => limits.hello(1, 0));
    expect(one).toEqual([true, true, true, false, false]);
    let answered = 0;
    for (let key = 100; key < 5100; key++) if (limits.hello(key, 0)) answered++;
    expect(answered).toBeLessThan(100);
    expect(limits.tracked).toBe(5001);
    limits.forget(60_000);
    expect(limits.tracked).toBe(0);
  });

  test("a MAC heard before is answered from a pool that a flood of new MACs cannot drain", () => {
    const limits = new AdmissionLimits(0);
    expect(limits.hello(1, 0)).toBe(true);
    let floodAnswered = 0;
    for (let key = 100; key < 10_100; key++) if (limits.hello(key, 1000 + key / 10)) floodAnswered++;
    expect(limits.hello(2, 2000)).toBe(false); // a new sled, crowded out by the flood
    // Four seconds later both say HELLO again, amid the flood, and are answered.
    for (let key = 20_000; key < 21_000; key++) limits.hello(key, 4000);
    expect(limits.hello(1, 4000)).toBe(true);
    expect(limits.hello(2, 4000)).toBe(true);
    expect(floodAnswered).toBeLessThan(1000);
  });

  test("only unicast, non-zero sources are sleds", () => {
    expect(isUnicastSource(SLED)).toBe(true);
    expect(isUnicastSource(BROADCAST_MAC)).toBe(false);
    expect(isUnicastSource(parseMac("01:00:5e:00:00:01")!)).toBe(false);
    expect(isUnicastSource(parseMac("33:33:00:00:00:01")!)).toBe(false);
    expect(isUnicastSource(new Uint8Array(6))).toBe(false);
  });

  function dispatcher() {
    const sent: Uint8Array[] = [];
    const admitted: string[] = [];
    const hellos: Mac[] = [];
    let now = 0;
    const frames = new FrameDispatcher(
      SERVER,
      null,
      {
        send: (frame) => sent.push(frame),
        hello: (sled) => hellos.push(sled),
        admit: (sled) => admitted.push(Buffer.from(sled).toString("hex")),
        finished: () => {},
      },
      dispatchCounters(),
      new AdmissionLimits(0),
      () => now,
    );
    return { frames, sent, admitted, hellos, setNow: (ms: number) => (now = ms) };
  }

  function inbox() {
    const reads: ReadRequest[] = [];
    const served: unknown[] = [];
    const box: SessionInbox = { serve: (bytes) => served.push(bytes), read: (read) => reads.push(read), close() {} };
    return { box, reads, served };
  }

  test("an offered sled's READ asks for admission once, waits, and reaches the session attached to it", () => {
    const { frames, sent, admitted } = dispatcher();
    const offer = encodeFrame(SLED, SERVER, { type: "finished" }); // any frame stands for the OFFER here
    const bytes = rawImageHandle(MIB);
    frames.offer(SLED, offer, bytes);
    expect(sent).toEqual([offer]);
    expect(frames.counters.get("hellosAnswered")).toBe(1);
    const read = (first: number) => encodeFrame(SERVER, SLED, batchRead(first));
    frames.dispatch(read(0));
    frames.dispatch(read(4096));
    expect(admitted.length).toBe(1);
    expect(sent.length).toBe(1); // no RESET for a sled being admitted
    const session = inbox();
    frames.attach(SLED, session.box);
    expect(session.served).toEqual([bytes]);
    // The latest READ waited; the sled re-asks anything else.
    expect(session.reads.map((r) => r.slots[0])).toEqual([4096n]);
    frames.dispatch(read(8192));
    expect(session.reads.length).toBe(2);
    expect(frames.counters.get("admitted")).toBe(1);
  });

  test("a sled turned away is counted once and asks again on its next READ", () => {
    const { frames, admitted } = dispatcher();
    frames.offer(SLED, new Uint8Array(60), rawImageHandle(MIB));
    const read = encodeFrame(SERVER, SLED, batchRead(0));
    frames.dispatch(read);
    frames.refuse(SLED);
    frames.dispatch(read);
    frames.refuse(SLED);
    expect(admitted.length).toBe(2);
    expect(frames.counters.get("turnedAway")).toBe(1);
  });

  test("frames from group or zero sources get nothing, whatever they are", () => {
    const { frames, sent, hellos } = dispatcher();
    for (const source of [BROADCAST_MAC, parseMac("01:00:5e:7f:00:01")!, new Uint8Array(6)]) {
      frames.dispatch(hello(source));
      frames.dispatch(encodeFrame(SERVER, source, batchRead(0)));
    }
    expect(sent).toEqual([]);
    expect(hellos).toEqual([]);
    expect(frames.counters.get("groupSource")).toBe(6);
  });

  test("READs from MACs never offered draw RESETs only up to the rate limit; offers never taken are forgotten", () => {
    const { frames, sent, setNow } = dispatcher();
    for (let i = 0; i < 1000; i++) {
      const source = parseMac(`02:00:00:00:${(i >> 8).toString(16)}:${(i & 255).toString(16)}`)!;
      frames.dispatch(encodeFrame(SERVER, source, batchRead(0)));
    }
    expect(sent.length).toBeLessThan(100);
    expect(frames.counters.get("resets") + frames.counters.get("resetsLimited")).toBe(1000);
    frames.offer(SLED, new Uint8Array(60), rawImageHandle(MIB));
    expect(frames.offeredCount).toBe(1);
    setNow(60_000);
    frames.expire();
    expect(frames.offeredCount).toBe(0);
  });
});

// --- On a veth pair ------------------------------------------------------------

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver network tests skipped: ${raw.why}`);

let dir = "";
let sha256 = "";
let bigSha256 = "";
const IMAGE_SIZE = 4 * MIB;
const BIG_SIZE = 16 * MIB;

beforeAll(async () => {
  if (!raw.ok) return;
  dir = mkdtempSync(join(tmpdir(), "bootserver-network-"));
  sha256 = writePool(join(dir, "a.raw"), IMAGE_SIZE, 21);
  bigSha256 = writePool(join(dir, "big.raw"), BIG_SIZE, 22);
  await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "8"], { cwd: dir });
  await programOutput("mkimage", ["-i", "big.raw", "-o", "big.img", "-N", "big", "-s", "32"], { cwd: dir });
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type LogRecord = { event: string; [field: string]: unknown };

/** The JSON log records a server printed. */
function records(server: ServerProcess): LogRecord[] {
  return server.lines.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as LogRecord);
}

async function withJsonServer<T>(args: string[], fn: (server: ServerProcess) => Promise<T>): Promise<T> {
  const server = new ServerProcess(["--json-log", ...args], dir);
  try {
    await server.waitFor(/"event":"listening"/);
    return await fn(server);
  } finally {
    server.kill();
  }
}

/** The numbers of a server's "finished" and "frames" records. */
function finishedRecords(server: ServerProcess) {
  return records(server).filter((record) => record.event === "finished") as unknown as {
    sled: string;
    data_frames: number;
    resent_frames: number;
    reasked: number;
    paced_seconds: number;
  }[];
}

function framesRecord(server: ServerProcess): Record<string, number> {
  return records(server).find((record) => record.event === "frames") as unknown as Record<string, number>;
}

network("bootserver under loss, pacing and admission, on a veth pair", () => {
  const imageFrames = IMAGE_SIZE / CHUNK_SIZE;

  for (const dropRate of ["0.005", "0.01"]) {
    test(`boots at ${dropRate} DATA loss with fast re-send: the server sends copies, the sled hardly re-asks`, async () => {
      await withVethPair(async ({ a, b }) => {
        await withJsonServer(["--boots", "1", a, "a.img", "any"], async (server) => {
          const sled = await runSleds(dir, b, ["--checksum", sha256, "--drop-rate", dropRate, "--seed", "5", "--json"]);
          expect(sled.exitCode).toBe(0);
          expect(await server.exited()).toBe(0);
          const [report] = sled.reports;
          expect(report.outcome).toBe("booted");
          expect(report.faults.dropped).toBeGreaterThan(0);
          const [finished] = finishedRecords(server);
          expect(finished!.resent_frames).toBeGreaterThan(0);
          // Every frame sent is an answer to a slot asked for (re-asks included) or a copy.
          expect(finished!.data_frames).toBe(imageFrames + finished!.reasked + finished!.resent_frames);
          // Lost DATA is recovered by copies long before the sled's own one-second re-ask, once the server has
          // measured what a copy costs the sled (until then it waits for the re-ask).
          expect(report.reasked).toBeLessThan(report.faults.dropped / 4);
          expect(finished!.data_frames).toBeLessThan(2.5 * imageFrames);
        });
      }, "rns");
    });
  }

  test("the same boot as today's server (--no-resend --rate off --no-admission) shows sled re-asks instead", async () => {
    await withVethPair(async ({ a, b }) => {
      const peer = ["--no-resend", "--rate", "off", "--no-admission"];
      await withJsonServer([...peer, "--boots", "1", a, "a.img", "any"], async (server) => {
        const sled = await runSleds(dir, b, ["--checksum", sha256, "--drop-rate", "0.005", "--seed", "5", "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const [report] = sled.reports;
        expect(report.reasked).toBeGreaterThanOrEqual(report.faults.dropped);
        const [finished] = finishedRecords(server);
        expect(finished!.resent_frames).toBe(0);
        expect(finished!.paced_seconds).toBe(0);
        expect(finished!.reasked).toBe(report.reasked);
      });
    }, "rns");
  });

  test("a sled that takes 20 ms over every batch gets no flood of copies", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer(["--boots", "1", a, "a.img", "any"], async (server) => {
        const sled = await runSleds(dir, b, ["--checksum", sha256, "--delay-rate", "1", "--delay-ms", "20", "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const [finished] = finishedRecords(server);
        // The goal is 1.05x (a benchmark figure); a loaded machine may stall a batch now and then.
        expect(finished!.data_frames).toBeLessThan(1.3 * imageFrames);
      });
    }, "rns");
  });

  test("--rate 100m holds a 16 MiB boot under 1.3 times 100 Mb/s of DATA", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer(["--rate", "100m", "--boots", "1", a, "big.img", "any"], async (server) => {
        const sled = await runSleds(dir, b, ["--checksum", bigSha256, "--json"]);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const [report] = sled.reports;
        const [finished] = finishedRecords(server);
        // Image bytes per second at 100 Mb/s on the wire, 1024 per 1082-byte frame time.
        const paced = (100e6 / wireBits(14 + 12 + 8 + CHUNK_SIZE)) * CHUNK_SIZE;
        expect(report.megabytesPerSecond * 1e6).toBeLessThan(1.3 * paced);
        expect(finished!.paced_seconds).toBeGreaterThan(0);
      });
    }, "rns");
  });

  test("--link-rate 100m holds two sleds together under 1.3 times 100 Mb/s of DATA", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer(
        ["--rate", "off", "--link-rate", "100m", "--boots", "2", a, "a.img", "any"],
        async (server) => {
          const sleds = await runSleds(dir, b, ["--checksum", sha256, "--sleds", "2", "--json"]);
          expect(sleds.exitCode).toBe(0);
          expect(await server.exited()).toBe(0);
          // Both emulated sleds start together; the later one's time covers both transfers.
          const seconds = Math.max(...sleds.reports.map((report) => report.elapsedMs)) / 1000;
          const paced = (100e6 / wireBits(14 + 12 + 8 + CHUNK_SIZE)) * CHUNK_SIZE;
          expect((2 * IMAGE_SIZE) / seconds).toBeLessThan(1.3 * paced);
          expect(finishedRecords(server).every((finished) => finished.paced_seconds > 0)).toBe(true);
        },
      );
    }, "rns");
  });

  test("--max-sleds 1 turns the second sled away, says so, and serves it once the first is done", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer(["--max-sleds", "1", "--boots", "2", a, "a.img", "any"], async (server) => {
        const sleds = await runSleds(dir, b, ["--checksum", sha256, "--sleds", "2", "--json"]);
        expect(sleds.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        expect(sleds.reports.map((report) => report.outcome)).toEqual(["booted", "booted"]);
        const turnedAway = records(server).filter((record) => record.event === "turned-away");
        expect(turnedAway.length).toBe(1);
        expect(turnedAway[0]!.max_sleds).toBe(1);
        expect(sleds.reports.map((report) => report.mac)).toContain(turnedAway[0]!.sled);
        expect(framesRecord(server).turnedAway).toBe(1);
      });
    }, "rns");
  });

  test("frames from group and zero sources get nothing back", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer([a, "a.img", "any"], async (server) => {
        const serverMac = parseMac(readFileSync(`/sys/class/net/${a}/address`, "utf8"))!;
        const link = PcapLink.open(b, { timeoutMs: 20 });
        try {
          const sources = [
            BROADCAST_MAC,
            parseMac("01:00:5e:00:00:fb")!,
            parseMac("33:33:00:00:00:01")!,
            new Uint8Array(6),
          ];
          for (const source of sources) {
            link.inject(hello(source));
            link.inject(encodeFrame(serverMac, source, batchRead(0)));
          }
          const answers: Uint8Array[] = [];
          const deadline = Date.now() + 1500;
          while (Date.now() < deadline) {
            const frame = link.next();
            if (frame && frame[12] === 0x1d && frame[13] === 0xe0) answers.push(frame);
            if (!frame) await Bun.sleep(0);
          }
          expect(answers).toEqual([]);
        } finally {
          link.close();
        }
        server.process.kill("SIGTERM");
        expect(await server.exited()).toBe(143);
        expect(framesRecord(server).groupSource).toBe(8);
        expect(records(server).filter((record) => record.event === "hello")).toEqual([]);
      });
    }, "rns");
  });

  test("5,000 HELLOs from distinct MACs and READs never offered, during two boots: the boots finish, the server stays small", async () => {
    await withVethPair(async ({ a, b }) => {
      await withJsonServer(["--boots", "2", a, "big.img", "any"], async (server) => {
        const pid = server.process.pid;
        const serverMac = parseMac(readFileSync(`/sys/class/net/${a}/address`, "utf8"))!;
        let booted = false;
        const booting = runSleds(dir, b, ["--checksum", bigSha256, "--sleds", "2", "--json"]).finally(
          () => (booted = true),
        );
        const link = PcapLink.open(b, { capture: false });
        let peakThreads = 0;
        let peakRssKiB = 0;
        const sample = () => {
          try {
            const status = readFileSync(`/proc/${pid}/status`, "utf8");
            peakThreads = Math.max(peakThreads, Number(/^Threads:\s+(\d+)/m.exec(status)![1]));
            peakRssKiB = Math.max(peakRssKiB, Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]));
          } catch {
            // The server exited between two samples.
          }
        };
        try {
          const flooder = (i: number) =>
            parseMac(`0a:${[i >> 16, (i >> 8) & 255, i & 255, 1, 2].map((x) => x.toString(16)).join(":")}`)!;
          // At least 5,000 MACs, and on with new ones until the two sleds are done.
          for (let from = 0; from < 5000 || !booted; from += 250) {
            const batch: Uint8Array[] = [];
            for (let i = from; i < from + 250; i++) {
              batch.push(hello(flooder(i)));
              batch.push(encodeFrame(serverMac, flooder(i + 100_000), batchRead(0)));
            }
            link.injectBatch(batch);
            sample();
            await Bun.sleep(5);
          }
          for (let i = 0; i < 20; i++) {
            sample();
            await Bun.sleep(50);
          }
        } finally {
          link.close();
        }
        const sleds = await booting;
        expect(sleds.exitCode).toBe(0);
        expect(sleds.reports.map((report) => report.outcome)).toEqual(["booted", "booted"]);
        expect(await server.exited()).toBe(0);
        expect(peakThreads).toBeGreaterThan(0);
        expect(peakThreads).toBeLessThan(64);
        expect(peakRssKiB).toBeLessThan(400 * 1024);
        const frames = framesRecord(server);
        expect(frames.hellosLimited).toBeGreaterThan(4000);
        expect(frames.resetsLimited).toBeGreaterThan(4000);
        expect(frames.resets).toBeLessThan(frames.resetsLimited! / 4);
        expect(frames.admitted).toBe(2);
        console.log(
          `HELLO flood: server peaked at ${peakThreads} threads and ${Math.round(peakRssKiB / 1024)} MiB resident; ` +
            `sleds booted in ${sleds.reports.map((report) => `${Math.round(report.elapsedMs)} ms`).join(" and ")}; ` +
            `server counted ${JSON.stringify(frames)}`,
        );
      });
    }, "rns");
  });
});

test("bootserver refuses a bad --rate or --max-sleds with status 2 and one line", async () => {
  for (const args of [
    ["--rate", "fast"],
    ["--link-rate", "1t"],
    ["--max-sleds", "0"],
  ]) {
    const result = await runProgram("bootserver", [...args, "lo", "x.img", "any"]);
    expect(result.exitCode).toBe(2);
    const stderr = result.stderr.trim();
    expect(stderr.split("\n").length).toBe(1);
    expect(stderr).toMatch(/^bootserver: --(rate|link-rate|max-sleds)/);
  }
});
