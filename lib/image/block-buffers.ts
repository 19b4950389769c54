/**
 * Buffers of one size, used again and again: for the raw blocks mkimage
 * reads (an encoder gives each block's buffer back once done with it, and
 * the reader fills it again) and for zstd frames. A fresh megabyte buffer
 * costs Bun a page fault per 4 KiB and its zeroing: measured at 0.9 s of CPU
 * per 256 MiB on this machine, more than zstd level 2 takes to compress the
 * same bytes.
 *
 * Raw blocks live in shared memory (`shared`), because two threads read each
 * one at once: the SHA-256 thread and a compressing thread (lib/image/make.ts).
 * Neither owns it, so a block's buffer is taken again only once every user
 * is done: the encoder by giving it back, the hash thread by the promise
 * the buffer is held with (hold).
 */

/** A pool of buffers of `size` bytes, in shared memory or not. */
export class BlockBuffers {
  readonly #spare: ArrayBufferLike[] = [];
  readonly #holds = new Map<ArrayBufferLike, Promise<unknown>>();

  /**
   * @example const frames = new BlockBuffers(frameCapacity(ZSTD_BLOCK_SIZE));
   * @example const blocks = new BlockBuffers(ZSTD_BLOCK_SIZE, { shared: true });
   */
  constructor(
    readonly size: number,
    private readonly options: { shared?: boolean } = {},
  ) {}

  /** A buffer of `size` bytes, seen as its first `length`: a spare one when there is one. */
  take(length = this.size): Uint8Array {
    const buffer =
      this.#spare.pop() ?? (this.options.shared ? new SharedArrayBuffer(this.size) : new ArrayBuffer(this.size));
    return new Uint8Array(buffer, 0, length);
  }

  /**
   * `bytes` stays in use by someone else until `until` settles, whenever it
   * is given back. Only the settling counts: whoever made `until` reports
   * its failure (a block the hash thread failed on fails its digest).
   */
  hold(bytes: Uint8Array, until: Promise<unknown>): void {
    until.catch(() => {});
    this.#holds.set(bytes.buffer, until);
  }

  /** Done with `bytes`: its buffer may be taken again, once any hold on it has settled. */
  give(bytes: Uint8Array): void {
    const buffer = bytes.buffer;
    if (buffer.byteLength !== this.size) return;
    const hold = this.#holds.get(buffer);
    if (!hold) {
      this.#spare.push(buffer);
      return;
    }
    this.#holds.delete(buffer);
    const reuse = () => {
      this.#spare.push(buffer);
    };
    hold.then(reuse, reuse);
  }
}
