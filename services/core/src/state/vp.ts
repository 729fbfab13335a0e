// core, state: a virtual processor and its per-VTL state (tlfs-vsm.md §9: what is private to a VTL
// and what is shared). Plain data; the rules that change it are in ../rules.
import { type Vtl, VtlArray, type VtlSet, VTLS } from '../vtl-array';
import { Synic } from '../synic';
import type { Reg128 } from '../tlfs/registers';
import type { AccessKind } from '../protections';
import { HvVtlEntryReason } from '../tlfs/vsm';
import { HV_SYNIC_STIMER_COUNT } from '../tlfs/msr';

/** How many of its latest changes a RegisterFile remembers by name. */
const CHANGE_LOG = 32;

/**
 * Registers held as HV_REGISTER_VALUEs, by HV_REGISTER_NAME: a Map that also counts its changes and
 * remembers the names of the latest 32. A platform that mirrors the file into hardware (the KVM
 * agent's vCPUs) then loads only the registers changed since it last looked instead of comparing
 * every register it mirrors (services/platform-kvm registers.ts loadChanged).
 */
export class RegisterFile extends Map<number, Reg128> {
  /** Changes so far: one per set() or delete(); a clear() counts more than the log holds. */
  changes = 0;
  private readonly log = new Int32Array(CHANGE_LOG);
  override set(name: number, value: Reg128): this {
    this.log[this.changes++ % CHANGE_LOG] = name;
    return super.set(name, value);
  }
  override delete(name: number): boolean {
    this.log[this.changes++ % CHANGE_LOG] = name;
    return super.delete(name);
  }
  override clear(): void {
    this.changes += CHANGE_LOG + 1;
    super.clear();
  }
  /** Whether the names of every change since `since` (a value of `changes`) are still in the log. */
  remembersSince(since: number): boolean {
    return since >= 0 && this.changes - since <= CHANGE_LOG;
  }
  /** The name changed by change number `k` (since <= k < changes, remembersSince(since)). */
  changedName(k: number): number {
    return this.log[k % CHANGE_LOG]!;
  }
}

/** An access that intercepted and waits (to be retried, skipped or answered). */
export interface PendingAccess {
  kind: AccessKind;
  gpa: bigint;
  length: number;
  data?: Buffer;
  rip: bigint;
  interceptId: bigint;
}

/**
 * One synthetic timer (HV_X64_MSR_STIMERx_CONFIG/_COUNT; TLFS timers.md). `expiration` is the
 * reference time (100 ns) it fires at while armed; `messagePending`: it expired but its
 * HvMessageTimerExpired message found the SIM slot busy (or the SynIC off) and waits for EOM.
 */
export interface SyntheticTimer {
  config: bigint;
  count: bigint;
  expiration: bigint | undefined;
  messagePending: boolean;
}

/** Per-VP, per-VTL state: everything the TLFS makes private to a VTL. */
export class VpVtlState {
  enabled = false;
  /** VTL-private registers (tlfs-vsm.md §9.2). */
  readonly regs = new RegisterFile();
  /**
   * Set by a platform that holds some of this VTL's private registers newer than `regs` (the KVM
   * agent leaves a running VTL's MSRs in its vCPU between exits). syncRegs() calls it before the
   * register API, address translation or a snapshot reads or writes `regs`, with the register's
   * name (undefined: any or all); it fetches what it holds of that register into `regs` and returns
   * true once it holds nothing back any more (it is then cleared). Not in snapshots.
   */
  lazyRegs: ((name: number | undefined) => boolean) | null = null;
  /** `regs`, after fetching what a platform held back of `name` (undefined: of every register; lazyRegs). */
  syncRegs(name?: number): RegisterFile {
    const f = this.lazyRegs;
    if (f?.(name)) this.lazyRegs = null;
    return this.regs;
  }
  entryReason: number = HvVtlEntryReason.HvVtlEntryReserved;
  /**
   * The VTL this VTL was last entered from (VtlCall, secure interrupt or intercept), where its
   * VtlReturn goes (rules/transitions.ts returnTarget); null when it was not entered from a lower
   * VTL (never entered, or started by HvCallStartVirtualProcessor). Not in snapshots.
   */
  enteredFrom: Vtl | null = null;
  /** Return address of a CALL into the hypercall page that switched VTL mid-stub: this VTL is
   *  parked on the stub's RET and executes it when it next runs (stub-return.ts). */
  pendingStubReturn: bigint | null = null;
  vina = 0n;
  /**
   * VinaStatus.VinaAsserted of this VTL (tlfs-vsm.md §10.1) while it has no VP assist page; with one,
   * the page's HV_VP_VTL_CONTROL byte is the state (the guest may clear it there).
   */
  vinaAsserted = false;
  /**
   * This VTL's local APIC as the core models it (rules/interrupts.ts; tlfs-vsm.md §9.1, each VTL has
   * its own): requested vectors not yet accepted (IRR: vector -> delivered with auto-EOI), accepted
   * vectors not yet completed by an EOI (ISR), and the task priority (TPR, 8 bits). A platform whose
   * own APICs deliver interrupts (a running guest on the KVM agent) keeps none of it here. Not in
   * snapshots.
   */
  readonly irr = new Map<number, boolean>();
  readonly isr = new Set<number>();
  tpr = 0;
  /** The last value written to this VTL's ICR (HV_X64_MSR_ICR / x2APIC ICR; rules/interrupts.ts sendIpi). */
  icr = 0n;
  /** An access of this VTL that intercepted to a higher VTL and waits to be retried or skipped. */
  pendingAccess: PendingAccess | null = null;
  /** arm64 partitions: PC and CPSR of this VTL (PC/PSTATE are VTL-private, tlfs-vsm.md §9.2). The
   *  emulator models no other arm64 register; CPSR starts as EL1h with DAIF masked. */
  arm64Pc = 0n;
  arm64Cpsr = 0x3c5n;
  /** This VTL's SynIC on this VP (tlfs-overlays-synic.md §5.9: private per VTL). */
  readonly synic = new Synic();
  /** STIMER0..3 of this VTL on this VP (private per VTL, tlfs-overlays-synic.md §5.9). Not in snapshots. */
  readonly stimers: SyntheticTimer[] = Array.from({ length: HV_SYNIC_STIMER_COUNT }, () => ({
    config: 0n,
    count: 0n,
    expiration: undefined,
    messagePending: false,
  }));
  /** HvRegisterVsmVpSecureConfigVtlN owned by this VTL, indexed by the lower VTL N. */
  readonly secureConfig = new VtlArray<bigint>(() => 0n);
}

export class VirtualProcessor {
  activeVtl: Vtl = 0;
  /** Registers shared by every VTL of this VP (tlfs-vsm.md §9.1). */
  readonly shared = new RegisterFile();
  readonly vtls = new VtlArray(() => new VpVtlState());
  /** Intercept (route 'monitor') this VP is suspended on, waiting for a monitor's answer: the VP
   *  stays at the faulting instruction (suspendedAccess) until it is answered. */
  suspendedOn: bigint | null = null;
  suspendedAccess: PendingAccess | null = null;
  /** An interrupt was requested for this VP while it executed an instruction (rules/interrupts.ts). */
  interruptCheck = false;
  constructor(readonly index: number) {}

  get enabledVtlSet(): VtlSet {
    return this.vtls.setOf((s) => s.enabled);
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
