/**
 * Binary units. Sizes are given and printed in MiB (`mkimage -s`, the
 * bootserver's `--zstd-cache`, progress rates), and image limits are written
 * in them, so the unit has one definition on the ground floor that both the
 * image format and the program conventions stand on.
 */

/** One mebibyte, 2^20 bytes. */
export const MIB = 1024 * 1024;
