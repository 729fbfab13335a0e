// tlfs layer: Hyper-V synthetic MSR numbers and bit layouts (tlfs-intercepts.md §7.1;
// HV_X64_MSR_HYPERCALL: tlfs-hypercalls.md §1.7; overlay-enable format: tlfs-overlays-synic.md §4.3;
// SynIC MSRs: tlfs-overlays-synic.md §5.1). The MSR formats are bit layouts (./layout.ts); the
// constants the model uses are read from them.
import { bigBits, bitfield, bits, flag } from './layout';

export const HvMsr = {
  HV_X64_MSR_GUEST_OS_ID: 0x40000000,
  HV_X64_MSR_HYPERCALL: 0x40000001,
  HV_X64_MSR_VP_INDEX: 0x40000002,
  HV_X64_MSR_RESET: 0x40000003,
  HV_X64_MSR_VP_RUNTIME: 0x40000010,
  HV_X64_MSR_TIME_REF_COUNT: 0x40000020,
  HV_X64_MSR_REFERENCE_TSC: 0x40000021,
  HV_X64_MSR_TSC_FREQUENCY: 0x40000022,
  HV_X64_MSR_APIC_FREQUENCY: 0x40000023,
  HV_X64_MSR_VP_ASSIST_PAGE: 0x40000073,
  HV_X64_MSR_SCONTROL: 0x40000080,
  HV_X64_MSR_SVERSION: 0x40000081,
  HV_X64_MSR_SIEFP: 0x40000082,
  HV_X64_MSR_SIMP: 0x40000083,
  HV_X64_MSR_EOM: 0x40000084,
  HV_X64_MSR_SINT0: 0x40000090,
  HV_X64_MSR_SINT15: 0x4000009f,
  // Synthetic timers (tlfs-intercepts.md §7.1; TLFS timers.md): CONFIG/COUNT pairs, 4 per VP per VTL.
  HV_X64_MSR_STIMER0_CONFIG: 0x400000b0,
  HV_X64_MSR_STIMER0_COUNT: 0x400000b1,
  HV_X64_MSR_STIMER1_CONFIG: 0x400000b2,
  HV_X64_MSR_STIMER1_COUNT: 0x400000b3,
  HV_X64_MSR_STIMER2_CONFIG: 0x400000b4,
  HV_X64_MSR_STIMER2_COUNT: 0x400000b5,
  HV_X64_MSR_STIMER3_CONFIG: 0x400000b6,
  HV_X64_MSR_STIMER3_COUNT: 0x400000b7,
} as const;

/** Every synthetic MSR named above, number -> TLFS name, with SINT0..SINT15 one by one (for parsing and display). */
export const HvMsrNames: ReadonlyMap<number, string> = new Map<number, string>([
  ...Object.entries(HvMsr)
    .filter(([name]) => !name.startsWith('HV_X64_MSR_SINT'))
    .map(([name, msr]) => [msr, name] as [number, string]),
  ...Array.from({ length: 16 }, (_, i) => [HvMsr.HV_X64_MSR_SINT0 + i, `HV_X64_MSR_SINT${i}`] as [number, string]),
]);

/** HV_X64_MSR_HYPERCALL (tlfs-hypercalls.md §1.7; overlay-enable format, tlfs-overlays-synic.md §4.3). */
export const HvX64MsrHypercallLayout = bitfield('HV_X64_MSR_HYPERCALL', 64, {
  enable: flag(0), // Enable
  locked: flag(1), // Locked
  rsvdP: bits(11, 2), // RsvdP: preserved on write
  gpfn: bigBits(63, 12), // HypercallGPA (page number)
});
export const HV_X64_MSR_HYPERCALL_ENABLE = HvX64MsrHypercallLayout.mask('enable');
export const HV_X64_MSR_HYPERCALL_LOCKED = HvX64MsrHypercallLayout.mask('locked');
/** Bits 11:2 RsvdP: preserved on write. */
export const HV_X64_MSR_HYPERCALL_RSVDP = HvX64MsrHypercallLayout.mask('rsvdP');

/** Overlay-enable MSR format: VP_ASSIST_PAGE, SIMP, SIEFP, REFERENCE_TSC (tlfs-overlays-synic.md §4.3). */
export const HvOverlayEnableMsrLayout = bitfield('overlay-enable MSR', 64, {
  enable: flag(0), // Enable
  rsvdP: bits(11, 1), // RsvdP
  gpfn: bigBits(63, 12), // GPA page number
});
export const HV_OVERLAY_ENABLE = HvOverlayEnableMsrLayout.mask('enable');
export const HV_OVERLAY_RSVDP = HvOverlayEnableMsrLayout.mask('rsvdP');
export const gpfnOf = (msrValue: bigint): bigint => HvOverlayEnableMsrLayout.unpack(msrValue).gpfn;

/** HV_X64_MSR_SVERSION reads as 1 (SynIC version 1). */
export const HV_SYNIC_VERSION = 1n;
/** HV_X64_MSR_SCONTROL (tlfs-overlays-synic.md §5.1); 63:1 RsvdP. */
export const HvSynicScontrolLayout = bitfield('HV_X64_MSR_SCONTROL', 64, {
  enable: flag(0), // Enable
});
export const HV_SCONTROL_ENABLE = HvSynicScontrolLayout.mask('enable');
/** HV_X64_MSR_SINTx (tlfs-overlays-synic.md §5.1); 15:8 and 63:19 RsvdP. Reset value: masked. */
export const HvSynicSintLayout = bitfield('HV_X64_MSR_SINTx', 64, {
  vector: bits(7, 0), // Vector
  masked: flag(16), // Masked
  autoEoi: flag(17), // AutoEoi
  polling: flag(18), // Polling
});
export const HV_SINT_MASKED = HvSynicSintLayout.mask('masked');

/** Synthetic timers per VP (per VTL under VSM, tlfs-overlays-synic.md §5.9): HV_SYNIC_STIMER_COUNT. */
export const HV_SYNIC_STIMER_COUNT = 4;
/**
 * HV_X64_MSR_STIMERx_CONFIG (tlfs-intercepts.md §7.1 "STIMER config"; TLFS timers.md; Linux
 * hv_stimer_config): 15:13 and 63:20 RsvdZ (a write with them set #GPs).
 */
export const HvStimerConfigLayout = bitfield('HV_X64_MSR_STIMERx_CONFIG', 64, {
  enable: flag(0), // Enable
  periodic: flag(1), // Periodic
  lazy: flag(2), // Lazy
  autoEnable: flag(3), // AutoEnable
  apicVector: bits(11, 4), // ApicVector (DirectMode)
  directMode: flag(12), // DirectMode
  sintx: bits(19, 16), // SINTx (message mode)
});
export type HvStimerConfig = ReturnType<typeof HvStimerConfigLayout.unpack>;
export const HV_STIMER_ENABLE = HvStimerConfigLayout.mask('enable');
/** The MSR of timer `index`'s CONFIG (COUNT is the next one). */
export const stimerConfigMsr = (index: number): number => HvMsr.HV_X64_MSR_STIMER0_CONFIG + 2 * index;
/** Timer index and register of a STIMER MSR, or undefined for any other MSR. */
export function stimerMsr(msr: number): { index: number; reg: 'config' | 'count' } | undefined {
  const off = msr - HvMsr.HV_X64_MSR_STIMER0_CONFIG;
  if (off < 0 || off >= 2 * HV_SYNIC_STIMER_COUNT) return undefined;
  return { index: off >> 1, reg: (off & 1) === 0 ? 'config' : 'count' };
}

/** Synthetic MSR -> HV_REGISTER_NAME that holds its value. */
export const msrToRegister: ReadonlyMap<number, number> = new Map([
  [HvMsr.HV_X64_MSR_GUEST_OS_ID, 0x00090002],
  [HvMsr.HV_X64_MSR_HYPERCALL, 0x00090001],
  [HvMsr.HV_X64_MSR_VP_INDEX, 0x00090003],
  [HvMsr.HV_X64_MSR_TIME_REF_COUNT, 0x00090004],
  [HvMsr.HV_X64_MSR_VP_ASSIST_PAGE, 0x00090013],
  [HvMsr.HV_X64_MSR_REFERENCE_TSC, 0x00090017],
  [HvMsr.HV_X64_MSR_SCONTROL, 0x000a0010],
  [HvMsr.HV_X64_MSR_SVERSION, 0x000a0011],
  [HvMsr.HV_X64_MSR_SIEFP, 0x000a0012],
  [HvMsr.HV_X64_MSR_SIMP, 0x000a0013],
  [HvMsr.HV_X64_MSR_EOM, 0x000a0014],
  ...Array.from({ length: 16 }, (_, i) => [HvMsr.HV_X64_MSR_SINT0 + i, 0x000a0000 + i] as [number, number]),
]);

/** Constant read-only frequencies reported by the emulator (100 MHz reference clock). */
export const HV_TSC_FREQUENCY = 1_000_000_000n;
export const HV_APIC_FREQUENCY = 200_000_000n;
