#!/usr/bin/env bun

/**
 * lookimage: print a boot image's header and verify its payload; with
 * --extract, also write the raw pool back out.
 *
 * Standard output is byte for byte what the existing Rust lookimage prints
 * (tests/vectors/*.lookimage.txt), because people and scripts read it;
 * everything new (warnings, progress) goes to standard error, or with
 * --json into one JSON object (docs/lookimage-json.md). A zstd image
 * (docs/format.md) prints the same lines, its flags by name.
 */

import { parseLikeGetopts, runMain } from "@ramdisk-tools/cli/conventions.ts";
import { EXIT_FAILURE, EXIT_USAGE, UserError } from "@ramdisk-tools/errors/errors.ts";
import { payloadHeader, payloadSizeRefusal } from "@ramdisk-tools/image/format.ts";
import { formatRatio, headerLines, jsonReport, jsonText, readHeader, warnings } from "@ramdisk-tools/image/report.ts";
import { extractPayload, type PayloadVerdict, rawOutputTarget, verifyPayload } from "@ramdisk-tools/image/verify.ts";
import { startProgress } from "@ramdisk-tools/progress/progress.ts";
import yargs from "yargs";
import packageJson from "../package.json" with { type: "json" };
import { IMAGE_THREADS } from "../workers/entry-points.ts";

const PROGRAM = "lookimage";

/** Write to standard output and wait until it has gone, so an exit right after loses nothing. */
function print(text: string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(text, (error) => (error ? reject(error) : resolve())));
}

async function main(): Promise<number> {
  const parser = yargs()
    .scriptName(PROGRAM)
    .usage(
      "Usage: $0 [-s|--skip-checksum] [--json] IMAGE\n       $0 --extract RAW [--json] IMAGE\n\n" +
        "Print a boot image's header (version 2, or this project's zstd variant) and verify its payload against it.",
    )
    .option("skip-checksum", {
      alias: "s",
      type: "boolean",
      default: false,
      describe: "print the header only; do not read the payload",
    })
    .option("json", {
      type: "boolean",
      default: false,
      describe: "print the facts as one JSON object (docs/lookimage-json.md)",
    })
    .option("extract", {
      type: "string",
      requiresArg: true,
      describe: "also write the raw pool to this file, atomically, only if the payload verifies",
    })
    .check((argv) => {
      // Not yargs' conflicts(): a boolean with a default counts as given.
      if (argv.extract !== undefined && argv.skipChecksum) {
        throw new Error(
          "--extract writes the raw pool only once it has verified it, so it cannot go with -s/--skip-checksum",
        );
      }
      return true;
    })
    .example("$0 recovery.img", "print the header, then inflate and check the payload's size and SHA-256")
    .example("$0 -s --json recovery.img", "the header as JSON, without reading the payload")
    .example("$0 --extract pool.raw recovery.img", "verify, and write the raw pool to pool.raw");
  const { args, free } = await parseLikeGetopts(parser, PROGRAM, packageJson.version);
  // The existing lookimage's question, for anything but one image.
  if (free.length !== 1) {
    const given = free.length === 0 ? "none given" : `not ${free.length}: ${free.join(" ")}`;
    throw new UserError(
      `which image file do you want to inspect? one IMAGE, ${given}; see ${PROGRAM} --help`,
      EXIT_USAGE,
    );
  }
  const path = free[0]!;
  const { fields, codec } = await readHeader(path);
  // Refused before anything is printed or read: a raw file may never replace the image it comes from.
  const rawOutput = args.extract === undefined ? null : await rawOutputTarget(args.extract, path);
  const refusal = payloadSizeRefusal(fields);

  if (!args.json) {
    await print(headerLines(fields, codec));
    if (refusal) throw new UserError(refusal);
    if (codec !== "stored") await print(`ratio = ${formatRatio(fields.imageSize, fields.dataSize)}x\n`);
  }
  const imageWarnings = warnings(fields, codec);
  for (const warning of imageWarnings) console.error(`${PROGRAM}: warning: ${warning}`);
  let verdict: PayloadVerdict | null = null;
  let unreachable: string | null = null;
  if (!args.skipChecksum && !refusal) {
    const payload = payloadHeader(fields);
    if (payload.header === null) unreachable = payload.refusal;
    else {
      const header = payload.header;
      const progress = startProgress(rawOutput ? "extracting" : "verifying", header.dataSize);
      const options = { threads: IMAGE_THREADS, onProgress: (done: number) => progress.update(done) };
      try {
        verdict = rawOutput
          ? await extractPayload(path, header, rawOutput, options)
          : await verifyPayload(path, header, options);
      } finally {
        progress.finish();
      }
    }
  }
  if (args.json) await print(jsonText(jsonReport(fields, codec, imageWarnings, verdict, refusal ?? unreachable)));
  const failure = verdict?.error ?? refusal ?? unreachable;
  if (failure) throw new UserError(failure, EXIT_FAILURE);
  if (rawOutput && !args.json) await print("ok, raw image written!\n");
  return 0;
}

await runMain(PROGRAM, main);
