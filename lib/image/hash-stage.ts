/**
 * The SHA-256 stage of payload verification (lib/image/verify.ts), run by
 * workers/sha256.ts: it takes the raw image's pieces in image order from one
 * link, or in turn from the links of parallel stages, hashes them, and,
 * for lookimage --extract, writes each to the raw output file before
 * acknowledging it. It sees every raw byte once, in order, which is why the
 * writing is here. Kept apart from the pipeline so its thread loads only
 * what it runs: each module a thread imports is paid for at its start.
 */

import { closeSync, openSync, writeSync } from "node:fs";
import { systemReason } from "@ramdisk-tools/cli/errors.ts";
import { receiveInTurn, UpstreamFailure } from "@ramdisk-tools/threads/link.ts";

/** Where the SHA-256 stage writes the raw bytes: a file it opens by path, and its name for messages. */
export interface RawSink {
  path: string;
  name: string;
}

/**
 * What the SHA-256 worker is given: the port its pieces arrive on, or the
 * ports of parallel stages to take pieces from in turn (receiveInTurn); and
 * where to write the raw bytes, if anywhere.
 */
export interface HashOrder {
  input: MessagePort | MessagePort[];
  sink?: RawSink;
}

/**
 * What the SHA-256 worker reports: how many bytes it hashed, and their
 * digest; and, when it stopped before the end, why: a stage before it failed
 * (the first failure in image order, for parallel stages), or the raw bytes
 * could not be written.
 */
export interface HashReport {
  bytes: number;
  sha256: Uint8Array;
  stopped: { by: "upstream" | "sink"; reason: string } | null;
}

/**
 * Hash every piece arriving on the order's port(s), writing each to the
 * sink's file first when there is one.
 *
 * @example self.onmessage = async (event) => postMessage(await hashStage(event.data));
 */
export async function hashStage(order: HashOrder): Promise<HashReport> {
  const hasher = new Bun.CryptoHasher("sha256");
  const inputs = Array.isArray(order.input) ? order.input : [order.input];
  let bytes = 0;
  const report = (stopped: HashReport["stopped"]): HashReport => ({
    bytes,
    sha256: new Uint8Array(hasher.digest()),
    stopped,
  });
  let sink: number | null = null;
  try {
    if (order.sink) sink = openSync(order.sink.path, "r+");
    for await (const piece of receiveInTurn(inputs)) {
      hasher.update(piece);
      if (sink !== null) writeAll(sink, piece, bytes);
      bytes += piece.length;
    }
  } catch (error) {
    if (error instanceof UpstreamFailure) return report({ by: "upstream", reason: error.message });
    if (order.sink && (error as NodeJS.ErrnoException).errno !== undefined) {
      return report({ by: "sink", reason: `cannot write ${order.sink.name}: ${systemReason(error)}` });
    }
    throw error;
  } finally {
    if (sink !== null) closeSync(sink);
  }
  return report(null);
}

/** Write all of `bytes` at `position`, however many calls it takes. */
function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
