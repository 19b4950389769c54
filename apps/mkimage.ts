/**
 * mkimage: wrap a raw pool file into a boot image, optionally zlib-compressed,
 * and write the checksum file. A drop-in for the command line the OS build
 * uses: `mkimage -i RAW -N NAME -o IMAGE -O CSUM_FILE -s MEBIBYTES [-z]`.
 */

import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { EXIT_USAGE, runMain, UserError } from "../lib/cli.ts";
import { DEFAULT_DATASET, DEFAULT_TARGET_SIZE, MIB } from "../lib/format.ts";
import { type Compression, DEFAULT_JOBS, makeImage, MAX_JOBS } from "../lib/mkimage.ts";
import type { ZlibLevel } from "../lib/zlib-stream.ts";

const PROGRAM = "mkimage";

function wholeNumber(flag: string, value: string | number, min: number, max: number): number {
  const text = String(value);
  const number = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(number) || number < min || number > max) {
    throw new UserError(`${flag} must be a whole number from ${min} to ${max}, not "${text}"`, EXIT_USAGE);
  }
  return number;
}

async function main(): Promise<void> {
  const { version } = (await Bun.file(new URL("../package.json", import.meta.url)).json()) as { version: string };
  const args = await yargs(hideBin(process.argv))
    .scriptName(PROGRAM)
    .usage("Usage: $0 -i RAW -o IMAGE [-O CSUM_FILE] [-N NAME] [-s MEBIBYTES] [-z]\n\nWrap a raw pool file into a boot image.")
    .option("input", { alias: "i", type: "string", demandOption: true, describe: "raw pool file", requiresArg: true })
    .option("output", { alias: "o", type: "string", demandOption: true, describe: "boot image to write", requiresArg: true })
    .option("checksum-file", {
      alias: "O",
      type: "string",
      describe: "also write the 32 raw bytes of the image's SHA-256 here (for /boot_image_csum)",
      requiresArg: true,
    })
    .option("target-size", {
      alias: "s",
      type: "string",
      default: String(DEFAULT_TARGET_SIZE / MIB),
      describe: "size of the ramdisk the sled creates, in MiB",
      requiresArg: true,
    })
    .option("name", { alias: "N", type: "string", default: "", describe: "image name (at most 127 bytes)", requiresArg: true })
    .option("compress", { alias: "z", type: "boolean", default: false, describe: "compress the payload (zlib)" })
    .option("dataset", { type: "string", default: DEFAULT_DATASET, describe: "dataset name to record", requiresArg: true })
    .option("level", { type: "string", default: "9", describe: "zlib level with -z, 1 (fastest) to 9 (smallest)", requiresArg: true })
    .option("jobs", {
      type: "string",
      default: String(DEFAULT_JOBS),
      describe: "compression threads with -z (default: one per CPU, at most 32)",
      requiresArg: true,
    })
    .example("$0 -i pool.raw -N testing -o pool.img -O pool.csum -s 4096", "uncompressed image and checksum file")
    .example("$0 -i pool.raw -N recovery -o recovery.img -O recovery.csum -s 4096 -z", "compressed recovery image")
    .strict()
    .parserConfiguration({ "duplicate-arguments-array": false })
    .version(version)
    .help()
    .wrap(null)
    .fail((message, error) => {
      throw new UserError(`${message ?? error?.message}; see ${PROGRAM} --help`, EXIT_USAGE);
    })
    .parseAsync();

  const level = wholeNumber("--level", args.level, 1, 9) as ZlibLevel;
  const jobs = wholeNumber("--jobs", args.jobs, 1, MAX_JOBS);
  const compression: Compression = args.compress ? { codec: "zlib", level, jobs } : { codec: "stored" };
  await makeImage({
    input: args.input,
    output: args.output,
    ...(args.checksumFile === undefined ? {} : { checksumFile: args.checksumFile }),
    targetSize: wholeNumber("-s", args.targetSize, 0, Math.floor(Number.MAX_SAFE_INTEGER / MIB)) * MIB,
    imageName: args.name,
    dataset: args.dataset,
    compression,
    onWarning: (message) => console.error(`${PROGRAM}: warning: ${message}`),
  });
  console.log("ok, image written!");
  if (args.checksumFile !== undefined) console.log("ok, boot_image_csum file written!");
}

await runMain(PROGRAM, main);
