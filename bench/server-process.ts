/**
 * A server process under benchmark, seen from outside: the CPU it has used
 * (from /proc) and the lines it prints. bench/netboot.ts and
 * bench/netboot-images.ts use it.
 */

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
