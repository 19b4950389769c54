/**
 * Capture files in the classic libpcap format, so a boot can be recorded
 * (`bootserver --pcap FILE`) and read back in Wireshark, tshark or tcpdump.
 *
 * The format is a 24-byte global header followed by one record per frame: a
 * 16-byte record header (seconds, microseconds, bytes kept, bytes on the wire)
 * and the kept bytes. Every integer is a u32 in the writer's byte order; the
 * magic 0xa1b2c3d4 tells the reader which order that was, and this module
 * always writes little-endian. Link type 1 says each record is an Ethernet
 * frame without its FCS, which is exactly what `lib/wire/libpcap.ts` hands over.
 *
 * Encoding is pure (encodeGlobalHeader, encodeRecord). PcapFileWriter is the
 * file edge: a boot server records every frame it sends and receives, up to
 * some 115 000 DATA frames a second at gigabit line rate, so records are
 * gathered in one buffer and written in large blocks rather than one system
 * call per frame. The capture goes to a temporary file beside the target and
 * is renamed over it on close, so a reader never sees a half-written capture
 * under the name it asked for.
 */

import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";

/** Written little-endian, it reads as d4 c3 b2 a1: microsecond timestamps. */
export const PCAP_MAGIC = 0xa1b2c3d4;
export const PCAP_VERSION_MAJOR = 2;
export const PCAP_VERSION_MINOR = 4;
/** LINKTYPE_ETHERNET: IEEE 802.3 frames without the FCS. */
export const LINKTYPE_ETHERNET = 1;
export const GLOBAL_HEADER_SIZE = 24;
export const RECORD_HEADER_SIZE = 16;
/**
 * Bytes kept of each frame unless told otherwise. A netboot frame is at most
 * 1502 bytes (14 + 12 + a DATA body of 1476), so nothing of ours is cut.
 */
export const DEFAULT_SNAPLEN = 65535;
/** The record header's seconds field is a u32: captures end in 2106. */
const MAX_SECONDS = 0xffffffff;
const DEFAULT_BUFFER_BYTES = 1024 * 1024;

/** A capture file that cannot be written, or a frame or time it cannot hold. */
export class PcapFileError extends Error {
  override name = "PcapFileError";
}

/**
 * The 24-byte global header: magic, version 2.4, thiszone 0, sigfigs 0,
 * snaplen, link type Ethernet; every field a little-endian u32 (the two
 * version fields u16).
 *
 * @example
 * const header = encodeGlobalHeader(); // 24 bytes, starting d4 c3 b2 a1 02 00 04 00
 */
export function encodeGlobalHeader(snaplen: number = DEFAULT_SNAPLEN): Uint8Array {
  checkSnaplen(snaplen);
  const header = new Uint8Array(GLOBAL_HEADER_SIZE);
  const view = new DataView(header.buffer);
  view.setUint32(0, PCAP_MAGIC, true);
  view.setUint16(4, PCAP_VERSION_MAJOR, true);
  view.setUint16(6, PCAP_VERSION_MINOR, true);
  view.setInt32(8, 0, true); // thiszone: timestamps are UTC
  view.setUint32(12, 0, true); // sigfigs: unused by every reader
  view.setUint32(16, snaplen, true);
  view.setUint32(20, LINKTYPE_ETHERNET, true);
  return header;
}

/**
 * One record: the 16-byte record header and the first `snaplen` bytes of the
 * frame. `timestampMs` is wall-clock milliseconds since the Unix epoch and may
 * carry a fraction; it is kept to the microsecond.
 *
 * @example
 * const record = encodeRecord(frame, Date.now()); // 16 + frame.length bytes
 */
export function encodeRecord(frame: Uint8Array, timestampMs: number, snaplen: number = DEFAULT_SNAPLEN): Uint8Array {
  checkSnaplen(snaplen);
  const kept = Math.min(frame.length, snaplen);
  const record = new Uint8Array(RECORD_HEADER_SIZE + kept);
  writeRecord(record, new DataView(record.buffer), 0, frame, kept, timestampMs);
  return record;
}

/** Write one record at `at` in `target` (`view` spans all of `target`). */
function writeRecord(
  target: Uint8Array,
  view: DataView,
  at: number,
  frame: Uint8Array,
  kept: number,
  timestampMs: number,
) {
  const { seconds, microseconds } = splitTimestamp(timestampMs);
  view.setUint32(at, seconds, true);
  view.setUint32(at + 4, microseconds, true);
  view.setUint32(at + 8, kept, true);
  view.setUint32(at + 12, frame.length, true);
  target.set(frame.subarray(0, kept), at + RECORD_HEADER_SIZE);
}

function splitTimestamp(timestampMs: number): { seconds: number; microseconds: number } {
  if (!Number.isFinite(timestampMs) || timestampMs < 0) {
    throw new PcapFileError(`timestamp ${timestampMs} ms is not a time after 1970`);
  }
  const totalMicroseconds = Math.round(timestampMs * 1000);
  const seconds = Math.floor(totalMicroseconds / 1_000_000);
  if (seconds > MAX_SECONDS)
    throw new PcapFileError(`timestamp ${timestampMs} ms is past what a pcap record holds (2106)`);
  return { seconds, microseconds: totalMicroseconds - seconds * 1_000_000 };
}

function checkSnaplen(snaplen: number) {
  if (!Number.isInteger(snaplen) || snaplen < 1 || snaplen > 0x7fffffff) {
    throw new PcapFileError(`snaplen ${snaplen} is not a whole number of bytes from 1 to ${0x7fffffff}`);
  }
}

export interface PcapFileOptions {
  /** Bytes kept of each frame; default 65535. */
  snaplen?: number;
  /** Records gathered before one write to the file; default 1 MiB. */
  bufferBytes?: number;
}

/**
 * A capture file being written. Frames are copied when written, so a caller
 * may hand over a buffer it reuses (DataFrameWriter's). Nothing appears under
 * `path` until close(); discard() drops the capture instead. Not shared
 * between threads: each thread that records opens its own file.
 *
 * @example
 * const capture = PcapFileWriter.open("boot.pcap");
 * try {
 *   capture.write(frame); // stamped now
 *   capture.write(other, receivedAtMs);
 * } finally {
 *   capture.close(); // boot.pcap appears, complete
 * }
 */
export class PcapFileWriter {
  private readonly buffer: Uint8Array;
  private readonly view: DataView;
  private used = 0;
  private fd: number | null;
  private written = 0;

  private constructor(
    /** Where the capture appears on close. */
    readonly path: string,
    private readonly temporaryPath: string,
    fd: number,
    readonly snaplen: number,
    bufferBytes: number,
  ) {
    this.fd = fd;
    this.buffer = new Uint8Array(Math.max(bufferBytes, GLOBAL_HEADER_SIZE));
    this.view = new DataView(this.buffer.buffer);
    this.buffer.set(encodeGlobalHeader(snaplen));
    this.used = GLOBAL_HEADER_SIZE;
  }

  /**
   * Start a capture that will appear at `path` on close. The file being
   * written is `.NAME.PID.RANDOM.tmp` in the same directory, so the final
   * rename stays on one file system.
   *
   * @example const capture = PcapFileWriter.open(argv.pcap, { snaplen: 2048 });
   */
  static open(path: string, options: PcapFileOptions = {}): PcapFileWriter {
    const snaplen = options.snaplen ?? DEFAULT_SNAPLEN;
    checkSnaplen(snaplen);
    const suffix = crypto.randomUUID().slice(0, 8);
    const temporaryPath = join(dirname(path), `.${basename(path)}.${process.pid}.${suffix}.tmp`);
    let fd: number;
    try {
      fd = openSync(temporaryPath, "wx", 0o644);
    } catch (error) {
      throw new PcapFileError(`cannot create capture file ${path}: ${systemReason(error)}`);
    }
    return new PcapFileWriter(path, temporaryPath, fd, snaplen, options.bufferBytes ?? DEFAULT_BUFFER_BYTES);
  }

  /**
   * Record one Ethernet frame (without FCS), stamped `timestampMs` (wall-clock
   * milliseconds, default now).
   *
   * @example capture.write(encodeFrame(sledMac, serverMac, { type: "reset" }));
   */
  write(frame: Uint8Array, timestampMs: number = nowMs()): void {
    const fd = this.openFd();
    const kept = Math.min(frame.length, this.snaplen);
    const size = RECORD_HEADER_SIZE + kept;
    if (this.used + size > this.buffer.length) this.flush(fd);
    if (size > this.buffer.length) {
      writeAll(fd, encodeRecord(frame, timestampMs, this.snaplen), this.path);
    } else {
      writeRecord(this.buffer, this.view, this.used, frame, kept, timestampMs);
      this.used += size;
    }
    this.written++;
  }

  /** Frames written so far. */
  get frames(): number {
    return this.written;
  }

  /**
   * Write what is buffered, make it durable and move the capture to its name.
   * Calling it again does nothing.
   *
   * @example capture.close();
   */
  close(): void {
    if (this.fd === null) return;
    const fd = this.fd;
    this.fd = null;
    try {
      try {
        this.flush(fd);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(this.temporaryPath, this.path);
    } catch (error) {
      rmSync(this.temporaryPath, { force: true });
      throw error instanceof PcapFileError
        ? error
        : new PcapFileError(`cannot write capture file ${this.path}: ${systemReason(error)}`);
    }
  }

  /**
   * Drop the capture: remove the temporary file, leave `path` untouched.
   * For a program that fails before it has anything worth keeping.
   *
   * @example capture.discard();
   */
  discard(): void {
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
    rmSync(this.temporaryPath, { force: true });
  }

  private openFd(): number {
    if (this.fd === null) throw new PcapFileError(`capture file ${this.path} is already closed`);
    return this.fd;
  }

  private flush(fd: number) {
    writeAll(fd, this.buffer.subarray(0, this.used), this.path);
    this.used = 0;
  }
}

function writeAll(fd: number, bytes: Uint8Array, path: string) {
  try {
    for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
  } catch (error) {
    throw new PcapFileError(`cannot write capture file ${path}: ${systemReason(error)}`);
  }
}
