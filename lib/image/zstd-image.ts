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
 * Reading the seek table and single blocks from an image file lives here, at
 * the edge; the format itself is pure in lib/image/zstd-seekable.ts.
 */

import type { BunFile } from "bun";
import type { Header } from "./format.ts";
import {
  FLAG_COMPRESSED,
  FLAG_ZSTD,
  flagNames,
  HEADER_SIZE,
  ImageFormatError,
  MIB,
  VERSION,
  ZSTD_VERSION,
} from "./format.ts";
import type { SeekTable } from "./zstd-seekable.ts";
import { decodeSeekTable, SEEK_TABLE_FOOTER_SIZE, seekTableSize } from "./zstd-seekable.ts";

export { FLAG_ZSTD, flagNames, ZSTD_VERSION } from "./format.ts";
/** The versions lookimage and the bootserver read; pass to decodeHeader's `versions`. */
export const IMAGE_VERSIONS: readonly number[] = [VERSION, ZSTD_VERSION];

/**
 * Raw bytes per frame. A multiple of the sled's 128 KiB batch, so a batch of
 * READs never straddles two blocks. Every frame starts with no history, so
 * smaller frames give a larger payload: on a tar of /usr/bin and
 * /usr/lib/x86_64-linux-gnu (256 MiB, level 3) 1 MiB frames came out 1.7%
 * larger than `zstd -3` compressing the whole file as one stream, 2 MiB
 * frames 0.4% larger, 4 MiB frames 0.5% smaller; on the generated sample all
 * three are smaller than the CLI's. mkimage's time was the same for the three
 * (bench/mkimage.ts, ten alternating runs each). What larger blocks cost is
 * at the bootserver: a sled's first DATA waits for 4 MiB to be decompressed
 * (about 3 ms), and its cache holds fewer blocks for its budget
 * (lib/netboot/block-cache.ts, DEFAULT_CACHE_BYTES).
 */
export const ZSTD_BLOCK_SIZE = 4 * MIB;
/**
 * mkimage's default level, chosen by measurement (bench/mkimage.ts, 256 MiB
 * in 1 MiB frames): level 3, zstd's own default. Level 2 was 20-25% cheaper
 * but 4.4% larger than zlib level 9 on a tar of /usr/bin and
 * /usr/lib/x86_64-linux-gnu; level 3 is 0.8% smaller there, at 8-26% more
 * CPU, still many times faster than zlib level 9. On the generated sample
 * (whose binaries are short repeats, which zlib's lazy matching finds and
 * zstd's fast levels skip) no level below 7 matches zlib's size.
 */
export const ZSTD_DEFAULT_LEVEL = 3;

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
