/**
 * A link to the wire through libpcap: the one place in the project that
 * captures or sends Ethernet frames (the C functions it calls are in
 * libpcap-ffi.ts, the sendmmsg(2) arguments in send-batch.ts).
 *
 * A `PcapLink` is one libpcap handle on one link. The netboot protocol is
 * lock-step and latency-bound (the sled sends its next READ only after a whole
 * batch of DATA arrived, and polls its queue at least every 50 ms), so the
 * handle runs in immediate mode: each frame is handed over as soon as it
 * arrives instead of waiting for a kernel buffer block to fill.
 *
 * Capture is narrowed in the kernel, so the ring buffer only ever holds
 * netboot frames that came in from the wire. A BPF program "ether proto
 * 0x1de0" keeps other traffic on the segment from costing a copy and a
 * wake-up. The socket option PACKET_IGNORE_OUTGOING (Linux 4.20+) keeps the
 * frames that other handles on the same link send out of this handle's ring:
 * a boot server's sending threads emit DATA at line rate on the link its
 * dispatcher listens on, and without the option every DATA frame would be
 * copied into the dispatcher's ring, wake it, and could crowd out the READ
 * frames it must see. `pcap_setdirection(PCAP_D_IN)` says the same to
 * libpcap, which then drops outgoing frames itself where the kernel lacks the
 * option. (The BPF `inbound` test is no substitute: libpcap runs the first
 * frame after a filter change through its own interpreter, which cannot
 * evaluate it, and drops that frame.) A handle never sees frames it sent.
 *
 * `next()` waits at most `timeoutMs`, which is what lets a worker thread sit
 * in a capture loop and still look, that often, at whether it should stop.
 * libpcap's own read timeout cannot give that on Linux: in immediate mode a
 * blocking read polls again and again until a frame arrives. So the handle is
 * put in non-blocking mode, `next()` first takes a frame already in the ring
 * (no system call at all when one is there) and only when the ring is empty
 * waits in poll(2) with the timeout. Sending shares the socket, so `inject`
 * waits for room the same way when the send buffer is full, as a blocking
 * send would have.
 *
 * At line rate every frame's cost counts (one sled is ~115k frames/s, and a
 * system call alone costs about a microsecond on our machines). Reading a
 * frame is one FFI call plus one copy out of libpcap's buffer, which is
 * reused by the next call: `next()` copies into a new buffer, `nextInto()`
 * into the caller's and allocates nothing. Sending is one send(2) per frame
 * with `inject` (pcap_inject); `injectBatch` hands a whole batch, such as the
 * 128 answers to one READ, to the same socket in one sendmmsg(2), which is
 * what pcap_inject does frame by frame.
 *
 * A program that sends from several threads opens one handle per thread. A
 * thread that only sends opens an injection-only handle (`capture: false`):
 * its filter accepts nothing and its buffer is small, so it does not keep a
 * second copy of the incoming traffic that nobody would read.
 */

import { type Pointer, ptr, read, toArrayBuffer } from "bun:ffi";
import {
  cString,
  DLT_EN10MB,
  describeStatus,
  fromCString,
  lastErrno,
  libc,
  libpcap,
  PCAP_ERRBUF_SIZE,
  PcapError,
  PKTHDR_OFFSET_CAPLEN,
  PKTHDR_OFFSET_FRACTION,
  PKTHDR_OFFSET_SECONDS,
} from "./libpcap-ffi.ts";
import { readLinkMac } from "./link-mac.ts";
import { SendBatch } from "./send-batch.ts";

export interface PcapOpenOptions {
  /** Bytes kept of each frame; default 2048 (a netboot frame is at most 1502). */
  snaplen?: number;
  /** How long `next()` waits for a frame before returning null; default 50 ms. */
  timeoutMs?: number;
  /** Kernel capture buffer; default 16 MiB. */
  bufferBytes?: number;
  /** Default true. False opens an injection-only handle that captures nothing. */
  capture?: boolean;
  /**
   * Default false. True puts the link in promiscuous mode while the handle is
   * open, so a physical NIC also delivers unicast frames for MAC addresses
   * other than its own (the sled emulator answers for several MACs).
   */
  promiscuous?: boolean;
}

/** The netboot ethertype (docs/netboot.md); the only frames captured. */
const CAPTURE_FILTER = "ether proto 0x1de0";
const ETHERNET_HEADER_SIZE = 14;
const DEFAULT_SNAPLEN = 2048;
const DEFAULT_TIMEOUT_MS = 50;
const DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024;
/** An injection-only handle needs only a minimal ring; the kernel rounds up. */
const INJECT_ONLY_SNAPLEN = 64;
const INJECT_ONLY_BUFFER_BYTES = 64 * 1024;
/** A send buffer that stays full this long means the link no longer transmits. */
const SEND_PATIENCE_MS = 1000;

/** From <pcap/pcap.h>, <linux/if_packet.h>, <poll.h>, <errno.h>. */
const PCAP_D_IN = 1;
const PCAP_NETMASK_UNKNOWN = 0xffffffff;
const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const EAGAIN = 11;
const PCAP_TSTAMP_PRECISION_NANO = 1;
/** `struct bpf_program` is { u_int bf_len; struct bpf_insn *bf_insns; } (LP64). */
const BPF_PROGRAM_SIZE = 16;
/** The opcode of `ret #k`; with k = 0 a filter keeps nothing. */
const BPF_RET_K = 0x06;

/**
 * One libpcap handle on one Ethernet link: captures incoming netboot frames
 * (ethertype 0x1DE0) and sends frames. Use a handle from one thread only.
 *
 * @example
 * const link = PcapLink.open("eth1");
 * try {
 *   const frame = link.next(); // null after 50 ms without a frame
 *   if (frame) link.inject(reply(frame));
 * } finally {
 *   link.close();
 * }
 */
export class PcapLink {
  #handle: Pointer | null;
  readonly #timeoutMs: number;
  /** pcap_next_ex's out-parameters: struct pcap_pkthdr ** and const u_char **. */
  readonly #outs = new BigUint64Array(2);
  readonly #headerOut: Pointer;
  readonly #dataOut: Pointer;
  /** One struct pollfd { int fd; short events; short revents; } for waiting on the socket. */
  readonly #pollfd = new Int32Array(2);
  readonly #pollEvents = new Int16Array(this.#pollfd.buffer, 4, 2);
  readonly #pollfdPointer: Pointer;
  readonly #statsOut = new Uint32Array(3);
  /** The most bytes libpcap keeps of a frame, and where its frame buffer was last seen. */
  readonly #snapshot: number;
  #bufferAddress = 0;
  #buffer = new Uint8Array(0);
  /** sendmmsg's arguments for injectBatch, made on its first use. */
  #batch: SendBatch | undefined;
  /** Nanoseconds per unit of the header's fraction field: 1, or 1000 where libpcap gives microseconds. */
  readonly #fractionNs: number;
  /** A whole second near the time of opening, and performance.now() at that second (so stamps stay small numbers). */
  readonly #baseSecond: number;
  readonly #baseMs: number;

  private constructor(
    readonly link: string,
    /** The link's own MAC address, 6 bytes. */
    readonly mac: Uint8Array,
    handle: Pointer,
    timeoutMs: number,
  ) {
    this.#handle = handle;
    this.#timeoutMs = timeoutMs;
    this.#headerOut = ptr(this.#outs);
    this.#dataOut = ptr(this.#outs, 8);
    this.#pollfd[0] = libpcap().pcap_fileno(handle);
    this.#pollfdPointer = ptr(this.#pollfd);
    this.#snapshot = libpcap().pcap_snapshot(handle);
    this.#fractionNs = libpcap().pcap_get_tstamp_precision(handle) === PCAP_TSTAMP_PRECISION_NANO ? 1 : 1000;
    this.#baseSecond = Math.floor((performance.timeOrigin + performance.now()) / 1000);
    this.#baseMs = this.#baseSecond * 1000 - performance.timeOrigin;
  }

  /**
   * Open a link for capture and injection. Needs root (or CAP_NET_RAW).
   * Throws PcapError naming the link and libpcap's reason.
   *
   * @example const sender = PcapLink.open("eth1", { capture: false });
   */
  static open(link: string, options: PcapOpenOptions = {}): PcapLink {
    const capture = options.capture ?? true;
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0) {
      throw new PcapError(`cannot open link ${link}: timeout of ${timeoutMs} ms is not a whole number >= 0`);
    }
    const pcap = libpcap();
    const errbuf = new Uint8Array(PCAP_ERRBUF_SIZE);
    const handle = pcap.pcap_create(cString(link), errbuf) as Pointer | null;
    if (!handle) throw new PcapError(`cannot open link ${link}: ${fromCString(errbuf)}`);
    const check = (what: string, status: number) => {
      if (status !== 0) throw new PcapError(`cannot open link ${link}: ${what}: ${describeStatus(handle, status)}`);
    };
    try {
      check(
        "setting the snaplen",
        pcap.pcap_set_snaplen(handle, capture ? (options.snaplen ?? DEFAULT_SNAPLEN) : INJECT_ONLY_SNAPLEN),
      );
      check("setting immediate mode", pcap.pcap_set_immediate_mode(handle, 1));
      if (options.promiscuous) check("setting promiscuous mode", pcap.pcap_set_promisc(handle, 1));
      const bufferBytes = capture ? (options.bufferBytes ?? DEFAULT_BUFFER_BYTES) : INJECT_ONLY_BUFFER_BYTES;
      check("setting the buffer size", pcap.pcap_set_buffer_size(handle, bufferBytes));
      // Best effort: where nanosecond stamps are not offered, libpcap keeps microseconds (see receivedAt).
      pcap.pcap_set_tstamp_precision(handle, PCAP_TSTAMP_PRECISION_NANO);
      const activated = pcap.pcap_activate(handle);
      // A positive status is a warning about a feature we did not ask for (promiscuous mode, time stamps).
      if (activated < 0) throw new PcapError(`cannot open link ${link}: ${describeStatus(handle, activated)}`);
      if (pcap.pcap_datalink(handle) !== DLT_EN10MB) {
        throw new PcapError(`cannot open link ${link}: it is not an Ethernet link`);
      }
      if (pcap.pcap_setnonblock(handle, 1, errbuf) !== 0) {
        throw new PcapError(`cannot open link ${link}: non-blocking mode: ${fromCString(errbuf)}`);
      }
      // Outgoing frames never reach any of our handles: without this the
      // kernel hands each send-only handle every frame the other sessions
      // send, only for the filter to discard it (measured: 20% of the boot
      // server's CPU with 32 sleds).
      ignoreOutgoingInKernel(handle);
      if (capture) {
        check("capturing incoming frames only", pcap.pcap_setdirection(handle, PCAP_D_IN));
        check(`filter "${CAPTURE_FILTER}"`, setCaptureFilter(handle));
      } else {
        check("filter that keeps nothing", setRejectAllFilter(handle));
      }
      return new PcapLink(link, readLinkMac(link), handle, timeoutMs);
    } catch (error) {
      pcap.pcap_close(handle);
      throw error;
    }
  }

  /**
   * The next captured frame as a copy, or null when none arrived within the
   * timeout (the handle's, or `timeoutMs` for this call; 0 does not wait). Blocks the calling thread for at most that long (a thread that
   * must also hear messages should yield to its event loop after a null). A
   * frame longer than the snaplen comes back cut to it.
   *
   * @example for (let frame = link.next(); frame; frame = link.next()) handle(frame);
   */
  next(timeoutMs = this.#timeoutMs): Uint8Array<ArrayBuffer> | null {
    if (this.#take() || (this.#wait(POLLIN, timeoutMs) && this.#take())) return this.#frameInPlace().slice();
    return null;
  }

  /**
   * Like `next()`, but copies the frame into `buffer` instead of a new one and
   * returns its length, or 0 when none arrived within the timeout. For a
   * receiver at line rate, where allocating a buffer per frame is a real cost.
   * A frame longer than `buffer` is cut to it.
   *
   * @example const buffer = new Uint8Array(2048); const length = link.nextInto(buffer);
   */
  nextInto(buffer: Uint8Array, timeoutMs = this.#timeoutMs): number {
    if (!(this.#take() || (this.#wait(POLLIN, timeoutMs) && this.#take()))) return 0;
    const frame = this.#frameInPlace();
    const length = Math.min(frame.length, buffer.length);
    buffer.set(length === frame.length ? frame : frame.subarray(0, length));
    return length;
  }

  /**
   * When the kernel received the frame `next()` or `nextInto()` returned
   * last, in milliseconds on the performance.now() clock. This is the stamp
   * the kernel puts on the frame as it arrives (the SO_TIMESTAMPNS clock,
   * with nanosecond precision where libpcap offers it), not the time this
   * process read it, so a reader that falls behind still sees when frames
   * really came. The kernel stamps wall-clock time; it is moved onto
   * performance.now() with the offset taken at opening, so a wall-clock step
   * during the handle's life shifts it.
   *
   * @example const frame = link.next(); const arrivedAt = link.receivedAt();
   */
  receivedAt(): number {
    const header = read.ptr(this.#headerOut) as Pointer;
    // Both fields are 64-bit; their low words (little-endian) hold them until the year 2106.
    const seconds = read.u32(header, PKTHDR_OFFSET_SECONDS);
    const fraction = read.u32(header, PKTHDR_OFFSET_FRACTION);
    return (seconds - this.#baseSecond) * 1000 + (fraction * this.#fractionNs) / 1e6 + this.#baseMs;
  }

  /**
   * Wait up to the timeout for one frame like `next()`, then add the frames
   * that are already captured without waiting again, up to `max` in all.
   * Appends them to `out` and returns how many it appended.
   *
   * @example const frames: Uint8Array[] = []; const count = link.nextBatch(128, frames);
   */
  nextBatch(max: number, out: Uint8Array[]): number {
    if (max < 1) return 0;
    const first = this.next();
    if (!first) return 0;
    out.push(first);
    let count = 1;
    for (; count < max && this.#take(); count++) out.push(this.#frameInPlace().slice());
    return count;
  }

  /**
   * Send one whole Ethernet frame (header included, no FCS) as it is: a frame
   * shorter than 60 bytes goes out short, and a real NIC pads it, veth does not.
   * Waits while the socket's send buffer is full, as a blocking send would.
   *
   * @example link.inject(frame);
   */
  inject(frame: Uint8Array): void {
    const handle = this.#open();
    this.#checkLength(frame);
    const pcap = libpcap();
    for (let since = 0; pcap.pcap_inject(handle, frame, frame.length) !== frame.length; ) {
      since ||= Date.now();
      if (this.#waitForRoom(since) !== 0) throw this.#error(`cannot send a ${frame.length}-byte frame on`, -1);
    }
  }

  /**
   * Send frames in order, like `inject` on each, but with one sendmmsg(2) per
   * up to 256 frames on the same socket instead of one system call per frame
   * (on this project's machines the call itself costs more than the frame).
   * Every frame is checked before any is sent; a frame the kernel refuses
   * (one over the MTU, say) ends the batch with a PcapError naming it, after
   * the frames before it went out.
   *
   * @example link.injectBatch(dataFrames); // the answers to one READ
   */
  injectBatch(frames: readonly Uint8Array[]): void {
    this.#open();
    for (const frame of frames) this.#checkLength(frame);
    this.#batch ??= new SendBatch();
    const batch = this.#batch;
    for (let sent = 0, since = 0; sent < frames.length; ) {
      const count = batch.fill(frames, sent);
      const result = libc().sendmmsg(this.#pollfd[0]!, batch.messages, count, 0);
      if (result > 0) {
        sent += result;
        since = 0;
        continue;
      }
      since ||= Date.now();
      const errno = this.#waitForRoom(since);
      if (errno !== 0) {
        const frame = frames[sent]!;
        throw new PcapError(
          `cannot send frame ${sent + 1} of ${frames.length} (${frame.length} bytes) on ${this.link}: sendmmsg: ${libc().strerror(errno)}`,
        );
      }
    }
  }

  /**
   * libpcap's counters since the handle was opened: frames that passed the
   * filter, frames dropped because the buffer was full, and frames the
   * interface dropped.
   *
   * @example const { dropped } = link.stats();
   */
  stats(): { received: number; dropped: number; ifDropped: number } {
    const status = libpcap().pcap_stats(this.#open(), this.#statsOut);
    if (status !== 0) throw this.#error("cannot read the statistics of", status);
    const [received = 0, dropped = 0, ifDropped = 0] = this.#statsOut;
    return { received, dropped, ifDropped };
  }

  /**
   * Release the handle. Safe to call more than once.
   *
   * @example link.close();
   */
  close(): void {
    if (this.#handle) libpcap().pcap_close(this.#handle);
    this.#handle = null;
  }

  #open(): Pointer {
    if (!this.#handle) throw new PcapError(`link ${this.link} is closed`);
    return this.#handle;
  }

  #error(what: string, status: number): PcapError {
    return new PcapError(`${what} ${this.link}: ${describeStatus(this.#open(), status)}`);
  }

  /** Let libpcap take the next frame from the ring without waiting; false when there is none. */
  #take(): boolean {
    const status = libpcap().pcap_next_ex(this.#open(), this.#headerOut, this.#dataOut);
    if (status < 0) throw this.#error("cannot read a frame from", status);
    return status === 1;
  }

  /** Wait up to the timeout for the socket to be ready; false on timeout or interruption. */
  #wait(events: number, timeoutMs = this.#timeoutMs): boolean {
    this.#pollEvents[0] = events;
    this.#pollEvents[1] = 0;
    return libc().poll(this.#pollfdPointer, 1, timeoutMs) > 0;
  }

  #checkLength(frame: Uint8Array): void {
    if (frame.length < ETHERNET_HEADER_SIZE) {
      throw new PcapError(
        `cannot send a ${frame.length}-byte frame on ${this.link}: shorter than the ${ETHERNET_HEADER_SIZE}-byte Ethernet header`,
      );
    }
  }

  /**
   * After a failed send: while the socket's send buffer is full (EAGAIN, as
   * the socket is non-blocking) wait for room, as a blocking send would, and
   * return 0 to try again; otherwise, or once the buffer has stayed full since
   * `since` for too long, return the errno that ends the attempt.
   */
  #waitForRoom(since: number): number {
    // Read errno before anything else can change it.
    const errno = lastErrno();
    if (errno !== EAGAIN || Date.now() - since >= SEND_PATIENCE_MS) return errno;
    this.#wait(POLLOUT);
    return 0;
  }

  /**
   * The frame libpcap just handed over, in libpcap's own buffer: valid only
   * until the next call, so callers copy it. On Linux libpcap copies every
   * frame into one buffer of `snapshot` bytes per handle, so the view of it is
   * made once, not per frame; it is never read past the frame's length.
   */
  #frameInPlace(): Uint8Array {
    const length = read.u32(read.ptr(this.#headerOut) as Pointer, PKTHDR_OFFSET_CAPLEN);
    const address = read.ptr(this.#dataOut);
    if (address !== this.#bufferAddress) {
      this.#bufferAddress = address;
      this.#buffer = new Uint8Array(toArrayBuffer(address as Pointer, 0, this.#snapshot));
    }
    return this.#buffer.subarray(0, length);
  }
}

/**
 * Ask the kernel not to queue frames going out of the link at all. Best
 * effort: before Linux 4.20 the option is unknown, and libpcap's direction
 * check drops those frames after the copy instead.
 */
function ignoreOutgoingInKernel(handle: Pointer): void {
  const enable = new Int32Array([1]);
  libc().setsockopt(libpcap().pcap_fileno(handle), SOL_PACKET, PACKET_IGNORE_OUTGOING, enable, enable.byteLength);
}

function setCaptureFilter(handle: Pointer): number {
  const pcap = libpcap();
  const program = new Uint8Array(BPF_PROGRAM_SIZE);
  const compiled = pcap.pcap_compile(handle, program, cString(CAPTURE_FILTER), 1, PCAP_NETMASK_UNKNOWN);
  if (compiled !== 0) return compiled;
  try {
    return pcap.pcap_setfilter(handle, program);
  } finally {
    pcap.pcap_freecode(program);
  }
}

/**
 * The one-instruction program `ret #0`: the kernel queues no frame for this
 * socket. The struct bpf_program and its struct bpf_insn share one buffer, so
 * the instruction lives as long as the argument does.
 */
function setRejectAllFilter(handle: Pointer): number {
  const program = new Uint8Array(BPF_PROGRAM_SIZE + 8);
  const fields = new DataView(program.buffer);
  fields.setUint32(0, 1, true); // bf_len
  fields.setBigUint64(8, BigInt(ptr(program, BPF_PROGRAM_SIZE)), true); // bf_insns
  fields.setUint16(BPF_PROGRAM_SIZE, BPF_RET_K, true); // code; jt, jf and k stay 0
  return libpcap().pcap_setfilter(handle, program);
}
