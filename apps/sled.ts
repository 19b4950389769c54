#!/usr/bin/env bun
import { readFileSync } from "node:fs";
import { runMain, usageConventions, wholeNumber } from "@ramdisk-tools/cli/conventions.ts";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, systemReason, UserError } from "@ramdisk-tools/errors/errors.ts";
import { formatMac, parseMac, SHA256_SIZE, sameMac } from "@ramdisk-tools/protocol/frames.ts";
import { DEFAULT_PORT_BUFFER_BYTES } from "@ramdisk-tools/sled/faults.ts";
import { consecutiveMacs, describeSledReport, emulateSleds, sledMacFor } from "@ramdisk-tools/sled/runner.ts";
import { PcapLink } from "@ramdisk-tools/wire/libpcap.ts";
import { readLinkMac } from "@ramdisk-tools/wire/link-mac.ts";
import { parseBitRate } from "@ramdisk-tools/wire/rate.ts";
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
/**
 * sled: emulate the sled kernel's netboot client, one or many sleds at once,
 * to test a boot server. Exits 0 only when every emulated sled would boot.
 */
import packageJson from "../package.json" with { type: "json" };

/** The link is polled this often when idle, well inside the kernel's 50 ms. */
const POLL_MS = 10;

function parseArguments(argv: string[]) {
  const parser = yargs(argv)
    .scriptName("sled")
    .usage(
      "$0 LINK (--checksum HEX | --checksum-file FILE) [options]\n\nEmulate sleds booting from the network on LINK.",
    )
    .command("$0 <link>", false)
    .positional("link", { type: "string", demandOption: true, describe: "Ethernet link the boot server is on" })
    .option("checksum", {
      type: "string",
      describe: "SHA-256 of the raw image, 64 hex digits (the sled's boot archive)",
    })
    .option("checksum-file", { type: "string", describe: "the 32-byte checksum file written by mkimage -O" })
    .option("mac", { type: "string", describe: "MAC of the first sled (default 02:, the link's last 4 bytes, :00)" })
    .option("sleds", {
      type: "string",
      default: "1",
      coerce: (text: string) => wholeNumber("--sleds", text, 1, 4096),
      describe: "sleds to emulate at once, on consecutive MACs",
    })
    .option("timeout", { type: "number", default: 120, describe: "seconds a sled may take to boot before it fails" })
    .option("restart-on-reset", {
      type: "boolean",
      default: false,
      describe: "on RESET start discovery again instead of failing",
    })
    .option("drop-rate", { type: "number", default: 0, describe: "fraction of incoming DATA frames to drop at random" })
    .option("burst-rate", {
      type: "number",
      default: 0,
      describe: "chance per DATA frame that a loss of --burst-length frames starts there",
    })
    .option("burst-length", {
      type: "string",
      default: "4",
      coerce: (text: string) => wholeNumber("--burst-length", text, 1),
      describe: "DATA frames lost in a row per burst",
    })
    .option("port-rate", {
      type: "string",
      describe: "model a switch port in front of each sled draining at this rate (bits/s, k/m/g suffix: 1g)",
    })
    .option("port-buffer", {
      type: "string",
      coerce: (text: string) => wholeNumber("--port-buffer", text, 0),
      describe: `bytes the modelled port can queue (default ${DEFAULT_PORT_BUFFER_BYTES} with --port-rate)`,
    })
    .option("batch-delay", {
      type: "number",
      default: 0,
      describe: "ms a slow sled waits after each complete batch before its next READ",
    })
    .option("console-baud", {
      type: "string",
      default: "0",
      coerce: (text: string) => wholeNumber("--console-baud", text, 0),
      describe:
        "serial console speed: each line the kernel prints (a dropped DATA, the status once a second) holds up its receive loop for its serial time; 0: free",
    })
    .option("duplicate-rate", {
      type: "number",
      default: 0,
      describe: "fraction of incoming DATA frames to deliver twice",
    })
    .option("reorder-rate", {
      type: "number",
      default: 0,
      describe: "fraction of DATA frames held back until after the next one",
    })
    .option("delay-rate", {
      type: "number",
      default: 0,
      describe: "fraction of DATA frames delivered late, by --delay-ms",
    })
    .option("delay-ms", { type: "number", default: 0, describe: "how late delayed DATA frames arrive" })
    .option("seed", { type: "number", default: 1, describe: "seed of the fault pattern (same seed, same faults)" })
    .option("json", { type: "boolean", default: false, describe: "print one JSON object per sled instead of a line" })
    .option("verbose", { type: "boolean", default: false, describe: "print refused and accepted offers on stderr" })
    .conflicts("checksum", "checksum-file")
    .check((args) => {
      if (args.checksum === undefined && args["checksum-file"] === undefined) {
        throw new Error("one of --checksum or --checksum-file is required");
      }
      if (!(args.timeout > 0)) throw new Error("--timeout must be a positive number of seconds");
      for (const name of ["drop-rate", "burst-rate", "duplicate-rate", "reorder-rate", "delay-rate"] as const) {
        if (!(args[name] >= 0 && args[name] <= 1)) throw new Error(`--${name} must be between 0 and 1`);
      }
      if (!(args["delay-ms"] >= 0)) throw new Error("--delay-ms must not be negative");
      if (args["port-rate"] !== undefined && parseBitRate(args["port-rate"]) === null)
        throw new Error(`--port-rate "${args["port-rate"]}" is not a rate like 1g, 100m or 2.5g (bits per second)`);
      if (args["port-buffer"] !== undefined && args["port-rate"] === undefined)
        throw new Error("--port-buffer needs --port-rate");
      if (!(args["batch-delay"] >= 0)) throw new Error("--batch-delay must not be negative");
      if (!Number.isInteger(args.seed)) throw new Error("--seed must be a whole number");
      return true;
    })
    .example("$0 eth1 --checksum-file boot_image_csum --sleds 4", "boot four emulated sleds from the server on eth1")
    .example("$0 veth1 --checksum-file csum --drop-rate 0.01 --seed 7", "boot one sled losing 1% of DATA frames")
    .example(
      "$0 veth1 --checksum-file csum --console-baud 115200 --drop-rate 0.005",
      "boot one sled with a 115,200-baud console that prints every dropped DATA, losing 0.5%",
    )
    .example(
      "$0 veth1 --checksum-file csum --port-rate 1g",
      "boot one sled behind a gigabit port with 64 KiB of buffer",
    );
  return usageConventions(parser, "sled", { version: packageJson.version }).parseSync();
}

function readChecksum(args: { checksum?: string; "checksum-file"?: string }): Uint8Array {
  if (args.checksum !== undefined) {
    const text = args.checksum.trim();
    if (!/^[0-9a-fA-F]{64}$/.test(text))
      throw new UserError(`--checksum must be 64 hex digits, not "${text}"`, EXIT_USAGE);
    return Uint8Array.from(Buffer.from(text, "hex"));
  }
  const path = args["checksum-file"]!;
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (error) {
    throw new UserError(`cannot read checksum file ${path}: ${systemReason(error)}`);
  }
  if (bytes.length !== SHA256_SIZE) {
    throw new UserError(`checksum file ${path} is ${bytes.length} bytes, not the ${SHA256_SIZE} bytes of a SHA-256`);
  }
  return Uint8Array.from(bytes);
}

async function sled(argv: string[]): Promise<number> {
  const args = parseArguments(argv);
  const checksum = readChecksum(args);
  let firstMac: Uint8Array | null = null;
  if (args.mac !== undefined) {
    firstMac = parseMac(args.mac);
    if (!firstMac) throw new UserError(`--mac "${args.mac}" is not a MAC address like 02:00:00:00:00:01`, EXIT_USAGE);
    if (firstMac[0]! & 1)
      throw new UserError(`--mac ${args.mac} is a multicast address; a sled's MAC is unicast`, EXIT_USAGE);
  }

  // PcapError messages name the link and libpcap's reason; runMain prints them as they are.
  const linkMac = readLinkMac(args.link);
  const macs = consecutiveMacs(firstMac ?? sledMacFor(linkMac), args.sleds);
  // A physical NIC drops unicast frames for MACs other than its own unless
  // promiscuous; emulated sleds answer for their own MACs.
  const promiscuous = macs.some((mac) => !sameMac(mac, linkMac));
  const link = PcapLink.open(args.link, { timeoutMs: POLL_MS, promiscuous });
  try {
    if (!args.json) {
      const range = macs.length > 1 ? `${formatMac(macs[0]!)} to ${formatMac(macs.at(-1)!)}` : formatMac(macs[0]!);
      console.log(
        `emulating ${macs.length} sled${macs.length > 1 ? "s" : ""} on ${args.link} (${range}), timeout ${args.timeout} s`,
      );
    }
    const reports = emulateSleds(link, {
      macs,
      checksum,
      timeoutMs: args.timeout * 1000,
      restartOnReset: args["restart-on-reset"],
      batchDelayMs: args["batch-delay"],
      consoleBaud: args["console-baud"],
      faults: {
        dropRate: args["drop-rate"],
        burstRate: args["burst-rate"],
        burstLength: args["burst-length"],
        portRate: args["port-rate"] === undefined ? undefined : parseBitRate(args["port-rate"])!,
        portBufferBytes: args["port-buffer"],
        duplicateRate: args["duplicate-rate"],
        reorderRate: args["reorder-rate"],
        delayRate: args["delay-rate"],
        delayMs: args["delay-ms"],
        seed: args.seed,
      },
      log: args.verbose ? (line) => console.error(`sled: ${line}`) : undefined,
      onDone: (report) => console.log(args.json ? JSON.stringify(report) : describeSledReport(report)),
    });
    const booted = reports.filter((report) => report.outcome === "booted").length;
    const { dropped } = link.stats();
    if (dropped > 0)
      console.error(`sled: the capture buffer overflowed and lost ${dropped} frames (the emulator fell behind)`);
    if (!args.json && reports.length > 1) console.log(`${booted} of ${reports.length} sleds booted`);
    return booted === reports.length ? EXIT_OK : EXIT_FAILURE;
  } finally {
    link.close();
  }
}

await runMain("sled", () => sled(hideBin(process.argv)));
