/**
 * Link rates and what a frame costs on the wire, for pacing and for modelling
 * a switch port. An Ethernet frame occupies the link for more than its bytes:
 * frames shorter than 60 bytes are padded to 60, then come the 4-byte FCS, the
 * 8-byte preamble and start delimiter, and the 12-byte inter-frame gap. A
 * 1058-byte DATA frame (1024 image bytes) therefore takes 1082 bytes of link
 * time: gigabit carries at most 115,526 of them a second, 118.3 MB/s of image
 * (117 MB/s with the READ round trips, netboot.md).
 */

import { MIN_FRAME_SIZE } from "@ramdisk-tools/protocol/frames.ts";

/** FCS (4), preamble and start of frame delimiter (8), inter-frame gap (12). */
export const WIRE_OVERHEAD_BYTES = 4 + 8 + 12;

const SUFFIXES: Record<string, number> = { "": 1, k: 1e3, m: 1e6, g: 1e9 };

/**
 * Bytes of link time one frame of `length` bytes (Ethernet header and
 * payload, no FCS) takes: padded to 60, plus FCS, preamble and gap.
 *
 * @example wireBytes(1058) // 1082
 */
export function wireBytes(length: number): number {
  return Math.max(length, MIN_FRAME_SIZE) + WIRE_OVERHEAD_BYTES;
}

/**
 * A rate in bits per second written as a number with an optional k, m or g
 * suffix (powers of 1000, as link speeds are named); null for anything else
 * or for a rate that is not positive.
 *
 * @example parseBitRate("1g") // 1e9
 * @example parseBitRate("2.5G") // 2.5e9
 */
export function parseBitRate(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)\s*$/i.exec(text);
  if (!match) return null;
  const rate = Number(match[1]) * SUFFIXES[match[2]!.toLowerCase()]!;
  return rate > 0 && Number.isFinite(rate) ? rate : null;
}

/**
 * A pacing rate (`bootserver --rate`, `--link-rate`) in bits per second, as
 * parseBitRate reads it (`1g`, `200m`, `500k`, `1000000`), or null for `off`
 * or 0 (no pacing). Throws on anything else.
 *
 * @example parseRate("1g") // 1_000_000_000
 */
export function parseRate(text: string): number | null {
  if (text.trim().toLowerCase() === "off" || /^\s*0+(\.0+)?\s*[kmg]?\s*$/i.test(text)) return null;
  const bits = parseBitRate(text);
  if (bits === null) throw new Error(`"${text}" is not a rate like 1g, 200m, 500k or off`);
  return bits;
}
