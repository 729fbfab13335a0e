// core: what an execution engine (platform) supplies to a partition. The emulator uses the
// defaults (sparse RAM, heap overlay pages, OpenVMM-layout hypercall page executed by stub.ts);
// the KVM agent supplies memfd-backed RAM, overlay pages inside mapped guest memory (so they can
// be memslots), a hypercall page whose code exits to userspace, and a callback to re-map a VTL's
// view when overlays change. The core never does I/O itself.
import type { Vtl } from './vtl-array';

/** Guest RAM as the core needs it. SparseMemory implements it. */
export interface GuestRam {
  readonly sizeBytes: bigint;
  read(gpa: bigint, length: number): Buffer;
  write(gpa: bigint, data: Uint8Array): void;
  /** Pages that hold data (for snapshots, sparse accounting); platforms may return all mapped pages. */
  touchedPages(): number[];
  readonly pagesTouched: number;
  /**
   * Throws HV_STATUS_INSUFFICIENT_MEMORY when these writes would allocate beyond the service's
   * resident-RAM limit, before any of them is made (SparseMemory; RAM that maps the whole GPA space
   * has nothing left to allocate and omits it).
   */
  assertWritable?(writes: { gpa: bigint; data: Uint8Array }[]): void;
}

/** Bytes of a hypercall page and the offsets reported in HvRegisterVsmCodePageOffsets. */
export interface HypercallPageLayout {
  build(): Buffer;
  vtlCallOffset: number;
  vtlReturnOffset: number;
}

export interface PlatformHooks {
  /** Guest RAM (default: SparseMemory of the partition size). */
  ram?: GuestRam;
  /** Allocates the 4 KiB backing of an overlay page (default: Buffer.alloc). */
  allocOverlayPage?: () => Buffer;
  /** The hypercall page (default: OpenVMM layout with VMCALL/VMMCALL, see tlfs/vsm.ts). */
  hypercallPage?: HypercallPageLayout;
  /** Called after the overlays of a VTL's view changed (placed, moved, removed). */
  onViewChange?: (vtl: Vtl) => void;
  /**
   * Called after `protectingVtl` changed the protections it imposes on lower VTLs: its
   * EnableVtlProtection took effect (DefaultVtlProtectionMask now applies), or a
   * ModifyVtlProtectionMask changed page masks. A platform that enforces protections itself (the
   * KVM agent: memslots) re-maps the views of the VTLs below `protectingVtl`.
   */
  onProtectionChange?: (protectingVtl: Vtl) => void;
}
