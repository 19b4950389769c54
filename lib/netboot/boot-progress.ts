/**
 * What the boot server prints: one line per event (a HELLO, the image
 * offered, a sled finished), and the progress of every transfer under way.
 *
 * On a terminal the progress is a block of live lines at the bottom, one per
 * sled, redrawn in place with the rate since the last drawing; an event line
 * is printed above the block, which is then drawn again under it. Anywhere else (a log, a pipe, a test) progress
 * comes as plain lines, one per sled whose transfer moved since the last
 * time, so a log reads top to bottom without escape sequences.
 *
 * With `--json-log` (JsonLogDisplay) every event and every progress report is
 * instead one JSON object on one line, in the schema of
 * docs/bootserver-json-log.md, for a script to read.
 */

import { isCompressed, toHex, ZSTD_VERSION } from "@ramdisk-tools/image/format.ts";
import { formatBytes, type ProgressSink } from "@ramdisk-tools/progress/progress.ts";
import type { BootEvent } from "./boot-events.ts";
import type { SledProgress } from "./sled-progress.ts";

/** Decimal megabytes, as line rates are quoted (gigabit is about 117 MB/s of image data). */
const MB = 1_000_000;

/**
 * How the sled's link fared: re-asked offsets, copies sent (with what they
 * cost the sled's console when it is measured), fast re-send's choice once
 * it is more than learning, time waiting for the pacing clock, batches the
 * link refused (the last ones only when there were any).
 *
 * @example linkFigures(progress) // "3 re-asked offsets, 40 copies (~0.16 s of console), copies on (3.9 ms a console line), paced 0.41 s"
 */
export function linkFigures(progress: SledProgress): string {
  const parts = [`${progress.reasked} re-asked offsets`];
  if (progress.resentFrames > 0) {
    const cost = progress.consoleLineMs > 0 ? ` (~${progress.copiesConsoleSeconds.toFixed(2)} s of console)` : "";
    parts.push(`${progress.resentFrames} ${progress.resentFrames === 1 ? "copy" : "copies"}${cost}`);
  }
  const line = progress.consoleLineMs > 0 ? ` (${progress.consoleLineMs.toFixed(2)} ms a console line)` : "";
  if (progress.copyChoice === "on") parts.push(`copies on${line}`);
  if (progress.copyChoice === "off") parts.push(`copies off: console too slow${line}`);
  if (progress.pacedSeconds >= 0.005) parts.push(`paced ${progress.pacedSeconds.toFixed(2)} s`);
  if (progress.sendFailures > 0) parts.push(`${progress.sendFailures} batches refused by the link`);
  return parts.join(", ");
}

/**
 * One sled's transfer on one line: MAC, image, percent, rate (by default the
 * average since its first READ), then linkFigures.
 *
 * @example progressLine(progress) // "02:00:00:00:00:01 pool.img  45% 112.3 MB/s, 3 re-asked offsets"
 */
export function progressLine(progress: SledProgress, bytesPerSecond = progress.bytesPerSecond): string {
  const size = progress.image.header.imageSize;
  const percent = Math.min(100, Math.floor((100 * progress.deliveredBytes) / size));
  return (
    `${progress.sled} ${progress.image.name} ${String(percent).padStart(3)}% ` +
    `${(bytesPerSecond / MB).toFixed(1)} MB/s, ${linkFigures(progress)}`
  );
}

/**
 * The lines printed for an event.
 *
 * @example eventLines({ type: "hello", sled: "02:00:00:00:00:01", text: "hi" }) // ['HELLO from 02:00:00:00:00:01: "hi"']
 */
export function eventLines(event: BootEvent): string[] {
  switch (event.type) {
    case "listening":
      return [
        `serving on ${event.link} (${event.mac})`,
        ...event.images.map((image) => {
          const { header } = image;
          const how =
            header.version === ZSTD_VERSION
              ? `zstd, ${formatBytes(header.dataSize)} on disk; each block's checksum is checked as sleds read it, the whole image's SHA-256 is not checked here`
              : isCompressed(header)
                ? `compressed, ${formatBytes(header.dataSize)} on disk`
                : "uncompressed";
          return `  ${image.path}: image name "${header.imageName}", ${formatBytes(header.imageSize)} (${how}), sha256 ${toHex(header.sha256)}`;
        }),
      ];
    case "hello":
      return [`HELLO from ${event.sled}: ${JSON.stringify(event.text)}`];
    case "offer": {
      const { header } = event.image;
      return [
        `offering ${event.image.name} to ${event.sled}: ${formatBytes(header.imageSize)} image, ` +
          `${formatBytes(header.targetSize)} ramdisk, dataset ${header.dataset}`,
      ];
    }
    case "reloaded":
      return [`reloaded ${event.image.path}: the file changed (now sha256 ${toHex(event.image.header.sha256)})`];
    case "loaded":
      return [
        `loaded ${event.image.path}: all ${formatBytes(event.image.header.imageSize)} SHA-256 checked, ` +
          `${event.seconds.toFixed(2)} s after loading began (served meanwhile)`,
      ];
    case "refused":
      return [
        `error: ${event.message} (${event.resetSleds} sled${event.resetSleds === 1 ? " being served it was" : "s being served it were"} sent a RESET)`,
      ];
    case "finished": {
      const { progress } = event;
      return [
        `${progress.sled} finished ${progress.image.name}: ${formatBytes(progress.deliveredBytes)} in ` +
          `${progress.seconds.toFixed(2)} s (${(progress.bytesPerSecond / MB).toFixed(1)} MB/s), ` +
          `${progress.dataFrames} DATA frames, ${linkFigures(progress)}; ${event.boots} finished so far`,
      ];
    }
    case "session-start":
      return [];
    case "reset":
      return [`RESET to ${event.sled}: ${event.reason}`];
    case "resumed":
      return [`serving ${event.sled} ${event.image.name} again, without a new offer: ${event.how}`];
    case "turned-away":
      return [
        `turned ${event.sled} away: all ${event.maxSleds} sessions --max-sleds allows are in use; ` +
          "it is served on a later re-ask once one ends",
      ];
    case "notice":
      return [event.message];
    case "problem":
      return [`warning: ${event.message}`];
  }
}

/**
 * Prints events and progress to `sink` as the module comment describes.
 *
 * @example
 * const display = new BootProgressDisplay(process.stdout);
 * const server = await BootServer.start({ ...options, onEvent: (event) => display.event(event) });
 * setInterval(() => display.update(server.progress()), 1000);
 */
export class BootProgressDisplay {
  readonly #sink: ProgressSink;
  /** Live lines on the terminal now, to erase before the next drawing. */
  #drawn: string[] = [];
  /** Delivered bytes per sled at the last update, and when. */
  readonly #previous = new Map<string, { bytes: number; seconds: number }>();

  constructor(sink: ProgressSink) {
    this.#sink = sink;
  }

  event(event: BootEvent): void {
    if (event.type === "finished") this.#previous.delete(event.progress.sled);
    const lines = eventLines(event)
      .map((line) => `${line}\n`)
      .join("");
    if (!this.#sink.isTTY) {
      this.#sink.write(lines);
      return;
    }
    const live = this.#drawn;
    this.#erase();
    this.#sink.write(lines);
    if (event.type === "finished") this.#draw(live.filter((line) => !line.startsWith(event.progress.sled)));
    else this.#draw(live);
  }

  update(transfers: SledProgress[]): void {
    const lines: string[] = [];
    for (const progress of transfers) {
      const previous = this.#previous.get(progress.sled);
      this.#previous.set(progress.sled, { bytes: progress.deliveredBytes, seconds: progress.seconds });
      // Plain lines only for transfers that moved, so an idle server's log stays quiet.
      if (!this.#sink.isTTY && previous?.bytes === progress.deliveredBytes) continue;
      const interval = previous ? progress.seconds - previous.seconds : 0;
      const moved = previous ? progress.deliveredBytes - previous.bytes : 0;
      // A sled that started over has counters that went back: show its average then.
      const rate = interval > 0 && moved >= 0 ? moved / interval : progress.bytesPerSecond;
      lines.push(progressLine(progress, rate));
    }
    if (this.#sink.isTTY) {
      this.#erase();
      this.#draw(lines);
    } else {
      for (const line of lines) this.#sink.write(`progress ${line}\n`);
    }
  }

  /** Leave the terminal clean: erase the live lines. */
  close(): void {
    if (this.#sink.isTTY) this.#erase();
  }

  #erase() {
    if (this.#drawn.length > 0) this.#sink.write(`\x1b[${this.#drawn.length}F\x1b[J`);
    this.#drawn = [];
  }

  #draw(lines: string[]) {
    if (lines.length > 0) this.#sink.write(lines.map((line) => `\x1b[K${line}\n`).join(""));
    this.#drawn = lines;
  }
}

/** One event of the JSON log (docs/bootserver-json-log.md): `event` names it, `time` is ISO 8601 UTC. */
export type JsonLogRecord = { event: string; time: string } & Record<string, unknown>;

function imageFields(image: SledProgress["image"]) {
  const { header } = image;
  return { image: image.name, path: image.path, image_size: header.imageSize, sha256: toHex(header.sha256) };
}

function transferFields(progress: SledProgress) {
  return {
    sled: progress.sled,
    ...imageFields(progress.image),
    bytes: progress.deliveredBytes,
    sent_bytes: progress.sentBytes,
    seconds: Number(progress.seconds.toFixed(3)),
    mb_per_second: Number((progress.bytesPerSecond / MB).toFixed(3)),
    reasked: progress.reasked,
    send_failures: progress.sendFailures,
    data_frames: progress.dataFrames,
    resent_frames: progress.resentFrames,
    paced_seconds: Number(progress.pacedSeconds.toFixed(3)),
    round_trip_ms: Number(progress.roundTripMs.toFixed(3)),
    copy_choice: progress.copyChoice,
    probe_frames: progress.counters.probeFrames,
    console_line_ms: Number(progress.consoleLineMs.toFixed(3)),
    console_upper_ms: Number(progress.counters.consoleUpperMs.toFixed(3)),
    copies_console_seconds: Number(progress.copiesConsoleSeconds.toFixed(3)),
  };
}

/**
 * The JSON log record for an event, without its time.
 *
 * @example jsonLogRecord({ type: "hello", sled: "02:00:00:00:00:01", text: "hi" }) // { event: "hello", sled: ..., text: "hi" }
 */
export function jsonLogRecord(event: BootEvent): Omit<JsonLogRecord, "time"> {
  switch (event.type) {
    case "listening":
      return {
        event: "listening",
        link: event.link,
        mac: event.mac,
        images: event.images.map((image) => ({
          ...imageFields(image),
          target_size: image.header.targetSize,
          dataset: image.header.dataset,
          compressed: isCompressed(image.header),
        })),
      };
    case "hello":
      return { event: "hello", sled: event.sled, text: event.text };
    case "offer":
      return {
        event: "offer",
        sled: event.sled,
        ...imageFields(event.image),
        target_size: event.image.header.targetSize,
        dataset: event.image.header.dataset,
      };
    case "session-start":
      return { event: "session-start", sled: event.sled, ...imageFields(event.image) };
    case "reloaded":
      return { event: "reload", ...imageFields(event.image) };
    case "loaded":
      return { event: "loaded", ...imageFields(event.image), seconds: Number(event.seconds.toFixed(3)) };
    case "refused":
      return { event: "refused", ...imageFields(event.image), message: event.message, reset_sleds: event.resetSleds };
    case "finished":
      return { event: "finished", ...transferFields(event.progress), boots: event.boots };
    case "reset":
      return { event: "reset", sled: event.sled, reason: event.reason };
    case "resumed":
      return { event: "resumed", sled: event.sled, ...imageFields(event.image), how: event.how };
    case "turned-away":
      return { event: "turned-away", sled: event.sled, max_sleds: event.maxSleds };
    case "notice":
      return { event: "notice", message: event.message };
    case "problem":
      return { event: "error", fatal: false, message: event.message };
  }
}

/**
 * Prints events and progress as one JSON object per line (`bootserver
 * --json-log`), with the same interface as BootProgressDisplay. Progress
 * records come only for transfers that moved since the last update.
 *
 * @example
 * const log = new JsonLogDisplay(process.stdout);
 * log.event({ type: "finished", progress, boots: 1 }); // {"event":"finished","time":"...","sled":"02:00:00:00:00:01",...}
 */
export class JsonLogDisplay {
  readonly #sink: ProgressSink;
  readonly #previous = new Map<string, number>();

  constructor(sink: ProgressSink) {
    this.#sink = sink;
  }

  event(event: BootEvent): void {
    if (event.type === "finished") this.#previous.delete(event.progress.sled);
    this.write(jsonLogRecord(event));
  }

  update(transfers: SledProgress[]): void {
    for (const progress of transfers) {
      if (this.#previous.get(progress.sled) === progress.deliveredBytes) continue;
      this.#previous.set(progress.sled, progress.deliveredBytes);
      this.write({ event: "progress", ...transferFields(progress) });
    }
  }

  /** Write one record, stamped now; for events the server itself does not report (a fatal error). */
  write(record: Omit<JsonLogRecord, "time">): void {
    const { event, ...fields } = record;
    this.#sink.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
  }

  close(): void {}
}
