/**
 * Where the project is, for the tests, the benchmarks and the demo, which
 * start its programs (`bun ROOT/apps/NAME.ts`) and read its files (the
 * vectors, the dissector) wherever they are run from.
 */

import { join } from "node:path";

/** The project's root folder. */
export const ROOT = join(import.meta.dir, "..");
