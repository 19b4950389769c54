/**
 * Where a thread's entry point is, whether the program runs from source or
 * as a standalone binary made by scripts/build.ts (`bun build --compile`).
 *
 * From source, workers/NAME.ts sits two floors above lib/threads/, so a URL relative to this
 * module finds it. In a compiled binary every file lives in Bun's embedded
 * file system under /$bunfs/root/: each worker, built as an extra entry
 * point, keeps its path (workers/NAME.js, found under its .ts name too), but
 * the program itself is flattened to /$bunfs/root/PROGRAM, and the code of
 * lib/ bundled into it shares the program's import.meta.url. A path relative
 * to import.meta.url would then miss, so there the workers
 * are named from the embedded root instead. (Found by experiment, Bun 1.4.5.)
 */

/** The root of a compiled binary's embedded files; import.meta.url starts with it only there. */
const COMPILED_ROOT = "file:///$bunfs/root/";

/**
 * The URL of the thread entry point workers/NAME.ts, for `new Worker(url.href)`.
 *
 * @example const worker = new Worker(workerUrl("inflate").href);
 */
export function workerUrl(name: string): URL {
  return import.meta.url.startsWith(COMPILED_ROOT)
    ? new URL(`workers/${name}.ts`, COMPILED_ROOT)
    : new URL(`../../workers/${name}.ts`, import.meta.url);
}
