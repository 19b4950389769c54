/**
 * The arguments of one sendmmsg(2) call, made once per link and reused for
 * every batch: what lets `PcapLink.injectBatch` hand the 128 answers to one
 * READ to the kernel in one system call instead of one pcap_inject each.
 */

import { ptr } from "bun:ffi";

/** Frames per sendmmsg(2) call; the kernel takes at most 1024 (UIO_MAXIOV). */
export const SEND_BATCH_MAX = 256;
/** sizeof(struct mmsghdr) on LP64. */
const MMSGHDR_SIZE = 64;

/**
 * The arguments of sendmmsg(2) for up to SEND_BATCH_MAX frames, made once and
 * reused: an array of struct mmsghdr (64 bytes on LP64: a struct msghdr of 56
 * whose msg_iov at byte 16 points to the message's own struct iovec and whose
 * msg_iovlen at byte 24 is 1, then the kernel's msg_len) and the array of
 * struct iovec { void *iov_base; size_t iov_len; } that `fill` points at the
 * frames. Pointers are below 2^53, so they are written as two 32-bit halves.
 *
 * @example const batch = new SendBatch(); const count = batch.fill(frames, 0); libc().sendmmsg(fd, batch.messages, count, 0);
 */
export class SendBatch {
  readonly messages = new Uint8Array(SEND_BATCH_MAX * MMSGHDR_SIZE);
  readonly #vectors = new Uint32Array(SEND_BATCH_MAX * 4);

  constructor() {
    const messages = new DataView(this.messages.buffer);
    const vectors = ptr(this.#vectors);
    for (let i = 0; i < SEND_BATCH_MAX; i++) {
      messages.setBigUint64(i * MMSGHDR_SIZE + 16, BigInt(vectors + i * 16), true);
      messages.setBigUint64(i * MMSGHDR_SIZE + 24, 1n, true);
    }
  }

  /** Point the vectors at frames[first...], as many as fit; returns how many. */
  fill(frames: readonly Uint8Array[], first: number): number {
    const count = Math.min(frames.length - first, SEND_BATCH_MAX);
    const vectors = this.#vectors;
    for (let i = 0; i < count; i++) {
      const frame = frames[first + i]!;
      const address = ptr(frame);
      vectors[i * 4] = address % 0x1_0000_0000;
      vectors[i * 4 + 1] = Math.floor(address / 0x1_0000_0000);
      vectors[i * 4 + 2] = frame.length;
      vectors[i * 4 + 3] = 0;
    }
    return count;
  }
}
