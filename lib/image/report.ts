/**
 * What lookimage reports about an image: the header read and checked from
 * the file, the lines the existing Rust lookimage prints (byte for byte:
 * tests/vectors/*.lookimage.txt), the warnings about where the image would
 * be refused, and the --json object (docs/lookimage-json.md). Pure functions
 * but for readHeader, which reads the file's first 4096 bytes.
 */

import type { Stats } from "node:fs";
import { stat } from "node:fs/promises";
import { systemReason, UserError } from "@ramdisk-tools/errors/errors.ts";
import {
  decodeHeaderFields,
  FLAG_COMPRESSED,
  flagNames,
  HEADER_SIZE,
  type HeaderFields,
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
 * Read and decode the header of the image at `path` (version 2 or zstd) as
 * the existing lookimage reads it (decodeHeaderFields), checking the file's
 * length against it and its flags against its version.
 */
export async function readHeader(path: string): Promise<{ fields: HeaderFields; codec: PayloadCodec }> {
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
    const fields = decodeHeaderFields(bytes, { fileSize: info.size, versions: IMAGE_VERSIONS });
    return { fields, codec: payloadCodec(fields) };
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
export function formatRatio(imageSize: number | bigint, dataSize: number | bigint): string {
  // As Rust's `as f64`: each size rounded to the nearest double, then divided.
  const ratio = Number(imageSize) / Number(dataSize);
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
function shownFlags(header: Pick<HeaderFields, "flags">, codec: PayloadCodec): bigint {
  return codec === "zstd" ? header.flags : header.flags & FLAG_COMPRESSED;
}

/** The lines the existing lookimage prints before checking sizes, every size in full. */
export function headerLines(header: HeaderFields, codec: PayloadCodec): string {
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
export function warnings(header: HeaderFields, codec: PayloadCodec): string[] {
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
 * more fields, `codec` and `zstd`. The flags and sizes are the header's
 * 64-bit values; jsonText writes them out in full.
 */
export function jsonReport(
  header: HeaderFields,
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
    flags: header.flags,
    flagNames: shown === 0n ? [] : flagNames(shown).split(" | "),
    dataSize: header.dataSize,
    imageSize: header.imageSize,
    targetSize: header.targetSize,
    sha256: toHex(header.sha256),
    dataset: header.dataset,
    ratio: codec !== "stored" && header.dataSize > 0n ? Number(header.imageSize) / Number(header.dataSize) : null,
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

/** JSON.rawJSON (ES2025; Bun has it, TypeScript's lib not yet): a JSON number given by its digits. */
const rawJSON = (JSON as unknown as { rawJSON(text: string): unknown }).rawJSON;

/**
 * The --json text of a report, with every 64-bit value written with all its
 * digits (JSON numbers have no limit; a double would round those above 2^53).
 *
 * @example process.stdout.write(jsonText(jsonReport(fields, codec, [], null, null)));
 */
export function jsonText(report: ReturnType<typeof jsonReport>): string {
  const exact = (_key: string, value: unknown) => (typeof value === "bigint" ? rawJSON(String(value)) : value);
  return `${JSON.stringify(report, exact, 2)}\n`;
}
