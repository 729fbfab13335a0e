/**
 * One KVM VM per enabled VTL of a partition. All of them map the same RAM memfd at GPA 0 and the
 * agent region above the partition's GPA space; each has its own memslot layout for its view:
 * - the protections the higher VTLs impose (view-layout.ts): no-write → read-only memslot,
 *   no-access → no memslot; runs of equal access coalesced, cut at 1 GiB;
 * - the overlay pages of its VTL as 4 KiB memslots on top (read-only for the hypercall and
 *   reference TSC pages), so the RAM page underneath stays untouched and reappears when the
 *   overlay goes. Per-VP overlays (VP assist, SIMP, SIEFP) are seen only by their VP: the layout
 *   is that of the VP that runs next, re-synced when another VP runs, the overlays change
 *   (onViewChange) or the protections change (onProtectionChange).
 * A VP has one vCPU per VTL; MSRs 0x40000000-0x400000FF exit to the agent in every VM.
 */
import type { Partition, Vtl } from '@vsm/core';
import { type CpuidEntry, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, type KvmSregs, type KvmSystem, type KvmVcpu, type KvmVm, PAGE_SIZE } from '../kvm';
import type { AgentRegion } from './agent-region';
import type { MemfdRam, OverlayPages } from './memory';
import type { RegisterShadow } from './registers';
import { type OverlaySlot, type PageAccess, type RestrictedRun, type ViewSlot, restrictedRuns, viewSlots } from './view-layout';

/** What a vCPU currently holds: the agent's environment at CPL0 or CPL3 (guest actions), or the guest's own state. */
export type VcpuMode = 'fresh' | 'agent' | 'agent-user' | 'guest';

export interface VpCpu {
  vcpu: KvmVcpu;
  vm: VtlVm;
  mode: VcpuMode;
  /** The last exit (I/O, MMIO, MSR) was not resumed: its completion is still pending in KVM. */
  pending: boolean;
  /**
   * A whole-guest run re-executes an instruction whose intercepted read the core has since
   * completed (ALLOW, SKIP with data, or a retry that passed): its first MMIO read exit inside
   * [gpa, gpa+data.length) gets these bytes instead of raising the intercept again.
   */
  replay?: { gpa: bigint; data: Buffer };
  /**
   * runVp's fast path (registers.ts RegisterShadow): what this vCPU holds in terms of the core's
   * register objects, while it is in guest mode for a whole-guest run. Unset = load everything.
   * Anything else that loads state into the vCPU (guest actions, a flush, a running guest's session) clears it.
   */
  shadow?: RegisterShadow;
  /**
   * The x87/SSE/AVX state (KVM_GET_XSAVE bytes, or KVM_GET_FPU where XSAVE is missing) this vCPU held
   * when it last stopped being the VP's running vCPU in runVp, or was last loaded with; unset = unknown.
   */
  fp?: Buffer;
  /**
   * kvm_sregs decoded at a refused access, with the sync-area bytes they came from: the next refused
   * access with the same bytes reads these instead of decoding again (read only: x86.ts's decoders).
   */
  accessSregs?: { bytes: Buffer; sregs: KvmSregs };
  /** The pending exit is the hypercall port's OUT at this RIP (its completion leaves a RIP that differs alone). */
  pendingOutRip?: bigint;
  /** The pending exit is a one-fragment MMIO write: KVM emulated the whole store before it exited, its completion does nothing. */
  pendingWriteDone?: boolean;
}

/**
 * RAM is mapped as memslots of at most 1 GiB. KVM keeps per-memslot metadata proportional to its
 * size (with shadow paging: an rmap entry per 4 KiB page, ≈0.2 % of the slot), and placing an
 * overlay re-creates the slot it splits: with one slot per partition, an overlay change on a
 * 1 TiB partition re-allocated ≈2 GiB of kernel metadata and took ≈2.3 s; with 1 GiB slots it
 * costs what it costs on a 1 GiB partition.
 */
export const RAM_SLOT_BYTES = 1 << 30;

/** Default budget of memslots per VTL VM for its view (KVM_CAP_NR_MEMSLOTS is 32764 here). */
export const DEFAULT_MEMSLOT_BUDGET = 4096;

/** How a VTL's VM is built for guests that run (see guest/README in the agent docs). */
export interface GuestExecutionOptions {
  /** KVM_CREATE_IRQCHIP before the vCPUs (LAPIC, IOAPIC, PIC in the kernel). */
  irqchip: boolean;
  /** CPUID leaves that replace the host's (the Hyper-V leaves 0x40000000-0x4000000A). */
  cpuid: readonly CpuidEntry[];
}

export class VtlVm {
  readonly vm: KvmVm;
  private readonly cpus = new Map<number, VpCpu>();
  /** VP whose per-VP overlays the layout shows (null: none yet). */
  private viewVp: number | null = null;
  /** Set by the core's onViewChange hook; cleared by syncView(). */
  dirty = true;
  /** Set by the core's onProtectionChange hook (a higher VTL changed protections); cleared by syncView(). */
  protectionsDirty = true;
  /** Partition.protectionChanges the restricted runs were computed at (a second guard besides the hook). */
  private protectionsAt = -1;
  private runs: RestrictedRun[] | undefined = [];
  /**
   * Whether the layout enforces the higher VTLs' protections. False when it would need more than
   * `memslotBudget` memslots: the VM then maps RAM without them and the backend answers this VTL's
   * memory actions through the core's model (and refuses whole-guest runs), saying why.
   */
  enforced = true;
  /** Why protections are not enforced (undefined when they are). */
  unenforcedReason: string | undefined;
  /** Memslot changes made for overlays and protections (for tests and cost accounting). */
  overlaySlotChanges = 0;
  /** Told of every memslot change counted in overlaySlotChanges (KvmHost.observer). */
  onSlotChanges: ((count: number) => void) | undefined;
  /** Layout syncs that changed memslots, and the time they took (µs), for the README's figures. */
  layoutSyncs = 0;
  layoutMicros = 0;

  constructor(
    system: KvmSystem,
    readonly vtl: Vtl,
    private readonly ram: MemfdRam,
    private readonly overlays: OverlayPages,
    agent: AgentRegion,
    private readonly cpuid: readonly CpuidEntry[],
    readonly memslotBudget = DEFAULT_MEMSLOT_BUDGET,
    /** Set for guests that run: every VP runs at once, so per-VP overlays are holes served per VP. */
    readonly execution?: GuestExecutionOptions,
  ) {
    this.vm = system.createVm();
    try {
      if (execution?.irqchip) {
        this.vm.createIrqchip();
        this.vm.setRealModePages();
      }
      for (let off = 0; off < ram.memory.size; off += RAM_SLOT_BYTES) {
        this.vm.map({ gpa: BigInt(off), size: Math.min(RAM_SLOT_BYTES, ram.memory.size - off), memory: ram.memory, offset: off });
      }
      agent.mapInto(this.vm);
      this.vm.trapMsrs(undefined, undefined, this.trappedMsrWrites, this.trappedMsrReads);
    } catch (e) {
      this.vm.close();
      throw e;
    }
  }

  /** The vCPU of VP `index` in this VTL if it was created. */
  existingCpu(index: number): VpCpu | undefined {
    return this.cpus.get(index);
  }

  /** The vCPU of VP `index` in this VTL (created on first use). */
  cpu(index: number): VpCpu {
    let c = this.cpus.get(index);
    if (!c) {
      const vcpu = this.vm.createVcpu(index);
      try {
        vcpu.setCpuid(this.execution ? mergeCpuid(this.cpuid, this.execution.cpuid) : this.cpuid);
        vcpu.setSyncRegs(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
      } catch (e) {
        vcpu.close();
        throw e;
      }
      c = { vcpu, vm: this, mode: 'fresh', pending: false };
      this.cpus.set(index, c);
    }
    return c;
  }

  /**
   * Makes the memslot layout show what VP `vpIndex` sees in this VTL: RAM with the protections of
   * the higher VTLs (read-only slots, holes; view-layout.ts), and this VTL's overlays on top (those
   * of the partition and those of VP `vpIndex`). Only the slots that differ are changed.
   */
  syncView(p: Partition, vpIndex: number): void {
    this.syncMsrFilter(p);
    const protectionsChanged = this.protectionsDirty || this.protectionsAt !== p.protectionChanges;
    if (!this.dirty && !protectionsChanged && (this.viewVp === vpIndex || (this.execution && this.viewVp !== null))) return;
    const t0 = process.hrtime.bigint();
    const pages = Number(this.ram.sizeBytes / BigInt(PAGE_SIZE));
    // Leave room for the agent region's slots.
    const budget = this.memslotBudget - this.agentSlots();
    if (protectionsChanged) {
      this.runs = restrictedRuns(
        p.protections.map((m) => m),
        this.vtl,
        pages,
        budget,
      );
      this.protectionsAt = p.protectionChanges;
      this.protectionsDirty = false;
    }
    const overlays = new Map<number, OverlaySlot>();
    const holes = new Set<number>();
    for (const o of p.overlays.list()) {
      // list() is in placement order: a later overlay on the same GPFN is on top.
      if (o.vtl !== this.vtl) continue;
      if (o.gpfn >= BigInt(pages)) continue; // beyond the GPA space: not accessible
      if (o.vpIndex !== null && this.execution) {
        holes.add(Number(o.gpfn)); // every VP runs: no single page can be mapped there
        continue;
      }
      if (o.vpIndex !== null && o.vpIndex !== vpIndex) continue;
      overlays.set(Number(o.gpfn), { gpfn: Number(o.gpfn), offset: this.overlays.offsetOf(o.page), readOnly: o.readOnly });
    }
    for (const gpfn of holes) overlays.set(gpfn, { gpfn, offset: 0, readOnly: false, hole: true });
    const ovs = [...overlays.values()].sort((a, b) => a.gpfn - b.gpfn);
    const slotPages = RAM_SLOT_BYTES / PAGE_SIZE;
    let slots = this.runs ? viewSlots(pages, slotPages, this.runs, ovs, budget) : undefined;
    if (slots) {
      this.enforced = true;
      this.unenforcedReason = undefined;
    } else {
      this.enforced = false;
      this.unenforcedReason = `VTL ${this.vtl}'s view would need more than ${this.memslotBudget} memslots with the protections of the higher VTLs (coalesced runs of equal access, 1 GiB slots); the agent maps it without them and answers its memory actions through the core's model`;
      slots = viewSlots(pages, slotPages, [], ovs)!;
    }
    slots = this.keepCuts(slots, budget);
    const changes = this.vm.setLayout(
      0n,
      this.ram.sizeBytes,
      slots.map((x) => ({
        gpa: x.gpa,
        size: x.size,
        memory: x.backing === 'ram' ? this.ram.memory : this.overlays.memory,
        offset: x.offset,
        readonly: x.readonly,
      })),
    );
    this.overlaySlotChanges += changes;
    if (changes > 0) this.onSlotChanges?.(changes);
    if (changes > 0) {
      this.layoutSyncs++;
      this.layoutMicros += Number(process.hrtime.bigint() - t0) / 1000;
    }
    this.viewVp = vpIndex;
    this.dirty = false;
  }

  /**
   * The canonical layout coalesces runs of equal access; the current one may be cut where an overlay
   * or a protection used to be. For each wanted RAM slot, this keeps the current cuts inside it when
   * that is cheaper: cutting costs an ioctl per piece that changes (plus a small charge per extra
   * slot it leaves), re-coalescing costs deleting every current piece and creating the whole slot.
   * Placing and removing a 4 KiB overlay (switching the VP a VM shows) then costs 2 ioctls instead
   * of re-creating the 1 GiB slot around it each time, while lifting protections that cut a slot
   * into many pieces gives the slot back. The extra slots stay within the budget.
   */
  private keepCuts(slots: ViewSlot[], budget: number): ViewSlot[] {
    const EXTRA_SLOT_COST = 0.75;
    const current = this.vm.mappings().filter((m) => m.gpa < this.ram.sizeBytes);
    const same = (a: ViewSlot, m: (typeof current)[number]) =>
      m.gpa === a.gpa &&
      m.size === a.size &&
      m.readonly === a.readonly &&
      m.memory === (a.backing === 'ram' ? this.ram.memory : this.overlays.memory) &&
      m.offset === a.offset;
    const out: ViewSlot[] = [];
    let i = 0;
    for (const x of slots) {
      const end = x.gpa + BigInt(x.size);
      if (x.backing !== 'ram') {
        out.push(x);
        continue;
      }
      while (i < current.length && current[i]!.gpa + BigInt(current[i]!.size) <= x.gpa) i++;
      const inside: (typeof current)[number][] = [];
      for (let j = i; j < current.length && current[j]!.gpa < end; j++) inside.push(current[j]!);
      if (inside.length <= 1 || inside.some((m) => m.gpa < x.gpa || m.gpa + BigInt(m.size) > end)) {
        out.push(x);
        continue;
      }
      const cuts = [...new Set(inside.flatMap((m) => [m.gpa, m.gpa + BigInt(m.size)]))].filter((c) => c > x.gpa && c < end).sort((a, b) => (a < b ? -1 : 1));
      const pieces: ViewSlot[] = [];
      let from = x.gpa;
      for (const c of [...cuts, end]) {
        pieces.push({ ...x, gpa: from, size: Number(c - from), offset: Number(from) });
        from = c;
      }
      const adds = pieces.filter((pc) => !inside.some((m) => same(pc, m))).length;
      const deletes = inside.filter((m) => !pieces.some((pc) => same(pc, m))).length;
      const keepCost = adds + deletes + EXTRA_SLOT_COST * (pieces.length - 1);
      const coalesceCost = 1 + inside.length;
      if (keepCost < coalesceCost) out.push(...pieces);
      else out.push(x);
    }
    return out.length > budget ? slots : out;
  }

  private agentSlots(): number {
    return this.vm.mappings().filter((m) => m.gpa >= this.ram.sizeBytes).length;
  }

  /** What a guest data access at `gpa` meets in the current layout: RAM/overlay read-write, read-only, or no memslot. */
  access(gpa: bigint): PageAccess {
    const m = this.vm.lookup(gpa);
    return !m ? 'none' : m.readonly ? 'ro' : 'rw';
  }

  /** Whether a guest write at `gpa` would hit a read-only memslot in the current layout. */
  isReadOnly(gpa: bigint): boolean {
    return this.vm.lookup(gpa)?.readonly ?? false;
  }

  /** Whether the layout lags behind the core's overlays or protections (syncView would change it). */
  needsSync(p: Partition): boolean {
    return this.dirty || this.protectionsDirty || this.protectionsAt !== p.protectionChanges || this.msrFilterLags(p);
  }

  // ---- secure MSR write intercepts of guests that run (issue #16) ---------------------------------
  //
  // The architectural MSRs whose WRMSR by this VTL a higher VTL intercepts (HvX64RegisterCrInterceptControl,
  // TLFS vsm.md "Secure Register Intercepts") are added to the VM's MSR filter, write only: such a write
  // exits to the agent (KVM_EXIT_X86_WRMSR), which lets the core decide (GuestRunner). Every other MSR
  // write stays in KVM. Only VMs of guests that run: guest actions reach the core without KVM.

  /** The MSRs whose writes / reads the filter traps besides the Hyper-V range (ascending). */
  trappedMsrWrites: readonly number[] = [];
  trappedMsrReads: readonly number[] = [];
  /** MSR filter updates (KVM_X86_SET_MSR_FILTER after the first). */
  msrFilterUpdates = 0;

  /** Whether a WRMSR of `msr` exits because a higher VTL intercepts it. */
  trapsMsrWrite(msr: number): boolean {
    return this.trappedMsrWrites.includes(msr);
  }

  /** Whether an RDMSR of `msr` exits because a higher VTL intercepts it. */
  trapsMsrRead(msr: number): boolean {
    return this.trappedMsrReads.includes(msr);
  }

  private msrFilterLags(p: Partition): boolean {
    if (!this.execution || this.vtl === 2) return false;
    return !sameList(p.msrWritesInterceptedFor(this.vtl), this.trappedMsrWrites) || !sameList(p.msrReadsInterceptedFor(this.vtl), this.trappedMsrReads);
  }

  /** Makes the MSR filter trap exactly the accesses the higher VTLs intercept now. */
  private syncMsrFilter(p: Partition): void {
    if (!this.msrFilterLags(p)) return;
    const writes = p.msrWritesInterceptedFor(this.vtl);
    const reads = p.msrReadsInterceptedFor(this.vtl);
    this.vm.trapMsrs(undefined, undefined, writes, reads);
    this.trappedMsrWrites = writes;
    this.trappedMsrReads = reads;
    this.msrFilterUpdates++;
  }

  /** Number of memslots of the VM (view plus agent region). */
  get slotCount(): number {
    return this.vm.slotCount;
  }

  close(): void {
    this.cpus.clear();
    this.vm.close();
  }
}

/** The host's CPUID with the leaves of `extra` replacing (or adding to) those with the same function and index. */
export function mergeCpuid(host: readonly CpuidEntry[], extra: readonly CpuidEntry[]): CpuidEntry[] {
  const key = (e: CpuidEntry) => `${e.function}:${e.index}`;
  const replaced = new Set(extra.map(key));
  return [...host.filter((e) => !replaced.has(key(e))), ...extra];
}

const sameList = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((m, i) => m === b[i]);
