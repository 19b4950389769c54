/**
 * What the threads of the boot server say to a session thread, and what it
 * says back: the main thread starts it and gives it its sled
 * (SessionCommand), the dispatcher passes it the sled's image and READs on a
 * channel of its own (SessionMessage), and it reports to the main thread
 * (SessionReport). docs/netboot.md, "How this server is built, and why".
 */

import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import type { ServedBytes } from "./served-image.ts";

/** What the main thread tells a session thread (lib/netboot/session-loop.ts). */
export type SessionCommand =
  | {
      /** Open the link and say "ready"; the sled comes later ("sled"), so a thread can be started ahead. */
      type: "start";
      link: string;
      /** SESSION_COUNTERS, shared with the main thread. */
      counters: SharedArrayBuffer;
      /** The session's end of its channel to the dispatcher (SessionMessage). */
      port: MessagePort;
      /** Post a copy of each batch sent back on `port` (lib/netboot/recording.ts SentFrames), for `bootserver --pcap`. */
      record?: boolean;
      /** Fast re-send (`bootserver --no-resend` turns it off). */
      resend: boolean;
      /** Pace this sled's DATA at this many bits per second; null: unpaced (lib/netboot/pacing.ts). */
      rate: number | null;
      /** The server-wide pacing clock (lib/netboot/pacing.ts LinkClock), with its rate, when `--link-rate` caps the total. */
      linkClock?: { buffer: SharedArrayBuffer; bitsPerSecond: number };
    }
  /** Serve this sled from now on: what the dispatcher sends on the channel goes to its session. */
  | { type: "sled"; sled: Mac }
  | { type: "stop" };

/**
 * What the dispatcher sends a session thread, in order on one channel: the
 * image it is about to offer the sled, then the sled's READs. Serving the
 * image before the OFFER goes out means no READ can reach the session first.
 */
export type SessionMessage =
  | { type: "serve"; bytes: ServedBytes }
  /** `receivedAt`: when the dispatcher captured it (lib/threads/clock.ts nowMs). */
  | { type: "read"; count: bigint; slots: BigUint64Array; receivedAt: number }
  /** The sled finished or was reset: stop re-sending. */
  | { type: "end" };

/**
 * What a session thread tells the main thread: "error" when the thread cannot
 * work at all, "problem" when one sled's boot cannot go on (the server can).
 */
export type SessionReport =
  | { type: "ready" }
  | { type: "stopped" }
  | { type: "error"; message: string }
  | { type: "problem"; message: string };
