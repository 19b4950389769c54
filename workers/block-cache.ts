/**
 * Thread entry point: read one zstd image's blocks ahead of the sleds being
 * served it, decompressing each block sessions hint at into the shared
 * cache (lib/netboot/block-cache.ts, ZstdImageReader.readAhead), until
 * stopReadAhead(). lib/netboot/served-image.ts starts one per zstd image.
 */
import { type ZstdImageMemory, ZstdImageReader } from "@ramdisk-tools/netboot/block-cache.ts";

declare var self: Worker;

self.onmessage = (event: MessageEvent<ZstdImageMemory>) => {
  new ZstdImageReader(event.data).readAhead();
  self.postMessage("stopped");
};
