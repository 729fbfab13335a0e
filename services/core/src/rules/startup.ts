// core, rules: VP startup (tlfs-vsm.md §10, tlfs-hypercalls.md §2.10; TLFS
// HvCallStartVirtualProcessor.md, vsm.md "VTL Interrupt Management"). HvCallStartVirtualProcessor is
// "functionally equivalent to INIT-based methods" with a chosen register state and is the only way to
// start a VP in a VTL > 0; DenyLowerVtlStartup and InterceptVpStartup of a higher VTL's
// HvRegisterVsmPartitionConfig restrict it for lower VTLs. APIC ids: every VP's APIC id is its VP
// index (the KVM agent creates vCPU id = VP index; the emulator has no APIC).
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { type Vtl, VTLS, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HvVtlEntryReason, type HvInitialVpContext, decodeVsmPartitionConfig } from '../tlfs/vsm';
import { assertActive, vpOf } from './lifecycle';
import { loadInitialContext, validateInitialContext } from './enablement';
import { switchVtl } from './transitions';

/** The APIC id of a VP (x2APIC/xAPIC id): its VP index on both backends. */
export const apicIdOf = (vp: VirtualProcessor): number => vp.index;

/** HvCallGetVpIndexFromApicId for one id: the VP whose APIC id it is, else INVALID_PARAMETER (OpenHCL). */
export function vpIndexFromApicId(p: PartitionState, apicId: number): number {
  const vp = p.vps.find((v) => apicIdOf(v) === apicId);
  if (!vp) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `no VP has APIC id ${apicId}`);
  return vp.index;
}

/** What a lower VTL's start request meets in the VTLs above it. */
export type StartupPolicy = { action: 'allow' } | { action: 'deny'; by: Vtl } | { action: 'intercept'; by: Vtl };

/**
 * The policy of the VTLs above `callerVtl` (enabled for the partition) for VP startup by it: the
 * lowest higher VTL whose HvRegisterVsmPartitionConfig sets DenyLowerVtlStartup refuses it, or the
 * lowest whose config sets InterceptVpStartup receives it as an intercept (nested intercepts go to
 * the lower of the intercepting VTLs first, TLFS vsm.md "Nested Intercepts").
 */
export function startupPolicy(p: PartitionState, callerVtl: Vtl): StartupPolicy {
  for (const v of VTLS) {
    if (v <= callerVtl || !p.vtls.get(v).enabled) continue;
    const c = decodeVsmPartitionConfig(p.vtls.get(v).config);
    if (c.denyLowerVtlStartup) return { action: 'deny', by: v };
    if (c.interceptVpStartup) return { action: 'intercept', by: v };
  }
  return { action: 'allow' };
}

/**
 * The checks of HvCallStartVirtualProcessor in OpenHCL's order (caller first, then state):
 * the caller may not target itself (INVALID_VP_INDEX) nor a VTL above its own (ACCESS_DENIED); a VTL
 * above 0 must be enabled on the target VP (INVALID_VP_STATE); the context must be valid for the
 * VTL (INVALID_REGISTER_VALUE: real mode only in VTL0); a VP suspended on a monitor intercept is not
 * restarted (INVALID_VP_STATE). `caller` 'host' skips the caller rules.
 */
export function checkStartVirtualProcessor(
  p: PartitionState,
  caller: { vp: VirtualProcessor; vtl: Vtl } | 'host',
  vpIndex: number,
  targetVtl: number,
  ctx: HvInitialVpContext,
): VirtualProcessor {
  assertActive(p);
  if (!isVtl(targetVtl) || targetVtl > p.maximumVtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `target VTL ${targetVtl} is not supported`);
  if (caller !== 'host' && targetVtl > caller.vtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller.vtl} may not start a VP in VTL ${targetVtl}`);
  const vp = vpOf(p, vpIndex);
  if (caller !== 'host' && vp === caller.vp) hvFail(HvStatus.HV_STATUS_INVALID_VP_INDEX, `VP ${vpIndex} is the caller`);
  if (!vp.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VTL ${targetVtl} is not enabled on VP ${vpIndex}`);
  if (vp.suspendedOn !== null) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vpIndex} is suspended on intercept ${vp.suspendedOn}`);
  if (targetVtl > 0) validateInitialContext(ctx);
  else if ((ctx.efer & 0x400n) !== 0n && (ctx.efer & 0x100n) === 0n)
    hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'HV_INITIAL_VP_CONTEXT.Efer has LMA without LME');
  return vp;
}

/**
 * Starts VP `vp` in `targetVtl` at `ctx` (the checks passed). Like INIT, what the target VTL was
 * doing is discarded: its context is replaced, its parked stub return and intercepted access are
 * dropped. The VP then runs in its highest enabled VTL (OpenHCL: "the highest enabled VTL should run
 * first", so a secure kernel sees a started VP before VTL0 does); when that is another VTL than the
 * one active, the switch is recorded with entry reason 0 (not a call, interrupt or intercept) and
 * that VTL's VtlReturn goes to the next lower enabled VTL.
 */
export function startVirtualProcessor(p: PartitionState, vp: VirtualProcessor, targetVtl: Vtl, ctx: HvInitialVpContext): void {
  const st = vp.vtls.get(targetVtl);
  loadInitialContext(vp, targetVtl, ctx);
  st.pendingStubReturn = null;
  st.pendingAccess = null;
  const highest = [...VTLS].reverse().find((v) => vp.vtls.get(v).enabled)!;
  if (vp.activeVtl !== highest) switchVtl(p, vp, highest, HvVtlEntryReason.HvVtlEntryReserved, false);
  for (const v of VTLS) if (v >= targetVtl) vp.vtls.get(v).enteredFrom = null;
  p.spec.platform?.onVpStart?.(vp.index);
}
