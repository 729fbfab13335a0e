// service layer, shared by every core-backed backend (emulator and KVM agent): waiting for a
// monitor's answer to a guest action suspended on an intercept (route MONITOR), the partition's
// deadline policy, and the one guarded path for a partition's background work (timers, stream
// callbacks). An exception there becomes that partition's crashed state, is reported once, and never
// reaches the process.
import * as core from '@vsm/core';
import { HvError, HvStatus, Partition } from '@vsm/core';

/** Where background failures are reported (the process's logger). */
export type BackgroundErrorReport = (e: unknown, context: { partition: string; task: string }) => void;

export const reportToStderr: BackgroundErrorReport = (e, ctx) => {
  try {
    process.stderr.write(`${JSON.stringify({ level: 50, msg: 'partition task failed', ...ctx, error: e instanceof Error ? e.stack ?? e.message : String(e) })}\n`);
  } catch {
    // Logging must never take the process down (the reader of stderr may be gone).
  }
};

/**
 * Runs a partition's background task (a timer callback, a stream listener). An exception crashes
 * that partition with the reason and is reported once; nothing propagates.
 */
export function partitionTask(p: Partition, task: string, fn: () => void, report: BackgroundErrorReport = reportToStderr): void {
  try {
    fn();
  } catch (e) {
    try {
      report(e, { partition: p.id, task });
    } catch {
      // ignore: a failing logger must not turn into an uncaught exception
    }
    try {
      p.crash(`internal error in ${task}: ${e instanceof Error ? e.message : String(e)}`);
    } catch {
      // already ended
    }
  }
}

/**
 * Follows a guest action's outcome through monitor answers: while it is suspended on an intercept
 * that a monitor must answer, waits for that intercept's own answer (or the deadline policy's),
 * following RETRY answers that intercept again. A crash resolves every waiter as crashed; a delete
 * ends the wait with HV_STATUS_INVALID_PARTITION_ID.
 */
export async function awaitMonitorAnswers(p: Partition, first: core.AccessOutcome, report: BackgroundErrorReport = reportToStderr): Promise<core.AccessOutcome> {
  let o = first;
  while (o.status === 'intercepted' && o.awaitingMonitor) o = await answerOf(p, o.intercept.id, report);
  if (p.deleted) throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${p.id} was deleted while the guest action waited for a monitor`);
  return o;
}

function answerOf(p: Partition, id: bigint, report: BackgroundErrorReport): Promise<core.AccessOutcome> {
  if (p.intercepts.status(id) !== 'pending') return Promise.resolve(p.intercepts.outcomeOf(id) ?? { status: 'crashed' });
  return new Promise<core.AccessOutcome>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const off = p.intercepts.onResolved((x, outcome) => {
      if (x !== id) return;
      off();
      if (timer) clearTimeout(timer);
      resolve(outcome);
    });
    const policy = p.interceptDeadline;
    if (policy) {
      timer = setTimeout(() => {
        timer = undefined;
        // The partition's explicit deadline policy answers for the absent monitor, for this
        // intercept only, and only while the partition is alive and the intercept unanswered.
        partitionTask(p, `deadline policy (${policy.action}) for intercept ${id}`, () => {
          if (p.state !== 'active' || p.deleted || p.intercepts.status(id) !== 'pending') return;
          core.answerIntercept(p, id, policy.action, { by: `the deadline policy (${policy.ms} ms)` });
        }, report);
      }, policy.ms);
    }
  });
}
