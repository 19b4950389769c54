#!/usr/bin/env bun
/**
 * ramdisk-tools: the four programs in one executable (scripts/build.ts
 * compiles this file). It runs the program named by the name it is invoked
 * under, through a link such as `mkimage -> ramdisk-tools`, or else by its
 * first argument: `ramdisk-tools mkimage -i pool.raw -o pool.img`.
 */
import { basename } from "node:path";
import { EXIT_STATUS_HELP, runMain } from "@ramdisk-tools/cli/conventions.ts";
import { PROGRAMS, type Program } from "@ramdisk-tools/cli/programs.ts";
import { EXIT_USAGE, UserError } from "@ramdisk-tools/errors/errors.ts";
import { hideBin } from "yargs/helpers";
import packageJson from "../package.json" with { type: "json" };

const NAME = "ramdisk-tools";

/**
 * Each program's module, which runs it when imported (it parses
 * hideBin(process.argv)). Literal paths, so that the bundler embeds them all.
 */
const RUN: Record<Program, () => Promise<unknown>> = {
  mkimage: () => import("./mkimage.ts"),
  lookimage: () => import("./lookimage.ts"),
  bootserver: () => import("./bootserver.ts"),
  sled: () => import("./sled.ts"),
};

const HELP = `Usage: ${NAME} PROGRAM [ARGUMENTS...]
       PROGRAM [ARGUMENTS...]   (through a link named after the program)

Make, inspect and netboot-serve Oxide sled ramdisk boot images. The programs:
  mkimage     wrap a raw pool file into a boot image
  lookimage   print a boot image's header and verify its payload
  bootserver  serve boot images to sleds booting from the network
  sled        emulate sleds booting from the network, to test a boot server

\`${NAME} PROGRAM --help\` tells about one program.

${EXIT_STATUS_HELP} Otherwise the program's own.
`;

function isProgram(name: string | undefined): name is Program {
  return (PROGRAMS as readonly (string | undefined)[]).includes(name);
}

/** The program a link names, or the one the first argument names (taken out of process.argv for it). */
function chosenProgram(): Program | null {
  // A compiled binary sees the name it was run under in argv0; from source argv0 is bun.
  const invokedAs = basename(process.argv0);
  if (isProgram(invokedAs)) return invokedAs;
  const first = hideBin(process.argv)[0];
  if (!isProgram(first)) return null;
  // The program parses hideBin(process.argv), which must then start with its own arguments.
  process.argv.splice(process.argv.length - hideBin(process.argv).length, 1);
  return first;
}

const program = chosenProgram();
if (program) await RUN[program]();
else {
  await runMain(NAME, async () => {
    const first = hideBin(process.argv)[0];
    if (first === "--help" || first === "-h") process.stdout.write(HELP);
    else if (first === "--version") console.log(packageJson.version);
    else if (first === undefined)
      throw new UserError(`which program? one of ${PROGRAMS.join(", ")}; see ${NAME} --help`, EXIT_USAGE);
    else throw new UserError(`no program "${first}": one of ${PROGRAMS.join(", ")}; see ${NAME} --help`, EXIT_USAGE);
  });
}
