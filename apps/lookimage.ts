/**
 * lookimage: print a boot image's header and verify its payload; with
 * --extract, also write the raw pool back out.
 *
 * Standard output is byte for byte what the existing Rust lookimage prints
 * (shared/vectors/*.lookimage.txt), because people and scripts read it;
 * everything new (warnings, progress) goes to standard error, or with
 * --json into one JSON object (docs/lookimage-json.md). A zstd image
 * (docs/format.md) prints the same lines, its flags by name.
 */

import { stat } from "node:fs/promises";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { EXIT_FAILURE, EXIT_USAGE, runMain, usageConventions, UserError } from "../lib/cli.ts";
import {
  decodeHeader,
  FLAG_COMPRESSED,
  flagNames,
  HEADER_SIZE,
  type Header,
  ImageFormatError,
  kernelRefusals,
  netbootRefusals,
  toHex,
} from "../lib/format.ts";
import { startProgress } from "../lib/progress.ts";
import { extractPayload, type PayloadVerdict, rawOutputTarget, sizeRefusal, verifyPayload } from "../lib/verify.ts";
import { IMAGE_VERSIONS, type PayloadCodec, payloadCodec, ZSTD_BOOT_NOTE } from "../lib/zstd-image.ts";

const PROGRAM = "lookimage";

/**
 * Read and decode the header of the image at `path` (version 2 or zstd),
 * checking the file's length against it and its flags against its version.
 */
async function readHeader(path: string): Promise<{ header: Header; codec: PayloadCodec }> {
  let info;
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

/** "no such file or directory" from Node's "ENOENT: no such file or directory, stat 'x'". */
function systemReason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^E[A-Z]+: /, "").replace(/, \w+ '.*'$/, "");
}

/**
 * `ratio = X.XXx` as Rust's `{:.2}` formats image_size / data_size: the
 * exact binary value rounded, ties to even. JavaScript's toFixed rounds ties
 * up; a double is exactly halfway at two decimals only when its fraction is
 * a whole number of eighths (.125, .375, .625, .875).
 */
function formatRatio(imageSize: number, dataSize: number): string {
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
function headerLines(header: Header, codec: PayloadCodec): string {
  const shown = shownFlags(header, codec);
  return [
    `image name = ${header.imageName}`,
    `flags = 0x${shown.toString(16)} (${flagNames(shown)})`,
    `data size = ${header.dataSize}`,
    `image size = ${header.imageSize}`,
    `target size = ${header.targetSize}`,
    `image sum = ${toHex(header.sha256)}`,
    `dataset name = ${header.dataset}`,
  ].join("\n") + "\n";
}

/** Where this image would be refused by the sled kernel or a netbooting sled. */
function warnings(header: Header, codec: PayloadCodec): string[] {
  return [
    ...(codec === "zstd" ? [ZSTD_BOOT_NOTE] : []),
    ...kernelRefusals(header).map((reason) => `the sled kernel would refuse this image: ${reason}`),
    ...netbootRefusals(header),
  ];
}

/**
 * The --json object (docs/lookimage-json.md). A version 2 image's object is
 * exactly what it was before zstd images existed; a zstd image's has two
 * more fields, `codec` and `zstd`.
 */
function jsonReport(
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

/** Write to standard output and wait until it has gone, so an exit right after loses nothing. */
function print(text: string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(text, (error) => (error ? reject(error) : resolve())));
}

async function main(): Promise<number> {
  const parser = yargs(hideBin(process.argv))
    .scriptName(PROGRAM)
    .usage(
      "Usage: $0 [-s|--skip-checksum] [--json] IMAGE\n       $0 --extract RAW [--json] IMAGE\n\n" +
        "Print a boot image's header (version 2, or this project's zstd variant) and verify its payload against it.",
    )
    .command("$0 <image>", false, (command) =>
      command.positional("image", { type: "string", describe: "boot image file", demandOption: true }),
    )
    .option("skip-checksum", { alias: "s", type: "boolean", default: false, describe: "print the header only; do not read the payload" })
    .option("json", { type: "boolean", default: false, describe: "print the facts as one JSON object (docs/lookimage-json.md)" })
    .option("extract", {
      type: "string",
      requiresArg: true,
      describe: "also write the raw pool to this file, atomically, only if the payload verifies",
    })
    .check((argv) => {
      // Not yargs' conflicts(): a boolean with a default counts as given.
      if (argv.extract !== undefined && argv.skipChecksum) {
        throw new Error("--extract writes the raw pool only once it has verified it, so it cannot go with -s/--skip-checksum");
      }
      return true;
    })
    .example("$0 recovery.img", "print the header, then inflate and check the payload's size and SHA-256")
    .example("$0 -s --json recovery.img", "the header as JSON, without reading the payload")
    .example("$0 --extract pool.raw recovery.img", "verify, and write the raw pool to pool.raw")
    .parserConfiguration({ "duplicate-arguments-array": false });
  const args = await usageConventions(parser, PROGRAM).parseAsync();

  const path = String(args.image);
  const { header, codec } = await readHeader(path);
  // Refused before anything is printed or read: a raw file may never replace the image it comes from.
  const rawOutput = args.extract === undefined ? null : await rawOutputTarget(args.extract, path);
  // The existing lookimage's size rules are for version 2; a zstd payload answers to its seek table.
  const refusal = codec === "zstd" ? null : sizeRefusal(header);

  if (!args.json) {
    await print(headerLines(header, codec));
    if (refusal) throw new UserError(refusal);
    if (codec !== "stored") await print(`ratio = ${formatRatio(header.imageSize, header.dataSize)}x\n`);
  }
  const imageWarnings = warnings(header, codec);
  for (const warning of imageWarnings) console.error(`${PROGRAM}: warning: ${warning}`);
  let verdict: PayloadVerdict | null = null;
  if (!args.skipChecksum && !refusal) {
    const progress = startProgress(rawOutput ? "extracting" : "verifying", header.dataSize);
    const options = { onProgress: (done: number) => progress.update(done) };
    try {
      verdict = rawOutput
        ? await extractPayload(path, header, rawOutput, options)
        : await verifyPayload(path, header, options);
    } finally {
      progress.finish();
    }
  }
  if (args.json) await print(`${JSON.stringify(jsonReport(header, codec, imageWarnings, verdict, refusal), null, 2)}\n`);
  const failure = verdict?.error ?? refusal;
  if (failure) throw new UserError(failure, EXIT_FAILURE);
  if (rawOutput && !args.json) await print("ok, raw image written!\n");
  return 0;
}

await runMain(PROGRAM, main);
