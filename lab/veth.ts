/**
 * Virtual Ethernet pairs for network tests: two linked interfaces in the
 * root namespace, created and removed by the test itself, so frames sent on
 * one end arrive on the other and reach nothing else. IPv6 is switched off on
 * both ends so the kernel adds no router solicitations or neighbour discovery
 * of its own to the captured traffic.
 */

import { existsSync, writeFileSync } from "node:fs";
import { oneLine } from "@ramdisk-tools/errors/errors.ts";
import { libpcapVersion } from "@ramdisk-tools/wire/libpcap-ffi.ts";

export interface VethPair {
  /** Interface names of the two ends. */
  a: string;
  b: string;
  /** Delete the pair (deleting one end deletes both). Safe to call twice. */
  remove(): Promise<void>;
}

/** Linux's IFNAMSIZ is 16 with the NUL: names are at most 15 bytes. */
const IFNAME_MAX = 15;

/**
 * Whether this process may create veth pairs and open raw links; `why` says
 * what is missing, for a test's skip message.
 *
 * @example const raw = canUseRawNetwork(); test.skipIf(!raw.ok)(`sends frames (${raw.why})`, ...)
 */
export function canUseRawNetwork(): { ok: boolean; why?: string } {
  if (process.platform !== "linux") return { ok: false, why: "veth pairs need Linux" };
  if (process.getuid?.() !== 0) return { ok: false, why: "needs root to create veth pairs and open raw links" };
  if (!Bun.which("ip")) return { ok: false, why: "needs the ip command (iproute2)" };
  try {
    libpcapVersion();
  } catch (error) {
    return { ok: false, why: oneLine(error) };
  }
  return { ok: true };
}

/**
 * Create a veth pair named `PREFIX` + A/B + a random suffix, both ends up,
 * without IPv6, and wait until both are operationally up.
 *
 * @example const pair = await createVethPair("rpc"); try { ... } finally { await pair.remove(); }
 */
export async function createVethPair(prefix = "rpc"): Promise<VethPair> {
  // At least 8 random hex digits, so pairs made at the same time by other tests never clash.
  const room = IFNAME_MAX - prefix.length - 1;
  if (room < 8) throw new Error(`veth prefix "${prefix}" is too long for unique names of ${IFNAME_MAX} bytes`);
  const suffix = crypto.randomUUID().replaceAll("-", "").slice(0, room);
  const a = `${prefix}A${suffix}`;
  const b = `${prefix}B${suffix}`;
  let removed = false;
  const pair: VethPair = {
    a,
    b,
    async remove() {
      if (removed) return;
      removed = true;
      // Deleting fails only when the pair is already gone, which is what we want.
      Bun.spawnSync(["ip", "link", "del", a], { stdout: "ignore", stderr: "ignore" });
    },
  };
  run(["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
  try {
    for (const end of [a, b]) {
      disableIpv6(end);
      run(["ip", "link", "set", end, "up"]);
    }
    await waitUntilUp([a, b]);
  } catch (error) {
    await pair.remove();
    throw error;
  }
  return pair;
}

/**
 * Run `fn` with a fresh veth pair and remove the pair afterwards, whatever happens.
 *
 * @example await withVethPair(async ({ a, b }) => { ... });
 */
export async function withVethPair<T>(fn: (pair: VethPair) => Promise<T> | T, prefix = "rpc"): Promise<T> {
  const pair = await createVethPair(prefix);
  try {
    return await fn(pair);
  } finally {
    await pair.remove();
  }
}

/** Off before the link comes up, so not even the first router solicitation is sent. */
function disableIpv6(link: string): void {
  // Without the directory the kernel has no IPv6 at all, and nothing to switch off.
  if (!existsSync("/proc/sys/net/ipv6/conf")) return;
  writeFileSync(`/proc/sys/net/ipv6/conf/${link}/disable_ipv6`, "1\n");
}

function run(command: string[]): void {
  const result = Bun.spawnSync(command, { stdout: "ignore", stderr: "pipe" });
  if (result.exitCode !== 0) {
    throw new Error(`${command.join(" ")} failed (exit ${result.exitCode}): ${result.stderr.toString().trim()}`);
  }
}

async function waitUntilUp(links: string[], timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const states = await Promise.all(links.map((link) => Bun.file(`/sys/class/net/${link}/operstate`).text()));
    if (states.every((state) => state.trim() === "up")) return;
    if (Date.now() > deadline) {
      throw new Error(
        `veth links ${links.join(", ")} are not up after ${timeoutMs} ms (${states.map((s) => s.trim()).join(", ")})`,
      );
    }
    await Bun.sleep(10);
  }
}
