/**
 * What the boot server (lib/netboot/server.ts) is asked to do: the link,
 * the images and which sleds get which, when it is done, what it records,
 * how it paces and admits sleds, and where it reports; and the defaults of
 * what a program need not say.
 */

import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import type { BootEvent } from "./boot-events.ts";
import type { ServerThreads } from "./threads.ts";

/** Live sessions at most, by default: above a full rack of 32 sleds. */
export const DEFAULT_MAX_SLEDS = 64;
/** Pace each sled at its NIC's line rate by default (netboot.md: the sled's NIC is gigabit). */
export const DEFAULT_RATE = 1e9;

/** What a boot server is asked to do (apps/bootserver.ts reads it from the command line). */
export interface BootServerOptions {
  /** The Ethernet link the sleds are on. */
  link: string;
  /** Image files offered in turn to sleds without a pinned image: at least one. */
  images: [string, ...string[]];
  /** Image file pinned to a sled, by MAC. */
  pinned: [Mac, string][];
  /** The sleds to serve (pinned sleds are served too); null serves any sled. */
  allowed: Mac[] | null;
  /** Done once this many sleds have said FINISHED; serve forever when absent. */
  boots?: number;
  /** Every failure ends the server, as the existing `-s` does. */
  failuresFatal: boolean;
  /** Fail unless a sled says HELLO within this many seconds. */
  helloTimeoutSeconds?: number;
  /** Record every frame received and sent to this pcap file, which appears when the server stops. */
  pcap?: string;
  /** Send a batch again when the sled's next READ is late (default true; `--no-resend`). */
  resend?: boolean;
  /** Pace each sled's DATA at this many bits per second on the wire; null: unpaced (default DEFAULT_RATE). */
  rate?: number | null;
  /** Cap the DATA of all sessions together at this many bits per second; null or absent: no cap. */
  linkRate?: number | null;
  /** Rate-limit HELLOs and start sessions only for sleds that READ an offer (default true; `--no-admission`). */
  admission?: boolean;
  /** Live sessions at most, with admission (default DEFAULT_MAX_SLEDS). */
  maxSleds?: number;
  /** Bytes of decompressed blocks kept for each zstd image (default DEFAULT_CACHE_BYTES, lib/netboot/block-cache.ts). */
  zstdCacheBytes?: number;
  /**
   * Where to keep the record of what each sled took (lib/netboot/offer-record.ts), and whether the operator
   * chose it (then a directory that cannot be written is an error, else a notice); null keeps it in memory.
   */
  state?: { dir: string; chosen: boolean } | null;
  /** The entry points of the threads it starts, handed down by the program. */
  threads: ServerThreads;
  /** Where to report what happens. */
  onEvent: (event: BootEvent) => void;
}
