/**
 * The boot server's answers, frame by frame, against docs/netboot.md: the
 * real `bun apps/bootserver.ts` on one end of a veth pair created for the
 * test, and on the other a sled played by the test (tests/helpers/netboot.ts
 * ScriptedSled), whose frames are read back by a decoder written from the
 * document (tests/helpers/frames.ts): the OFFER, scattered slots, RESETs,
 * malformed frames while an emulated sled boots, an image rebuilt under the
 * server, and a sled pinned to an image.
 */

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { encodeFrame, parseMac } from "@ramdisk-tools/protocol/frames.ts";
import { hex } from "../helpers/common.ts";
import { BROADCAST, dataOf, macText, OTHER, readFrame, SLED, TYPE } from "../helpers/frames.ts";
import {
  linkMac,
  SERVED_POOL_SIZE as POOL_SIZE,
  runSleds,
  ServerProcess,
  servedImages,
  withScriptedSled,
  withServer,
} from "../helpers/netboot.ts";

setDefaultTimeout(90_000);

const TWO_64 = 2n ** 64n;

const images = servedImages();

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver network tests skipped: ${raw.why}`);

network("bootserver replies on a veth pair", () => {
  test("--sled pins an image to a sled", async () => {
    await withVethPair(async ({ a, b }) => {
      await withServer([a, "--sled", `${macText(OTHER)}=b.img`, "a.img", "any"], images.dir, async (server) => {
        await withScriptedSled(b, OTHER, async (sled) => {
          for (let hello = 0; hello < 2; hello++) {
            sled.hello();
            const offer = await sled.expect(TYPE.offer);
            expect(hex(offer.body.subarray(16, 48))).toBe(images.pools.b.sha256);
          }
        });
        expect(await server.waitForLines(/^offering /, 2)).toEqual([
          `offering b.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
          `offering b.img to ${macText(OTHER)}: 2.0 MiB image, 4.0 MiB ramdisk, dataset rpool/ROOT/ramdisk`,
        ]);
      });
    }, "rbs");
  });

  test("answers a READ's scattered slots at exactly their offsets, the end with empty DATA", async () => {
    await withVethPair(async ({ a, b }) => {
      // Without fast re-send: this sled never asks for a next batch, and must see each answer once.
      await withServer(["--no-resend", "--boots", "1", a, "a.img", "any"], images.dir, async (server) => {
        const image = images.pools.a.bytes;
        const size = BigInt(POOL_SIZE);
        await withScriptedSled(b, SLED, async (sled) => {
          sled.hello();
          const offer = await sled.expect(TYPE.offer);
          const body = new DataView(offer.body.buffer);
          expect(offer.len).toBe(176);
          expect(offer.source).toEqual(linkMac(a));
          expect(body.getBigUint64(0)).toBe(4n * BigInt(MIB));
          expect(body.getBigUint64(8)).toBe(size);
          expect(hex(offer.body.subarray(16, 48))).toBe(images.pools.a.sha256);
          const dataset = new Uint8Array(128);
          dataset.set(new TextEncoder().encode("rpool/ROOT/ramdisk"));
          expect(offer.body.subarray(48, 176)).toEqual(dataset);

          const serverMac = offer.source;
          const asked: Record<number, bigint> = {
            3: 5000n,
            40: size - 100n,
            77: size,
            100: TWO_64 - 1n,
            127: 1000n * 1024n,
          };
          sled.send(readFrame(SLED, serverMac, 5n, asked));
          const answers = await sled.collect(1000);
          expect(answers.every((frame) => frame.type === TYPE.data)).toBe(true);
          const byOffset = new Map(answers.map((frame) => [dataOf(frame).offset, dataOf(frame).bytes]));
          expect(answers.length).toBe(5);
          expect([...byOffset.keys()].sort()).toEqual(Object.values(asked).sort());
          expect(byOffset.get(5000n)).toEqual(image.slice(5000, 6024));
          expect(byOffset.get(size - 100n)).toEqual(image.slice(POOL_SIZE - 100));
          expect(byOffset.get(size)!.length).toBe(0);
          expect(byOffset.get(TWO_64 - 1n)!.length).toBe(0);
          expect(byOffset.get(1000n * 1024n)).toEqual(image.slice(1000 * 1024, 1001 * 1024));
          for (const frame of answers) {
            expect(frame.len).toBe(8 + dataOf(frame).bytes.length);
            expect(frame.frameLength).toBeGreaterThanOrEqual(60);
          }

          // Offset 0 is asked for when fewer slots than count are set.
          sled.send(readFrame(SLED, serverMac, 2n, { 9: 4096n }));
          const withZero = await sled.collect(1000);
          expect(withZero.map((frame) => dataOf(frame).offset).sort()).toEqual([0n, 4096n]);
          expect(dataOf(withZero.find((frame) => dataOf(frame).offset === 0n)!).bytes).toEqual(image.slice(0, 1024));

          sled.send(encodeFrame(serverMac, SLED, { type: "finished" }));
        });
        expect(await server.exited()).toBe(0);
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img: `)));
      });
    }, "rbs");
  });

  test("RESETs a READ that no image explains, saying why, and serves only the sleds it was told to", async () => {
    await withVethPair(async ({ a, b }) => {
      await withServer([a, "--allow", macText(OTHER), "a.img", macText(SLED)], images.dir, async (server) => {
        const stranger = parseMac("02:5e:b5:00:00:c0")!;
        await withScriptedSled(b, SLED, async (sled) => {
          // Far past a.img: no sled reading it would ask for this (a READ that fits is served: resume.test.ts).
          sled.send(readFrame(SLED, linkMac(a), 1n, { 0: 1n << 40n }));
          const reset = await sled.expect(TYPE.reset);
          expect(reset.len).toBe(0);
          expect(reset.source).toEqual(linkMac(a));
          expect(reset.frameLength).toBeGreaterThanOrEqual(60);
          await server.waitFor(
            new RegExp(
              `^RESET to ${macText(SLED)}: no record of it, and its READ \\(up to offset ${1n << 40n}\\) fits none of the images served$`,
            ),
          );
          sled.hello();
          await sled.expect(TYPE.offer);
        });
        await withScriptedSled(b, OTHER, async (sled) => {
          sled.hello();
          await sled.expect(TYPE.offer);
        });
        await withScriptedSled(b, stranger, async (sled) => {
          sled.hello();
          sled.send(readFrame(stranger, linkMac(a), 1n, { 0: 4096n }));
          expect(await sled.collect(1500)).toEqual([]);
        });
        await server.waitFor(new RegExp(`^offering a\\.img to ${macText(OTHER)}`));
        expect(server.lines.filter((line) => line.startsWith("HELLO from ")).map((line) => line.split(" ")[2])).toEqual(
          [`${macText(SLED)}:`, `${macText(OTHER)}:`],
        );
      });
    }, "rbs");
  });

  test("ignores malformed frames while a sled boots", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess([a, "a.img", "any"], images.dir);
      try {
        await server.waitFor(/^serving on /);
        const serverMac = linkMac(a);
        const read = readFrame(SLED, serverMac, 1n, { 0: 4096n });
        const wrongMagic = read.slice();
        wrongMagic[15]! ^= 0x55;
        const wrongLen = read.slice();
        new DataView(wrongLen.buffer).setUint32(22, 1024);
        const overLong = read.slice();
        new DataView(overLong.buffer).setUint32(22, 5000);
        const unknownType = read.slice();
        new DataView(unknownType.buffer).setUint32(18, 0x9007);
        const finishedWithBody = encodeFrame(serverMac, SLED, { type: "finished" });
        new DataView(finishedWithBody.buffer).setUint32(22, 2);
        const helloTooLong = encodeFrame(BROADCAST, SLED, { type: "hello", text: new TextEncoder().encode("hi") });
        new DataView(helloTooLong.buffer).setUint32(22, 100);
        // Frames claiming the booting sled's MAC that are not frames of the protocol.
        const variants = [
          wrongMagic,
          wrongLen,
          overLong,
          unknownType,
          finishedWithBody,
          helloTooLong,
          readFrame(SLED, serverMac, 129n, { 0: 4096n }),
          readFrame(SLED, serverMac, 2n ** 63n, { 0: 4096n }),
          read.slice(0, 30),
        ];
        let booted = false;
        const booting = runSleds(images.dir, b, [
          "--checksum",
          images.pools.a.sha256,
          "--mac",
          macText(SLED),
          "--json",
        ]).finally(() => (booted = true));
        let sent = 0;
        await withScriptedSled(b, OTHER, async (noise) => {
          while (!booted) {
            for (const frame of variants) noise.send(frame);
            sent += variants.length;
            await Bun.sleep(2);
          }
          // A well-formed READ of offsets near 2^64 from a sled without a session: a RESET, nothing read.
          noise.send(readFrame(OTHER, serverMac, 3n, { 0: TWO_64 - 1n, 64: TWO_64 - 1024n, 127: 2n ** 63n }));
          await noise.expect(TYPE.reset);
        });
        const sled = await booting;
        expect(sled.exitCode).toBe(0);
        expect(sled.reports[0].outcome).toBe("booted");
        expect(server.lines).toContainEqual(expect.stringMatching(new RegExp(`^${macText(SLED)} finished a\\.img: `)));
        server.process.kill("SIGTERM");
        expect(await server.exited()).toBe(143);
        expect(sent).toBeGreaterThan(100);
        expect(server.lines.at(-1)).toMatch(
          new RegExp(
            `^of \\d+ frames received: ${sent} malformed, 1 answered with RESET \\(each logged with the reason\\)$`,
          ),
        );
      } finally {
        server.kill();
      }
    }, "rbs");
  });

  test("offers the rebuilt image after the file changed, without a restart", async () => {
    await withVethPair(async ({ a, b }) => {
      const served = join(images.dir, "served.img");
      writeFileSync(served, readFileSync(join(images.dir, "a.img")));
      await withServer([a, served, "any"], images.dir, async (server) => {
        await withScriptedSled(b, SLED, async (sled) => {
          sled.hello();
          expect(hex((await sled.expect(TYPE.offer)).body.subarray(16, 48))).toBe(images.pools.a.sha256);
          writeFileSync(`${served}.new`, readFileSync(join(images.dir, "b.img")));
          renameSync(`${served}.new`, served);
          sled.hello();
          expect(hex((await sled.expect(TYPE.offer)).body.subarray(16, 48))).toBe(images.pools.b.sha256);
        });
        expect(await server.waitFor(/^reloaded /)).toBe(
          `reloaded ${served}: the file changed (now sha256 ${images.pools.b.sha256})`,
        );
      });
    }, "rbs");
  });
});
