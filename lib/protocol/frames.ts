/**
 * The sled network boot protocol: plain Ethernet II frames of ethertype
 * 0x1DE0, a 12-byte big-endian header (magic, type, len), then the body.
 *
 * Encoding and decoding are pure functions over bytes. Decoding never throws:
 * it returns either a frame or the reason the bytes are not one, because the
 * boot server listens on a segment where anything can arrive.
 *
 * Two traps from `docs/netboot.md` shape this module:
 * - A real NIC pads frames to 60 bytes, so a frame may carry bytes beyond its
 *   `len`: decoding goes by `len` and accepts the rest. Encoding pads to 60
 *   bytes itself, so what we send looks on a virtual link as it would on a
 *   real one.
 * - A READ's 128 slots keep their positions: slot n carries the offset of the
 *   sled's slot n, unasked slots are zero, and `count` is how many are asked.
 *   requestedOffsets() turns that into the list of offsets to answer.
 */

import { copyBytes } from "@ramdisk-tools/bytes/copy.ts";

export const ETHERTYPE = 0x1de0;
export const PROTOCOL_MAGIC = 0x1de12345;

export const ETHER_HEADER_SIZE = 14;
export const MAC_SIZE = 6;
export const PROTOCOL_HEADER_SIZE = 12;
/** Where the body starts in a whole frame. */
export const BODY_OFFSET = ETHER_HEADER_SIZE + PROTOCOL_HEADER_SIZE;
/** Where a DATA frame's image bytes start: after the body's u64 offset. */
export const DATA_IMAGE_OFFSET = BODY_OFFSET + 8;
/** Ethernet frames are at least 60 bytes without the FCS; NICs pad shorter ones. */
export const MIN_FRAME_SIZE = 60;

export const FrameType = {
  Hello: 0x9001,
  Offer: 0x9102,
  Read: 0x9003,
  Data: 0x9104,
  Finished: 0x9005,
  Reset: 0x9106,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];

/** OFFER body: u64 ramdisk size, u64 image size, 32-byte SHA-256, 128-byte dataset. */
export const OFFER_BODY_SIZE = 176;
export const OFFER_DATASET_SIZE = 128;
export const SHA256_SIZE = 32;

/** The sled keeps 128 slots and asks for 1024-byte chunks. */
export const READ_SLOTS = 128;
export const CHUNK_SIZE = 1024;
/** READ body: u64 count, then 128 u64 offset slots. */
export const READ_BODY_SIZE = 8 + READ_SLOTS * 8;
/** Bytes one full batch of slots covers: 128 KiB. */
export const BATCH_BYTES = READ_SLOTS * CHUNK_SIZE;
/** The sled asks again for a slot whose request is older than this (netboot.md, "What the sled does"). */
export const REASK_AFTER_MS = 1000;

/** The sled drops DATA whose len is outside [8, 1476]. */
export const DATA_MIN_BODY = 8;
export const DATA_MAX_BODY = 1476;

export type Mac = Uint8Array;
const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);
export const BROADCAST_MAC: Mac = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

export interface Hello {
  type: "hello";
  /** The sled's greeting, as sent (ASCII in practice, no NUL). */
  text: Uint8Array;
}

export interface Offer {
  type: "offer";
  /** The ramdisk the sled creates: the image header's target_size. */
  ramdiskSize: bigint;
  /** Bytes the sled will fetch: the raw image_size. */
  imageSize: bigint;
  sha256: Uint8Array;
  /** The 128-byte dataset field as sent (NUL-padded). */
  dataset: Uint8Array;
}

export interface ReadRequest {
  type: "read";
  /** How many slots are being asked for (not the index of the last). */
  count: bigint;
  /** The 128 slots, in the sled's slot positions; unasked slots are 0. */
  slots: BigUint64Array;
}

export interface Data {
  type: "data";
  offset: bigint;
  /** Image bytes at offset; empty marks the end of the image. */
  bytes: Uint8Array;
}

export interface Finished {
  type: "finished";
}

export interface Reset {
  type: "reset";
}

export type Message = Hello | Offer | ReadRequest | Data | Finished | Reset;

/** A decoded frame: Ethernet addresses and the protocol message. */
export interface Frame {
  destination: Mac;
  source: Mac;
  message: Message;
}

export type Decoded = { ok: true; frame: Frame } | { ok: false; reason: string };

const TYPE_NAMES: Record<number, Message["type"]> = {
  [FrameType.Hello]: "hello",
  [FrameType.Offer]: "offer",
  [FrameType.Read]: "read",
  [FrameType.Data]: "data",
  [FrameType.Finished]: "finished",
  [FrameType.Reset]: "reset",
};

const TYPE_VALUES: Record<Message["type"], FrameTypeValue> = {
  hello: FrameType.Hello,
  offer: FrameType.Offer,
  read: FrameType.Read,
  data: FrameType.Data,
  finished: FrameType.Finished,
  reset: FrameType.Reset,
};

function bad(reason: string): Decoded {
  return { ok: false, reason };
}

/**
 * Decode one Ethernet frame (without FCS). Bytes beyond the header's `len`
 * are padding and ignored. Returns the reason for anything that is not a
 * well-formed frame of this protocol; never throws.
 *
 * @example
 * const decoded = decodeFrame(bytes);
 * if (decoded.ok && decoded.frame.message.type === "read") answer(decoded.frame);
 */
export function decodeFrame(bytes: Uint8Array): Decoded {
  if (bytes.length < BODY_OFFSET)
    return bad(`frame of ${bytes.length} bytes is shorter than the ${BODY_OFFSET} bytes of headers`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ethertype = view.getUint16(12);
  if (ethertype !== ETHERTYPE) return bad(`ethertype 0x${ethertype.toString(16).padStart(4, "0")} is not 0x1de0`);
  const magic = view.getUint32(ETHER_HEADER_SIZE);
  if (magic !== PROTOCOL_MAGIC) return bad(`magic 0x${magic.toString(16).padStart(8, "0")} is not 0x1de12345`);
  const typeValue = view.getUint32(ETHER_HEADER_SIZE + 4);
  const type = TYPE_NAMES[typeValue];
  if (type === undefined) return bad(`unknown type 0x${typeValue.toString(16)}`);
  const len = view.getUint32(ETHER_HEADER_SIZE + 8);
  const available = bytes.length - BODY_OFFSET;
  if (len > available) return bad(`${type} len ${len} is more than the ${available} body bytes in the frame`);
  const destination = copyBytes(bytes, 0, MAC_SIZE);
  const source = copyBytes(bytes, MAC_SIZE, 2 * MAC_SIZE);
  const body = bytes.subarray(BODY_OFFSET, BODY_OFFSET + len);
  const message = decodeBody(type, body, view);
  if (typeof message === "string") return bad(message);
  return { ok: true, frame: { destination, source, message } };
}

function decodeBody(type: Message["type"], body: Uint8Array, view: DataView): Message | string {
  const at = BODY_OFFSET;
  switch (type) {
    case "hello":
      return { type, text: copyBytes(body) };
    case "offer":
      if (body.length !== OFFER_BODY_SIZE) return `offer len ${body.length} is not ${OFFER_BODY_SIZE}`;
      return {
        type,
        ramdiskSize: view.getBigUint64(at),
        imageSize: view.getBigUint64(at + 8),
        sha256: copyBytes(body, 16, 16 + SHA256_SIZE),
        dataset: copyBytes(body, 16 + SHA256_SIZE),
      };
    case "read": {
      if (body.length !== READ_BODY_SIZE) return `read len ${body.length} is not ${READ_BODY_SIZE}`;
      const count = view.getBigUint64(at);
      if (count > BigInt(READ_SLOTS)) return `read count ${count} is more than ${READ_SLOTS} slots`;
      const slots = new BigUint64Array(READ_SLOTS);
      for (let slot = 0; slot < READ_SLOTS; slot++) slots[slot] = view.getBigUint64(at + 8 + slot * 8);
      return { type, count, slots };
    }
    case "data":
      if (body.length < DATA_MIN_BODY || body.length > DATA_MAX_BODY) {
        return `data len ${body.length} is outside ${DATA_MIN_BODY}..${DATA_MAX_BODY}`;
      }
      return { type, offset: view.getBigUint64(at), bytes: copyBytes(body, 8) };
    case "finished":
    case "reset":
      if (body.length !== 0) return `${type} len ${body.length} is not 0`;
      return { type };
  }
}

/**
 * The type field of a frame of this protocol (long enough for its headers,
 * ethertype 0x1DE0, the magic), or 0 for any other bytes. Reads in place and
 * allocates nothing: for the paths that sort every frame at line rate before
 * (or instead of) decoding it.
 *
 * @example peekFrameType(frame) === FrameType.Data
 */
export function peekFrameType(bytes: Uint8Array): number {
  if (bytes.length < BODY_OFFSET || bytes[12] !== ETHERTYPE >> 8 || bytes[13] !== (ETHERTYPE & 0xff)) return 0;
  if (readUint32(bytes, ETHER_HEADER_SIZE) !== PROTOCOL_MAGIC) return 0;
  return readUint32(bytes, ETHER_HEADER_SIZE + 4);
}

/**
 * A DATA frame read in place, for a receiver at line rate (about 115k frames
 * a second per gigabit sled): decodeFrame's rules for DATA (8 <= len <= 1476,
 * within the frame) without its copies and objects. After `read` returns
 * true, `offset` is the frame's offset and the image bytes are
 * `frame.subarray(start, end)`. The offset is a number: exact below 2^53, and
 * above it rounded but never below 2^53, so it can never equal an offset a
 * sled asks for.
 *
 * @example const reader = new DataFrameReader(); if (reader.read(frame)) ramdisk.set(frame.subarray(reader.start, reader.end), reader.offset);
 */
export class DataFrameReader {
  offset = 0;
  start = 0;
  end = 0;

  /** True for a well-formed DATA frame (then the fields describe it), false for anything else. */
  read(bytes: Uint8Array): boolean {
    if (peekFrameType(bytes) !== FrameType.Data) return false;
    const len = readUint32(bytes, ETHER_HEADER_SIZE + 8);
    if (len < DATA_MIN_BODY || len > DATA_MAX_BODY || BODY_OFFSET + len > bytes.length) return false;
    this.offset = readUint32(bytes, BODY_OFFSET) * 2 ** 32 + readUint32(bytes, BODY_OFFSET + 4);
    this.start = BODY_OFFSET + 8;
    this.end = BODY_OFFSET + len;
    return true;
  }
}

function readUint32(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) >>> 0;
}

/**
 * The offsets a READ asks for, in slot order: every non-zero slot, and offset
 * 0 when fewer than `count` slots are non-zero (docs/netboot.md, point 3: offset 0
 * is a real request only then). Answering only the first `count` slots would
 * answer the wrong offsets after a lost frame and stall the boot.
 *
 * @example requestedOffsets({ type: "read", count: 2n, slots }) // slots 5 and 90 set: [slots[5], slots[90]]
 */
export function requestedOffsets(read: ReadRequest): bigint[] {
  const offsets: bigint[] = [];
  for (const offset of read.slots) if (offset !== 0n) offsets.push(offset);
  if (BigInt(offsets.length) < read.count) offsets.unshift(0n);
  return offsets;
}

function frameOf(
  destination: Mac,
  source: Mac,
  type: Message["type"],
  bodySize: number,
): { frame: Uint8Array; view: DataView } {
  const frame = new Uint8Array(Math.max(MIN_FRAME_SIZE, BODY_OFFSET + bodySize));
  const view = new DataView(frame.buffer);
  writeHeaders(frame, view, destination, source, type, bodySize);
  return { frame, view };
}

function writeHeaders(
  frame: Uint8Array,
  view: DataView,
  destination: Mac,
  source: Mac,
  type: Message["type"],
  bodySize: number,
) {
  frame.set(destination, 0);
  frame.set(source, MAC_SIZE);
  view.setUint16(12, ETHERTYPE);
  view.setUint32(ETHER_HEADER_SIZE, PROTOCOL_MAGIC);
  view.setUint32(ETHER_HEADER_SIZE + 4, TYPE_VALUES[type]);
  view.setUint32(ETHER_HEADER_SIZE + 8, bodySize);
}

/**
 * Encode a message into a whole Ethernet frame, padded to 60 bytes as a NIC
 * would. Fields are written as given, so tests can build frames a sled would
 * refuse (an OFFER whose dataset is not NUL-terminated, say); decodeFrame is
 * where rules are enforced.
 *
 * @example inject(encodeFrame(sledMac, serverMac, { type: "finished" }));
 */
export function encodeFrame(destination: Mac, source: Mac, message: Message): Uint8Array {
  switch (message.type) {
    case "hello": {
      const { frame } = frameOf(destination, source, "hello", message.text.length);
      frame.set(message.text, BODY_OFFSET);
      return frame;
    }
    case "offer": {
      const { frame, view } = frameOf(destination, source, "offer", OFFER_BODY_SIZE);
      view.setBigUint64(BODY_OFFSET, message.ramdiskSize);
      view.setBigUint64(BODY_OFFSET + 8, message.imageSize);
      frame.set(message.sha256.subarray(0, SHA256_SIZE), BODY_OFFSET + 16);
      frame.set(message.dataset.subarray(0, OFFER_DATASET_SIZE), BODY_OFFSET + 16 + SHA256_SIZE);
      return frame;
    }
    case "read": {
      const { frame, view } = frameOf(destination, source, "read", READ_BODY_SIZE);
      view.setBigUint64(BODY_OFFSET, message.count);
      for (let slot = 0; slot < READ_SLOTS; slot++) {
        view.setBigUint64(BODY_OFFSET + 8 + slot * 8, message.slots[slot] ?? 0n);
      }
      return frame;
    }
    case "data": {
      const { frame, view } = frameOf(destination, source, "data", 8 + message.bytes.length);
      view.setBigUint64(BODY_OFFSET, message.offset);
      frame.set(message.bytes, BODY_OFFSET + 8);
      return frame;
    }
    case "finished":
    case "reset":
      return frameOf(destination, source, message.type, 0).frame;
  }
}

/**
 * A reusable DATA frame for the hot path of a boot server: the Ethernet and
 * protocol headers are written once, and each answer only fills the offset
 * and the image bytes, with no allocation per frame.
 *
 * @example
 * const writer = new DataFrameWriter(sledMac, serverMac);
 * link.inject(writer.answer(offset, image));
 */
export class DataFrameWriter {
  private readonly buffer = new Uint8Array(BODY_OFFSET + 8 + DATA_MAX_BODY);
  private readonly view = new DataView(this.buffer.buffer);
  /** The Ethernet and protocol headers up to the length field, the same in every frame. */
  private readonly header = this.buffer.subarray(0, ETHER_HEADER_SIZE + 8);
  /** Image bytes in the frame written last. */
  imageBytes = 0;

  constructor(destination: Mac, source: Mac) {
    writeHeaders(this.buffer, this.view, destination, source, "data", 0);
  }

  /**
   * The DATA frame that answers a READ of `offset` in `image` (docs/netboot.md,
   * "End of image"): the CHUNK_SIZE bytes at `offset`, fewer at the end of
   * the image, none at or past it. The bound is checked on the 64-bit
   * offset, so no offset a frame can carry reads outside `image`. A view
   * valid until the next call.
   *
   * @example writer.answer(1024n, image) // DATA for offset 1024 with image bytes 1024..2047
   * @example writer.answer(2n ** 64n - 1n, image) // DATA with no bytes: the end
   */
  answer(offset: bigint, image: Uint8Array): Uint8Array {
    // Compared with a constant so that no BigInt is made per frame: past 2^53
    // is past any image, and below it Number(offset) is exact.
    const start = offset > MAX_SAFE_OFFSET ? image.length : Math.min(Number(offset), image.length);
    return this.frame(offset, image.subarray(start, Math.min(start + CHUNK_SIZE, image.length)));
  }

  /**
   * The DATA frame for `imageBytes` bytes at offset `at` whose image bytes
   * already lie in `frame` from DATA_IMAGE_OFFSET on (read there from the
   * image, so they are never copied): this writer's headers, the length and
   * the offset are written around them. `at` is a byte offset inside an image
   * (below 2^53, so a Number holds it exactly; DATA for offsets past the end
   * is `frame()`'s). `frame` holds at least DATA_IMAGE_OFFSET + imageBytes
   * bytes, and MIN_FRAME_SIZE; the result is `frame` itself when it is
   * exactly as long as the DATA, else a view of it.
   *
   * @example const data = writer.wrap(4096, slot, 1024); // slot: a 1058-byte buffer, image bytes from byte 34
   */
  wrap(at: number, frame: Uint8Array, imageBytes: number): Uint8Array {
    this.imageBytes = imageBytes;
    frame.set(this.header);
    const bodySize = 8 + imageBytes;
    const end = BODY_OFFSET + bodySize;
    frame[ETHER_HEADER_SIZE + 8] = bodySize >>> 24;
    frame[ETHER_HEADER_SIZE + 9] = (bodySize >>> 16) & 0xff;
    frame[ETHER_HEADER_SIZE + 10] = (bodySize >>> 8) & 0xff;
    frame[ETHER_HEADER_SIZE + 11] = bodySize & 0xff;
    const high = Math.floor(at / 0x1_0000_0000);
    const low = at >>> 0;
    frame[BODY_OFFSET] = high >>> 24;
    frame[BODY_OFFSET + 1] = (high >>> 16) & 0xff;
    frame[BODY_OFFSET + 2] = (high >>> 8) & 0xff;
    frame[BODY_OFFSET + 3] = high & 0xff;
    frame[BODY_OFFSET + 4] = low >>> 24;
    frame[BODY_OFFSET + 5] = (low >>> 16) & 0xff;
    frame[BODY_OFFSET + 6] = (low >>> 8) & 0xff;
    frame[BODY_OFFSET + 7] = low & 0xff;
    if (end < MIN_FRAME_SIZE) frame.fill(0, end, MIN_FRAME_SIZE);
    const length = Math.max(end, MIN_FRAME_SIZE);
    return frame.length === length ? frame : frame.subarray(0, length);
  }

  /** The whole frame for `bytes` at `offset`: a view valid until the next call. */
  frame(offset: bigint, bytes: Uint8Array): Uint8Array {
    this.imageBytes = bytes.length;
    const bodySize = 8 + bytes.length;
    this.view.setUint32(ETHER_HEADER_SIZE + 8, bodySize);
    this.view.setBigUint64(BODY_OFFSET, offset);
    this.buffer.set(bytes, BODY_OFFSET + 8);
    const end = BODY_OFFSET + bodySize;
    if (end < MIN_FRAME_SIZE) this.buffer.fill(0, end, MIN_FRAME_SIZE);
    return this.buffer.subarray(0, Math.max(end, MIN_FRAME_SIZE));
  }
}

/** Encode a dataset name into the OFFER's 128-byte NUL-padded field. */
export function datasetField(name: string): Uint8Array {
  const field = new Uint8Array(OFFER_DATASET_SIZE);
  field.set(new TextEncoder().encode(name).subarray(0, OFFER_DATASET_SIZE - 1));
  return field;
}

/**
 * Parse a MAC address written as six hex pairs separated by `:` or `-`.
 * Returns null for anything else.
 *
 * @example parseMac("02:00:00:00:00:01") // Uint8Array [2, 0, 0, 0, 0, 1]
 */
export function parseMac(text: string): Mac | null {
  const parts = text.trim().split(/[:-]/);
  if (parts.length !== MAC_SIZE || !parts.every((part) => /^[0-9a-fA-F]{1,2}$/.test(part))) return null;
  return new Uint8Array(parts.map((part) => parseInt(part, 16)));
}

/** A MAC address as lower-case `aa:bb:cc:dd:ee:ff`. */
export function formatMac(mac: Mac): string {
  return Array.from(mac.subarray(0, MAC_SIZE), (byte) => byte.toString(16).padStart(2, "0")).join(":");
}

/** True when two MAC addresses are equal. */
export function sameMac(a: Mac, b: Mac): boolean {
  for (let i = 0; i < MAC_SIZE; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * A MAC address as one number (48 bits fit a float64 exactly), for map keys
 * that cost no string per frame.
 *
 * @example macKey(new Uint8Array([0, 0, 0, 0, 1, 2])) // 258
 */
export function macKey(mac: Mac): number {
  let key = 0;
  for (let i = 0; i < MAC_SIZE; i++) key = key * 256 + mac[i]!;
  return key;
}

/**
 * True for an address no station sends from: a group address (multicast or
 * broadcast: the low bit of the first byte, IEEE 802) or all zeros. A frame
 * from one is forged or broken, and an answer to it would go to every
 * station of the group, or nowhere.
 *
 * @example isUnicastSource(BROADCAST_MAC) // false
 */
export function isUnicastSource(mac: Mac): boolean {
  return (mac[0]! & 1) === 0 && macKey(mac) !== 0;
}
