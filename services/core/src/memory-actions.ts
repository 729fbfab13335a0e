// core: the address a memory guest action (ReadMemory, WriteMemory, ExecuteMemory) uses. An action
// names a GPA, and may name the GVA the VP uses for it: with the VP's paging on (CR0.PG of its active
// VTL) the core walks that VTL's page tables as the processor would (rules/paging.ts; the accessed and
// dirty bits are set as the processor sets them), so the access happens at the translated GPA and an
// intercept it raises carries the GVA (HV_X64_MEMORY_ACCESS_INFO.GvaValid = 1). A GVA that does not
// translate for the access raises #PF (CR2 = the GVA) and nothing is accessed. Paging off: the GVA is
// the GPA (32 bits) and no GVA is reported (GvaValid stays 0, as for a physical access).
import type { PartitionState } from './state/partition';
import type { VirtualProcessor } from './state/vp';
import type { AccessKind } from './protections';
import { X64Exception } from './outcomes';
import { HvStatus, hvFail } from './tlfs/status';
import { HvRegisterName as R, reg64 } from './tlfs/registers';
import { HvTranslateGvaResultCode } from './tlfs/translate';
import { pagingEnabled, translateGva } from './rules/paging';

export type ActionAddress = { gpa: bigint; gva?: bigint } | { exception: typeof X64Exception.PF; gva: bigint };

/**
 * Resolves the GPA of a memory action. `gpa` 0 with a GVA means "the translation"; any other GPA must
 * equal it (INVALID_PARAMETER otherwise). An access with a GVA may not cross a 4 KiB page of the GVA.
 */
export function resolveActionAddress(p: PartitionState, vp: VirtualProcessor, kind: AccessKind, gpa: bigint, length: number, gva?: bigint): ActionAddress {
  if (gva === undefined) return { gpa };
  if (p.spec.architecture !== 'x64') hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'a GVA is modelled for x64 partitions only');
  gva = BigInt.asUintN(64, gva);
  if ((gva & 0xfffn) + BigInt(length) > 0x1000n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `the access at GVA 0x${gva.toString(16)} crosses a 4 KiB page`);
  const vtl = vp.activeVtl;
  if (!pagingEnabled(vp, vtl)) {
    const flat = gva & 0xffff_ffffn;
    if (gpa !== 0n && gpa !== flat)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `paging is off: gva 0x${gva.toString(16)} is GPA 0x${flat.toString(16)}, not 0x${gpa.toString(16)}`);
    return { gpa: flat };
  }
  const t = translateGva(p, vp, vtl, gva, { access: [kind], setPageTableBits: true });
  if (t.code !== HvTranslateGvaResultCode.HvTranslateGvaSuccess) {
    vp.shared.set(R.HvX64RegisterCr2, reg64(gva)); // the processor reports the faulting linear address in CR2
    return { exception: X64Exception.PF, gva };
  }
  if (gpa !== 0n && gpa !== t.gpa)
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `gva 0x${gva.toString(16)} translates to GPA 0x${t.gpa.toString(16)}, not 0x${gpa.toString(16)}`);
  return { gpa: t.gpa, gva };
}
