/**
 * The threads this package starts, each running one of its modules. Their
 * entry points import this package, so it cannot name them: whoever runs
 * the package (a program, a test, a benchmark) hands their URLs down, each
 * as `new Worker` takes it. A field left out is a compile error at the one
 * place that names them all.
 */

/** Every thread of the image package, by the module it runs. */
export interface ImageThreads {
  /** mkimage's SHA-256 thread (block-hasher.ts, hashJob). */
  blockHasher: string;
  /** A deflate thread of mkimage -z's pool (zlib-deflate.ts, deflateBlock). */
  zlibDeflate: string;
  /** A compressing thread of mkimage --zstd's pool (zstd-frames.ts, compressBlockJob). */
  zstdFrames: string;
  /** The SHA-256 stage of verifying a stored or zlib payload (hash-stage.ts). */
  hashStage: string;
  /** The inflate stage of verifying a zlib payload, or of filling a served zlib image (inflate-stage.ts). */
  inflateStage: string;
  /** One of the threads verifying a zstd payload (verify-zstd.ts). */
  verifyZstd: string;
}

/** The threads making an image starts (make.ts). */
export type MakeThreads = Pick<ImageThreads, "blockHasher" | "zlibDeflate" | "zstdFrames">;

/** The threads verifying a payload starts (verify.ts). */
export type VerifyThreads = Pick<ImageThreads, "hashStage" | "inflateStage" | "verifyZstd">;
