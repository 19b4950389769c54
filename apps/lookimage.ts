/**
 * lookimage: print a boot image's header and verify its payload.
 *
 * Standard output is byte for byte what the existing Rust lookimage prints
 * (shared/vectors/*.lookimage.txt), because people and scripts read it;
 * everything new (warnings, progress) goes to standard error, or with
 * --json into one JSON object (docs/lookimage-json.md).
 */

import { stat } from "node:fs/promises";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { EXIT_FAILURE, EXIT_USAGE, runMain, UserError } from "../lib/cli.ts";
import {
  decodeHeader,
  FLAG_COMPRESSED,
  HEADER_SIZE,
  type Header,
  isCompressed,
  kernelRefusals,
  netbootRefusals,
  toHex,
} from "../lib/format.ts";
import { startProgress } from "../lib/progress.ts";
import { type PayloadVerdict, sizeRefusal, verifyPayload } from "../lib/verify.ts";

const PROGRAM = "lookimage";

/** Read and decode the header of the image at `path`, checking the file's length against it. */
async function readHeader(path: string): Promise<Header> {
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
    return decodeHeader(bytes, { fileSize: info.size });
  } catch (error) {
    throw new UserError(`${path}: ${(error as Error).message}`);
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
 * The lines the existing lookimage prints before checking sizes. It reads
 * flags with bitflags' from_bits_truncate, so unknown bits are neither shown
 * in the value nor named.
 */
function headerLines(header: Header): string {
  const known = header.flags & FLAG_COMPRESSED;
  return [
    `image name = ${header.imageName}`,
    `flags = 0x${known.toString(16)} (${known === 0n ? "(empty)" : "COMPRESSED"})`,
    `data size = ${header.dataSize}`,
    `image size = ${header.imageSize}`,
    `target size = ${header.targetSize}`,
    `image sum = ${toHex(header.sha256)}`,
    `dataset name = ${header.dataset}`,
  ].join("\n") + "\n";
}

/** Where this image would be refused by the sled kernel or a netbooting sled. */
function warnings(header: Header): string[] {
  return [
    ...kernelRefusals(header).map((reason) => `the sled kernel would refuse this image: ${reason}`),
    ...netbootRefusals(header),
  ];
}

/** The --json object (docs/lookimage-json.md). */
function jsonReport(header: Header, imageWarnings: string[], verdict: PayloadVerdict | null, refusal: string | null) {
  const compressed = isCompressed(header);
  return {
    imageName: header.imageName,
    flags: Number(header.flags),
    flagNames: compressed ? ["COMPRESSED"] : [],
    dataSize: header.dataSize,
    imageSize: header.imageSize,
    targetSize: header.targetSize,
    sha256: toHex(header.sha256),
    dataset: header.dataset,
    ratio: compressed && header.dataSize > 0 ? header.imageSize / header.dataSize : null,
    compressed,
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
  const { version } = (await Bun.file(new URL("../package.json", import.meta.url)).json()) as { version: string };
  const args = await yargs(hideBin(process.argv))
    .scriptName(PROGRAM)
    .usage("Usage: $0 [-s|--skip-checksum] [--json] IMAGE\n\nPrint a boot image's header and verify its payload against it.")
    .command("$0 <image>", false, (command) =>
      command.positional("image", { type: "string", describe: "boot image file", demandOption: true }),
    )
    .option("skip-checksum", { alias: "s", type: "boolean", default: false, describe: "print the header only; do not read the payload" })
    .option("json", { type: "boolean", default: false, describe: "print the facts as one JSON object (docs/lookimage-json.md)" })
    .example("$0 recovery.img", "print the header, then inflate and check the payload's size and SHA-256")
    .example("$0 -s --json recovery.img", "the header as JSON, without reading the payload")
    .strict()
    .parserConfiguration({ "duplicate-arguments-array": false })
    .version(version)
    .help()
    .wrap(null)
    .fail((message, error) => {
      throw new UserError(`${message ?? error?.message}; see ${PROGRAM} --help`, EXIT_USAGE);
    })
    .parseAsync();

  const path = String(args.image);
  const header = await readHeader(path);
  const refusal = sizeRefusal(header);

  if (!args.json) {
    await print(headerLines(header));
    if (refusal) throw new UserError(refusal);
    if (isCompressed(header)) await print(`ratio = ${formatRatio(header.imageSize, header.dataSize)}x\n`);
  }
  const imageWarnings = warnings(header);
  for (const warning of imageWarnings) console.error(`${PROGRAM}: warning: ${warning}`);
  let verdict: PayloadVerdict | null = null;
  if (!args.skipChecksum && !refusal) {
    const progress = startProgress("verifying", header.dataSize);
    verdict = await verifyPayload(path, header, { onProgress: (done) => progress.update(done) });
    progress.finish();
  }
  if (args.json) await print(`${JSON.stringify(jsonReport(header, imageWarnings, verdict, refusal), null, 2)}\n`);
  const failure = verdict?.error ?? refusal;
  if (failure) throw new UserError(failure, EXIT_FAILURE);
  return 0;
}

await runMain(PROGRAM, main);
