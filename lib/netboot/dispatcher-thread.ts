/**
 * The dispatcher thread (lib/netboot/dispatcher-loop.ts, dispatch.ts) as
 * the main thread holds it (lib/netboot/server.ts): started with its link
 * and settings, ready once its link is open (it says the link's MAC), told
 * what to do (DispatcherCommand) and telling the server what the sleds do
 * (DispatcherReport), then stopped, with a longer grace while it has a
 * capture file to close.
 */

import { UserError } from "@ramdisk-tools/errors/errors.ts";
import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import { stopThread } from "@ramdisk-tools/threads/stop-thread.ts";
import type { DispatcherCommand, DispatcherReport } from "./dispatcher-loop.ts";

/** What the dispatcher reports about the sleds, for the server to decide on. */
export type DispatcherSledReport = Exclude<DispatcherReport, { type: "ready" | "stopped" | "error" }>;

/** The dispatcher may have a capture file to flush, sync and rename before it stops. */
const RECORDING_STOP_GRACE_MS = 10_000;

/**
 * A running dispatcher thread.
 *
 * @example
 * const dispatcher = new DispatcherThread(SERVER_THREADS.dispatcherLoop, start, (report) => route(report), fail);
 * const mac = await dispatcher.ready;
 * dispatcher.command({ type: "end", sled });
 * await dispatcher.stop();
 */
export class DispatcherThread {
  /** The MAC address of the server's link, once the thread has opened it; rejects with a UserError when it cannot. */
  readonly ready: Promise<Mac>;
  readonly #worker: Worker;
  readonly #stopped: Promise<void>;
  readonly #recording: boolean;

  /**
   * Start the thread from its entry point `entryPoint` (ServerThreads.dispatcherLoop) with `start`; `onReport` hears what the sleds do, and
   * `onFailure` that the thread cannot work (before or after it is ready).
   */
  constructor(
    entryPoint: string,
    start: DispatcherCommand & { type: "start" },
    onReport: (report: DispatcherSledReport) => void,
    onFailure: (message: string) => void,
  ) {
    const worker = new Worker(entryPoint);
    this.#worker = worker;
    this.#recording = start.pcap !== undefined;
    let stopped!: () => void;
    this.#stopped = new Promise((resolve) => (stopped = resolve));
    const ready = new Promise<Mac>((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<DispatcherReport>) => {
        const report = event.data;
        switch (report.type) {
          case "ready":
            return resolve(report.mac);
          case "stopped":
            return stopped();
          case "error":
            reject(new UserError(report.message));
            return onFailure(report.message);
          default:
            return onReport(report);
        }
      };
      worker.onerror = (event) => {
        reject(new UserError(event.message));
        onFailure(`dispatcher thread failed: ${event.message}`);
      };
    });
    this.command(start);
    this.ready = ready.catch((error) => {
      worker.terminate();
      throw error;
    });
  }

  /** Tell the dispatcher `command`, handing it what `transfer` lists. */
  command(command: DispatcherCommand, transfer: Bun.Transferable[] = []): void {
    this.#worker.postMessage(command, transfer);
  }

  /** Stop the thread, once it has closed its link (and its capture file). */
  stop(): Promise<void> {
    return stopThread(this.#worker, this.#stopped, this.#recording ? RECORDING_STOP_GRACE_MS : undefined);
  }
}
