/**
 * Capture files in the classic libpcap format, so a boot can be recorded
 * (`bootserver --pcap FILE`) and read back in Wireshark, tshark or tcpdump.
 *
 * libpcap writes the file itself: `pcap_open_dead` makes a handle that stands
 * for no link, only for what the file says of its frames (Ethernet, the
 * snaplen), and `pcap_dump_fopen` writes the 24-byte file header from it;
 * `pcap_dump` then writes each record (a 16-byte record header and the kept
 * bytes) with microsecond timestamps, in the byte order of the machine, which
 * the magic number tells the reader. Each record is an Ethernet frame without
 * its FCS, which is exactly what `lib/wire/libpcap.ts` hands over. So the
 * format lives in one place, libpcap, and this module only says where the
 * file goes and when a frame was seen.
 *
 * A boot server records every frame it sends and receives, up to some 115 000
 * DATA frames a second at gigabit line rate, so the records go through a
 * stdio stream with a buffer of our own size (1 MiB) and reach the file in
 * large blocks rather than one system call per frame. The capture goes to a
 * temporary file beside the target and is renamed over it on close, so a
 * reader never sees a half-written capture under the name it asked for.
 */

import type { Pointer } from "bun:ffi";
import { closeSync, fsyncSync, openSync, renameSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { systemReason } from "@ramdisk-tools/errors/errors.ts";
import { nowMs } from "@ramdisk-tools/threads/clock.ts";
import {
  cString,
  DLT_EN10MB,
  lastErrno,
  libc,
  libpcap,
  PKTHDR_OFFSET_CAPLEN,
  PKTHDR_OFFSET_FRACTION,
  PKTHDR_OFFSET_LEN,
  PKTHDR_OFFSET_SECONDS,
  PKTHDR_SIZE,
} from "./libpcap-ffi.ts";

/**
 * Bytes kept of each frame unless told otherwise. A netboot frame is at most
 * 1502 bytes (14 + 12 + a DATA body of 1476), so nothing of ours is cut.
 */
const DEFAULT_SNAPLEN = 65535;
/** The record header's seconds field is a u32: captures end in 2106. */
const MAX_SECONDS = 0xffffffff;
const DEFAULT_BUFFER_BYTES = 1024 * 1024;
/** From <stdio.h>: full buffering, written out only when the buffer is full. */
const IOFBF = 0;

/** A capture file that cannot be written, or a frame or time it cannot hold. */
export class PcapFileError extends Error {
  override name = "PcapFileError";
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
 * A capture file being written. libpcap copies each frame into the stream's
 * buffer, so a caller may hand over a buffer it reuses (DataFrameWriter's).
 * Nothing appears under `path` until close(); discard() drops the capture
 * instead. Not shared between threads: each thread that records opens its
 * own file.
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
  /** libpcap's pcap_dumper_t; null once closed. */
  #dumper: Pointer | null;
  /**
   * The stdio stream (FILE *) the dumper writes to, over the temporary file,
   * and the buffer setvbuf gave it: stdio writes into that memory until
   * pcap_dump_close, so it is held here for as long as the stream.
   */
  readonly #stream: { file: Pointer; buffer: Uint8Array };
  /** The struct pcap_pkthdr handed to pcap_dump, as u32 words; the high words of the time fields stay 0. */
  readonly #header = new Uint32Array(PKTHDR_SIZE / 4);
  #written = 0;
  #failure: PcapFileError | undefined;

  private constructor(
    /** Where the capture appears on close. */
    readonly path: string,
    private readonly temporaryPath: string,
    /** The temporary file's descriptor, which the stream owns: kept for fsync. */
    private readonly fd: number,
    readonly snaplen: number,
    dumper: Pointer,
    file: Pointer,
    buffer: Uint8Array,
  ) {
    this.#dumper = dumper;
    this.#stream = { file, buffer };
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
    const pcap = libpcap();
    const suffix = crypto.randomUUID().slice(0, 8);
    const temporaryPath = join(dirname(path), `.${basename(path)}.${process.pid}.${suffix}.tmp`);
    let fd: number;
    try {
      fd = openSync(temporaryPath, "wx", 0o644);
    } catch (error) {
      throw new PcapFileError(`cannot create capture file ${path}: ${systemReason(error)}`);
    }
    const fail = (reason: string): never => {
      rmSync(temporaryPath, { force: true });
      throw new PcapFileError(`cannot create capture file ${path}: ${reason}`);
    };
    const file = libc().fdopen(fd, cString("w")) as Pointer | null;
    if (!file) {
      const reason = systemReason({ errno: lastErrno() });
      closeSync(fd);
      return fail(reason);
    }
    const buffer = new Uint8Array(Math.max(1, Math.floor(options.bufferBytes ?? DEFAULT_BUFFER_BYTES)));
    libc().setvbuf(file, buffer, IOFBF, buffer.length);
    // Only the dumper outlives this call: it takes the link type and snaplen from the dead handle once, for the file header.
    const dead = pcap.pcap_open_dead(DLT_EN10MB, snaplen) as Pointer | null;
    if (!dead) {
      libc().fclose(file);
      return fail("libpcap cannot describe the file (out of memory)");
    }
    const dumper = pcap.pcap_dump_fopen(dead, file) as Pointer | null;
    const refusal = dumper ? "" : String(pcap.pcap_geterr(dead));
    pcap.pcap_close(dead);
    if (!dumper) {
      libc().fclose(file);
      return fail(refusal);
    }
    return new PcapFileWriter(path, temporaryPath, fd, snaplen, dumper, file, buffer);
  }

  /**
   * Record one Ethernet frame (without FCS), stamped `timestampMs` (wall-clock
   * milliseconds since the Unix epoch, default now, kept to the microsecond).
   *
   * @example capture.write(encodeFrame(sledMac, serverMac, { type: "reset" }));
   */
  write(frame: Uint8Array, timestampMs: number = nowMs()): void {
    const dumper = this.#dumper;
    if (dumper === null) throw new PcapFileError(`capture file ${this.path} is already closed`);
    if (!Number.isFinite(timestampMs) || timestampMs < 0) {
      throw new PcapFileError(`timestamp ${timestampMs} ms is not a time after 1970`);
    }
    const totalMicroseconds = Math.round(timestampMs * 1000);
    const seconds = Math.floor(totalMicroseconds / 1_000_000);
    if (seconds > MAX_SECONDS)
      throw new PcapFileError(`timestamp ${timestampMs} ms is past what a pcap record holds (2106)`);
    const header = this.#header;
    header[PKTHDR_OFFSET_SECONDS / 4] = seconds;
    header[PKTHDR_OFFSET_FRACTION / 4] = totalMicroseconds - seconds * 1_000_000;
    header[PKTHDR_OFFSET_CAPLEN / 4] = Math.min(frame.length, this.snaplen);
    header[PKTHDR_OFFSET_LEN / 4] = frame.length;
    libpcap().pcap_dump(dumper, header, frame);
    // pcap_dump returns nothing; a failed write of the stream's buffer shows in its error flag.
    if (libc().ferror(this.#stream.file) !== 0) throw this.#failed();
    this.#written++;
  }

  /** Frames written so far. */
  get frames(): number {
    return this.#written;
  }

  /**
   * Write what is buffered, make it durable and move the capture to its name.
   * Calling it again does nothing.
   *
   * @example capture.close();
   */
  close(): void {
    const dumper = this.#dumper;
    if (dumper === null) return;
    this.#dumper = null;
    let failure: PcapFileError | undefined;
    if (libpcap().pcap_dump_flush(dumper) !== 0 || libc().ferror(this.#stream.file) !== 0) {
      failure = this.#failed();
    } else {
      try {
        fsyncSync(this.fd);
      } catch (error) {
        failure = this.#writeError(systemReason(error));
      }
    }
    libpcap().pcap_dump_close(dumper);
    if (failure === undefined) {
      try {
        renameSync(this.temporaryPath, this.path);
        return;
      } catch (error) {
        failure = this.#writeError(systemReason(error));
      }
    }
    rmSync(this.temporaryPath, { force: true });
    throw failure;
  }

  /**
   * Drop the capture: remove the temporary file, leave `path` untouched.
   * For a program that fails before it has anything worth keeping.
   *
   * @example capture.discard();
   */
  discard(): void {
    if (this.#dumper === null) return;
    libpcap().pcap_dump_close(this.#dumper);
    this.#dumper = null;
    rmSync(this.temporaryPath, { force: true });
  }

  /**
   * The stream's first failed write, told once with the errno it left: the
   * error flag stays set, and stdio drops the records it could not write, so
   * every later write and the close must fail with it too.
   */
  #failed(): PcapFileError {
    this.#failure ??= this.#writeError(systemReason({ errno: lastErrno() }));
    return this.#failure;
  }

  #writeError(reason: string): PcapFileError {
    return new PcapFileError(`cannot write capture file ${this.path}: ${reason}`);
  }
}
