/**
 * The demo: the main job on built-in sample data. It makes a deterministic
 * pool-like sample, builds a compressed recovery image with its checksum
 * file, inspects and verifies it, and, when run as root, boots four emulated
 * sleds from it over a veth pair it creates and removes. Each step shows the
 * command it ran, what it printed, and how long it took.
 */

import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { runMain } from "@ramdisk-tools/cli/conventions.ts";
import { UserError } from "@ramdisk-tools/errors/errors.ts";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { writeSamplePool } from "@ramdisk-tools/lab/sample-pool.ts";
import { canUseRawNetwork, withVethPair } from "@ramdisk-tools/lab/veth.ts";
import { formatBytes } from "@ramdisk-tools/progress/progress.ts";

const OUT = join(ROOT, "demo-out");
const POOL_SIZE = 64 * 1024 * 1024;
const SLEDS = 4;

function heading(text: string) {
  console.log(`\n== ${text}`);
}

async function timed<T>(work: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const result = await work();
  return [result, (performance.now() - started) / 1000];
}

/** Run one of the toolkit's programs as a user would, echoing its output. */
async function run(program: string, args: string[]): Promise<void> {
  console.log(`$ bun run ${program} ${args.join(" ")}`);
  const [exitCode, seconds] = await timed(async () => {
    const child = Bun.spawn(["bun", join(ROOT, "apps", `${program}.ts`), ...args], {
      cwd: OUT,
      stdout: "inherit",
      stderr: "inherit",
    });
    return child.exited;
  });
  if (exitCode !== 0) throw new UserError(`${program} exited with status ${exitCode}`);
  console.log(`(${program}: ${seconds.toFixed(2)} s)`);
}

/**
 * Echo the boot server's output as it comes, resolving once it says it is
 * serving (or has exited); the echo goes on in the background.
 */
function echoUntilServing(output: ReadableStream<Uint8Array>): Promise<void> {
  return new Promise((serving) => {
    const decoder = new TextDecoder();
    (async () => {
      for await (const chunk of output) {
        const text = decoder.decode(chunk, { stream: true });
        process.stdout.write(text);
        if (text.includes("serving on")) serving();
      }
      serving();
    })();
  });
}

async function netboot(): Promise<void> {
  heading(`4. Netboot ${SLEDS} emulated sleds over a veth pair`);
  const network = canUseRawNetwork();
  if (!network.ok) {
    console.log(`skipped: ${network.why}`);
    return;
  }
  await withVethPair(async ({ a, b }) => {
    console.log(`created veth pair ${a} (boot server) <-> ${b} (sleds); removed when done`);
    const server = Bun.spawn(
      // Its record of offers (docs/operators.md, "Restarting the server") stays in demo-out with the rest.
      [
        "bun",
        join(ROOT, "apps", "bootserver.ts"),
        "--state-dir",
        "state",
        "--boots",
        String(SLEDS),
        a,
        "recovery.img",
        "any",
      ],
      { cwd: OUT, stdout: "pipe", stderr: "inherit" },
    );
    console.log(`$ bun run bootserver --state-dir state --boots ${SLEDS} ${a} recovery.img any &`);
    try {
      // Sleds say HELLO every 4 s; start them once the server listens, so the first HELLO is heard.
      await echoUntilServing(server.stdout);
      await run("sled", [b, "--checksum-file", "recovery.csum", "--sleds", String(SLEDS), "--timeout", "120"]);
      const serverExit = await Promise.race([server.exited, Bun.sleep(10_000).then(() => null)]);
      if (serverExit !== 0)
        throw new UserError(`bootserver did not finish cleanly (status ${serverExit ?? "still running"})`);
    } finally {
      server.kill();
      await server.exited;
    }
  }, "demo");
}

async function demo(): Promise<number> {
  await mkdir(OUT, { recursive: true });
  console.log(`Working in ${OUT}`);

  heading(`1. Make a ${formatBytes(POOL_SIZE)} pool-like sample (zeros, binaries, text, incompressible records)`);
  const [, poolSeconds] = await timed(() => writeSamplePool(join(OUT, "pool.raw"), POOL_SIZE));
  console.log(`pool.raw: ${formatBytes(POOL_SIZE)} in ${poolSeconds.toFixed(2)} s`);

  heading("2. Build a compressed recovery image and its boot_image_csum file");
  await run("mkimage", [
    "-i",
    "pool.raw",
    "-o",
    "recovery.img",
    "-O",
    "recovery.csum",
    "-N",
    "recovery-demo",
    "-s",
    "128",
    "-z",
  ]);
  const imageSize = Bun.file(join(OUT, "recovery.img")).size;
  console.log(`recovery.img: ${formatBytes(imageSize)} (${((100 * imageSize) / POOL_SIZE).toFixed(1)}% of the pool)`);

  heading("3. Inspect the image and verify its payload against the header's SHA-256");
  await run("lookimage", ["recovery.img"]);

  await netboot();
  console.log("\ndemo: done");
  return 0;
}

await runMain("demo", demo);
