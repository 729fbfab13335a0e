// tlfs layer: the local-APIC registers each VTL of a VP has on its own (tlfs-vsm.md §9.1: "local APIC
// registers including CR8/TPR (each VTL has its own local APIC)"; the synthetic MSRs
// HV_X64_MSR_EOI/ICR/TPR are private per VTL too).
//   Synthetic: TLFS "Synthetic MSRs" (HV_X64_MSR_EOI 0x40000070, HV_X64_MSR_ICR 0x40000071,
//   HV_X64_MSR_TPR 0x40000072), the same numbers as Linux include/hyperv/hvgdk_mini.h
//   (HV_X64_MSR_EOI/ICR/TPR) and OpenVMM hvdef (HV_X64_MSR_EOI/ICR/TPR).
//   Architectural: Intel SDM Vol. 3A §11.4.4 IA32_APIC_BASE (bit 8 BSP, bit 10 EXTD = x2APIC mode,
//   bit 11 EN = APIC global enable, 51:12 APIC base), §11.12.1.2 x2APIC MSR addresses (0x808 TPR,
//   0x80B EOI, 0x830 ICR), §11.8.3.1 task and processor priorities (an interrupt is deliverable
//   when its priority class, vector[7:4], is above the task-priority class, TPR[7:4]).
import { bitfield, bigBits, flag } from './layout';

export const ApicMsr = {
  HV_X64_MSR_EOI: 0x40000070,
  HV_X64_MSR_ICR: 0x40000071,
  HV_X64_MSR_TPR: 0x40000072,
  X2APIC_TPR: 0x808,
  X2APIC_EOI: 0x80b,
  X2APIC_ICR: 0x830,
} as const;

/** IA32_APIC_BASE (SDM Vol. 3A §11.4.4); bits 7:0, 9 and 63:52 reserved. */
export const Ia32ApicBaseLayout = bitfield('IA32_APIC_BASE', 64, {
  bsp: flag(8), // BSP flag (read-only for the guest; set on VP 0)
  extd: flag(10), // x2APIC mode
  enable: flag(11), // APIC global enable
  base: bigBits(51, 12), // APIC base page
});
export const IA32_APIC_BASE_DEFINED = Ia32ApicBaseLayout.definedMask;
/** The reset value: xAPIC mode, enabled, at 0xFEE00000 (SDM §11.4.4), BSP on VP 0. */
export const apicBaseReset = (vpIndex: number): bigint => 0xfee0_0000n | (1n << 11n) | (vpIndex === 0 ? 1n << 8n : 0n);

/** Priority class of a vector or TPR (SDM §11.8.3.1): bits 7:4. */
export const priorityClass = (v: number): number => (v >> 4) & 0xf;
