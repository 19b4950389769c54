/**
 * Recording a boot to a capture file (`bootserver --pcap`). The dispatcher
 * thread is the file's one writer (lib/netboot/dispatcher-loop.ts): it
 * records each frame it captures or sends itself, and the DATA the session
 * threads send reaches it as copies. A session that records posts each batch
 * it sends back on its channel to the dispatcher, packed into one buffer:
 * one message per batch, and none at all when nothing records, so the hot
 * path of a server that does not record is untouched.
 */

/** A batch of frames a session thread sent, copied for the capture file. */
export interface SentFrames {
  type: "sent";
  /** Wall-clock milliseconds when the batch went out (lib/threads/clock.ts nowMs). */
  at: number;
  /** The frames, end to end. */
  bytes: Uint8Array;
  /** Each frame's length, in order. */
  lengths: Uint16Array;
}

/**
 * Copy `frames` (views into buffers the sender reuses) into one SentFrames.
 *
 * @example port.postMessage(packSentFrames(frames, nowMs()), [sent.bytes.buffer, sent.lengths.buffer]);
 */
export function packSentFrames(frames: readonly Uint8Array[], at: number): SentFrames {
  let total = 0;
  for (const frame of frames) total += frame.length;
  const bytes = new Uint8Array(total);
  const lengths = new Uint16Array(frames.length);
  let offset = 0;
  frames.forEach((frame, index) => {
    bytes.set(frame, offset);
    lengths[index] = frame.length;
    offset += frame.length;
  });
  return { type: "sent", at, bytes, lengths };
}

/**
 * The frames of a SentFrames, as views into its buffer.
 *
 * @example for (const frame of unpackSentFrames(sent)) capture.write(frame, sent.at);
 */
export function* unpackSentFrames(sent: SentFrames): Generator<Uint8Array> {
  let offset = 0;
  for (const length of sent.lengths) {
    yield sent.bytes.subarray(offset, offset + length);
    offset += length;
  }
}
