/**
 * An independent reading of netboot frames, written from docs/netboot.md
 * rather than lib/protocol/frames.ts, so that the bootserver's tests read
 * what it sends with code that shares nothing with it; and the MACs those
 * tests use.
 */

import { encodeFrame, type Mac, READ_SLOTS, type ReadRequest } from "@ramdisk-tools/protocol/frames.ts";

/** The boot server the tests play or start, a sled, and another sled. */
export const SERVER = Uint8Array.of(0x02, 0x5e, 0xb5, 0, 0, 0x01);
export const SLED = Uint8Array.of(0x02, 0x5e, 0xb5, 0, 0, 0xa0);
export const OTHER = Uint8Array.of(0x02, 0x5e, 0xb5, 0, 0, 0xb0);
export const BROADCAST = new Uint8Array(6).fill(0xff);

/** The message types of netboot.md, by name. */
export const TYPE = {
  hello: 0x9001,
  offer: 0x9102,
  read: 0x9003,
  data: 0x9104,
  finished: 0x9005,
  reset: 0x9106,
} as const;

/** A frame as netboot.md lays it out. */
export interface Parsed {
  destination: Uint8Array;
  source: Uint8Array;
  type: number;
  len: number;
  body: Uint8Array;
  frameLength: number;
}

/**
 * Ethertype 0x1DE0, magic 0x1DE12345, then type and len, big-endian; null for anything else.
 *
 * @example const offer = parse(frame); expect(offer?.type).toBe(TYPE.offer);
 */
export function parse(frame: Uint8Array): Parsed | null {
  if (frame.length < 26) return null;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.getUint16(12) !== 0x1de0 || view.getUint32(14) !== 0x1de12345) return null;
  const len = view.getUint32(22);
  return {
    destination: frame.slice(0, 6),
    source: frame.slice(6, 12),
    type: view.getUint32(18),
    len,
    body: frame.slice(26, 26 + len),
    frameLength: frame.length,
  };
}

/**
 * A DATA frame's offset and the bytes it carries.
 *
 * @example expect(dataOf(parse(frame)!).offset).toBe(4096n);
 */
export function dataOf(parsed: Parsed): { offset: bigint; bytes: Uint8Array } {
  return { offset: new DataView(parsed.body.buffer).getBigUint64(0), bytes: parsed.body.subarray(8) };
}

/**
 * A READ request of `count` with the given slots set (slot number to offset), the others zero.
 *
 * @example session.answer(readRequest(2n, { 9: 4096n }));
 */
export function readRequest(count: bigint, slots: Record<number, bigint>): ReadRequest {
  const slotArray = new BigUint64Array(READ_SLOTS);
  for (const [slot, offset] of Object.entries(slots)) slotArray[Number(slot)] = offset;
  return { type: "read", count, slots: slotArray };
}

/**
 * The READ frame `source` sends `destination` (readRequest).
 *
 * @example dispatcher.dispatch(readFrame(SLED, SERVER, 1n, { 0: 4096n }));
 */
export function readFrame(source: Mac, destination: Mac, count: bigint, slots: Record<number, bigint>): Uint8Array {
  return encodeFrame(destination, source, readRequest(count, slots));
}

/**
 * Bytes in lower-case hex, as python3's hexdigest and the server print a SHA-256.
 *
 * @example expect(hex(offer.body.subarray(16, 48))).toBe(sha256);
 */
/**
 * A MAC address as the server prints it: aa:bb:cc:dd:ee:ff.
 *
 * @example expect(finished).toEqual([macText(SLED)]);
 */
export function macText(mac: Uint8Array): string {
  return Array.from(mac, (byte) => byte.toString(16).padStart(2, "0")).join(":");
}
