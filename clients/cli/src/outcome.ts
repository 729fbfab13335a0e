// vsmctl: human text for GuestActionOutcome (exceptions, VTL switches, intercepts, resumed accesses,
// crashes) and for monitor intercept events.
import type { pb } from '@vsm/client';
import { entryReason, exceptionName, hex64 } from './format';
import { accessTypeText } from './protect';

/** One-line summary of an outcome. */
export function outcomeText(o: pb.GuestActionOutcome | undefined): string {
  if (!o) return 'no outcome';
  if (o.partitionCrashed) return `the partition was stopped (a monitor answered CRASH); VP in VTL ${o.activeVtl}`;
  if (o.intercept) {
    const i = o.intercept;
    return `intercepted by VTL ${i.protectingVtl}'s protection (intercept ${i.interceptId}, ${accessTypeText(i.accessType)} at ${hex64(i.gpa)})${i.heldBack ? ', held back: SINT0 queue full' : ''}; VP in VTL ${o.activeVtl}`;
  }
  if (o.exception) return `${exceptionName(o.exception)} raised in VTL ${o.activeVtl}`;
  if (o.vtlSwitch) return switchText(o.vtlSwitch);
  return `completed in VTL ${o.activeVtl}`;
}

export function switchText(s: pb.VtlSwitch): string {
  const r = s.fromVtl < s.toVtl ? `, entry reason ${entryReason(s.entryReason)}` : '';
  return `switched VTL ${s.fromVtl} -> VTL ${s.toVtl}${r}`;
}

/** Whether the action did not complete (exception, intercept, crash): stop a multi-chunk access. */
export const stopped = (o: pb.GuestActionOutcome | undefined): boolean => !!o && (o.exception !== 0 || !!o.intercept || o.partitionCrashed);

/**
 * Lines that explain an intercept notice: its id, access and protecting VTL, and where the VP is:
 * entered the protecting VTL (which handles the message in SINT0), or held back in its own VTL
 * because that VTL's SINT0 queue is full.
 */
export function interceptLines(o: pb.GuestActionOutcome, vp: number | string): string[] {
  const i = o.intercept;
  if (!i) return [];
  const lines = [`intercept ${i.interceptId}: ${accessTypeText(i.accessType)} at ${hex64(i.gpa)} refused by VTL ${i.protectingVtl}'s protection`];
  if (i.heldBack) {
    lines.push(
      `held back: VTL ${i.protectingVtl}'s SINT0 queue is full; VP ${vp} stays at the instruction in VTL ${o.activeVtl} (nothing is lost): repeat the access once VTL ${i.protectingVtl} has drained its SIM slot`,
    );
  } else if (o.activeVtl === i.protectingVtl) {
    const sw = o.vtlSwitch && o.vtlSwitch.toVtl === i.protectingVtl ? ` (entry reason ${entryReason(o.vtlSwitch.entryReason)})` : '';
    lines.push(
      `VP ${vp} entered VTL ${i.protectingVtl}${sw} with the intercept message in its SINT0; VTL ${i.protectingVtl}'s VtlReturn retries the access (RIP unchanged) or skips it (RIP moved)`,
    );
  } else {
    lines.push(`VP ${vp} is in VTL ${o.activeVtl}`);
  }
  return lines;
}

/** What became of the intercepted access on a VtlReturn (resumed_access). */
export function resumedLines(o: pb.GuestActionOutcome, vp: number | string): string[] {
  const r = o.resumedAccess;
  if (!r) return [];
  let what: string;
  if (r.completed)
    what = `retried and completed${r.data.length ? `; returned ${r.data.length} byte${r.data.length === 1 ? '' : 's'}: ${Buffer.from(r.data).toString('hex')}` : ''}`;
  else if (r.skipped) what = 'skipped, not retried (the higher VTL moved RIP past the instruction)';
  else if (r.interceptedAgain) what = 'retried and intercepted again';
  else what = 'unknown';
  const lines = [`resumed access (intercept ${r.interceptId}): ${what}`];
  if (r.interceptedAgain) lines.push(...interceptLines(o, vp).map((l) => `  ${l}`));
  return lines;
}

/** One line for a monitor's intercept event. */
export function interceptEventText(e: pb.InterceptEvent): string {
  const flags = [e.needsReply ? 'needs reply' : 'observe only', ...(e.redelivered ? ['redelivered'] : [])].join(', ');
  return (
    `intercept ${e.interceptId}  vp ${e.vpIndex}  VTL ${e.vtl}  ${accessTypeText(e.accessType)}  gpa ${hex64(e.gpa)}  len ${e.length}  ` +
    `rip ${hex64(e.rip)}  by VTL ${e.protectingVtl}  generation ${e.viewGeneration}  ${flags}`
  );
}
