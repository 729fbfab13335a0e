// core, hypercalls: HvCallTranslateVirtualAddress(Ex) as a higher VTL uses it on a lower VTL's GVA
// (TLFS HvCallTranslateVirtualAddress.md, datatypes/hv_translate_gva_control_flags.md,
// hv_translate_gva_result.md). Checks in OpenHCL's order (virt_mshv_vtl hardware_cvm
// translate_virtual_address): PartitionId other than HV_PARTITION_ID_SELF -> ACCESS_DENIED; the
// ControlFlags' HV_INPUT_VTL with reserved bits -> INVALID_PARAMETER; a target VTL that is not below the
// caller's -> ACCESS_DENIED (the caller's own VTL included, as in OpenHCL). Then, beyond OpenHCL (which
// serves only its own VP): a VpIndex that does not exist -> INVALID_VP_INDEX (HV_VP_INDEX_SELF = the
// caller's VP); the target VTL not enabled on that VP -> INVALID_VTL_STATE; reserved bits (the input's
// +12 and ControlFlags 55:11 with SHADOW_STACK, not modelled), SUPERVISOR_ACCESS with USER_ACCESS, or
// ENFORCE_SMAP with OVERRIDE_SMAP -> INVALID_PARAMETER.
//
// A translation failure is not a status: the call succeeds and TranslationResult.ResultCode says what
// the walk found (rules/paging.ts); GpaPage is then 0. On success the GPA is checked against what the
// VALIDATE flags ask: outside RAM and no overlay -> GpaUnmapped; a VALIDATE_WRITE on a read-only overlay
// (the hypercall page) -> GpaIllegalOverlayAccess; a higher VTL's protection refusing the target VTL that
// access -> Intercept (OpenVMM: "intercept of the memory access by a higher VTL"). GpaNoReadAccess /
// GpaNoWriteAccess (the host's own mapping rights) never occur: the host maps all RAM. OverlayPage: an
// overlay of the target VTL's view is at the GPA. CacheType: from the PAT entry the leaf selects (paging
// off: write-back). TLB_FLUSH_INHIBIT locks the target VTL's TLB on that VP for the caller
// (HvRegisterVsmVpSecureConfigVtlN.TlbLocked, tlfs-vsm.md §3.5).
import type { VirtualProcessor } from '../partition';
import { isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, decodeInputVtl } from '../tlfs/vsm';
import { type HvTranslateGvaResult, HvTranslateGvaResultCode as C, type HvTranslateVirtualAddressInput } from '../tlfs/translate';
import { HvCacheType } from '../tlfs/message';
import { type TranslateAccess, cplOf, translateGva } from '../rules/paging';
import { violatingVtl } from '../access';
import type { HypercallContext } from './handler';

/** HvRegisterVsmVpSecureConfigVtlN bit 1, TlbLocked (tlfs-vsm.md §3.5). */
export const VSM_VP_SECURE_CONFIG_TLB_LOCKED = 0x2n;

export interface Translation {
  result: HvTranslateGvaResult;
  gpaPage: bigint;
}

export function translateForCaller(ctx: HypercallContext, i: HvTranslateVirtualAddressInput): Translation {
  const p = ctx.partition;
  if (i.partitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, 'only HV_PARTITION_ID_SELF');
  const f = i.controlFlags;
  const iv = decodeInputVtl(f.inputVtl);
  if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set in ControlFlags');
  const vtl = iv.useTargetVtl ? iv.targetVtl : ctx.callerVtl;
  if (vtl >= ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may translate addresses of lower VTLs only (target VTL ${vtl})`);
  if (!isVtl(vtl)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${vtl} is not implemented`);
  if (i.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'the reserved field at +12 is not zero');
  if (f.rsvd !== 0n || f.shadowStack) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'reserved or unsupported (SHADOW_STACK) control flags are set');
  if (f.supervisorAccess && f.userAccess) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'SUPERVISOR_ACCESS and USER_ACCESS together');
  if (f.enforceSmap && f.overrideSmap) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'ENFORCE_SMAP and OVERRIDE_SMAP together');
  const vp: VirtualProcessor = i.vpIndex === HV_VP_INDEX_SELF ? ctx.vp : p.vp(i.vpIndex);
  if (!vp.vtls.get(vtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${vtl} is not enabled on VP ${vp.index}`);
  if (f.tlbFlushInhibit) {
    const sc = vp.vtls.get(ctx.callerVtl).secureConfig;
    sc.set(vtl, sc.get(vtl) | VSM_VP_SECURE_CONFIG_TLB_LOCKED);
  }
  const access: TranslateAccess[] = [];
  if (f.validateRead) access.push('read');
  if (f.validateWrite) access.push('write');
  if (f.validateExecute) access.push('execute');
  const mode = f.userAccess ? 'user' : f.supervisorAccess ? 'supervisor' : undefined;
  const t = translateGva(p, vp, vtl, i.gvaPage << 12n, {
    access,
    mode,
    privilegeExempt: f.privilegeExempt,
    setPageTableBits: f.setPageTableBits,
    smap: f.overrideSmap ? 'override' : f.enforceSmap ? 'enforce' : undefined,
  });
  const fail = (code: number): Translation => ({ result: { resultCode: code, cacheType: 0, overlayPage: false }, gpaPage: 0n });
  if (t.code !== C.HvTranslateGvaSuccess) return fail(t.code);
  const gpfn = t.gpa >> 12n;
  const overlay = p.overlays.visible(vtl, vp.index, gpfn);
  if (!overlay && t.gpa >= p.memory.sizeBytes) return fail(C.HvTranslateGvaGpaUnmapped);
  if (overlay) {
    if (f.validateWrite && overlay.readOnly) return fail(C.HvTranslateGvaGpaIllegalOverlayAccess);
  } else {
    const userMode = mode === 'user' || (mode === undefined && cplOf(vp, vtl) === 3);
    for (const a of access) if (violatingVtl(p, vp, vtl, Number(gpfn), a, userMode) !== undefined) return fail(C.HvTranslateGvaIntercept);
  }
  return {
    result: { resultCode: C.HvTranslateGvaSuccess, cacheType: overlay ? HvCacheType.HvCacheTypeWriteBack : t.cacheType, overlayPage: overlay !== undefined },
    gpaPage: gpfn,
  };
}
