/**
 * What the emulated sled's tests share: images whose every byte differs from
 * its neighbours, their SHA-256 by python3's hashlib (not by us), and a sled
 * client under test, fed frames built here on a clock the test moves.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";
import {
  datasetField,
  decodeFrame,
  encodeFrame,
  type Frame,
  type Mac,
  type Message,
  type ReadRequest,
  requestedOffsets,
} from "@ramdisk-tools/protocol/frames.ts";
import { SledClient, type SledConfig } from "../../lib/sled/client.ts";
import { pythonWithInput } from "./common.ts";
import { SERVER, SLED } from "./frames.ts";

/**
 * SHA-256 of `bytes` by python3's hashlib.
 *
 * @example const checksum = pythonSha256(imageOf(MIB, 3));
 */
export function pythonSha256(bytes: Uint8Array): Uint8Array {
  const script = "import hashlib,sys; sys.stdout.write(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())";
  return Uint8Array.from(Buffer.from(pythonWithInput(bytes, script), "hex"));
}

/**
 * Bytes that differ at every offset, so a chunk written in the wrong place changes the digest.
 *
 * @example const image = imageOf(MIB + 1000, 4);
 */
export function imageOf(size: number, seed = 1): Uint8Array {
  let state = seed >>> 0 || 1;
  const image = new Uint8Array(size);
  for (let i = 0; i < size; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    image[i] = state & 0xff;
  }
  return image;
}

/** A sled under test: its session, the frames it sent (decoded), and a clock the test moves. */
export function testSled(checksum: Uint8Array, options: Partial<SledConfig> = {}) {
  const sent: Frame[] = [];
  const session = new SledClient({
    mac: SLED,
    checksum,
    send: (bytes) => {
      const decoded = decodeFrame(bytes);
      if (!decoded.ok) throw new Error(`the sled sent a malformed frame: ${decoded.reason}`);
      sent.push(decoded.frame);
    },
    ...options,
  });
  return {
    session,
    sent,
    ofType<T extends Message["type"]>(type: T): Extract<Message, { type: T }>[] {
      return sent
        .map((frame) => frame.message)
        .filter((message): message is Extract<Message, { type: T }> => message.type === type);
    },
    lastRead(): ReadRequest {
      const reads = this.ofType("read");
      if (reads.length === 0) throw new Error("no READ sent");
      return reads.at(-1)!;
    },
  };
}

/** An OFFER to the sled from `from`, with the fields given and the rest of a 1 MiB image in a 64 MiB ramdisk. */
export function offer(
  fields: { ramdiskSize?: number; imageSize?: number; sha256: Uint8Array; dataset?: Uint8Array },
  from: Mac = SERVER,
): Uint8Array {
  return encodeFrame(SLED, from, {
    type: "offer",
    ramdiskSize: BigInt(fields.ramdiskSize ?? 64 * MIB),
    imageSize: BigInt(fields.imageSize ?? MIB),
    sha256: fields.sha256,
    dataset: fields.dataset ?? datasetField("rpool/ROOT/ramdisk"),
  });
}

/** A DATA frame to the sled from `from`. */
export function data(offset: number, bytes: Uint8Array, from: Mac = SERVER): Uint8Array {
  return encodeFrame(SLED, from, { type: "data", offset: BigInt(offset), bytes });
}

/** What a correct server sends for one offset: up to 1024 image bytes, none at or past the end. */
export function answer(image: Uint8Array, offset: bigint): Uint8Array {
  const start = Number(offset);
  return data(start, image.subarray(Math.min(start, image.length), Math.min(start + 1024, image.length)));
}

/** Serve the sled's READs from `image` until it stops asking; `filter` may withhold answers. */
export function serve(
  sled: ReturnType<typeof testSled>,
  image: Uint8Array,
  now: number,
  filter: (offset: bigint) => boolean = () => true,
): void {
  let answered = 0;
  while (answered < sled.ofType("read").length) {
    const read = sled.ofType("read")[answered++]!;
    for (const offset of requestedOffsets(read)) if (filter(offset)) sled.session.receive(answer(image, offset), now);
  }
}
