// core, rules: VTL enablement (tlfs-vsm.md §4, tlfs-hypercalls.md §2.4-2.5): HvCallEnablePartitionVtl,
// HvCallEnableVpVtl, and the state a VP's VTL starts in (its initial context, SINTs masked).
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { type Vtl, VTLS, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HvRegisterName as R, SegmentAttr, reg64, segmentToReg128, tableToReg128 } from '../tlfs/registers';
import { HV_SINT_MASKED } from '../tlfs/msr';
import type { HvInitialVpContext } from '../tlfs/vsm';
import { assertActive, vpOf } from './lifecycle';
import { CR0_PE } from './processor';

/** 64-bit long-mode state VPs start in (as if firmware had handed off): CPL0, paging on. */
export function longModeContext(): HvInitialVpContext {
  const code = { base: 0n, limit: 0xffffffff, selector: 0x08, attributes: 0xb | (1 << 4) | SegmentAttr.Present | SegmentAttr.Long | SegmentAttr.Granularity };
  const data = {
    base: 0n,
    limit: 0xffffffff,
    selector: 0x10,
    attributes: 0x3 | (1 << 4) | SegmentAttr.Present | SegmentAttr.Default | SegmentAttr.Granularity,
  };
  return {
    rip: 0n,
    rsp: 0n,
    rflags: 0x2n,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    tr: { base: 0n, limit: 0xffff, selector: 0x18, attributes: 0xb | SegmentAttr.Present },
    ldtr: { base: 0n, limit: 0xffff, selector: 0, attributes: 0x2 | SegmentAttr.Present },
    idtr: { limit: 0xfff, base: 0n },
    gdtr: { limit: 0x1f, base: 0n },
    efer: 0xd01n, // SCE | LME | LMA | NXE
    cr0: 0x80050033n, // PE | MP | ET | NE | WP | AM | PG
    cr3: 0n,
    cr4: 0x6a0n, // PAE | PGE | OSFXSR | OSXMMEXCPT
    msrCrPat: 0x0007040600070406n,
  };
}

/** A new partition: VTL0 enabled for it and on every VP, each VP in long mode with its SINTs masked. */
export function initializePartition(p: PartitionState): void {
  p.vtls.get(0).enabled = true;
  for (const vp of p.vps) startVpVtl(vp, 0, longModeContext());
}

/**
 * HvCallEnablePartitionVtl. `caller` is the calling VTL for guest calls (self-enablement rules
 * apply) or 'host' for the management API (the parent is unrestricted by caller rules).
 */
export function enablePartitionVtl(p: PartitionState, caller: Vtl | 'host', targetVtl: number, flags: number): void {
  assertActive(p);
  if ((flags & ~0x1) !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unsupported HV_ENABLE_PARTITION_VTL_FLAGS 0x${flags.toString(16)}`);
  if (!isVtl(targetVtl) || targetVtl === 0 || targetVtl > p.maximumVtl) {
    // OpenHCL: unsupported target VTL -> ACCESS_DENIED (tlfs-hypercalls.md §2.4).
    hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${targetVtl} is not available (partition maximum VTL ${p.maximumVtl})`);
  }
  // The caller's right is checked before any state it could learn from the answer (TLFS: ACCESS_DENIED
  // is preferred; OpenHCL checks the caller first; tlfs-hypercalls.md §1.1).
  if (caller !== 'host' && targetVtl > caller) {
    // A VTL may enable a higher target only if it is the highest enabled VTL below that target.
    if (caller !== highestEnabledBelow(p, targetVtl))
      hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} is not the highest enabled VTL below VTL ${targetVtl}`);
  }
  if (p.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${targetVtl} is already enabled for the partition`);
  const s = p.vtls.get(targetVtl);
  s.enabled = true;
  s.mbec = (flags & 1) !== 0;
}

/** HvCallEnableVpVtl. */
export function enableVpVtl(p: PartitionState, caller: Vtl | 'host', vpIndex: number, targetVtl: number, ctx: HvInitialVpContext, callerVp?: number): void {
  assertActive(p);
  if (!isVtl(targetVtl) || targetVtl === 0 || targetVtl > p.maximumVtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${targetVtl} is not supported`);
  const vp = vpOf(p, vpIndex);
  if (!p.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${targetVtl} is not enabled for the partition`);
  // The caller first, then the VP's state (issue #16): a lower VTL asking about a VP where the target
  // VTL runs gets ACCESS_DENIED, not VTL_ALREADY_ENABLED, so it cannot probe which VPs have it.
  if (caller !== 'host' && caller < targetVtl) {
    // Normally only a higher VTL enables a VTL; exception: the highest VTL enabled below the
    // target may enable it (tlfs-vsm.md §4). As in OpenHCL, a lower VTL may do so only on its
    // own VP and only before the target VTL runs on any VP; afterwards the target VTL enables
    // the other VPs itself.
    if (caller !== highestEnabledBelow(p, targetVtl)) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may not enable VTL ${targetVtl}`);
    if (callerVp !== undefined && callerVp !== vpIndex)
      hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may enable VTL ${targetVtl} only on its own VP`);
    if (p.vps.some((x) => x.vtls.get(targetVtl).enabled))
      hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${targetVtl} is already running; it enables further VPs itself`);
  }
  if (vp.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_VTL_ALREADY_ENABLED, `VTL ${targetVtl} is already enabled on VP ${vpIndex}`);
  validateInitialContext(ctx);
  startVpVtl(vp, targetVtl, ctx);
}

function highestEnabledBelow(p: PartitionState, targetVtl: Vtl): number {
  return Math.max(...VTLS.filter((v) => v < targetVtl && p.vtls.get(v).enabled));
}

/** The VTL is enabled on the VP, in the initial context given, with every SINT masked (its reset value, tlfs-overlays-synic.md §5.1). */
function startVpVtl(vp: VirtualProcessor, vtl: Vtl, ctx: HvInitialVpContext): void {
  const st = vp.vtls.get(vtl);
  st.enabled = true;
  loadInitialContext(vp, vtl, ctx);
  for (let i = 0; i < 16; i++) st.regs.set(R.HvRegisterSint0 + i, reg64(HV_SINT_MASKED));
}

export function loadInitialContext(vp: VirtualProcessor, vtl: Vtl, c: HvInitialVpContext): void {
  const r = vp.vtls.get(vtl).regs;
  r.set(R.HvX64RegisterRip, reg64(c.rip));
  r.set(R.HvX64RegisterRsp, reg64(c.rsp));
  r.set(R.HvX64RegisterRflags, reg64(c.rflags));
  const segs: [number, keyof HvInitialVpContext][] = [
    [R.HvX64RegisterCs, 'cs'],
    [R.HvX64RegisterDs, 'ds'],
    [R.HvX64RegisterEs, 'es'],
    [R.HvX64RegisterFs, 'fs'],
    [R.HvX64RegisterGs, 'gs'],
    [R.HvX64RegisterSs, 'ss'],
    [R.HvX64RegisterTr, 'tr'],
    [R.HvX64RegisterLdtr, 'ldtr'],
  ];
  for (const [n, k] of segs) r.set(n, segmentToReg128(c[k] as never));
  r.set(R.HvX64RegisterIdtr, tableToReg128(c.idtr));
  r.set(R.HvX64RegisterGdtr, tableToReg128(c.gdtr));
  r.set(R.HvX64RegisterEfer, reg64(c.efer));
  r.set(R.HvX64RegisterCr0, reg64(c.cr0));
  r.set(R.HvX64RegisterCr3, reg64(c.cr3));
  r.set(R.HvX64RegisterCr4, reg64(c.cr4));
  r.set(R.HvX64RegisterPat, reg64(c.msrCrPat));
}

export function validateInitialContext(c: HvInitialVpContext): void {
  // Real mode is not supported in VTL > 0 (tlfs-vsm.md §4): CR0.PE must be set.
  if ((c.cr0 & CR0_PE) === 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'HV_INITIAL_VP_CONTEXT.Cr0.PE is 0: real mode is not supported in VTL > 0');
  if ((c.efer & 0x400n) !== 0n && (c.efer & 0x100n) === 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'HV_INITIAL_VP_CONTEXT.Efer has LMA without LME');
}
