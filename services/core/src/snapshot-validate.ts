// core: the complete check of a snapshot before anything is restored from it. A snapshot is
// accepted only if the live API could have produced it: the same limits as CreatePartition, the
// same register, VTL, protection, overlay, SynIC and intercept rules as the calls that change
// them, and every cross-reference (a suspended VP and its pending intercept, an overlay and the
// MSR that placed it, a queued message and its SINT) consistent. Each refusal is
// HV_STATUS_INVALID_PARAMETER with the offending field's path, spelled as in vsm.v1.PartitionSnapshot
// (e.g. `snapshot.vps[1].vtls[0].synic_queues[0]: 40 messages exceed the 16-message SINT queue`).
import type { CoreSnapshot, RegisterEntry } from './snapshot-types';
import type { PendingAccess } from './state/vp';
import { OVERLAY_KIND_NAMES, type OverlayKind, isOverlayKind, overlayEnabled, overlayGpfn, overlayKindInfo } from './overlay-kinds';
import { type Limits, labelsProblem } from './limits';
import { HvError, HvStatus } from './tlfs/status';
import { HvRegisterName as R, registerInfo } from './tlfs/registers';
import {
  HV_MAX_SUPPORTED_VTL,
  HvVtlEntryReason,
  VSM_PARTITION_CONFIG_DEFINED,
  VSM_VINA_DEFINED,
  VSM_VP_SECURE_CONFIG_DEFINED,
  decodeVsmPartitionConfig,
} from './tlfs/vsm';
import { HV_SINT_MASKED } from './tlfs/msr';
import {
  HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT,
  HV_MESSAGE_SIZE,
  HV_SYNIC_SINT_COUNT,
  HvArm64MemoryInterceptMessageLayout,
  HV_MESSAGE_PAYLOAD_OFFSET,
  HvMessageHeaderLayout,
  HvMessageType,
  HvX64InterceptMessageHeaderLayout,
  HV_X64_MEMORY_INTERCEPT_MESSAGE_SIZE,
  HV_ARM64_MEMORY_INTERCEPT_MESSAGE_SIZE,
} from './tlfs/message';
import { SYNIC_QUEUE_LIMIT } from './synic';
import { normalizeMapFlags } from './protections';
import { isInterceptRoute } from './intercepts';
import { INTERCEPT_ACCESS_TYPE } from './secure-intercepts';

/** Version of the core snapshot layout (CoreSnapshot) this build reads and writes. */
export const CORE_SNAPSHOT_VERSION = 1;
/** Bytes one guest access may cover (as access.ts's MAX_GUEST_ACCESS_BYTES). */
const MAX_ACCESS_BYTES = 65536;
/** Answered ids the broker remembers (intercepts.ts). */
const MAX_ANSWERED = 65536;
const U64_MAX = (1n << 64n) - 1n;
const VTL_COUNT = HV_MAX_SUPPORTED_VTL + 1;
const KINDS = new Set(['read', 'write', 'execute']);
/** Overlay kinds by scope (the overlay-kinds table). */
const PARTITION_KINDS = OVERLAY_KIND_NAMES.filter((k) => overlayKindInfo(k).scope === 'partition');
const VP_KINDS = OVERLAY_KIND_NAMES.filter((k) => overlayKindInfo(k).scope === 'vp');
/** Private registers the partition keeps per VTL (not per VP): stored in snapshot.vtls[], never in a VP's registers. */
const PARTITION_VTL_REGISTERS = new Set<number>([R.HvRegisterGuestOsId, ...PARTITION_KINDS.map((k) => overlayKindInfo(k).register)]);
const ENTRY_REASONS = new Set<number>(Object.values(HvVtlEntryReason));

const fail = (path: string, why: string): never => {
  throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `${path}: ${why}`);
};
const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
const isU64 = (v: unknown): v is bigint => typeof v === 'bigint' && v >= 0n && v <= U64_MAX;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const u64 = (path: string, v: unknown): bigint => (isU64(v) ? v : fail(path, `${String(v)} is not a 64-bit unsigned value`));
const count = (path: string, v: unknown): number => (isCount(v) ? v : fail(path, `${String(v)} is not a non-negative integer`));
const vtlOf = (path: string, v: unknown): number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < VTL_COUNT ? v : fail(path, `${String(v)} is not a VTL (0..${HV_MAX_SUPPORTED_VTL})`);
const isBuffer = (b: unknown): b is Buffer => Buffer.isBuffer(b) || b instanceof Uint8Array;

/** The rules of `validateSnapshot` that depend on the backend's configuration. */
export type SnapshotLimits = Pick<Limits, 'maxVpCount' | 'maxMemoryBytes'>;

/**
 * Throws HV_STATUS_INVALID_PARAMETER, naming the field, unless the live API could have produced
 * `s`. Nothing is created or changed: call it before anything is allocated for the restore.
 */
export function validateSnapshot(s: CoreSnapshot, limits: SnapshotLimits): void {
  if (s.version !== CORE_SNAPSHOT_VERSION) fail('snapshot', `core snapshot version ${s.version} is not supported (this build reads ${CORE_SNAPSHOT_VERSION})`);
  // ---- the partition (the same rules as CreatePartition) -----------------------------------------
  const spec = s.spec;
  if (spec.architecture !== 'x64' && spec.architecture !== 'arm64') fail('snapshot.architecture', `${String(spec.architecture)} is not x64 or arm64`);
  if (spec.vendor !== undefined && spec.vendor !== 'amd' && spec.vendor !== 'intel')
    fail('snapshot.vendor', `${JSON.stringify(spec.vendor)} is not amd or intel`);
  if (!Number.isInteger(spec.vpCount) || spec.vpCount < 1 || spec.vpCount > limits.maxVpCount)
    fail('snapshot.vp_count', `${spec.vpCount} is not 1..${limits.maxVpCount}`);
  if (typeof spec.memoryBytes !== 'bigint' || spec.memoryBytes <= 0n || spec.memoryBytes % 4096n !== 0n)
    fail('snapshot.memory_bytes', `${String(spec.memoryBytes)} is not a positive multiple of 4096`);
  if (spec.memoryBytes > limits.maxMemoryBytes) fail('snapshot.memory_bytes', `${spec.memoryBytes} exceeds the limit of ${limits.maxMemoryBytes} bytes`);
  if (!Number.isInteger(spec.maximumVtl) || spec.maximumVtl < 0 || spec.maximumVtl > HV_MAX_SUPPORTED_VTL)
    fail('snapshot.maximum_vtl', `${spec.maximumVtl} is not 0..${HV_MAX_SUPPORTED_VTL}`);
  if (typeof spec.labels !== 'object' || spec.labels === null) fail('snapshot.labels', 'missing');
  const labels = labelsProblem(spec.labels);
  if (labels) fail('snapshot.labels', labels);
  if (s.state !== 'active' && s.state !== 'crashed') fail('snapshot.state', `${String(s.state)} is not active or crashed`);
  count('snapshot.create_time_unix_ms', s.createTimeUnixMs);
  if (!isInterceptRoute(s.interceptRoute)) fail('snapshot.intercept_route', `${JSON.stringify(s.interceptRoute)} is not vtl, monitor or both`);
  count('snapshot.protection_changes', s.protectionChanges);
  u64('snapshot.transition_sequence', s.transitionSeq);
  const memoryBytes = spec.memoryBytes;
  const pages = Number(memoryBytes >> 12n);
  const vpCount = spec.vpCount;

  // ---- partition-wide VTL state (EnablePartitionVtl, HvRegisterVsmPartitionConfig, MSRs) ---------
  if (!Array.isArray(s.vtls) || s.vtls.length !== VTL_COUNT)
    fail('snapshot.vtls', `${s.vtls?.length} entries; one per VTL 0..${HV_MAX_SUPPORTED_VTL} expected`);
  s.vtls.forEach((v, i) => {
    const at = `snapshot.vtls[${i}]`;
    if (i === 0 && !v.enabled) fail(`${at}.enabled`, 'VTL0 is always enabled');
    if (v.enabled && i > spec.maximumVtl) fail(`${at}.enabled`, `VTL ${i} is above maximum_vtl ${spec.maximumVtl}`);
    if (v.mbec && (i === 0 || !v.enabled))
      fail(`${at}.mbec`, i === 0 ? 'VTL0 is never enabled by EnablePartitionVtl, so it has no MBEC flag' : `MBEC is set but VTL ${i} is not enabled`);
    const config = u64(`${at}.vsm_partition_config`, v.config);
    if ((config & ~VSM_PARTITION_CONFIG_DEFINED) !== 0n)
      fail(`${at}.vsm_partition_config`, `reserved bits ${hex(config & ~VSM_PARTITION_CONFIG_DEFINED)} are set`);
    const c = decodeVsmPartitionConfig(config);
    if ((c.defaultVtlProtectionMask & 0x3) !== 0x3) fail(`${at}.vsm_partition_config`, 'DefaultVtlProtectionMask must include read and write');
    if (c.enableVtlProtection && (i === 0 || !v.enabled))
      fail(
        `${at}.vsm_partition_config`,
        i === 0 ? 'VTL0 has no HvRegisterVsmPartitionConfig (it protects nothing)' : `EnableVtlProtection is set but VTL ${i} is not enabled`,
      );
    const guestOsId = u64(`${at}.guest_os_id`, v.guestOsId);
    // The partition-wide overlay MSRs of this VTL (hypercall_msr, reference_tsc_msr).
    const msrs = PARTITION_KINDS.map((kind) => {
      const k = partitionKind(kind);
      return { kind, field: k.snapshotField, value: u64(`${at}.${k.snapshotField}`, v[k.field]) };
    });
    if (!v.enabled && msrs.reduce((a, m) => a | m.value, guestOsId) !== 0n)
      fail(at, `VTL ${i} is not enabled but has ${orList(['guest_os_id', ...msrs.map((m) => m.field)])} set`);
    for (const m of msrs) checkOverlayMsr(`${at}.${m.field}`, m.kind, m.value, guestOsId, memoryBytes);
  });
  const vtlEnabled = (v: number) => !!s.vtls[v]?.enabled;

  // ---- protections (HvCallModifyVtlProtectionMask) -----------------------------------------------
  if (!Array.isArray(s.protections) || s.protections.length !== VTL_COUNT)
    fail('snapshot.protections', `${s.protections?.length} entries; one per VTL 0..${HV_MAX_SUPPORTED_VTL} expected`);
  s.protections.forEach((m, i) => {
    const at = `snapshot.protections[${i}]`;
    const c = decodeVsmPartitionConfig(s.vtls[i]!.config);
    const shouldExist = i > 0 && vtlEnabled(i) && c.enableVtlProtection;
    if (!m) {
      if (shouldExist) fail(at, `VTL ${i} set EnableVtlProtection, so its protection map must be present`);
      return;
    }
    if (i === 0) fail(at, 'VTL0 protects nothing (only a higher VTL protects lower ones)');
    if (!shouldExist) fail(at, vtlEnabled(i) ? `VTL ${i} has not set EnableVtlProtection in its vsm_partition_config` : `VTL ${i} is not enabled`);
    const expectDefault = normalizeMapFlags(c.defaultVtlProtectionMask, s.vtls[i]!.mbec);
    if (m.defaultMask !== expectDefault)
      fail(
        `${at}.default_mask`,
        `${typeof m.defaultMask === 'number' ? hex(m.defaultMask) : String(m.defaultMask)} is not VTL ${i}'s DefaultVtlProtectionMask (${typeof expectDefault === 'number' ? hex(expectDefault) : expectDefault})`,
      );
    if (!Array.isArray(m.ranges)) fail(`${at}.ranges`, 'missing');
    let prev: { end: number; mask: number } | undefined;
    m.ranges.forEach((r, k) => {
      checkProtectionRange(`${at}.ranges[${k}]`, r, prev, pages, s.vtls[i]!.mbec);
      prev = r;
    });
  });

  // ---- VPs: per-VTL enablement first (everything below refers to it) ------------------------------
  if (!Array.isArray(s.vps) || s.vps.length !== vpCount) fail('snapshot.vps', `${s.vps?.length} VPs for vp_count ${vpCount}`);
  s.vps.forEach((vp, i) => {
    const at = `snapshot.vps[${i}]`;
    if (vp.index !== i) fail(`${at}.index`, `${vp.index}: VPs must be listed in index order`);
    if (!Array.isArray(vp.vtls) || vp.vtls.length !== VTL_COUNT)
      fail(`${at}.vtls`, `${vp.vtls?.length} entries; one per VTL 0..${HV_MAX_SUPPORTED_VTL} expected`);
    vp.vtls.forEach((st, v) => {
      if (v === 0 && !st.enabled) fail(`${at}.vtls[0].enabled`, 'VTL0 is always enabled on every VP');
      if (st.enabled && !vtlEnabled(v)) fail(`${at}.vtls[${v}].enabled`, `VTL ${v} is enabled on VP ${i} but not for the partition`);
    });
    vtlOf(`${at}.active_vtl`, vp.activeVtl);
    if (!vp.vtls[vp.activeVtl]!.enabled) fail(`${at}.active_vtl`, `VTL ${vp.activeVtl} is not enabled on VP ${i}`);
  });
  const vpVtlEnabled = (vp: number, v: number) => !!s.vps[vp]?.vtls[v]?.enabled;

  // ---- overlays (the MSRs that place them) --------------------------------------------------------
  const ov = s.overlays;
  if (!ov || !Array.isArray(ov.placed) || !Array.isArray(ov.pages)) fail('snapshot.overlays', 'missing');
  count('snapshot.overlays.sequence', ov.seq);
  count('snapshot.overlays.generation', ov.generation);
  if (ov.generation < 1) fail('snapshot.overlays.generation', 'starts at 1');
  const slotPages = new Set<string>();
  ov.pages.forEach((p, k) => {
    const at = `snapshot.overlays.pages[${k}]`;
    const m = /^([a-z-]+)\/(\d)\/(\*|\d{1,5})$/.exec(typeof p.slot === 'string' ? p.slot : '');
    if (!m) fail(`${at}.slot`, `${JSON.stringify(p.slot)} is not kind/vtl/vp`);
    const [, kind, vtlS, vpS] = m!;
    if (!isOverlayKind(kind)) fail(`${at}.slot`, `${JSON.stringify(p.slot)}: unknown overlay kind ${kind}`);
    const partitionWide = overlayKindInfo(kind as OverlayKind).scope === 'partition';
    const vtl = Number(vtlS);
    if (vtl >= VTL_COUNT || !vtlEnabled(vtl)) fail(`${at}.slot`, `${JSON.stringify(p.slot)}: VTL ${vtl} is not enabled`);
    if (partitionWide !== (vpS === '*')) fail(`${at}.slot`, `${JSON.stringify(p.slot)}: ${kind} pages are ${partitionWide ? 'partition-wide (*)' : 'per VP'}`);
    if (vpS !== '*' && (Number(vpS) >= vpCount || !vpVtlEnabled(Number(vpS), vtl)))
      fail(`${at}.slot`, `${JSON.stringify(p.slot)}: VP ${vpS} does not exist or has not enabled VTL ${vtl}`);
    if (slotPages.has(p.slot)) fail(`${at}.slot`, `${JSON.stringify(p.slot)} appears twice`);
    slotPages.add(p.slot);
    if (!isBuffer(p.page) || p.page.length !== 4096) fail(`${at}.page`, `${isBuffer(p.page) ? p.page.length : 0} bytes; an overlay page is 4096`);
  });
  const placedSlots = new Map<string, bigint>();
  const seqs = new Set<number>();
  ov.placed.forEach((o, k) => {
    const at = `snapshot.overlays.placed[${k}]`;
    if (!isOverlayKind(o.kind)) fail(`${at}.kind`, `${JSON.stringify(o.kind)} is not an overlay kind`);
    const info = overlayKindInfo(o.kind);
    const vtl = vtlOf(`${at}.vtl`, o.vtl);
    if (!vtlEnabled(vtl)) fail(`${at}.vtl`, `VTL ${vtl} is not enabled`);
    if (info.scope === 'partition') {
      if (o.vpIndex !== null) fail(`${at}.vp_index`, `the ${o.kind} page is partition-wide; it has no VP`);
    } else {
      if (typeof o.vpIndex !== 'number' || !Number.isInteger(o.vpIndex) || o.vpIndex < 0 || o.vpIndex >= vpCount)
        fail(`${at}.vp_index`, `${String(o.vpIndex)} is not a VP of this partition (vp_count ${vpCount})`);
      if (!vpVtlEnabled(o.vpIndex!, vtl)) fail(`${at}.vp_index`, `VP ${o.vpIndex} has not enabled VTL ${vtl}`);
    }
    const gpfn = u64(`${at}.gpfn`, o.gpfn);
    count(`${at}.sequence`, o.seq);
    if (o.seq < 1 || o.seq > ov.seq) fail(`${at}.sequence`, `${o.seq} is not 1..${ov.seq} (overlays.sequence)`);
    if (seqs.has(o.seq)) fail(`${at}.sequence`, `${o.seq} is used twice`);
    seqs.add(o.seq);
    if (o.readOnly !== info.readOnly) fail(`${at}.read_only`, `the ${o.kind} page is ${info.readOnly ? 'read-only' : 'writable'} for the guest`);
    const slot = `${o.kind}/${vtl}/${o.vpIndex ?? '*'}`;
    if (placedSlots.has(slot)) fail(at, `the ${o.kind} overlay of VTL ${vtl}${o.vpIndex === null ? '' : ` on VP ${o.vpIndex}`} is placed twice`);
    placedSlots.set(slot, gpfn);
    if (!slotPages.has(slot)) fail(at, `has no page (no overlays.pages entry with slot ${slot})`);
    // The MSR that placed it says the same.
    const msr = overlayMsr(s, o.kind, vtl, o.vpIndex);
    if (msr === undefined || !overlayEnabled(o.kind, msr))
      fail(at, `the ${o.kind} overlay of VTL ${vtl}${o.vpIndex === null ? '' : ` on VP ${o.vpIndex}`} is placed, but the MSR that enables it is off`);
    if (overlayGpfn(o.kind, msr!) !== gpfn) fail(at, `placed at GPFN ${hex(gpfn)}, but its MSR says ${hex(overlayGpfn(o.kind, msr!))}`);
  });
  // ... and every enabled overlay MSR has its overlay placed.
  s.vtls.forEach((v, i) => {
    for (const kind of PARTITION_KINDS) {
      const k = partitionKind(kind);
      const value = v[k.field];
      if (overlayEnabled(kind, value) && placedSlots.get(`${kind}/${i}/*`) === undefined)
        fail(`snapshot.vtls[${i}].${k.snapshotField}`, `enables the ${kind} page at GPFN ${hex(overlayGpfn(kind, value))}, but no such overlay is placed`);
    }
  });

  // ---- RAM ----------------------------------------------------------------------------------------
  if (!Array.isArray(s.memory)) fail('snapshot.memory', 'missing');
  let lastGpfn = -1;
  s.memory.forEach((pg, k) => {
    const at = `snapshot.memory[${k}]`;
    count(`${at}.gpfn`, pg.gpfn);
    if (pg.gpfn >= pages) fail(`${at}.gpfn`, `page ${hex(pg.gpfn)} is outside the partition (${hex(pages)} pages)`);
    if (pg.gpfn <= lastGpfn) fail(`${at}.gpfn`, `page ${hex(pg.gpfn)} is out of order or listed twice`);
    lastGpfn = pg.gpfn;
    if (!isBuffer(pg.data) || pg.data.length !== 4096) fail(`${at}.data`, `${isBuffer(pg.data) ? pg.data.length : 0} bytes; a page is 4096`);
  });

  // ---- intercepts ---------------------------------------------------------------------------------
  const ic = s.intercepts;
  if (!ic || !Array.isArray(ic.pending) || !Array.isArray(ic.answered)) fail('snapshot.intercepts', 'missing');
  const nextId = u64('snapshot.intercepts.next_id', ic.nextId);
  if (nextId < 1n) fail('snapshot.intercepts.next_id', 'intercept ids start at 1');
  const viewGeneration = ov.generation + s.protectionChanges;
  const pending = new Map<bigint, number>();
  ic.pending.forEach((r, k) => {
    const at = `snapshot.intercepts.pending[${k}]`;
    const id = u64(`${at}.id`, r.id);
    if (id < 1n || id >= nextId) fail(`${at}.id`, `${id} was never issued (next_id ${nextId})`);
    if (pending.has(id)) fail(at, `intercept ${id} is listed twice`);
    pending.set(id, k);
    if (typeof r.vpIndex !== 'number' || !Number.isInteger(r.vpIndex) || r.vpIndex < 0 || r.vpIndex >= vpCount)
      fail(`${at}.vp_index`, `VP ${r.vpIndex} does not exist (vp_count ${vpCount})`);
    const vtl = vtlOf(`${at}.vtl`, r.vtl);
    if (!vpVtlEnabled(r.vpIndex, vtl)) fail(`${at}.vtl`, `VTL ${vtl} is not enabled on VP ${r.vpIndex}`);
    const pv = vtlOf(`${at}.protecting_vtl`, r.protectingVtl);
    if (pv <= vtl) fail(`${at}.protecting_vtl`, `VTL ${pv} does not protect VTL ${vtl} (only a higher VTL does)`);
    if (!s.protections[pv]) fail(`${at}.protecting_vtl`, `VTL ${pv} has no protection map`);
    if (!KINDS.has(r.kind)) fail(`${at}.kind`, `${JSON.stringify(r.kind)} is not read, write or execute`);
    const gpa = u64(`${at}.gpa`, r.gpa);
    if (gpa >= memoryBytes) fail(`${at}.gpa`, `${hex(gpa)} is outside the GPA space (${memoryBytes} bytes)`);
    if (!Number.isInteger(r.length) || r.length < 1 || r.length > MAX_ACCESS_BYTES) fail(`${at}.length`, `${r.length} is not 1..${MAX_ACCESS_BYTES}`);
    checkData(`${at}.data`, r.kind, r.length, r.data);
    count(`${at}.generation`, r.generation);
    if (r.generation > viewGeneration) fail(`${at}.generation`, `${r.generation} is newer than the partition's memory-view generation ${viewGeneration}`);
    if (r.needsReply !== true) fail(`${at}.needs_reply`, 'only intercepts a monitor must answer stay pending');
    u64(`${at}.time_unix_us`, r.timeUnixUs);
    count(`${at}.deliveries`, r.deliveries);
    checkInterceptMessage(`${at}.message`, r.message, spec.architecture, r.vpIndex, r.kind);
  });
  if (ic.answered.length > MAX_ANSWERED) fail('snapshot.intercepts.answered', `${ic.answered.length} ids; the broker keeps at most ${MAX_ANSWERED}`);
  ic.answered.forEach((id, k) => {
    const at = `snapshot.intercepts.answered[${k}]`;
    u64(at, id);
    if (id < 1n || id >= nextId) fail(at, `${id} was never issued (next_id ${nextId})`);
    if (pending.has(id)) fail(at, `intercept ${id} is both answered and pending`);
  });
  if (s.state === 'crashed' && pending.size > 0)
    fail('snapshot.state', `a crashed partition has no pending intercepts (the crash resolved them), but ${pending.size} are listed`);

  // ---- VPs: registers, SynIC, accesses, suspension ------------------------------------------------
  s.vps.forEach((vp, i) => {
    const at = `snapshot.vps[${i}]`;
    checkRegisters(`${at}.shared_registers`, vp.shared, 'shared');
    vp.vtls.forEach((st, v) => {
      const vat = `${at}.vtls[${v}]`;
      if (!st.enabled) {
        const holds = [
          st.regs.length && 'registers',
          st.synicQueues?.some((q) => q.length) && 'queued messages',
          st.pendingAccess && 'a pending access',
          st.pendingStubReturn !== null && 'a stub return',
          st.vina !== 0n && 'vina',
          st.entryReason !== 0 && 'an entry reason',
          st.secureConfig?.some((c) => c !== 0n) && 'secure config',
        ].filter(Boolean);
        if (holds.length) fail(vat, `VTL ${v} is not enabled on VP ${i} but holds ${holds.join(', ')}`);
      }
      checkRegisters(`${vat}.registers`, st.regs, 'private');
      if (!ENTRY_REASONS.has(st.entryReason)) fail(`${vat}.entry_reason`, `${st.entryReason} is not an HV_VTL_ENTRY_REASON`);
      if (st.pendingStubReturn !== null) u64(`${vat}.pending_stub_return`, st.pendingStubReturn);
      const vina = u64(`${vat}.vina`, st.vina);
      if ((vina & ~VSM_VINA_DEFINED) !== 0n) fail(`${vat}.vina`, `reserved bits ${hex(vina & ~VSM_VINA_DEFINED)} are set`);
      if (st.pendingAccess) {
        checkAccess(`${vat}.pending_access`, st.pendingAccess, memoryBytes);
        if (st.pendingAccess.interceptId < 1n || st.pendingAccess.interceptId >= nextId)
          fail(`${vat}.pending_access.intercept_id`, `${st.pendingAccess.interceptId} was never issued (next_id ${nextId})`);
      }
      if (!Array.isArray(st.synicQueues) || st.synicQueues.length !== HV_SYNIC_SINT_COUNT)
        fail(`${vat}.synic_queues`, `${st.synicQueues?.length} queues; a SynIC has ${HV_SYNIC_SINT_COUNT} SINTs`);
      st.synicQueues.forEach((q, n) => {
        const qat = `${vat}.synic_queues[${n}]`;
        if (q.length > SYNIC_QUEUE_LIMIT) fail(qat, `${q.length} messages exceed the ${SYNIC_QUEUE_LIMIT}-message SINT queue`);
        q.forEach((m, k) => {
          checkQueuedMessage(`${qat}.messages[${k}]`, m);
        });
      });
      if (!Array.isArray(st.secureConfig) || st.secureConfig.length !== VTL_COUNT)
        fail(`${vat}.secure_config`, `${st.secureConfig?.length} entries; one per lower VTL 0..${HV_MAX_SUPPORTED_VTL} expected`);
      st.secureConfig.forEach((c, lower) => {
        const cat = `${vat}.secure_config[${lower}]`;
        u64(cat, c);
        if (c === 0n) return;
        if (lower >= v) fail(cat, `HvRegisterVsmVpSecureConfigVtl${lower} exists only in VTLs above ${lower}`);
        if ((c & ~VSM_VP_SECURE_CONFIG_DEFINED) !== 0n) fail(cat, `reserved bits ${hex(c & ~VSM_VP_SECURE_CONFIG_DEFINED)} are set`);
        if ((c & 1n) !== 0n && !s.vtls[v]!.mbec) fail(cat, `MbecEnabled, but MBEC was not enabled for VTL ${v} by EnablePartitionVtl`);
      });
      u64(`${vat}.arm64_pc`, st.arm64Pc);
      u64(`${vat}.arm64_cpsr`, st.arm64Cpsr);
      // Every enabled per-VP overlay MSR has its overlay placed (the converse is checked above).
      for (const kind of VP_KINDS) {
        const k = st.regs.findIndex((r) => r.name === overlayKindInfo(kind).register);
        const value = k >= 0 ? st.regs[k]!.value.low : 0n;
        if (k >= 0) checkOverlayMsr(`${vat}.registers[${k}]`, kind, value, s.vtls[v]!.guestOsId, memoryBytes);
        if (overlayEnabled(kind, value) && placedSlots.get(`${kind}/${v}/${i}`) === undefined)
          fail(`${vat}.registers[${k}]`, `enables the ${kind} page at GPFN ${hex(overlayGpfn(kind, value))}, but no such overlay is placed`);
      }
    });
    // A VP suspended on a monitor intercept: that intercept is pending and is this VP's.
    if ((vp.suspendedOn === null) !== (vp.suspendedAccess === null))
      fail(at, `suspended_on and suspended_access go together (a suspended VP waits with its access)`);
    if (vp.suspendedOn !== null) {
      const id = u64(`${at}.suspended_on`, vp.suspendedOn);
      const k = pending.get(id);
      if (k === undefined) fail(`${at}.suspended_on`, `intercept ${id} is not pending`);
      const rec = ic.pending[k!]!;
      if (rec.vpIndex !== i) fail(`${at}.suspended_on`, `intercept ${id} belongs to VP ${rec.vpIndex}`);
      if (rec.vtl !== vp.activeVtl)
        fail(`${at}.active_vtl`, `VP ${i} is suspended on intercept ${id}, raised in VTL ${rec.vtl}, so it is still in VTL ${rec.vtl}`);
      const a = vp.suspendedAccess!;
      checkAccess(`${at}.suspended_access`, a, memoryBytes);
      if (a.interceptId !== id) fail(`${at}.suspended_access.intercept_id`, `${a.interceptId} is not the intercept the VP is suspended on (${id})`);
      if (a.kind !== rec.kind) fail(`${at}.suspended_access.kind`, `${a.kind}, but intercept ${id} is a ${rec.kind}`);
    }
  });
  ic.pending.forEach((r, k) => {
    if (s.vps[r.vpIndex]!.suspendedOn !== r.id)
      fail(
        `snapshot.intercepts.pending[${k}]`,
        `VP ${r.vpIndex} is not suspended on intercept ${r.id} (a monitor intercept holds its VP until it is answered)`,
      );
  });
}

function partitionKind(kind: OverlayKind) {
  const k = overlayKindInfo(kind);
  if (k.scope !== 'partition') throw new Error(`${kind} is not a partition-wide overlay kind`);
  return k;
}

/** The value of the MSR that places overlay `kind` of (vtl, vp). */
function overlayMsr(s: CoreSnapshot, kind: OverlayKind, vtl: number, vpIndex: number | null): bigint | undefined {
  const k = overlayKindInfo(kind);
  if (k.scope === 'partition') return s.vtls[vtl]![k.field];
  return s.vps[vpIndex!]?.vtls[vtl]?.regs.find((r) => r.name === k.register)?.value.low ?? 0n;
}

/**
 * An overlay MSR value as the live rules could have stored it (the overlay-kinds table): RsvdP
 * bits clear where every write preserves them, Enable only with a guest OS id where the kind needs
 * one, and the GPFN inside the GPA space where a GPFN outside it faults.
 */
/**
 * One protection range of a map, after `prev` (the previous range of the same map): the rules of
 * snapshot.protections[].ranges, shared by the streamed import (which receives ranges in chunks).
 */
export function checkProtectionRange(
  rat: string,
  r: { start: unknown; end: unknown; mask: unknown },
  prev: { end: number; mask: number } | undefined,
  pages: number,
  mbec: boolean,
): void {
  const start = count(`${rat}.start`, r.start);
  const end = count(`${rat}.end`, r.end);
  if (start >= end) fail(rat, `start ${hex(start)} is not below end ${hex(end)}`);
  if (end > pages) fail(rat, `pages ${hex(start)}..${hex(end)} reach beyond the GPA space (${hex(pages)} pages)`);
  if (prev && start < prev.end) fail(rat, `starts at ${hex(start)}, before the previous range ends (${hex(prev.end)}): ranges must be sorted and disjoint`);
  if (typeof r.mask !== 'number' || !Number.isInteger(r.mask)) fail(`${rat}.mask`, 'not an integer');
  const mask = r.mask as number;
  const norm = normalizeMapFlags(mask, mbec);
  if (typeof norm === 'string') fail(`${rat}.mask`, `${hex(mask)}: ${norm}`);
  if (norm !== mask)
    fail(`${rat}.mask`, `${hex(mask)} is not as ModifyVtlProtectionMask stores it (${hex(norm as number)}: without MBEC, user execute follows kernel execute)`);
  if (prev && prev.end === start && prev.mask === mask) fail(rat, `adjoins the previous range with the same mask: the map keeps them merged`);
}

/** One RAM page of a snapshot, after page `last` (the rules of snapshot.memory[], shared by the streamed import). */
export function checkMemoryPage(at: string, gpfn: unknown, last: number, pages: number): number {
  const g = count(`${at}.gpfn`, gpfn);
  if (g >= pages) fail(`${at}.gpfn`, `page ${hex(g)} is outside the partition (${hex(pages)} pages)`);
  if (g <= last) fail(`${at}.gpfn`, `page ${hex(g)} is out of order or listed twice`);
  return g;
}

function checkOverlayMsr(at: string, kind: OverlayKind, value: bigint, guestOsId: bigint, memoryBytes: bigint): void {
  const k = overlayKindInfo(kind);
  if (k.rsvdPKeptBy === 'every-write' && (value & k.rsvdP) !== 0n) fail(at, `reserved bits ${hex(value & k.rsvdP)} are set`);
  if (!overlayEnabled(kind, value)) return;
  if (k.enableNeedsGuestOsId && guestOsId === 0n) fail(at, `the ${kind} page is enabled while guest_os_id is 0`);
  const gpfn = overlayGpfn(kind, value);
  if (k.outsideGpa === 'fault' && (gpfn << 12n) + 4096n > memoryBytes) fail(at, `the ${kind} page's GPFN ${hex(gpfn)} is outside the GPA space`);
}

/** `a, b or c`. */
function orList(items: string[]): string {
  return items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

function checkData(path: string, kind: string, length: number, data: Buffer | undefined): void {
  if (kind === 'write') {
    if (!isBuffer(data) || data.length !== length) fail(path, `a write of ${length} bytes carries ${isBuffer(data) ? data.length : 0} bytes of data`);
  } else if (data !== undefined && data.length > 0) fail(path, `a ${kind} carries no data`);
}

function checkAccess(path: string, a: PendingAccess, memoryBytes: bigint): void {
  if (!KINDS.has(a.kind)) fail(`${path}.kind`, `${JSON.stringify(a.kind)} is not read, write or execute`);
  if (!Number.isInteger(a.length) || a.length < 1 || a.length > MAX_ACCESS_BYTES) fail(`${path}.length`, `${a.length} is not 1..${MAX_ACCESS_BYTES}`);
  const gpa = u64(`${path}.gpa`, a.gpa);
  if (gpa + BigInt(a.length) > memoryBytes) fail(`${path}.gpa`, `GPA range ${hex(gpa)}+${a.length} is outside the GPA space (${memoryBytes} bytes)`);
  checkData(`${path}.data`, a.kind, a.length, a.data);
  u64(`${path}.rip`, a.rip);
  u64(`${path}.intercept_id`, a.interceptId);
}

/** An HV_MESSAGE as the host or a guest could queue it (PostMessage rules; intercepts are GPA intercepts). */
function checkQueuedMessage(path: string, m: Buffer): void {
  if (!isBuffer(m) || m.length !== HV_MESSAGE_SIZE) fail(path, `${isBuffer(m) ? m.length : 0} bytes; an HV_MESSAGE is ${HV_MESSAGE_SIZE}`);
  const h = HvMessageHeaderLayout.decode(m);
  if (h.messageType === HvMessageType.HvMessageTypeNone) fail(path, 'MessageType 0 (HvMessageTypeNone) marks an empty slot, not a message');
  if (h.payloadSize > HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT) fail(path, `PayloadSize ${h.payloadSize} exceeds ${HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT}`);
  if ((h.messageFlags & ~1) !== 0) fail(path, `MessageFlags ${hex(h.messageFlags)} has bits other than MessagePending`);
}

/** The HV_MESSAGE{HvMessageTypeGpaIntercept} of a pending intercept: the message monitors receive. */
function checkInterceptMessage(path: string, m: Buffer, arch: string, vpIndex: number, kind: string): void {
  if (!isBuffer(m) || m.length !== HV_MESSAGE_SIZE) fail(path, `${isBuffer(m) ? m.length : 0} bytes; an HV_MESSAGE is ${HV_MESSAGE_SIZE}`);
  const h = HvMessageHeaderLayout.decode(m);
  if (h.messageType !== HvMessageType.HvMessageTypeGpaIntercept)
    fail(path, `MessageType ${hex(h.messageType)} is not HvMessageTypeGpaIntercept (${hex(HvMessageType.HvMessageTypeGpaIntercept)})`);
  const size = arch === 'arm64' ? HV_ARM64_MEMORY_INTERCEPT_MESSAGE_SIZE : HV_X64_MEMORY_INTERCEPT_MESSAGE_SIZE;
  if (h.payloadSize !== size) fail(path, `PayloadSize ${h.payloadSize} is not the ${size}-byte ${arch} memory intercept message`);
  if ((h.messageFlags & ~1) !== 0) fail(path, `MessageFlags ${hex(h.messageFlags)} has bits other than MessagePending`);
  const payload = HV_MESSAGE_PAYLOAD_OFFSET;
  const { vpIndex: msgVp, interceptAccessType } =
    arch === 'arm64' ? HvArm64MemoryInterceptMessageLayout.decode(m, payload) : HvX64InterceptMessageHeaderLayout.decode(m, payload);
  if (msgVp !== vpIndex) fail(path, `the message's VpIndex ${msgVp} is not the intercept's VP ${vpIndex}`);
  if (interceptAccessType !== (INTERCEPT_ACCESS_TYPE as Record<string, number | undefined>)[kind])
    fail(path, `the message's InterceptAccessType ${interceptAccessType} is not a ${kind}`);
}

function checkRegisters(path: string, regs: RegisterEntry[], where: 'shared' | 'private'): void {
  if (!Array.isArray(regs)) fail(path, 'missing');
  const seen = new Set<number>();
  regs.forEach((r, k) => {
    const at = `${path}[${k}]`;
    const info = typeof r.name === 'number' ? registerInfo(r.name) : undefined;
    if (!info) fail(`${at}.name`, `${typeof r.name === 'number' ? hex(r.name) : String(r.name)} is not a modelled HV_REGISTER_NAME`);
    if (info!.readOnly || info!.writeOnly)
      fail(`${at}.name`, `${info!.tlfsName} is ${info!.readOnly ? 'read-only (computed, never stored)' : 'write-only (never stored)'}`);
    if (where === 'shared' && info!.scope !== 'shared') fail(`${at}.name`, `${info!.tlfsName} is not shared between VTLs`);
    if (where === 'private' && (info!.scope !== 'private' || PARTITION_VTL_REGISTERS.has(r.name))) {
      fail(`${at}.name`, info!.scope === 'shared' ? `${info!.tlfsName} is shared between VTLs, not private` : `${info!.tlfsName} is not kept per VP and VTL`);
    }
    if (seen.has(r.name)) fail(`${at}.name`, `${info!.tlfsName} appears twice`);
    seen.add(r.name);
    const low = u64(`${at}.low`, r.value?.low);
    const high = u64(`${at}.high`, r.value?.high);
    if (info!.shape === 'reg64' && high !== 0n) fail(`${at}.high`, `${info!.tlfsName} is a 64-bit register; bits 127:64 must be 0`);
    if (info!.shape === 'table' && (low & ((1n << 48n) - 1n)) !== 0n)
      fail(`${at}.low`, `${info!.tlfsName} is an HV_X64_TABLE_REGISTER; its pad bytes 0..5 must be 0`);
    if (r.name >= R.HvRegisterSint0 && r.name <= R.HvRegisterSint15 && (low & HV_SINT_MASKED) === 0n && (low & 0xffn) < 16n) {
      fail(`${at}.low`, `${info!.tlfsName}: vector ${low & 0xffn} is below 16 and the SINT is not masked`);
    }
  });
}
