/**
 * The zstd variant of the boot image (docs/format.md): the same
 * 4096-byte header as version 2, a payload in the zstd seekable format
 * (lib/image/zstd-seekable.ts), and a version number no version 2 reader accepts.
 *
 * The sled kernel and the control plane check `version == 2` and ignore flag
 * bits they do not know, so a flag alone would let them take a zstd payload
 * for zlib; the version is what keeps a zstd image from ever being booted by
 * anything but this project's bootserver. 0x8000_0002 has the high bit set:
 * official versions count up from 2 and will not reach that range, so the two
 * can never collide. The flag bit ZSTD names the codec, as COMPRESSED names
 * zlib, so lookimage can print it.
 *
 * The version and the flag are header fields, so they live with the header
 * in lib/image/format.ts. Reading the seek table and single blocks from an
 * image file lives here, at the edge; the payload's layout, block sizes and
 * levels are pure in lib/image/zstd-seekable.ts.
 */

import type { BunFile } from "bun";
import type { Header } from "./format.ts";
import {
  FLAG_COMPRESSED,
  FLAG_ZSTD,
  flagNames,
  HEADER_SIZE,
  ImageFormatError,
  VERSION,
  ZSTD_VERSION,
} from "./format.ts";
import type { SeekTable } from "./zstd-seekable.ts";
import { decodeSeekTable, SEEK_TABLE_FOOTER_SIZE, seekTableSize } from "./zstd-seekable.ts";

/** The versions lookimage and the bootserver read; pass to decodeHeader's `versions`. */
export const IMAGE_VERSIONS: readonly number[] = [VERSION, ZSTD_VERSION];

/** What mkimage and lookimage tell a person about a zstd image. */
export const ZSTD_BOOT_NOTE =
  "a zstd image boots only through this project's bootserver: the sled kernel and the control plane refuse its version";

/** How a payload is stored, from the header's version and flags. */
export type PayloadCodec = "stored" | "zlib" | "zstd";

/**
 * The payload's codec, refusing headers whose version and flags disagree
 * (docs/format.md): a version 2 header with ZSTD set, which the kernel would
 * boot by its COMPRESSED bit alone (inflating zlib, or taking the payload as
 * stored), and a zstd version without ZSTD or with COMPRESSED. Other bits of
 * a zstd header are shown by lookimage and otherwise ignored.
 *
 * @example if (payloadCodec(header) === "zstd") table = await readSeekTable(file, header);
 */
export function payloadCodec(header: Pick<Header, "version" | "flags">): PayloadCodec {
  const zlib = (header.flags & FLAG_COMPRESSED) !== 0n;
  const zstdVersion = `0x${ZSTD_VERSION.toString(16)}`;
  if (header.version === VERSION) {
    if ((header.flags & FLAG_ZSTD) !== 0n) {
      const kernelWould = zlib ? "inflate the payload as zlib" : "take the payload as a stored pool";
      throw new ImageFormatError(
        `flags ${flagNames(header.flags)} in a version 2 header: ZSTD belongs to version ${zstdVersion} only, ` +
          `and the sled kernel ignores that bit, so it would ${kernelWould}`,
      );
    }
    return zlib ? "zlib" : "stored";
  }
  if (header.version === ZSTD_VERSION) {
    const flags = flagNames(header.flags);
    if ((header.flags & FLAG_ZSTD) === 0n)
      throw new ImageFormatError(`a version ${zstdVersion} (zstd) header needs flag ZSTD; its flags are ${flags}`);
    if (zlib)
      throw new ImageFormatError(`a version ${zstdVersion} (zstd) header cannot have flag COMPRESSED: ${flags}`);
    return "zstd";
  }
  throw new ImageFormatError(`unsupported version ${header.version}`);
}

async function readPayload(file: BunFile, start: number, length: number): Promise<Uint8Array> {
  const bytes = await file.slice(HEADER_SIZE + start, HEADER_SIZE + start + length).bytes();
  if (bytes.length !== length) {
    throw new ImageFormatError(`${file.name ?? "image"} is shorter than its header says: truncated`);
  }
  return bytes;
}

/**
 * Read and check the seek table at the end of a zstd image's payload: two
 * small reads (the footer, then the table) whatever the image size.
 *
 * @example const table = await readSeekTable(Bun.file(path), header);
 */
export async function readSeekTable(file: BunFile, header: Pick<Header, "dataSize" | "imageSize">): Promise<SeekTable> {
  const footerLength = Math.min(header.dataSize, SEEK_TABLE_FOOTER_SIZE);
  const footer = await readPayload(file, header.dataSize - footerLength, footerLength);
  const tableSize = seekTableSize(footer, header.dataSize);
  const tail = await readPayload(file, header.dataSize - tableSize, tableSize);
  return decodeSeekTable(tail, { payloadSize: header.dataSize, imageSize: header.imageSize });
}
