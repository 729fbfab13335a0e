// tlfs layer: the local-APIC registers each VTL of a VP has on its own (tlfs-vsm.md §9.1: "local APIC
// registers including CR8/TPR (each VTL has its own local APIC)"; the synthetic MSRs
// HV_X64_MSR_EOI/ICR/TPR are private per VTL too).
//   Synthetic: TLFS "Synthetic MSRs" (HV_X64_MSR_EOI 0x40000070, HV_X64_MSR_ICR 0x40000071,
//   HV_X64_MSR_TPR 0x40000072), the same numbers as Linux include/hyperv/hvgdk_mini.h
//   (HV_X64_MSR_EOI/ICR/TPR) and OpenVMM hvdef (HV_X64_MSR_EOI/ICR/TPR).
//   Architectural: Intel SDM Vol. 3A §11.4.4 IA32_APIC_BASE (bit 8 BSP, bit 10 EXTD = x2APIC mode,
//   bit 11 EN = APIC global enable, 51:12 APIC base), §11.12.1.2 x2APIC MSR addresses (0x808 TPR,
//   0x80B EOI, 0x830 ICR), §11.12.9 the 64-bit ICR, §11.8.3.1 task and processor priorities (an interrupt is deliverable
//   when its priority class, vector[7:4], is above the task-priority class, TPR[7:4]).
import { bitfield, bigBits, bits, flag } from './layout';

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

/**
 * The interrupt command register as a 64-bit MSR (x2APIC ICR 0x830, SDM §11.12.9; HV_X64_MSR_ICR has
 * the same format, TLFS "Synthetic MSRs"): bits 13, 16-17 and 20-31 reserved (a write with them set
 * #GPs in x2APIC mode); Destination is the target's 32-bit APIC id (0xFFFFFFFF: broadcast).
 */
export const ApicIcrLayout = bitfield('ICR', 64, {
  vector: bits(7, 0), // Vector
  deliveryMode: bits(10, 8), // 000 Fixed, 010 SMI, 100 NMI, 101 INIT, 110 Start-up
  logical: flag(11), // Destination Mode (1 = logical)
  deliveryStatus: flag(12), // Delivery Status (read-only; reserved on x2APIC)
  level: flag(14), // Level
  triggerLevel: flag(15), // Trigger Mode (1 = level)
  shorthand: bits(19, 18), // 00 none, 01 self, 10 all including self, 11 all excluding self
  destination: bigBits(63, 32), // Destination (x2APIC id)
});
export const APIC_ICR_DEFINED = ApicIcrLayout.definedMask & ~ApicIcrLayout.mask('deliveryStatus');
export const APIC_ICR_BROADCAST = 0xffff_ffffn;

/** Priority class of a vector or TPR (SDM §11.8.3.1): bits 7:4. */
export const priorityClass = (v: number): number => (v >> 4) & 0xf;
