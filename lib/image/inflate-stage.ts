/**
 * The inflate stage of payload verification (lib/image/verify.ts), on a
 * thread of its own, and of the bootserver's fill of a served image
 * (lib/netboot/served-image.ts): a zlib stream arrives in pieces on one queue and
 * leaves as raw image bytes on another. A zlib stream is one long chain of
 * back-references, so it is inflated on one thread.
 *
 * The header is not trusted: the inflater is never given room for more than
 * `image_size + 1` bytes in all, so a decompression bomb stops one byte past
 * the header's claim, and a stream that is corrupt or ends before its end
 * marker is reported with zlib's own words.
 */

import { createInflate } from "node:zlib";
import { PieceSender, receivePieces } from "@ramdisk-tools/threads/piece-queue.ts";
import { CodecError, NativeCodec } from "./native-codec.ts";

/** Raw image bytes per piece of inflater output. */
export const INFLATE_CHUNK = 1024 * 1024;

/** What the inflate worker is given: ports for compressed input and raw output, and the size claimed. */
export interface InflateOrder {
  input: MessagePort;
  output: MessagePort;
  imageSize: number;
}

/**
 * What the inflate worker reports: on success the payload bytes the zlib
 * stream took up (fewer than were sent means bytes after its end) and the
 * raw bytes produced; on failure the reason and the raw bytes produced.
 */
export type InflateReport =
  | { kind: "inflated"; consumed: number; produced: number }
  | { kind: "failed"; reason: string; produced: number };

/**
 * Inflate the zlib stream arriving on the order's input port and send the
 * raw bytes to its output port in INFLATE_CHUNK pieces, never producing more
 * than `imageSize + 1` bytes.
 *
 * @example self.onmessage = async (event) => postMessage(await inflateStage(event.data));
 */
export async function inflateStage(order: InflateOrder): Promise<InflateReport> {
  const output = new PieceSender(order.output);
  const inflater = new NativeCodec(createInflate());
  // A bomb stops here: the inflater is never given room past this.
  const limit = order.imageSize + 1;
  let received = 0;
  let produced = 0;
  let streamEnd: number | null = null;
  let out: Uint8Array | null = null;
  let filled = 0;

  // Inflate `input` (Z_FINISH when it is the end) until it is used up, the
  // stream ends, or the limit is reached; send each output piece once full.
  const inflateAll = async (input: Uint8Array, finish: boolean) => {
    let offset = 0;
    for (;;) {
      if (!out) {
        await output.room();
        out = output.buffer(INFLATE_CHUNK);
        filled = 0;
      }
      const room = Math.min(out.length - filled, limit - produced);
      const step = inflater.step(input.subarray(offset), out.subarray(filled, filled + room), finish);
      offset += step.consumed;
      filled += step.produced;
      produced += step.produced;
      if (filled === out.length) {
        output.send(out);
        out = null;
      }
      if (produced >= limit) return;
      if (step.produced === room) continue; // out of room, not of input: there may be more
      // zlib stopped with room left: the input is used up, or the stream has
      // ended (then any input left is trailing bytes).
      if (offset < input.length || finish) streamEnd = received - (input.length - offset);
      return;
    }
  };

  try {
    for await (const piece of receivePieces(order.input)) {
      received += piece.length;
      if (streamEnd === null) await inflateAll(piece, false);
      if (produced >= limit) break;
    }
    if (streamEnd === null && produced < limit) await inflateAll(new Uint8Array(0), true);
  } catch (error) {
    if (error instanceof CodecError) {
      const where = `after ${inflater.consumed} payload bytes`;
      const reason = error.message.startsWith("unexpected end of file")
        ? `zlib stream ends early, ${where}: ${error.message}`
        : `zlib stream is corrupt, ${where}: ${error.message}`;
      return { kind: "failed", reason, produced };
    }
    throw error;
  } finally {
    inflater.close();
  }
  if (produced >= limit) {
    return {
      kind: "failed",
      reason: `zlib stream inflates to more than ${order.imageSize} bytes, but header says there should be ${order.imageSize}`,
      produced,
    };
  }
  // The last, partly filled piece (there was room when its buffer was taken).
  if (out && filled > 0) output.send((out as Uint8Array).subarray(0, filled));
  output.end();
  return { kind: "inflated", consumed: streamEnd ?? received, produced };
}
