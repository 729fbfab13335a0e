// core, rules: VP registers as HvCallGetVpRegisters/HvCallSetVpRegisters and the management API see
// them (tlfs-hypercalls.md §2.7, tlfs-vsm.md §3 and §9): which instance a name reads (shared,
// VTL-private, partition-wide per VTL, computed), and what a write must satisfy and sets off
// (overlay placement, SynIC delivery, VTL protection). A batch is all-or-nothing: every write is
// validated before any is committed.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { type Vtl, VtlSet, isVtl } from '../vtl-array';
import { OVERLAY_KIND_NAMES, type OverlayKind, overlayKindInfo, overlayKindOfRegister, overlayMsrName } from '../overlay-kinds';
import { HvStatus, hvFail } from '../tlfs/status';
import { HvRegisterName as R, type Reg128, type RegisterInfo, allRegisters, reg64, registerInfo } from '../tlfs/registers';
import { HV_SINT_MASKED, HV_SYNIC_VERSION } from '../tlfs/msr';
import {
  HV_MAX_SUPPORTED_VTL,
  VSM_CODE_PAGE_OFFSETS_64,
  VSM_PARTITION_CONFIG_DEFINED,
  VSM_VINA_DEFINED,
  VSM_VP_SECURE_CONFIG_DEFINED,
  decodeVsmPartitionConfig,
  encodeVsmCapabilities,
  encodeVsmCodePageOffsets,
  encodeVsmPartitionStatus,
  encodeVsmVpStatus,
} from '../tlfs/vsm';
import { checkOverlayGpfn, overlayMsrValue, syncOverlay } from './overlay-sync';
import { enableVtlProtection } from './protections';
import { acknowledgeSynic } from './stimers';
import { publishReferenceTscPage, referenceTime } from './time';
import { crInterceptValue, isCrInterceptRegister, prepareCrInterceptRegister } from './register-intercepts';

/** Register names a backend models (for "read all"). */
export function modeledRegisters(): readonly RegisterInfo[] {
  return allRegisters.filter((r) => !r.writeOnly);
}

function requireVpVtl(vp: VirtualProcessor, vtl: number): Vtl {
  if (!isVtl(vtl) || !vp.vtls.get(vtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${vtl} is not enabled on VP ${vp.index}`);
  return vtl;
}

/** Reads a register of `vtl` (HvCallGetVpRegisters semantics). */
export function getRegister(p: PartitionState, vp: VirtualProcessor, vtlIn: number, name: number): Reg128 {
  const vtl = requireVpVtl(vp, vtlIn);
  const info = registerInfo(name);
  if (!info) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unknown register name 0x${name.toString(16)}`);
  if (info.writeOnly) return reg64(0n);
  const pv = p.vtls.get(vtl);
  const overlay = overlayKindOfRegister(name);
  if (overlay) return reg64(overlayMsrValue(p, overlay, vtl, vp));
  switch (name) {
    case R.HvRegisterGuestOsId:
      return reg64(pv.guestOsId);
    case R.HvRegisterVpIndex:
      return reg64(BigInt(vp.index));
    case R.HvRegisterTimeRefCount:
      return reg64(referenceTime(p, vp.index));
    case R.HvRegisterSversion:
      return reg64(HV_SYNIC_VERSION);
    case R.HvRegisterVsmCodePageOffsets: {
      const l = p.spec.platform?.hypercallPage;
      return reg64(l ? encodeVsmCodePageOffsets(l.vtlCallOffset, l.vtlReturnOffset) : VSM_CODE_PAGE_OFFSETS_64);
    }
    case R.HvRegisterVsmVpStatus:
      // ActiveMbecEnabled: MBEC is in force for the active VTL under a higher VTL's protections (tlfs-vsm.md §3.3, §7.1).
      return reg64(encodeVsmVpStatus(vp.activeVtl, activeMbec(p, vp), vp.enabledVtlSet));
    case R.HvRegisterVsmPartitionStatus:
      return reg64(encodeVsmPartitionStatus(p.enabledVtlSet, p.maximumVtl, p.mbecEnabledVtlSet));
    case R.HvRegisterVsmCapabilities:
      return reg64(
        encodeVsmCapabilities({ dr6Shared: false, mbecVtlMask: VtlSet.below(p.maximumVtl), denyLowerVtlStartup: true, interceptPageAvailable: false }),
      );
    case R.HvRegisterVsmPartitionConfig:
      return reg64(vtl === 0 ? 0n : pv.config);
    case R.HvRegisterVsmVina:
      return reg64(vp.vtls.get(vtl).vina);
  }
  if (isCrInterceptRegister(name)) return reg64(vtl === 0 ? 0n : crInterceptValue(vp, vtl, name));
  if (name >= R.HvRegisterVsmVpSecureConfigVtl0 && name <= R.HvRegisterVsmVpSecureConfigVtl14) {
    const lower = name - R.HvRegisterVsmVpSecureConfigVtl0;
    return reg64(lower < vtl ? vp.vtls.get(vtl).secureConfig.get(lower as Vtl) : 0n);
  }
  const store = info.scope === 'shared' ? vp.shared : vp.vtls.get(vtl).syncRegs(name);
  return store.get(name) ?? { low: 0n, high: 0n };
}

/**
 * Validates a register write and returns the function that commits it, so that a batch is
 * all-or-nothing (validate everything, then apply). `caller` is the calling VTL for a guest
 * hypercall or WRMSR; 'host' is the management API (no caller-VTL rules).
 */
export function prepareSetRegister(p: PartitionState, vp: VirtualProcessor, vtlIn: number, name: number, value: Reg128, _caller: Vtl | 'host'): () => void {
  const vtl = requireVpVtl(vp, vtlIn);
  const info: RegisterInfo | undefined = registerInfo(name);
  if (!info) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unknown register name 0x${name.toString(16)}`);
  if (info.readOnly) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `${info.tlfsName} is read-only`);
  if (info.shape === 'reg64' && value.high !== 0n)
    hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `${info.tlfsName} is a 64-bit register; bits 127:64 must be 0`);
  const v = value.low;
  const pv = p.vtls.get(vtl);
  const overlay = overlayKindOfRegister(name);
  if (overlay) return prepareOverlayMsr(p, vp, vtl, overlay, v);
  if (isCrInterceptRegister(name)) return prepareCrInterceptRegister(vp, vtl, name, v);
  switch (name) {
    case R.HvRegisterGuestOsId:
      return () => {
        pv.guestOsId = v;
        // Writing 0 to GUEST_OS_ID disables the pages that need it (the hypercall page, tlfs-hypercalls.md §1.7).
        if (v !== 0n) return;
        for (const kind of OVERLAY_KIND_NAMES) {
          const k = overlayKindInfo(kind);
          if (!k.enableNeedsGuestOsId || k.scope !== 'partition' || (pv[k.field] & k.enable) === 0n) continue;
          pv[k.field] &= ~k.enable;
          syncOverlay(p, kind, vtl, null, pv[k.field]);
        }
      };
    case R.HvRegisterVsmPartitionConfig: {
      if (vtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'VTL0 has no HvRegisterVsmPartitionConfig instance');
      if ((v & ~VSM_PARTITION_CONFIG_DEFINED) !== 0n)
        hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'reserved bits of HvRegisterVsmPartitionConfig are set');
      const cur = decodeVsmPartitionConfig(pv.config);
      const nxt = decodeVsmPartitionConfig(v);
      if (cur.enableVtlProtection && !nxt.enableVtlProtection)
        hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'EnableVtlProtection is write-once and cannot be cleared');
      if (cur.enableVtlProtection && nxt.defaultVtlProtectionMask !== cur.defaultVtlProtectionMask)
        hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'DefaultVtlProtectionMask cannot change once protection is enabled');
      if ((nxt.defaultVtlProtectionMask & 0x3) !== 0x3)
        hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'DefaultVtlProtectionMask must include read and write');
      return () => {
        pv.config = v;
        if (!cur.enableVtlProtection && nxt.enableVtlProtection) enableVtlProtection(p, vtl, nxt.defaultVtlProtectionMask);
      };
    }
    case R.HvRegisterVsmVina: {
      if (vtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HvRegisterVsmVina cannot be set for VTL0');
      const st = vp.vtls.get(vtl);
      // Bits 63:11 are ReservedP: preserved.
      const next = (v & VSM_VINA_DEFINED) | (st.vina & ~VSM_VINA_DEFINED);
      return () => {
        st.vina = next;
      };
    }
  }
  if (name >= R.HvRegisterVsmVpSecureConfigVtl0 && name <= R.HvRegisterVsmVpSecureConfigVtl14) {
    const lower = name - R.HvRegisterVsmVpSecureConfigVtl0;
    if (lower >= vtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `HvRegisterVsmVpSecureConfigVtl${lower} exists only in VTLs above ${lower}`);
    if ((v & ~VSM_VP_SECURE_CONFIG_DEFINED) !== 0n)
      hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'reserved bits of HvRegisterVsmVpSecureConfigVtlN are set');
    // MbecEnabled needs MBEC enabled for this (the protecting) VTL by HvCallEnablePartitionVtl (tlfs-vsm.md §7.1).
    if ((v & 1n) !== 0n && !p.vtls.get(vtl as Vtl).mbec)
      hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `MBEC was not enabled for VTL ${vtl} by HvCallEnablePartitionVtl (EnableMbec)`);
    const st = vp.vtls.get(vtl);
    return () => {
      st.secureConfig.set(lower as Vtl, v);
    };
  }
  if (name === R.HvRegisterEom) return () => acknowledgeSynic(p, vp, vtl);
  if (name === R.HvRegisterScontrol) {
    const st = vp.vtls.get(vtl);
    return () => {
      st.regs.set(name, reg64(v));
      acknowledgeSynic(p, vp, vtl); // enabling the SynIC delivers what was queued
    };
  }
  if (name >= R.HvRegisterSint0 && name <= R.HvRegisterSint15) {
    // SINTx.Vector must be 16..255 unless masked (tlfs-overlays-synic.md §5.1; KVM allows <16 when masked).
    const vector = Number(v & 0xffn);
    if ((v & HV_SINT_MASKED) === 0n && vector < 16) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `SINT vector ${vector} is below 16`);
  }
  // Architectural registers are validated only minimally (TLFS §7.10): accepted as written.
  const store = info.scope === 'shared' ? vp.shared : vp.vtls.get(vtl).syncRegs(name);
  return () => {
    store.set(name, value);
    // An explicit RIP write replaces the return a VTL parked in a hypercall-page stub would
    // otherwise take when it resumes (stub.ts).
    if (name === R.HvX64RegisterRip) vp.vtls.get(vtl).pendingStubReturn = null;
  };
}

/** A write of an MSR that places an overlay (the overlay-kinds table says how). */
function prepareOverlayMsr(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, kind: OverlayKind, v: bigint): () => void {
  const k = overlayKindInfo(kind);
  const pv = p.vtls.get(vtl);
  const cur = overlayMsrValue(p, kind, vtl, vp);
  if (k.lockBit !== undefined && (cur & k.lockBit) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `${overlayMsrName(kind)} is locked until reset`);
  checkOverlayGpfn(p, kind, v);
  let next = k.rsvdPKeptBy === 'every-write' ? (v & ~k.rsvdP) | (cur & k.rsvdP) : v;
  // Enable requires a non-zero guest OS id; otherwise Enable reads back as 0.
  if (k.enableNeedsGuestOsId && pv.guestOsId === 0n) next &= ~k.enable;
  const vpIndex = k.scope === 'vp' ? vp.index : null;
  return () => {
    if (k.scope === 'partition') pv[k.field] = next;
    else vp.vtls.get(vtl).regs.set(k.register, reg64(next));
    syncOverlay(p, kind, vtl, vpIndex, next);
    if (kind === 'simp') acknowledgeSynic(p, vp, vtl); // a SIM page now takes queued messages
    if (kind === 'reference-tsc') publishReferenceTscPage(p, vtl); // valid when the platform gives TSC parameters
  };
}

export function setRegisters(p: PartitionState, vp: VirtualProcessor, vtl: number, regs: { name: number; value: Reg128 }[], caller: Vtl | 'host'): void {
  const commits = regs.map((r) => prepareSetRegister(p, vp, vtl, r.name, r.value, caller));
  for (const c of commits) c();
}

/** Whether MBEC is in force for the VP's active VTL: a higher VTL with EnableMbec set its SecureConfig MbecEnabled for it. */
function activeMbec(p: PartitionState, vp: VirtualProcessor): boolean {
  for (let m = vp.activeVtl + 1; m <= HV_MAX_SUPPORTED_VTL; m++)
    if (p.vtls.get(m as Vtl).mbec && (vp.vtls.get(m as Vtl).secureConfig.get(vp.activeVtl) & 1n) !== 0n) return true;
  return false;
}
