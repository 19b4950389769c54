/**
 * Where a thread's entry point is, whether the program runs from source or
 * as a standalone binary (`bun run build`, which runs `bun build --compile`).
 *
 * The entry points import the packages whose threads they run, so no package
 * names them: the module that does (above every package) asks here for each
 * one's URL, relative to its own import.meta.url. From source that is all it
 * takes. In a compiled binary every file lives in Bun's embedded file system
 * under /$bunfs/root/: each entry point, built as an extra entry point of its
 * own, keeps its path from the project's root (FOLDER/NAME.js, found under
 * its .ts name too), but the program is flattened to /$bunfs/root/PROGRAM,
 * and every module bundled into it shares the program's import.meta.url. A
 * path relative to import.meta.url would then miss, so there the entry point
 * is named from the embedded root, by the folder the asking module gives.
 * (Found by experiment, Bun 1.4.5.)
 */

/** The root of a compiled binary's embedded files; import.meta.url starts with it only there. */
const COMPILED_ROOT = "file:///$bunfs/root/";

/**
 * The URL (as `new Worker` takes it) of the thread entry point `file` that
 * sits beside the module whose import.meta.url is `moduleUrl`, in the
 * project's folder `folder` (from its root).
 *
 * @example const inflate = entryPointUrl("inflate-stage.ts", import.meta.url, "workers");
 */
export function entryPointUrl(file: string, moduleUrl: string, folder: string): string {
  return moduleUrl.startsWith(COMPILED_ROOT)
    ? new URL(`${folder}/${file}`, COMPILED_ROOT).href
    : new URL(file, moduleUrl).href;
}
