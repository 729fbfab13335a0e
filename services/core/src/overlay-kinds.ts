// core: the overlay kinds (tlfs-overlays-synic.md §4.2-4.3), one row each. This table is the one
// place that says, per kind, which MSR (and HV_REGISTER_NAME) places it, whether it is per VP or one
// per VTL for the whole partition, whether the guest may write the page, and its MSR's layout
// (Enable bit, RsvdP bits, GPFN field, what a GPFN outside the GPA space does). Overlay sync, the
// MSR/register rules, snapshot validation and the vsm.v1 mapping all read it; adding a kind is one
// row here (plus the vsm.v1 enum value, which the exhaustive maps then demand).
import { HvMsr, HvMsrNames, HvOverlayEnableMsrLayout, HvX64MsrHypercallLayout } from './tlfs/msr';
import type { BitLayout } from './tlfs/layout';
import { HvRegisterName as R } from './tlfs/registers';

/** The bit layout of an overlay MSR (tlfs/msr.ts): at least Enable, RsvdP and the GPFN (tlfs-overlays-synic.md §4.3). */
export type OverlayMsrLayout = BitLayout<{ enable: boolean; rsvdP: number; gpfn: bigint }, bigint>;

/** Where a partition-wide kind's MSR value is kept per VTL (PartitionVtlState and the core snapshot's vtls[]). */
export type PartitionOverlayMsrField = 'hypercallMsr' | 'referenceTscMsr';

interface KindCommon {
  /** The synthetic MSR that places it (x64), and the HV_REGISTER_NAME holding the same value. */
  readonly msr: number;
  readonly register: number;
  /** Whether guest writes to the page fault (#GP) instead of landing. */
  readonly readOnly: boolean;
  /** The MSR's bit layout, and its Enable and RsvdP (preserved on write) bits from it. */
  readonly layout: OverlayMsrLayout;
  readonly enable: bigint;
  readonly rsvdP: bigint;
  /**
   * Who preserves the RsvdP bits: 'every-write': the register rule, for guest and host writes alike
   * (so a stored value never has them set); 'wrmsr': a guest WRMSR only (the management API stores
   * the value it is given).
   */
  readonly rsvdPKeptBy: 'every-write' | 'wrmsr';
  /** A GPFN beyond the GPA space: 'fault' (WRMSR #GP, SetVpRegisters HV_STATUS_INVALID_REGISTER_VALUE) or 'inaccessible' (accepted; nothing to see there). */
  readonly outsideGpa: 'fault' | 'inaccessible';
  /** A Locked bit: once set, the MSR refuses writes until reset. */
  readonly lockBit?: bigint;
  /** Enable reads back as 0 while the VTL's guest OS id is 0 (and clearing the id disables the page). */
  readonly enableNeedsGuestOsId: boolean;
  /** What a new page holds: the hypervisor's hypercall code (the platform's), or zeros. */
  readonly content: 'hypercall-code' | 'zeros';
  readonly tlfs: string;
}
/** One page per VTL for the whole partition; the MSR value is partition state (`field`). */
export interface PartitionOverlayKind extends KindCommon {
  readonly scope: 'partition';
  readonly field: PartitionOverlayMsrField;
  /** The field's name in vsm.v1.PartitionSnapshot.VtlState (for error paths). */
  readonly snapshotField: string;
}
/** One page per VP and VTL; the MSR value is a VTL-private register of the VP. */
export interface VpOverlayKind extends KindCommon {
  readonly scope: 'vp';
}
export type OverlayKindInfo = PartitionOverlayKind | VpOverlayKind;

/** An MSR layout with its Enable and RsvdP masks. */
const msrFormat = (layout: OverlayMsrLayout) => ({ layout, enable: layout.mask('enable'), rsvdP: layout.mask('rsvdP') });
const OVERLAY_ENABLE_MSR = msrFormat(HvOverlayEnableMsrLayout);

export const OVERLAY_KINDS = {
  hypercall: {
    msr: HvMsr.HV_X64_MSR_HYPERCALL,
    register: R.HvX64RegisterHypercall,
    scope: 'partition',
    field: 'hypercallMsr',
    snapshotField: 'hypercall_msr',
    // Read/execute for the guest (its code is the hypervisor's); bit 1 is Locked, 11:2 RsvdP.
    readOnly: true,
    ...msrFormat(HvX64MsrHypercallLayout),
    lockBit: HvX64MsrHypercallLayout.mask('locked'),
    rsvdPKeptBy: 'every-write',
    outsideGpa: 'fault',
    enableNeedsGuestOsId: true,
    content: 'hypercall-code',
    tlfs: 'tlfs-hypercalls.md §1.7; tlfs-overlays-synic.md §4.2',
  },
  'reference-tsc': {
    msr: HvMsr.HV_X64_MSR_REFERENCE_TSC,
    register: R.HvRegisterReferenceTsc,
    scope: 'partition',
    field: 'referenceTscMsr',
    snapshotField: 'reference_tsc_msr',
    // Read-only (OpenVMM maps it read-only). Its HV_REFERENCE_TSC_PAGE is written valid (TscSequence
    // != 0) when the platform gives TSC parameters (PlatformHooks.referenceClock.tscPage,
    // rules/time.ts); otherwise TscSequence stays 0, which tells the guest to use
    // HV_X64_MSR_TIME_REF_COUNT instead (§4.4): honest, the emulator has no TSC.
    readOnly: true,
    ...OVERLAY_ENABLE_MSR,
    rsvdPKeptBy: 'wrmsr',
    outsideGpa: 'inaccessible',
    enableNeedsGuestOsId: false,
    content: 'zeros',
    tlfs: 'tlfs-overlays-synic.md §4.2, §4.4',
  },
  'vp-assist': {
    msr: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
    register: R.HvRegisterVpAssistPage,
    scope: 'vp',
    readOnly: false,
    ...OVERLAY_ENABLE_MSR,
    rsvdPKeptBy: 'wrmsr',
    outsideGpa: 'inaccessible',
    enableNeedsGuestOsId: false,
    content: 'zeros',
    tlfs: 'tlfs-overlays-synic.md §4.2; tlfs-vsm.md §5 (HV_VP_ASSIST_PAGE)',
  },
  simp: {
    msr: HvMsr.HV_X64_MSR_SIMP,
    register: R.HvRegisterSipp,
    scope: 'vp',
    readOnly: false,
    ...OVERLAY_ENABLE_MSR,
    rsvdPKeptBy: 'wrmsr',
    outsideGpa: 'inaccessible',
    enableNeedsGuestOsId: false,
    content: 'zeros',
    tlfs: 'tlfs-overlays-synic.md §4.2, §5.1, §5.3',
  },
  siefp: {
    msr: HvMsr.HV_X64_MSR_SIEFP,
    register: R.HvRegisterSifp,
    scope: 'vp',
    readOnly: false,
    ...OVERLAY_ENABLE_MSR,
    rsvdPKeptBy: 'wrmsr',
    outsideGpa: 'inaccessible',
    enableNeedsGuestOsId: false,
    content: 'zeros',
    tlfs: 'tlfs-overlays-synic.md §4.2, §5.1, §5.6',
  },
} satisfies Record<string, OverlayKindInfo>;

export type OverlayKind = keyof typeof OVERLAY_KINDS;
export const OVERLAY_KIND_NAMES = Object.keys(OVERLAY_KINDS) as readonly OverlayKind[];

export function isOverlayKind(s: unknown): s is OverlayKind {
  return typeof s === 'string' && Object.hasOwn(OVERLAY_KINDS, s);
}
export function overlayKindInfo(kind: OverlayKind): OverlayKindInfo {
  return OVERLAY_KINDS[kind];
}

const BY_REGISTER = new Map<number, OverlayKind>(OVERLAY_KIND_NAMES.map((k) => [OVERLAY_KINDS[k].register, k]));
/** The overlay kind an HV_REGISTER_NAME (or, through msrToRegister, an MSR) places, if any. */
export function overlayKindOfRegister(name: number): OverlayKind | undefined {
  return BY_REGISTER.get(name);
}

/** The TLFS name of the MSR that places `kind` (HV_X64_MSR_HYPERCALL, ...). */
export function overlayMsrName(kind: OverlayKind): string {
  return HvMsrNames.get(OVERLAY_KINDS[kind].msr)!;
}

/** Whether an MSR value of `kind` enables its page. */
export function overlayEnabled(kind: OverlayKind, msrValue: bigint): boolean {
  return overlayKindInfo(kind).layout.unpack(msrValue).enable;
}
/** The GPA page number an MSR value of `kind` places its page at. */
export function overlayGpfn(kind: OverlayKind, msrValue: bigint): bigint {
  return overlayKindInfo(kind).layout.unpack(msrValue).gpfn;
}
