// core, rules: a partition's life: which VP an index names, whether the partition (and a VP) may
// act, and its end (crash or delete) with everything waiting on it released.
import type { PartitionEnd, PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { HvStatus, hvFail } from '../tlfs/status';

export function vpOf(p: PartitionState, index: number): VirtualProcessor {
  const vp = Number.isInteger(index) ? p.vps[index] : undefined;
  if (!vp) hvFail(HvStatus.HV_STATUS_INVALID_VP_INDEX, `VP index ${index} does not exist (vp_count ${p.vps.length})`);
  return vp;
}

export function assertActive(p: PartitionState): void {
  if (p.deleted) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${p.id} was deleted`);
  if (p.state !== 'active') hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `partition ${p.id} is ${p.state}${p.crashReason ? ` (${p.crashReason})` : ''}`);
}

/**
 * The rule every guest action obeys first (both engines): the partition is active and the VP is
 * not suspended on a monitor intercept (it is stopped at the faulting instruction until answered).
 */
export function assertVpCanAct(p: PartitionState, vp: VirtualProcessor): void {
  assertActive(p);
  if (vp.suspendedOn !== null) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is suspended on intercept ${vp.suspendedOn}; answer it first`);
}

/**
 * The suspension invariant of the monitor route, as anything outside the core can observe it (a
 * listener of the intercept broker included): a VP's `suspendedOn` names a pending intercept of that
 * VP, raised in the VTL the VP is in, and `suspendedAccess` is that intercept's access; every pending
 * intercept holds its VP suspended on it (so at most one is pending per VP). Returns what is
 * violated; empty when it holds. A crashed or deleted partition has neither.
 */
export function suspensionViolations(p: PartitionState): string[] {
  const bad: string[] = [];
  for (const vp of p.vps) {
    if ((vp.suspendedOn === null) !== (vp.suspendedAccess === null))
      bad.push(`VP ${vp.index}: suspendedOn ${vp.suspendedOn} without its access (or the reverse)`);
    if (vp.suspendedOn === null) continue;
    const rec = p.intercepts.pending.get(vp.suspendedOn);
    if (!rec) bad.push(`VP ${vp.index} is suspended on intercept ${vp.suspendedOn}, which is not pending`);
    else if (rec.vpIndex !== vp.index) bad.push(`VP ${vp.index} is suspended on intercept ${rec.id} of VP ${rec.vpIndex}`);
    else if (rec.vtl !== vp.activeVtl) bad.push(`VP ${vp.index} is in VTL ${vp.activeVtl} but suspended on intercept ${rec.id} raised in VTL ${rec.vtl}`);
    if (vp.suspendedAccess && vp.suspendedAccess.interceptId !== vp.suspendedOn)
      bad.push(`VP ${vp.index}: suspended access of intercept ${vp.suspendedAccess.interceptId}, suspended on ${vp.suspendedOn}`);
  }
  for (const rec of p.intercepts.pending.values()) {
    const vp = p.vps[rec.vpIndex];
    if (!vp || vp.suspendedOn !== rec.id) bad.push(`intercept ${rec.id} is pending but VP ${rec.vpIndex} is suspended on ${vp?.suspendedOn ?? 'nothing'}`);
  }
  return bad;
}

/** Called once when the partition crashes or is deleted (streams end, waiters wake). */
export function onEnd(p: PartitionState, fn: (why: PartitionEnd) => void): () => void {
  p.endListeners.add(fn);
  return () => p.endListeners.delete(fn);
}

/**
 * Stops the partition: every pending intercept is resolved as crashed (its waiter wakes with that
 * outcome, not another's), suspended VPs are released, streams are told. Idempotent.
 */
export function crash(p: PartitionState, reason: string): void {
  if (p.state === 'crashed' || p.deleted) return;
  p.state = 'crashed';
  p.crashReason = reason;
  releasePending(p);
  notifyEnd(p, 'crashed');
}

/** The partition was deleted: waiters wake, streams end; nothing reaches it afterwards. */
export function markDeleted(p: PartitionState): void {
  if (p.deleted) return;
  p.deleted = true;
  releasePending(p);
  notifyEnd(p, 'deleted');
  p.transitionListeners.clear();
  p.intercepts.closeListeners();
}

function releasePending(p: PartitionState): void {
  for (const rec of [...p.intercepts.pending.values()]) {
    const vp = p.vps[rec.vpIndex];
    if (vp && vp.suspendedOn === rec.id) {
      vp.suspendedOn = null;
      vp.suspendedAccess = null;
    }
    p.intercepts.markAnswered(rec.id, { status: 'crashed' });
  }
}

function notifyEnd(p: PartitionState, why: PartitionEnd): void {
  for (const l of [...p.endListeners]) l(why);
  p.endListeners.clear();
}
