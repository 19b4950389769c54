/**
 * The session threads, as the main thread keeps them (lib/netboot/server.ts):
 * one thread per sled being served (lib/netboot/session-loop.ts, session.ts),
 * each with its counters in shared memory and a channel of its own to the
 * dispatcher, handed to the dispatcher once the thread can answer READs.
 *
 * A thread takes tens of milliseconds to start, and more than the sled's
 * one-second re-ask on a busy host, which a sled's first READ would wait.
 * So one thread is always started ahead, its link open, waiting for a sled
 * (the spare): a session takes it and starts the next spare.
 */

import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import { stopThread } from "@ramdisk-tools/threads/stop-thread.ts";
import type { LinkClock } from "./pacing.ts";
import type { ServedImage } from "./served-image.ts";
import { type SessionCounters, sessionCounters } from "./session-counters.ts";
import type { SessionCommand, SessionReport } from "./session-messages.ts";

/** A session thread, started before it has a sled so that admitting one costs no thread start. */
interface SessionWorker {
  worker: Worker;
  counters: SessionCounters;
  /** The dispatcher's end of the session's channel, until handed over. */
  dispatcherPort?: MessagePort;
  /** Settles when the thread can answer READs (or failed to start). */
  ready: Promise<void>;
  stopped: Promise<void>;
  /** The sled it serves, formatted, for its messages. */
  name: string;
}

/** A session thread serving a sled. */
export interface SessionThread extends SessionWorker {
  image: ServedImage;
  /** Epoch milliseconds of the last OFFER or HELLO, for the quiet check. */
  heardAt: number;
}

/** How every session thread serves (lib/netboot/server.ts BootServerOptions), and where it reports. */
export interface SessionThreadSettings {
  /** The session thread's entry point (ServerThreads.sessionLoop). */
  entryPoint: string;
  link: string;
  /** Post each batch sent back to the dispatcher, for its capture file. */
  record: boolean;
  resend: boolean;
  rate: number | null;
  linkClock: LinkClock | null;
  /** One sled's boot cannot go on. */
  onProblem: (message: string) => void;
  /** A session thread cannot work at all. */
  onFailure: (message: string) => void;
}

/**
 * The session threads: a spare one started ahead, taken by a sled's session.
 *
 * @example
 * const threads = new SessionThreads(settings);
 * const session = threads.take("02:08:20:aa:bb:cc", mac, image);
 * await session.ready;
 * await threads.stop(session);
 */
export class SessionThreads {
  readonly #settings: SessionThreadSettings;
  #spare: SessionWorker | undefined;
  #closed = false;

  constructor(settings: SessionThreadSettings) {
    this.#settings = settings;
    this.#spare = this.#spawn();
  }

  /** A session for the sled `name` (`mac`), serving `image`, on the spare thread; and a new spare. */
  take(name: string, mac: Mac, image: ServedImage): SessionThread {
    const thread = this.#spare ?? this.#spawn();
    this.#spare = this.#closed ? undefined : this.#spawn();
    thread.name = name;
    thread.worker.postMessage({ type: "sled", sled: mac } satisfies SessionCommand);
    return Object.assign(thread, { image, heardAt: Date.now() });
  }

  /** Stop a session's thread. */
  stop(thread: SessionWorker): Promise<void> {
    return stopThread(thread.worker, thread.stopped);
  }

  /** Stop the spare and start no other; the sessions are stopped by whoever holds them. */
  close(): Promise<void> {
    this.#closed = true;
    const spare = this.#spare;
    this.#spare = undefined;
    return spare ? this.stop(spare) : Promise.resolve();
  }

  #spawn(): SessionWorker {
    const worker = new Worker(this.#settings.entryPoint);
    const counters = sessionCounters();
    const channel = new MessageChannel();
    let stopped!: () => void;
    let ready!: () => void;
    let failed!: (error: Error) => void;
    const thread: SessionWorker = {
      worker,
      counters,
      dispatcherPort: channel.port1,
      ready: new Promise((resolve, reject) => {
        ready = resolve;
        failed = reject;
      }),
      stopped: new Promise((resolve) => (stopped = resolve)),
      name: "a spare session",
    };
    // Handled where a session waits for it; this keeps a spare's failure from being "unhandled".
    thread.ready.catch(() => {});
    const settings = this.#settings;
    const fail = (message: string) => {
      failed(new Error(message));
      settings.onFailure(message);
    };
    worker.onmessage = (event: MessageEvent<SessionReport>) => {
      const report = event.data;
      if (report.type === "ready") ready();
      else if (report.type === "stopped") stopped();
      else if (report.type === "problem") settings.onProblem(`${thread.name}: ${report.message}`);
      else fail(`session for ${thread.name}: ${report.message}`);
    };
    worker.onerror = (event) => fail(`session thread for ${thread.name} failed: ${event.message}`);
    const start: SessionCommand = {
      type: "start",
      link: settings.link,
      counters: counters.buffer,
      port: channel.port2,
      record: settings.record,
      resend: settings.resend,
      rate: settings.rate,
      linkClock: settings.linkClock
        ? { buffer: settings.linkClock.buffer, bitsPerSecond: settings.linkClock.bitsPerSecond }
        : undefined,
    };
    worker.postMessage(start, [channel.port2]);
    return thread;
  }
}
