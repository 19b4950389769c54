/**
 * SHA-256 of a stream of blocks on a thread of its own, for mkimage: the
 * main thread reads each block into shared memory and posts only a view of
 * it, the hash thread (hashJob) adds it to its digest and
 * answers, and the block's buffer is reused once it has answered
 * (BlockBuffers.hold). Hashing thus overlaps reading and compressing instead
 * of sitting in the main thread's loop between them: SHA-256 runs at about
 * 1.9 GB/s here, 0.14 s of a 256 MiB image that the main thread would
 * otherwise spend before it could hand the next block on.
 *
 * One thread, and jobs in order: SHA-256 is a chain over the bytes, so the
 * blocks must be added in image order, which a one-thread pool keeps.
 */

import { WorkerPool } from "@ramdisk-tools/threads/pool.ts";

/** A job for the hash thread: add a block (a view of shared memory), or finish with the digest. */
export type HashJob = { kind: "update"; bytes: Uint8Array } | { kind: "digest" };

/**
 * What the hash thread does with a job, on its one running hasher: nothing
 * to answer for an update; the 32-byte digest, which starts a new hasher.
 *
 * @example self.onmessage = (event) => self.postMessage({ ok: true, value: hashJob(event.data) });
 */
export function hashJob(job: HashJob): Uint8Array | null {
  hasher ??= new Bun.CryptoHasher("sha256");
  if (job.kind === "update") {
    hasher.update(job.bytes);
    return null;
  }
  const digest = new Uint8Array(hasher.digest());
  hasher = undefined;
  return digest;
}

/** The running digest of this thread's blocks since the last digest job. */
let hasher: Bun.CryptoHasher | undefined;

/**
 * The main thread's side: blocks in, in order; the digest at the end.
 *
 * @example
 * const hash = new BlockHasher(threads.blockHasher);
 * buffers.hold(block, hash.update(block));
 * const sha256 = await hash.digest();
 * hash.close();
 */
export class BlockHasher {
  readonly #pool: WorkerPool<HashJob, Uint8Array | null>;

  /** `entryPoint`: the hash thread's (ImageThreads.blockHasher), which runs hashJob. */
  constructor(entryPoint: string) {
    this.#pool = new WorkerPool(entryPoint, 1);
  }

  /** Add `bytes`, which must be in shared memory and stay unchanged until the promise settles. */
  update(bytes: Uint8Array): Promise<unknown> {
    if (!(bytes.buffer instanceof SharedArrayBuffer)) throw new TypeError("BlockHasher hashes shared memory only");
    return this.#pool.run({ kind: "update", bytes });
  }

  /** The SHA-256 of every block added, in order. */
  async digest(): Promise<Uint8Array> {
    return (await this.#pool.run({ kind: "digest" }))!;
  }

  close(): void {
    this.#pool.close();
  }
}
