/**
 * Which image the boot server offers a sled: the one pinned to its MAC, else
 * the images in turn on its successive HELLOs. A sled ignores an OFFER whose
 * checksum is not the one in its boot archive and says HELLO again four
 * seconds later, so offering each image in turn finds the one it wants.
 * Images are loaded once (lib/netboot/served-image.ts) and reloaded on a
 * HELLO after their file changed; an image that failed its check is
 * forgotten, and its file refuses it until the file changes.
 */

import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import { macKey } from "@ramdisk-tools/protocol/frames.ts";
import { type ServedImage, ServedImageFile } from "./served-image.ts";
import type { ServedImageThreads } from "./threads.ts";

/**
 * The image files a server offers, and the image each holds as last loaded.
 *
 * @example
 * const choice = new ImageChoice(["host.img", "recovery.img"], [], SERVER_THREADS);
 * await choice.load();
 * const file = choice.fileFor(macKey(mac), sled.offers++);
 */
export class ImageChoice {
  readonly #rotation: ServedImageFile[];
  readonly #pinned: Map<number, ServedImageFile>;
  readonly #loaded = new Map<ServedImageFile, ServedImage>();

  /**
   * `images` in turn, `pinned` by MAC, loaded by the threads `threads`; zstd images keep
   * `zstdCacheBytes` of decompressed blocks (block-cache.ts).
   */
  constructor(
    images: readonly [string, ...string[]],
    pinned: readonly [Mac, string][],
    threads: ServedImageThreads,
    zstdCacheBytes?: number,
  ) {
    const files = new Map<string, ServedImageFile>();
    const fileFor = (path: string) =>
      files.get(path) ?? files.set(path, new ServedImageFile(path, threads, zstdCacheBytes)).get(path)!;
    this.#rotation = images.map(fileFor);
    this.#pinned = new Map(pinned.map(([mac, path]) => [macKey(mac), fileFor(path)]));
  }

  /** Load every file once; rejects with the first that cannot be served. */
  load(): Promise<ServedImage[]> {
    const files = [...new Set([...this.#rotation, ...this.#pinned.values()])];
    return Promise.all(
      files.map(async (file) => {
        const image = await file.current();
        this.#loaded.set(file, image);
        return image;
      }),
    );
  }

  /** The file to offer the sled with MAC key `key` on its `turn`th offer (counting from 0). */
  fileFor(key: number, turn: number): ServedImageFile {
    return this.#pinned.get(key) ?? this.#rotation[turn % this.#rotation.length]!;
  }

  /** `file` holds `image` now; returns what it held before (undefined for an image forgotten or never loaded). */
  update(file: ServedImageFile, image: ServedImage): ServedImage | undefined {
    const previous = this.#loaded.get(file);
    this.#loaded.set(file, image);
    return previous;
  }

  /** The images the sled with MAC key `key` may be reading: its pinned one, else every one loaded. */
  candidates(key: number): ServedImage[] {
    const pinned = this.#pinned.get(key);
    const served = pinned ? [this.#loaded.get(pinned)] : [...this.#loaded.values()];
    return served.filter((image) => image !== undefined);
  }

  /** Forget `image` (it failed its check), so that its memory goes once its sessions end. */
  forget(image: ServedImage): void {
    for (const [file, loaded] of this.#loaded) if (loaded === image) this.#loaded.delete(file);
  }

  /** Let go of every image loaded (the server stops). */
  retire(): void {
    for (const image of this.#loaded.values()) image.retire?.();
  }
}
