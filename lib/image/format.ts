/**
 * The boot image format, version 2: one 4096-byte header, then `dataSize`
 * payload bytes (the raw ZFS pool, stored or as one zlib stream).
 *
 * This module is the one home of the layout. Its constants carry the names of
 * the fields they mirror, and encoding and decoding are pure functions over
 * bytes: files, threads and sockets stay with the callers.
 *
 * The layout is a contract with software we do not control (the sled kernel,
 * the control plane, the service processor), so it is reproduced byte for
 * byte from `docs/format.md`: little-endian integers, NUL-padded names
 * whose last byte is always 0, zero padding up to 4096 bytes.
 */

import { copyBytes } from "@ramdisk-tools/bytes/copy.ts";
import { MIB } from "@ramdisk-tools/bytes/units.ts";
// The header carries the SHA-256 that the bootserver offers a sled in its OFFER
// frame, so the digest has one size, defined with the frames on the floor below.
import { SHA256_SIZE } from "@ramdisk-tools/protocol/frames.ts";

export const MAGIC = 0x1deb0075;
export const VERSION = 2;
export const HEADER_SIZE = 4096;

/** Header flag bit 0: the payload is one zlib (RFC 1950) stream. */
export const FLAG_COMPRESSED = 1n;

/**
 * The version of this project's zstd image (docs/format.md). The sled kernel
 * and the control plane check `version == 2`, so they refuse it at the header
 * instead of inflating zstd as zlib; the high bit is a private range that
 * official versions, counting up from 2, will not reach.
 */
export const ZSTD_VERSION = 0x8000_0002;
/** Header flag bit 1: the payload is seekable zstd. Only with ZSTD_VERSION. */
export const FLAG_ZSTD = 2n;

/** Flag bits by name, as lookimage prints them. */
const FLAG_NAMES: readonly [bigint, string][] = [
  [FLAG_COMPRESSED, "COMPRESSED"],
  [FLAG_ZSTD, "ZSTD"],
];

/**
 * The flag bits by name as lookimage prints them: `(empty)` for none, names
 * joined by ` | `, and any unknown bits in hex.
 *
 * @example flagNames(0x1n) // "COMPRESSED"
 */
export function flagNames(flags: bigint): string {
  const names: string[] = [];
  let rest = flags;
  for (const [bit, name] of FLAG_NAMES) {
    if ((flags & bit) !== 0n) names.push(name);
    rest &= ~bit;
  }
  if (rest !== 0n) names.push(`0x${rest.toString(16)}`);
  return names.length === 0 ? "(empty)" : names.join(" | ");
}

export const OFFSET_MAGIC = 0;
export const OFFSET_VERSION = 4;
export const OFFSET_FLAGS = 8;
export const OFFSET_DATA_SIZE = 16;
export const OFFSET_IMAGE_SIZE = 24;
export const OFFSET_TARGET_SIZE = 32;
export const OFFSET_SHA256 = 40;
export const OFFSET_DATASET = 72;
export const OFFSET_IMAGE_NAME = 200;

/** Both name fields are 128 bytes; the last byte is always NUL, so 127 are usable. */
export const NAME_FIELD_SIZE = 128;
export const NAME_MAX_BYTES = NAME_FIELD_SIZE - 1;

export const DEFAULT_DATASET = "rpool/ROOT/ramdisk";
/** `mkimage -s` defaults to 4096 MiB, as the existing tool does. */
export const DEFAULT_TARGET_SIZE = 4096 * MIB;

/** The sled kernel refuses an image_size outside [4096, 4 GiB]. */
export const KERNEL_MIN_IMAGE_SIZE = 4096;
export const KERNEL_MAX_IMAGE_SIZE = 4 * 1024 * MIB;

/** A netbooting sled ignores offers whose ramdisk or image size is below 1 MiB. */
export const NETBOOT_MIN_SIZE = MIB;
/**
 * A netbooting sled fetches 128 slots of 1024 bytes per batch and takes the
 * end of its last batch as the image length, so only images whose size is a
 * multiple of 128 KiB pass its checksum (docs/netboot.md, "End of image").
 */
export const NETBOOT_BATCH_BYTES = 128 * 1024;

/** The decoded fields of a boot image header. */
export interface Header {
  version: number;
  /** All 64 flag bits; see FLAG_COMPRESSED. */
  flags: bigint;
  /** Payload bytes after the header (the compressed size when compressed). */
  dataSize: number;
  /** Bytes of the raw pool image. */
  imageSize: number;
  /** Size of the ramdisk the sled creates, in bytes. */
  targetSize: number;
  /** SHA-256 of the raw (uncompressed) pool image. */
  sha256: Uint8Array;
  dataset: string;
  imageName: string;
}

/** What is wrong with a header or an image file, with the values named. */
export class ImageFormatError extends Error {
  override name = "ImageFormatError";
}

/** True when the payload is a zlib stream. */
export function isCompressed(header: Pick<Header, "flags">): boolean {
  return (header.flags & FLAG_COMPRESSED) !== 0n;
}

/** How lookimage's warnings and mkimage's refusal introduce kernelRefusals' reasons. */
export const KERNEL_REFUSES = "the sled kernel would refuse this image";

const encoder = new TextEncoder();
/** Strict, and keeping a leading byte order mark, as Rust's String::from_utf8 is. */
const nameDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Encode a name for one of the 128-byte fields, refusing what the field
 * cannot hold: 128 bytes or more (byte 127 must stay NUL) or an embedded NUL
 * (a reader would stop there).
 *
 * @example encodeName("image name", "recovery-testing").length // 16
 */
export function encodeName(what: string, name: string): Uint8Array {
  const bytes = encoder.encode(name);
  if (bytes.length > NAME_MAX_BYTES) {
    throw new ImageFormatError(
      `${what} is ${bytes.length} bytes long; at most ${NAME_MAX_BYTES} bytes fit in the ${NAME_FIELD_SIZE}-byte field`,
    );
  }
  if (bytes.includes(0)) {
    throw new ImageFormatError(`${what} contains a NUL byte`);
  }
  return bytes;
}

function checkU64(what: string, value: number): bigint {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ImageFormatError(`${what} of ${value} is not a whole number of bytes`);
  }
  return BigInt(value);
}

/**
 * Encode a header into exactly HEADER_SIZE bytes. Names are checked with
 * encodeName; everything not written is zero.
 *
 * @example
 * const bytes = encodeHeader({ version: 2, flags: 0n, dataSize: 4096, imageSize: 4096,
 *   targetSize: 4096, sha256, dataset: DEFAULT_DATASET, imageName: "testing" });
 */
export function encodeHeader(header: Header): Uint8Array {
  if (header.sha256.length !== SHA256_SIZE) {
    throw new ImageFormatError(`sha256 is ${header.sha256.length} bytes, not ${SHA256_SIZE}`);
  }
  const out = new Uint8Array(HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(OFFSET_MAGIC, MAGIC, true);
  view.setUint32(OFFSET_VERSION, header.version, true);
  view.setBigUint64(OFFSET_FLAGS, BigInt.asUintN(64, header.flags), true);
  view.setBigUint64(OFFSET_DATA_SIZE, checkU64("data size", header.dataSize), true);
  view.setBigUint64(OFFSET_IMAGE_SIZE, checkU64("image size", header.imageSize), true);
  view.setBigUint64(OFFSET_TARGET_SIZE, checkU64("target size", header.targetSize), true);
  out.set(header.sha256, OFFSET_SHA256);
  out.set(encodeName("dataset name", header.dataset), OFFSET_DATASET);
  out.set(encodeName("image name", header.imageName), OFFSET_IMAGE_NAME);
  return out;
}

/**
 * A header's fields as the existing tools read them (Rust's
 * `Header::from_bytes`), before this project's stricter decodeHeader: the
 * 64-bit sizes as they are on disk, the names as those tools show them, and
 * the name fields' own bytes, which the sled kernel reads up to their first
 * NUL (nameDamage).
 */
export interface HeaderFields {
  version: number;
  flags: bigint;
  dataSize: bigint;
  imageSize: bigint;
  targetSize: bigint;
  sha256: Uint8Array;
  /** The dataset field as UTF-8 with the NULs at both of its ends trimmed (`trim_matches('\0')`). */
  dataset: string;
  /** The image name field, read as the dataset is. */
  imageName: string;
  /** The 128 bytes of the dataset field. */
  datasetField: Uint8Array;
  /** The 128 bytes of the image name field. */
  imageNameField: Uint8Array;
}

/**
 * A name field as the existing tools read it: the whole 128 bytes as UTF-8
 * (refused when they are not), less the NULs at both ends. Bytes after an
 * embedded NUL stay in the name, as they do in the existing lookimage's
 * output; nameDamage says what a reader that stops at the first NUL sees.
 */
function readName(field: Uint8Array, offset: number, what: string): string {
  let text: string;
  try {
    text = nameDecoder.decode(field);
  } catch {
    throw new ImageFormatError(`${what} is not valid UTF-8 (from byte ${offset + validUtf8Prefix(field)})`);
  }
  return text.replace(/^\0+|\0+$/g, "");
}

/** Bytes at the start of `field` that are whole, valid UTF-8 characters (Rust's Utf8Error::valid_up_to). */
function validUtf8Prefix(field: Uint8Array): number {
  let length = field.length;
  while (length > 0) {
    try {
      nameDecoder.decode(field.subarray(0, length));
      return length;
    } catch {
      length--;
    }
  }
  return 0;
}

/** The name fields by what lookimage calls them and where they lie. */
const NAME_FIELDS = [
  { what: "dataset name", offset: OFFSET_DATASET, field: "datasetField" },
  { what: "image name", offset: OFFSET_IMAGE_NAME, field: "imageNameField" },
] as const;

/**
 * What is wrong with the name fields of a header that still decodes, where
 * the readers that stop at the first NUL (the sled kernel for the dataset,
 * perhaps the control plane for the image name) would read something else
 * than the name shown: a field whose last byte is not NUL (the sled kernel
 * refuses such a dataset field), and a NUL before other bytes (leading NULs
 * included). Empty when both fields are as mkimage writes them.
 *
 * @example nameDamage(decodeHeaderFields(bytes)) // ["dataset name holds a NUL at byte 90 ..."]
 */
export function nameDamage(fields: Pick<HeaderFields, "datasetField" | "imageNameField">): string[] {
  const damage: string[] = [];
  for (const { what, offset, field: key } of NAME_FIELDS) {
    const field = fields[key];
    const dataset = key === "datasetField";
    const last = field[NAME_MAX_BYTES]!;
    if (last !== 0) {
      const byte = `byte ${offset + NAME_MAX_BYTES} is 0x${last.toString(16).padStart(2, "0")}`;
      damage.push(
        dataset
          ? `${KERNEL_REFUSES}: the dataset name field does not end in a NUL (${byte})`
          : `the image name field does not end in a NUL (${byte}): a reader that stops only at a NUL reads past it`,
      );
    }
    const nul = field.indexOf(0);
    if (nul < 0 || field.subarray(nul).every((byte) => byte === 0)) continue;
    const reader = dataset
      ? "the sled kernel reads it only up to there, as"
      : "a reader that stops at the first NUL sees";
    const seen = JSON.stringify(nameDecoder.decode(field.subarray(0, nul)));
    damage.push(`${what} holds a NUL at byte ${offset + nul} with more bytes after it: ${reader} ${seen}`);
  }
  return damage;
}

/** Options for decodeHeader. */
export interface DecodeOptions {
  /**
   * The whole file's length, when known: it must be HEADER_SIZE + dataSize.
   */
  fileSize?: number;
  /** Versions to accept; by default only VERSION (2), as the sled kernel does. */
  versions?: readonly number[];
}

/**
 * Decode a header from the first bytes of an image file as the existing
 * lookimage reads it, and check it as far as that tool does and as this
 * project's image is defined. Throws ImageFormatError naming the value that
 * is wrong: a short file, bad magic or version, a target size below the
 * image size (the existing tools refuse it at the header, and the sled kernel
 * could not load the image), a name that is not UTF-8, an uncompressed
 * payload whose size differs from the image size, or a file whose length is
 * not 4096 + data_size.
 *
 * Sizes of 2^53 bytes or more, and name fields without their final NUL, are
 * read as they are: lookimage shows them as the existing one does. Code that
 * works with the image takes decodeHeader instead.
 *
 * @example const fields = decodeHeaderFields(await Bun.file(path).slice(0, 4096).bytes());
 */
export function decodeHeaderFields(bytes: Uint8Array, options: DecodeOptions = {}): HeaderFields {
  if (bytes.length < HEADER_SIZE) {
    throw new ImageFormatError(`file is ${bytes.length} bytes, shorter than the ${HEADER_SIZE}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const magic = view.getUint32(OFFSET_MAGIC, true);
  if (magic !== MAGIC) {
    throw new ImageFormatError(
      `bad magic 0x${magic.toString(16).padStart(8, "0")}, expected 0x${MAGIC.toString(16)}: not a boot image`,
    );
  }
  const version = view.getUint32(OFFSET_VERSION, true);
  const versions = options.versions ?? [VERSION];
  if (!versions.includes(version)) {
    throw new ImageFormatError(`unsupported version ${version}, expected ${versions.join(" or ")}`);
  }
  const flags = view.getBigUint64(OFFSET_FLAGS, true);
  const dataSize = view.getBigUint64(OFFSET_DATA_SIZE, true);
  const imageSize = view.getBigUint64(OFFSET_IMAGE_SIZE, true);
  const targetSize = view.getBigUint64(OFFSET_TARGET_SIZE, true);
  if (targetSize < imageSize) {
    throw new ImageFormatError(`target size of ${targetSize} bytes is less than image size of ${imageSize}`);
  }
  const sha256 = copyBytes(bytes, OFFSET_SHA256, OFFSET_SHA256 + SHA256_SIZE);
  const datasetField = copyBytes(bytes, OFFSET_DATASET, OFFSET_DATASET + NAME_FIELD_SIZE);
  const imageNameField = copyBytes(bytes, OFFSET_IMAGE_NAME, OFFSET_IMAGE_NAME + NAME_FIELD_SIZE);
  const dataset = readName(datasetField, OFFSET_DATASET, "dataset name");
  const imageName = readName(imageNameField, OFFSET_IMAGE_NAME, "image name");
  if (version === VERSION && (flags & FLAG_COMPRESSED) === 0n && dataSize !== imageSize) {
    throw new ImageFormatError(
      `data size of ${dataSize} bytes differs from image size of ${imageSize} in an uncompressed image`,
    );
  }
  if (options.fileSize !== undefined && BigInt(options.fileSize) !== BigInt(HEADER_SIZE) + dataSize) {
    const expected = BigInt(HEADER_SIZE) + dataSize;
    const how = BigInt(options.fileSize) < expected ? "truncated" : "has trailing bytes";
    throw new ImageFormatError(
      `file is ${options.fileSize} bytes but the header says ${expected} (${HEADER_SIZE} + data size ${dataSize}): ${how}`,
    );
  }
  return { version, flags, dataSize, imageSize, targetSize, sha256, dataset, imageName, datasetField, imageNameField };
}

/** The fields a payload is read and checked against (lib/image/verify.ts). */
export type PayloadHeader = Pick<Header, "version" | "flags" | "dataSize" | "imageSize" | "sha256">;

/**
 * A size field as a number, or why it cannot be one: at 2^53 bytes or more
 * no file or stream here could hold that many bytes.
 */
function safeSize(value: bigint, what: string): number | string {
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? `${what} of ${value} bytes is beyond any real image` : Number(value);
}

/**
 * The fields a payload is checked against, with its sizes as numbers; or,
 * when data_size or image_size is 2^53 or more, why no payload could match
 * them (the existing lookimage would read the payload and find it short).
 *
 * @example const { header, refusal } = payloadHeader(fields); if (header) await verifyPayload(path, header);
 */
export function payloadHeader(
  fields: HeaderFields,
): { header: PayloadHeader; refusal: null } | { header: null; refusal: string } {
  const dataSize = safeSize(fields.dataSize, "data size");
  const imageSize = safeSize(fields.imageSize, "image size");
  if (typeof dataSize === "string") return { header: null, refusal: dataSize };
  if (typeof imageSize === "string") return { header: null, refusal: imageSize };
  const { version, flags, sha256 } = fields;
  return { header: { version, flags, dataSize, imageSize, sha256 }, refusal: null };
}

/**
 * Decode and check a header from the first bytes of an image file, for code
 * that works with the image (the bootserver, mkimage's own checks): every
 * check of decodeHeaderFields, and also sizes below 2^53 (so they are exact
 * numbers) and both name fields ending in their NUL, as the format promises
 * and the netboot OFFER's dataset field needs.
 *
 * It does not apply the sled kernel's acceptance rules (sizes): those are
 * reported by kernelRefusals, because an image the kernel would refuse can
 * still be inspected.
 *
 * @example const header = decodeHeader(await Bun.file(path).slice(0, 4096).bytes());
 */
export function decodeHeader(bytes: Uint8Array, options: DecodeOptions = {}): Header {
  const fields = decodeHeaderFields(bytes, options);
  const sizes = (["dataSize", "imageSize", "targetSize"] as const).map((key) =>
    safeSize(fields[key], key.replace("Size", " size")),
  );
  const beyond = sizes.find((size) => typeof size === "string");
  if (beyond !== undefined) throw new ImageFormatError(beyond);
  for (const { what, offset, field } of NAME_FIELDS) {
    if (fields[field][NAME_MAX_BYTES] !== 0) {
      throw new ImageFormatError(`${what} is not NUL-terminated (byte ${offset + NAME_MAX_BYTES} is not 0)`);
    }
  }
  const [dataSize, imageSize, targetSize] = sizes as number[];
  const { version, flags, sha256, dataset, imageName } = fields;
  return {
    version,
    flags,
    dataSize: dataSize!,
    imageSize: imageSize!,
    targetSize: targetSize!,
    sha256,
    dataset,
    imageName,
  };
}

/** A size as a number or as the 64-bit value read from a header (HeaderFields). */
type Size = number | bigint;

/**
 * The reasons the sled kernel would refuse this header when booting from disk
 * or recovery (docs/format.md, "What the sled kernel accepts"); empty when none.
 * The checksum match against /boot_image_csum is the caller's to check.
 *
 * @example kernelRefusals({ imageSize: 4095, targetSize: MIB }) // ["image size of 4095 bytes is below ..."]
 */
export function kernelRefusals(header: { imageSize: Size; targetSize: Size }): string[] {
  const reasons: string[] = [];
  if (header.imageSize < KERNEL_MIN_IMAGE_SIZE) {
    reasons.push(`image size of ${header.imageSize} bytes is below the kernel's minimum of ${KERNEL_MIN_IMAGE_SIZE}`);
  }
  if (header.imageSize > KERNEL_MAX_IMAGE_SIZE) {
    reasons.push(
      `image size of ${header.imageSize} bytes is above the kernel's maximum of ${KERNEL_MAX_IMAGE_SIZE} (4 GiB)`,
    );
  }
  if (header.targetSize < header.imageSize) {
    reasons.push(`target size of ${header.targetSize} bytes is less than image size of ${header.imageSize}`);
  }
  return reasons;
}

/**
 * The sizes the existing lookimage refuses in a version 2 image before it
 * reads the payload, in its words; null when they are acceptable. A zlib
 * stream of incompressible data is larger than the image, and such an image
 * is refused: mkimage checks the header it is about to write with this rule,
 * so it never writes an image lookimage refuses. A zstd image answers to its
 * seek table instead (lib/image/zstd-seekable.ts), whatever its payload's size.
 *
 * @example payloadSizeRefusal({ version: 2, dataSize: 0, imageSize: 4096 }) // "data size is 0"
 */
export function payloadSizeRefusal(header: { version: number; dataSize: Size; imageSize: Size }): string | null {
  if (header.version === ZSTD_VERSION) return null;
  if (BigInt(header.dataSize) === 0n) return `data size is ${header.dataSize}`;
  if (header.imageSize < header.dataSize) return `image size ${header.imageSize} < data size ${header.dataSize}`;
  return null;
}

/**
 * The reasons a sled could not netboot an image of these sizes; empty when
 * none. A sled ignores offers below 1 MiB, and it can only verify an image
 * whose size is a whole number of 128 KiB batches (docs/netboot.md).
 */
export function netbootRefusals(sizes: { imageSize: Size; targetSize: Size }): string[] {
  const reasons: string[] = [];
  if (sizes.imageSize < NETBOOT_MIN_SIZE) {
    reasons.push(`image size of ${sizes.imageSize} bytes is below 1 MiB, so a netbooting sled ignores the offer`);
  }
  if (sizes.targetSize < NETBOOT_MIN_SIZE) {
    reasons.push(`target size of ${sizes.targetSize} bytes is below 1 MiB, so a netbooting sled ignores the offer`);
  }
  if (BigInt(sizes.imageSize) % BigInt(NETBOOT_BATCH_BYTES) !== 0n) {
    reasons.push(
      `image size of ${sizes.imageSize} bytes is not a multiple of ${NETBOOT_BATCH_BYTES} (128 KiB), so a netbooting sled would fail its checksum`,
    );
  }
  return reasons;
}

/** Lower-case hex of a digest, as lookimage prints `image sum`. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}
