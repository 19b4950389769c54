/**
 * The SHA-256 stage of payload verification (lib/image/verify.ts) for a
 * stored or zlib payload, on a thread of its own: it takes the raw image's
 * pieces in image order from one queue, hashes them, and, for lookimage
 * --extract, writes each to the raw output file before acknowledging it
 * (writeRaw, which the zstd hasher of lib/image/verify-zstd.ts uses too). It
 * sees every raw byte once, in order, which is why the writing is here. Kept
 * apart from the pipeline so its thread loads only what it runs: each module
 * a thread imports is paid for at its start.
 */

import { closeSync, openSync, writeSync } from "node:fs";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { receivePieces, UpstreamFailure } from "@ramdisk-tools/threads/piece-queue.ts";

/** Where the SHA-256 stage writes the raw bytes: a file it opens by path, and its name for messages. */
export interface RawSink {
  path: string;
  name: string;
}

/** What the SHA-256 worker is given: the port its pieces arrive on, and where to write the raw bytes, if anywhere. */
export interface HashOrder {
  input: MessagePort;
  sink?: RawSink;
}

/**
 * What the SHA-256 worker reports: how many bytes it hashed, and their
 * digest; and, when it stopped before the end, why: a stage before it failed
 * (for zstd, the first bad block in image order), or the raw bytes could not
 * be written.
 */
export interface HashReport {
  bytes: number;
  sha256: Uint8Array;
  stopped: { by: "upstream" | "sink"; reason: string } | null;
}

/**
 * Hash every piece arriving on the order's port, writing each to the
 * sink's file first when there is one.
 *
 * @example self.onmessage = async (event) => postMessage(await hashStage(event.data));
 */
export async function hashStage(order: HashOrder): Promise<HashReport> {
  const hasher = new Bun.CryptoHasher("sha256");
  let bytes = 0;
  const report = (stopped: HashReport["stopped"]): HashReport => ({
    bytes,
    sha256: new Uint8Array(hasher.digest()),
    stopped,
  });
  let sink: number | null = null;
  try {
    if (order.sink) sink = openSync(order.sink.path, "r+");
    for await (const piece of receivePieces(order.input)) {
      hasher.update(piece);
      if (sink !== null) {
        const failure = writeRaw(sink, piece, bytes, order.sink!);
        if (failure !== null) return report({ by: "sink", reason: failure });
      }
      bytes += piece.length;
    }
  } catch (error) {
    if (error instanceof UpstreamFailure) return report({ by: "upstream", reason: error.message });
    throw error;
  } finally {
    if (sink !== null) closeSync(sink);
  }
  return report(null);
}

/**
 * Write all of `bytes` at `position` of the raw output `fd` (opened from
 * `sink`), however many calls it takes. Returns null, or why it could not,
 * in one line naming the file (a full disk, say).
 *
 * @example const failure = writeRaw(fd, piece, written, sink);
 */
export function writeRaw(fd: number, bytes: Uint8Array, position: number, sink: RawSink): string | null {
  try {
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
    return null;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).errno === undefined) throw error;
    return `cannot write ${sink.name}: ${systemReason(error)}`;
  }
}
