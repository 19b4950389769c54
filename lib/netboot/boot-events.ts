/**
 * What the boot server reports as it goes (lib/netboot/server.ts,
 * BootServerOptions.onEvent), for a program to print
 * (lib/netboot/boot-progress.ts) and count (metrics.ts). How the server ends
 * is not an event: BootServer.done resolves, or rejects with the failure.
 */

import type { ServedImage } from "./served-image.ts";
import type { SledProgress } from "./sled-progress.ts";

/** One thing that happened: a sled heard from, offered, served, finished; an image loaded or refused; a problem. */
export type BootEvent =
  | { type: "listening"; link: string; mac: string; images: ServedImage[] }
  | { type: "hello"; sled: string; text: string }
  | { type: "offer"; sled: string; image: ServedImage }
  /** The sled was offered an image for the first time in this session: a session thread serves it from now on. */
  | { type: "session-start"; sled: string; image: ServedImage }
  /** The sled READ and nothing explains what it reads (lib/netboot/resume.ts): it was sent a RESET, for `reason`. */
  | { type: "reset"; sled: string; reason: string }
  /** The sled READ without a session (the server restarted, or it was quiet) and is served `image` again, as `how` says. */
  | { type: "resumed"; sled: string; image: ServedImage; how: string }
  /** The sled READ an offer while `maxSleds` sessions were live: no session for now (said once per sled). */
  | { type: "turned-away"; sled: string; maxSleds: number }
  | { type: "reloaded"; image: ServedImage }
  /** A raw image is all in its file and its SHA-256 matched, `seconds` after its load began (it was served meanwhile). */
  | { type: "loaded"; image: ServedImage; seconds: number }
  /**
   * A raw image failed its check after serving began: refused until its file changes, and the sessions
   * serving it sent their sleds a RESET (`resetSleds` of them).
   */
  | { type: "refused"; image: ServedImage; message: string; resetSleds: number }
  | { type: "finished"; progress: SledProgress; boots: number }
  /** Something worth knowing that is not a failure. */
  | { type: "notice"; message: string }
  /** A failure that does not stop the server (unless failuresFatal). */
  | { type: "problem"; message: string };
