// core: the shape of a core snapshot (the complete VSM state of a partition as plain data):
// written by snapshot.ts, checked by snapshot-validate.ts, mapped to vsm.v1.PartitionSnapshot by the
// service. Plain arrays indexed by VTL (one entry per VTL 0..HV_MAX_SUPPORTED_VTL) where the live
// state has VtlArrays.
import type { PartitionSpec, PartitionVtlState } from './state/partition';
import type { PendingAccess } from './state/vp';
import type { OverlayManager } from './overlays';
import type { InterceptBroker, InterceptRoute } from './intercepts';
import type { Reg128 } from './tlfs/registers';
import type { Vtl } from './vtl-array';

/** Partition-wide state of one VTL: every field of PartitionVtlState (its overlay MSRs included). */
export type PartitionVtlSnapshot = { -readonly [K in keyof PartitionVtlState]: PartitionVtlState[K] };

export interface RegisterEntry {
  name: number;
  value: Reg128;
}

export interface VpVtlSnapshot {
  enabled: boolean;
  regs: RegisterEntry[];
  entryReason: number;
  pendingStubReturn: bigint | null;
  vina: bigint;
  pendingAccess: PendingAccess | null;
  synicQueues: Buffer[][];
  secureConfig: bigint[];
  arm64Pc: bigint;
  arm64Cpsr: bigint;
}

export interface VpSnapshot {
  index: number;
  activeVtl: Vtl;
  shared: RegisterEntry[];
  vtls: VpVtlSnapshot[];
  suspendedOn: bigint | null;
  suspendedAccess: PendingAccess | null;
}

export interface CoreSnapshot {
  version: number;
  /** The partition's spec without what the restoring side supplies (its platform and clock). */
  spec: Omit<PartitionSpec, 'platform' | 'clock'>;
  state: 'active' | 'crashed';
  createTimeUnixMs: number;
  vtls: PartitionVtlSnapshot[];
  protections: ({ defaultMask: number; ranges: { start: number; end: number; mask: number }[] } | null)[];
  protectionChanges: number;
  transitionSeq: bigint;
  interceptRoute: InterceptRoute;
  overlays: ReturnType<OverlayManager['exportState']>;
  intercepts: ReturnType<InterceptBroker['exportState']>;
  memory: { gpfn: number; data: Buffer }[];
  vps: VpSnapshot[];
}
