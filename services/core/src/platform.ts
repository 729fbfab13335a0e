// core: what an execution engine (platform) supplies to a partition. The emulator uses the
// defaults (sparse RAM, heap overlay pages, OpenVMM-layout hypercall page executed by stub.ts);
// the KVM agent supplies memfd-backed RAM, overlay pages inside mapped guest memory (so they can
// be memslots), a hypercall page whose code exits to userspace, and a callback to re-map a VTL's
// view when overlays change. The core never does I/O itself.
import type { Vtl } from './vtl-array';
import type { RamTracking } from './ram-tracking';

/** Guest RAM as the core needs it. SparseMemory implements it. */
export interface GuestRam {
  readonly sizeBytes: bigint;
  /** A fresh buffer the caller owns (not a view of guest memory). */
  read(gpa: bigint, length: number): Buffer;
  /** All or nothing: a memory with a resident-RAM limit refuses a write whose new pages do not fit (HV_STATUS_INSUFFICIENT_MEMORY) before any byte lands. */
  write(gpa: bigint, data: Uint8Array): void;
  /** Pages that hold data (for snapshots, sparse accounting); platforms may return all mapped pages. */
  touchedPages(): number[];
  /** touchedPages() as a sorted Uint32Array, when the RAM can give it without the array of numbers. */
  touchedPagesSorted?(): Uint32Array;
  readonly pagesTouched: number;
  /**
   * Throws HV_STATUS_INSUFFICIENT_MEMORY when these writes would allocate beyond the service's
   * resident-RAM limit, before any of them is made (SparseMemory; RAM that maps the whole GPA space
   * has nothing left to allocate and omits it).
   */
  assertWritable?(writes: { gpa: bigint; data: Uint8Array }[]): void;
  /**
   * Write log and copy-on-write freezes for streamed and incremental snapshots (ram-tracking.ts): the
   * RAM calls its beforeWrite() before a page changes. A RAM without it can only be exported whole,
   * while nothing writes it.
   */
  readonly tracking?: RamTracking;
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
  /**
   * The partition reference time (TLFS timers.md; tlfs-overlays-synic.md §4.4), in 100 ns units,
   * for HV_X64_MSR_TIME_REF_COUNT and the synthetic timers (absent: the injected Clock's
   * referenceTime100ns from partition creation). With `tscPage`, the HV_REFERENCE_TSC_PAGE is
   * written valid (non-zero TscSequence, these TscScale/TscOffset) whenever HV_X64_MSR_REFERENCE_TSC
   * enables or moves it; the platform guarantees ((guestTsc * tscScale) >> 64) + tscOffset ==
   * now100ns(). Without `tscPage` the page keeps TscSequence = 0 (the guest uses the MSR).
   */
  referenceClock?: ReferenceClock;
  /**
   * Called whenever the set of synthetic-timer deadlines may have changed (an STIMER MSR written, a
   * timer fired, a held timer message retried at EOM or SynIC enable): the platform re-arms its one
   * host timer at stimerNextDeadline(p) and calls stimerExpire(p, now) when it fires (at once when
   * the deadline has passed). Called after the core's state is consistent; the hook may read it
   * but should not call stimerExpire synchronously from inside the hook.
   */
  onTimerChange?: () => void;
  /**
   * Raises an edge interrupt `vector` on VP `vpIndex` for VTL `vtl`'s APIC, exactly when the TLFS
   * says the SynIC raises one: a message newly placed in a SIM slot (posted, redelivered at EOM,
   * delivered when SCONTROL/SIMP are enabled), an event flag newly set, a SINT asserted by the
   * test device, a direct-mode synthetic timer. Never for a masked or polling SINT. `autoEoi`: the
   * SINT's AutoEOI bit (false for direct-mode timers): the platform performs the implicit EOI.
   */
  raiseInterrupt?: (vpIndex: number, vtl: Vtl, vector: number, opts: { autoEoi: boolean }) => void;
  /**
   * True while the platform's own interrupt controllers deliver the interrupts raiseInterrupt raises
   * (the KVM agent with a running guest: each (VP, VTL) vCPU's in-kernel LAPIC holds IRR, ISR and
   * TPR). The core then keeps no IRR of its own (rules/interrupts.ts) and asks interruptPending when
   * it re-evaluates (VtlReturn). Absent or false: the core's APIC model.
   */
  platformApic?: () => boolean;
  /** With platformApic: whether VTL `vtl` of VP `vpIndex` has an interrupt its LAPIC would deliver now. */
  interruptPending?: (vpIndex: number, vtl: Vtl) => boolean;
  /**
   * With platformApic: an interrupt was raised for a VTL of VP `vpIndex` above the one it runs, from
   * outside that VP's own instructions (another VP, a timer, a device). The platform stops the VP at an
   * instruction boundary, stores the running VTL's state into the core and calls deliverInterrupts(p,
   * vp), which makes the secure-interrupt switch; then it runs the VP's new active VTL.
   */
  onInterruptPending?: (vpIndex: number) => void;
  /**
   * HvCallStartVirtualProcessor started (or, like INIT, restarted) VP `vpIndex`: the core loaded the
   * target VTL's initial context and made the VP's highest enabled VTL active. A platform that runs
   * the guest's VPs (the KVM agent's guest session) makes that VP run from the core's state now.
   */
  onVpStart?: (vpIndex: number) => void;
}

/** The platform's partition reference time (PlatformHooks.referenceClock). */
export interface ReferenceClock {
  /** Reference time now, 100 ns units; monotonic, the same on every VP (vpIndex: who asks). */
  now100ns(vpIndex?: number): bigint;
  /** The reference TSC page parameters, when the guest's TSC can be scaled to the reference time. */
  tscPage?: { tscScale: bigint; tscOffset: bigint };
}
