/**
 * `bun run build`: compile each program into a standalone executable in
 * dist/ (or the directory given with --outdir) that runs where Bun is not
 * installed. Bun copies its own runtime into each binary (about 100 MiB).
 *
 * A program's threads start from workers/*.ts, loaded at run time, which the
 * bundler cannot follow from `new Worker(url)`; every worker is therefore
 * given as an extra entry point and embedded beside the program, where
 * lib/workers.ts finds it. Every binary gets every worker: which threads a
 * program starts depends on its input (zlib or zstd, serving or verifying),
 * and a missing one would fail only on that path.
 */
import { readdir, rm, stat } from "node:fs/promises";
import { join, relative } from "node:path";
import { runMain, UserError } from "../lib/cli.ts";
import { formatBytes } from "../lib/progress.ts";

const ROOT = join(import.meta.dir, "..");
export const PROGRAMS = ["mkimage", "lookimage", "bootserver", "sled"] as const;

/**
 * Compile every program into `outdir`; returns each binary's path and size.
 *
 * @example const made = await buildBinaries("/tmp/dist"); // [{ program: "mkimage", path: "/tmp/dist/mkimage", bytes: 104857600 }, ...]
 */
export async function buildBinaries(outdir: string): Promise<{ program: string; path: string; bytes: number }[]> {
  const workers = (await readdir(join(ROOT, "workers"))).filter((name) => name.endsWith(".ts")).sort();
  const made = [];
  for (const program of PROGRAMS) {
    const path = join(outdir, program);
    // A failed build must not leave last time's binary looking like this one.
    await rm(path, { force: true });
    const result = await Bun.build({
      entrypoints: [join(ROOT, "apps", `${program}.ts`), ...workers.map((name) => join(ROOT, "workers", name))],
      root: ROOT,
      compile: { outfile: path },
    });
    if (!result.success) {
      throw new UserError(`cannot compile ${program}: ${result.logs.map((log) => String(log)).join("; ")}`);
    }
    made.push({ program, path, bytes: (await stat(path)).size });
  }
  return made;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.length > 0 && !(args.length === 2 && args[0] === "--outdir")) {
    throw new UserError("usage: bun scripts/build.ts [--outdir DIR] (default dist/)", 2);
  }
  const outdir = args[1] ?? join(ROOT, "dist");
  for (const { path, bytes } of await buildBinaries(outdir)) {
    console.log(`${relative(process.cwd(), path) || path}  ${formatBytes(bytes)}`);
  }
}

if (import.meta.main) await runMain("build", main);
