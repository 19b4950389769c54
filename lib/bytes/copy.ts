/**
 * Copying bytes out of an input buffer. `Uint8Array.prototype.slice` copies,
 * but a Node Buffer's `slice` is a view, so a decoder that kept a `slice` of
 * a Buffer would share memory with its input; this always copies.
 */

/**
 * A copy of `bytes[start, end)` that owns its memory, whatever kind of
 * Uint8Array `bytes` is.
 *
 * @example const mac = copyBytes(frame, 6, 12);
 */
export function copyBytes(bytes: Uint8Array, start = 0, end = bytes.length): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes.subarray(start, end));
}
