/**
 * The zstd part of payload verification (lib/image/verify.ts): a few threads
 * that share the frames of a seekable zstd payload and a ring of slots in
 * shared memory, one of which also hashes the raw blocks in image order.
 *
 * Frames are independent (docs/format.md, "Payload: seekable zstd"), so any
 * thread may decompress any of them; the SHA-256 is one chain, so one thread,
 * the hasher, takes the blocks in order. Frame n is decompressed into slot
 * n mod SLOTS. A thread claims the next frame from a shared counter, but only
 * once the hasher is done with the slot's previous block (claimed < hashed +
 * SLOTS), reads the frame from the image file itself, decompresses and checks
 * it against its seek table entry (decompressBlock, lib/image/zstd-frames.ts)
 * straight into its slot, and marks the slot ready. The hasher hashes the
 * next block as soon as its slot is ready; until then it claims and
 * decompresses a frame itself, and only when none can be claimed does it
 * wait. So the work splits between the threads by itself: the hasher
 * decompresses whatever share the hashing leaves it time for.
 *
 * Everything goes through shared memory and Atomics, with no message per
 * block. An earlier design sent every block down a message queue to a SHA-256
 * thread of its own (lib/threads/piece-queue.ts); on a 256 MiB image with two
 * cores its three threads spent about 0.6 s of CPU against 0.4 s for the same
 * decompressing and hashing on one thread, waiting on each other's messages,
 * and a block was always hashed on another core than the one that wrote it.
 *
 * A block that fails its check (or whose frame the file cuts short) is
 * marked failed in its slot, with the reason written into the slot's bytes;
 * the hasher meets it in image order, so the verdict names the first bad
 * block whichever thread found its own first. The hasher then sets the stop
 * word, which the others look at before claiming, and wakes them.
 *
 * The raw image, for lookimage --extract, is written by the hasher: it sees
 * every raw byte once, in order.
 */

import { closeSync, openSync, readSync } from "node:fs";
import { ImageFormatError } from "./format.ts";
import { type HashReport, type RawSink, writeRaw } from "./hash-stage.ts";
import { decompressBlock } from "./zstd-frames.ts";
import {
  CLAIMED,
  failedState,
  HASHED,
  REASON_BYTES,
  readyState,
  ringViews,
  STOP,
  slotState,
  type ZstdRing,
} from "./zstd-ring.ts";
import type { Block } from "./zstd-seekable.ts";

/** What each thread of a zstd verification is given. */
export interface ZstdVerifyOrder {
  /** The image file, which every thread opens and reads itself. */
  path: string;
  /** Where the payload starts in the file (HEADER_SIZE): a frame's file offset is this plus its own. */
  payloadStart: number;
  /** Every block of the seek table, in image order. */
  blocks: readonly Block[];
  ring: ZstdRing;
  /** True for the one thread that hashes the blocks in order (and writes them to `sink`). */
  hasher: boolean;
  /** Where the hasher writes the raw image, if anywhere. */
  sink?: RawSink;
  /**
   * Payload bytes read so far by all the threads, for progress: element 0 of
   * a BigInt64Array over this memory, added to atomically.
   */
  progress: SharedArrayBuffer;
}

/** What a thread reports when it stops: the hasher its HashReport, the others how many frames they decompressed. */
export type ZstdVerifyReport = { kind: "hashed"; report: HashReport } | { kind: "decompressed"; frames: number };

/**
 * Run one thread of a zstd verification (see the top of this module) until
 * the payload is hashed, or, for a helper, until no frame is left to claim
 * or the hasher stops.
 *
 * @example self.onmessage = (event) => postMessage(zstdVerifyStage(event.data));
 */
export function zstdVerifyStage(order: ZstdVerifyOrder): ZstdVerifyReport {
  const thread = new RingThread(order);
  try {
    if (!order.hasher) {
      let frames = 0;
      for (let frame = thread.claim(true); frame >= 0; frame = thread.claim(true)) {
        thread.decompress(frame);
        frames++;
      }
      return { kind: "decompressed", frames };
    }
    return { kind: "hashed", report: thread.hashAll(order.sink) };
  } finally {
    thread.close();
  }
}

/** One thread's view of the ring, and its own file descriptor and frame buffer. */
class RingThread {
  readonly #order: ZstdVerifyOrder;
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #progress: BigInt64Array;
  readonly #file: number;
  readonly #frame: Uint8Array;

  constructor(order: ZstdVerifyOrder) {
    this.#order = order;
    const { words, bytes } = ringViews(order.ring);
    this.#words = words;
    this.#bytes = bytes;
    this.#progress = new BigInt64Array(order.progress);
    this.#frame = new Uint8Array(order.blocks.reduce((most, block) => Math.max(most, block.compressedSize), 0));
    this.#file = openSync(order.path, "r");
  }

  close(): void {
    closeSync(this.#file);
  }

  /**
   * The next frame to decompress, or -1 when every frame is claimed or the
   * verification stopped. When the ring is full (the hasher is SLOTS blocks
   * behind), wait for it if `wait`, else return -1 at once.
   */
  claim(wait: boolean): number {
    const words = this.#words;
    for (;;) {
      if (Atomics.load(words, STOP) !== 0) return -1;
      const next = Atomics.load(words, CLAIMED);
      if (next >= this.#order.blocks.length) return -1;
      const hashed = Atomics.load(words, HASHED);
      if (next >= hashed + this.#order.ring.slots) {
        if (!wait) return -1;
        Atomics.wait(words, HASHED, hashed);
        continue;
      }
      if (Atomics.compareExchange(words, CLAIMED, next, next + 1) === next) return next;
    }
  }

  /** Read, decompress and check `frame` into its slot, and mark the slot ready (or failed, with the reason). */
  decompress(frame: number): void {
    const block = this.#order.blocks[frame]!;
    const slot = frame % this.#order.ring.slots;
    const reason = this.#fill(block, this.#slotBytes(slot));
    const state = slotState(slot);
    if (reason === null) {
      Atomics.store(this.#words, state, readyState(frame));
    } else {
      const encoded = new TextEncoder().encode(reason).subarray(0, REASON_BYTES);
      this.#slotBytes(slot).set(encoded);
      Atomics.store(this.#words, state + 1, encoded.length);
      Atomics.store(this.#words, state, failedState(frame));
    }
    Atomics.notify(this.#words, state);
  }

  /** Read `block`'s frame and decompress it into `out`; the reason it failed, or null. */
  #fill(block: Block, out: Uint8Array): string | null {
    const frame = this.#frame.subarray(0, block.compressedSize);
    const start = this.#order.payloadStart + block.compressedOffset;
    for (let filled = 0; filled < frame.length; ) {
      const read = readSync(this.#file, frame, filled, frame.length - filled, start + filled);
      if (read === 0) return `file ends inside block ${block.index}'s frame, at byte ${start + filled}`;
      filled += read;
    }
    Atomics.add(this.#progress, 0, BigInt(frame.length));
    try {
      decompressBlock(frame, block, out);
      return null;
    } catch (error) {
      if (error instanceof ImageFormatError) return error.message;
      throw error;
    }
  }

  /** Hash every block in order, decompressing frames while the next block is not ready; stop at the first failed one. */
  hashAll(sink: RawSink | undefined): HashReport {
    const words = this.#words;
    const { blocks, ring } = this.#order;
    const hasher = new Bun.CryptoHasher("sha256");
    let bytes = 0;
    const report = (stopped: HashReport["stopped"]): HashReport => {
      // Whatever happened, the helpers stop claiming and wake from any wait.
      Atomics.store(words, STOP, 1);
      Atomics.notify(words, HASHED);
      return { bytes, sha256: new Uint8Array(hasher.digest()), stopped };
    };
    const output = sink ? openSync(sink.path, "r+") : null;
    try {
      for (let frame = 0; frame < blocks.length; frame++) {
        const slot = frame % ring.slots;
        const state = slotState(slot);
        for (;;) {
          const now = Atomics.load(words, state);
          if (now === readyState(frame)) break;
          if (now === failedState(frame)) {
            const reason = new TextDecoder().decode(this.#slotBytes(slot).subarray(0, Atomics.load(words, state + 1)));
            return report({ by: "upstream", reason });
          }
          const own = this.claim(false);
          if (own >= 0) this.decompress(own);
          else Atomics.wait(words, state, now);
        }
        const raw = this.#slotBytes(slot).subarray(0, blocks[frame]!.decompressedSize);
        hasher.update(raw);
        if (output !== null) {
          const written = writeRaw(output, raw, bytes, sink!);
          if (written !== null) return report({ by: "sink", reason: written });
        }
        bytes += raw.length;
        Atomics.store(words, HASHED, frame + 1);
        Atomics.notify(words, HASHED);
      }
      return report(null);
    } finally {
      if (output !== null) closeSync(output);
    }
  }

  #slotBytes(slot: number): Uint8Array {
    const { slotSize } = this.#order.ring;
    return this.#bytes.subarray(slot * slotSize, (slot + 1) * slotSize);
  }
}
