/**
 * The mkimage job: wrap a raw pool file into a boot image (format.md) and
 * write its checksum file, without ever leaving a half-written file at
 * either path.
 *
 * The input is read once, in blocks, on the main thread, into shared memory
 * (lib/image/block-buffers.ts). Each block is shown to two other threads at once:
 * the SHA-256 thread (lib/image/block-hasher.ts), which hashes the blocks in
 * order, and the payload encoder (lib/image/payload-encoders.ts): stored (the bytes
 * as they are); zlib, which compresses on a pool of worker threads
 * (lib/image/zlib-stream.ts explains how one zlib stream is made in parallel); or
 * zstd, whose blocks are independent frames compressed on the same kind of
 * pool and followed by a seek table (lib/image/zstd-seekable.ts; a zstd image has
 * its own header version, docs/format.md). A block's buffer is read into
 * again only once both are done with it, and only a few blocks per worker
 * are in flight, so memory stays the same whatever the image size. Hashing
 * on its own thread keeps it out of the loop that feeds the compressors.
 * Payload bytes go, in order, to a temporary file beside the
 * output (lib/files/pending-file.ts), starting after the header; the 4096-byte
 * header is written last, at offset 0, once the sizes and the checksum are
 * known. The file is then synced and renamed over the output, so a reader
 * sees either the old file or the complete new one. Any failure, and
 * SIGINT, SIGTERM or SIGHUP, removes the temporary files.
 *
 * Everything the sled kernel would refuse is refused before any work starts
 * (format.md, "What the sled kernel accepts"); what only stops a netboot is
 * reported as a warning, since the image is still good for disk and recovery.
 */

import type { Stats } from "node:fs";
import { type FileHandle, open, realpath, stat } from "node:fs/promises";
import { systemReason, UserError } from "@ramdisk-tools/errors/errors.ts";
import {
  discardOnSignal,
  isSameFile,
  PendingFile,
  resolveTarget,
  type Target,
} from "@ramdisk-tools/files/pending-file.ts";
import { startProgress } from "@ramdisk-tools/progress/progress.ts";
import { BlockBuffers } from "./block-buffers.ts";
import { BlockHasher } from "./block-hasher.ts";
import {
  DEFAULT_DATASET,
  encodeHeader,
  encodeName,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  KERNEL_REFUSES,
  kernelRefusals,
  netbootRefusals,
  payloadSizeRefusal,
} from "./format.ts";
import { type Compression, encoderFor, type RawBlock } from "./payload-encoders.ts";
import type { MakeThreads } from "./threads.ts";
import { ZSTD_BOOT_NOTE } from "./zstd-image.ts";

/** What makeImage needs: the mkimage command line, in bytes and names. */
export interface MakeImageOptions {
  /** The raw pool file (`-i`). */
  input: string;
  /** The boot image to write (`-o`); replaced atomically if it exists. */
  output: string;
  /** Where to write the 32 raw bytes of the SHA-256 (`-O`), if anywhere. */
  checksumFile?: string;
  /** Ramdisk size in bytes (`-s` MiB times MIB). */
  targetSize: number;
  /** Image name (`-N`), at most 127 bytes. */
  imageName: string;
  /** Dataset name, at most 127 bytes; DEFAULT_DATASET if absent. */
  dataset?: string;
  compression: Compression;
  /** The entry points of the threads it starts, handed down by the caller. */
  threads: MakeThreads;
  /** Told about anything that is written anyway but deserves a word (e.g. cannot be netbooted). */
  onWarning?: (message: string) => void;
}

/**
 * Make the boot image `options.output` from the raw pool `options.input`,
 * and its checksum file if asked. Returns the header written. Throws
 * UserError (exit 1) with a one-line message, leaving no output and no
 * temporary file, for anything it refuses or fails at.
 *
 * @example
 * const header = await makeImage({ input: "pool.raw", output: "pool.img", checksumFile: "pool.csum",
 *   targetSize: 64 * MIB, imageName: "testing", compression: { codec: "zlib", level: 9, jobs: 2 },
 *   threads: IMAGE_THREADS });
 */
export async function makeImage(options: MakeImageOptions): Promise<Header> {
  const dataset = options.dataset ?? DEFAULT_DATASET;
  checkName("image name", options.imageName);
  checkName("dataset name", dataset);
  const input = await openInput(options.input);
  try {
    checkSizes(input.size, options.targetSize);
    const output = await resolveTarget("output", options.output);
    const checksumFile =
      options.checksumFile === undefined ? undefined : await resolveTarget("checksum file", options.checksumFile);
    checkDistinct(input, output, checksumFile);
    if (options.compression.codec === "zstd") options.onWarning?.(ZSTD_BOOT_NOTE);
    for (const reason of netbootRefusals({ imageSize: input.size, targetSize: options.targetSize })) {
      options.onWarning?.(`the image cannot be netbooted: ${reason}`);
    }
    return await writeImage(input, output, checksumFile, options, dataset);
  } finally {
    await input.handle.close();
  }
}

function checkName(what: string, name: string) {
  try {
    encodeName(what, name);
  } catch (error) {
    if (error instanceof ImageFormatError) throw new UserError(error.message);
    throw error;
  }
}

interface Input {
  path: string;
  realPath: string;
  handle: FileHandle;
  /** The size when opened: exactly this many bytes are read, or the job fails. */
  size: number;
  dev: number;
  ino: number;
}

async function openInput(path: string): Promise<Input> {
  // Look before opening: opening a FIFO would block, and a directory is a common slip.
  let stats: Stats;
  try {
    stats = await stat(path);
  } catch (error) {
    throw new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
  if (stats.isDirectory()) throw new UserError(`input ${path} is a directory, not a raw pool file`);
  if (!stats.isFile()) throw new UserError(`input ${path} is not a regular file`);
  let handle: FileHandle;
  try {
    handle = await open(path, "r");
  } catch (error) {
    throw new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
  try {
    // The size that counts is that of the file opened, whatever the path points at now.
    const opened = await handle.stat();
    if (!opened.isFile()) throw new UserError(`input ${path} is not a regular file`);
    return { path, realPath: await realpath(path), handle, size: opened.size, dev: opened.dev, ino: opened.ino };
  } catch (error) {
    await handle.close();
    throw error instanceof UserError ? error : new UserError(`cannot read input ${path}: ${systemReason(error)}`);
  }
}

/** The sled kernel's rules on the sizes (lib/image/format.ts kernelRefusals), checked before any work. */
function checkSizes(imageSize: number, targetSize: number) {
  const reasons = kernelRefusals({ imageSize, targetSize });
  if (reasons.length > 0) throw new UserError(`${KERNEL_REFUSES}: ${reasons.join("; ")}`);
}

function checkDistinct(input: Input, output: Target, checksumFile: Target | undefined) {
  for (const target of [output, checksumFile]) {
    if (target && isSameFile(target, input)) {
      throw new UserError(`${target.what} ${target.path} is the input file ${input.path}; refusing to overwrite it`);
    }
  }
  if (checksumFile && checksumFile.resolved === output.resolved) {
    throw new UserError(`checksum file ${checksumFile.path} is the same file as output ${output.path}`);
  }
}

async function writeImage(
  input: Input,
  output: Target,
  checksumFile: Target | undefined,
  options: MakeImageOptions,
  dataset: string,
): Promise<Header> {
  const pending: PendingFile[] = [];
  const stopWatching = discardOnSignal(pending);
  try {
    const image = await PendingFile.create(output, pending);
    const encoder = encoderFor(options.compression, options.threads);
    const progress = startProgress(options.compression.codec === "stored" ? "copying" : "compressing", input.size);
    const hasher = new BlockHasher(options.threads.blockHasher);
    let position = HEADER_SIZE;
    let sha256: Uint8Array;
    try {
      const buffers = new BlockBuffers(encoder.blockSize, { shared: true });
      const blocks = readBlocks(input, encoder.blockSize, buffers, hasher, (done) => progress.update(done));
      await encoder.encode(
        blocks,
        async (bytes) => {
          await image.write(bytes, position);
          position += bytes.length;
        },
        buffers,
      );
      sha256 = await hasher.digest();
    } finally {
      hasher.close();
      progress.finish();
    }
    const header: Header = {
      version: encoder.version,
      flags: encoder.flags,
      dataSize: position - HEADER_SIZE,
      imageSize: input.size,
      targetSize: options.targetSize,
      sha256,
      dataset,
      imageName: options.imageName,
    };
    // Never write what lookimage refuses: zlib makes input that does not compress a little larger.
    const refusal = payloadSizeRefusal(header);
    if (refusal) {
      throw new UserError(
        `cannot write a compressed image that lookimage refuses (${refusal}): ` +
          `${input.path} does not compress; drop -z for a plain image`,
      );
    }
    await image.write(encodeHeader(header), 0);
    await image.finish();
    if (checksumFile) {
      const checksum = await PendingFile.create(checksumFile, pending);
      await checksum.write(sha256, 0);
      await checksum.finish();
    }
    for (const file of pending) await file.publish();
    return header;
  } catch (error) {
    for (const file of pending) file.discard();
    throw error;
  } finally {
    stopWatching();
    await Promise.all(pending.map((file) => file.close()));
  }
}

/**
 * Read exactly `input.size` bytes in blocks of `blockSize`, handing each to
 * the hash thread in order. The next block is read while the caller works on
 * this one, so a block's buffer is filled again only once the encoder has
 * given it back and the hash thread is done with it (BlockBuffers). A file that shrinks or grows while being read is refused:
 * its header would describe bytes that are not the ones written.
 */
async function* readBlocks(
  input: Input,
  blockSize: number,
  buffers: BlockBuffers,
  hasher: BlockHasher,
  onProgress: (done: number) => void,
): AsyncGenerator<RawBlock> {
  const readAt = async (offset: number): Promise<Uint8Array> => {
    const length = Math.min(blockSize, input.size - offset);
    const bytes = buffers.take(length);
    let filled = 0;
    while (filled < length) {
      const { bytesRead } = await input.handle.read(bytes, filled, length - filled, offset + filled).catch((error) => {
        throw new UserError(`cannot read input ${input.path}: ${systemReason(error)}`);
      });
      if (bytesRead === 0) {
        throw new UserError(
          `input ${input.path} shrank from ${input.size} to ${offset + filled} bytes while being read`,
        );
      }
      filled += bytesRead;
    }
    return bytes;
  };
  let offset = 0;
  let reading = readAt(0);
  while (offset < input.size) {
    const bytes = await reading;
    offset += bytes.length;
    const last = offset === input.size;
    if (last) {
      const { bytesRead } = await input.handle.read(new Uint8Array(1), 0, 1, offset);
      if (bytesRead > 0) throw new UserError(`input ${input.path} grew beyond ${input.size} bytes while being read`);
    } else {
      reading = readAt(offset);
      // Its failure is thrown when awaited, at the next block; until then it is not unhandled.
      reading.catch(() => {});
    }
    buffers.hold(bytes, hasher.update(bytes));
    onProgress(offset);
    yield { bytes, last };
  }
}
