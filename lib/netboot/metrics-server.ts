/**
 * `bootserver --metrics ADDR:PORT`: an HTTP endpoint, by Bun.serve on the
 * main thread, serving the figures of lib/netboot/metrics.ts: Prometheus text format
 * on /metrics and the same snapshot as JSON on /status. A scrape reads the
 * threads' shared counters; it never waits on, or sends anything to, the
 * dispatcher or the session threads, so the frame path does not see it. It
 * listens only on the address given: there is no default address.
 */

import { systemReason, UserError } from "@ramdisk-tools/errors/errors.ts";
import { type MetricsSnapshot, prometheusText } from "./metrics.ts";

/** Where to listen (`bootserver --metrics ADDR:PORT`, lib/cli/listen-address.ts). */
export interface MetricsAddress {
  hostname: string;
  /** 0 lets the system choose a free port (the endpoint's `url` tells which). */
  port: number;
}

/** The Prometheus text format's content type. */
const PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8";

/**
 * A running metrics endpoint, answering each request with a fresh snapshot.
 *
 * @example
 * const endpoint = MetricsEndpoint.start({ hostname: "127.0.0.1", port: 9100 }, () => collector.snapshot(server));
 * console.log(`${endpoint.url}metrics`); // http://127.0.0.1:9100/metrics
 * endpoint.stop();
 */
export class MetricsEndpoint {
  readonly #server: Bun.Server<undefined>;

  private constructor(server: Bun.Server<undefined>) {
    this.#server = server;
  }

  /** Listen on `address`; a UserError when it cannot (in use, not an address of this machine). */
  static start(address: MetricsAddress, snapshot: () => MetricsSnapshot): MetricsEndpoint {
    try {
      return new MetricsEndpoint(
        Bun.serve({
          hostname: address.hostname,
          port: address.port,
          fetch(request) {
            if (request.method !== "GET" && request.method !== "HEAD") {
              return new Response("only GET and HEAD\n", { status: 405, headers: { allow: "GET, HEAD" } });
            }
            const path = new URL(request.url).pathname;
            if (path === "/metrics") {
              return new Response(prometheusText(snapshot()), { headers: { "content-type": PROMETHEUS_TEXT } });
            }
            if (path === "/status") return Response.json(snapshot());
            return new Response("not found: the metrics are on /metrics and /status\n", { status: 404 });
          },
        }),
      );
    } catch (error) {
      const where = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
      throw new UserError(`cannot serve metrics on ${where}:${address.port}: ${systemReason(error)}`);
    }
  }

  /** The base URL it listens on, ending in a slash (with the port the system chose, for port 0). */
  get url(): string {
    return this.#server.url.href;
  }

  /** Stop listening; requests under way are cut. */
  stop(): void {
    void this.#server.stop(true);
  }
}
