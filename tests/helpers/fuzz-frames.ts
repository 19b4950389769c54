/**
 * Netboot frames for the fuzz tests (tests/helpers/fuzz.ts): random valid
 * frames of every type, the edges of `len` and of offsets, and random
 * damage, shared by the fuzz tests of the frames and of the emulated sled.
 */

import {
  BODY_OFFSET,
  encodeFrame,
  type Mac,
  type Message,
  READ_SLOTS,
  type ReadRequest,
} from "@ramdisk-tools/protocol/frames.ts";
import { concat, flipBits, MAX_SAFE, nameField, type Random, SIZE_EDGES, U32_MAX, U64_MAX } from "./fuzz.ts";

/** The MACs the frames travel between: a sled, its server, and a stranger. */
export const SLED_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0xa0);
export const SERVER_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0x01);
export const OTHER_MAC: Mac = Uint8Array.of(0x02, 0x5e, 0, 0, 0, 0x66);
/** The type field of each of the six messages (docs/netboot.md). */
export const TYPE_VALUES = [0x9001, 0x9102, 0x9003, 0x9104, 0x9005, 0x9106];
/** Every `len` edge of netboot.md's table: 0, 8 (DATA), 176 (OFFER), 1032 (READ), 1476 (DATA), and past them. */
export const LEN_EDGES = [0, 1, 7, 8, 9, 175, 176, 177, 1031, 1032, 1033, 1475, 1476, 1477, 1500, 2 ** 31, U32_MAX];
/** Offsets a hostile READ or DATA may carry. */
export const OFFSET_EDGES: readonly bigint[] = [
  0n,
  1n,
  1023n,
  1024n,
  4096n,
  2n ** 32n,
  MAX_SAFE,
  MAX_SAFE + 1n,
  U64_MAX - 1023n,
  U64_MAX - 1n,
  U64_MAX,
];

/** A random message of any type, fields drawn near their edges. */
export function randomMessage(random: Random): Message {
  switch (random.scaled(6)) {
    case 0:
      return { type: "hello", text: random.bytes(random.scaled(random.chance(0.9) ? 40 : 1500)) };
    case 1:
      return {
        type: "offer",
        ramdiskSize: random.chance(0.5) ? random.pick(SIZE_EDGES) : random.u64(),
        imageSize: random.chance(0.5) ? random.pick(SIZE_EDGES) : random.u64(),
        sha256: random.bytes(32),
        dataset: random.chance(0.7) ? nameField("rpool/ROOT/ramdisk") : random.bytes(128),
      };
    case 2:
      return randomRead(random, random.scaled(READ_SLOTS + 1));
    case 3:
      return {
        type: "data",
        offset: random.chance(0.5) ? random.pick(OFFSET_EDGES) : BigInt(random.scaled(4096)) * 1024n,
        bytes: random.bytes(random.chance(0.3) ? 0 : random.scaled(1469)),
      };
    case 4:
      return { type: "finished" };
    default:
      return { type: "reset" };
  }
}

/** A READ of `count` with its slots full, scattered or empty. */
export function randomRead(random: Random, count: number): ReadRequest {
  const slots = new BigUint64Array(READ_SLOTS);
  const fill = random.scaled(3);
  for (let slot = 0; slot < READ_SLOTS; slot++) {
    if (fill === 0 || (fill === 1 && random.chance(0.1))) {
      slots[slot] = random.chance(0.3) ? random.pick(OFFSET_EDGES) : BigInt(random.scaled(2 ** 20)) * 1024n;
    }
  }
  return { type: "read", count: BigInt(count), slots };
}

/** A random message framed between random ones of the three MACs. */
export function randomFrame(random: Random): Uint8Array {
  const macs = [SLED_MAC, SERVER_MAC, OTHER_MAC];
  return encodeFrame(random.pick(macs), random.pick(macs), randomMessage(random));
}

/** Overwrite a big-endian u32, as the frames carry them. */
export function setU32(bytes: Uint8Array, offset: number, value: number): void {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(offset, value);
}

/** One random damage of a frame: bit flips, a cut, an extension, a new len or type, overwritten bytes. */
export function mutateFrame(random: Random, frame: Uint8Array): Uint8Array {
  switch (random.scaled(6)) {
    case 0:
      return flipBits(random, frame, 1 + random.scaled(6), 0, Math.min(frame.length, BODY_OFFSET + 24));
    case 1:
      return frame.slice(0, random.scaled(frame.length + 1));
    case 2:
      return concat(frame, random.bytes(1 + random.scaled(1600)));
    case 3: {
      const out = frame.slice();
      setU32(out, 22, random.chance(0.7) ? random.pick(LEN_EDGES) : random.next());
      return out;
    }
    case 4: {
      const out = frame.slice();
      setU32(out, 18, random.chance(0.5) ? 0x9000 + random.scaled(0x200) : random.next());
      return out;
    }
    default: {
      const out = frame.slice();
      const at = random.scaled(out.length);
      out.set(random.bytes(Math.min(out.length - at, 1 + random.scaled(16))), at);
      return out;
    }
  }
}
