// core: a partition's VSM state: virtual processors, VTLs with their private/shared processor
// state (tlfs-vsm.md §9), VSM registers (§3), synthetic MSRs (tlfs-intercepts.md §7.1), overlay
// pages (tlfs-overlays-synic.md §4) and guest memory. No I/O: the service and platforms drive it.
import { SparseMemory, PAGE_SIZE } from './memory';
import { GuestRam, PlatformHooks } from './platform';
import { ProtectionMap, normalizeMapFlags } from './protections';
import { PostResult, Synic, SynicView } from './synic';
import { InterceptAction, InterceptBroker, InterceptRoute } from './intercepts';
import type { PendingAccess, ResumedAccess } from './access';
import type { GuestEngine } from './engine';
import { OverlayKind, OverlayManager } from './overlays';
import { Vtl, VtlArray, VTLS, isVtl } from './vtl-array';
import { HvError, HvStatus, hvFail } from './tlfs/status';
import {
  HvRegisterName as R,
  Reg128,
  RegisterInfo,
  SegmentAttr,
  allRegisters,
  reg64,
  registerInfo,
  segmentDpl,
  segmentToReg128,
  tableToReg128,
} from './tlfs/registers';
import {
  HV_APIC_FREQUENCY,
  HV_OVERLAY_ENABLE,
  HV_OVERLAY_RSVDP,
  HV_SCONTROL_ENABLE,
  HV_SINT_MASKED,
  HV_SYNIC_VERSION,
  HV_TSC_FREQUENCY,
  HV_X64_MSR_HYPERCALL_ENABLE,
  HV_X64_MSR_HYPERCALL_LOCKED,
  HV_X64_MSR_HYPERCALL_RSVDP,
  HvMsr,
  gpfnOf,
  msrToRegister,
} from './tlfs/msr';
import {
  HV_MAX_SUPPORTED_VTL,
  HvInitialVpContext,
  HvVpAssistPage,
  HvVtlEntryReason,
  VSM_CODE_PAGE_OFFSETS_64,
  VSM_PARTITION_CONFIG_DEFINED,
  VSM_VINA_DEFINED,
  VSM_VP_SECURE_CONFIG_DEFINED,
  X64Vendor,
  buildHypercallPage,
  decodeVsmPartitionConfig,
  encodeVsmCapabilities,
  encodeVsmPartitionConfig,
  encodeVsmPartitionStatus,
  encodeVsmVpStatus,
  encodeVsmCodePageOffsets,
} from './tlfs/vsm';

export type Architecture = 'x64' | 'arm64';

export interface PartitionSpec {
  id: string;
  architecture: Architecture;
  vpCount: number;
  memoryBytes: bigint;
  maximumVtl: number;
  labels: Record<string, string>;
  vendor?: X64Vendor;
  /** Execution-engine hooks (KVM agent); the emulator uses the defaults. */
  platform?: PlatformHooks;
}

/** Exceptions a guest action can raise instead of completing (x86 vectors). */
export const X64Exception = { BP: 3, UD: 6, GP: 13 } as const;
export type X64ExceptionVector = (typeof X64Exception)[keyof typeof X64Exception];

export interface VtlSwitchEvent {
  fromVtl: Vtl;
  toVtl: Vtl;
  entryReason: number;
  isReturn: boolean;
  fastReturn: boolean;
}

/** The result of a guest action: completed, or an exception injected into the guest. */
export interface GuestOutcome {
  exception?: X64ExceptionVector;
  activeVtl: Vtl;
  vtlSwitch?: VtlSwitchEvent;
  /** A VtlReturn into a VTL with an intercepted access: what became of it (retried or skipped). */
  resumedAccess?: ResumedAccess;
}

export interface VtlTransitionRecord extends VtlSwitchEvent {
  sequence: bigint;
  vpIndex: number;
  timeUnixUs: bigint;
}

/** Per-VP, per-VTL state: everything the TLFS makes private to a VTL. */
class VpVtlState {
  enabled = false;
  readonly regs = new Map<number, Reg128>();
  entryReason: number = HvVtlEntryReason.HvVtlEntryReserved;
  /** Return address of a CALL into the hypercall page that switched VTL mid-stub (see stub.ts). */
  pendingStubReturn: bigint | null = null;
  vina = 0n;
  /** An access of this VTL that intercepted to a higher VTL and waits to be retried or skipped. */
  pendingAccess: PendingAccess | null = null;
  /** arm64 partitions: PC and CPSR of this VTL (PC/PSTATE are VTL-private, tlfs-vsm.md §9.2). The
   *  emulator models no other arm64 register; CPSR starts as EL1h with DAIF masked. */
  arm64Pc = 0n;
  arm64Cpsr = 0x3c5n;
  /** This VTL's SynIC on this VP (tlfs-overlays-synic.md §5.9: private per VTL). */
  readonly synic = new Synic();
  /** HvRegisterVsmVpSecureConfigVtlN owned by this VTL, indexed by lower VTL N. */
  readonly secureConfig: bigint[] = [0n, 0n, 0n];
}

/** Per-partition, per-VTL state. */
class PartitionVtlState {
  enabled = false;
  mbec = false;
  /** HvRegisterVsmPartitionConfig (VTL > 0). ZeroMemoryOnReset defaults on; default mask RWX(+UMX). */
  config = encodeVsmPartitionConfig({ enableVtlProtection: false, defaultVtlProtectionMask: 0xf, zeroMemoryOnReset: true, denyLowerVtlStartup: false, interceptVpStartup: false });
  /** HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL: partition-wide, one instance per VTL. */
  guestOsId = 0n;
  hypercallMsr = 0n;
  /** HV_X64_MSR_REFERENCE_TSC: partition-wide, per VTL under VSM (tlfs-overlays-synic.md §4.2). */
  referenceTscMsr = 0n;
}

export class VirtualProcessor {
  activeVtl: Vtl = 0;
  readonly shared = new Map<number, Reg128>();
  readonly vtls = new VtlArray(() => new VpVtlState());
  /** RAX/RCX at the CALL into the hypercall page, while its stub runs (see stub.ts). */
  callSiteRaxRcx: [bigint, bigint] | undefined;
  /** Intercept (route 'monitor') this VP is suspended on, waiting for a monitor's answer. */
  suspendedOn: bigint | null = null;
  suspendedAccess: PendingAccess | null = null;
  constructor(readonly index: number) {}

  get enabledVtlSet(): number {
    return this.vtls.map((s, v) => (s.enabled ? 1 << v : 0)).reduce((a, b) => a | b, 0);
  }
  /** Next higher VTL enabled on this VP (VtlCall target), if any. */
  nextHigherVtl(): Vtl | undefined {
    return VTLS.find((v) => v > this.activeVtl && this.vtls.get(v).enabled);
  }
  /** Next lower VTL enabled on this VP (VtlReturn target), if any. */
  nextLowerVtl(): Vtl | undefined {
    return [...VTLS].reverse().find((v) => v < this.activeVtl && this.vtls.get(v).enabled);
  }
}

/** 64-bit long-mode state VPs start in (as if firmware had handed off): CPL0, paging on. */
export function longModeContext(): HvInitialVpContext {
  const code = { base: 0n, limit: 0xffffffff, selector: 0x08, attributes: 0xb | (1 << 4) | SegmentAttr.Present | SegmentAttr.Long | SegmentAttr.Granularity };
  const data = { base: 0n, limit: 0xffffffff, selector: 0x10, attributes: 0x3 | (1 << 4) | SegmentAttr.Present | SegmentAttr.Default | SegmentAttr.Granularity };
  return {
    rip: 0n, rsp: 0n, rflags: 0x2n,
    cs: code, ds: data, es: data, fs: data, gs: data, ss: data,
    tr: { base: 0n, limit: 0xffff, selector: 0x18, attributes: 0xb | SegmentAttr.Present },
    ldtr: { base: 0n, limit: 0xffff, selector: 0, attributes: 0x2 | SegmentAttr.Present },
    idtr: { limit: 0xfff, base: 0n }, gdtr: { limit: 0x1f, base: 0n },
    efer: 0xd01n, // SCE | LME | LMA | NXE
    cr0: 0x80050033n, // PE | MP | ET | NE | WP | AM | PG
    cr3: 0n, cr4: 0x6a0n, // PAE | PGE | OSFXSR | OSXMMEXCPT
    msrCrPat: 0x0007040600070406n,
  };
}

export const CR0_PE = 1n;
const NON_RAM = 'non-ram';

export class Partition {
  readonly memory: GuestRam;
  readonly vps: VirtualProcessor[];
  readonly vtls = new VtlArray(() => new PartitionVtlState());
  readonly overlays: OverlayManager;
  readonly vendor: X64Vendor;
  createTimeUnixMs = Date.now();
  state: 'active' | 'crashed' = 'active';
  /** Why the partition crashed (monitor CRASH answer, deadline policy, internal error). */
  crashReason = '';
  /** Set once the partition was deleted: everything still attached to it must let go. */
  deleted = false;
  /** What executes this partition's guest actions (set by its platform; default: engine.ts emulatedEngine). */
  engine: GuestEngine | undefined;
  /** Deadline policy for intercepts a monitor must answer (SetInterceptRoute); unset = wait. */
  interceptDeadline: { ms: number; action: InterceptAction } | undefined;
  private readonly endListeners = new Set<(why: 'crashed' | 'deleted') => void>();
  /** Protection map of each protecting VTL; null until its EnableVtlProtection is set. */
  readonly protections = new VtlArray<ProtectionMap | null>(() => null);
  readonly intercepts = new InterceptBroker();
  interceptRoute: InterceptRoute = 'vtl';
  /** Internal counters (exported for snapshots only). */
  protectionChanges = 0;
  transitionSeq = 0n;
  private readonly transitionListeners = new Set<(t: VtlTransitionRecord) => void>();
  private readonly bootTime = process.hrtime.bigint();

  constructor(readonly spec: PartitionSpec) {
    this.memory = spec.platform?.ram ?? new SparseMemory(spec.memoryBytes);
    if (this.memory.sizeBytes !== spec.memoryBytes) throw new Error('platform RAM size differs from the partition size');
    this.vendor = spec.vendor ?? 'amd';
    this.overlays = new OverlayManager(spec.platform?.allocOverlayPage, spec.platform?.onViewChange);
    this.vps = Array.from({ length: spec.vpCount }, (_, i) => new VirtualProcessor(i));
    this.vtls.get(0).enabled = true;
    for (const vp of this.vps) {
      vp.vtls.get(0).enabled = true;
      this.loadInitialContext(vp, 0, longModeContext());
      // SINTx reset value is "masked" (tlfs-overlays-synic.md §5.1).
      for (let i = 0; i < 16; i++) vp.vtls.get(0).regs.set(R.HvRegisterSint0 + i, reg64(HV_SINT_MASKED));
    }
  }

  get id(): string {
    return this.spec.id;
  }
  /** Generation of the memory view (seed 001): bumped by every overlay or protection change. */
  get viewGeneration(): number {
    return this.overlays.generation + this.protectionChanges;
  }
  get maximumVtl(): Vtl {
    return this.spec.maximumVtl as Vtl;
  }
  get enabledVtlSet(): number {
    return this.vtls.map((s, v) => (s.enabled ? 1 << v : 0)).reduce((a, b) => a | b, 0);
  }
  get mbecEnabledVtlSet(): number {
    return this.vtls.map((s, v) => (s.mbec ? 1 << v : 0)).reduce((a, b) => a | b, 0);
  }

  vp(index: number): VirtualProcessor {
    const vp = Number.isInteger(index) ? this.vps[index] : undefined;
    if (!vp) hvFail(HvStatus.HV_STATUS_INVALID_VP_INDEX, `VP index ${index} does not exist (vp_count ${this.vps.length})`);
    return vp;
  }

  assertActive(): void {
    if (this.deleted) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${this.id} was deleted`);
    if (this.state !== 'active') hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `partition ${this.id} is ${this.state}${this.crashReason ? ` (${this.crashReason})` : ''}`);
  }

  /**
   * The rule every guest action obeys first (both engines): the partition is active and the VP is
   * not suspended on a monitor intercept (it is stopped at the faulting instruction until answered).
   */
  assertVpCanAct(vp: VirtualProcessor): void {
    this.assertActive();
    if (vp.suspendedOn !== null) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is suspended on intercept ${vp.suspendedOn}; answer it first`);
  }

  /** Called once when the partition crashes or is deleted (streams end, waiters wake). */
  onEnd(fn: (why: 'crashed' | 'deleted') => void): () => void {
    this.endListeners.add(fn);
    return () => this.endListeners.delete(fn);
  }

  /**
   * Stops the partition: every pending intercept is resolved as crashed (its waiter wakes with that
   * outcome, not another's), suspended VPs are released, streams are told. Idempotent.
   */
  crash(reason: string): void {
    if (this.state === 'crashed' || this.deleted) return;
    this.state = 'crashed';
    this.crashReason = reason;
    this.releasePending();
    this.notifyEnd('crashed');
  }

  /** The partition was deleted: waiters wake, streams end; nothing reaches it afterwards. */
  markDeleted(): void {
    if (this.deleted) return;
    this.deleted = true;
    this.releasePending();
    this.notifyEnd('deleted');
    this.transitionListeners.clear();
    this.intercepts.closeListeners();
  }

  private releasePending(): void {
    for (const rec of [...this.intercepts.pending.values()]) {
      const vp = this.vps[rec.vpIndex];
      if (vp && vp.suspendedOn === rec.id) {
        vp.suspendedOn = null;
        vp.suspendedAccess = null;
      }
      this.intercepts.markAnswered(rec.id, { status: 'crashed' });
    }
  }

  private notifyEnd(why: 'crashed' | 'deleted'): void {
    for (const l of [...this.endListeners]) l(why);
    this.endListeners.clear();
  }

  // ---- VTL transitions -------------------------------------------------------------------------

  onTransition(fn: (t: VtlTransitionRecord) => void): () => void {
    this.transitionListeners.add(fn);
    return () => this.transitionListeners.delete(fn);
  }

  /** Switches the VP's active VTL and records the transition. */
  switchVtl(vp: VirtualProcessor, to: Vtl, entryReason: number, isReturn: boolean, fastReturn = false): VtlSwitchEvent {
    const ev: VtlSwitchEvent = { fromVtl: vp.activeVtl, toVtl: to, entryReason, isReturn, fastReturn };
    vp.activeVtl = to;
    if (!isReturn) {
      vp.vtls.get(to).entryReason = entryReason;
      // HV_VP_VTL_CONTROL.EntryReason of the entered VTL's VP assist page (tlfs-vsm.md §5.1).
      const assist = this.overlays.find('vp-assist', to, vp.index);
      if (assist) assist.page.writeUInt32LE(entryReason, HvVpAssistPage.EntryReason);
    }
    const rec: VtlTransitionRecord = { ...ev, sequence: ++this.transitionSeq, vpIndex: vp.index, timeUnixUs: BigInt(Date.now()) * 1000n };
    for (const l of this.transitionListeners) l(rec);
    return ev;
  }

  // ---- VTL enablement (tlfs-vsm.md §4, tlfs-hypercalls.md §2.4-2.5) -----------------------------

  /**
   * HvCallEnablePartitionVtl. `caller` is the calling VTL for guest calls (self-enablement rules
   * apply) or 'host' for the management API (the parent is unrestricted by caller rules).
   */
  enablePartitionVtl(caller: Vtl | 'host', targetVtl: number, flags: number): void {
    this.assertActive();
    if ((flags & ~0x1) !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unsupported HV_ENABLE_PARTITION_VTL_FLAGS 0x${flags.toString(16)}`);
    if (!isVtl(targetVtl) || targetVtl === 0 || targetVtl > this.maximumVtl) {
      // OpenHCL: unsupported target VTL -> ACCESS_DENIED (tlfs-hypercalls.md §2.4).
      hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${targetVtl} is not available (partition maximum VTL ${this.maximumVtl})`);
    }
    if (this.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${targetVtl} is already enabled for the partition`);
    if (caller !== 'host' && targetVtl > caller) {
      // A VTL may enable a higher target only if it is the highest enabled VTL below that target.
      const highestBelow = Math.max(...VTLS.filter((v) => v < targetVtl && this.vtls.get(v).enabled));
      if (caller !== highestBelow) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} is not the highest enabled VTL below VTL ${targetVtl}`);
    }
    const s = this.vtls.get(targetVtl);
    s.enabled = true;
    s.mbec = (flags & 1) !== 0;
  }

  /** HvCallEnableVpVtl. */
  enableVpVtl(caller: Vtl | 'host', vpIndex: number, targetVtl: number, ctx: HvInitialVpContext, callerVp?: number): void {
    this.assertActive();
    if (!isVtl(targetVtl) || targetVtl === 0 || targetVtl > this.maximumVtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${targetVtl} is not supported`);
    const vp = this.vp(vpIndex);
    if (!this.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${targetVtl} is not enabled for the partition`);
    if (vp.vtls.get(targetVtl).enabled) hvFail(HvStatus.HV_STATUS_VTL_ALREADY_ENABLED, `VTL ${targetVtl} is already enabled on VP ${vpIndex}`);
    if (caller !== 'host' && caller < targetVtl) {
      // Normally only a higher VTL enables a VTL; exception: the highest VTL enabled below the
      // target may enable it (tlfs-vsm.md §4). As in OpenHCL, a lower VTL may do so only on its
      // own VP and only before the target VTL runs on any VP; afterwards the target VTL enables
      // the other VPs itself.
      const highestBelow = Math.max(...VTLS.filter((v) => v < targetVtl && this.vtls.get(v).enabled));
      if (caller !== highestBelow) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may not enable VTL ${targetVtl}`);
      if (callerVp !== undefined && callerVp !== vpIndex) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may enable VTL ${targetVtl} only on its own VP`);
      if (this.vps.some((x) => x.vtls.get(targetVtl).enabled)) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${targetVtl} is already running; it enables further VPs itself`);
    }
    validateInitialContext(ctx);
    const st = vp.vtls.get(targetVtl);
    st.enabled = true;
    this.loadInitialContext(vp, targetVtl, ctx);
    for (let i = 0; i < 16; i++) st.regs.set(R.HvRegisterSint0 + i, reg64(HV_SINT_MASKED));
  }

  private loadInitialContext(vp: VirtualProcessor, vtl: Vtl, c: HvInitialVpContext): void {
    const r = vp.vtls.get(vtl).regs;
    r.set(R.HvX64RegisterRip, reg64(c.rip));
    r.set(R.HvX64RegisterRsp, reg64(c.rsp));
    r.set(R.HvX64RegisterRflags, reg64(c.rflags));
    const segs: [number, keyof HvInitialVpContext][] = [
      [R.HvX64RegisterCs, 'cs'], [R.HvX64RegisterDs, 'ds'], [R.HvX64RegisterEs, 'es'], [R.HvX64RegisterFs, 'fs'],
      [R.HvX64RegisterGs, 'gs'], [R.HvX64RegisterSs, 'ss'], [R.HvX64RegisterTr, 'tr'], [R.HvX64RegisterLdtr, 'ldtr'],
    ];
    for (const [n, k] of segs) r.set(n, segmentToReg128(c[k] as never));
    r.set(R.HvX64RegisterIdtr, tableToReg128(c.idtr));
    r.set(R.HvX64RegisterGdtr, tableToReg128(c.gdtr));
    r.set(R.HvX64RegisterEfer, reg64(c.efer));
    r.set(R.HvX64RegisterCr0, reg64(c.cr0));
    r.set(R.HvX64RegisterCr3, reg64(c.cr3));
    r.set(R.HvX64RegisterCr4, reg64(c.cr4));
    r.set(R.HvX64RegisterPat, reg64(c.msrCrPat));
  }

  // ---- registers -------------------------------------------------------------------------------

  private requireVpVtl(vp: VirtualProcessor, vtl: number): Vtl {
    if (!isVtl(vtl) || !vp.vtls.get(vtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${vtl} is not enabled on VP ${vp.index}`);
    return vtl;
  }

  /** Reads a register of `vtl` (HvCallGetVpRegisters semantics). */
  getRegister(vp: VirtualProcessor, vtlIn: number, name: number): Reg128 {
    const vtl = this.requireVpVtl(vp, vtlIn);
    const info = registerInfo(name);
    if (!info) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unknown register name 0x${name.toString(16)}`);
    if (info.writeOnly) return reg64(0n);
    const pv = this.vtls.get(vtl);
    switch (name) {
      case R.HvRegisterGuestOsId: return reg64(pv.guestOsId);
      case R.HvX64RegisterHypercall: return reg64(pv.hypercallMsr);
      case R.HvRegisterReferenceTsc: return reg64(pv.referenceTscMsr);
      case R.HvRegisterVpIndex: return reg64(BigInt(vp.index));
      case R.HvRegisterTimeRefCount: return reg64((process.hrtime.bigint() - this.bootTime) / 100n);
      case R.HvRegisterSversion: return reg64(HV_SYNIC_VERSION);
      case R.HvRegisterVsmCodePageOffsets: {
        const l = this.spec.platform?.hypercallPage;
        return reg64(l ? encodeVsmCodePageOffsets(l.vtlCallOffset, l.vtlReturnOffset) : VSM_CODE_PAGE_OFFSETS_64);
      }
      case R.HvRegisterVsmVpStatus: return reg64(encodeVsmVpStatus(vp.activeVtl, this.vtls.get(vp.activeVtl).mbec && vp.activeVtl < HV_MAX_SUPPORTED_VTL && false, vp.enabledVtlSet));
      case R.HvRegisterVsmPartitionStatus: return reg64(encodeVsmPartitionStatus(this.enabledVtlSet, this.maximumVtl, this.mbecEnabledVtlSet));
      case R.HvRegisterVsmCapabilities: return reg64(encodeVsmCapabilities({ dr6Shared: false, mbecVtlMask: (1 << this.maximumVtl) - 1, denyLowerVtlStartup: true, interceptPageAvailable: false }));
      case R.HvRegisterVsmPartitionConfig: return reg64(vtl === 0 ? 0n : pv.config);
      case R.HvRegisterVsmVina: return reg64(vp.vtls.get(vtl).vina);
    }
    if (name >= R.HvRegisterVsmVpSecureConfigVtl0 && name <= R.HvRegisterVsmVpSecureConfigVtl14) {
      const lower = name - R.HvRegisterVsmVpSecureConfigVtl0;
      return reg64(lower < vtl ? vp.vtls.get(vtl).secureConfig[lower]! : 0n);
    }
    const store = info.scope === 'shared' ? vp.shared : vp.vtls.get(vtl).regs;
    return store.get(name) ?? { low: 0n, high: 0n };
  }

  /**
   * Validates a register write and returns the function that commits it, so that a batch is
   * all-or-nothing (validate everything, then apply). `source` 'guest' is a guest hypercall or
   * WRMSR path; 'host' is the management API (no caller-VTL rules).
   */
  prepareSetRegister(vp: VirtualProcessor, vtlIn: number, name: number, value: Reg128, caller: Vtl | 'host'): () => void {
    const vtl = this.requireVpVtl(vp, vtlIn);
    const info: RegisterInfo | undefined = registerInfo(name);
    if (!info) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `unknown register name 0x${name.toString(16)}`);
    if (info.readOnly) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `${info.tlfsName} is read-only`);
    if (info.shape === 'reg64' && value.high !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `${info.tlfsName} is a 64-bit register; bits 127:64 must be 0`);
    const v = value.low;
    const pv = this.vtls.get(vtl);
    switch (name) {
      case R.HvRegisterGuestOsId:
        return () => {
          pv.guestOsId = v;
          // Writing 0 to GUEST_OS_ID disables the hypercall page (tlfs-hypercalls.md §1.7).
          if (v === 0n && (pv.hypercallMsr & HV_X64_MSR_HYPERCALL_ENABLE) !== 0n) {
            pv.hypercallMsr &= ~HV_X64_MSR_HYPERCALL_ENABLE;
            this.syncOverlay('hypercall', vtl, null, pv.hypercallMsr);
          }
        };
      case R.HvX64RegisterHypercall: {
        if ((pv.hypercallMsr & HV_X64_MSR_HYPERCALL_LOCKED) !== 0n) {
          hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_X64_MSR_HYPERCALL is locked until reset');
        }
        this.checkOverlayGpfn(v, 'HV_X64_MSR_HYPERCALL');
        let next = (v & ~HV_X64_MSR_HYPERCALL_RSVDP) | (pv.hypercallMsr & HV_X64_MSR_HYPERCALL_RSVDP);
        // Enable requires a non-zero guest OS id; otherwise Enable reads back as 0.
        if (pv.guestOsId === 0n) next &= ~HV_X64_MSR_HYPERCALL_ENABLE;
        return () => {
          pv.hypercallMsr = next;
          this.syncOverlay('hypercall', vtl, null, next);
        };
      }
      case R.HvRegisterReferenceTsc:
        // A base beyond the GPA space is simply not accessible (no fault; §4.3).
        return () => {
          pv.referenceTscMsr = v;
          this.syncOverlay('reference-tsc', vtl, null, v);
        };
      case R.HvRegisterVsmPartitionConfig: {
        if (vtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'VTL0 has no HvRegisterVsmPartitionConfig instance');
        if ((v & ~VSM_PARTITION_CONFIG_DEFINED) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'reserved bits of HvRegisterVsmPartitionConfig are set');
        const cur = decodeVsmPartitionConfig(pv.config);
        const nxt = decodeVsmPartitionConfig(v);
        if (cur.enableVtlProtection && !nxt.enableVtlProtection) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'EnableVtlProtection is write-once and cannot be cleared');
        if (cur.enableVtlProtection && nxt.defaultVtlProtectionMask !== cur.defaultVtlProtectionMask) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'DefaultVtlProtectionMask cannot change once protection is enabled');
        if ((nxt.defaultVtlProtectionMask & 0x3) !== 0x3) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'DefaultVtlProtectionMask must include read and write');
        return () => {
          pv.config = v;
          if (!cur.enableVtlProtection && nxt.enableVtlProtection) {
            // DefaultVtlProtectionMask applies to every page from now on (tlfs-vsm.md §7.2).
            const m = normalizeMapFlags(nxt.defaultVtlProtectionMask, this.vtls.get(0).mbec);
            this.protections.set(vtl, new ProtectionMap(typeof m === 'number' ? m : 0xf));
            this.protectionChanges++;
            this.spec.platform?.onProtectionChange?.(vtl);
          }
        };
      }
      case R.HvRegisterVsmVina: {
        if (vtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HvRegisterVsmVina cannot be set for VTL0');
        const st = vp.vtls.get(vtl);
        // Bits 63:11 are ReservedP: preserved.
        const next = (v & VSM_VINA_DEFINED) | (st.vina & ~VSM_VINA_DEFINED);
        return () => {
          st.vina = next;
        };
      }
    }
    if (name >= R.HvRegisterVsmVpSecureConfigVtl0 && name <= R.HvRegisterVsmVpSecureConfigVtl14) {
      const lower = name - R.HvRegisterVsmVpSecureConfigVtl0;
      if (lower >= vtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `HvRegisterVsmVpSecureConfigVtl${lower} exists only in VTLs above ${lower}`);
      if ((v & ~VSM_VP_SECURE_CONFIG_DEFINED) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'reserved bits of HvRegisterVsmVpSecureConfigVtlN are set');
      if ((v & 1n) !== 0n && !this.vtls.get(lower as Vtl).mbec) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `MBEC was not enabled for VTL ${lower} by HvCallEnablePartitionVtl`);
      const st = vp.vtls.get(vtl);
      return () => {
        st.secureConfig[lower] = v;
      };
    }
    const overlayKind = OVERLAY_REGISTERS.get(name);
    if (overlayKind) {
      // SIMP/SIEFP/VP assist: a base beyond the GPA space is simply not accessible (§4.3).
      const st = vp.vtls.get(vtl);
      return () => {
        st.regs.set(name, reg64(v));
        this.syncOverlay(overlayKind, vtl, vp.index, v);
        if (overlayKind === 'simp') st.synic.eom(this.synicView(vp, vtl)); // a SIM page now takes queued messages
      };
    }
    if (name === R.HvRegisterEom) return () => vp.vtls.get(vtl).synic.eom(this.synicView(vp, vtl));
    if (name === R.HvRegisterScontrol) {
      const st = vp.vtls.get(vtl);
      return () => {
        st.regs.set(name, reg64(v));
        st.synic.eom(this.synicView(vp, vtl)); // enabling the SynIC delivers what was queued
      };
    }
    if (name >= R.HvRegisterSint0 && name <= R.HvRegisterSint15) {
      // SINTx.Vector must be 16..255 unless masked (tlfs-overlays-synic.md §5.1; KVM allows <16 when masked).
      const vector = Number(v & 0xffn);
      if ((v & HV_SINT_MASKED) === 0n && vector < 16) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `SINT vector ${vector} is below 16`);
    }
    if (info.shape === 'segment' && caller !== 'host') {
      // Architectural registers are validated only minimally (TLFS §7.10): accept.
    }
    const store = info.scope === 'shared' ? vp.shared : vp.vtls.get(vtl).regs;
    return () => {
      store.set(name, value);
      // An explicit RIP write replaces the return a VTL parked in a hypercall-page stub would
      // otherwise take when it resumes (stub.ts).
      if (name === R.HvX64RegisterRip) vp.vtls.get(vtl).pendingStubReturn = null;
    };
  }

  setRegisters(vp: VirtualProcessor, vtl: number, regs: { name: number; value: Reg128 }[], caller: Vtl | 'host'): void {
    const commits = regs.map((r) => this.prepareSetRegister(vp, vtl, r.name, r.value, caller));
    for (const c of commits) c();
  }

  /** Register names a backend models (for "read all"). */
  static modeledRegisters(): readonly RegisterInfo[] {
    return allRegisters.filter((r) => !r.writeOnly);
  }

  private checkOverlayGpfn(msrValue: bigint, what: string): void {
    const gpa = gpfnOf(msrValue) << 12n;
    if (gpa + BigInt(PAGE_SIZE) > this.memory.sizeBytes) {
      // GPFN beyond the GPA space -> #GP on WRMSR (tlfs-hypercalls.md §1.7); as a register write
      // it is an invalid value.
      throw new HvError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `${what} GPFN 0x${gpfnOf(msrValue).toString(16)} is outside the GPA space`);
    }
  }

  /** Makes the overlay of a slot match its enabling MSR value (enabled -> placed at GPFN). */
  private syncOverlay(kind: OverlayKind, vtl: Vtl, vpIndex: number | null, msrValue: bigint): void {
    const enabled = (msrValue & (kind === 'hypercall' ? HV_X64_MSR_HYPERCALL_ENABLE : HV_OVERLAY_ENABLE)) !== 0n;
    if (!enabled) {
      this.overlays.remove(kind, vtl, vpIndex);
      return;
    }
    const layout = this.spec.platform?.hypercallPage;
    const init = kind === 'hypercall' ? () => (layout ? layout.build() : buildHypercallPage(this.vendor)) : undefined;
    // The hypercall page is read/execute for the guest; the reference TSC page is read-only
    // (OpenVMM maps it read-only). Its HV_REFERENCE_TSC_PAGE keeps TscSequence = 0, which tells
    // the guest to use HV_X64_MSR_TIME_REF_COUNT instead (§4.4): honest, since the emulator has no TSC.
    this.overlays.place(kind, vtl, vpIndex, gpfnOf(msrValue), kind === 'hypercall' || kind === 'reference-tsc', init);
  }

  // ---- SynIC -----------------------------------------------------------------------------------

  synicView(vp: VirtualProcessor, vtl: Vtl): SynicView {
    const st = vp.vtls.get(vtl);
    return {
      simPage: () => this.overlays.find('simp', vtl, vp.index)?.page,
      siefPage: () => this.overlays.find('siefp', vtl, vp.index)?.page,
      enabled: () => ((st.regs.get(R.HvRegisterScontrol)?.low ?? 0n) & HV_SCONTROL_ENABLE) !== 0n,
      sint: (n) => st.regs.get(R.HvRegisterSint0 + n)?.low ?? HV_SINT_MASKED,
    };
  }

  /** Queues an HV_MESSAGE for SINTn of (vp, vtl) and delivers it if its SIM slot is free. */
  postMessage(vp: VirtualProcessor, vtl: Vtl, sint: number, message: Buffer): PostResult {
    return vp.vtls.get(vtl).synic.post(this.synicView(vp, vtl), sint, message);
  }

  // ---- VTL protections (tlfs-vsm.md §7, tlfs-hypercalls.md §2.3) -----------------------------------

  /**
   * HvCallModifyVtlProtectionMask: `protectingVtl` sets `mapFlags` on page runs, restricting every
   * lower VTL. `caller` is the calling VTL (guest) or 'host'. Validates everything before changing
   * anything; returns the number of pages changed.
   */
  modifyVtlProtectionMask(caller: Vtl | 'host', protectingVtl: number, mapFlags: number, runs: { start: bigint; count: bigint }[]): number {
    this.assertActive();
    if (!isVtl(protectingVtl) || protectingVtl === 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${protectingVtl} cannot set protections (only a higher VTL protects lower ones)`);
    if (caller !== 'host' && protectingVtl > caller) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${caller} may not change VTL ${protectingVtl}'s protections`);
    if (!this.vtls.get(protectingVtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${protectingVtl} is not enabled`);
    const map = this.protections.get(protectingVtl);
    if (!map) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${protectingVtl} has not set EnableVtlProtection in HvRegisterVsmPartitionConfig`);
    const mask = normalizeMapFlags(mapFlags, this.vtls.get(0).mbec);
    if (typeof mask === 'string') hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, mask);
    const pages = this.memory.sizeBytes >> 12n;
    let total = 0n;
    for (const r of runs) {
      // Non-RAM GPAs cannot be protected (tlfs-vsm.md §7.2).
      if (r.count <= 0n || r.start < 0n || r.start + r.count > pages) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `pages 0x${r.start.toString(16)}+${r.count} are not RAM of this partition`);
      total += r.count;
    }
    for (const r of runs) map.set(Number(r.start), Number(r.count), mask);
    this.protectionChanges++;
    this.spec.platform?.onProtectionChange?.(protectingVtl);
    return Number(total);
  }

  /** Protection mask `protectingVtl` imposes on a page, or undefined when it protects nothing. */
  protectionOf(protectingVtl: Vtl, gpfn: number): number | undefined {
    return this.protections.get(protectingVtl)?.get(gpfn);
  }

  // ---- guest MSR access (tlfs-intercepts.md §7.1) ------------------------------------------------

  /** RDMSR by the VP in its active VTL. */
  readMsr(vp: VirtualProcessor, msr: number): { value: bigint; exception?: X64ExceptionVector } {
    this.assertActive();
    if (this.spec.architecture !== 'x64') return { value: 0n, exception: X64Exception.UD };
    if (msr === HvMsr.HV_X64_MSR_TSC_FREQUENCY) return { value: HV_TSC_FREQUENCY };
    if (msr === HvMsr.HV_X64_MSR_APIC_FREQUENCY) return { value: HV_APIC_FREQUENCY };
    const name = msrToRegister.get(msr);
    if (name === undefined || name === R.HvRegisterEom) return { value: 0n, exception: X64Exception.GP };
    return { value: this.getRegister(vp, vp.activeVtl, name).low };
  }

  /** WRMSR by the VP in its active VTL. Refused writes raise #GP and change nothing. */
  writeMsr(vp: VirtualProcessor, msr: number, value: bigint): { exception?: X64ExceptionVector } {
    this.assertActive();
    if (this.spec.architecture !== 'x64') return { exception: X64Exception.UD };
    const name = msrToRegister.get(msr);
    if (name === undefined) return { exception: X64Exception.GP };
    const info = registerInfo(name)!;
    if (info.readOnly) return { exception: X64Exception.GP };
    const vtl = vp.activeVtl;
    let v = value;
    if (OVERLAY_REGISTERS.has(name) || name === R.HvRegisterReferenceTsc) {
      const cur = this.getRegister(vp, vtl, name).low;
      v = (value & ~HV_OVERLAY_RSVDP) | (cur & HV_OVERLAY_RSVDP);
    }
    if (name === R.HvX64RegisterHypercall && (this.vtls.get(vtl).hypercallMsr & HV_X64_MSR_HYPERCALL_LOCKED) !== 0n) {
      return { exception: X64Exception.GP };
    }
    try {
      this.prepareSetRegister(vp, vtl, name, reg64(v), vtl)();
      return {};
    } catch (e) {
      if (e instanceof HvError) return { exception: X64Exception.GP };
      throw e;
    }
  }

  // ---- guest memory through a VTL's view ---------------------------------------------------------

  /** Bytes VP `vp` would read at gpa in `vtl` (overlays on top of RAM). Management view too. */
  readView(vtl: Vtl, vpIndex: number, gpa: bigint, length: number): Buffer {
    this.checkRange(gpa, length);
    const out = Buffer.alloc(length);
    let pos = 0;
    while (pos < length) {
      const cur = gpa + BigInt(pos);
      const off = Number(cur & 0xfffn);
      const n = Math.min(PAGE_SIZE - off, length - pos);
      const o = this.overlays.visible(vtl, vpIndex, cur >> 12n);
      if (o) o.page.copy(out, pos, off, off + n);
      else this.memory.read(cur, n).copy(out, pos);
      pos += n;
    }
    return out;
  }

  /** Guest write through the view; returns false (and writes nothing) if any byte hits a read-only overlay. */
  writeView(vtl: Vtl, vpIndex: number, gpa: bigint, data: Buffer): boolean {
    this.checkRange(gpa, data.length);
    const chunks: { o?: ReturnType<OverlayManager['visible']>; cur: bigint; off: number; n: number; pos: number }[] = [];
    let pos = 0;
    while (pos < data.length) {
      const cur = gpa + BigInt(pos);
      const off = Number(cur & 0xfffn);
      const n = Math.min(PAGE_SIZE - off, data.length - pos);
      const o = this.overlays.visible(vtl, vpIndex, cur >> 12n);
      if (o?.readOnly) return false;
      chunks.push({ o, cur, off, n, pos });
      pos += n;
    }
    // All or nothing against the resident-RAM limit: refused before any chunk lands.
    this.memory.assertWritable?.(chunks.filter((c) => !c.o).map((c) => ({ gpa: c.cur, data: data.subarray(c.pos, c.pos + c.n) })));
    for (const c of chunks) {
      if (c.o) data.copy(c.o.page, c.off, c.pos, c.pos + c.n);
      else this.memory.write(c.cur, data.subarray(c.pos, c.pos + c.n));
    }
    return true;
  }

  checkRange(gpa: bigint, length: number): void {
    if (gpa < 0n || gpa + BigInt(length) > this.memory.sizeBytes) {
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `GPA range 0x${gpa.toString(16)}+${length} is outside the partition's ${this.memory.sizeBytes} bytes`);
    }
  }

  // ---- processor mode helpers --------------------------------------------------------------------

  reg(vp: VirtualProcessor, name: number): bigint {
    const info = registerInfo(name)!;
    return (info.scope === 'shared' ? vp.shared : vp.vtls.get(vp.activeVtl).regs).get(name)?.low ?? 0n;
  }
  setReg(vp: VirtualProcessor, name: number, value: bigint): void {
    const info = registerInfo(name)!;
    (info.scope === 'shared' ? vp.shared : vp.vtls.get(vp.activeVtl).regs).set(name, reg64(value));
  }
  /** CPL from CS.DPL (x64: CPL = CS.RPL = CS.DPL for code segments). */
  cpl(vp: VirtualProcessor): number {
    const cs = vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs);
    return cs ? segmentDpl(Number((cs.high >> 48n) & 0xffffn)) : 0;
  }
  inRealMode(vp: VirtualProcessor): boolean {
    return (this.reg(vp, R.HvX64RegisterCr0) & CR0_PE) === 0n;
  }
  /** 64-bit calling convention when EFER.LMA && CS.L (tlfs-hypercalls.md §1.4). */
  is64Bit(vp: VirtualProcessor): boolean {
    const cs = vp.vtls.get(vp.activeVtl).regs.get(R.HvX64RegisterCs);
    const attrs = cs ? Number((cs.high >> 48n) & 0xffffn) : 0;
    return (this.reg(vp, R.HvX64RegisterEfer) & 0x400n) !== 0n && (attrs & SegmentAttr.Long) !== 0;
  }

  /** What a VP assist page of (vp, vtl) holds, if enabled. */
  vpAssistPage(vp: VirtualProcessor, vtl: Vtl): Buffer | undefined {
    return this.overlays.find('vp-assist', vtl, vp.index)?.page;
  }

  static readonly NON_RAM = NON_RAM;
}

const OVERLAY_REGISTERS = new Map<number, OverlayKind>([
  [R.HvRegisterVpAssistPage, 'vp-assist'],
  [R.HvRegisterSipp, 'simp'],
  [R.HvRegisterSifp, 'siefp'],
]);

function validateInitialContext(c: HvInitialVpContext): void {
  // Real mode is not supported in VTL > 0 (tlfs-vsm.md §4): CR0.PE must be set.
  if ((c.cr0 & CR0_PE) === 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'HV_INITIAL_VP_CONTEXT.Cr0.PE is 0: real mode is not supported in VTL > 0');
  if ((c.efer & 0x400n) !== 0n && (c.efer & 0x100n) === 0n) hvFail(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, 'HV_INITIAL_VP_CONTEXT.Efer has LMA without LME');
}
