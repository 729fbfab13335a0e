/**
 * One KVM VM per enabled VTL of a partition. All of them map the same RAM memfd at GPA 0 and the
 * agent region above the partition's GPA space; each has its own memslot layout for its view:
 * the overlay pages of its VTL are 4 KiB memslots over RAM (read-only for the hypercall and
 * reference TSC pages), so the RAM page underneath stays untouched and reappears when the
 * overlay goes. Per-VP overlays (VP assist, SIMP, SIEFP) are seen only by their VP: the layout
 * is that of the VP that runs next, re-synced when another VP runs or the overlays change.
 * A VP has one vCPU per VTL; MSRs 0x40000000-0x400000FF exit to the agent in every VM.
 */
import type { Partition, Vtl } from '@vsm/core';
import { CpuidEntry, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, KvmSystem, KvmVcpu, KvmVm, PAGE_SIZE } from '../kvm';
import { AgentRegion } from './agent-region';
import { MemfdRam, OverlayPages } from './memory';

/** What a vCPU currently holds: the agent's environment at CPL0 or CPL3 (guest actions), or the guest's own state. */
export type VcpuMode = 'fresh' | 'agent' | 'agent-user' | 'guest';

export interface VpCpu {
  vcpu: KvmVcpu;
  vm: VtlVm;
  mode: VcpuMode;
  /** The last exit (I/O, MMIO, MSR) was not resumed: its completion is still pending in KVM. */
  pending: boolean;
}

/**
 * RAM is mapped as memslots of at most 1 GiB. KVM keeps per-memslot metadata proportional to its
 * size (with shadow paging: an rmap entry per 4 KiB page, ≈0.2 % of the slot), and placing an
 * overlay re-creates the slot it splits: with one slot per partition, an overlay change on a
 * 1 TiB partition re-allocated ≈2 GiB of kernel metadata and took ≈2.3 s; with 1 GiB slots it
 * costs what it costs on a 1 GiB partition.
 */
export const RAM_SLOT_BYTES = 1 << 30;

interface SlotState {
  offset: number;
  readOnly: boolean;
}

export class VtlVm {
  readonly vm: KvmVm;
  private readonly cpus = new Map<number, VpCpu>();
  /** Overlay memslots currently placed, by GPFN. */
  private readonly placed = new Map<bigint, SlotState>();
  /** VP whose per-VP overlays the layout shows (null: none yet). */
  private viewVp: number | null = null;
  /** Set by the core's onViewChange hook; cleared by syncView(). */
  dirty = true;
  /** Memslot changes made for overlays (for tests and cost accounting). */
  overlaySlotChanges = 0;

  constructor(
    system: KvmSystem,
    readonly vtl: Vtl,
    private readonly ram: MemfdRam,
    private readonly overlays: OverlayPages,
    private readonly agent: AgentRegion,
    private readonly cpuid: readonly CpuidEntry[],
  ) {
    this.vm = system.createVm();
    try {
      for (let off = 0; off < ram.memory.size; off += RAM_SLOT_BYTES) {
        this.vm.map({ gpa: BigInt(off), size: Math.min(RAM_SLOT_BYTES, ram.memory.size - off), memory: ram.memory, offset: off });
      }
      agent.mapInto(this.vm);
      this.vm.trapMsrs();
    } catch (e) {
      this.vm.close();
      throw e;
    }
  }

  /** The vCPU of VP `index` in this VTL (created on first use). */
  cpu(index: number): VpCpu {
    let c = this.cpus.get(index);
    if (!c) {
      const vcpu = this.vm.createVcpu(index);
      try {
        vcpu.setCpuid(this.cpuid);
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

  /** Makes the memslot layout show what VP `vpIndex` sees in this VTL (overlays on top of RAM). */
  syncView(p: Partition, vpIndex: number): void {
    if (!this.dirty && this.viewVp === vpIndex) return;
    const want = new Map<bigint, SlotState>();
    for (const o of p.overlays.list()) {
      // list() is in placement order: a later overlay on the same GPFN is on top.
      if (o.vtl !== this.vtl || (o.vpIndex !== null && o.vpIndex !== vpIndex)) continue;
      if ((o.gpfn + 1n) * BigInt(PAGE_SIZE) > this.ram.sizeBytes) continue; // beyond the GPA space: not accessible
      want.set(o.gpfn, { offset: this.overlays.offsetOf(o.page), readOnly: o.readOnly });
    }
    for (const gpfn of [...this.placed.keys()]) {
      if (want.has(gpfn)) continue;
      const gpa = gpfn * BigInt(PAGE_SIZE);
      this.vm.map({ gpa, size: PAGE_SIZE, memory: this.ram.memory, offset: Number(gpa) });
      this.placed.delete(gpfn);
      this.overlaySlotChanges++;
    }
    for (const [gpfn, w] of want) {
      const cur = this.placed.get(gpfn);
      if (cur && cur.offset === w.offset && cur.readOnly === w.readOnly) continue;
      this.vm.map({ gpa: gpfn * BigInt(PAGE_SIZE), size: PAGE_SIZE, memory: this.overlays.memory, offset: w.offset, readonly: w.readOnly });
      this.placed.set(gpfn, w);
      this.overlaySlotChanges++;
    }
    this.viewVp = vpIndex;
    this.dirty = false;
  }

  /** Whether a guest write at `gpa` would hit a read-only memslot in the current layout. */
  isReadOnly(gpa: bigint): boolean {
    return this.vm.lookup(gpa)?.readonly ?? false;
  }

  close(): void {
    this.cpus.clear();
    this.vm.close();
  }
}
