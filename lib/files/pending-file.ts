/**
 * Writing an output file so that nobody ever sees it half-written: the bytes
 * go to a temporary file beside the target (same directory, hence the same
 * file system, so the final rename is atomic), which is synced and then
 * renamed over the target; any failure, and SIGINT, SIGTERM or SIGHUP,
 * removes the temporary file instead. A reader of the target sees either
 * the old file or the complete new one.
 *
 * mkimage writes images and checksum files this way, lookimage --extract the
 * raw pool.
 *
 * Written bytes are flushed to disk behind the writer: every WRITE_BEHIND
 * bytes, unless a flush is still under way, one `fdatasync` starts on Bun's
 * file thread pool while the writing goes on, so the sync before the
 * rename only waits for the last few megabytes. Without it, mkimage --zstd
 * of a 256 MiB pool spent its last 0.11-0.14 s (a tenth of its time) in that
 * sync, writing out the whole 75 MiB image at once; with it, about 5 ms.
 */

import { unlinkSync } from "node:fs";
import { type FileHandle, lstat, open, readlink, realpath, rename, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { systemReason, UserError } from "@ramdisk-tools/errors/errors.ts";

/** Bytes written between two flushes behind the writer. */
const WRITE_BEHIND = 8 * 1024 * 1024;

/** Longest file name (one path component) Linux file systems take, in bytes. */
const NAME_MAX = 255;

/** A path to write, with symbolic links resolved (the file they name is replaced, not the link). */
export interface Target {
  path: string;
  /** What the file is, for messages: "output", "checksum file", "raw output". */
  what: string;
  resolved: string;
  /** Device and inode when the file already exists, to catch hard links to an input. */
  existing?: { dev: number; ino: number };
}

/**
 * Resolve a path to write, refusing a directory, a missing parent
 * directory, or a symbolic link that leads nowhere with a one-line UserError.
 *
 * @example const output = await resolveTarget("output", "pool.img");
 */
export async function resolveTarget(what: string, path: string): Promise<Target> {
  let resolved: string;
  try {
    resolved = await realpath(path);
  } catch (unresolved) {
    // A link that leads nowhere (dangling, or a loop) names no file to replace: writing would
    // either replace the link itself or create a file somewhere unexpected, so refuse it, as
    // GNU cp does ("not writing through dangling symlink").
    if ((await lstat(path).catch(() => undefined))?.isSymbolicLink()) {
      throw new UserError(
        `${what} ${path} is a symbolic link to ${await readlink(path)}, which does not resolve (${systemReason(unresolved)}); not writing through it`,
      );
    }
    try {
      resolved = join(await realpath(dirname(path)), basename(path));
    } catch (error) {
      throw new UserError(`cannot write ${what} ${path}: directory ${dirname(path)}: ${systemReason(error)}`);
    }
  }
  // Refused now rather than by the final rename, after all the work (the temporary name is cut to fit).
  if (Buffer.byteLength(basename(resolved)) > NAME_MAX)
    throw new UserError(`cannot write ${what} ${path}: file name too long`);
  const existing = await stat(resolved).catch(() => undefined);
  if (existing?.isDirectory()) throw new UserError(`${what} ${path} is a directory`);
  return { path, what, resolved, ...(existing ? { existing: { dev: existing.dev, ino: existing.ino } } : {}) };
}

/**
 * True when writing `target` would replace `file` (an input being read):
 * the same path once links are resolved, or a hard link to it.
 *
 * @example if (isSameFile(output, { realPath, dev, ino })) throw new UserError("refusing to overwrite the input");
 */
export function isSameFile(target: Target, file: { realPath: string; dev: number; ino: number }): boolean {
  return target.resolved === file.realPath || (target.existing?.dev === file.dev && target.existing.ino === file.ino);
}

/**
 * `.NAME.tmp-PID-RANDOM`, with NAME cut short (whole characters) when the
 * whole would pass NAME_MAX: an output name of up to 255 bytes is legal, and
 * its temporary name must be too.
 */
function tempName(name: string): string {
  // The global Web Crypto rather than node:crypto, whose import alone costs every program ~10 ms of start-up.
  const random = Buffer.from(crypto.getRandomValues(new Uint8Array(4))).toString("hex");
  const suffix = `.tmp-${process.pid}-${random}`;
  const characters = [...name];
  while (Buffer.byteLength(`.${characters.join("")}${suffix}`) > NAME_MAX) characters.pop();
  return `.${characters.join("")}${suffix}`;
}

/**
 * A file being written under a temporary name beside its target.
 *
 * @example
 * const file = await PendingFile.create(await resolveTarget("output", path));
 * try { await file.write(bytes, 0); await file.finish(); await file.publish(); }
 * catch (error) { file.discard(); throw error; }
 */
export class PendingFile {
  #handle: FileHandle | null = null;
  /** Bytes written since the last flush behind the writer started. */
  #unflushed = 0;
  /** The flush behind the writer under way, if any. */
  #flushing: Promise<void> | null = null;
  /** Why a flush behind the writer failed, if one did. */
  #flushFailure: unknown;

  private constructor(
    readonly target: Target,
    readonly temp: string,
  ) {}

  /**
   * Create the temporary file for `target`. `watched`, when given (the list
   * discardOnSignal watches), gets the file before it exists on disk: the
   * file appears on another thread, and a signal handled before the caller
   * could add it to the list would otherwise leave it behind.
   */
  static async create(target: Target, watched?: PendingFile[]): Promise<PendingFile> {
    const file = new PendingFile(target, join(dirname(target.resolved), tempName(basename(target.resolved))));
    watched?.push(file);
    try {
      file.#handle = await open(file.temp, "wx");
    } catch (error) {
      throw new UserError(`cannot write ${target.what} ${target.path}: ${systemReason(error)}`);
    }
    return file;
  }

  /** The open temporary file; only once create() has succeeded. */
  get handle(): FileHandle {
    if (!this.#handle) throw new Error(`${this.temp} was never opened`);
    return this.#handle;
  }

  /** Close the temporary file if it was opened, whatever state it is in (for cleanup). */
  async close(): Promise<void> {
    await this.#handle?.close().catch(() => {});
  }

  async write(bytes: Uint8Array, position: number): Promise<void> {
    await this.failingAsUser(async () => {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done, position + done);
        done += bytesWritten;
      }
    });
    this.#unflushed += bytes.length;
    if (this.#unflushed >= WRITE_BEHIND && this.#flushing === null) {
      this.#unflushed = 0;
      // A failure is kept for finish() to report, as its own sync would.
      this.#flushing = this.handle.datasync().then(
        () => {
          this.#flushing = null;
        },
        (error: unknown) => {
          this.#flushFailure ??= error;
          this.#flushing = null;
        },
      );
    }
  }

  /** Make the contents durable and close; the file keeps its temporary name. */
  async finish(): Promise<void> {
    await this.failingAsUser(async () => {
      await this.#flushing;
      if (this.#flushFailure !== undefined) throw this.#flushFailure;
      await this.handle.sync();
      await this.handle.close();
    });
  }

  /** Rename over the target and make the rename itself durable. */
  async publish(): Promise<void> {
    await this.failingAsUser(() => rename(this.temp, this.target.resolved));
    const directory = await open(dirname(this.target.resolved), "r");
    try {
      await directory.sync();
    } catch {
      // Some file systems cannot sync a directory; the rename has happened either way.
    } finally {
      await directory.close();
    }
  }

  /** Remove the temporary file; synchronous, so it also works from a signal handler. */
  discard(): void {
    try {
      unlinkSync(this.temp);
    } catch {
      // Already renamed or never fully created: nothing to remove.
    }
  }

  /** Run `work`, reporting a file system error as one line naming the file (e.g. a full disk). */
  private async failingAsUser(work: () => Promise<void>): Promise<void> {
    try {
      await work();
    } catch (error) {
      throw new UserError(`cannot write ${this.target.what} ${this.target.path}: ${systemReason(error)}`);
    }
  }
}

/**
 * Remove `files` and die of the same signal if the user interrupts, so
 * nobody ever finds a stray temporary file. Returns the function that stops
 * watching.
 *
 * @example
 * const stopWatching = discardOnSignal(pending);
 * try { ... } finally { stopWatching(); }
 */
export function discardOnSignal(files: PendingFile[]): () => void {
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  const onSignal = (signal: NodeJS.Signals) => {
    for (const file of files) file.discard();
    stop();
    // Re-raised with no handler left, the signal ends the process the default way (status 128 + n).
    process.kill(process.pid, signal);
  };
  const stop = () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
  for (const signal of signals) process.on(signal, onSignal);
  return stop;
}
