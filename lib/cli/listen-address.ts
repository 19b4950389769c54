/**
 * `ADDR:PORT`, the way a program is told where to listen (`bootserver
 * --metrics`): an IPv4 address or a host name, or an IPv6 address in
 * brackets as in a URL, then a port.
 */

/**
 * `ADDR:PORT` as a host name and port, or null: an IPv4 address or a host
 * name, or an IPv6 address in brackets, then a port from 0 to 65535 (0 lets
 * the system choose a free one).
 *
 * @example parseListenAddress("127.0.0.1:9100") // { hostname: "127.0.0.1", port: 9100 }
 * @example parseListenAddress("[::1]:9100") // { hostname: "::1", port: 9100 }
 */
export function parseListenAddress(text: string): { hostname: string; port: number } | null {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (!match) return null;
  const port = Number(match[3]);
  if (port > 65535) return null;
  return { hostname: match[1] ?? match[2]!, port };
}
