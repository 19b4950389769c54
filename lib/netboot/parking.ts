/**
 * Silence is not death: a sled may go quiet for long stretches while it
 * prints on a slow serial console (netboot.md, "The console"), or when it is
 * simply slow. A session silent for SESSION_QUIET_MS is only parked: its
 * thread is released, but the sled's offer stands (the record of what it
 * took, lib/netboot/offer-record.ts), and its next READ starts a session
 * again (lib/netboot/resume.ts). A sled with no session silent as long is
 * forgotten, so that a flood of HELLOs from made-up MACs leaves nothing
 * behind.
 */

import type { Mac } from "@ramdisk-tools/protocol/frames.ts";
import type { SessionThread } from "./session-threads.ts";
import type { SledTable } from "./sleds.ts";

/** A session with no READ or HELLO for this long is parked: its thread goes, the sled's offer stays. */
export const SESSION_QUIET_MS = 20_000;

/** What parking a session takes from the server. */
export interface Parking {
  /** Sessions start only for sleds that READ their offer (admission): a session's sled took its offer. */
  admission: boolean;
  /** Tell the dispatcher that the sled's session ended: it asks about its next READ. */
  end(mac: Mac): void;
  /** Stop a session's thread. */
  stop(session: SessionThread): void;
  /** Forget what the sled took: it did not take it. */
  forget(mac: Mac): void;
  /** Say what became of a sled. */
  notice(message: string): void;
}

/**
 * Park the sessions of `sleds` that have been quiet for SESSION_QUIET_MS at
 * `now` (epoch ms), and forget the sleds without a session as quiet.
 *
 * @example setInterval(() => parkQuietSessions(sleds, Date.now(), parking), 1000);
 */
export function parkQuietSessions(sleds: SledTable, now: number, parking: Parking): void {
  for (const sled of sleds) {
    const session = sled.session;
    if (!session) {
      if (!sled.answering && now - sled.heardAt > SESSION_QUIET_MS) sleds.forget(sled.mac);
      continue;
    }
    const heardAt = Math.max(session.heardAt, session.counters.get("lastReadAt"));
    if (now - heardAt < SESSION_QUIET_MS) continue;
    sled.session = undefined;
    parking.end(sled.mac);
    parking.stop(session);
    const delivered = session.counters.get("deliveredBytes");
    const seconds = Math.round(SESSION_QUIET_MS / 1000);
    // With admission a session starts only for a sled that READ its offer: it took it.
    if (parking.admission || session.counters.get("reads") > 0) {
      parking.notice(
        `${sled.name} has been quiet for ${seconds} s, ${delivered} of ${session.image.header.imageSize} bytes ` +
          `of ${session.image.name} into its session: its thread is released; its offer stands and its next READ is served`,
      );
    } else {
      parking.forget(sled.mac);
      parking.notice(`${sled.name} did not take the offer of ${session.image.name} and went quiet`);
    }
  }
}
