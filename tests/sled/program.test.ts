/**
 * The `sled` program against docs/netboot.md, over a real veth pair made for
 * the test, against a minimal boot server the test plays itself: what it
 * prints, sends and exits with. Expected digests come from python3's hashlib.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, createVethPair, type VethPair } from "@ramdisk-tools/lab/veth.ts";
import { datasetField, decodeFrame, encodeFrame, formatMac, requestedOffsets } from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { startProgram } from "../helpers/common.ts";
import { imageOf, pythonSha256 } from "../helpers/sled.ts";

// Digests come from a python3 process per test; on a busy machine that alone can pass bun's default 5 s.
setDefaultTimeout(30_000);

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(`the sled program over a veth pair${raw.ok ? "" : ` (skipped: ${raw.why})`}`, () => {
  const image = imageOf(MIB, 21);
  const checksum = pythonSha256(image);
  let checksumFile: string;
  let temp: string;
  let pair: VethPair;
  /** bun's default of 5 s is too short for a program that boots sleds on a busy machine. */
  const E2E_TIMEOUT_MS = 120_000;

  beforeAll(async () => {
    temp = mkdtempSync(join(tmpdir(), "rsl-sled-"));
    checksumFile = join(temp, "boot_image_csum");
    writeFileSync(checksumFile, checksum);
    pair = await createVethPair("rsl");
  });
  afterAll(async () => {
    await pair?.remove();
    if (temp) rmSync(temp, { recursive: true, force: true });
  });

  /** What the scripted server saw, by frame type and source MAC. */
  interface Seen {
    hellos: string[];
    reads: string[];
    finished: string[];
  }

  /**
   * Run `bun apps/sled.ts` on end b while this test plays a minimal boot
   * server on end a: an OFFER of the 1 MiB image for every HELLO, one DATA per offset
   * asked (empty at or past the end), until the program exits.
   */
  async function bootAgainstScriptedServer(
    args: string[],
  ): Promise<{ exitCode: number; stdout: string; stderr: string; seen: Seen }> {
    const server = PcapLink.open(pair.a, { timeoutMs: 5 });
    const seen: Seen = { hellos: [], reads: [], finished: [] };
    try {
      const child = startProgram("sled", [pair.b, ...args]);
      const offered = {
        ramdiskSize: 64n * BigInt(MIB),
        imageSize: BigInt(image.length),
        sha256: checksum,
        dataset: datasetField("testing"),
      };
      // A program that outlives its own --timeout by far is hung: stop it so the test fails instead of stalling.
      const deadline = Date.now() + 90_000;
      while (child.process.exitCode === null) {
        if (Date.now() > deadline) child.process.kill();
        for (let frame = server.next(); frame; frame = server.next()) {
          const decoded = decodeFrame(frame);
          if (!decoded.ok) continue;
          const { source, message } = decoded.frame;
          const from = formatMac(source);
          if (message.type === "hello") {
            seen.hellos.push(from);
            server.inject(encodeFrame(source, server.mac, { type: "offer", ...offered }));
          } else if (message.type === "read") {
            seen.reads.push(from);
            for (const offset of requestedOffsets(message)) {
              const start = Number(offset);
              const bytes = image.subarray(Math.min(start, image.length), Math.min(start + 1024, image.length));
              server.inject(encodeFrame(source, server.mac, { type: "data", offset, bytes }));
            }
          } else if (message.type === "finished") {
            seen.finished.push(from);
          }
        }
        await Bun.sleep(0);
      }
      return { ...(await child.result()), seen };
    } finally {
      server.close();
    }
  }

  test(
    "three sleds boot from a 1 MiB image: exit 0, one line each, one FINISHED each",
    async () => {
      const result = await bootAgainstScriptedServer([
        "--checksum-file",
        checksumFile,
        "--mac",
        "02:5e:00:00:10:fe",
        "--sleds",
        "3",
        "--timeout",
        "60",
      ]);
      expect(result.stderr).toBe("");
      expect(result.exitCode).toBe(0);
      const macs = ["02:5e:00:00:10:fe", "02:5e:00:00:10:ff", "02:5e:00:00:11:00"];
      for (const mac of macs) {
        expect(result.stdout).toMatch(
          new RegExp(
            `^${mac} booted: 1048576 bytes, [0-9.]+ MB/s, \\d+ re-asks, \\d+ dropped, first DATA after [0-9.]+ ms, [0-9.]+ s; ` +
              "\\d+ frames received, DATA: 1024 received, 1024 accepted, 0 not in a slot$",
            "m",
          ),
        );
      }
      expect(result.stdout).toContain("3 of 3 sleds booted");
      expect(result.seen.finished.sort()).toEqual(macs);
      expect(new Set(result.seen.reads)).toEqual(new Set(macs));
    },
    E2E_TIMEOUT_MS,
  );

  test(
    "with --drop-rate the sled loses DATA frames, re-asks them, and still boots",
    async () => {
      const result = await bootAgainstScriptedServer([
        "--checksum",
        Buffer.from(checksum).toString("hex"),
        "--drop-rate",
        "0.003",
        "--seed",
        "4",
        "--json",
      ]);
      expect(result.exitCode).toBe(0);
      const report = JSON.parse(result.stdout.trim());
      expect(report.outcome).toBe("booted");
      expect(report.bytes).toBe(MIB);
      expect(report.faults.dropped).toBeGreaterThan(0);
      expect(report.reasked).toBeGreaterThanOrEqual(report.faults.dropped);
      expect(report.dataAccepted).toBe(MIB / 1024);
      expect(report.dataReceived).toBe(report.dataAccepted + report.faults.dropped + report.dataDropped);
      expect(result.seen.finished).toEqual([report.mac]);
    },
    E2E_TIMEOUT_MS,
  );

  test(
    "a sled wanting another checksum never accepts the OFFER, keeps saying HELLO, times out: exit 1",
    async () => {
      const wrong = "11".repeat(32);
      const result = await bootAgainstScriptedServer([
        "--checksum",
        wrong,
        "--mac",
        "02:5e:00:00:20:01",
        "--timeout",
        "5",
      ]);
      expect(result.exitCode).toBe(1);
      expect(result.stdout).toMatch(
        /^02:5e:00:00:20:01 timeout: 0 bytes, .*; no acceptable offer after 2 HELLO \(last offer from [0-9a-f:]+ refused: sha256 [0-9a-f]{64} is not the wanted 1{64}\)$/m,
      );
      expect(result.seen.hellos).toEqual(["02:5e:00:00:20:01", "02:5e:00:00:20:01"]);
      expect(result.seen.reads).toEqual([]);
      expect(result.seen.finished).toEqual([]);
    },
    E2E_TIMEOUT_MS,
  );
});
