/**
 * The queue between two threads of a pipeline: a bounded queue of byte
 * pieces over a MessagePort, whose buffers travel back to be filled again.
 *
 * Pieces move by transferring their buffers, so nothing is copied between
 * threads. A sender may have at most `depth` pieces unacknowledged, and a
 * receiver acknowledges a piece once it has finished with it by sending the
 * buffer back, which the sender fills again. Memory in use is therefore a
 * few pieces per queue whatever the stream's size, and after the first few
 * pieces no buffer is allocated at all: a fresh megabyte buffer costs Bun a
 * page fault per 4 KiB and its zeroing, about as much as inflating the
 * megabyte, and several times as much as decompressing it with zstd.
 *
 * A stage that fails says so in its queue, in the place of the piece it could
 * not make (PieceSender.fail), so the receiver meets the failure where the
 * piece would have been. lookimage's verify pipeline
 * (lib/image/verify.ts) and the bootserver's fill of shared memory
 * (lib/netboot/served-image.ts) both run on these queues.
 */

/** Pieces a stage may send before the next stage acknowledges one, unless the queue says otherwise. */
export const QUEUE_DEPTH = 4;

type LinkMessage = { kind: "piece"; bytes: Uint8Array } | { kind: "end" } | { kind: "failed"; reason: string };
type LinkAck = { kind: "ack"; buffer: ArrayBuffer };

/**
 * The sending end of a piece queue. At most `depth` (QUEUE_DEPTH) pieces are unacknowledged;
 * wait for `room()` before each `send`. Acknowledged buffers come back and
 * are handed out again by `buffer()`.
 *
 * @example
 * const queue = new PieceSender(port);
 * await queue.room();
 * const piece = queue.buffer(1024 * 1024);
 * queue.send(piece.subarray(0, filled));
 * queue.end();
 */
export class PieceSender {
  #inFlight = 0;
  #spare: ArrayBuffer[] = [];
  #wake: (() => void) | null = null;
  #closed = false;

  constructor(
    private readonly port: MessagePort,
    private readonly depth = QUEUE_DEPTH,
  ) {
    port.onmessage = (event) => {
      this.#inFlight--;
      this.#spare.push((event.data as LinkAck).buffer);
      this.#wake?.();
    };
  }

  /** True when a piece can be sent now. */
  get hasRoom(): boolean {
    return this.#inFlight < this.depth;
  }

  /** Resolve when a piece can be sent; reject once the sender is closed. */
  async room(): Promise<void> {
    while (!this.hasRoom && !this.#closed) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    if (this.#closed) throw new Error("pipeline stopped");
  }

  /** A buffer of `size` bytes to fill and send: a returned one when there is one. */
  buffer(size: number): Uint8Array {
    const spare = this.#spare.pop();
    return spare && spare.byteLength >= size ? new Uint8Array(spare, 0, size) : new Uint8Array(size);
  }

  /**
   * Send one piece, giving away the whole buffer behind it (it comes back
   * through `buffer()` once acknowledged). Call only when `hasRoom`.
   */
  send(bytes: Uint8Array): void {
    if (this.#closed) throw new Error("pipeline stopped");
    this.port.postMessage({ kind: "piece", bytes } satisfies LinkMessage, [bytes.buffer as ArrayBuffer]);
    this.#inFlight++;
  }

  /** Tell the receiver no more pieces follow. */
  end(): void {
    this.port.postMessage({ kind: "end" } satisfies LinkMessage);
  }

  /**
   * Tell the receiver no more pieces follow because this stage failed, and
   * why: the receiver meets the reason in its place among the pieces
   * (receivePieces).
   */
  fail(reason: string): void {
    this.port.postMessage({ kind: "failed", reason } satisfies LinkMessage);
  }

  /** Stop: a pending or later `room()` rejects instead of waiting forever, and `send` throws. */
  close(): void {
    this.#closed = true;
    this.port.close();
    this.#wake?.();
  }
}

/**
 * The receiving end of a piece queue, as an async iterable of pieces. A piece is
 * acknowledged (its buffer sent back) when the consumer asks for the next
 * one, so the consumer must be done with a piece by then. A sender that
 * failed (PieceSender.fail) ends it with an UpstreamFailure thrown.
 *
 * @example for await (const piece of receivePieces(port)) hasher.update(piece);
 */
export async function* receivePieces(port: MessagePort): AsyncGenerator<Uint8Array> {
  const queue: LinkMessage[] = [];
  let wake: (() => void) | null = null;
  port.onmessage = (event) => {
    queue.push(event.data as LinkMessage);
    wake?.();
  };
  try {
    for (;;) {
      while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const message = queue.shift()!;
      if (message.kind === "end") return;
      if (message.kind === "failed") throw new UpstreamFailure(message.reason);
      yield message.bytes;
      const buffer = message.bytes.buffer as ArrayBuffer;
      port.postMessage({ kind: "ack", buffer } satisfies LinkAck, [buffer]);
    }
  } finally {
    port.onmessage = null;
  }
}

/** The stage before this one failed, for this reason; thrown by receivePieces where its next piece would be. */
export class UpstreamFailure extends Error {
  override name = "UpstreamFailure";
}
