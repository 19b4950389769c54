/**
 * The sleds the boot server has heard from, by MAC, with what it is doing
 * for each (lib/netboot/server.ts), and the views of them a display and the
 * metrics read: the transfers under way, and every sled's status.
 */

import { formatMac, type Mac, macKey } from "@ramdisk-tools/protocol/frames.ts";
import type { ServedImage } from "./served-image.ts";
import type { SessionThread } from "./session-threads.ts";
import { type SledProgress, sledProgress } from "./sled-progress.ts";

/** A sled the server has heard from. */
export interface Sled {
  mac: Mac;
  name: string;
  /** OFFERs made so far, to rotate through the images. */
  offers: number;
  /** A HELLO is being answered (its image may be loading). */
  answering: boolean;
  /** Told once that it waits for capacity. */
  deferred: boolean;
  /** Told once that `maxSleds` turned it away. */
  turnedAway: boolean;
  /** The image offered last, for the session that starts on its first READ. */
  offered?: ServedImage;
  /** Epoch milliseconds of its last HELLO, to forget sleds that went away. */
  heardAt: number;
  session?: SessionThread;
}

/** A sled the server has heard from, for the metrics (lib/netboot/metrics.ts). */
export interface SledStatus {
  /** The sled's MAC address, formatted. */
  sled: string;
  /** Its session's progress while it has one. */
  session: SledProgress | null;
  /** It was not offered an image because --boots sleds were already booting or done. */
  turnedAway: boolean;
}

/**
 * The sleds heard from, by MAC.
 *
 * @example const sled = sleds.add(mac); sled.heardAt = Date.now();
 */
export class SledTable {
  readonly #sleds = new Map<number, Sled>();

  /** The sled with `mac`, if it was heard from and not forgotten. */
  get(mac: Mac): Sled | undefined {
    return this.#sleds.get(macKey(mac));
  }

  /** The sled with `mac`, added when new (heard from now). */
  add(mac: Mac): Sled {
    const key = macKey(mac);
    let sled = this.#sleds.get(key);
    if (!sled) {
      sled = {
        mac,
        name: formatMac(mac),
        offers: 0,
        answering: false,
        deferred: false,
        turnedAway: false,
        heardAt: Date.now(),
      };
      this.#sleds.set(key, sled);
    }
    return sled;
  }

  /** Forget the sled with `mac` (it went away). */
  forget(mac: Mac): void {
    this.#sleds.delete(macKey(mac));
  }

  [Symbol.iterator](): IterableIterator<Sled> {
    return this.#sleds.values();
  }

  /** Sleds with a session. */
  live(): number {
    let live = 0;
    for (const sled of this.#sleds.values()) if (sled.session) live++;
    return live;
  }

  /** Sleds whose session has answered a READ. */
  transferring(): number {
    let transferring = 0;
    for (const sled of this.#sleds.values()) if (sled.session && sled.session.counters.get("reads") > 0) transferring++;
    return transferring;
  }

  /** Sessions serving `image`. */
  serving(image: ServedImage): number {
    let serving = 0;
    for (const sled of this.#sleds.values()) if (sled.session?.image === image) serving++;
    return serving;
  }

  /** The transfers under way at `now` (epoch ms), for a progress display. */
  progress(now: number): SledProgress[] {
    const transfers: SledProgress[] = [];
    for (const sled of this.#sleds.values()) {
      if (sled.session && sled.session.counters.get("reads") > 0) transfers.push(progressOf(sled, sled.session, now));
    }
    return transfers;
  }

  /** Every sled heard from, with its session's progress at `now` while it has one. */
  statuses(now: number): SledStatus[] {
    return [...this.#sleds.values()].map((sled) => ({
      sled: sled.name,
      session: sled.session ? progressOf(sled, sled.session, now) : null,
      turnedAway: sled.deferred,
    }));
  }
}

/** The progress of `sled`'s session at `now`. */
function progressOf(sled: Sled, session: SessionThread, now: number): SledProgress {
  return sledProgress(sled.name, session.image, session.counters, now);
}
