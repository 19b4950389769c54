/**
 * Fast re-send without a network, on a clock the test moves by hand: the
 * re-send timeout (lib/netboot/resend-timer.ts), what a console line costs a
 * sled (lib/netboot/console-cost.ts), when copies pay and in which order
 * (lib/netboot/copy-policy.ts), and a session that puts them together
 * (lib/netboot/session.ts), driven as a sled would drive it: READs that
 * come one round trip after the answer, later by the console lines the sled
 * printed, or not at all when a frame was lost.
 */

import { describe, expect, test } from "bun:test";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { ImageFormatError } from "@ramdisk-tools/image/format.ts";
import { CHUNK_SIZE, READ_SLOTS, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";
import { ConsoleCost, JITTER_FLOOR_MS, MAX_PROBE_SIZE } from "../../lib/netboot/console-cost.ts";
import { COPY_CHOICES, copiesPay, copyOrder } from "../../lib/netboot/copy-policy.ts";
import type { ImageSource } from "../../lib/netboot/image-source.ts";
import { RESEND_CAP_MS, RESEND_FLOOR_MS, ResendTimeout } from "../../lib/netboot/resend-timer.ts";
import { type ResendClock, SledSession } from "../../lib/netboot/session.ts";
import { SERVER, SLED } from "../helpers/frames.ts";

const BATCH = READ_SLOTS * CHUNK_SIZE;

/** A READ of the batch starting at `first`, every slot filled in order, as the sled's first READ of a batch. */
function batchRead(first: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = BigInt(first + slot * CHUNK_SIZE);
  return { type: "read", count: BigInt(READ_SLOTS), slots };
}

/** The sled's re-ask of one slot of the batch at `first`: that slot in its position, the others zero. */
function reask(first: number, slot: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  slots[slot] = BigInt(first + slot * CHUNK_SIZE);
  return { type: "read", count: 1n, slots };
}

/** The offset a DATA frame carries (after the 14-byte Ethernet and 12-byte protocol headers). */
const offsetOf = (frame: Uint8Array) => Number(new DataView(frame.buffer, frame.byteOffset).getBigUint64(26));

/** A clock the test moves by hand, with timers that fire when it passes them. */
class FakeClock implements ResendClock {
  at = 0;
  readonly #timers: { due: number; action: () => void }[] = [];
  now = () => this.at;
  after = (ms: number, action: () => void) => {
    const timer = { due: this.at + ms, action };
    this.#timers.push(timer);
    return () => {
      const index = this.#timers.indexOf(timer);
      if (index >= 0) this.#timers.splice(index, 1);
    };
  };
  /** Move on `ms`, firing due timers in order. */
  advance(ms: number) {
    const until = this.at + ms;
    for (;;) {
      this.#timers.sort((a, b) => a.due - b.due);
      const next = this.#timers[0];
      if (!next || next.due > until) break;
      this.#timers.shift();
      this.at = next.due;
      next.action();
    }
    this.at = until;
  }
}

describe("ResendTimeout", () => {
  test("learns a sled's round trip and keeps a floor above it, under the cap", () => {
    const timeout = new ResendTimeout();
    expect(timeout.timeoutMs).toBe(RESEND_CAP_MS);
    for (let i = 0; i < 50; i++) timeout.sample(0.4);
    expect(timeout.smoothedMs).toBeCloseTo(0.4, 3);
    expect(timeout.timeoutMs).toBeCloseTo(0.4 + RESEND_FLOOR_MS, 1);
    for (let i = 0; i < 50; i++) timeout.sample(i % 2 ? 18 : 22);
    expect(timeout.timeoutMs).toBeGreaterThan(25);
    expect(timeout.timeoutMs).toBeLessThan(40);
  });

  test("after copies, a READ that is no copy's answer is a sample; one that may be is not (Karn)", () => {
    const timeout = new ResendTimeout();
    for (let i = 0; i < 20; i++) timeout.sample(2);
    // 0.5 ms after the last copy: the copy's answer, says nothing.
    timeout.afterResend(30, 20, 0.5);
    expect(timeout.smoothedMs).toBeCloseTo(2, 3);
    // 25 ms after the last copy, which left 30 ms after the answer: the sled is slow.
    timeout.afterResend(55, 25, 25);
    expect(timeout.smoothedMs!).toBeGreaterThan(2.5);
    // Captured before the copies began: they were spurious, a true round trip.
    const before = timeout.smoothedMs!;
    timeout.afterResend(4, -1, -1);
    expect(timeout.smoothedMs!).toBeLessThan(before);
  });
});

describe("ConsoleCost", () => {
  const plain = (cost: ConsoleCost, samples: number[]) => {
    for (const sample of samples) cost.plain(sample);
  };

  test("the first probe is one copy, its whole round trip a bound; later ones only after lateness, against a median", () => {
    const cost = new ConsoleCost();
    expect(cost.probeSize(false)).toBe(1);
    cost.probe(1.1, 1); // a free console, no plain round trip yet
    expect(cost.perLineMs!).toBeCloseTo(1.1, 6);
    expect(cost.settled).toBe(false);
    expect(cost.probeSize(false)).toBe(0);
    expect(cost.probeSize(true)).toBe(0);
    plain(cost, [1]);
    expect(cost.probeSize(false)).toBe(0);
    expect(cost.probeSize(true)).toBeGreaterThan(1);
  });

  test("a slow console is never probed past the budget, however often", () => {
    const cost = new ConsoleCost();
    plain(cost, [1]);
    cost.probe(1 + 47, cost.probeSize(false));
    for (let i = 0; i < 5 && !cost.settled; i++) {
      expect(cost.probeSize(true)).toBe(1);
      plain(cost, [1]);
      cost.probe(1 + 47, 1);
    }
    expect(cost.settled).toBe(true);
  });

  test("one-copy probes tell a 9600-baud console (47 ms a line); a stall in one does not move the measure", () => {
    const cost = new ConsoleCost();
    plain(cost, [1, 1.2, 0.9, 1.1]);
    cost.probe(1.05 + 46.9, 1);
    expect(cost.perLineMs!).toBeCloseTo(46.9, 0);
    expect(cost.probeSize(true)).toBe(1);
    cost.probe(1.05 + 46.9 + 30, 1); // the host stalled for 30 ms as well
    cost.probe(1.05 + 46.9, 1);
    expect(cost.perLineMs!).toBeCloseTo(46.9, 0);
    expect(cost.upperMs!).toBeLessThan(48.5);
    expect(cost.settled).toBe(true);
    expect(cost.probeSize(true)).toBe(0);
  });

  test("on a free console, probes grow within their budget until a copy is known to cost next to nothing", () => {
    const cost = new ConsoleCost();
    plain(cost, [1, 1.2, 0.9, 1.1, 1.0]);
    const sizes: number[] = [];
    while (!cost.settled) {
      const size = cost.probeSize(true);
      sizes.push(size);
      cost.probe(1.05, size);
    }
    expect(sizes[0]).toBe(1);
    for (let i = 1; i < sizes.length; i++) expect(sizes[i]!).toBeGreaterThanOrEqual(sizes[i - 1]!);
    expect(Math.max(...sizes)).toBe(MAX_PROBE_SIZE);
    expect(cost.perLineMs!).toBeLessThan(0.01);
    expect(cost.upperMs!).toBeLessThan(0.05);
  });

  test("at 115,200 baud (3.9 ms a line) among a round trip's jitter, the estimate lands within a quarter", () => {
    const cost = new ConsoleCost();
    const jittery = [1, 1.6, 0.8, 1.3, 1.1, 0.9, 1.5, 1.2];
    plain(cost, jittery);
    expect(cost.jitterMs).toBeGreaterThan(JITTER_FLOOR_MS);
    let round = 0;
    while (!cost.settled) {
      const size = cost.probeSize(true);
      cost.probe(jittery[round++ % jittery.length]! + 3.9 * size, size);
    }
    expect(cost.perLineMs!).toBeGreaterThan(3.9 * 0.75);
    expect(cost.perLineMs!).toBeLessThan(3.9 * 1.25);
    expect(cost.upperMs!).toBeGreaterThanOrEqual(cost.perLineMs!);
  });
});

describe("copy policy", () => {
  test("copies pay on a fast console, at 115,200 baud early in the wait, never for a batch at 9600", () => {
    expect(copiesPay(128, 0.01, 0.01, 990, 1)).toBe(true);
    expect(copiesPay(128, 3.9, 3.9, 990, 1)).toBe(true);
    expect(copiesPay(128, 3.9, 3.9, 400, 1)).toBe(false);
    expect(copiesPay(128, 47, 47, 990, 1)).toBe(false);
    // A re-ask's answer of one frame is cheap to copy even at 9600.
    expect(copiesPay(1, 47, 47, 990, 1)).toBe(true);
  });

  test("slots lost before come first, then from the last back", () => {
    const losses = new Float64Array(READ_SLOTS);
    const slots = Array.from({ length: READ_SLOTS }, (_, slot) => slot);
    expect(copyOrder(slots, losses).slice(0, 3)).toEqual([127, 126, 125]);
    losses[10] = 2;
    losses[40] = 1;
    expect(copyOrder(slots, losses).slice(0, 4)).toEqual([10, 40, 127, 126]);
  });
});

describe("SledSession fast re-send", () => {
  const image = new Uint8Array(16 * MIB).map((_, index) => index * 7);

  function session(resend = true) {
    const clock = new FakeClock();
    /** Each send: its frames' offsets and the clock when it went out. */
    const sent: { at: number; offsets: number[] }[] = [];
    const sledSession = new SledSession(
      SLED,
      SERVER,
      (frames) => sent.push({ at: clock.at, offsets: frames.map(offsetOf) }),
      undefined,
      { resend, clock },
    );
    sledSession.serve(image);
    let first = 0;
    /** Answer the READ of the next batch, captured now. */
    const read = () => {
      sledSession.answer(batchRead(first), 0, clock.at);
      first += BATCH;
      return first - BATCH;
    };
    const copies = () => sledSession.counters.get("resentFrames");
    const choice = () => COPY_CHOICES[sledSession.counters.get("copyChoice")];
    return { clock, sent, sledSession, read, copies, choice };
  }

  test("a clean boot: every frame once, plus one probe copy placed before its batch's last frame", () => {
    const { clock, sent, read, copies, sledSession } = session();
    for (let batch = 0; batch < 20; batch++) {
      read();
      clock.advance(1);
    }
    sledSession.end(); // FINISHED
    clock.advance(10_000);
    expect(copies()).toBe(1);
    expect(sledSession.counters.get("probeFrames")).toBe(1);
    const probed = sent.find((send) => send.offsets.length === READ_SLOTS + 1)!;
    const first = probed.offsets[0]!;
    expect(probed.offsets.at(-2)).toBe(first);
    expect(probed.offsets.at(-1)).toBe(first + 127 * CHUNK_SIZE);
    expect(sent.filter((send) => send.offsets.length !== READ_SLOTS)).toEqual([probed]);
    expect(sledSession.counters.get("resends")).toBe(0);
  });

  test("before a console's cost is measured, a late READ draws no copies: the sled's re-ask is the answer", () => {
    const { clock, sent, read, copies, choice, sledSession } = session();
    read(); // carries the first probe, and is lost
    expect(sent[0]!.offsets.length).toBe(READ_SLOTS + 1);
    clock.advance(10_000);
    expect(sent.length).toBe(1);
    expect(copies()).toBe(1);
    expect(sledSession.counters.get("resends")).toBe(1);
    expect(choice()).toBe("learning");
  });

  test("at 4 ms a line, copies go out about a line apart from the last slot back, and stop at the READ", () => {
    const { clock, sent, read, copies, choice, sledSession } = session();
    read(); // carries the one-copy probe: the sled prints a line before it takes the last frame
    expect(sent.at(-1)!.offsets.length).toBe(READ_SLOTS + 1);
    clock.advance(1 + 4);
    read();
    clock.advance(1);
    const lossy = read();
    // Against no plain round trip, the probe's whole round trip counts: the cost is overstated, never under.
    expect(sledSession.counters.get("consoleLineMs")).toBeCloseTo(5, 1);
    const before = sent.length;
    clock.advance(50);
    const rounds = sent.slice(before);
    expect(choice()).toBe("on");
    // The timeout, a status line and two lines more (a READ that was only late draws no copy), then one a line.
    expect(rounds.length).toBeGreaterThanOrEqual(5);
    expect(rounds.length).toBeLessThanOrEqual(9);
    expect(rounds.flatMap((send) => send.offsets)).toEqual(
      rounds.map((_, index) => lossy + (127 - index) * CHUNK_SIZE),
    );
    for (let i = 1; i < rounds.length; i++) expect(rounds[i]!.at - rounds[i - 1]!.at).toBeGreaterThanOrEqual(4);
    read(); // the READ of the next batch: the copy it needed arrived
    const after = copies();
    clock.advance(5); // less than the next answer's timeout
    expect(copies()).toBe(after);
  });

  test("at 47 ms a line (9600 baud) a late batch draws no copies, and the choice says so", () => {
    const { clock, sent, read, copies, choice, sledSession } = session();
    read();
    clock.advance(1 + 47);
    read();
    clock.advance(1);
    const lossy = read();
    expect(sledSession.counters.get("consoleLineMs")).toBeCloseTo(48, 0);
    const before = sent.length;
    clock.advance(900);
    expect(sent.length).toBe(before);
    expect(choice()).toBe("off");
    expect(copies()).toBe(1); // the probe
    // The sled re-asks its missing slot after a second, and is answered.
    sledSession.answer(reask(lossy, 33), 0, clock.at);
    expect(sent.at(-1)!.offsets).toEqual([lossy + 33 * CHUNK_SIZE]);
    expect(sledSession.counters.get("reasked")).toBe(1);
  });

  test("a sled that turns slower than its timeout stops drawing copies within a few batches", () => {
    const { clock, read, sledSession } = session();
    const copies = () => sledSession.counters.get("resentFrames") - sledSession.counters.get("probeFrames");
    for (let batch = 0; batch < 10; batch++) {
      read();
      clock.advance(2);
    }
    for (let batch = 0; batch < 15; batch++) {
      read();
      clock.advance(40);
    }
    const learning = copies();
    for (let batch = 0; batch < 30; batch++) {
      read();
      clock.advance(40);
    }
    expect(copies()).toBe(learning);
  });

  test("--no-resend sends each answer once and no probe", () => {
    const { clock, sent, read, choice } = session(false);
    for (let batch = 0; batch < 10; batch++) {
      read();
      clock.advance(1);
    }
    read();
    clock.advance(10_000);
    expect(sent.map((send) => send.offsets.length)).toEqual(Array(11).fill(READ_SLOTS));
    expect(choice()).toBe("disabled");
  });

  test("a block that fails its check draws a RESET, counted and said once with why", () => {
    const problems: string[] = [];
    const sent: number[] = [];
    const sledSession = new SledSession(SLED, SERVER, (frames) => sent.push(frames.length), undefined, {
      clock: new FakeClock(),
      onProblem: (message) => problems.push(message),
    });
    const damaged: ImageSource = {
      size: 4 * MIB,
      answer: () => {
        throw new ImageFormatError("block 0: checksum mismatch");
      },
      release: () => {},
      until: () => null,
      failed: null,
    };
    sledSession.serve(damaged);
    sledSession.answer(batchRead(0));
    sledSession.answer(batchRead(0));
    expect(sent).toEqual([1, 1]);
    expect(sledSession.counters.get("resets")).toBe(2);
    expect(problems).toEqual(["sent a RESET instead of bytes that failed their check: block 0: checksum mismatch"]);
  });
});
