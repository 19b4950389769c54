/**
 * libpcap and the few libc functions beside it, as `bun:ffi` loads them: the
 * one table of the C functions this package calls, with the argument types
 * of their prototypes, so no native addon is built. A link (libpcap.ts) and a
 * capture file (pcap-file.ts) both stand on it.
 *
 * Both libraries are loaded on first use, so importing a module of this
 * package never fails on a machine without libpcap; the first call says what
 * to install instead.
 */

import { dlopen, FFIType, type Pointer, read } from "bun:ffi";
import { oneLine } from "@ramdisk-tools/errors/errors.ts";

/** An error from libpcap or about a link; the message carries libpcap's own text. */
export class PcapError extends Error {
  override name = "PcapError";
}

/** LINKTYPE_ETHERNET, from <pcap/dlt.h>: IEEE 802.3 frames without the FCS. */
export const DLT_EN10MB = 1;
/** From <pcap/pcap.h>: the size of the buffer libpcap writes an error into. */
export const PCAP_ERRBUF_SIZE = 256;
/**
 * `struct pcap_pkthdr` on LP64, the header of each frame libpcap hands over
 * or dumps: a `struct timeval` of two 64-bit fields (tv_sec, then tv_usec,
 * which holds nanoseconds on a handle of nanosecond precision), then caplen
 * (the bytes kept) and len (the bytes on the wire), u32 each. Little-endian,
 * the low word of each time field holds it until the year 2106.
 */
export const PKTHDR_SIZE = 24;
export const PKTHDR_OFFSET_SECONDS = 0;
export const PKTHDR_OFFSET_FRACTION = 8;
export const PKTHDR_OFFSET_CAPLEN = 16;
export const PKTHDR_OFFSET_LEN = 20;

const { ptr: P, i32, u32, u64, cstring, void: VOID } = FFIType;
const LIBPCAP_SYMBOLS = {
  pcap_lib_version: { args: [], returns: cstring },
  pcap_create: { args: [P, P], returns: P },
  pcap_set_snaplen: { args: [P, i32], returns: i32 },
  pcap_set_immediate_mode: { args: [P, i32], returns: i32 },
  pcap_set_promisc: { args: [P, i32], returns: i32 },
  pcap_set_buffer_size: { args: [P, i32], returns: i32 },
  pcap_set_tstamp_precision: { args: [P, i32], returns: i32 },
  pcap_get_tstamp_precision: { args: [P], returns: i32 },
  pcap_activate: { args: [P], returns: i32 },
  pcap_datalink: { args: [P], returns: i32 },
  pcap_setnonblock: { args: [P, i32, P], returns: i32 },
  pcap_setdirection: { args: [P, i32], returns: i32 },
  pcap_compile: { args: [P, P, P, i32, u32], returns: i32 },
  pcap_setfilter: { args: [P, P], returns: i32 },
  pcap_freecode: { args: [P], returns: VOID },
  pcap_fileno: { args: [P], returns: i32 },
  pcap_snapshot: { args: [P], returns: i32 },
  pcap_next_ex: { args: [P, P, P], returns: i32 },
  pcap_inject: { args: [P, P, u64], returns: i32 },
  pcap_stats: { args: [P, P], returns: i32 },
  pcap_geterr: { args: [P], returns: cstring },
  pcap_statustostr: { args: [i32], returns: cstring },
  pcap_close: { args: [P], returns: VOID },
  pcap_open_dead: { args: [i32, i32], returns: P },
  pcap_dump_fopen: { args: [P, P], returns: P },
  pcap_dump: { args: [P, P, P], returns: VOID },
  pcap_dump_flush: { args: [P], returns: i32 },
  pcap_dump_close: { args: [P], returns: VOID },
} as const;
const LIBC_SYMBOLS = {
  poll: { args: [P, u64, i32], returns: i32 },
  setsockopt: { args: [i32, i32, i32, P, u32], returns: i32 },
  sendmmsg: { args: [i32, P, u32, i32], returns: i32 },
  strerror: { args: [i32], returns: cstring },
  __errno_location: { args: [], returns: P },
  fdopen: { args: [i32, P], returns: P },
  setvbuf: { args: [P, P, i32, u64], returns: i32 },
  ferror: { args: [P], returns: i32 },
  fclose: { args: [P], returns: i32 },
} as const;

/** Sonames to try: Debian's libpcap0.8 package ships libpcap.so.0.8, others ship .so.1. */
const LIBPCAP_NAMES = ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];

type Libpcap = ReturnType<typeof dlopen<typeof LIBPCAP_SYMBOLS>>["symbols"];
type Libc = ReturnType<typeof dlopen<typeof LIBC_SYMBOLS>>["symbols"];
let libpcapLoaded: Libpcap | undefined;
let libcLoaded: Libc | undefined;

/**
 * libpcap's functions, loaded on first use. Throws PcapError, saying which
 * package to install, when no libpcap can be loaded.
 *
 * @example const handle = libpcap().pcap_open_dead(DLT_EN10MB, 65535);
 */
export function libpcap(): Libpcap {
  if (libpcapLoaded) return libpcapLoaded;
  const failures: string[] = [];
  for (const name of LIBPCAP_NAMES) {
    try {
      libpcapLoaded = dlopen(name, LIBPCAP_SYMBOLS).symbols;
      return libpcapLoaded;
    } catch (error) {
      failures.push(oneLine(error));
    }
  }
  throw new PcapError(`cannot load libpcap (install the libpcap0.8 package): ${failures.join("; ")}`);
}

/**
 * The libc functions this package calls beside libpcap, loaded on first use.
 *
 * @example libc().poll(pollfd, 1, 50);
 */
export function libc(): Libc {
  libcLoaded ??= dlopen("libc.so.6", LIBC_SYMBOLS).symbols;
  return libcLoaded;
}

/**
 * errno as the last libc call on this thread left it. Read it straight after
 * the call that failed, before anything else can change it.
 *
 * @example if (libc().ferror(file) !== 0) throw new Error(systemReason({ errno: lastErrno() }));
 */
export function lastErrno(): number {
  return read.i32(libc().__errno_location() as Pointer);
}

const encoder = new TextEncoder();

/**
 * `text` as a NUL-terminated C string.
 *
 * @example libpcap().pcap_create(cString("eth1"), errbuf);
 */
export function cString(text: string): Uint8Array {
  return encoder.encode(`${text}\0`);
}

/**
 * The C string at the start of `bytes` (all of it when there is no NUL).
 *
 * @example fromCString(errbuf) // "eth9: No such device exists"
 */
export function fromCString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/**
 * libpcap's text for a failed call on `handle`: its error buffer, else the
 * meaning of the status code.
 *
 * @example throw new PcapError(`cannot open link ${link}: ${describeStatus(handle, status)}`);
 */
export function describeStatus(handle: Pointer, status: number): string {
  const pcap = libpcap();
  return String(pcap.pcap_geterr(handle) ?? "") || String(pcap.pcap_statustostr(status));
}

/**
 * The version string of the libpcap in use. Throws PcapError when libpcap
 * cannot be loaded.
 *
 * @example libpcapVersion() // "libpcap version 1.10.3 (with TPACKET_V3)"
 */
export function libpcapVersion(): string {
  return String(libpcap().pcap_lib_version());
}
