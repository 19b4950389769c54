/**
 * The image-fill thread's work: fill and check one plain or zlib image
 * beside the sessions already serving it (lib/netboot/served-image.ts,
 * loadServedImage, starts the thread and serves the image meanwhile). A
 * plain image is whole in its file, so only its SHA-256 is checked, read
 * through the page cache as the sessions read it; a zlib image is inflated
 * into its temporary file by the inflate stage of lib/image on a thread of
 * its own, published to the sessions piece by piece, and hashed as it
 * comes. The SHA-256 of the raw image must equal the header's: that is what
 * a sled checks after the transfer, and what the OFFER promised.
 *
 * The thread runs below the sessions: checking an image must never slow the
 * sleds already booting from it. On Linux a thread's priority is its own,
 * and the inflate thread it starts inherits it; nice 10 leaves this work
 * about a tenth of a core its sessions want, so it still ends on a busy
 * machine.
 */

import { writeSync } from "node:fs";
import { setPriority } from "node:os";
import { oneLine, systemReason } from "@ramdisk-tools/errors/errors.ts";
import { type Header, ImageFormatError, isCompressed, toHex } from "@ramdisk-tools/image/format.ts";
import type { InflateOrder, InflateReport } from "@ramdisk-tools/image/inflate-stage.ts";
import { sendPayload } from "@ramdisk-tools/image/verify.ts";
import { PieceSender, receivePieces } from "@ramdisk-tools/threads/piece-queue.ts";
import { inflateDirectory, RawImageFill, type RawImageHandle, RawImageReader } from "./raw-image.ts";

/** Bytes read from an image file at a time: a plain image hashed here, a zstd payload loaded (served-image.ts). */
export const READ_CHUNK = 4 * 1024 * 1024;

/** How far below the sessions the thread runs (nice). */
const FILL_PRIORITY = 10;

/** What the image-fill thread is asked to do. */
export interface FillRequest {
  path: string;
  header: Header;
  handle: RawImageHandle;
  /** The loader's descriptor on the image file (for a plain image, the handle's own). */
  source: number;
  /** The entry point of the inflate stage (ImageThreads.inflateStage), for a zlib image. */
  inflateStage: string;
}

/** What the image-fill thread answers: nothing on success, else the reason. */
export type FillResult = { ok: true } | { ok: false; message: string };

/**
 * Fill and check the raw image of `request` (the image-fill thread does
 * this beside the sessions): a plain image is already whole in its file, so
 * only its SHA-256 is checked, read through the page cache as the sessions
 * read it; a compressed one goes through the inflate stage of
 * lib/image/verify.ts on a thread of its own (request.inflateStage), which stops
 * at the first output past image_size, and its output is written to the
 * handle's temporary file and hashed here while it inflates the next piece.
 * The handle's state then says whether it is whole or failed
 * (lib/netboot/raw-image.ts).
 *
 * @example await fillRawImage({ path, header, handle, source, inflateStage: threads.inflateStage });
 */
export async function fillRawImage(request: FillRequest): Promise<void> {
  const fill = new RawImageFill(request.handle);
  try {
    await fillAndCheck(request, fill);
  } catch (error) {
    fill.settle(false);
    throw error;
  }
  fill.settle(true);
}

async function fillAndCheck(request: FillRequest, fill: RawImageFill): Promise<void> {
  const { path, header } = request;
  const hasher = new Bun.CryptoHasher("sha256");
  const filled = isCompressed(header) ? await inflateInto(request, hasher, fill) : hashFile(request, hasher);
  if (filled !== header.imageSize) {
    throw new ImageFormatError(
      `${path}: payload holds ${filled} bytes of image, but the header's image size is ${header.imageSize}`,
    );
  }
  const digest = new Uint8Array(hasher.digest().buffer);
  if (toHex(digest) !== toHex(header.sha256)) {
    throw new ImageFormatError(
      `${path}: SHA-256 of the image is ${toHex(digest)}, but the header says ${toHex(header.sha256)}`,
    );
  }
}

/** Hash a plain image's file as it is served (its own descriptor on the loader's open file). */
function hashFile(request: FillRequest, hasher: Bun.CryptoHasher): number {
  const reader = new RawImageReader(request.handle);
  const buffer = new Uint8Array(READ_CHUNK);
  try {
    let done = 0;
    while (done < reader.size) {
      const length = Math.min(READ_CHUNK, reader.size - done);
      try {
        reader.read(buffer, 0, done, length);
      } catch (error) {
        throw new ImageFormatError(oneLine(error));
      }
      hasher.update(buffer.subarray(0, length));
      done += length;
    }
    return done;
  } finally {
    reader.close();
  }
}

async function inflateInto(request: FillRequest, hasher: Bun.CryptoHasher, fill: RawImageFill): Promise<number> {
  const { path, header, handle } = request;
  const inflater = new Worker(request.inflateStage);
  const toInflater = new MessageChannel();
  const fromInflater = new MessageChannel();
  const input = new PieceSender(toInflater.port1);
  const report = new Promise<InflateReport>((resolve, reject) => {
    inflater.onmessage = (event: MessageEvent<InflateReport>) => resolve(event.data);
    inflater.onerror = (event) => reject(new ImageFormatError(`${path}: inflate thread failed: ${event.message}`));
  });
  const order: InflateOrder = { input: toInflater.port2, output: fromInflater.port1, imageSize: header.imageSize };
  inflater.postMessage(order, [toInflater.port2, fromInflater.port1]);
  try {
    // The file as the loader opened it, even if it has been replaced since.
    const feeding = sendPayload(`/proc/self/fd/${request.source}`, header.dataSize, input).catch((error: unknown) => {
      throw new ImageFormatError(`${path}: ${oneLine(error)}`);
    });
    // A failed inflate stops taking input; its report says why, so the feeder's own error adds nothing.
    feeding.catch(() => {});
    let filled = 0;
    const storing = (async () => {
      for await (const piece of receivePieces(fromInflater.port2)) {
        writeWhole(handle.fd, piece, filled, path);
        filled += piece.length;
        // Published before it is hashed: sessions may send it while the hash catches up.
        fill.filledTo(filled);
        hasher.update(piece);
      }
    })();
    const inflated = await report;
    if (inflated.kind === "failed") throw new ImageFormatError(`${path}: ${inflated.reason}`);
    await Promise.all([feeding, storing]);
    if (inflated.consumed < header.dataSize) {
      throw new ImageFormatError(
        `${path}: zlib stream ends after ${inflated.consumed} of the ${header.dataSize} payload bytes`,
      );
    }
    return filled;
  } finally {
    input.close();
    toInflater.port1.close();
    fromInflater.port2.close();
    inflater.terminate();
  }
}

/** Write all of `bytes` at `position` of the inflated image's temporary file. */
function writeWhole(fd: number, bytes: Uint8Array, position: number, path: string): void {
  try {
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
  } catch (error) {
    throw new ImageFormatError(
      `${path}: cannot write the inflated image to ${inflateDirectory()}: ${systemReason(error)}`,
    );
  }
}

/**
 * The image-fill thread's answer to one request: the image filled and
 * checked (fillRawImage) at the thread's lower priority, or the reason it
 * could not be.
 *
 * @example self.onmessage = async (event) => self.postMessage(await fillInThread(event.data));
 */
export async function fillInThread(request: FillRequest): Promise<FillResult> {
  setPriority(FILL_PRIORITY);
  try {
    await fillRawImage(request);
    return { ok: true };
  } catch (error) {
    return { ok: false, message: oneLine(error) };
  }
}
