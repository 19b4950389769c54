/**
 * The half of the one-way rule the import graph cannot show. A path built in
 * a string (a thread's entry point as a URL relative to import.meta.url, a
 * file read beside the code) is invisible to dependency-cruiser, yet it ties
 * a package to whatever it names. So no module in lib/ may name, in a string,
 * a file outside its own package: no relative path that climbs out of it, no
 * path into the top-level folders (apps/, workers/, tests/, bench/, scripts/,
 * lab/). A program hands such things down instead.
 *
 * Comments are stripped first (by Bun's transpiler), so prose may still say
 * where things are. Run by `bun run lint`; prints one line per finding and
 * exits 1 if there is any.
 *
 * @example bun scripts/check-one-way.ts            # the whole of lib/
 * @example bun scripts/check-one-way.ts lib/x/y.ts # only these files
 */

import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const TOP_FOLDERS = ["apps", "workers", "tests", "bench", "scripts", "lab"];
/** A string or template literal's text (templates' `${}` parts kept as written). */
const LITERAL = /"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)'|`((?:[^`\\]|\\.)*)`/g;
const TOP_PATH = new RegExp(`(^|/)(${TOP_FOLDERS.join("|")})/`);

/** What `file` (a path relative to the root, under lib/) names outside its package. */
export function outsideNames(file: string, source: string): string[] {
  const packageDir = file.split("/").slice(0, 2).join("/");
  const code = new Bun.Transpiler({ loader: "ts" }).transformSync(source);
  const found: string[] = [];
  for (const match of code.matchAll(LITERAL)) {
    const text = match[1] ?? match[2] ?? match[3] ?? "";
    if (text.startsWith("../")) {
      const target = relative(ROOT, resolve(ROOT, dirname(file), text));
      if (target !== packageDir && !target.startsWith(packageDir + sep)) found.push(text);
    } else if (TOP_PATH.test(text) && !text.includes("://")) {
      found.push(text);
    }
  }
  return found;
}

function libFiles(): string[] {
  return (readdirSync(join(ROOT, "lib"), { recursive: true }) as string[])
    .filter((path) => path.endsWith(".ts") && !path.split(sep).includes("node_modules"))
    .map((path) => join("lib", path))
    .sort();
}

if (import.meta.main) {
  const files =
    process.argv.length > 2 ? process.argv.slice(2).map((path) => relative(ROOT, resolve(path))) : libFiles();
  let findings = 0;
  for (const file of files) {
    for (const name of outsideNames(file, readFileSync(join(ROOT, file), "utf8"))) {
      console.error(`${file}: names "${name}", outside its package; hand it down from a program instead`);
      findings++;
    }
  }
  if (findings > 0) process.exit(1);
  console.log(`one way: ${files.length} modules of lib/ name nothing outside their package`);
}
