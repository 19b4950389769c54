/**
 * A server process under benchmark, seen from outside: the CPU it has used,
 * in all and by thread, and its peak memory (from /proc), and the lines it
 * prints. The bench/netboot*.ts benchmarks use it.
 */

import { readdirSync, readFileSync } from "node:fs";

/** Linux reports process times in clock ticks of 1/100 s (USER_HZ). */
const TICKS_PER_SECOND = 100;

/**
 * User + system CPU seconds of a running process so far, all threads.
 *
 * @example const before = await processCpuSeconds(server.pid);
 */
export async function processCpuSeconds(pid: number): Promise<number> {
  const stat = await Bun.file(`/proc/${pid}/stat`).text();
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/**
 * Read a stream to its end, handing on its complete lines as they come.
 *
 * @example await eachLines(server.stdout, (lines) => log.push(...lines));
 */
export async function eachLines(stream: ReadableStream<Uint8Array>, take: (lines: string[]) => void): Promise<void> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    const complete = pending.split("\n");
    pending = complete.pop()!;
    take(complete);
  }
}

/**
 * Read a child's output to its end, line by line; `ready` resolves at the
 * first line matching `wanted` (and rejects if the output ends before one).
 *
 * @example await watchLines(server.stdout, /^serving on /).ready;
 */
export function watchLines(
  stream: ReadableStream<Uint8Array>,
  wanted: RegExp,
): { ready: Promise<void>; lines: Promise<string[]> } {
  let seen!: () => void;
  const ready = new Promise<void>((resolve) => (seen = resolve));
  const all: string[] = [];
  const lines = eachLines(stream, (complete) => {
    all.push(...complete);
    if (complete.some((line) => wanted.test(line))) seen();
  }).then(() => all);
  return {
    ready: Promise.race([
      ready,
      lines.then((all) => Promise.reject(new Error(`bootserver ended before printing ${wanted}: ${all.join(" | ")}`))),
    ]),
    lines,
  };
}

/**
 * CPU seconds so far of each thread of a process, by thread id, with its name.
 *
 * @example const before = threadCpuSeconds(server.pid);
 */
export function threadCpuSeconds(pid: number): Map<string, { name: string; seconds: number }> {
  const threads = new Map<string, { name: string; seconds: number }>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      continue; // ended meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    threads.set(tid, { name, seconds: (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND });
  }
  return threads;
}

/**
 * Where one sled's server spent its CPU between two threadCpuSeconds: its
 * session thread (the busiest worker), the dispatcher (the next; the spare
 * session is idle) and the rest (main thread, JIT, GC).
 *
 * @example const { session } = threadShares(before, threadCpuSeconds(server.pid));
 */
export function threadShares(before: ReturnType<typeof threadCpuSeconds>, after: ReturnType<typeof threadCpuSeconds>) {
  const spent = [...after].map(([tid, thread]) => ({
    worker: thread.name === "Worker",
    seconds: thread.seconds - (before.get(tid)?.seconds ?? 0),
  }));
  const workers = spent.filter((thread) => thread.worker).sort((a, b) => b.seconds - a.seconds);
  const total = spent.reduce((sum, thread) => sum + thread.seconds, 0);
  const session = workers[0]?.seconds ?? 0;
  const dispatcher = workers[1]?.seconds ?? 0;
  return { session, dispatcher, rest: total - session - dispatcher };
}

/**
 * Peak resident memory of a process so far (VmHWM), in bytes.
 *
 * @example const peak = peakResident(server.pid);
 */
export function peakResident(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/**
 * A server's standard output, line by line as it comes: the array grows
 * while the server runs.
 *
 * @example const lines = collectLines(server.stdout);
 */
export function collectLines(stream: ReadableStream<Uint8Array>): string[] {
  const lines: string[] = [];
  void eachLines(stream, (complete) => lines.push(...complete));
  return lines;
}
