/**
 * `bun run lint` enforces the one-way rule and the packages' declared
 * surfaces: each rule of .dependency-cruiser.cjs, and scripts/check-one-way.ts
 * for paths built in strings, is shown to fire on a violation planted in the
 * tree (files named planted-*.ts, removed again whatever happens), and not
 * on the tree as it is.
 */

import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { runCommand } from "../helpers/common.ts";

/** Planted files live where the rules look, so every one is removed after its test. */
const planted: string[] = [];

function plant(path: string, source: string): string {
  writeFileSync(join(ROOT, path), source);
  planted.push(path);
  return path;
}

function removePlanted() {
  for (const path of planted.splice(0)) rmSync(join(ROOT, path), { force: true });
}

/** The names of the rules dependency-cruiser says the given files break. */
async function brokenRules(...files: string[]): Promise<{ exitCode: number; rules: string[] }> {
  const run = await runCommand(["bun", "--bun", "depcruise", "--config", ".dependency-cruiser.cjs", ...files], {
    cwd: ROOT,
  });
  const rules = [...run.stdout.matchAll(/^\s*error ([\w-]+):/gm)].map((match) => match[1] as string);
  return { exitCode: run.exitCode, rules };
}

beforeAll(() => {
  // A run killed halfway may have left its plants behind; they would break lint.
  for (const dir of ["apps", "lib/bytes", "lib/netboot", "lib/threads"]) {
    for (const name of readdirSync(join(ROOT, dir))) {
      if (name.startsWith("planted-")) rmSync(join(ROOT, dir, name));
    }
  }
});
afterEach(removePlanted);

describe("dependency-cruiser", () => {
  test("the tree as it is breaks no rule", async () => {
    const run = await brokenRules("apps", "lib", "lab", "workers", "bench", "scripts", "tests");
    expect(run.rules).toEqual([]);
    expect(run.exitCode).toBe(0);
  });

  test("no-circular fires on two modules importing each other", async () => {
    plant("lib/bytes/planted-a.ts", 'import { b } from "./planted-b.ts";\nexport const a = () => b;\n');
    plant("lib/bytes/planted-b.ts", 'import { a } from "./planted-a.ts";\nexport const b = () => a;\n');
    const run = await brokenRules("lib/bytes/planted-a.ts");
    expect(run.rules).toContain("no-circular");
    expect(run.exitCode).not.toBe(0);
  });

  test("declared-dependencies-only fires on a package not in the importer's package.json", async () => {
    // lib/bytes declares no dependency at all.
    plant("lib/bytes/planted-dependency.ts", 'import yargs from "yargs";\nexport const parser = yargs;\n');
    expect((await brokenRules("lib/bytes/planted-dependency.ts")).rules).toContain("declared-dependencies-only");
  });

  test("declared-surface-only fires on a module its package does not export", async () => {
    // zstd-ring.ts is inside the image package: not in its exports.
    plant(
      "apps/planted-surface.ts",
      'import * as ring from "@ramdisk-tools/image/zstd-ring.ts";\nconsole.log(ring);\n',
    );
    const run = await brokenRules("apps/planted-surface.ts");
    expect(run.rules).toEqual(["declared-surface-only"]);
  });

  test("an exported module passes the surface rule", async () => {
    plant(
      "apps/planted-exported.ts",
      'import { HEADER_SIZE } from "@ramdisk-tools/image/format.ts";\nconsole.log(HEADER_SIZE);\n',
    );
    expect((await brokenRules("apps/planted-exported.ts")).rules).toEqual([]);
  });

  test("no-unresolvable fires on a module that is not there", async () => {
    plant("apps/planted-missing.ts", 'import { x } from "./no-such-module.ts";\nconsole.log(x);\n');
    expect((await brokenRules("apps/planted-missing.ts")).rules).toEqual(["no-unresolvable"]);
  });

  test("a floor rule fires on a package importing one above it, or a program", async () => {
    plant(
      "lib/bytes/planted-floor.ts",
      'import { HEADER_SIZE } from "@ramdisk-tools/image/format.ts";\nimport "../../apps/mkimage.ts";\nexport const size = HEADER_SIZE;\n',
    );
    const run = await brokenRules("lib/bytes/planted-floor.ts");
    expect(run.rules.filter((rule) => rule === "bytes-stays-on-its-floor")).toHaveLength(2);
  });

  test("the by-name rule fires on a relative path into another package", async () => {
    plant(
      "lib/netboot/planted-path.ts",
      'import { HEADER_SIZE } from "../image/format.ts";\nexport const size = HEADER_SIZE;\n',
    );
    expect((await brokenRules("lib/netboot/planted-path.ts")).rules).toEqual(["image-only-by-its-name"]);
  });
});

describe("scripts/check-one-way.ts", () => {
  const check = (...files: string[]) => runCommand(["bun", "scripts/check-one-way.ts", ...files], { cwd: ROOT });

  test("passes lib/ as it is", async () => {
    const run = await check();
    expect(run.stderr).toBe("");
    expect(run.exitCode).toBe(0);
  });

  test("fires on a thread entry point named from lib/, by relative path or from the top", async () => {
    const file = plant(
      "lib/threads/planted-thread.ts",
      [
        'export const byPath = new URL("../../workers/session.ts", import.meta.url);',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: the planted module's own template literal
        'export const fromTop = (name: string) => new URL(`workers/${name}.ts`, "file:///$bunfs/root/");',
        "",
      ].join("\n"),
    );
    const run = await check(file);
    expect(run.exitCode).toBe(1);
    expect(run.stderr).toContain(
      'lib/threads/planted-thread.ts: names "../../workers/session.ts", outside its package',
    );
    expect(run.stderr).toContain(`names "workers/\${name}.ts"`);
  });

  test("does not fire on prose in comments or on a path inside the package", async () => {
    const file = plant(
      "lib/threads/planted-inside.ts",
      '/** Started by workers/session.ts (../../workers/session.ts). */\nexport const beside = new URL("./pool.ts", import.meta.url);\n',
    );
    const run = await check(file);
    expect(run.stderr).toBe("");
    expect(run.exitCode).toBe(0);
  });
});
