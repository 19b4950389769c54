/**
 * What the boot server does with a READ from a sled it has no session or
 * fresh offer for: a sled that was mid-boot when the server restarted, or
 * whose session was released while it was quiet (printing on a slow serial
 * console, say). A RESET would make it panic and reboot, which on a real
 * sled costs minutes (netboot.md, "RESET"), so it is served whenever the
 * server can tell which image it is reading:
 *
 * 1. From the record of what it took (lib/netboot/offer-record.ts): the image of
 *    that identity (SHA-256 and sizes), if this server still serves one and
 *    the READ fits it. A record whose image is no longer served means a
 *    RESET: serving it another image's bytes would fail its checksum after
 *    the whole transfer.
 * 2. Without a record, from the READ itself: the sled asks for offsets of
 *    its image in 1024-byte chunks, batches of 128 KiB, never past the image
 *    (rounded up to a whole batch). When exactly one served image (the one
 *    pinned to the sled, if it has one) has room for every offset asked,
 *    that is the image. When several do, or none, nothing says which image
 *    the sled wants, and it is RESET with that reason. A READ alone is
 *    believed only when the sled READs again a moment later, as a sled
 *    re-asks every second (ReadConfirmations): a made-up MAC that fires one
 *    READ gets neither a session nor a RESET.
 */

import { CHUNK_SIZE, type ReadRequest, requestedOffsets } from "@ramdisk-tools/protocol/frames.ts";
import { type OfferEntry, sameIdentity } from "./offer-record.ts";
import type { ServedImage } from "./served-image.ts";

/** A sled's batch: 128 slots of 1024 bytes. */
const BATCH_BYTES = 128 * CHUNK_SIZE;
/**
 * A sled with no record is resumed from its READ alone only when it READs
 * again at least this long after (a sled re-asks every second)...
 */
const CONFIRM_AFTER_MS = 500;
/** ...and no longer than this after. */
const CONFIRM_WITHIN_MS = 10_000;

export type ResumeDecision =
  | { image: ServedImage; how: string }
  /** Send a RESET: `reason` says why no image could be chosen. */
  | { reason: string };

/** Can `read` be asked by a sled reading an image of `imageSize` bytes? */
export function readFits(read: ReadRequest, imageSize: number): boolean {
  const end = BigInt(Math.ceil(imageSize / BATCH_BYTES) * BATCH_BYTES);
  const chunk = BigInt(CHUNK_SIZE);
  return requestedOffsets(read).every((offset) => offset < end && offset % chunk === 0n);
}

/** The furthest offset `read` asks for, for messages. */
function furthest(read: ReadRequest): bigint {
  let max = 0n;
  for (const offset of requestedOffsets(read)) if (offset > max) max = offset;
  return max;
}

/**
 * Which image serves `read` from a sled with no session: see the module
 * comment. `recorded` is the sled's entry in the offer record, `candidates`
 * the images served now (only the pinned one for a pinned sled).
 *
 * @example resumeDecision(record.get(mac), read, [image]) // { image, how: "its READ fits only a.img" }
 */
export function resumeDecision(
  recorded: OfferEntry | undefined,
  read: ReadRequest,
  candidates: readonly ServedImage[],
): ResumeDecision {
  if (recorded) {
    const image = [recorded.image, ...candidates].find((served) => served && sameIdentity(recorded, served));
    if (!image) {
      return {
        reason: `it was offered ${recorded.path} (sha256 ${recorded.sha256}), which this server no longer serves`,
      };
    }
    if (!readFits(read, image.header.imageSize)) {
      return {
        reason: `it asked for offset ${furthest(read)}, which does not fit the ${image.header.imageSize}-byte ${image.name} it was offered`,
      };
    }
    return { image, how: `it was offered ${image.name}` };
  }
  const fitting = [...new Set(candidates)].filter((image) => readFits(read, image.header.imageSize));
  if (fitting.length === 1)
    return { image: fitting[0]!, how: `no record of it, and its READ fits only ${fitting[0]!.name}` };
  if (fitting.length === 0)
    return { reason: `no record of it, and its READ (up to offset ${furthest(read)}) fits none of the images served` };
  return {
    reason: `no record of it, and its READ (up to offset ${furthest(read)}) fits ${fitting.length} images served (${fitting
      .map((image) => image.name)
      .join(", ")})`,
  };
}

/**
 * Sleds with no record whose READ fitted one image, by MAC key: when, so that
 * their next READ, CONFIRM_AFTER_MS to CONFIRM_WITHIN_MS later, resumes them.
 *
 * @example if (!confirmations.confirms(macKey(mac), Date.now())) return; // unanswered for now
 */
export class ReadConfirmations {
  readonly #noted = new Map<number, number>();

  /** Whether a READ from the sled `key` at `now` confirms the one noted before it; else it is noted, when none is pending. */
  confirms(key: number, now: number): boolean {
    const noted = this.#noted.get(key);
    const since = noted === undefined ? Number.POSITIVE_INFINITY : now - noted;
    if (since < CONFIRM_AFTER_MS || since > CONFIRM_WITHIN_MS) {
      if (since > CONFIRM_WITHIN_MS) this.#noted.set(key, now);
      return false;
    }
    this.#noted.delete(key);
    return true;
  }

  /** Forget the READs too old to be confirmed, so that a flood of made-up MACs leaves nothing behind. */
  expire(now: number): void {
    for (const [key, noted] of this.#noted) if (now - noted > CONFIRM_WITHIN_MS) this.#noted.delete(key);
  }
}
