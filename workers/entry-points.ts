/**
 * Every thread entry point, named once, beside this module. The entry points
 * import the packages whose threads they run, so those packages cannot name
 * them: the programs (and the tests) hand these URLs down, one record per
 * package, and scripts/build.ts embeds each one in the standalone binary.
 */
import type { ImageThreads } from "@ramdisk-tools/image/threads.ts";
import type { ServerThreads } from "@ramdisk-tools/netboot/threads.ts";
import { entryPointUrl } from "@ramdisk-tools/threads/entry-point-url.ts";

/** The entry point workers/NAME.ts, found in a compiled binary too. */
function beside(name: string): string {
  return entryPointUrl(`${name}.ts`, import.meta.url, "workers");
}

/** The threads of the image package (mkimage, lookimage). */
export const IMAGE_THREADS: ImageThreads = {
  blockHasher: beside("block-hasher"),
  zlibDeflate: beside("zlib-deflate"),
  zstdFrames: beside("zstd-frames"),
  hashStage: beside("hash-stage"),
  inflateStage: beside("inflate-stage"),
  verifyZstd: beside("verify-zstd"),
};

/** The threads of the boot server. */
export const SERVER_THREADS: ServerThreads = {
  dispatcherLoop: beside("dispatcher-loop"),
  sessionLoop: beside("session-loop"),
  imageFill: beside("image-fill"),
  blockCache: beside("block-cache"),
  inflateStage: IMAGE_THREADS.inflateStage,
};

/** Every entry point above, once each. */
export const ENTRY_POINTS: readonly string[] = [
  ...new Set([...Object.values(IMAGE_THREADS), ...Object.values(SERVER_THREADS)]),
];
