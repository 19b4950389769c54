/**
 * `bootserver --metrics`: the Prometheus text and JSON it serves, scraped
 * during a real boot of emulated sleds over a veth pair and checked at the
 * end against what the sleds themselves counted; and the formatter's rules
 * (one HELP and TYPE per family, escaped label values) on a snapshot.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { parseListenAddress } from "@ramdisk-tools/cli/listen-address.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { DISPATCH_COUNTERS } from "@ramdisk-tools/netboot/dispatch.ts";
import { type MetricsSnapshot, prometheusText } from "@ramdisk-tools/netboot/metrics.ts";
import { SESSION_COUNTERS } from "../../lib/netboot/session-counters.ts";
import { commandOutput, programOutput } from "../helpers/common.ts";
import { runSleds, ServerProcess, writePool } from "../helpers/netboot.ts";

const POOL_SIZE = 4 * MIB;
const SLEDS = 3;
// Booting on a shared 2-core machine, with lost frames that cost a second each: room, no assertion on time.
const BOOT_TIMEOUT_MS = 120_000;

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Read Prometheus text format strictly: every sample's family has exactly one
 * HELP and one TYPE line before its first sample, and its samples together.
 */
function parsePrometheus(text: string): Sample[] {
  expect(text.endsWith("\n")).toBe(true);
  const samples: Sample[] = [];
  const described = new Map<string, { help: number; type: number }>();
  const finished = new Set<string>();
  let current = "";
  for (const line of text.slice(0, -1).split("\n")) {
    const comment = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (comment) {
      const [, what, name, rest] = comment;
      const seen = described.get(name!) ?? { help: 0, type: 0 };
      if (what === "HELP") seen.help++;
      else {
        expect(["counter", "gauge"]).toContain(rest!);
        seen.type++;
      }
      described.set(name!, seen);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+]+)$/.exec(line);
    expect(sample, `not a sample line: ${line}`).not.toBeNull();
    const [, name, labelText, value] = sample!;
    expect(described.get(name!)).toEqual({ help: 1, type: 1 });
    if (name !== current) {
      expect(finished.has(name!), `${name} samples are not together`).toBe(false);
      finished.add(current);
      current = name!;
    }
    const labels: Record<string, string> = {};
    if (labelText) {
      const pairs = [...labelText.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/g)];
      expect(pairs.map((pair) => pair[0]).join("")).toBe(labelText);
      for (const [, key, escaped] of pairs) {
        labels[key!] = escaped!.replace(/\\(.)/g, (_, letter) => (letter === "n" ? "\n" : letter));
      }
    }
    samples.push({ name: name!, labels, value: Number(value) });
  }
  return samples;
}

/** The one sample of `name` whose labels include `labels`. */
function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (sample) => sample.name === name && Object.entries(labels).every(([key, text]) => sample.labels[key] === text),
  );
  expect(found, `${name} ${JSON.stringify(labels)}`).toHaveLength(1);
  return found[0]!.value;
}

function emptyCounters<Name extends string>(names: readonly Name[]): Record<Name, number> {
  return Object.fromEntries(names.map((name) => [name, 0])) as Record<Name, number>;
}

describe("the formatter", () => {
  test("writes one HELP and TYPE per family, every dispatcher counter, and escapes label values", () => {
    const frames = emptyCounters(DISPATCH_COUNTERS);
    frames.frames = 7;
    frames.helloFrames = 2;
    frames.droppedByCapture = 3;
    const snapshot: MetricsSnapshot = {
      frames,
      sessionsLive: 1,
      sledsTurnedAway: 0,
      images: [
        { image: 'odd "name"\\here\n.img', offers: 2, boots: 1 },
        { image: "b.img", offers: 0, boots: 0 },
      ],
      sleds: [
        {
          sled: "02:00:00:00:00:01",
          state: "transferring",
          image: "b.img",
          counters: {
            ...emptyCounters(SESSION_COUNTERS),
            deliveredBytes: 4096,
            reasked: 1,
            resentFrames: 40,
            probeFrames: 2,
            consoleLineMs: 3.9,
            copyChoice: 1,
          },
        },
        { sled: "02:00:00:00:00:02", state: "waiting", image: null, counters: null },
      ],
    };
    const samples = parsePrometheus(prometheusText(snapshot));
    expect(sampleValue(samples, "bootserver_frames_captured_total")).toBe(7);
    expect(sampleValue(samples, "bootserver_frames_total", { kind: "hello" })).toBe(2);
    expect(sampleValue(samples, "bootserver_capture_dropped_frames_total")).toBe(3);
    expect(sampleValue(samples, "bootserver_image_offers_total", { image: 'odd "name"\\here\n.img' })).toBe(2);
    expect(sampleValue(samples, "bootserver_image_boots_total", { image: "b.img" })).toBe(0);
    expect(sampleValue(samples, "bootserver_sessions_live")).toBe(1);
    const sled = { sled: "02:00:00:00:00:01", image: "b.img" };
    expect(sampleValue(samples, "bootserver_sled_delivered_bytes", sled)).toBe(4096);
    expect(sampleValue(samples, "bootserver_sled_reasked_offsets", sled)).toBe(1);
    // What copies cost this sled's console, and fast re-send's choice (1: on).
    expect(sampleValue(samples, "bootserver_sled_resent_frames", sled)).toBe(40);
    expect(sampleValue(samples, "bootserver_sled_probe_frames", sled)).toBe(2);
    expect(sampleValue(samples, "bootserver_sled_console_line_milliseconds", sled)).toBe(3.9);
    expect(sampleValue(samples, "bootserver_sled_copy_choice", sled)).toBe(1);
    expect(sampleValue(samples, "bootserver_sled_state", { sled: sled.sled, state: "transferring" })).toBe(1);
    expect(sampleValue(samples, "bootserver_sled_state", { sled: sled.sled, state: "finished" })).toBe(0);
    expect(sampleValue(samples, "bootserver_sled_state", { sled: "02:00:00:00:00:02", state: "waiting" })).toBe(1);
    // A sled with no session yet has a state and no transfer figures.
    expect(samples.filter((s) => s.labels.sled === "02:00:00:00:00:02" && s.name !== "bootserver_sled_state")).toEqual(
      [],
    );
    // Every dispatcher counter is published, so the frames add up.
    const dispatched = samples.filter((s) =>
      /^bootserver_(frames|resets|send|capture|offers|hellos|sleds_admitted|sleds_resumed|sleds_turned_away_total)/.test(
        s.name,
      ),
    );
    expect(dispatched).toHaveLength(DISPATCH_COUNTERS.length);
  });

  test("reads ADDR:PORT, IPv6 in brackets, and nothing else", () => {
    expect(parseListenAddress("127.0.0.1:9100")).toEqual({ hostname: "127.0.0.1", port: 9100 });
    expect(parseListenAddress("[::1]:0")).toEqual({ hostname: "::1", port: 0 });
    expect(parseListenAddress("localhost:65535")).toEqual({ hostname: "localhost", port: 65535 });
    for (const bad of ["9100", "127.0.0.1", "127.0.0.1:65536", ":9100", "::1:9100", "a b:1", "127.0.0.1:-1"]) {
      expect(parseListenAddress(bad)).toBeNull();
    }
  });
});

/** The TCP sockets process `pid` listens on, as ADDR:PORT (from ss). */
async function listeningSockets(pid: number): Promise<string[]> {
  return (await commandOutput(["ss", "-Hltnp"]))
    .split("\n")
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => line.trim().split(/\s+/)[3]!);
}

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(`bootserver --metrics over a veth pair${raw.ok ? "" : ` (skipped: ${raw.why})`}`, () => {
  let dir: string;
  let sha256: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "metrics-test-"));
    sha256 = writePool(join(dir, "a.raw"), POOL_SIZE, 5);
    writePool(join(dir, "b.raw"), MIB, 6);
    await programOutput("mkimage", ["-i", "a.raw", "-o", "a.img", "-N", "a", "-s", "16", "-z"], { cwd: dir });
    await programOutput("mkimage", ["-i", "b.raw", "-o", "b.img", "-N", "b", "-s", "16"], { cwd: dir });
  }, 60_000);

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test(
    "scraped during a boot of 3 sleds losing frames, the figures end equal to what the sleds counted",
    async () => {
      await withVethPair(async ({ a, b }) => {
        const server = new ServerProcess(["--metrics", "127.0.0.1:0", a, "a.img", "b.img", "any"], dir);
        try {
          await server.waitFor(/^serving on /);
          const line = await server.waitFor(/metrics on http:/);
          const base = /metrics on (http:\/\/127\.0\.0\.1:(\d+)\/)metrics and \1status$/.exec(line)?.[1];
          expect(base, line).toBeDefined();
          expect(await listeningSockets(server.process.pid)).toEqual([`127.0.0.1:${new URL(base!).port}`]);
          const scrape = async () => {
            const metrics = await fetch(`${base}metrics`);
            expect(metrics.status).toBe(200);
            expect(metrics.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
            const status = await fetch(`${base}status`);
            expect(status.status).toBe(200);
            return { samples: parsePrometheus(await metrics.text()), status: (await status.json()) as MetricsSnapshot };
          };

          const before = await scrape();
          expect(sampleValue(before.samples, "bootserver_frames_captured_total")).toBe(0);
          expect(before.status.images).toEqual([
            { image: "a.img", offers: 0, boots: 0 },
            { image: "b.img", offers: 0, boots: 0 },
          ]);
          expect(before.status.sleds).toEqual([]);

          // Scrape all through the boot (0.3% of DATA lost costs re-sends), so some scrape sees a transfer.
          const sleds = runSleds(dir, b, [
            "--checksum",
            sha256,
            "--json",
            "--sleds",
            String(SLEDS),
            "--drop-rate",
            "0.003",
            "--seed",
            "11",
          ]);
          let booting = true;
          void sleds.finally(() => (booting = false));
          let seenTransferring = 0;
          while (booting) {
            const { status } = await scrape();
            if (status.sleds.some((sled) => sled.state === "transferring")) seenTransferring++;
            await Bun.sleep(100);
          }
          const { exitCode, reports, stderr } = await sleds;
          expect(stderr).toBe("");
          expect(exitCode).toBe(0);
          expect(seenTransferring).toBeGreaterThan(0);

          // The server takes each FINISHED a moment after the sled sent it.
          let end = await scrape();
          for (let tries = 0; tries < 100 && end.status.sleds.some((sled) => sled.state !== "finished"); tries++) {
            await Bun.sleep(100);
            end = await scrape();
          }
          const { samples, status } = end;
          expect(reports).toHaveLength(SLEDS);
          expect(status.sleds.map((sled) => sled.sled).sort()).toEqual(reports.map((report) => report.mac).sort());
          let hellos = 0;
          let reasked = 0;
          let reads = 0;
          for (const report of reports) {
            expect(report.outcome).toBe("booted");
            hellos += report.hellos;
            reasked += report.reasked;
            const sled = status.sleds.find((figures) => figures.sled === report.mac)!;
            expect(sled.state).toBe("finished");
            expect(sled.image).toBe("a.img");
            expect(sled.counters!.deliveredBytes).toBe(report.bytes);
            expect(report.bytes).toBe(POOL_SIZE);
            expect(sled.counters!.reasked).toBe(report.reasked);
            expect(sled.counters!.sentBytes).toBeGreaterThanOrEqual(report.bytes);
            expect(sled.counters!.reads).toBeGreaterThanOrEqual(report.batches);
            reads += sled.counters!.reads;
            const labels = { sled: report.mac, image: "a.img" };
            expect(sampleValue(samples, "bootserver_sled_delivered_bytes", labels)).toBe(report.bytes);
            expect(sampleValue(samples, "bootserver_sled_reasked_offsets", labels)).toBe(report.reasked);
            expect(sampleValue(samples, "bootserver_sled_state", { sled: report.mac, state: "finished" })).toBe(1);
          }
          // The faults were real: the sleds lost frames, and the server sent them again, on its own (fast
          // re-send) or when the sleds asked again.
          const resent = status.sleds.reduce((sum, sled) => sum + sled.counters!.resentFrames, 0);
          expect(resent + reasked).toBeGreaterThan(0);

          const { frames } = status;
          expect(frames.helloFrames).toBe(hellos);
          expect(frames.finishedFrames).toBe(SLEDS);
          expect(frames.readFrames).toBe(reads + frames.resets);
          const ignored = frames.malformed + frames.ownFrames + frames.notForUs + frames.notAllowed + frames.unexpected;
          expect(frames.frames).toBe(frames.helloFrames + frames.readFrames + frames.finishedFrames + ignored);
          expect(sampleValue(samples, "bootserver_frames_total", { kind: "hello" })).toBe(hellos);
          expect(sampleValue(samples, "bootserver_frames_total", { kind: "finished" })).toBe(SLEDS);
          expect(sampleValue(samples, "bootserver_frames_captured_total")).toBe(frames.frames);
          expect(sampleValue(samples, "bootserver_capture_dropped_frames_total")).toBe(frames.droppedByCapture);

          // Each HELLO drew one OFFER, the images in turn; every sled booted a.img.
          const [imageA, imageB] = status.images;
          expect(imageA!.offers + imageB!.offers).toBe(hellos);
          expect(imageA!.boots).toBe(SLEDS);
          expect(imageB!.boots).toBe(0);
          expect(sampleValue(samples, "bootserver_image_boots_total", { image: "a.img" })).toBe(SLEDS);
          expect(sampleValue(samples, "bootserver_image_offers_total", { image: "b.img" })).toBe(imageB!.offers);
          expect(status.sessionsLive).toBe(0);
          expect(sampleValue(samples, "bootserver_sessions_live")).toBe(0);
          expect(sampleValue(samples, "bootserver_sleds_turned_away")).toBe(0);

          expect((await fetch(`${base}other`)).status).toBe(404);
          expect((await fetch(`${base}metrics`, { method: "POST" })).status).toBe(405);
          server.process.kill("SIGTERM");
          expect(await server.exited()).toBe(143);
          // Stopped with the server.
          expect(await fetch(`${base}metrics`).catch(() => "refused")).toBe("refused");
        } finally {
          server.kill();
        }
      }, "rmt");
    },
    BOOT_TIMEOUT_MS,
  );

  test(
    "without --metrics nothing listens; a malformed address is a usage error, a port in use a failure, each one line",
    async () => {
      await withVethPair(async ({ a }) => {
        const quiet = new ServerProcess([a, "a.img", "any"], dir);
        try {
          await quiet.waitFor(/^serving on /);
          expect(await listeningSockets(quiet.process.pid)).toEqual([]);
        } finally {
          quiet.kill();
        }
        const malformed = new ServerProcess(["--metrics", "9100", a, "a.img", "any"], dir);
        expect(await malformed.exited()).toBe(2);
        expect(await malformed.stderr()).toBe(
          'bootserver: --metrics "9100" is not ADDR:PORT, like 127.0.0.1:9100 or [::1]:9100\n',
        );
        const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
        try {
          const clash = new ServerProcess(["--metrics", `127.0.0.1:${taken.port}`, a, "a.img", "any"], dir);
          expect(await clash.exited()).toBe(1);
          const stderr = await clash.stderr();
          expect(stderr).toMatch(
            new RegExp(`^bootserver: cannot serve metrics on 127\\.0\\.0\\.1:${taken.port}: .+\\n$`),
          );
        } finally {
          taken.stop(true);
        }
      }, "rmu");
    },
    BOOT_TIMEOUT_MS,
  );
});
