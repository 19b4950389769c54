/**
 * Progress for long work, on standard error and only when it is a terminal:
 * one line rewritten in place with bytes done, rate and time left. When
 * standard error is not a terminal (a build log, a test) nothing is printed,
 * so output that scripts read stays exactly as the existing tools print it.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";

/** Human-readable bytes, binary units: `formatBytes(3 * 1024 * 1024)` is "3.0 MiB". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Seconds as `1m05s` or `4.2s`. */
export function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes}m${String(Math.round(seconds % 60)).padStart(2, "0")}s`;
}

/** A progress line for one piece of work of known size. */
export interface Progress {
  /** Record that `done` bytes of the total are finished. */
  update(done: number): void;
  /** Clear the line (the caller prints its own result after). */
  finish(): void;
}

/** Where progress goes: a text stream, drawn over in place only on a terminal (startProgress: standard error by default; the boot server's display: standard output). */
export interface ProgressSink {
  isTTY?: boolean;
  write(text: string): unknown;
}

/**
 * Start a progress line labelled `label` for `total` bytes, redrawn at most
 * every `intervalMs`. Returns a silent Progress when the sink is not a terminal.
 *
 * @example
 * const progress = startProgress("compressing", imageSize);
 * progress.update(bytesDone);
 * progress.finish();
 */
export function startProgress(
  label: string,
  total: number,
  sink: ProgressSink = process.stderr,
  intervalMs = 200,
): Progress {
  if (!sink.isTTY) return { update() {}, finish() {} };
  const started = performance.now();
  let lastDraw = 0;
  let drawn = false;
  return {
    update(done: number) {
      const now = performance.now();
      if (now - lastDraw < intervalMs && done < total) return;
      lastDraw = now;
      const seconds = (now - started) / 1000;
      const rate = seconds > 0 ? done / seconds : 0;
      const left = rate > 0 ? (total - done) / rate : Infinity;
      const percent = total > 0 ? (100 * done) / total : 100;
      sink.write(
        `\r\x1b[K${label}: ${formatBytes(done)} of ${formatBytes(total)} (${percent.toFixed(0)}%), ` +
          `${(rate / MIB).toFixed(1)} MiB/s, ${formatSeconds(left)} left`,
      );
      drawn = true;
    },
    finish() {
      if (drawn) sink.write("\r\x1b[K");
    },
  };
}
