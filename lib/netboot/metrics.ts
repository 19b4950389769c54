/**
 * The boot server's figures for a monitoring system: a snapshot of what the
 * threads count in shared memory (the dispatcher's frames, each session's
 * bytes) and of what the server decided (offers, boots, sleds turned away),
 * as Prometheus text format (version 0.0.4) or as JSON. Served by
 * lib/netboot/metrics-server.ts; nothing here touches a frame.
 *
 * Publishing another counter is one row in a table below: DISPATCH_METRICS
 * for a dispatcher counter (lib/netboot/dispatch.ts DISPATCH_COUNTERS; the compiler
 * asks for a row for each new name), SESSION_METRICS for a session counter
 * (lib/netboot/session-counters.ts SESSION_COUNTERS, likewise), SERVER_METRICS for a figure of
 * the whole server.
 */

import type { BootEvent } from "./boot-events.ts";
import type { DISPATCH_COUNTERS } from "./dispatch.ts";
import type { SESSION_COUNTERS } from "./session-counters.ts";
import type { SledStatus } from "./sleds.ts";

type DispatchCounterName = (typeof DISPATCH_COUNTERS)[number];
type SessionCounterName = (typeof SESSION_COUNTERS)[number];

/** Every metric's name starts with this. */
const PREFIX = "bootserver_";

/** A sled's state, one of SLED_STATES. */
export type SledState = (typeof SLED_STATES)[number];
/**
 * - waiting: it said HELLO and has no session (not offered yet, or its session ended unfinished);
 * - turned_away: not offered an image, --boots sleds being already booting or done;
 * - offered: it has a session and was offered an image, and has not READ yet;
 * - transferring: it is READing its image;
 * - finished: it said FINISHED (and has not started over since).
 */
export const SLED_STATES = ["waiting", "turned_away", "offered", "transferring", "finished"] as const;

/** One sled, as the metrics show it. */
export interface SledFigures {
  sled: string;
  state: SledState;
  /** The image of its latest session (path as given), null before any. */
  image: string | null;
  /** Its latest session's counters (live, or as they were at FINISHED); null before any. */
  counters: Record<SessionCounterName, number> | null;
}

/** One image, as the metrics show it. */
export interface ImageFigures {
  /** The path as given on the command line. */
  image: string;
  offers: number;
  boots: number;
}

/** Everything the endpoint serves, at one moment; /status is this as JSON. */
export interface MetricsSnapshot {
  /** The dispatcher's shared counters. */
  frames: Record<DispatchCounterName, number>;
  /** Sleds with a session now. */
  sessionsLive: number;
  /** Sleds not offered an image for lack of capacity (--boots). */
  sledsTurnedAway: number;
  images: ImageFigures[];
  sleds: SledFigures[];
}

interface Family {
  name: string;
  type: "counter" | "gauge";
  help: string;
}

/** Where a dispatcher counter goes: a family, and the labels that tell it from the others in that family. */
interface CounterRow {
  family: Family;
  labels?: Record<string, string>;
}

const FRAMES_CAPTURED: Family = { name: "frames_captured_total", type: "counter", help: "Netboot frames captured." };
const FRAMES: Family = {
  name: "frames_total",
  type: "counter",
  help: "Frames passed on, by kind (HELLO, READ, FINISHED).",
};
const FRAMES_IGNORED: Family = {
  name: "frames_ignored_total",
  type: "counter",
  help: "Frames captured and dropped, by reason (lib/netboot/dispatch.ts DISPATCH_COUNTERS).",
};

/** The dispatcher's counters (lib/netboot/dispatch.ts): one row each. */
const DISPATCH_METRICS: Record<DispatchCounterName, CounterRow> = {
  frames: { family: FRAMES_CAPTURED },
  helloFrames: { family: FRAMES, labels: { kind: "hello" } },
  readFrames: { family: FRAMES, labels: { kind: "read" } },
  finishedFrames: { family: FRAMES, labels: { kind: "finished" } },
  malformed: { family: FRAMES_IGNORED, labels: { reason: "malformed" } },
  ownFrames: { family: FRAMES_IGNORED, labels: { reason: "own_frame" } },
  notForUs: { family: FRAMES_IGNORED, labels: { reason: "not_for_us" } },
  groupSource: { family: FRAMES_IGNORED, labels: { reason: "group_source" } },
  notAllowed: { family: FRAMES_IGNORED, labels: { reason: "not_allowed" } },
  unexpected: { family: FRAMES_IGNORED, labels: { reason: "unexpected" } },
  resets: {
    family: {
      name: "resets_sent_total",
      type: "counter",
      help: "RESETs sent to sleds whose READ no offer explains (each logged with the reason).",
    },
  },
  resetsLimited: {
    family: {
      name: "resets_limited_total",
      type: "counter",
      help: "READs without a session or offer not answered: over the RESET rate limit.",
    },
  },
  resumed: {
    family: {
      name: "sleds_resumed_total",
      type: "counter",
      help: "Sleds served again without a new offer: after a restart, or after going quiet.",
    },
  },
  sendFailures: {
    family: { name: "send_failures_total", type: "counter", help: "OFFER or RESET frames the link refused to send." },
  },
  hellosAnswered: { family: { name: "offers_sent_total", type: "counter", help: "HELLOs answered with an OFFER." } },
  hellosLimited: {
    family: { name: "hellos_limited_total", type: "counter", help: "HELLOs not answered: over the rate limits." },
  },
  admitted: {
    family: { name: "sleds_admitted_total", type: "counter", help: "Sleds given a session after READing an offer." },
  },
  turnedAway: {
    family: {
      name: "sleds_turned_away_total",
      type: "counter",
      help: "Offered sleds that READ while --max-sleds sessions were live, or beyond --boots (once each).",
    },
  },
  droppedByCapture: {
    family: {
      name: "capture_dropped_frames_total",
      type: "counter",
      help: "Frames the capture lost because its buffer was full (libpcap ps_drop).",
    },
  },
};

/**
 * A session's counters (lib/netboot/session-counters.ts), as gauges of each sled's latest
 * session (they start over with a new session); null for one not published.
 */
const SESSION_METRICS: Record<SessionCounterName, Family | null> = {
  imageSize: { name: "sled_image_bytes", type: "gauge", help: "Bytes of the image served to the sled." },
  deliveredBytes: {
    name: "sled_delivered_bytes",
    type: "gauge",
    help: "Image bytes delivered to the sled (each offset counted once).",
  },
  sentBytes: { name: "sled_sent_bytes", type: "gauge", help: "Image bytes sent to the sled, re-sends included." },
  reasked: { name: "sled_reasked_offsets", type: "gauge", help: "Offsets the sled asked for more than once." },
  reads: { name: "sled_reads", type: "gauge", help: "READ frames answered." },
  sendFailures: { name: "sled_send_failures", type: "gauge", help: "Batches of DATA frames the link refused." },
  dataFrames: {
    name: "sled_data_frames",
    type: "gauge",
    help: "DATA frames sent to the sled, re-sent copies included.",
  },
  resentFrames: {
    name: "sled_resent_frames",
    type: "gauge",
    help: "Copies of DATA frames the sled did not ask for (fast re-send and console probes): a console line each.",
  },
  resends: { name: "sled_resends", type: "gauge", help: "READs that came later than the re-send timeout." },
  probeFrames: {
    name: "sled_probe_frames",
    type: "gauge",
    help: "Copies sent to measure what a console line costs the sled.",
  },
  consoleLineMs: {
    name: "sled_console_line_milliseconds",
    type: "gauge",
    help: "Measured console time of one line on the sled (0: not measured yet).",
  },
  consoleUpperMs: {
    name: "sled_console_line_upper_milliseconds",
    type: "gauge",
    help: "At most this console time per line, noise included (0: not measured yet).",
  },
  resets: {
    name: "sled_resets",
    type: "gauge",
    help: "RESETs the sled's session sent it because a block or the image failed its check (each logged with why).",
  },
  copyChoice: {
    name: "sled_copy_choice",
    type: "gauge",
    help: "Fast re-send's choice for the sled: 0 learning the console's cost, 1 copies on, 2 off (console too slow), 3 disabled.",
  },
  pacedMs: { name: "sled_paced_milliseconds", type: "gauge", help: "Time spent waiting for the pacing clock." },
  roundTripMs: { name: "sled_round_trip_milliseconds", type: "gauge", help: "Smoothed READ round trip (0: not yet)." },
  // Times, not amounts: /status has them.
  firstReadAt: null,
  lastReadAt: null,
};

/** Figures of the whole server, one row each. */
const SERVER_METRICS: { family: Family; value: (snapshot: MetricsSnapshot) => number }[] = [
  {
    family: { name: "sessions_live", type: "gauge", help: "Sleds with a session (offered or transferring)." },
    value: (snapshot) => snapshot.sessionsLive,
  },
  {
    family: { name: "sleds_turned_away", type: "gauge", help: "Sleds not offered an image: --boots were under way." },
    value: (snapshot) => snapshot.sledsTurnedAway,
  },
];

const IMAGE_OFFERS: Family = { name: "image_offers_total", type: "counter", help: "OFFERs of the image sent." };
const IMAGE_BOOTS: Family = {
  name: "image_boots_total",
  type: "counter",
  help: "Sleds that said FINISHED after READing the image.",
};
const SLED_STATE: Family = {
  name: "sled_state",
  type: "gauge",
  help: `1 for the sled's state (${SLED_STATES.join(", ")}), 0 for the others.`,
};

/** Prometheus text format: a label value with backslash, double quote and line feed escaped. */
function labelValue(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Collects the samples of each family, in the order families first appear. */
class Exposition {
  readonly #families = new Map<string, { family: Family; lines: string[] }>();

  add(family: Family, labels: Record<string, string>, value: number): void {
    const name = PREFIX + family.name;
    let entry = this.#families.get(name);
    if (!entry) {
      entry = { family, lines: [] };
      this.#families.set(name, entry);
    }
    const pairs = Object.entries(labels).map(([key, text]) => `${key}="${labelValue(text)}"`);
    entry.lines.push(`${name}${pairs.length > 0 ? `{${pairs.join(",")}}` : ""} ${value}`);
  }

  text(): string {
    let text = "";
    for (const [name, { family, lines }] of this.#families) {
      text += `# HELP ${name} ${family.help}\n# TYPE ${name} ${family.type}\n${lines.join("\n")}\n`;
    }
    return text;
  }
}

/**
 * The snapshot in Prometheus text format (version 0.0.4).
 *
 * @example prometheusText(snapshot) // "# HELP bootserver_frames_captured_total Netboot frames captured.\n# TYPE ..."
 */
export function prometheusText(snapshot: MetricsSnapshot): string {
  const out = new Exposition();
  for (const [counter, row] of Object.entries(DISPATCH_METRICS) as [DispatchCounterName, CounterRow][]) {
    out.add(row.family, row.labels ?? {}, snapshot.frames[counter]);
  }
  for (const { family, value } of SERVER_METRICS) out.add(family, {}, value(snapshot));
  for (const { image, offers } of snapshot.images) out.add(IMAGE_OFFERS, { image }, offers);
  for (const { image, boots } of snapshot.images) out.add(IMAGE_BOOTS, { image }, boots);
  for (const sled of snapshot.sleds) {
    for (const state of SLED_STATES) out.add(SLED_STATE, { sled: sled.sled, state }, state === sled.state ? 1 : 0);
  }
  for (const [counter, family] of Object.entries(SESSION_METRICS) as [SessionCounterName, Family | null][]) {
    if (!family) continue;
    for (const { sled, image, counters } of snapshot.sleds) {
      if (counters && image !== null) out.add(family, { sled, image }, counters[counter]);
    }
  }
  return out.text();
}

/** What the collector reads from the running server when it takes a snapshot. */
export interface MetricsSource {
  sleds(): SledStatus[];
  frameCounts(): Record<DispatchCounterName, number>;
}

/**
 * Keeps what only the server's events tell (the images, offers and boots per
 * image, the last figures of a sled that finished) and takes snapshots by
 * reading the rest from the server at that moment.
 *
 * @example
 * const collector = new MetricsCollector();
 * const server = await BootServer.start({ ...options, onEvent: (event) => collector.event(event) });
 * const text = prometheusText(collector.snapshot(server));
 */
export class MetricsCollector {
  readonly #images = new Map<string, ImageFigures>();
  /** Sleds that said FINISHED: the image and counters of that session. */
  readonly #finished = new Map<string, { image: string; counters: Record<SessionCounterName, number> }>();

  /** Take note of a BootEvent; give it every one, from "listening" on. */
  event(event: BootEvent): void {
    if (event.type === "listening") for (const { path } of event.images) this.#image(path);
    else if (event.type === "offer") this.#image(event.image.path).offers++;
    else if (event.type === "finished") {
      const { sled, image, counters } = event.progress;
      this.#image(image.path).boots++;
      this.#finished.set(sled, { image: image.path, counters });
    }
  }

  snapshot(source: MetricsSource): MetricsSnapshot {
    const statuses = source.sleds();
    const sleds = statuses.map(({ sled, session, turnedAway }): SledFigures => {
      if (session) {
        const state = session.counters.reads > 0 ? "transferring" : "offered";
        return { sled, state, image: session.image.path, counters: session.counters };
      }
      const finished = this.#finished.get(sled);
      if (finished) return { sled, state: "finished", ...finished };
      return { sled, state: turnedAway ? "turned_away" : "waiting", image: null, counters: null };
    });
    return {
      frames: source.frameCounts(),
      sessionsLive: statuses.filter((status) => status.session).length,
      sledsTurnedAway: sleds.filter((sled) => sled.state === "turned_away").length,
      images: [...this.#images.values()].map((figures) => ({ ...figures })),
      sleds,
    };
  }

  #image(path: string): ImageFigures {
    let figures = this.#images.get(path);
    if (!figures) {
      figures = { image: path, offers: 0, boots: 0 };
      this.#images.set(path, figures);
    }
    return figures;
  }
}
