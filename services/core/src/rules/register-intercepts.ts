// core, rules: secure register intercepts (TLFS vsm.md "Secure Register Intercepts"; tlfs-vsm.md §3.8).
// A VTL > 0 selects, per VP, accesses of its lower VTLs to intercept with HvX64RegisterCrInterceptControl
// (and narrows CR0/CR4/IA32_MISC_ENABLE writes with the mask registers). A selected access does not
// take effect: it becomes HV_X64_REGISTER_INTERCEPT_MESSAGE (control and descriptor-table registers)
// or HV_X64_MSR_INTERCEPT_MESSAGE (MSRs) in the intercepting VTL's SINT0, which is entered
// (secure-intercepts.ts). Several VTLs selecting the same access: the lowest above the accessing VTL
// gets it (TLFS "Nested Intercepts"). Mask rule (OpenHCL `cvm_is_protected_register_write`): a write
// intercepts when it changes a masked bit, ((old ^ new) & mask) != 0; a mask never written is all ones
// (TLFS: "where a mask register is not defined, any access ... will trigger an intercept").
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { AccessOutcome } from '../outcomes';
import { type Vtl, VTLS } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HvRegisterName as R, type Reg128, reg64 } from '../tlfs/registers';
import { HvMessageType } from '../tlfs/message';
import {
  CR_INTERCEPT_CONTROL_DEFINED,
  type CrInterceptBit,
  X64Msr,
  decodeCrInterceptControl,
  encodeCrInterceptControl,
  encodeMsrInterceptMessage,
  encodeRegisterInterceptMessage,
} from '../tlfs/register-intercepts';
import { interceptHeader, raiseSecureIntercept } from '../secure-intercepts';

const ALL_ONES = 0xffff_ffff_ffff_ffffn;
export const CR_INTERCEPT_MASKS: ReadonlySet<number> = new Set([
  R.HvX64RegisterCrInterceptCr0Mask,
  R.HvX64RegisterCrInterceptCr4Mask,
  R.HvX64RegisterCrInterceptIa32MiscEnableMask,
]);
export const isCrInterceptRegister = (name: number): boolean => name === R.HvX64RegisterCrInterceptControl || CR_INTERCEPT_MASKS.has(name);

/** The value of a CR-intercept register of (vp, vtl); a mask never written reads as all ones. */
export function crInterceptValue(vp: VirtualProcessor, vtl: Vtl, name: number): bigint {
  const v = vp.vtls.get(vtl).regs.get(name)?.low;
  if (v !== undefined) return v;
  return CR_INTERCEPT_MASKS.has(name) ? ALL_ONES : 0n;
}

/**
 * Validates a write of a CR-intercept register of `vtl` and returns its commit. VTL0 has no instance
 * (nothing below it: INVALID_PARAMETER, as OpenHCL answers for a VTL other than VTL1's); reserved
 * bits of the control register (63:25) are INVALID_REGISTER_VALUE; masks take any value.
 */
export function prepareCrInterceptRegister(vp: VirtualProcessor, vtl: Vtl, name: number, value: bigint): () => void {
  if (vtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'VTL0 has no secure register intercepts (it has no lower VTL)');
  if (name === R.HvX64RegisterCrInterceptControl && (value & ~CR_INTERCEPT_CONTROL_DEFINED) !== 0n)
    hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'reserved bits 63:25 of HvX64RegisterCrInterceptControl are set');
  const regs = vp.vtls.get(vtl).regs;
  return () => {
    regs.set(name, reg64(value));
  };
}

/** The lowest VTL above the VP's active VTL, enabled on the VP, for which `selects` holds. */
function interceptor(vp: VirtualProcessor, selects: (v: Vtl) => boolean): Vtl | undefined {
  return VTLS.find((v) => v > vp.activeVtl && vp.vtls.get(v).enabled && selects(v));
}
const bit = (vp: VirtualProcessor, v: Vtl, b: CrInterceptBit) => decodeCrInterceptControl(crInterceptValue(vp, v, R.HvX64RegisterCrInterceptControl))[b];

/** Register writes the control register can select, with their bit and mask register. */
const REGISTER_WRITES: ReadonlyMap<number, { bit: CrInterceptBit; mask?: number }> = new Map([
  [R.HvX64RegisterCr0, { bit: 'cr0Write', mask: R.HvX64RegisterCrInterceptCr0Mask }],
  [R.HvX64RegisterCr4, { bit: 'cr4Write', mask: R.HvX64RegisterCrInterceptCr4Mask }],
  [R.HvX64RegisterXfem, { bit: 'xCr0Write' }],
  [R.HvX64RegisterGdtr, { bit: 'gdtrWrite' }],
  [R.HvX64RegisterIdtr, { bit: 'idtrWrite' }],
  [R.HvX64RegisterLdtr, { bit: 'ldtrWrite' }],
  [R.HvX64RegisterTr, { bit: 'trWrite' }],
]);
export const INTERCEPTABLE_REGISTERS: readonly number[] = [...REGISTER_WRITES.keys()];

/**
 * An architectural MSR the control register names: its intercept bits and the register that holds
 * it in this model (IA32_MISC_ENABLE and the SGX launch-control MSRs have none: not intercepted,
 * their accesses #GP as every unmodelled MSR does).
 */
const MSRS: ReadonlyMap<number, { read?: CrInterceptBit; write?: CrInterceptBit; mask?: number; register?: number }> = new Map([
  [X64Msr.IA32_EFER, { read: 'msrEferRead', write: 'msrEferWrite', register: R.HvX64RegisterEfer }],
  [X64Msr.IA32_STAR, { read: 'msrStarRead', write: 'msrStarWrite', register: R.HvX64RegisterStar }],
  [X64Msr.IA32_LSTAR, { read: 'msrLstarRead', write: 'msrLstarWrite', register: R.HvX64RegisterLstar }],
  [X64Msr.IA32_CSTAR, { read: 'msrCstarRead', write: 'msrCstarWrite', register: R.HvX64RegisterCstar }],
  [X64Msr.IA32_FMASK, { write: 'msrSfmaskWrite', register: R.HvX64RegisterSfmask }],
  [X64Msr.IA32_SYSENTER_CS, { write: 'msrSysenterCsWrite', register: R.HvX64RegisterSysenterCs }],
  [X64Msr.IA32_SYSENTER_EIP, { write: 'msrSysenterEipWrite', register: R.HvX64RegisterSysenterEip }],
  [X64Msr.IA32_SYSENTER_ESP, { write: 'msrSysenterEspWrite', register: R.HvX64RegisterSysenterEsp }],
  [X64Msr.IA32_APIC_BASE, { read: 'apicBaseMsrRead', write: 'apicBaseMsrWrite', register: R.HvX64RegisterApicBase }],
  [X64Msr.IA32_TSC_AUX, { write: 'msrTscAuxWrite', register: R.HvX64RegisterTscAux }],
]);
export const isArchitecturalMsr = (msr: number): boolean => MSRS.has(msr);

/**
 * A write of `name` by the VP in its active VTL (MOV to CR0/CR4, XSETBV, LGDT/LIDT/LLDT/LTR as one
 * register write): intercepted when a higher VTL selects it, else written. `commit` performs the
 * write (the register rules' validation included).
 */
export function guestRegisterWrite(p: PartitionState, vp: VirtualProcessor, name: number, value: Reg128, commit: () => void): AccessOutcome {
  const sel = REGISTER_WRITES.get(name);
  if (!sel) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `register 0x${name.toString(16)} is not one a secure intercept can select`);
  const old = vp.vtls.get(vp.activeVtl).regs.get(name) ?? vp.shared.get(name) ?? { low: 0n, high: 0n };
  const changes = (v: Vtl) => (sel.mask === undefined ? true : ((old.low ^ value.low) & crInterceptValue(vp, v, sel.mask)) !== 0n);
  const by = interceptor(vp, (v) => bit(vp, v, sel.bit) && changes(v));
  if (by === undefined) {
    commit();
    return { status: 'completed' };
  }
  const payload = encodeRegisterInterceptMessage({
    header: interceptHeader(vp, 'write'),
    flags: { isMemoryOp: false, rsvd: 0 },
    rsvd: 0,
    rsvd2: 0,
    registerName: name,
    accessInfo: value,
  });
  return raiseSecureIntercept(p, vp, by, HvMessageType.HvMessageTypeRegisterIntercept, payload, 'write');
}

/**
 * RDMSR/WRMSR of an architectural MSR by the VP in its active VTL: intercepted when a higher VTL
 * selects it (the access does not happen), else performed on the MSR's register through
 * `read`/`write`. A write's EDX:EAX and a read's RDX/RAX go into the message.
 */
export function guestArchitecturalMsr(
  p: PartitionState,
  vp: VirtualProcessor,
  msr: number,
  access: { kind: 'read' } | { kind: 'write'; value: bigint },
): { intercepted: AccessOutcome } | { register: number } {
  const m = MSRS.get(msr)!;
  const b = access.kind === 'read' ? m.read : m.write;
  const by = b === undefined ? undefined : interceptor(vp, (v) => bit(vp, v, b));
  if (by === undefined) return { register: m.register! };
  const rax = access.kind === 'write' ? access.value & 0xffff_ffffn : (vp.shared.get(R.HvX64RegisterRax)?.low ?? 0n);
  const rdx = access.kind === 'write' ? access.value >> 32n : (vp.shared.get(R.HvX64RegisterRdx)?.low ?? 0n);
  const payload = encodeMsrInterceptMessage({ header: interceptHeader(vp, access.kind), msrNumber: msr, reserved: 0, rdx, rax });
  return { intercepted: raiseSecureIntercept(p, vp, by, HvMessageType.HvMessageTypeMsrIntercept, payload, access.kind) };
}

/** Each modelled architectural MSR's read / write bit, as a mask of HvX64RegisterCrInterceptControl (ascending MSR). */
const msrBits = (kind: 'read' | 'write'): readonly (readonly [number, bigint])[] =>
  [...MSRS]
    .filter(([, m]) => m[kind] !== undefined && m.register !== undefined)
    .map(([msr, m]) => [msr, encodeCrInterceptControl({ [m[kind]!]: true })] as const)
    .sort((a, b) => a[0] - b[0]);
const MSR_BITS = { read: msrBits('read'), write: msrBits('write') };
const NONE: readonly number[] = Object.freeze([]);

/**
 * The architectural MSRs whose read or write by `vtl` is selected by an enabled VTL above it on any VP
 * of the partition, ascending (a platform traps these; the decision per access stays
 * guestArchitecturalMsr's). Cheap enough to ask at every exit: one OR of the control registers, no
 * allocation when none is set.
 */
export function msrAccessesInterceptedFor(p: PartitionState, vtl: Vtl, kind: 'read' | 'write'): readonly number[] {
  let union = 0n;
  for (const vp of p.vps)
    for (const v of VTLS) if (v > vtl && vp.vtls.get(v).enabled) union |= vp.vtls.get(v).regs.get(R.HvX64RegisterCrInterceptControl)?.low ?? 0n;
  if (union === 0n) return NONE;
  const out: number[] = [];
  for (const [msr, mask] of MSR_BITS[kind]) if ((union & mask) !== 0n) out.push(msr);
  return out;
}
