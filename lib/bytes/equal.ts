/**
 * Comparing bytes by value: `===` on two Uint8Arrays compares identity, and a
 * checksum read from a frame is never the same object as the one computed.
 */

/**
 * Whether `a` and `b` hold the same bytes.
 *
 * @example equalBytes(digest, expectedSha256) // true when the checksums match
 */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
