// service layer: core snapshot (plain data) <-> vsm.v1.PartitionSnapshot (protobuf). Pure
// conversion; the rules of what a snapshot may contain live in services/core/src/snapshot-validate.ts.
import * as core from '@vsm/core';
import { pb } from '@vsm/api';
import { invalidArgument } from './errors';

export const SNAPSHOT_FORMAT_VERSION = 1;
const ARCHITECTURES = new Map<pb.Architecture, core.Architecture>([
  [pb.Architecture.ARCHITECTURE_UNSPECIFIED, 'x64'], // as CreatePartition
  [pb.Architecture.ARCHITECTURE_X64, 'x64'],
  [pb.Architecture.ARCHITECTURE_ARM64, 'arm64'],
]);
const STATES = new Map<pb.PartitionState, 'active' | 'crashed'>([
  [pb.PartitionState.PARTITION_STATE_ACTIVE, 'active'],
  [pb.PartitionState.PARTITION_STATE_CRASHED, 'crashed'],
]);

const reg = (r: core.RegisterEntry): pb.RegisterSnapshot => ({ name: r.name, low: r.value.low, high: r.value.high });
const unreg = (r: pb.RegisterSnapshot): core.RegisterEntry => ({ name: r.name, value: { low: r.low, high: r.high } });
const access = (a: core.PendingAccess | null): pb.PendingAccessSnapshot | undefined =>
  a ? { kind: a.kind, gpa: a.gpa, length: a.length, data: a.data ?? Buffer.alloc(0), rip: a.rip, interceptId: a.interceptId } : undefined;
export function toPbSnapshot(s: core.CoreSnapshot, sourceName: string): pb.PartitionSnapshot {
  return {
    formatVersion: SNAPSHOT_FORMAT_VERSION,
    sourceName,
    savedTimeUnixMs: BigInt(Date.now()),
    architecture: s.spec.architecture === 'arm64' ? pb.Architecture.ARCHITECTURE_ARM64 : pb.Architecture.ARCHITECTURE_X64,
    vpCount: s.spec.vpCount,
    memoryBytes: s.spec.memoryBytes,
    maximumVtl: s.spec.maximumVtl,
    labels: { ...s.spec.labels },
    vendor: s.spec.vendor ?? 'amd',
    state: s.state === 'crashed' ? pb.PartitionState.PARTITION_STATE_CRASHED : pb.PartitionState.PARTITION_STATE_ACTIVE,
    createTimeUnixMs: BigInt(s.createTimeUnixMs),
    vtls: s.vtls.map((v) => ({
      enabled: v.enabled,
      mbec: v.mbec,
      vsmPartitionConfig: v.config,
      guestOsId: v.guestOsId,
      hypercallMsr: v.hypercallMsr,
      referenceTscMsr: v.referenceTscMsr,
    })),
    protections: s.protections.map((m) =>
      m
        ? { present: true, defaultMask: m.defaultMask, ranges: m.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end), mask: r.mask })) }
        : { present: false, defaultMask: 0, ranges: [] },
    ),
    protectionChanges: BigInt(s.protectionChanges),
    transitionSequence: s.transitionSeq,
    interceptRoute: s.interceptRoute,
    overlays: {
      sequence: BigInt(s.overlays.seq),
      generation: BigInt(s.overlays.generation),
      placed: s.overlays.placed.map((o) => ({
        kind: o.kind,
        vtl: o.vtl,
        vpIndex: o.vpIndex ?? undefined,
        gpfn: o.gpfn,
        sequence: BigInt(o.seq),
        readOnly: o.readOnly,
      })),
      pages: s.overlays.pages.map((p) => ({ slot: p.slot, page: p.page })),
    },
    intercepts: {
      nextId: s.intercepts.nextId,
      pending: s.intercepts.pending.map((r) => ({
        id: r.id,
        vpIndex: r.vpIndex,
        vtl: r.vtl,
        protectingVtl: r.protectingVtl,
        kind: r.kind,
        gpa: r.gpa,
        length: r.length,
        data: r.data ?? Buffer.alloc(0),
        generation: BigInt(r.generation),
        message: r.message,
        needsReply: r.needsReply,
        timeUnixUs: r.timeUnixUs,
        deliveries: r.deliveries,
      })),
      answered: s.intercepts.answered,
    },
    memory: s.memory.map((m) => ({ gpfn: BigInt(m.gpfn), data: m.data })),
    vps: s.vps.map((vp) => ({
      index: vp.index,
      activeVtl: vp.activeVtl,
      sharedRegisters: vp.shared.map(reg),
      vtls: vp.vtls.map((v) => ({
        enabled: v.enabled,
        registers: v.regs.map(reg),
        entryReason: v.entryReason,
        pendingStubReturn: v.pendingStubReturn ?? undefined,
        vina: v.vina,
        pendingAccess: access(v.pendingAccess),
        synicQueues: v.synicQueues.map((q) => ({ messages: q })),
        secureConfig: v.secureConfig,
        arm64Pc: v.arm64Pc,
        arm64Cpsr: v.arm64Cpsr,
      })),
      suspendedOn: vp.suspendedOn ?? undefined,
      suspendedAccess: access(vp.suspendedAccess),
    })),
  };
}

/** A uint64 field the core keeps as a JS number (counters, page numbers). */
const small = (v: bigint, path: string): number => {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument(`${path}: ${v} is out of range`);
  return Number(v);
};

/**
 * Converts; refuses (INVALID_ARGUMENT, naming the field) only what the core's types cannot hold.
 * Every rule of what a snapshot may contain is checked by the core (validateSnapshot), which
 * RestorePartition runs before anything is built.
 */
export function fromPbSnapshot(s: pb.PartitionSnapshot): core.CoreSnapshot {
  if (s.formatVersion !== SNAPSHOT_FORMAT_VERSION)
    throw invalidArgument(`snapshot.format_version: ${s.formatVersion} is not supported (this service reads ${SNAPSHOT_FORMAT_VERSION})`);
  const architecture = ARCHITECTURES.get(s.architecture);
  if (!architecture) throw invalidArgument(`snapshot.architecture: ${s.architecture} is not x64 or arm64`);
  const state = STATES.get(s.state);
  if (!state) throw invalidArgument(`snapshot.state: ${s.state} is not ACTIVE or CRASHED`);
  if (!s.overlays) throw invalidArgument('snapshot.overlays: required');
  if (!s.intercepts) throw invalidArgument('snapshot.intercepts: required');
  const access = (a: pb.PendingAccessSnapshot | undefined): core.PendingAccess | null =>
    a
      ? {
          kind: a.kind as core.AccessKind,
          gpa: a.gpa,
          length: a.length,
          data: a.data.length ? Buffer.from(a.data) : undefined,
          rip: a.rip,
          interceptId: a.interceptId,
        }
      : null;
  return {
    version: core.CORE_SNAPSHOT_VERSION,
    spec: {
      id: 'restored',
      architecture,
      vpCount: s.vpCount,
      memoryBytes: s.memoryBytes,
      maximumVtl: s.maximumVtl,
      labels: { ...s.labels },
      vendor: s.vendor as core.X64Vendor,
    },
    state,
    createTimeUnixMs: small(s.createTimeUnixMs, 'snapshot.create_time_unix_ms'),
    vtls: s.vtls.map((v) => ({
      enabled: v.enabled,
      mbec: v.mbec,
      config: v.vsmPartitionConfig,
      guestOsId: v.guestOsId,
      hypercallMsr: v.hypercallMsr,
      referenceTscMsr: v.referenceTscMsr,
    })),
    protections: s.protections.map((m, i) =>
      m.present
        ? {
            defaultMask: m.defaultMask,
            ranges: m.ranges.map((r, k) => ({
              start: small(r.start, `snapshot.protections[${i}].ranges[${k}].start`),
              end: small(r.end, `snapshot.protections[${i}].ranges[${k}].end`),
              mask: r.mask,
            })),
          }
        : null,
    ),
    protectionChanges: small(s.protectionChanges, 'snapshot.protection_changes'),
    transitionSeq: s.transitionSequence,
    interceptRoute: s.interceptRoute as core.InterceptRoute,
    overlays: {
      seq: small(s.overlays.sequence, 'snapshot.overlays.sequence'),
      generation: small(s.overlays.generation, 'snapshot.overlays.generation'),
      placed: s.overlays.placed.map((o, k) => ({
        kind: o.kind as core.OverlayKind,
        vtl: o.vtl as core.Vtl,
        vpIndex: o.vpIndex ?? null,
        gpfn: o.gpfn,
        seq: small(o.sequence, `snapshot.overlays.placed[${k}].sequence`),
        readOnly: o.readOnly,
      })),
      pages: s.overlays.pages.map((p) => ({ slot: p.slot, page: Buffer.from(p.page) })),
    },
    intercepts: {
      nextId: s.intercepts.nextId,
      pending: s.intercepts.pending.map((r, k) => ({
        id: r.id,
        vpIndex: r.vpIndex,
        vtl: r.vtl as core.Vtl,
        protectingVtl: r.protectingVtl as core.Vtl,
        kind: r.kind as core.AccessKind,
        gpa: r.gpa,
        length: r.length,
        data: r.data.length ? Buffer.from(r.data) : undefined,
        generation: small(r.generation, `snapshot.intercepts.pending[${k}].generation`),
        message: Buffer.from(r.message),
        needsReply: r.needsReply,
        timeUnixUs: r.timeUnixUs,
        deliveries: r.deliveries,
      })),
      answered: s.intercepts.answered,
    },
    memory: s.memory.map((m, k) => ({ gpfn: small(m.gpfn, `snapshot.memory[${k}].gpfn`), data: Buffer.from(m.data) })),
    vps: s.vps.map((vp) => ({
      index: vp.index,
      activeVtl: vp.activeVtl as core.Vtl,
      shared: vp.sharedRegisters.map(unreg),
      vtls: vp.vtls.map((v) => ({
        enabled: v.enabled,
        regs: v.registers.map(unreg),
        entryReason: v.entryReason,
        pendingStubReturn: v.pendingStubReturn ?? null,
        vina: v.vina,
        pendingAccess: access(v.pendingAccess),
        synicQueues: v.synicQueues.map((q) => q.messages.map((m) => Buffer.from(m))),
        secureConfig: v.secureConfig,
        arm64Pc: v.arm64Pc,
        arm64Cpsr: v.arm64Cpsr,
      })),
      suspendedOn: vp.suspendedOn ?? null,
      suspendedAccess: access(vp.suspendedAccess),
    })),
  };
}
