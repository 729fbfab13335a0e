// service layer, shared by every core-backed backend (emulator and KVM agent): waiting for a
// monitor's answer to a guest action suspended on an intercept (route MONITOR), the partition's
// deadline policy, and the one guarded path for a partition's background work (timers, stream
// callbacks). An exception there becomes that partition's crashed state, is reported once, and never
// reaches the process.
import * as core from '@vsm/core';
import { HvError, HvStatus, type Partition } from '@vsm/core';

/** Where background failures are reported (the process's logger). */
export type BackgroundErrorReport = (e: unknown, context: { partition: string; task: string }) => void;

export const reportToStderr: BackgroundErrorReport = (e, ctx) => {
  try {
    process.stderr.write(
      `${JSON.stringify({ level: 50, msg: 'partition task failed', ...ctx, error: e instanceof Error ? (e.stack ?? e.message) : String(e) })}\n`,
    );
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
 * that a monitor must answer, waits for that intercept's own answer (a monitor's, or the deadline
 * policy's: keepInterceptDeadlines), following RETRY answers that intercept again. A crash resolves
 * every waiter as crashed; a delete ends the wait with HV_STATUS_INVALID_PARTITION_ID.
 */
export async function awaitMonitorAnswers(p: Partition, first: core.AccessOutcome): Promise<core.AccessOutcome> {
  let o = first;
  while (o.status === 'intercepted' && o.awaitingMonitor) o = await answerOf(p, o.intercept.id);
  if (p.deleted) throw new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${p.id} was deleted while the guest action waited for a monitor`);
  return o;
}

function answerOf(p: Partition, id: bigint): Promise<core.AccessOutcome> {
  if (p.intercepts.status(id) !== 'pending') return Promise.resolve(p.intercepts.outcomeOf(id) ?? { status: 'crashed' });
  return new Promise<core.AccessOutcome>((resolve) => p.intercepts.whenAnswered(id, resolve));
}

/**
 * A deadline policy's RETRY that intercepts again (the page is still refused) gives the new intercept
 * twice the time of the one it retried, up to this cap (or the policy's own time if that is longer):
 * a monitor slower than the policy still gets to answer, and a VP nobody answers re-executes its
 * access at most once a second instead of once per policy period.
 */
export const POLICY_RETRY_BACKOFF_CAP_MS = 1000;

/** The time the policy gives an intercept that is its `retries`-th consecutive RETRY of one access. */
export function policyDelayMs(policyMs: number, retries: number): number {
  if (retries === 0) return policyMs;
  return Math.min(policyMs * 2 ** Math.min(retries, 30), Math.max(policyMs, POLICY_RETRY_BACKOFF_CAP_MS));
}

const keptPartitions = new WeakSet<Partition>();

/**
 * The partition's deadline policy (SetInterceptRoute answer_deadline_ms / deadline_action), applied
 * to every intercept a monitor must answer, whether or not a guest action waits for it: a memory
 * guest action, a hypercall's parameter block, a VtlReturn re-executing an access, a RETRY's new
 * intercept. The policy in force when an intercept is raised is its policy; its timer starts then and
 * ends when the intercept is resolved (answered, crash, delete). Installed once per partition.
 */
export function keepInterceptDeadlines(p: Partition, report: BackgroundErrorReport = reportToStderr): void {
  if (keptPartitions.has(p) || p.deleted) return;
  keptPartitions.add(p);
  const timers = new Map<bigint, NodeJS.Timeout>();
  /** Set while the policy applies RETRY to an intercept: the VP it belongs to and how many RETRYs of that access preceded it. */
  let retrying: { vpIndex: number; retries: number } | undefined;
  p.intercepts.subscribe((rec) => {
    const policy = p.interceptDeadline;
    if (!rec.needsReply || !policy) return;
    const retries = retrying && retrying.vpIndex === rec.vpIndex ? retrying.retries + 1 : 0;
    const timer = setTimeout(
      () => {
        timers.delete(rec.id);
        // For this intercept only, and only while the partition is alive and the intercept unanswered.
        partitionTask(
          p,
          `deadline policy (${policy.action}) for intercept ${rec.id}`,
          () => {
            if (p.state !== 'active' || p.deleted || p.intercepts.status(rec.id) !== 'pending') return;
            retrying = policy.action === 'retry' ? { vpIndex: rec.vpIndex, retries } : undefined;
            try {
              core.answerIntercept(p, rec.id, policy.action, { by: `the deadline policy (${policy.ms} ms)` });
            } finally {
              retrying = undefined;
            }
          },
          report,
        );
      },
      policyDelayMs(policy.ms, retries),
    );
    // A policy timer alone does not keep the process alive.
    timer.unref?.();
    timers.set(rec.id, timer);
  });
  p.intercepts.onResolved((id) => {
    const t = timers.get(id);
    if (t === undefined) return;
    clearTimeout(t);
    timers.delete(id);
  });
}
