/**
 * The toolkit's programs, by the names they are run under: apps/NAME.ts from
 * source, or links of those names to the one compiled executable
 * (apps/ramdisk-tools.ts, scripts/build.ts).
 */

export const PROGRAMS = ["mkimage", "lookimage", "bootserver", "sled"] as const;
export type Program = (typeof PROGRAMS)[number];
