/**
 * The standalone binaries (scripts/build.ts) end to end, run from a
 * directory whose PATH holds no bun, as on a lab machine: mkimage -z makes an
 * image, python3 and sha256sum check it independently, lookimage reads it,
 * and the compiled bootserver boots the compiled emulated sled over a veth pair.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeSamplePool } from "../lib/sample-pool.ts";
import { canUseRawNetwork, withVethPair } from "../lib/veth.ts";
import { buildBinaries, PROGRAMS } from "../scripts/build.ts";

// Compiling four ~100 MiB binaries on a shared 2-core machine: generous room, no assertion on time.
const BUILD_TIMEOUT_MS = 300_000;
const RUN_TIMEOUT_MS = 120_000;
const POOL_SIZE = 2 * 1024 * 1024;

let dir: string;
let bin: string;
/** No bun here: PATH is one empty directory. */
let env: Record<string, string>;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "binaries-test-"));
  bin = join(dir, "dist");
  await buildBinaries(bin);
  const emptyPath = join(dir, "path");
  await mkdir(emptyPath);
  env = { PATH: emptyPath, HOME: dir };
}, BUILD_TIMEOUT_MS);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function run(program: string, args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const child = Bun.spawn([join(bin, program), ...args], { cwd: dir, env, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.exited,
  ]);
  return { exitCode, stdout, stderr };
}

test("the build made every program, and bun is not on the test's PATH", async () => {
  for (const program of PROGRAMS) expect(Bun.file(join(bin, program)).size).toBeGreaterThan(0);
  const which = Bun.spawnSync(["/usr/bin/which", "bun"], { env });
  expect(which.exitCode).not.toBe(0);
});

test(
  "mkimage -z and lookimage, compiled, make and read a compressed image",
  async () => {
    await writeSamplePool(join(dir, "pool.raw"), POOL_SIZE);
    const made = await run("mkimage", [
      "-i",
      "pool.raw",
      "-o",
      "pool.img",
      "-O",
      "pool.csum",
      "-N",
      "binaries",
      "-s",
      "64",
      "-z",
    ]);
    expect(made.stderr).toBe("");
    expect(made.exitCode).toBe(0);
    expect(made.stdout).toBe("ok, image written!\nok, boot_image_csum file written!\n");

    // Independent checks: sha256sum of the pool is the checksum file; python3's zlib inflates the payload to the pool.
    const poolSum = Bun.spawnSync(["sha256sum", join(dir, "pool.raw")])
      .stdout.toString()
      .split(" ")[0]!;
    expect(Buffer.from(await readFile(join(dir, "pool.csum"))).toString("hex")).toBe(poolSum);
    const inflated = Bun.spawnSync([
      "python3",
      "-c",
      "import sys, zlib, hashlib; d = open(sys.argv[1], 'rb').read()[4096:]; print(hashlib.sha256(zlib.decompress(d)).hexdigest())",
      join(dir, "pool.img"),
    ]);
    expect(inflated.stdout.toString().trim()).toBe(poolSum);

    const looked = await run("lookimage", ["pool.img"]);
    expect(looked.stderr).toBe("");
    expect(looked.exitCode).toBe(0);
    const lines = looked.stdout.trimEnd().split("\n");
    expect(lines.slice(0, 2)).toEqual(["image name = binaries", "flags = 0x1 (COMPRESSED)"]);
    expect(lines).toContain(`image size = ${POOL_SIZE}`);
    expect(lines).toContain(`target size = ${64 * 1024 * 1024}`);
    expect(lines).toContain(`image sum = ${poolSum}`);
  },
  RUN_TIMEOUT_MS,
);

const raw = canUseRawNetwork();
describe.skipIf(!raw.ok)(
  `bootserver and sled, compiled, over a veth pair${raw.ok ? "" : ` (skipped: ${raw.why})`}`,
  () => {
    test(
      "the bootserver boots one emulated sled from the image",
      async () => {
        expect(Bun.file(join(dir, "pool.img")).size).toBeGreaterThan(0);
        await withVethPair(async ({ a, b }) => {
          const server = Bun.spawn([join(bin, "bootserver"), "--boots", "1", a, "pool.img", "any"], {
            cwd: dir,
            env,
            stdout: "pipe",
            stderr: "pipe",
          });
          try {
            const reader = server.stdout.getReader();
            let output = "";
            // Sleds say HELLO every 4 s; start the sled once the server listens, so the first HELLO is heard.
            while (!output.includes("serving on")) {
              const { done, value } = await reader.read();
              if (done) break;
              output += new TextDecoder().decode(value);
            }
            expect(output).toContain("serving on");
            const sled = await run("sled", [b, "--checksum-file", "pool.csum", "--timeout", "60"]);
            expect(sled.stderr).toBe("");
            expect(sled.stdout).toMatch(new RegExp(`^\\S+ booted: ${POOL_SIZE} bytes`, "m"));
            expect(sled.exitCode).toBe(0);
            reader.releaseLock();
            const serverExit = await Promise.race([server.exited, Bun.sleep(30_000).then(() => "still running")]);
            expect(serverExit).toBe(0);
          } finally {
            server.kill();
            await server.exited;
          }
        }, "rbn");
      },
      RUN_TIMEOUT_MS,
    );
  },
);

test("threads are started through workerUrl, which finds them inside a binary too", () => {
  // `new URL("../workers/x.ts", import.meta.url)` misses inside a compiled binary (lib/workers.ts).
  const offenders = [...new Bun.Glob("{apps,lib,workers}/*.ts").scanSync(join(import.meta.dir, ".."))].filter(
    (path) =>
      path !== "lib/workers.ts" &&
      /new URL\(\s*["'`]\.\.\/workers\//.test(readFileSync(join(import.meta.dir, "..", path), "utf8")),
  );
  expect(offenders).toEqual([]);
});
