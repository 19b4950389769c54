/**
 * What lookimage reports about an image: the header read and checked from
 * the file, the lines the existing Rust lookimage prints (byte for byte:
 * tests/vectors/*.lookimage.txt), the warnings about where the image would
 * be refused, and the --json object (docs/lookimage-json.md). Pure functions
 * but for readHeader, which reads the file's first 4096 bytes.
 */

import type { Stats } from "node:fs";
import { stat } from "node:fs/promises";
import { systemReason, UserError } from "@ramdisk-tools/cli/errors.ts";
import {
  decodeHeader,
  FLAG_COMPRESSED,
  flagNames,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  KERNEL_REFUSES,
  kernelRefusals,
  nameDamage,
  netbootRefusals,
  toHex,
} from "./format.ts";
import type { PayloadVerdict } from "./verify.ts";
import { IMAGE_VERSIONS, type PayloadCodec, payloadCodec, ZSTD_BOOT_NOTE } from "./zstd-image.ts";

/**
 * Read and decode the header of the image at `path` (version 2 or zstd),
 * checking the file's length against it and its flags against its version.
 */
export async function readHeader(path: string): Promise<{ header: Header; codec: PayloadCodec }> {
  let info: Stats;
  try {
    info = await stat(path);
  } catch (error) {
    throw new UserError(`cannot open ${path}: ${systemReason(error)}`);
  }
  if (info.isDirectory()) throw new UserError(`${path} is a directory, not an image file`);
  if (!info.isFile()) throw new UserError(`${path} is not a regular file`);
  const file = Bun.file(path);
  let bytes: Uint8Array;
  try {
    bytes = await file.slice(0, HEADER_SIZE).bytes();
  } catch (error) {
    throw new UserError(`cannot read ${path}: ${systemReason(error)}`);
  }
  try {
    const header = decodeHeader(bytes, { fileSize: info.size, versions: IMAGE_VERSIONS });
    return { header, codec: payloadCodec(header) };
  } catch (error) {
    if (error instanceof ImageFormatError) throw new UserError(`${path}: ${error.message}`);
    throw error;
  }
}

/**
 * `ratio = X.XXx` as Rust's `{:.2}` formats image_size / data_size: the
 * exact binary value rounded, ties to even. JavaScript's toFixed rounds ties
 * up; a double is exactly halfway at two decimals only when its fraction is
 * a whole number of eighths (.125, .375, .625, .875).
 */
export function formatRatio(imageSize: number, dataSize: number): string {
  const ratio = imageSize / dataSize;
  const eighths = ratio * 8;
  if (!Number.isInteger(eighths) || eighths % 2 === 0) return ratio.toFixed(2);
  const below = Math.floor(ratio * 100);
  const hundredths = below % 2 === 0 ? below : below + 1;
  return `${Math.floor(hundredths / 100)}.${String(hundredths % 100).padStart(2, "0")}`;
}

/**
 * The flag bits lookimage shows. The existing lookimage reads a version 2
 * header's flags with bitflags' from_bits_truncate, so unknown bits are
 * neither shown in the value nor named; a zstd header is ours, and shows
 * all its bits.
 */
function shownFlags(header: Header, codec: PayloadCodec): bigint {
  return codec === "zstd" ? header.flags : header.flags & FLAG_COMPRESSED;
}

/** The lines the existing lookimage prints before checking sizes. */
export function headerLines(header: Header, codec: PayloadCodec): string {
  const shown = shownFlags(header, codec);
  return `${[
    `image name = ${header.imageName}`,
    `flags = 0x${shown.toString(16)} (${flagNames(shown)})`,
    `data size = ${header.dataSize}`,
    `image size = ${header.imageSize}`,
    `target size = ${header.targetSize}`,
    `image sum = ${toHex(header.sha256)}`,
    `dataset name = ${header.dataset}`,
  ].join("\n")}\n`;
}

/** Where this image would be refused by the sled kernel or a netbooting sled, and damaged names. */
export function warnings(header: Header, codec: PayloadCodec): string[] {
  return [
    ...(codec === "zstd" ? [ZSTD_BOOT_NOTE] : []),
    ...nameDamage(header),
    ...kernelRefusals(header).map((reason) => `${KERNEL_REFUSES}: ${reason}`),
    ...netbootRefusals(header),
  ];
}

/**
 * The --json object (docs/lookimage-json.md). A version 2 image's object is
 * exactly what it was before zstd images existed; a zstd image's has two
 * more fields, `codec` and `zstd`.
 */
export function jsonReport(
  header: Header,
  codec: PayloadCodec,
  imageWarnings: string[],
  verdict: PayloadVerdict | null,
  refusal: string | null,
) {
  const shown = shownFlags(header, codec);
  const table = verdict?.seekTable ?? null;
  const zstdFacts =
    codec === "zstd"
      ? {
          codec,
          zstd: table && {
            frames: table.blocks.length,
            blockSize: table.blocks.reduce((largest, block) => Math.max(largest, block.decompressedSize), 0),
          },
        }
      : {};
  return {
    imageName: header.imageName,
    flags: Number(header.flags),
    flagNames: shown === 0n ? [] : flagNames(shown).split(" | "),
    dataSize: header.dataSize,
    imageSize: header.imageSize,
    targetSize: header.targetSize,
    sha256: toHex(header.sha256),
    dataset: header.dataset,
    ratio: codec !== "stored" && header.dataSize > 0 ? header.imageSize / header.dataSize : null,
    compressed: codec === "zlib",
    ...zstdFacts,
    warnings: imageWarnings,
    verification: {
      checked: verdict !== null,
      ok: verdict !== null && verdict.error === null,
      bytes: verdict?.bytes ?? 0,
      sha256: verdict?.sha256 ? toHex(verdict.sha256) : null,
      error: verdict?.error ?? refusal,
    },
  };
}
