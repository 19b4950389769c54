/**
 * Many emulated sleds on one link, as a lab would point a rack at a boot
 * server: one capture handle, each frame handed to the sled whose MAC it is
 * addressed to (the filter a sled's NIC applies), each sled with its own
 * client (lib/sled/client.ts) and its own network models (lib/sled/faults.ts),
 * and one report per sled.
 *
 * One thread does it all, so the loop is what keeps up with a gigabit stream
 * of DATA frames: without network models each frame is read into one reused
 * buffer and handed straight to its sled. With models a frame may be held (in
 * a switch port's queue, for reordering), so it is copied, and the loop waits
 * on the link no longer than until the first held frame or slow sled's next
 * READ is due, so they are not late by a whole poll.
 */

import { FrameType, formatMac, MAC_SIZE, type Mac, peekFrameType } from "@ramdisk-tools/protocol/frames.ts";
import { SledClient, type SledReport } from "./client.ts";
import { DataFaults, type FaultCounters, type FaultOptions, NO_FAULTS } from "./faults.ts";

/** What emulateSleds needs of a link; a PcapLink fits. */
export interface SledLink {
  /** The next incoming frame, or null after `timeoutMs` (default: the link's read timeout). */
  next(timeoutMs?: number): Uint8Array | null;
  /** Like next(), into `buffer`, returning the length (0 for none): no allocation per frame. */
  nextInto?(buffer: Uint8Array, timeoutMs?: number): number;
  /**
   * When the frame returned last was received, on the runner's clock: the
   * kernel's receive stamp for a PcapLink. Without it a frame counts as
   * arriving when it is read.
   */
  receivedAt?(): number;
  inject(frame: Uint8Array): void;
}

export interface EmulationOptions {
  /** One sled per MAC, all at once. */
  macs: Mac[];
  checksum: Uint8Array;
  timeoutMs: number;
  /** Each sled gets its own DataFaults, seeded with `seed + its index`. */
  faults?: FaultOptions;
  /** Every sled waits this long after each complete batch before its next READ (a slow sled). */
  batchDelayMs?: number;
  restartOnReset?: boolean;
  greeting?: string;
  /** Every sled's serial console speed in baud; 0 or absent: printing is free (lib/sled/client.ts). */
  consoleBaud?: number;
  log?(line: string): void;
  /** Called once per sled when it is done, in the order they finish. */
  onDone?(report: EmulatedSledReport): void;
  /** Milliseconds; performance.now by default. */
  clock?(): number;
}

/** A sled's report, what reached it on the wire, and what the network models did to its DATA frames. */
export interface EmulatedSledReport extends SledReport {
  /** Frames addressed to this sled, as they came off the wire (before any model). */
  framesReceived: number;
  /** Of those, DATA frames until the sled was done: what the server sent it (less what the capture buffer lost). */
  dataReceived: number;
  faults: FaultCounters;
}

/** Larger than any netboot frame (at most 14 + 12 + 1476 bytes). */
const RECEIVE_BUFFER_BYTES = 2048;

/** How often sessions are ticked while frames keep coming (re-asks and HELLOs need no finer grain). */
const TICK_MS = 5;

interface EmulatedSled {
  client: SledClient;
  faults: DataFaults | null;
  framesReceived: number;
  dataReceived: number;
  reported: boolean;
}

/**
 * Boot one sled per MAC on `link` until every one is done (booted or failed);
 * returns their reports in the order of `macs`. Blocks the thread: the loop
 * polls the link (each `next()` waits at most the link's read timeout).
 *
 * @example
 * const reports = emulateSleds(PcapLink.open("eth1", { timeoutMs: 10 }), { macs: [mac], checksum, timeoutMs: 120_000 });
 * const allBooted = reports.every((report) => report.outcome === "booted");
 */
export function emulateSleds(link: SledLink, options: EmulationOptions): EmulatedSledReport[] {
  const clock = options.clock ?? (() => performance.now());
  const send = (frame: Uint8Array) => link.inject(frame);
  const sleds: EmulatedSled[] = [];
  const byMac = new Map<number, EmulatedSled>();
  const faults = options.faults !== undefined && !DataFaults.isNone(options.faults) ? options.faults : null;
  for (const [index, mac] of options.macs.entries()) {
    if (byMac.has(macKey(mac))) throw new Error(`MAC ${formatMac(mac)} is given to two sleds`);
    const client = new SledClient({
      mac,
      checksum: options.checksum,
      send,
      timeoutMs: options.timeoutMs,
      batchDelayMs: options.batchDelayMs,
      restartOnReset: options.restartOnReset,
      greeting: options.greeting,
      consoleBaud: options.consoleBaud,
      log: options.log,
    });
    const sled: EmulatedSled = {
      client,
      faults: faults ? new DataFaults({ ...faults, seed: (faults.seed ?? 1) + index }) : null,
      framesReceived: 0,
      dataReceived: 0,
      reported: false,
    };
    byMac.set(macKey(mac), sled);
    sleds.push(sled);
  }
  const reportOf = (sled: EmulatedSled, now: number): EmulatedSledReport => ({
    ...sled.client.report(now),
    framesReceived: sled.framesReceived,
    dataReceived: sled.dataReceived,
    faults: { ...(sled.faults?.counters ?? NO_FAULTS) },
  });
  /** The earliest time a sled has a held frame, frames queued behind its console or a delayed READ due. */
  const dueOf = (sled: EmulatedSled) =>
    Math.min(sled.faults?.nextDue() ?? Number.POSITIVE_INFINITY, sled.client.nextDueAt ?? Number.POSITIVE_INFINITY);

  const started = clock();
  for (const sled of sleds) sled.client.start(started);
  // Without faults no frame outlives its delivery, so one receive buffer serves them all.
  const buffer = new Uint8Array(RECEIVE_BUFFER_BYTES);
  const nextFrame =
    link.nextInto && !faults
      ? (timeoutMs?: number) => {
          const length = link.nextInto!(buffer, timeoutMs);
          return length > 0 ? buffer.subarray(0, length) : null;
        }
      : (timeoutMs?: number) => link.next(timeoutMs);
  let remaining = sleds.length;
  let lastTick = started;
  let soonest = Number.POSITIVE_INFINITY;
  while (remaining > 0) {
    // Rounded down: a frame due in 9 us (one frame time at 1 Gbit/s) must not wait for a 1 ms poll.
    const waitMs = soonest === Number.POSITIVE_INFINITY ? undefined : Math.max(0, Math.floor(soonest - clock()));
    const frame = nextFrame(waitMs === undefined ? undefined : Math.min(waitMs, TICK_MS));
    const now = clock();
    // The NIC's filter: a sled sees only frames addressed to it; broadcasts carry nothing for a sled.
    const sled = frame && frame.length >= MAC_SIZE ? byMac.get(macKey(frame)) : undefined;
    if (sled && frame) {
      sled.framesReceived++;
      // Copies still arriving once the sled is done (fast re-send's, racing its FINISHED) reach no sled.
      if (peekFrameType(frame) === FrameType.Data && sled.client.phase !== "done") sled.dataReceived++;
      if (sled.faults) {
        sled.faults.admit(frame, now, link.receivedAt?.() ?? now);
        deliver(sled, now);
      } else {
        sled.client.receive(frame, now);
      }
      soonest = Math.min(soonest, dueOf(sled));
    }
    if (frame && now - lastTick < TICK_MS && now < soonest) continue;
    lastTick = now;
    soonest = Number.POSITIVE_INFINITY;
    for (const each of sleds) {
      if (each.reported) continue;
      if (each.faults) deliver(each, now);
      each.client.tick(now);
      if (each.client.phase === "done") {
        each.reported = true;
        remaining--;
        options.onDone?.(reportOf(each, now));
      } else {
        soonest = Math.min(soonest, dueOf(each));
      }
    }
  }
  const now = clock();
  return sleds.map((sled) => reportOf(sled, now));
}

function deliver(sled: EmulatedSled, now: number): void {
  const faults = sled.faults!;
  for (let frame = faults.take(now); frame; frame = faults.take(now)) sled.client.receive(frame, now);
}

/**
 * One line for a sled's report: outcome, bytes, rate, re-asks, what happened
 * to the DATA frames on the wire, what the network models dropped, and why
 * it failed.
 *
 * @example describeSledReport(report) // "02:00:12:34:56:00 booted: 4194304 bytes, 98.1 MB/s, 0 re-asks, ..."
 */
export function describeSledReport(report: EmulatedSledReport): string {
  const parts = [
    `${report.bytes} bytes`,
    `${report.megabytesPerSecond.toFixed(1)} MB/s`,
    `${report.reasked} re-asks`,
    `${report.dataDropped + report.invalid} dropped`,
  ];
  if (report.firstDataMs !== null) parts.push(`first DATA after ${report.firstDataMs.toFixed(1)} ms`);
  parts.push(`${(report.elapsedMs / 1000).toFixed(2)} s`);
  let line = `${report.mac} ${report.outcome}: ${parts.join(", ")}`;
  line +=
    `; ${report.framesReceived} frames received, DATA: ${report.dataReceived} received, ` +
    `${report.dataAccepted} accepted, ${report.dataDropped} not in a slot`;
  if (report.consoleLines > 0) {
    line += `; console: ${report.consoleLines} lines, ${(report.consoleMs / 1000).toFixed(2)} s printing`;
  }
  const { faults } = report;
  if (Object.values(faults).some((count) => count > 0)) {
    line +=
      `; faults: ${faults.dropped} dropped, ${faults.burstDropped} lost in bursts, ${faults.portDropped} dropped by the port, ` +
      `${faults.duplicated} duplicated, ${faults.reordered} reordered, ${faults.delayed} delayed`;
  }
  return report.detail ? `${line}; ${report.detail}` : line;
}

/** The first six bytes (a MAC, or a frame's destination) as one number, for looking sleds up without allocating. */
function macKey(bytes: Uint8Array): number {
  let key = 0;
  for (let i = 0; i < MAC_SIZE; i++) key = key * 256 + bytes[i]!;
  return key;
}

/**
 * `count` consecutive MAC addresses from `first` (adding 1 to the 48-bit number each time).
 *
 * @example consecutiveMacs(parseMac("02:00:00:00:00:ff")!, 2) // 02:00:00:00:00:ff, 02:00:00:00:01:00
 */
export function consecutiveMacs(first: Mac, count: number): Mac[] {
  const base = macKey(first);
  return Array.from({ length: count }, (_, index) => {
    let key = (base + index) % 2 ** 48;
    const mac = new Uint8Array(MAC_SIZE);
    for (let i = MAC_SIZE - 1; i >= 0; i--) {
      mac[i] = key % 256;
      key = Math.floor(key / 256);
    }
    return mac;
  });
}

/**
 * A locally administered unicast MAC for the first emulated sled on a link:
 * 02, then the link's last four bytes, then 00, so emulated sleds on
 * different links differ and none takes the link's own address.
 *
 * @example sledMacFor(parseMac("52:54:00:12:34:56")!) // 02:00:12:34:56:00
 */
export function sledMacFor(linkMac: Mac): Mac {
  return new Uint8Array([0x02, linkMac[2] ?? 0, linkMac[3] ?? 0, linkMac[4] ?? 0, linkMac[5] ?? 0, 0x00]);
}
