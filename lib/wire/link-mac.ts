/**
 * A link's own MAC address, read from sysfs rather than through libpcap: a
 * program learns it without opening the link (and without root), and a
 * link handle learns it once when it opens.
 */

import { readFileSync } from "node:fs";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { PcapError } from "./libpcap-ffi.ts";

/**
 * A link's MAC address as the kernel reports it, without opening the link.
 *
 * @example formatMac(readLinkMac("veth0")) // "02:fc:00:00:00:01"
 */
export function readLinkMac(link: string): Uint8Array {
  const path = `/sys/class/net/${link}/address`;
  let text: string;
  try {
    text = readFileSync(path, "utf8").trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT")
      throw new PcapError(`there is no link named ${link} (see "ip link")`);
    throw new PcapError(`cannot read the MAC address of link ${link} from ${path}: ${systemReason(error)}`);
  }
  const octets = text.split(":");
  if (octets.length !== 6 || octets.some((octet) => !/^[0-9a-f]{2}$/i.test(octet))) {
    throw new PcapError(`link ${link} has no Ethernet MAC address (${path} says "${text}")`);
  }
  return Uint8Array.from(octets, (octet) => parseInt(octet, 16));
}
