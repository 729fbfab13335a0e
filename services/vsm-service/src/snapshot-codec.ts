// service layer: core snapshot (plain data) <-> vsm.v1.PartitionSnapshot (protobuf). Pure
// conversion; the rules of what a snapshot contains live in services/core/src/snapshot.ts.
import * as core from '@vsm/core';
import { pb } from '@vsm/client';
import { invalidArgument } from './errors';

export const SNAPSHOT_FORMAT_VERSION = 1;
const KINDS = new Set(['read', 'write', 'execute']);
const OVERLAY_KINDS = new Set(['hypercall', 'reference-tsc', 'simp', 'siefp', 'vp-assist']);
const ROUTES = new Set(['vtl', 'monitor', 'both']);

const reg = (r: core.RegisterEntry): pb.RegisterSnapshot => ({ name: r.name, low: r.value.low, high: r.value.high });
const unreg = (r: pb.RegisterSnapshot): core.RegisterEntry => ({ name: r.name, value: { low: r.low, high: r.high } });
const access = (a: core.PendingAccess | null): pb.PendingAccessSnapshot | undefined =>
  a ? { kind: a.kind, gpa: a.gpa, length: a.length, data: a.data ?? Buffer.alloc(0), rip: a.rip, interceptId: a.interceptId } : undefined;
function unaccess(a: pb.PendingAccessSnapshot | undefined): core.PendingAccess | null {
  if (!a) return null;
  if (!KINDS.has(a.kind)) throw invalidArgument(`snapshot: unknown access kind ${JSON.stringify(a.kind)}`);
  return { kind: a.kind as core.AccessKind, gpa: a.gpa, length: a.length, data: a.data.length ? Buffer.from(a.data) : undefined, rip: a.rip, interceptId: a.interceptId };
}

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
    vtls: s.vtls.map((v) => ({ enabled: v.enabled, mbec: v.mbec, vsmPartitionConfig: v.config, guestOsId: v.guestOsId, hypercallMsr: v.hypercallMsr, referenceTscMsr: v.referenceTscMsr })),
    protections: s.protections.map((m) => (m ? { present: true, defaultMask: m.defaultMask, ranges: m.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end), mask: r.mask })) } : { present: false, defaultMask: 0, ranges: [] })),
    protectionChanges: BigInt(s.protectionChanges),
    transitionSequence: s.transitionSeq,
    interceptRoute: s.interceptRoute,
    overlays: {
      sequence: BigInt(s.overlays.seq),
      generation: BigInt(s.overlays.generation),
      placed: s.overlays.placed.map((o) => ({ kind: o.kind, vtl: o.vtl, vpIndex: o.vpIndex ?? undefined, gpfn: o.gpfn, sequence: BigInt(o.seq), readOnly: o.readOnly })),
      pages: s.overlays.pages.map((p) => ({ slot: p.slot, page: p.page })),
    },
    intercepts: {
      nextId: s.intercepts.nextId,
      pending: s.intercepts.pending.map((r) => ({
        id: r.id, vpIndex: r.vpIndex, vtl: r.vtl, protectingVtl: r.protectingVtl, kind: r.kind, gpa: r.gpa, length: r.length, data: r.data ?? Buffer.alloc(0),
        generation: BigInt(r.generation), message: r.message, needsReply: r.needsReply, timeUnixUs: r.timeUnixUs, deliveries: r.deliveries,
      })),
      answered: s.intercepts.answered,
    },
    memory: s.memory.map((m) => ({ gpfn: BigInt(m.gpfn), data: m.data })),
    vps: s.vps.map((vp) => ({
      index: vp.index,
      activeVtl: vp.activeVtl,
      sharedRegisters: vp.shared.map(reg),
      vtls: vp.vtls.map((v) => ({
        enabled: v.enabled, registers: v.regs.map(reg), entryReason: v.entryReason, pendingStubReturn: v.pendingStubReturn ?? undefined, vina: v.vina,
        pendingAccess: access(v.pendingAccess), synicQueues: v.synicQueues.map((q) => ({ messages: q })), secureConfig: v.secureConfig, arm64Pc: v.arm64Pc, arm64Cpsr: v.arm64Cpsr,
      })),
      suspendedOn: vp.suspendedOn ?? undefined,
      suspendedAccess: access(vp.suspendedAccess),
    })),
  };
}

const small = (v: bigint, what: string): number => {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument(`snapshot: ${what} is out of range`);
  return Number(v);
};
const vtlOf = (n: number, what: string): core.Vtl => {
  if (!core.isVtl(n)) throw invalidArgument(`snapshot: ${what} ${n} is not a VTL`);
  return n;
};

/** Validates and converts; every malformed field is refused with INVALID_ARGUMENT before anything is built. */
export function fromPbSnapshot(s: pb.PartitionSnapshot): core.CoreSnapshot {
  if (s.formatVersion !== SNAPSHOT_FORMAT_VERSION) throw invalidArgument(`snapshot format_version ${s.formatVersion} is not supported (this service reads ${SNAPSHOT_FORMAT_VERSION})`);
  if (!ROUTES.has(s.interceptRoute)) throw invalidArgument(`snapshot: unknown intercept route ${JSON.stringify(s.interceptRoute)}`);
  if (s.vendor !== 'amd' && s.vendor !== 'intel') throw invalidArgument('snapshot: vendor must be amd or intel');
  if (!s.overlays || !s.intercepts) throw invalidArgument('snapshot: overlays and intercepts are required');
  for (const o of s.overlays.placed) if (!OVERLAY_KINDS.has(o.kind)) throw invalidArgument(`snapshot: unknown overlay kind ${JSON.stringify(o.kind)}`);
  for (const r of s.intercepts.pending) if (!KINDS.has(r.kind)) throw invalidArgument(`snapshot: unknown access kind ${JSON.stringify(r.kind)}`);
  return {
    version: core.CORE_SNAPSHOT_VERSION,
    spec: {
      id: 'restored',
      architecture: s.architecture === pb.Architecture.ARCHITECTURE_ARM64 ? 'arm64' : 'x64',
      vpCount: s.vpCount,
      memoryBytes: s.memoryBytes,
      maximumVtl: s.maximumVtl,
      labels: { ...s.labels },
      vendor: s.vendor,
    },
    state: s.state === pb.PartitionState.PARTITION_STATE_CRASHED ? 'crashed' : 'active',
    createTimeUnixMs: small(s.createTimeUnixMs, 'create_time_unix_ms'),
    vtls: s.vtls.map((v) => ({ enabled: v.enabled, mbec: v.mbec, config: v.vsmPartitionConfig, guestOsId: v.guestOsId, hypercallMsr: v.hypercallMsr, referenceTscMsr: v.referenceTscMsr })),
    protections: s.protections.map((m) => (m.present ? { defaultMask: m.defaultMask & 0xf, ranges: m.ranges.map((r) => ({ start: small(r.start, 'range start'), end: small(r.end, 'range end'), mask: r.mask & 0xf })) } : null)),
    protectionChanges: small(s.protectionChanges, 'protection_changes'),
    transitionSeq: s.transitionSequence,
    interceptRoute: s.interceptRoute as core.InterceptRoute,
    overlays: {
      seq: small(s.overlays.sequence, 'overlay sequence'),
      generation: small(s.overlays.generation, 'overlay generation'),
      placed: s.overlays.placed.map((o) => ({ kind: o.kind as core.OverlayKind, vtl: vtlOf(o.vtl, 'overlay vtl'), vpIndex: o.vpIndex ?? null, gpfn: o.gpfn, seq: small(o.sequence, 'overlay sequence'), readOnly: o.readOnly })),
      pages: s.overlays.pages.map((p) => ({ slot: p.slot, page: Buffer.from(p.page) })),
    },
    intercepts: {
      nextId: s.intercepts.nextId,
      pending: s.intercepts.pending.map((r) => ({
        id: r.id, vpIndex: r.vpIndex, vtl: vtlOf(r.vtl, 'intercept vtl'), protectingVtl: vtlOf(r.protectingVtl, 'intercept protecting vtl'), kind: r.kind as core.AccessKind,
        gpa: r.gpa, length: r.length, data: r.data.length ? Buffer.from(r.data) : undefined, generation: small(r.generation, 'generation'), message: Buffer.from(r.message),
        needsReply: r.needsReply, timeUnixUs: r.timeUnixUs, deliveries: r.deliveries,
      })),
      answered: s.intercepts.answered,
    },
    memory: s.memory.map((m) => ({ gpfn: small(m.gpfn, 'gpfn'), data: Buffer.from(m.data) })),
    vps: s.vps.map((vp) => ({
      index: vp.index,
      activeVtl: vtlOf(vp.activeVtl, 'active vtl'),
      shared: vp.sharedRegisters.map(unreg),
      vtls: vp.vtls.map((v) => ({
        enabled: v.enabled, regs: v.registers.map(unreg), entryReason: v.entryReason, pendingStubReturn: v.pendingStubReturn ?? null, vina: v.vina,
        pendingAccess: unaccess(v.pendingAccess), synicQueues: v.synicQueues.map((q) => q.messages.map((m) => Buffer.from(m))), secureConfig: v.secureConfig, arm64Pc: v.arm64Pc, arm64Cpsr: v.arm64Cpsr,
      })),
      suspendedOn: vp.suspendedOn ?? null,
      suspendedAccess: unaccess(vp.suspendedAccess),
    })),
  };
}
