#!/usr/bin/env bun

/**
 * bootserver: serve boot images to sleds booting from the network over raw
 * Ethernet (docs/netboot.md), many sleds at once.
 *
 * Compatible with the existing `bootserver [-s] [-t SECONDS] LINK IMAGE MAC|any`,
 * extended to several images, pinned images, allow lists and a boot count.
 */

import { MIB } from "@ramdisk-tools/bytes/units.ts";
import { runMain, usageConventions, wholeNumber } from "@ramdisk-tools/cli/conventions.ts";
import { parseListenAddress } from "@ramdisk-tools/cli/listen-address.ts";
import { EXIT_OK, EXIT_USAGE, oneLine, UserError } from "@ramdisk-tools/errors/errors.ts";
import { DEFAULT_CACHE_BYTES, MAX_CACHE_BYTES } from "@ramdisk-tools/netboot/block-cache.ts";
import { BootProgressDisplay, JsonLogDisplay } from "@ramdisk-tools/netboot/boot-progress.ts";
import type { DISPATCH_COUNTERS } from "@ramdisk-tools/netboot/dispatch.ts";
import { MetricsCollector } from "@ramdisk-tools/netboot/metrics.ts";
import { type MetricsAddress, MetricsEndpoint } from "@ramdisk-tools/netboot/metrics-server.ts";
import { DEFAULT_STATE_DIR, stateDirectory } from "@ramdisk-tools/netboot/offer-record.ts";
import { BootServer } from "@ramdisk-tools/netboot/server.ts";
import { type BootServerOptions, DEFAULT_MAX_SLEDS } from "@ramdisk-tools/netboot/server-options.ts";
import { type Mac, parseMac } from "@ramdisk-tools/protocol/frames.ts";
import { parseRate } from "@ramdisk-tools/wire/rate.ts";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import packageJson from "../package.json" with { type: "json" };
import { SERVER_THREADS } from "../workers/entry-points.ts";

/** Conventional exit statuses for a program ended by a signal: 128 + its number. */
const SIGNAL_EXIT = { SIGINT: 130, SIGTERM: 143 } as const;

function parseArguments(argv: string[]) {
  const parser = yargs(argv)
    .scriptName("bootserver")
    .usage(
      "$0 [options] LINK IMAGE [IMAGE...] MAC|any\n\n" +
        "Serve boot images on the Ethernet link LINK to sleds that boot from the network. " +
        "The last argument is the one sled to serve, or `any`. With several images, a sled " +
        "is offered each in turn on its successive HELLOs until it takes the one whose " +
        "checksum it carries. Images are served from their files; compressed ones are inflated " +
        "once, to an unnamed temporary file in $TMPDIR (default /var/tmp).",
    )
    // Options may come between positionals, as in `LINK --sled MAC=IMAGE IMAGE any`: an array option takes one value each time.
    .parserConfiguration({ "parse-positional-numbers": false, "greedy-arrays": false })
    .option("s", {
      alias: "single",
      type: "boolean",
      default: false,
      describe: "exit 0 once a sled has finished; any failure is fatal",
    })
    .option("t", {
      alias: "hello-timeout",
      type: "number",
      describe: "fail unless a sled says HELLO within SECONDS",
      requiresArg: true,
    })
    .option("boots", {
      type: "string",
      describe: "exit 0 once N sleds have finished (no more than N are offered an image)",
      requiresArg: true,
    })
    .option("sled", {
      type: "string",
      array: true,
      default: [],
      describe: "MAC=IMAGE: always offer IMAGE to that sled (repeatable)",
      requiresArg: true,
    })
    .option("allow", {
      type: "string",
      array: true,
      default: [],
      describe: "serve only these sleds, besides the MAC argument and --sled ones (repeatable)",
      requiresArg: true,
    })
    .option("pcap", {
      type: "string",
      describe: "record every frame received and sent to FILE (pcap; appears when the server exits)",
      requiresArg: true,
    })
    .option("metrics", {
      type: "string",
      describe:
        "serve Prometheus metrics on http://ADDR:PORT/metrics and the same as JSON on /status (port 0: any free one)",
      requiresArg: true,
    })
    .option("rate", {
      type: "string",
      default: "1g",
      describe: "pace each sled's DATA at RATE bits/s on the wire (k, m, g suffixes; off: unpaced)",
      requiresArg: true,
    })
    .option("link-rate", {
      type: "string",
      describe: "cap the DATA of all sleds together at RATE bits/s (for a server on a slow link)",
      requiresArg: true,
    })
    .option("resend", {
      type: "boolean",
      default: true,
      describe: "send a batch again when the sled's next READ is late (--no-resend: wait for its 1 s re-ask)",
    })
    .option("admission", {
      type: "boolean",
      default: true,
      describe:
        "rate-limit HELLOs, start a session only for a sled that READs an offer (--no-admission: a session per HELLO)",
    })
    .option("max-sleds", {
      type: "string",
      default: String(DEFAULT_MAX_SLEDS),
      describe: "serve at most N sleds at once; more wait (with admission)",
      requiresArg: true,
    })
    .option("zstd-cache", {
      type: "string",
      default: String(DEFAULT_CACHE_BYTES / MIB),
      describe: "MiB of decompressed blocks kept for each zstd image, shared by its sleds",
      requiresArg: true,
    })
    .option("state-dir", {
      type: "string",
      describe: `keep the record of what each sled took here, so a restarted server serves the sleds mid-boot (default $STATE_DIRECTORY, else ${DEFAULT_STATE_DIR}; --no-state-dir: none)`,
      requiresArg: true,
    })
    .option("json-log", {
      type: "boolean",
      default: false,
      describe: "print one JSON object per event on stdout (docs/bootserver-json-log.md)",
    })
    .example("$0 -s -t 60 eth1 recovery.img 02:08:20:aa:bb:cc", "boot one sled, as the existing bootserver does")
    .example("$0 eth1 host.img recovery.img any", "boot every sled, each with the image it wants")
    .example("$0 --boots 32 eth1 host.img any", "boot 32 sleds at once, then exit")
    .example("$0 --sled 02:08:20:aa:bb:cc=test.img eth1 host.img any", "one sled gets test.img, the others host.img")
    .example("$0 --allow 02:08:20:aa:bb:01 --allow 02:08:20:aa:bb:02 eth1 host.img any", "serve only these two sleds")
    .example("$0 -s --pcap boot.pcap eth1 recovery.img any", "record one boot for Wireshark (docs/wireshark.md)")
    .example("$0 --json-log eth1 host.img any > boots.jsonl", "a log a script can read, one JSON object per line")
    .example("$0 --metrics 127.0.0.1:9100 eth1 host.img any", "also serve metrics to Prometheus on port 9100")
    .example("$0 --rate 100m eth1 host.img any", "sleds behind a 100 Mb/s port")
    .example("$0 --state-dir /run/bootserver eth1 host.img any", "keep the record of offers in /run/bootserver");
  return usageConventions(parser, "bootserver", {
    version: packageJson.version,
    strict: "options",
    exitStatus:
      "Exit status: 0 when the sleds asked for (-s, --boots) have finished; 1 on a failure " +
      "(an image that cannot be served, a link that cannot be opened, with -s a sled that fails); " +
      "2 on bad usage; 130 on SIGINT and 143 on SIGTERM. See docs/operators.md.",
  }).parseSync();
}

function macArgument(text: string, where: string): Mac {
  const mac = parseMac(text);
  if (!mac) throw new UserError(`${where} "${text}" is not a MAC address like 02:08:20:aa:bb:cc`, EXIT_USAGE);
  return mac;
}

function serverOptions(args: ReturnType<typeof parseArguments>): Omit<BootServerOptions, "onEvent" | "threads"> {
  const [link, image, ...more] = args._.map(String);
  const target = more.pop();
  if (link === undefined || image === undefined || target === undefined) {
    throw new UserError("expected LINK IMAGE [IMAGE...] MAC|any (see --help)", EXIT_USAGE);
  }
  const pinned = args.sled.map((pin): [Mac, string] => {
    const at = pin.indexOf("=");
    if (at < 0 || at === pin.length - 1) throw new UserError(`--sled "${pin}" is not MAC=IMAGE`, EXIT_USAGE);
    return [macArgument(pin.slice(0, at), "--sled"), pin.slice(at + 1)];
  });
  const listed = args.allow.map((mac) => macArgument(mac, "--allow"));
  const serveAny = target.toLowerCase() === "any";
  if (!serveAny) listed.push(macArgument(target, "the last argument (MAC or any)"));
  const boots = args.boots === undefined ? undefined : wholeNumber("--boots", args.boots, 1);
  if (args.t !== undefined && !(args.t > 0))
    throw new UserError(`-t must be a positive number of seconds, not ${args.t}`, EXIT_USAGE);
  const maxSleds = wholeNumber("--max-sleds", args["max-sleds"], 1);
  const cacheMib = wholeNumber("--zstd-cache", args["zstd-cache"], 1, MAX_CACHE_BYTES / MIB);
  return {
    link,
    images: [image, ...more],
    pinned,
    allowed: serveAny && listed.length === 0 ? null : listed,
    boots: boots ?? (args.s ? 1 : undefined),
    failuresFatal: args.s,
    helloTimeoutSeconds: args.t,
    pcap: args.pcap,
    rate: rateArgument(args.rate, "--rate"),
    linkRate: args["link-rate"] === undefined ? null : rateArgument(args["link-rate"], "--link-rate"),
    resend: args.resend,
    admission: args.admission,
    maxSleds,
    zstdCacheBytes: cacheMib * MIB,
    state: stateOption(args["state-dir"] as string | boolean | undefined),
  };
}

/** `--state-dir DIR`, `--no-state-dir` (false), or the default. */
function stateOption(option: string | boolean | undefined): BootServerOptions["state"] {
  if (option === false) return null;
  if (option === true || option === "") throw new UserError("--state-dir needs a directory", EXIT_USAGE);
  return { dir: stateDirectory(option, process.env), chosen: option !== undefined };
}

function metricsAddress(args: ReturnType<typeof parseArguments>): MetricsAddress | null {
  if (args.metrics === undefined) return null;
  const address = parseListenAddress(args.metrics);
  if (!address) {
    throw new UserError(`--metrics "${args.metrics}" is not ADDR:PORT, like 127.0.0.1:9100 or [::1]:9100`, EXIT_USAGE);
  }
  return address;
}

function rateArgument(text: string, option: string): number | null {
  try {
    return parseRate(text);
  } catch (error) {
    throw new UserError(`${option}: ${oneLine(error)}`, EXIT_USAGE);
  }
}

/** What the dispatcher counted, in words: frames dropped by reason, RESETs, sleds resumed, HELLOs limited, sleds turned away. */
const FRAME_SUMMARY: [(typeof DISPATCH_COUNTERS)[number], string][] = [
  ["malformed", "malformed"],
  ["ownFrames", "own frames"],
  ["notForUs", "not for us"],
  ["groupSource", "from a group or zero address"],
  ["notAllowed", "not allowed"],
  ["unexpected", "unexpected"],
  ["sendFailures", "send failures"],
  ["resets", "answered with RESET (each logged with the reason)"],
  ["resetsLimited", "READs without a session over the RESET rate limit"],
  ["resumed", "sled(s) served on without a new offer (after a restart or a quiet spell)"],
  ["hellosLimited", "HELLOs over the rate limit"],
  ["turnedAway", "sled(s) turned away (--max-sleds, --boots)"],
  ["droppedByCapture", "dropped by the capture (kernel buffer full)"],
];

/** The frames the dispatcher dropped or answered with RESET, when there were any. */
function frameSummary(counts: Record<(typeof DISPATCH_COUNTERS)[number], number>): string | null {
  const parts = FRAME_SUMMARY.filter(([name]) => counts[name] > 0).map(([name, words]) => `${counts[name]} ${words}`);
  return parts.length > 0 ? `of ${counts.frames} frames received: ${parts.join(", ")}` : null;
}

/** Say, as the server stops on a signal, what becomes of the sleds mid-boot. */
function stoppedBySignal(server: BootServer, signal: keyof typeof SIGNAL_EXIT, json: JsonLogDisplay | null) {
  const { sleds, file } = server.midBoot;
  if (json) return json.write({ event: "stopped", signal, mid_boot: sleds, record: file });
  const which = `${sleds} sled${sleds === 1 ? "" : "s"} mid-boot`;
  console.log(
    file
      ? `stopped by ${signal}: ${which}, recorded in ${file}; started again with the same images, the server serves them on from where they are`
      : `stopped by ${signal}: ${which}, not recorded (--no-state-dir); started again, the server serves on only those whose READ fits exactly one image`,
  );
}

async function bootserver(argv: string[]): Promise<number> {
  const args = parseArguments(argv);
  const options = serverOptions(args);
  const metricsAt = metricsAddress(args);
  // Fed every event from the start, so that it knows the images and every offer.
  const metrics = metricsAt && new MetricsCollector();
  const json = args["json-log"] ? new JsonLogDisplay(process.stdout) : null;
  const display = json ?? new BootProgressDisplay(process.stdout);
  let server: BootServer;
  try {
    server = await BootServer.start({
      ...options,
      threads: SERVER_THREADS,
      onEvent: (event) => {
        metrics?.event(event);
        display.event(event);
      },
    });
  } catch (error) {
    json?.write({ event: "error", fatal: true, message: oneLine(error) });
    throw error;
  }
  const ticker = setInterval(() => display.update(server.progress()), 1000);
  const signalled = new Promise<number>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => resolve(SIGNAL_EXIT[signal]));
  });
  let endpoint: MetricsEndpoint | undefined;
  try {
    if (metricsAt && metrics) {
      endpoint = MetricsEndpoint.start(metricsAt, () => metrics.snapshot(server));
      display.event({ type: "notice", message: `metrics on ${endpoint.url}metrics and ${endpoint.url}status` });
    }
    const status = await Promise.race([server.done.then(() => EXIT_OK), signalled]);
    if (status !== EXIT_OK) stoppedBySignal(server, status === SIGNAL_EXIT.SIGINT ? "SIGINT" : "SIGTERM", json);
    return status;
  } catch (error) {
    json?.write({ event: "error", fatal: true, message: oneLine(error) });
    throw error;
  } finally {
    endpoint?.stop();
    clearInterval(ticker);
    display.close();
    await server.stop();
    const counts = server.frameCounts();
    if (json) json.write({ event: "frames", ...counts });
    else {
      const summary = frameSummary(counts);
      if (summary) console.log(summary);
    }
  }
}

await runMain("bootserver", () => bootserver(hideBin(process.argv)));
