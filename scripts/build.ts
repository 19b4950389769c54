/**
 * `bun run build`: compile the four programs into one standalone executable,
 * dist/ramdisk-tools (or in the directory given with --outdir), that runs
 * where Bun is not installed, with a link per program beside it
 * (apps/ramdisk-tools.ts chooses by the name it is run under), and pack a
 * release archive of it. Bun copies its own runtime into a binary (about
 * 100 MiB), so one binary instead of four saves three copies of it.
 *
 * A program's threads start from workers/*.ts, loaded at run time, which the
 * bundler cannot follow from `new Worker(url)`; every thread entry point
 * (workers/entry-points.ts names them all) is therefore given as an extra
 * entry point and embedded beside the programs, where
 * lib/threads/entry-point-url.ts finds it.
 *
 * The archive is a tar.gz: every machine that could run the binary has tar
 * and gzip, and a .tar.zst needs a tar that knows zstd; the runtime
 * compresses well enough either way to stay far under the 120 MiB budget
 * (the README gives both sizes).
 */
import { cp, mkdir, mkdtemp, rm, stat, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { runMain } from "@ramdisk-tools/cli/conventions.ts";
import { PROGRAMS } from "@ramdisk-tools/cli/programs.ts";
import { UserError } from "@ramdisk-tools/errors/errors.ts";
import { formatBytes } from "@ramdisk-tools/progress/progress.ts";
import packageJson from "../package.json" with { type: "json" };
import { ENTRY_POINTS } from "../workers/entry-points.ts";

const ROOT = join(import.meta.dir, "..");
/** The multi-call executable's name. */
export const EXECUTABLE = "ramdisk-tools";
/** What goes into the archive beside the executable and its links, from the work tree. */
const SHIPPED_FILES = ["LICENSE", "README.md", "docs", "wireshark"];

/** What a build made: the executable, its links, the archive, with their sizes in bytes. */
export interface Release {
  executable: { path: string; bytes: number };
  links: string[];
  archive: { path: string; bytes: number };
}

/**
 * Compile apps/ramdisk-tools.ts and every thread entry point into `path`.
 *
 * @example await compileExecutable("/tmp/dist/ramdisk-tools");
 */
export async function compileExecutable(path: string): Promise<void> {
  // A failed build must not leave last time's binary looking like this one.
  await rm(path, { force: true });
  const result = await Bun.build({
    entrypoints: [join(ROOT, "apps", `${EXECUTABLE}.ts`), ...ENTRY_POINTS.map((url) => fileURLToPath(url))],
    root: ROOT,
    compile: { outfile: path },
  });
  if (!result.success) {
    throw new UserError(`cannot compile ${EXECUTABLE}: ${result.logs.map((log) => String(log)).join("; ")}`);
  }
}

/** A link named after each program, to the executable beside it (relative, so the directory can move). */
async function linkPrograms(dir: string): Promise<string[]> {
  const links = [];
  for (const program of PROGRAMS) {
    const link = join(dir, program);
    await rm(link, { force: true });
    await symlink(EXECUTABLE, link);
    links.push(link);
  }
  return links;
}

function run(command: string[], cwd: string): void {
  const done = Bun.spawnSync(command, { cwd, stdout: "ignore", stderr: "pipe" });
  if (done.exitCode !== 0) throw new UserError(`${command[0]} failed: ${done.stderr.toString().trim()}`);
}

/**
 * Pack the executable, its links and SHIPPED_FILES under one top directory
 * named after the release, into `archive` (a .tar.gz), owned by root and in
 * name order so that the same build packs the same way.
 */
async function packArchive(executable: string, archive: string): Promise<void> {
  const top = `${EXECUTABLE}-${packageJson.version}-${process.platform}-${process.arch}`;
  const staging = await mkdtemp(join(tmpdir(), "ramdisk-tools-release-"));
  try {
    const dir = join(staging, top);
    await mkdir(dir);
    await cp(executable, join(dir, EXECUTABLE));
    await linkPrograms(dir);
    for (const name of SHIPPED_FILES) await cp(join(ROOT, name), join(dir, name), { recursive: true });
    await rm(archive, { force: true });
    run(["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf", archive, top], staging);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * Build the release into `outdir`: the executable, a link per program, and
 * the archive.
 *
 * @example const { executable, archive } = await buildRelease("/tmp/dist"); // executable.path "/tmp/dist/ramdisk-tools"
 */
export async function buildRelease(outdir: string): Promise<Release> {
  await mkdir(outdir, { recursive: true });
  const executable = join(outdir, EXECUTABLE);
  await compileExecutable(executable);
  const links = await linkPrograms(outdir);
  const archive = join(outdir, `${EXECUTABLE}-${packageJson.version}-${process.platform}-${process.arch}.tar.gz`);
  await packArchive(executable, archive);
  return {
    executable: { path: executable, bytes: (await stat(executable)).size },
    links,
    archive: { path: archive, bytes: (await stat(archive)).size },
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.length > 0 && !(args.length === 2 && args[0] === "--outdir")) {
    throw new UserError("usage: bun scripts/build.ts [--outdir DIR] (default dist/)", 2);
  }
  const outdir = args[1] ?? join(ROOT, "dist");
  const shown = (path: string) => relative(process.cwd(), path) || path;
  const { executable, links, archive } = await buildRelease(outdir);
  console.log(`${shown(executable.path)}  ${formatBytes(executable.bytes)}`);
  for (const link of links) console.log(`${shown(link)} -> ${EXECUTABLE}`);
  console.log(`${shown(archive.path)}  ${formatBytes(archive.bytes)}`);
}

if (import.meta.main) await runMain("build", main);
