/**
 * Fuzz tests of the emulated sled's input (lib/sled/client.ts): it must take
 * any frame in any phase, count as invalid only what decodeFrame refuses,
 * and boot through hostile frames. The generator, tally and shared checks
 * are tests/helpers/fuzz.ts's, the frame generators
 * tests/helpers/fuzz-frames.ts's.
 */

import { describe, expect, test } from "bun:test";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { decodeFrame, encodeFrame, requestedOffsets } from "@ramdisk-tools/protocol/frames.ts";
import { SledClient, type SledReport } from "../../lib/sled/client.ts";
import { hex } from "../helpers/common.ts";
import { fuzzFile, imageLike, nameField, outcome, pythonJson, Random, scaled, show, Tally } from "../helpers/fuzz.ts";
import { mutateFrame, OFFSET_EDGES, OTHER_MAC, randomFrame, SERVER_MAC, SLED_MAC } from "../helpers/fuzz-frames.ts";

const scratch = fuzzFile();

const COUNTED: (keyof SledReport)[] = ["invalid", "ignored", "dataDropped", "offersRefused", "resets"];

function counted(report: SledReport): number {
  return COUNTED.reduce((sum, key) => sum + (report[key] as number), 0);
}

function offerFrame(imageSize: number, sha256: Uint8Array, source = SERVER_MAC): Uint8Array {
  return encodeFrame(SLED_MAC, source, {
    type: "offer",
    ramdiskSize: BigInt(imageSize),
    imageSize: BigInt(imageSize),
    sha256,
    dataset: nameField("rpool/ROOT/ramdisk"),
  });
}

/**
 * Check everything a sled sends: a frame of ours that decodes, from the
 * sled's MAC, HELLO, READ or FINISHED; a READ asks for exactly `count`
 * offsets, all whole 1024-byte chunks.
 */
function checkSent(tally: Tally, label: string, frame: Uint8Array): void {
  const decoded = decodeFrame(frame);
  if (!decoded.ok) return tally.fail(label, `sled sent a frame that does not decode: ${decoded.reason}`);
  const { source, message } = decoded.frame;
  if (hex(source) !== hex(SLED_MAC)) tally.fail(label, "sled sent from another MAC");
  if (!["hello", "read", "finished"].includes(message.type)) tally.fail(label, `sled sent ${message.type}`);
  if (message.type === "read") {
    const offsets = requestedOffsets(message);
    if (BigInt(offsets.length) !== message.count || offsets.some((offset) => offset % 1024n !== 0n)) {
      tally.fail(label, `sled sent a READ of count ${message.count} asking for ${offsets.join(" ")}`);
    }
  }
}

describe("fuzz: sled emulator input", () => {
  test("any frame in any phase: no exception, and only what decodeFrame refuses counts as invalid", () => {
    const random = new Random(0x51ed0001);
    const tally = new Tally("SledClient.receive");
    const checksum = random.bytes(32);
    for (let run = 0; run < scaled(60); run++) {
      let now = 0;
      const sent: Uint8Array[] = [];
      const sled = new SledClient({
        mac: SLED_MAC,
        checksum,
        send: (frame) => sent.push(frame.slice()),
        timeoutMs: random.chance(0.3) ? 5_000 + random.scaled(60_000) : undefined,
        restartOnReset: random.chance(0.5),
      });
      sled.start(now);
      // Most runs accept an OFFER first, so DATA and RESET reach the transfer state.
      const imageSize = (8 + random.scaled(64)) * 128 * 1024 + (random.chance(0.2) ? random.scaled(1024) : 0);
      if (random.chance(0.8)) sled.receive(offerFrame(imageSize, checksum), now);
      for (let i = 0; i < 200; i++) {
        const label = `run ${run} frame ${i}`;
        let frame: Uint8Array;
        const kind = random.scaled(4);
        if (kind === 0) {
          // DATA for an offset near the current batch, from the server: some fill slots.
          const offset =
            BigInt(random.scaled(Math.ceil(imageSize / 1024) + 256)) * 1024n + (random.chance(0.1) ? 1n : 0n);
          frame = encodeFrame(SLED_MAC, random.chance(0.8) ? SERVER_MAC : OTHER_MAC, {
            type: "data",
            offset: random.chance(0.1) ? random.pick(OFFSET_EDGES) : offset,
            bytes: random.bytes(random.chance(0.05) ? 0 : random.pick([1024, 1468, random.scaled(1469)])),
          });
          if (random.chance(0.3)) frame = mutateFrame(random, frame);
        } else if (kind === 1) {
          frame = mutateFrame(
            random,
            random.chance(0.3)
              ? offerFrame(imageSize, checksum, random.pick([SERVER_MAC, OTHER_MAC]))
              : randomFrame(random),
          );
        } else if (kind === 2) {
          frame = randomFrame(random);
        } else {
          frame = random.bytes(random.scaled(1600));
        }
        const before = sled.report(now);
        const phase = sled.phase;
        tally.cases++;
        const result = outcome(() => sled.receive(frame, now));
        if (!result.ok) {
          tally.fail(label, `receive threw ${result.error} on ${show(frame)} in ${phase}`);
          continue;
        }
        const after = sled.report(now);
        const invalid = !decodeFrame(frame).ok;
        if (invalid) tally.refused++;
        else tally.accepted++;
        if (phase === "done") {
          if (counted(after) !== counted(before)) tally.fail(label, "a done sled counted a frame");
        } else {
          // The hot DATA path and decodeFrame must agree on what is malformed.
          if (after.invalid - before.invalid !== (invalid ? 1 : 0)) {
            tally.fail(
              label,
              `invalid went ${before.invalid} -> ${after.invalid}, decodeFrame says ${invalid ? "malformed" : "well-formed"}: ${show(frame)}`,
            );
          }
          if (counted(after) - counted(before) > 1) tally.fail(label, "one frame counted twice");
        }
        if (random.chance(0.05)) now += random.scaled(5_000);
        const ticked = outcome(() => sled.tick(now));
        if (!ticked.ok) tally.fail(label, `tick threw ${ticked.error}`);
      }
      sent.forEach((frame, i) => checkSent(tally, `run ${run} sent ${i}`, frame));
    }
    tally.report();
  });

  test("a sled boots through hostile frames from other MACs and malformed frames from its server", () => {
    const random = new Random(0x51ed0002);
    const tally = new Tally("SledClient under hostile frames");
    const image = imageLike(random, MIB);
    const checksum = new Uint8Array(new Bun.CryptoHasher("sha256").update(image).digest());
    const wanted = pythonJson(
      scratch(),
      "import hashlib, json, sys; print(json.dumps(hashlib.sha256(bytes.fromhex(json.load(open(sys.argv[1])))).hexdigest()))",
      hex(image),
    );
    expect(wanted).toBe(hex(checksum));
    let hostile = 0;
    for (let run = 0; run < scaled(2); run++) {
      const queue: Uint8Array[] = [];
      const sled = new SledClient({ mac: SLED_MAC, checksum, send: (frame) => queue.push(frame.slice()) });
      let now = 0;
      sled.start(now);
      sled.receive(offerFrame(image.length, checksum), now);
      for (let step = 0; step < 20_000 && sled.phase !== "done"; step++) {
        const frame = queue.shift();
        if (!frame) {
          now += 1_100;
          sled.tick(now);
          continue;
        }
        checkSent(tally, `run ${run} sent`, frame);
        const decoded = decodeFrame(frame);
        if (!decoded.ok || decoded.frame.message.type !== "read") continue;
        for (const offset of requestedOffsets(decoded.frame.message)) {
          // The server of netboot.md: 1024 bytes at the offset, fewer at the end, none past it.
          const at = Number(offset);
          const bytes = at < image.length ? image.subarray(at, at + 1024) : new Uint8Array(0);
          // Noise before each answer: well-formed frames from another MAC, malformed ones from the server.
          for (let n = random.scaled(3); n > 0; n--) {
            const noise = mutateFrame(random, randomFrame(random));
            if (noise.length >= 12)
              noise.set(decodeFrame(noise).ok ? OTHER_MAC : random.pick([SERVER_MAC, OTHER_MAC]), 6);
            hostile++;
            tally.cases++;
            const result = outcome(() => sled.receive(noise, now));
            if (!result.ok) tally.fail(`run ${run}`, `receive threw ${result.error}`);
          }
          tally.cases++;
          sled.receive(encodeFrame(SLED_MAC, SERVER_MAC, { type: "data", offset, bytes }), now);
        }
      }
      const report = sled.report(now);
      if (report.outcome === "booted") tally.accepted++;
      else tally.fail(`run ${run}`, `outcome ${report.outcome}: ${report.detail}`);
    }
    tally.report(`, ${hostile} hostile frames among them`);
  });
});
