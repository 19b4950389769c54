/**
 * The checks the sled kernel makes of an OFFER before it accepts it
 * (docs/netboot.md, "What the sled kernel does", step 1): the checksum must be the one in its boot
 * archive, both sizes at least 1 MiB, the image no larger than the ramdisk,
 * and the dataset name NUL-terminated. An OFFER that fails any of them is
 * ignored, and the sled keeps saying HELLO.
 */

import { equalBytes } from "@ramdisk-tools/bytes/equal.ts";
import { NETBOOT_MIN_SIZE, toHex } from "@ramdisk-tools/image/format.ts";
import { OFFER_DATASET_SIZE, type Offer } from "@ramdisk-tools/protocol/frames.ts";

/**
 * Why the sled kernel would ignore this OFFER, one reason per failed check;
 * empty when it would accept it.
 *
 * @example offerRefusals(offer, checksum) // ["image size 2097152 is more than ramdisk size 1048576"]
 */
export function offerRefusals(offer: Offer, checksum: Uint8Array): string[] {
  const refusals: string[] = [];
  if (!equalBytes(offer.sha256, checksum)) {
    refusals.push(`sha256 ${toHex(offer.sha256)} is not the wanted ${toHex(checksum)}`);
  }
  const minimum = BigInt(NETBOOT_MIN_SIZE);
  if (offer.ramdiskSize < minimum) refusals.push(`ramdisk size ${offer.ramdiskSize} is less than 1 MiB`);
  if (offer.imageSize < minimum) refusals.push(`image size ${offer.imageSize} is less than 1 MiB`);
  if (offer.imageSize > offer.ramdiskSize) {
    refusals.push(`image size ${offer.imageSize} is more than ramdisk size ${offer.ramdiskSize}`);
  }
  const last = offer.dataset[OFFER_DATASET_SIZE - 1];
  if (last !== 0) refusals.push(`dataset field is not NUL-terminated (byte 127 is ${last})`);
  // Offsets are kept as JavaScript numbers; no real ramdisk comes near 2^53 bytes.
  if (offer.imageSize > BigInt(Number.MAX_SAFE_INTEGER))
    refusals.push(`image size ${offer.imageSize} is too large to emulate`);
  return refusals;
}
