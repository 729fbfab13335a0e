// core, hypercalls: what the virtual TLB flush hypercalls share (TLFS HvCallFlushVirtualAddressSpace.md,
// HvCallFlushVirtualAddressList.md and the Ex pages). The emulator keeps no TLB: a flush has nothing to
// invalidate, so what is observable is the TLFS's checks and the TlbLocked rule: when a target VP's
// TLB for the caller's VTL is locked by a higher VTL (HvRegisterVsmVpSecureConfigVtlN.TlbLocked,
// tlfs-vsm.md §3.5), the caller waits and the call is reissued — here a return for continuation.
// A lock holds while its VP runs in the locking VTL or above it (TLFS: every lock a VP holds is
// released when it returns to a lower VTL). Target VPs that do not exist are ignored.
import type { VirtualProcessor } from '../partition';
import type { Vtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HvFlushFlags, decodeVpSet, vpsOfMask } from '../tlfs/flush-ipi';
import { VSM_VP_SECURE_CONFIG_TLB_LOCKED } from './translate-common';
import type { HypercallContext } from './handler';

const F = HvFlushFlags;

/** Flags check: reserved bits (63:3) are INVALID_PARAMETER; NON_GLOBAL_MAPPINGS_ONLY is invalid on the List calls (TLFS); the extended range format (bit 3) is not offered (CPUID 0x40000003 EDX bit 14 clear). */
export function checkFlushFlags(flags: bigint, list: boolean): void {
  const allowed = F.HV_FLUSH_ALL_PROCESSORS | F.HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | (list ? 0n : F.HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY);
  if ((flags & ~allowed) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `HV_FLUSH_FLAGS 0x${flags.toString(16)} has bits this call does not take`);
}

/** The target VPs: every VP with HV_FLUSH_ALL_PROCESSORS, else the mask's or set's existing VPs. */
export function flushTargets(
  ctx: HypercallContext,
  flags: bigint,
  set: { mask: bigint } | { format: bigint; validBanksMask: bigint; banks: bigint[] },
): VirtualProcessor[] {
  const vps = ctx.partition.vps;
  if ((flags & F.HV_FLUSH_ALL_PROCESSORS) !== 0n) return [...vps];
  let idx: number[] | 'all';
  if ('mask' in set) idx = vpsOfMask(set.mask);
  else {
    const d = decodeVpSet(set.format, set.validBanksMask, set.banks);
    if ('error' in d) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, d.error);
    idx = d.vps;
  }
  if (idx === 'all') return [...vps];
  return idx.filter((i) => i < vps.length).map((i) => vps[i]!);
}

/** Whether VP `t`'s TLB for VTL `vtl` is locked by a higher VTL that still runs on it. */
export function tlbLocked(t: VirtualProcessor, vtl: Vtl): boolean {
  for (let m = vtl + 1; m <= t.activeVtl; m++) {
    const st = t.vtls.get(m as Vtl);
    if (st.enabled && (st.secureConfig.get(vtl) & VSM_VP_SECURE_CONFIG_TLB_LOCKED) !== 0n) return true;
  }
  return false;
}

/** The flush itself: nothing to invalidate; a locked target (other than the caller's own VP) makes the call return for continuation. */
export function flush(ctx: HypercallContext, targets: VirtualProcessor[], rep?: { start: number; count: number }) {
  const waitsOn = targets.find((t) => t !== ctx.vp && tlbLocked(t, ctx.callerVtl));
  if (waitsOn) return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep?.start ?? 0, continuation: true } as const;
  return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep?.count ?? 0 } as const;
}
