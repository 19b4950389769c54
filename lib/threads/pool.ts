/**
 * A pool of worker threads running one script, and the ordered hand-off
 * mkimage builds on: items go to whichever thread is free, and their results
 * come back in the items' order, with only so many in flight at a time.
 *
 * A pool thread answers each job with a WorkerReply: its result, or why it
 * failed. Jobs wait in order for the first free thread; a thread that dies
 * fails the whole pool, and every job waiting with it.
 */

import { oneLine } from "@ramdisk-tools/errors/errors.ts";

/** What a pool worker posts back: its result, or why it failed. */
export type WorkerReply<Result> = { ok: true; value: Result } | { ok: false; message: string };

interface Task<Job, Result> {
  job: Job;
  transfer: Bun.Transferable[];
  resolve: (result: Result) => void;
  reject: (error: Error) => void;
}

/**
 * Worker threads running one script, one job each at a time; jobs wait in
 * order for the first free worker. A worker that dies fails the whole pool.
 *
 * @example
 * const pool = new WorkerPool<ZstdBlockJob, CompressedBlock>(threads.zstdFrames, 2);
 * const { frame, entry } = await pool.run({ raw, level: 3, out }, [out.buffer]);
 * pool.close();
 */
export class WorkerPool<Job, Result> {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly busy = new Map<Worker, Task<Job, Result>>();
  private readonly waiting: Task<Job, Result>[] = [];
  private failure: Error | undefined;

  constructor(entryPoint: string, size: number) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(entryPoint);
      worker.onmessage = (event: MessageEvent<WorkerReply<Result>>) => this.settle(worker, event.data);
      worker.onerror = (event: ErrorEvent) => this.fail(new Error(`worker thread failed: ${event.message}`));
      this.workers.push(worker);
      this.idle.push(worker);
    }
  }

  /** Run `job` on the first free worker, handing over `transfer`; resolves with its result. */
  run(job: Job, transfer: Bun.Transferable[] = []): Promise<Result> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ job, transfer, resolve, reject });
      this.dispatch();
    });
  }

  /** Stop every worker; jobs not yet answered fail. */
  close(): void {
    this.fail(new Error("worker pool closed"));
    for (const worker of this.workers) worker.terminate();
  }

  private dispatch() {
    while (this.idle.length > 0 && this.waiting.length > 0) {
      const worker = this.idle.pop()!;
      const task = this.waiting.shift()!;
      this.busy.set(worker, task);
      worker.postMessage(task.job, task.transfer);
    }
  }

  private settle(worker: Worker, reply: WorkerReply<Result>) {
    const task = this.busy.get(worker);
    this.busy.delete(worker);
    this.idle.push(worker);
    if (reply.ok) task?.resolve(reply.value);
    else task?.reject(new Error(reply.message));
    this.dispatch();
  }

  private fail(error: Error) {
    this.failure ??= error;
    for (const task of [...this.busy.values(), ...this.waiting.splice(0)]) task.reject(this.failure);
    this.busy.clear();
  }
}

/**
 * The reply a pool worker posts for one job: `work`'s result, with the
 * buffers `transfers` names to hand over, or the message of what it threw.
 *
 * @example
 * self.onmessage = (event) => {
 *   const { reply, transfer } = replyTo(() => deflateBlock(event.data), (done) => [done.deflated.buffer]);
 *   self.postMessage(reply, transfer);
 * };
 */
export function replyTo<Result>(
  work: () => Result,
  transfers: (result: Result) => Bun.Transferable[],
): { reply: WorkerReply<Result>; transfer: Bun.Transferable[] } {
  try {
    const value = work();
    return { reply: { ok: true, value }, transfer: transfers(value) };
  } catch (error) {
    return { reply: { ok: false, message: oneLine(error) }, transfer: [] };
  }
}

/**
 * Run `items` through `pool` as the jobs `toJob` makes of them, and pass each
 * result to `take`, with its item, in the items' order. At most `inFlight`
 * items are queued or being worked on, so memory stays bounded however many
 * items there are. A failed job fails the whole run when its turn comes.
 *
 * @example
 * await runInOrder(pool, blocks, 8, (block) => ({ job: { raw: block.bytes, level: 3 } }),
 *   async (done) => write(done.frame));
 */
export async function runInOrder<Item, Job, Result>(
  pool: WorkerPool<Job, Result>,
  items: AsyncIterable<Item>,
  inFlight: number,
  toJob: (item: Item) => { job: Job; transfer?: Bun.Transferable[] },
  take: (result: Result, item: Item) => Promise<void>,
): Promise<void> {
  const queued: { item: Item; result: Promise<Result> }[] = [];
  const next = async () => {
    const { item, result } = queued.shift()!;
    await take(await result, item);
  };
  for await (const item of items) {
    const { job, transfer } = toJob(item);
    const result = pool.run(job, transfer);
    // Failures surface when the item's turn comes; until then, keep them from counting as unhandled.
    result.catch(() => {});
    queued.push({ item, result });
    while (queued.length >= inFlight) await next();
  }
  while (queued.length > 0) await next();
}
