/**
 * The boot server's record of what each sled took: the image it was offered
 * and READ, kept in a small file so that a restarted server can go on
 * serving the sleds that were mid-boot (docs/operators.md, "Restarting the
 * server").
 *
 * The sled kernel never re-checks an offer once it has taken it: it goes on
 * asking the server's MAC for offsets of that image, re-asking every second
 * whatever is unanswered. A server that restarts on the same link with the
 * same image can therefore simply answer. What it must know is which image:
 * the record says, by the image's identity (its header's SHA-256, image size
 * and ramdisk size; the path is kept for messages), so that a rebuilt or
 * renamed file is matched by content, never by name.
 *
 * A sled enters the record when it first READs an offer (so made-up MACs
 * that only say HELLO leave nothing behind) and leaves it when it says
 * FINISHED or HELLO (it started over). The file is rewritten whole, to a
 * temporary file beside it that is synced and renamed into place, after
 * every change: a server killed at any moment leaves the old record or the
 * new one, never half of one. It is about 230 bytes per sled and changes
 * about twice per boot; written synchronously on the main thread (never on
 * the dispatcher or a session thread, which go on serving meanwhile), each
 * write with its sync took 1.2 ms on ext4 for a record of 64 sleds.
 */

import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { toHex } from "@ramdisk-tools/image/format.ts";
import { formatMac, type Mac, macKey, parseMac } from "@ramdisk-tools/protocol/frames.ts";
import type { ServedImage } from "./served-image.ts";

/** Where the record lives unless `--state-dir` says otherwise (systemd's StateDirectory= sets $STATE_DIRECTORY). */
export const DEFAULT_STATE_DIR = "/var/lib/ramdisk-tools/bootserver";
/** Sleds the record holds at most; past it the oldest entry goes (a rack is 32). */
export const MAX_RECORDED_SLEDS = 4096;
/** An entry older than this is dropped when the record is read: no boot takes a day. */
export const RECORD_MAX_AGE_MS = 24 * 60 * 60 * 1000;
const RECORD_VERSION = 1;

/** The state directory to use: `chosen` (`--state-dir`), else the first of $STATE_DIRECTORY, else DEFAULT_STATE_DIR. */
export function stateDirectory(chosen: string | undefined, env: Record<string, string | undefined>): string {
  if (chosen !== undefined) return chosen;
  const systemd = env.STATE_DIRECTORY?.split(":")[0];
  return systemd || DEFAULT_STATE_DIR;
}

/** What a sled was offered and took. */
export interface OfferEntry {
  sled: string;
  /** The image file, absolute, as it was when offered (for messages). */
  path: string;
  /** The image's identity: its header's SHA-256 of the raw image (hex) and sizes. */
  sha256: string;
  imageSize: number;
  ramdiskSize: number;
  /** Epoch milliseconds of the offer. */
  offeredAt: number;
  /** The very image offered, while this server runs (a reloaded file keeps the old bytes for its sleds). */
  image?: ServedImage;
}

/** Does `image` have the identity the entry records? */
export function sameIdentity(entry: OfferEntry, image: ServedImage): boolean {
  const { header } = image;
  return (
    entry.sha256 === toHex(header.sha256) &&
    entry.imageSize === header.imageSize &&
    entry.ramdiskSize === header.targetSize
  );
}

/**
 * The sleds that took an offer, in memory and, given a file, on disk (see
 * the module comment). Writing failures do not stop the server: they go to
 * `onProblem` once, and the record goes on in memory.
 *
 * @example
 * const record = OfferRecord.open("/var/lib/ramdisk-tools/bootserver/offers-eth1.json", Date.now(), warn);
 * record.remember(sledMac, image, Date.now());
 */
export class OfferRecord {
  readonly #entries = new Map<number, OfferEntry>();
  #failed = false;

  private constructor(
    /** The file, or null to keep the record in memory only. */
    readonly file: string | null,
    private readonly onProblem: (message: string) => void,
  ) {}

  /** A record kept in memory only. */
  static inMemory(): OfferRecord {
    return new OfferRecord(null, () => {});
  }

  /**
   * The record in `dir` for the server on `link`, read when it exists;
   * creates `dir`. Throws (a one-line Error) when `dir` cannot be created or
   * written; a record file that cannot be read is reported to `onProblem`
   * and started over.
   */
  static open(dir: string, link: string, now: number, onProblem: (message: string) => void): OfferRecord {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
    } catch (error) {
      throw new Error(`cannot create the state directory ${dir}: ${systemReason(error)}`);
    }
    // One file per link: two servers on one host (on different links) keep separate records.
    const record = new OfferRecord(join(dir, `offers-${link}.json`), onProblem);
    let text: string | undefined;
    try {
      text = readFileSync(record.file!, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT")
        onProblem(`cannot read ${record.file}: ${systemReason(error)}; starting a new record`);
    }
    if (text !== undefined) {
      try {
        record.#load(JSON.parse(text), now);
      } catch (error) {
        onProblem(`${record.file} is not a record of offers (${(error as Error).message}); starting a new record`);
        record.#entries.clear();
      }
    }
    // Written at once, so that a directory the server cannot write is known now, not mid-boot.
    record.#save(true);
    return record;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(sled: Mac): OfferEntry | undefined {
    return this.#entries.get(macKey(sled));
  }

  /** Every entry, oldest offer first. */
  entries(): OfferEntry[] {
    return [...this.#entries.values()];
  }

  /** `sled` took `image`; saved unless it was already recorded so. */
  remember(sled: Mac, image: ServedImage, now: number): void {
    const key = macKey(sled);
    const known = this.#entries.get(key);
    if (known?.image === image) return;
    if (known && sameIdentity(known, image)) {
      known.image = image;
      return;
    }
    this.#entries.delete(key);
    this.#entries.set(key, {
      sled: formatMac(sled),
      path: resolve(image.path),
      sha256: toHex(image.header.sha256),
      imageSize: image.header.imageSize,
      ramdiskSize: image.header.targetSize,
      offeredAt: now,
      image,
    });
    // Maps keep insertion order: the first is the oldest.
    if (this.#entries.size > MAX_RECORDED_SLEDS) this.#entries.delete(this.#entries.keys().next().value!);
    this.#save();
  }

  /** `sled` finished or started over; saved when it was recorded. */
  forget(sled: Mac): void {
    if (this.#entries.delete(macKey(sled))) this.#save();
  }

  #load(json: unknown, now: number): void {
    const record = json as { version?: unknown; sleds?: unknown };
    if (record?.version !== RECORD_VERSION || !Array.isArray(record.sleds)) throw new Error("unknown version");
    for (const item of record.sleds as Partial<OfferEntry>[]) {
      const mac = typeof item.sled === "string" ? parseMac(item.sled) : null;
      const valid =
        mac &&
        typeof item.path === "string" &&
        typeof item.sha256 === "string" &&
        /^[0-9a-f]{64}$/.test(item.sha256) &&
        Number.isSafeInteger(item.imageSize) &&
        Number.isSafeInteger(item.ramdiskSize) &&
        Number.isSafeInteger(item.offeredAt);
      if (!valid) throw new Error(`a malformed entry: ${JSON.stringify(item)}`);
      if (now - item.offeredAt! > RECORD_MAX_AGE_MS) continue;
      this.#entries.set(macKey(mac), {
        sled: formatMac(mac),
        path: item.path!,
        sha256: item.sha256!,
        imageSize: item.imageSize!,
        ramdiskSize: item.ramdiskSize!,
        offeredAt: item.offeredAt!,
      });
    }
  }

  /** Write the record to a temporary file beside it, sync it, rename it into place. */
  #save(throwing = false): void {
    const file = this.file;
    if (file === null) return;
    const sleds = this.entries().map(({ image: _, ...entry }) => entry);
    const text = `${JSON.stringify({ version: RECORD_VERSION, sleds }, null, 1)}\n`;
    // One name, not one per process: a temporary file left by a server killed mid-write is replaced by the next.
    const temporary = `${file}.tmp`;
    try {
      const fd = openSync(temporary, "w", 0o644);
      try {
        writeSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temporary, file);
      this.#failed = false;
    } catch (error) {
      rmSync(temporary, { force: true });
      const message = `cannot write ${file}: ${systemReason(error)}`;
      if (throwing) throw new Error(message);
      // Said once until a write succeeds again: a full disk must not flood the log.
      if (!this.#failed) this.onProblem(`${message}; sleds that took an offer since may be RESET after a restart`);
      this.#failed = true;
    }
  }
}
