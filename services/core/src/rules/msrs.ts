// core, rules: RDMSR/WRMSR of Hyper-V synthetic MSRs by a VP in its active VTL (tlfs-intercepts.md
// §7.1). An MSR is its HV register (tlfs/msr.ts msrToRegister) read or written under the register
// rules, with what only the instruction adds: #UD off x64, #GP for unknown, read-only or refused
// writes (nothing changes), the frequency MSRs, and RsvdP bits of overlay MSRs kept (the
// overlay-kinds table gives them). The STIMER MSRs have no HV register here: rules/stimers.ts.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import { X64Exception, type X64ExceptionVector } from '../outcomes';
import { overlayKindInfo, overlayKindOfRegister } from '../overlay-kinds';
import { HvError } from '../tlfs/status';
import { HvRegisterName as R, reg64, registerInfo } from '../tlfs/registers';
import { HV_APIC_FREQUENCY, HV_TSC_FREQUENCY, HvMsr, msrToRegister, stimerMsr } from '../tlfs/msr';
import { readStimer, writeStimer } from './stimers';
import { assertActive } from './lifecycle';
import { getRegister, prepareSetRegister } from './registers';
import type { VtlSwitchEvent } from '../outcomes';
import { guestArchitecturalMsr, isArchitecturalMsr } from './register-intercepts';
import { ApicMsr } from '../tlfs/apic';
import { endOfInterrupt, sendIpi, setTaskPriority, x2apicMode } from './interrupts';

/**
 * The local-APIC MSRs of the active VTL's APIC (rules/interrupts.ts): HV_X64_MSR_TPR/EOI in any mode,
 * HV_X64_MSR_ICR in any mode, the x2APIC TPR/EOI/ICR only in x2APIC mode (#GP otherwise, SDM
 * §11.12.1.2).
 */
function apicMsr(vp: VirtualProcessor, msr: number): 'tpr' | 'eoi' | 'icr' | 'gp' | undefined {
  if (msr === ApicMsr.HV_X64_MSR_TPR) return 'tpr';
  if (msr === ApicMsr.HV_X64_MSR_EOI) return 'eoi';
  if (msr === ApicMsr.HV_X64_MSR_ICR) return 'icr';
  if (msr === ApicMsr.X2APIC_TPR || msr === ApicMsr.X2APIC_EOI || msr === ApicMsr.X2APIC_ICR) {
    if (!x2apicMode(vp, vp.activeVtl)) return 'gp';
    return msr === ApicMsr.X2APIC_TPR ? 'tpr' : msr === ApicMsr.X2APIC_EOI ? 'eoi' : 'icr';
  }
  return undefined;
}

/** RDMSR by the VP in its active VTL. */
export function readMsr(
  p: PartitionState,
  vp: VirtualProcessor,
  msr: number,
): { value: bigint; exception?: X64ExceptionVector; vtlSwitch?: VtlSwitchEvent; intercepted?: { heldBack: boolean } } {
  assertActive(p);
  if (p.spec.architecture !== 'x64') return { value: 0n, exception: X64Exception.UD };
  if (isArchitecturalMsr(msr)) {
    // An architectural MSR a higher VTL may intercept (rules/register-intercepts.ts): the read does
    // not happen and the VP enters that VTL; otherwise it reads the active VTL's register.
    const r = guestArchitecturalMsr(p, vp, msr, { kind: 'read' });
    if ('intercepted' in r) {
      const o = r.intercepted;
      return {
        value: 0n,
        vtlSwitch: o.status === 'intercepted' ? o.vtlSwitch : undefined,
        intercepted: { heldBack: o.status === 'intercepted' && o.heldBack === true },
      };
    }
    return { value: getRegister(p, vp, vp.activeVtl, r.register).low };
  }
  const apic = apicMsr(vp, msr);
  if (apic === 'gp') return { value: 0n, exception: X64Exception.GP };
  if (apic === 'tpr') return { value: BigInt(vp.vtls.get(vp.activeVtl).tpr) };
  if (apic === 'eoi') return { value: 0n, exception: X64Exception.GP }; // write-only
  if (apic === 'icr') return { value: vp.vtls.get(vp.activeVtl).icr };
  if (msr === HvMsr.HV_X64_MSR_TSC_FREQUENCY) return { value: HV_TSC_FREQUENCY };
  if (msr === HvMsr.HV_X64_MSR_APIC_FREQUENCY) return { value: HV_APIC_FREQUENCY };
  const timer = stimerMsr(msr);
  if (timer) return { value: readStimer(vp, vp.activeVtl, timer.index, timer.reg) };
  const name = msrToRegister.get(msr);
  if (name === undefined) return { value: 0n, exception: X64Exception.GP };
  // HV_X64_MSR_EOM is write-only; a read returns 0 (tlfs-overlays-synic.md §5.1; KVM does the same).
  if (name === R.HvRegisterEom) return { value: 0n };
  return { value: getRegister(p, vp, vp.activeVtl, name).low };
}

/** WRMSR by the VP in its active VTL. Refused writes raise #GP and change nothing. */
export function writeMsr(
  p: PartitionState,
  vp: VirtualProcessor,
  msr: number,
  value: bigint,
): { exception?: X64ExceptionVector; vtlSwitch?: VtlSwitchEvent; intercepted?: { heldBack: boolean } } {
  assertActive(p);
  if (p.spec.architecture !== 'x64') return { exception: X64Exception.UD };
  if (isArchitecturalMsr(msr)) {
    // A write a higher VTL intercepts does not take effect (rules/register-intercepts.ts).
    const r = guestArchitecturalMsr(p, vp, msr, { kind: 'write', value });
    if ('intercepted' in r) {
      const o = r.intercepted;
      return { vtlSwitch: o.status === 'intercepted' ? o.vtlSwitch : undefined, intercepted: { heldBack: o.status === 'intercepted' && o.heldBack === true } };
    }
    try {
      prepareSetRegister(p, vp, vp.activeVtl, r.register, reg64(value), vp.activeVtl)();
      return {};
    } catch (e) {
      if (e instanceof HvError) return { exception: X64Exception.GP };
      throw e;
    }
  }
  const apic = apicMsr(vp, msr);
  if (apic === 'gp') return { exception: X64Exception.GP };
  if (apic === 'tpr') {
    if (value > 0xffn) return { exception: X64Exception.GP }; // bits 63:8 reserved
    return { vtlSwitch: setTaskPriority(p, vp, Number(value)) };
  }
  if (apic === 'eoi') {
    if (msr === ApicMsr.X2APIC_EOI && value !== 0n) return { exception: X64Exception.GP }; // SDM §11.12.1.2
    return { vtlSwitch: endOfInterrupt(p, vp) };
  }
  if (apic === 'icr') {
    const r = sendIpi(p, vp, value);
    return r === 'gp' ? { exception: X64Exception.GP } : { vtlSwitch: r };
  }
  const timer = stimerMsr(msr);
  if (timer) return writeStimer(p, vp, vp.activeVtl, timer.index, timer.reg, value) ? {} : { exception: X64Exception.GP };
  const name = msrToRegister.get(msr);
  if (name === undefined) return { exception: X64Exception.GP };
  const info = registerInfo(name)!;
  if (info.readOnly) return { exception: X64Exception.GP };
  const vtl = vp.activeVtl;
  let v = value;
  const kind = overlayKindOfRegister(name);
  if (kind) {
    const k = overlayKindInfo(kind);
    const cur = getRegister(p, vp, vtl, name).low;
    // RsvdP: a WRMSR keeps their current value (tlfs-overlays-synic.md §4.3).
    v = (value & ~k.rsvdP) | (cur & k.rsvdP);
    if (k.lockBit !== undefined && (cur & k.lockBit) !== 0n) return { exception: X64Exception.GP };
  }
  try {
    prepareSetRegister(p, vp, vtl, name, reg64(v), vtl)();
    return {};
  } catch (e) {
    if (e instanceof HvError) return { exception: X64Exception.GP };
    throw e;
  }
}
