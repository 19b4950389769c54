/**
 * The boot server answers a zlib image's READs while it is still inflating
 * it, and RESETs the sleds of an image whose SHA-256
 * turns out wrong at the end, refusing it from then on.
 *
 * The pool and its SHA-256 come from python3 (random, hashlib), the image
 * from `bun apps/mkimage.ts -z`; python3 writes a copy whose header claims
 * another SHA-256 (byte 40 on, docs/format.md), so its payload inflates
 * cleanly and only the final check fails. The real `bun apps/bootserver.ts
 * --json-log` runs on one end of a veth pair created for the test; on the
 * other, a client scripted here (HELLO every 50 ms, one READ) or the sled
 * emulator `bun apps/sled.ts`. The pool is large enough that inflating it
 * takes a good part of a second, so the order of events says whether the
 * first DATA came before the inflate finished.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import {
  BROADCAST_MAC,
  decodeFrame,
  encodeFrame,
  type Mac,
  parseMac,
  READ_SLOTS,
} from "@ramdisk-tools/protocol/frames.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { programOutput, python } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

setDefaultTimeout(180_000);

const POOL_SIZE = 128 * MIB;
const SLED = parseMac("02:5e:b5:00:0e:01")!;

let dir = "";
let poolSha256 = "";
let wrongSha256 = "";

/** Copy an image, putting another SHA-256 in its header (32 bytes at offset 40); prints the one it put. */
const WRONG_SHA256 = `
import sys
src, dst = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read())
data[40] ^= 0x01
open(dst, "wb").write(data)
print(data[40:72].hex())
`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bootserver-early-test-"));
  poolSha256 = writePool(join(dir, "pool.raw"), POOL_SIZE, 11);
  await programOutput("mkimage", ["-i", "pool.raw", "-o", "pool-z.img", "-N", "early", "-s", "256", "-z"], {
    cwd: dir,
  });
  rmSync(join(dir, "pool.raw"));
  wrongSha256 = python(WRONG_SHA256, join(dir, "pool-z.img"), join(dir, "wrong-z.img")).trim();
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The first frame of `type` for SLED within `ms`, or null. */
async function nextFrame(link: PcapLink, type: string, ms: number) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const bytes = link.next();
    const decoded = bytes && decodeFrame(bytes);
    if (decoded?.ok && decoded.frame.message.type === type && decoded.frame.destination.every((b, i) => b === SLED[i]))
      return decoded.frame;
    if (!bytes) await Bun.sleep(0);
  }
  return null;
}

/** Say HELLO as SLED every 50 ms until an OFFER comes (or `ms` pass); the server's MAC, or null. */
async function helloUntilOffer(link: PcapLink, ms: number): Promise<Mac | null> {
  const hello = encodeFrame(BROADCAST_MAC, SLED, { type: "hello", text: new TextEncoder().encode("early sled") });
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    link.inject(hello);
    const offer = await nextFrame(link, "offer", 50);
    if (offer) return offer.source;
  }
  return null;
}

const raw = canUseRawNetwork();
const network = describe.skipIf(!raw.ok);
if (!raw.ok) console.warn(`bootserver early-serving tests skipped: ${raw.why}`);

network("bootserver serving a zlib image while it inflates it", () => {
  test("the first DATA comes before the inflate is done, and a sled then boots with the right checksum", async () => {
    await withVethPair(async ({ a, b }) => {
      const link = PcapLink.open(b, { timeoutMs: 1 });
      const server = new ServerProcess(["--json-log", "--boots", "2", a, "pool-z.img", "any"], dir);
      try {
        const serverMac = await helloUntilOffer(link, 30_000);
        expect(serverMac).not.toBeNull();
        const slots = new BigUint64Array(READ_SLOTS).map((_, slot) => BigInt(slot * 1024));
        link.inject(encodeFrame(serverMac!, SLED, { type: "read", count: BigInt(READ_SLOTS), slots }));
        const data = await nextFrame(link, "data", 30_000);
        const dataAt = Date.now();
        expect(data?.message).toMatchObject({ type: "data", offset: 0n });
        // A FINISHED ends this session (the first of the two boots); the emulator is the second.
        link.inject(encodeFrame(serverMac!, SLED, { type: "finished" }));

        // The server logs `loaded` once the whole pool is inflated and its SHA-256 checked: after that DATA.
        await server.waitFor(/"event":"loaded"/);
        const [loaded] = server.events("loaded");
        expect(loaded).toMatchObject({ image: "pool-z.img", image_size: POOL_SIZE, sha256: poolSha256 });
        expect(Date.parse(loaded!.time as string)).toBeGreaterThan(dataAt);
        const [listening] = server.events("listening");
        expect(Date.parse(listening!.time as string)).toBeLessThanOrEqual(dataAt);

        const sled = await runSleds(dir, b, ["--checksum", poolSha256, "--json", "--mac", "02:5e:b5:00:0e:02"]);
        expect(sled.reports.map((report) => [report.outcome, report.bytes])).toEqual([["booted", POOL_SIZE]]);
        expect(await server.exited()).toBe(0);
      } finally {
        link.close();
        server.kill();
      }
    }, "rbe");
  });

  test("an image whose SHA-256 fails at the end: its sled is RESET, the server says so once, and offers it no more", async () => {
    await withVethPair(async ({ a, b }) => {
      const server = new ServerProcess(["--json-log", a, "wrong-z.img", "any"], dir);
      try {
        await server.waitFor(/"event":"listening"/);
        // The sled carries the checksum the header claims, so it takes the OFFER and fetches until the check fails.
        const sled = await runSleds(dir, b, ["--checksum", wrongSha256, "--json"]);
        expect(sled.reports.map((report) => report.outcome)).toEqual(["reset"]);
        expect(sled.reports[0].bytes).toBeLessThan(POOL_SIZE);

        const refused = server.events("refused");
        expect(refused.length).toBe(1);
        expect(refused[0]).toMatchObject({ image: "wrong-z.img", sha256: wrongSha256, reset_sleds: 1 });
        expect(refused[0]!.message).toMatch(
          new RegExp(`^refusing wrong-z\\.img from now on, until the file changes: .*SHA-256 .* is ${poolSha256}`),
        );
        expect(server.events("loaded")).toEqual([]);

        // Later HELLOs are not offered it: the server says why instead.
        const link = PcapLink.open(b, { timeoutMs: 1 });
        try {
          expect(await helloUntilOffer(link, 2000)).toBeNull();
        } finally {
          link.close();
        }
        const errors = server.events("error").map((record) => record.message as string);
        expect(errors).toContainEqual(expect.stringMatching(/^cannot offer wrong-z\.img to 02:5e:b5:00:0e:01: /));
        expect(server.process.exitCode).toBeNull();
        server.process.kill("SIGTERM");
        expect(await server.exited()).toBe(143);
        expect(await server.stderr()).toBe("");
      } finally {
        server.kill();
      }
    }, "rbe");
  });
});
