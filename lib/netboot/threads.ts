/**
 * The threads the boot server starts, each running a module of this package
 * or of the image package. Their entry points import these packages, so
 * neither can name them: the program hands their URLs down (each as `new
 * Worker` takes it), through BootServerOptions. A field left out is a compile
 * error at the one place that names them all.
 */

import type { ImageThreads } from "@ramdisk-tools/image/threads.ts";

/** Every thread of the boot server, by the module it runs. */
export interface ServerThreads extends Pick<ImageThreads, "inflateStage"> {
  /** The dispatcher: capture, routing, recording (dispatcher-loop.ts). */
  dispatcherLoop: string;
  /** One sled's session (session-loop.ts). */
  sessionLoop: string;
  /** The fill and check of a plain or zlib image beside its sessions (image-fill.ts, fillInThread). */
  imageFill: string;
  /** A zstd image's read-ahead into its block cache (block-cache.ts, ZstdImageReader.readAhead). */
  blockCache: string;
}

/** The threads loading an image starts (served-image.ts): the fill, which starts an inflate stage, and the read-ahead. */
export type ServedImageThreads = Pick<ServerThreads, "imageFill" | "inflateStage" | "blockCache">;
