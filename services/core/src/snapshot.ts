// core: the complete VSM state of a partition as plain data, and its restore. Everything the
// TLFS model holds is in it: VTLs, per-VTL registers, overlays with their pages and the hidden RAM
// underneath (RAM pages are saved as they are), protections, SynIC queues, pending intercepts and
// suspended accesses, counters and generations. The service turns it into the versioned protobuf
// snapshot (vsm.v1.PartitionSnapshot); the core never sees protobuf.
import { Partition, type VirtualProcessor } from './partition';
import type { PendingAccess, RegisterFile } from './state/vp';
import { OverlayManager } from './overlays';
import type { InterceptRecord } from './intercepts';
import { ProtectionMap } from './protections';
import { VTLS, type Vtl } from './vtl-array';
import type { PlatformHooks } from './platform';
import type { Clock } from './clock';
import type { CoreSnapshot, RegisterEntry, VpSnapshot } from './snapshot-types';
import { OVERLAY_KIND_NAMES, overlayKindInfo } from './overlay-kinds';
import { hypercallPageCode } from './rules/overlay-sync';
import { DEFAULT_LIMITS } from './limits';
import { CORE_SNAPSHOT_VERSION, type SnapshotLimits, validateSnapshot } from './snapshot-validate';

export { CORE_SNAPSHOT_VERSION, validateSnapshot } from './snapshot-validate';
export type { SnapshotLimits } from './snapshot-validate';
export type { CoreSnapshot, PartitionVtlSnapshot, RegisterEntry, VpSnapshot, VpVtlSnapshot } from './snapshot-types';

const regs = (m: RegisterFile): RegisterEntry[] => [...m].map(([name, value]) => ({ name, value: { ...value } }));
const copyAccess = (a: PendingAccess | null): PendingAccess | null => (a ? { ...a, data: a.data ? Buffer.from(a.data) : undefined } : null);

/**
 * The partition's complete state. `parts.memory` / `parts.protectionRanges` false leave the RAM pages
 * and the protection ranges out (a streamed export sends them in chunks; each map's presence and
 * default mask stay).
 */
export function snapshotPartition(p: Partition, parts: { memory?: boolean; protectionRanges?: boolean } = {}): CoreSnapshot {
  const { platform: _platform, clock: _clock, ...spec } = p.spec;
  const withRanges = parts.protectionRanges !== false;
  return {
    version: CORE_SNAPSHOT_VERSION,
    spec: { ...spec, labels: { ...spec.labels } },
    state: p.state,
    createTimeUnixMs: p.createTimeUnixMs,
    vtls: p.vtls.map((v) => ({ ...v })),
    protections: p.protections.map((m) => (m ? { defaultMask: m.defaultMask, ranges: withRanges ? m.list() : [] } : null)),
    protectionChanges: p.protectionChanges,
    transitionSeq: p.transitionSeq,
    interceptRoute: p.interceptRoute,
    overlays: p.overlays.exportState(),
    intercepts: p.intercepts.exportState(),
    memory: parts.memory === false ? [] : p.memory.touchedPages().map((gpfn) => ({ gpfn, data: p.memory.read(BigInt(gpfn) << 12n, 4096) })),
    vps: p.vps.map((vp) => snapshotVp(vp)),
  };
}

function snapshotVp(vp: VirtualProcessor): VpSnapshot {
  return {
    index: vp.index,
    activeVtl: vp.activeVtl,
    shared: regs(vp.shared),
    vtls: vp.vtls.map((s) => ({
      enabled: s.enabled,
      regs: regs(s.syncRegs()),
      entryReason: s.entryReason,
      pendingStubReturn: s.pendingStubReturn,
      vina: s.vina,
      pendingAccess: copyAccess(s.pendingAccess),
      synicQueues: s.synic.queues.map((q) => q.map((m) => Buffer.from(m))),
      secureConfig: s.secureConfig.map((c) => c),
      arm64Pc: s.arm64Pc,
      arm64Cpsr: s.arm64Cpsr,
    })),
    suspendedOn: vp.suspendedOn,
    suspendedAccess: copyAccess(vp.suspendedAccess),
  };
}

/**
 * Rebuilds a partition from a snapshot, under `id` (which may differ from the saved one). The
 * snapshot is validated completely first (validateSnapshot): a malformed one is refused with
 * HV_STATUS_INVALID_PARAMETER before anything is built.
 */
export function restorePartition(
  s: CoreSnapshot,
  id: string,
  platform?: PlatformHooks,
  limits: SnapshotLimits = DEFAULT_LIMITS,
  clock?: Clock,
  /** Protection maps built (and checked) already, by VTL, in place of `s.protections[].ranges` (a streamed import). */
  prebuiltMaps?: (ProtectionMap | null)[],
): Partition {
  validateSnapshot(s, limits);
  const p = new Partition({ ...s.spec, labels: { ...s.spec.labels }, id, platform, clock });
  p.state = s.state;
  p.createTimeUnixMs = s.createTimeUnixMs;
  s.vtls.forEach((v, i) => {
    Object.assign(p.vtls.get(i as Vtl), v);
  });
  s.protections.forEach((m, i) => {
    if (!m) {
      p.protections.set(i as Vtl, null);
      return;
    }
    const map = prebuiltMaps?.[i] ?? new ProtectionMap(m.defaultMask);
    if (!prebuiltMaps) for (const r of m.ranges) map.set(r.start, r.end - r.start, r.mask);
    p.protections.set(i as Vtl, map);
  });
  p.protectionChanges = s.protectionChanges;
  p.transitionSeq = s.transitionSeq;
  p.interceptRoute = s.interceptRoute;
  for (const pg of s.memory) p.memory.write(BigInt(pg.gpfn) << 12n, pg.data);
  p.overlays.importState(s.overlays);
  // A page holding the hypervisor's code (the hypercall page, read-only to the guest) gets the
  // restoring platform's code, not the saving one's (the emulator's VMMCALL does not exit on the KVM
  // agent; the agent's `out 0x4d, ax` is #UD to the emulator's stub decoder).
  const slots = new Set(s.overlays.pages.map((x) => x.slot));
  for (const kind of OVERLAY_KIND_NAMES) {
    if (overlayKindInfo(kind).content !== 'hypercall-code') continue;
    for (const vtl of VTLS) {
      if (slots.has(OverlayManager.slot(kind, vtl, null))) hypercallPageCode(p).copy(p.overlays.pageFor(kind, vtl, null));
    }
  }
  p.intercepts.importState({ ...s.intercepts, pending: s.intercepts.pending.map((r: InterceptRecord) => ({ ...r })) });
  for (const v of s.vps) {
    const vp = p.vps[v.index]!;
    vp.activeVtl = v.activeVtl;
    vp.shared.clear();
    for (const r of v.shared) vp.shared.set(r.name, { ...r.value });
    v.vtls.forEach((vs, i) => {
      const st = vp.vtls.get(i as Vtl);
      st.enabled = vs.enabled;
      st.regs.clear();
      for (const r of vs.regs) st.regs.set(r.name, { ...r.value });
      st.entryReason = vs.entryReason;
      st.pendingStubReturn = vs.pendingStubReturn;
      st.vina = vs.vina;
      st.pendingAccess = copyAccess(vs.pendingAccess);
      vs.synicQueues.forEach((q, n) => {
        st.synic.queues[n] = q.map((m) => Buffer.from(m));
      });
      vs.secureConfig.forEach((c, n) => {
        st.secureConfig.set(n as Vtl, c);
      });
      st.arm64Pc = vs.arm64Pc;
      st.arm64Cpsr = vs.arm64Cpsr;
    });
    vp.suspendedOn = v.suspendedOn;
    vp.suspendedAccess = copyAccess(v.suspendedAccess);
  }
  return p;
}
