/**
 * The sled's console, as the kernel has it: a line for every DATA frame not
 * in a slot and a status line once a second, printed by the thread that
 * takes frames off the queue, which waits for the serial line. First the
 * emulated client on hand-picked times; then the real bootserver over a
 * veth pair with sleds whose consoles print at 9600, 115,200 and 3 Mbaud
 * and lose frames, where each boot must complete without a RESET and the
 * server must send copies only where they pay.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  CHUNK_SIZE,
  datasetField,
  decodeFrame,
  encodeFrame,
  type Message,
  parseMac,
  READ_SLOTS,
} from "@ramdisk-tools/protocol/frames.ts";
import type { EmulatedSledReport } from "@ramdisk-tools/sled/runner.ts";
import { SledClient } from "../../lib/sled/client.ts";
import { consoleLineMs, DROP_LINE_BYTES, STATUS_INTERVAL_MS, STATUS_LINE_BYTES } from "../../lib/sled/console.ts";
import { programOutput } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

const SLED = parseMac("02:5e:c0:00:00:01")!;
const SERVER = parseMac("02:5e:c0:00:00:02")!;
const data = (offset: number) =>
  encodeFrame(SLED, SERVER, { type: "data", offset: BigInt(offset), bytes: new Uint8Array(CHUNK_SIZE) });

/** A sled at `baud` that has accepted an offer of a 1 MiB image at time 0, and the READs it sent. */
function offeredSled(baud: number) {
  const checksum = new Uint8Array(32);
  const reads: Message[] = [];
  const sled = new SledClient({
    mac: SLED,
    checksum,
    consoleBaud: baud,
    send: (frame) => {
      const decoded = decodeFrame(frame);
      if (decoded.ok && decoded.frame.message.type === "read") reads.push(decoded.frame.message);
    },
  });
  sled.start(0);
  const offer = { type: "offer", ramdiskSize: BigInt(MIB), imageSize: BigInt(MIB), sha256: checksum } as const;
  sled.receive(encodeFrame(SLED, SERVER, { ...offer, dataset: datasetField("x") }), 0);
  return { sled, reads };
}

describe("the emulated console", () => {
  test("a line takes its bytes times 10 bits at the baud rate", () => {
    expect(consoleLineMs(DROP_LINE_BYTES, 9600)).toBeCloseTo(46.875, 6);
    expect(consoleLineMs(DROP_LINE_BYTES, 115_200)).toBeCloseTo(3.90625, 6);
    expect(consoleLineMs(STATUS_LINE_BYTES, 3_000_000)).toBeCloseTo(0.16, 6);
    expect(consoleLineMs(DROP_LINE_BYTES, 0)).toBe(0);
  });

  test("each copy holds up the receive loop for a line: frames wait behind it, and the next READ goes out that late", () => {
    const { sled, reads } = offeredSled(115_200);
    expect(reads).toHaveLength(1);
    for (let slot = 0; slot < READ_SLOTS - 1; slot++) sled.receive(data(slot * CHUNK_SIZE), 1);
    // Two copies of frames it has, then the batch's last frame, all arriving at 1 ms.
    sled.receive(data(0), 1);
    sled.receive(data(CHUNK_SIZE), 1);
    sled.receive(data((READ_SLOTS - 1) * CHUNK_SIZE), 1);
    const line = consoleLineMs(DROP_LINE_BYTES, 115_200);
    sled.tick(1 + 2 * line - 0.01);
    expect(reads).toHaveLength(1);
    expect(sled.nextDueAt).toBeCloseTo(1 + 2 * line, 6);
    sled.tick(1 + 2 * line);
    expect(reads).toHaveLength(2);
    const report = sled.report(10);
    expect(report.consoleLines).toBe(2);
    expect(report.consoleMs).toBeCloseTo(2 * line, 6);
    expect(report.dataDropped).toBe(2);
    expect(report.dataAccepted).toBe(READ_SLOTS);
  });

  test("a status line once a second while receiving holds up the frames behind it too", () => {
    const { sled, reads } = offeredSled(9600);
    sled.tick(STATUS_INTERVAL_MS - 1);
    expect(sled.report(STATUS_INTERVAL_MS).consoleLines).toBe(0);
    sled.tick(STATUS_INTERVAL_MS);
    const status = consoleLineMs(STATUS_LINE_BYTES, 9600);
    for (let slot = 0; slot < READ_SLOTS; slot++) sled.receive(data(slot * CHUNK_SIZE), STATUS_INTERVAL_MS + 1);
    sled.tick(STATUS_INTERVAL_MS + status - 0.01);
    expect(reads).toHaveLength(1);
    sled.tick(STATUS_INTERVAL_MS + status);
    expect(reads).toHaveLength(2);
    const report = sled.report(STATUS_INTERVAL_MS + status);
    expect(report.consoleLines).toBe(1);
    expect(report.consoleMs).toBeCloseTo(status, 6);
  });

  test("a free console counts the lines and holds nothing up", () => {
    const { sled, reads } = offeredSled(0);
    for (let slot = 0; slot < READ_SLOTS; slot++) sled.receive(data(slot * CHUNK_SIZE), 1);
    sled.receive(data(0), 1);
    expect(reads).toHaveLength(2);
    const report = sled.report(1);
    expect(report.consoleLines).toBe(1);
    expect(report.consoleMs).toBe(0);
  });
});

/** A small image, so a boot that leans on the sled's one-second re-ask (at 9600 baud) stays short. */
const IMAGE_SIZE = 2 * MIB;
setDefaultTimeout(240_000);

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(`sleds with a console, over veth${raw.ok ? "" : ` (skipped: ${raw.why})`}`, () => {
  let dir: string;
  let sha256: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sled-console-test-"));
    sha256 = writePool(join(dir, "a.raw"), IMAGE_SIZE, 9);
    await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "4"], { cwd: dir });
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Boot one sled with `model` from a bootserver with --json-log; its report and the server's "finished" record. */
  async function boot(model: string[]) {
    return await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--json-log", "--boots", "1", a, "a.img", "any"], dir);
      try {
        await server.waitFor(/"event":"listening"/);
        const sled = await runSleds(dir, b, ["--checksum", sha256, "--json", ...model], 180);
        expect(sled.exitCode).toBe(0);
        expect(await server.exited()).toBe(0);
        const report = sled.reports[0] as EmulatedSledReport;
        expect(report.outcome).toBe("booted");
        expect(report.resets).toBe(0);
        const finished = server.lines
          .filter((line) => line.includes('"event":"finished"'))
          .map((line) => JSON.parse(line) as Record<string, number | string>)[0]!;
        expect(finished).toBeDefined();
        return { report, finished };
      } finally {
        server.kill();
      }
    }, "rsc");
  }

  test("no loss at 115,200 baud: at most a probe's copy and a stray one, and every line accounted for", async () => {
    const { report, finished } = await boot(["--console-baud", "115200"]);
    expect(report.dataDropped).toBeLessThanOrEqual(3);
    expect(report.consoleLines).toBe(report.dataDropped + Math.floor(report.elapsedMs / STATUS_INTERVAL_MS));
    expect(finished.resent_frames).toBeLessThanOrEqual(3);
    expect(finished.probe_frames).toBeLessThanOrEqual(1);
  });

  test("0.5% loss at 115,200 baud: the server measures the console and sends copies that pay", async () => {
    const { report, finished } = await boot(["--console-baud", "115200", "--drop-rate", "0.005", "--seed", "3"]);
    expect(report.faults.dropped).toBeGreaterThan(0);
    expect(finished.console_line_ms).toBeGreaterThan(1.5);
    expect(finished.console_line_ms).toBeLessThan(20);
    // Copies beyond the probes went out: at 3.9 ms a line they pay early in a wait (the last choice may be
    // either, since a wait that has run on no longer pays).
    expect(["on", "off"]).toContain(String(finished.copy_choice));
    const copies = Number(finished.resent_frames);
    expect(copies).toBeGreaterThan(Number(finished.probe_frames));
    // Each copy the sled printed cost it a line: about half a batch a lost frame, plus probes and strays.
    expect(copies).toBeLessThan(report.faults.dropped * 100 + Number(finished.probe_frames));
    expect(report.consoleMs).toBeGreaterThan(0);
  });

  test("0.5% loss at 3 Mbaud: copies are nearly free, and a lost frame seldom waits for the sled's re-ask", async () => {
    const { report, finished } = await boot(["--console-baud", "3000000", "--drop-rate", "0.005", "--seed", "3"]);
    expect(report.faults.dropped).toBeGreaterThan(0);
    expect(Number(finished.resent_frames)).toBeGreaterThan(Number(finished.probe_frames));
    expect(finished.console_line_ms).toBeLessThan(3);
    // Until the console's cost is measured a loss waits for the re-ask; after that, copies find it.
    expect(report.reasked).toBeLessThan(report.faults.dropped);
  });

  test("0.5% loss at 9600 baud: a copy costs more console time than it saves, so the sled's re-ask is the answer", async () => {
    const { report, finished } = await boot(["--console-baud", "9600", "--drop-rate", "0.005", "--seed", "3"]);
    expect(report.faults.dropped).toBeGreaterThan(0);
    expect(finished.console_line_ms).toBeGreaterThan(30);
    // Nothing but probes, and the odd copy of a re-ask's answer of a frame or two.
    expect(Number(finished.resent_frames)).toBeLessThanOrEqual(Number(finished.probe_frames) + report.reasked);
    expect(report.reasked).toBeGreaterThanOrEqual(report.faults.dropped);
  });
});
