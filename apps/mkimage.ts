#!/usr/bin/env bun

/**
 * mkimage: wrap a raw pool file into a boot image, optionally zlib-compressed,
 * and write the checksum file. A drop-in for the command line the OS build
 * uses: `mkimage -i RAW -N NAME -o IMAGE -O CSUM_FILE -s MEBIBYTES [-z]`.
 * `--zstd` writes this project's zstd image instead (docs/format.md), which
 * boots only through its bootserver.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { parseLikeGetopts, runMain, wholeNumber } from "@ramdisk-tools/cli/conventions.ts";
import { EXIT_USAGE, UserError } from "@ramdisk-tools/errors/errors.ts";
import { DEFAULT_DATASET, DEFAULT_TARGET_SIZE } from "@ramdisk-tools/image/format.ts";
import { makeImage } from "@ramdisk-tools/image/make.ts";
import { type Compression, DEFAULT_JOBS, MAX_JOBS } from "@ramdisk-tools/image/payload-encoders.ts";
import type { ZlibLevel } from "@ramdisk-tools/image/zlib-stream.ts";
import {
  ZSTD_BLOCK_SIZE,
  ZSTD_DEFAULT_LEVEL,
  ZSTD_MAX_BLOCK_SIZE,
  ZSTD_MAX_LEVEL,
  ZSTD_MIN_LEVEL,
} from "@ramdisk-tools/image/zstd-seekable.ts";
import yargs from "yargs";
import packageJson from "../package.json" with { type: "json" };
import { IMAGE_THREADS } from "../workers/entry-points.ts";

const PROGRAM = "mkimage";
/** The zlib levels, and the default: level 9 is what existing images use (format.md). */
const ZLIB_LEVELS = { min: 1, max: 9, default: 9 };
/**
 * The largest `-s`: 2^33 MiB is a ramdisk of 8 PiB, more than any sled's
 * memory, and past it the size is no longer an exact number here. The
 * existing mkimage writes larger sizes as given, and from 2^44 MiB on wraps
 * them past 2^64 without a word, so ours refuses them rather than write a
 * target size that was not asked for or that no sled could create.
 */
const MAX_TARGET_MIB = 2 ** 33 - 1;
const TARGET_TOO_LARGE =
  "a ramdisk of 8 PiB or more, which no sled could create (the existing mkimage writes it, and from 2^44 MiB on wraps it silently past 2^64)";
const ZSTD_LEVELS = { min: ZSTD_MIN_LEVEL, max: ZSTD_MAX_LEVEL, default: ZSTD_DEFAULT_LEVEL };

async function main(): Promise<void> {
  const parser = yargs()
    .scriptName(PROGRAM)
    .usage(
      "Usage: $0 -i RAW -o IMAGE [-O CSUM_FILE] [-N NAME] [-s MEBIBYTES] [-z | --zstd]\n\nWrap a raw pool file into a boot image.",
    )
    .option("input", { alias: "i", type: "string", demandOption: true, describe: "raw pool file", requiresArg: true })
    .option("output", {
      alias: "o",
      type: "string",
      demandOption: true,
      describe: "boot image to write",
      requiresArg: true,
    })
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
    .option("name", {
      alias: "N",
      type: "string",
      default: "",
      describe: "image name (at most 127 bytes)",
      requiresArg: true,
    })
    .option("compress", { alias: "z", type: "boolean", default: false, describe: "compress the payload (zlib)" })
    .option("zstd", {
      type: "boolean",
      default: false,
      describe: "compress the payload with zstd (this project's zstd image: boots only through its bootserver)",
    })
    .option("dataset", {
      type: "string",
      default: DEFAULT_DATASET,
      describe: "dataset name to record",
      requiresArg: true,
    })
    .option("level", {
      type: "string",
      describe: `compression level: with -z ${ZLIB_LEVELS.min} (fastest) to ${ZLIB_LEVELS.max} (smallest), default ${ZLIB_LEVELS.default}; with --zstd ${ZSTD_LEVELS.min} to ${ZSTD_LEVELS.max}, default ${ZSTD_LEVELS.default}`,
      requiresArg: true,
    })
    .option("block-size", {
      type: "string",
      describe:
        `with --zstd: MiB of the raw pool in each frame, 1 to ${ZSTD_MAX_BLOCK_SIZE / MIB} ` +
        `(default ${ZSTD_BLOCK_SIZE / MIB}); larger frames compress a little better, ` +
        "smaller ones let the bootserver cache blocks at a finer grain",
      requiresArg: true,
    })
    .option("jobs", {
      type: "string",
      default: String(DEFAULT_JOBS),
      describe: "compression threads with -z or --zstd (default: one per CPU, at most 32)",
      requiresArg: true,
    })
    .example("$0 -i pool.raw -N testing -o pool.img -O pool.csum -s 4096", "uncompressed image and checksum file")
    .example("$0 -i pool.raw -N recovery -o recovery.img -O recovery.csum -s 4096 -z", "compressed recovery image")
    .example(
      "$0 -i pool.raw -N testing -o pool.img -O pool.csum --zstd",
      "zstd image for a quick netboot through our bootserver",
    );
  const { args, free } = await parseLikeGetopts(parser, PROGRAM, packageJson.version);
  for (const word of free) console.error(`${PROGRAM}: warning: ignoring "${word}", as the existing mkimage does`);

  if (args.compress && args.zstd)
    throw new UserError(`-z (zlib) and --zstd cannot be used together; see ${PROGRAM} --help`, EXIT_USAGE);
  const levels = args.zstd ? ZSTD_LEVELS : ZLIB_LEVELS;
  const level =
    args.level === undefined
      ? levels.default
      : wholeNumber(args.zstd ? "--level with --zstd" : "--level", args.level, levels.min, levels.max);
  const jobs = wholeNumber("--jobs", args.jobs, 1, MAX_JOBS);
  if (args.blockSize !== undefined && !args.zstd)
    throw new UserError(`--block-size is for --zstd images only; see ${PROGRAM} --help`, EXIT_USAGE);
  const blockSize =
    args.blockSize === undefined
      ? ZSTD_BLOCK_SIZE
      : wholeNumber("--block-size", args.blockSize, 1, ZSTD_MAX_BLOCK_SIZE / MIB) * MIB;
  const compression: Compression = args.zstd
    ? { codec: "zstd", level, jobs, blockSize }
    : args.compress
      ? { codec: "zlib", level: level as ZlibLevel, jobs }
      : { codec: "stored" };
  await makeImage({
    input: args.input,
    output: args.output,
    ...(args.checksumFile === undefined ? {} : { checksumFile: args.checksumFile }),
    targetSize: wholeNumber("-s", args.targetSize, 0, MAX_TARGET_MIB, TARGET_TOO_LARGE) * MIB,
    imageName: args.name,
    dataset: args.dataset,
    compression,
    threads: IMAGE_THREADS,
    onWarning: (message) => console.error(`${PROGRAM}: warning: ${message}`),
  });
  console.log("ok, image written!");
  if (args.checksumFile !== undefined) console.log("ok, boot_image_csum file written!");
}

await runMain(PROGRAM, main);
