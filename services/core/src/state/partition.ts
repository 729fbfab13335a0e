// core, state: a partition's VSM state as typed data: its spec, guest RAM, VPs, per-VTL
// partition-wide state (VtlArray), overlays, protection maps, intercepts and counters. No rules
// here: they are in ../rules, one module per subject, and the Partition facade (../partition.ts)
// delegates to them.
import { SparseMemory } from '../memory';
import type { GuestRam, PlatformHooks } from '../platform';
import type { ProtectionMap } from '../protections';
import { type InterceptAction, InterceptBroker, type InterceptRoute } from '../intercepts';
import { OverlayManager } from '../overlays';
import { type Vtl, VtlArray, type VtlSet } from '../vtl-array';
import type { VtlTransitionRecord } from '../outcomes';
import { type X64Vendor, encodeVsmPartitionConfig } from '../tlfs/vsm';
import { VirtualProcessor } from './vp';
import { type Clock, systemClock } from '../clock';

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
  /** Where time comes from (default: systemClock). */
  clock?: Clock;
}

/** Per-partition, per-VTL state. */
export class PartitionVtlState {
  enabled = false;
  mbec = false;
  /** HvRegisterVsmPartitionConfig (VTL > 0). ZeroMemoryOnReset defaults on; default mask RWX(+UMX). */
  config = encodeVsmPartitionConfig({
    enableVtlProtection: false,
    defaultVtlProtectionMask: 0xf,
    zeroMemoryOnReset: true,
    denyLowerVtlStartup: false,
    interceptVpStartup: false,
  });
  /** HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL: partition-wide, one instance per VTL. */
  guestOsId = 0n;
  hypercallMsr = 0n;
  /** HV_X64_MSR_REFERENCE_TSC: partition-wide, per VTL under VSM (tlfs-overlays-synic.md §4.2). */
  referenceTscMsr = 0n;
}

/**
 * A SynIC connection the host created (tlfs-overlays-synic.md §5.8): the sender's ConnectionId
 * bound to a port on (vpIndex, vtl, sint). Message connections serve HvCallPostMessage, event
 * connections HvCallSignalEvent (flag = flagNumber + the caller's FlagNumber, < flagNumber + flagCount).
 */
export interface SynicConnection {
  connectionId: number;
  kind: 'message' | 'event';
  vpIndex: number;
  sint: number;
  vtl: Vtl;
  /** Event connections: the port's base flag number (0 for message connections). */
  flagNumber: number;
  /** Event connections: how many flags the port has (1 for message connections). */
  flagCount: number;
}

export type PartitionRunState = 'active' | 'crashed';
export type PartitionEnd = 'crashed' | 'deleted';

export class PartitionState {
  readonly memory: GuestRam;
  readonly vps: VirtualProcessor[];
  readonly vtls = new VtlArray(() => new PartitionVtlState());
  readonly overlays: OverlayManager;
  readonly vendor: X64Vendor;
  /** Protection map of each protecting VTL; null until its EnableVtlProtection is set. */
  readonly protections = new VtlArray<ProtectionMap | null>(() => null);
  readonly intercepts = new InterceptBroker();
  interceptRoute: InterceptRoute = 'vtl';
  /** Deadline policy for intercepts a monitor must answer (SetInterceptRoute); unset = wait. */
  interceptDeadline: { ms: number; action: InterceptAction } | undefined;
  readonly clock: Clock;
  createTimeUnixMs: number;
  state: PartitionRunState = 'active';
  /** Why the partition crashed (monitor CRASH answer, deadline policy, internal error). */
  crashReason = '';
  /** Set once the partition was deleted: everything still attached to it must let go. */
  deleted = false;
  /** Counters (exported for snapshots): protection changes (part of the view generation) and the
   *  sequence number of the last VTL transition. */
  protectionChanges = 0;
  transitionSeq = 0n;
  /** The clock's reference time at creation: HV_X64_MSR_TIME_REF_COUNT counts from here. */
  readonly referenceTimeOrigin: bigint;
  /** Who is told when the partition ends, and who watches its VTL transitions. */
  readonly endListeners = new Set<(why: PartitionEnd) => void>();
  readonly transitionListeners = new Set<(t: VtlTransitionRecord) => void>();
  /** Host-created SynIC connections by ConnectionId (rules/connections.ts). Not in snapshots. */
  readonly connections = new Map<number, SynicConnection>();
  /** hyperv-testdev SINT routes, `vp/vtl/sint` (rules/testdev.ts). Not in snapshots. */
  readonly sintRoutes = new Set<string>();
  /**
   * The VP whose instruction (a VMCALL) the core is executing: an interrupt requested for it meanwhile
   * is evaluated once the instruction completes (rules/interrupts.ts), so that the instruction
   * finishes in the VTL that issued it.
   */
  executingVp: VirtualProcessor | null = null;

  constructor(readonly spec: PartitionSpec) {
    this.clock = spec.clock ?? systemClock;
    this.createTimeUnixMs = this.clock.nowUnixMs();
    this.referenceTimeOrigin = this.clock.referenceTime100ns();
    this.memory = spec.platform?.ram ?? new SparseMemory(spec.memoryBytes);
    if (this.memory.sizeBytes !== spec.memoryBytes) throw new Error('platform RAM size differs from the partition size');
    this.vendor = spec.vendor ?? 'amd';
    this.overlays = new OverlayManager(spec.platform?.allocOverlayPage, spec.platform?.onViewChange);
    this.vps = Array.from({ length: spec.vpCount }, (_, i) => new VirtualProcessor(i));
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
  get enabledVtlSet(): VtlSet {
    return this.vtls.setOf((s) => s.enabled);
  }
  get mbecEnabledVtlSet(): VtlSet {
    return this.vtls.setOf((s) => s.mbec);
  }
}
