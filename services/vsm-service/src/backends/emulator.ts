// service layer, emulator backend: runs the core in process and translates vsm.v1 messages to and
// from core calls. VSM rules live in the core; this file only converts and routes.
import * as core from '@vsm/core';
import { HvError, HvStatus, Partition, PartitionManager, VirtualProcessor, hvFail, isVtl } from '@vsm/core';
import { pb as P } from '@vsm/client';
import pb = P;
import vpb = P;
import gpb = P;
import mpb = P;
import tpb = P;
const PbRegisterName = P.HvRegisterName;
type PbRegisterName = P.HvRegisterName;
import { Backend, StreamSink } from '../backend';
import { invalidArgument } from '../errors';
import { parsePartitionName, parseVpName, partitionName, vpName } from '../names';

export const MAX_GUEST_ACCESS = 65536;
export const MAX_GPA_ACCESS = 1 << 20;
const WATCH_QUEUE = 1024;

export class EmulatorBackend implements Backend {
  readonly kind = 'emulator';
  readonly manager: PartitionManager;

  constructor(limits: Partial<core.Limits> = {}) {
    this.manager = new PartitionManager({ ...core.DEFAULT_LIMITS, ...limits });
  }

  // ---- partitions -----------------------------------------------------------------------------

  async createPartition(r: pb.CreatePartitionRequest): Promise<pb.Partition> {
    const want = r.partition;
    if (!want) throw invalidArgument('partition is required');
    if (want.name) throw invalidArgument('partition.name is output only; choose the id with partition_id');
    const arch = want.architecture === pb.Architecture.ARCHITECTURE_ARM64 ? 'arm64' : want.architecture === pb.Architecture.ARCHITECTURE_X64 || want.architecture === pb.Architecture.ARCHITECTURE_UNSPECIFIED ? 'x64' : undefined;
    if (!arch) throw invalidArgument(`unknown architecture ${want.architecture}`);
    const p = this.manager.create({
      partitionId: r.partitionId || undefined,
      requestId: r.requestId || undefined,
      architecture: arch,
      vpCount: want.vpCount,
      memoryBytes: want.memoryBytes,
      maximumVtl: want.maximumVtl,
      labels: want.labels ?? {},
    });
    return toPbPartition(p, r.requestId);
  }
  async getPartition(r: pb.GetPartitionRequest) {
    return toPbPartition(this.partition(r.name));
  }
  async listPartitions(r: pb.ListPartitionsRequest): Promise<pb.ListPartitionsResponse> {
    const { partitions, nextPageToken } = this.manager.list(r.pageSize, r.pageToken);
    return { partitions: partitions.map((p) => toPbPartition(p)), nextPageToken };
  }
  async deletePartition(r: pb.DeletePartitionRequest) {
    this.manager.delete(parsePartitionName(r.name));
    return {};
  }
  async getCapabilities(): Promise<pb.Capabilities> {
    return {
      backend: 'emulator',
      architectures: [pb.Architecture.ARCHITECTURE_X64, pb.Architecture.ARCHITECTURE_ARM64],
      maxVpCount: this.manager.limits.maxVpCount,
      maxMemoryBytes: this.manager.limits.maxMemoryBytes,
      maxVtl: core.HV_MAX_SUPPORTED_VTL,
      hypercallCodes: core.implementedHypercalls(),
      features: [
        { name: 'vtl', supported: true, reason: '' },
        { name: 'overlays', supported: true, reason: '' },
        { name: 'xmm-fast-hypercalls', supported: false, reason: 'CPUID 0x40000003 EDX bit 4 is not offered' },
      ],
    };
  }

  // ---- virtual processors ---------------------------------------------------------------------

  async getVirtualProcessor(r: vpb.GetVirtualProcessorRequest): Promise<vpb.VirtualProcessor> {
    const { p, vp } = this.vp(r.name);
    return toPbVp(p, vp);
  }
  async getVpRegisters(r: vpb.GetVpRegistersRequest): Promise<vpb.GetVpRegistersResponse> {
    const { p, vp } = this.vp(r.name);
    const vtl = r.vtl ?? vp.activeVtl;
    const names = r.names.length ? r.names : Partition.modeledRegisters().map((i) => i.name);
    const registers = names.map((n: number) => {
      const info = core.registerInfo(n);
      if (!info) throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `register ${n} (${PbRegisterName[n] ?? 'unknown'}) is not modelled`);
      return { name: n as PbRegisterName, value: toPbValue(info, p.getRegister(vp, vtl, n)) };
    });
    return { registers, vtl };
  }
  async setVpRegisters(r: vpb.SetVpRegistersRequest) {
    const { p, vp } = this.vp(r.name);
    p.assertActive();
    const vtl = r.vtl ?? vp.activeVtl;
    const regs = r.registers.map((a: vpb.RegisterAssoc) => {
      const info = core.registerInfo(a.name);
      if (!info) throw new HvError(HvStatus.HV_STATUS_INVALID_PARAMETER, `register ${a.name} is not modelled`);
      return { name: a.name as number, value: fromPbValue(info, a.value) };
    });
    p.setRegisters(vp, vtl, regs, 'host');
    return {};
  }

  // ---- guest actions --------------------------------------------------------------------------

  async writeMsr(r: gpb.WriteMsrRequest): Promise<gpb.WriteMsrResponse> {
    const { p, vp } = this.vp(r.name);
    const o = p.writeMsr(vp, r.msr, r.value);
    return { outcome: outcome({ ...o, activeVtl: vp.activeVtl }) };
  }
  async readMsr(r: gpb.ReadMsrRequest): Promise<gpb.ReadMsrResponse> {
    const { p, vp } = this.vp(r.name);
    const o = p.readMsr(vp, r.msr);
    return { outcome: outcome({ exception: o.exception, activeVtl: vp.activeVtl }), value: o.exception ? 0n : o.value };
  }
  async hypercall(r: gpb.HypercallRequest): Promise<gpb.HypercallResponse> {
    const { p, vp } = this.vp(r.name);
    p.assertActive();
    if (r.input.length > 4096) throw invalidArgument('input is larger than a page');
    if (r.outputSize > 4096) throw invalidArgument('output_size is larger than a page');
    const fast = core.decodeHypercallInput(r.control).fast;
    const R = core.HvRegisterName;
    // The guest loads its registers (and, memory-based, stores the input block) before VMCALL.
    if (fast && r.input.length) {
      const buf = Buffer.alloc(16);
      Buffer.from(r.input).copy(buf, 0, 0, Math.min(16, r.input.length));
      p.setReg(vp, R.HvX64RegisterRcx, r.control);
      p.setReg(vp, R.HvX64RegisterRdx, buf.readBigUInt64LE(0));
      p.setReg(vp, R.HvX64RegisterR8, buf.readBigUInt64LE(8));
    } else {
      if (r.input.length) {
        p.checkRange(r.inputGpa, r.input.length);
        if (!p.writeView(vp.activeVtl, vp.index, r.inputGpa, Buffer.from(r.input))) return { outcome: outcome({ exception: core.X64Exception.GP, activeVtl: vp.activeVtl }), resultValue: 0n, status: 0, repsCompleted: 0, output: Buffer.alloc(0) };
      }
      p.setReg(vp, R.HvX64RegisterRcx, r.control);
      p.setReg(vp, R.HvX64RegisterRdx, r.inputGpa);
      p.setReg(vp, R.HvX64RegisterR8, r.outputGpa);
    }
    const o = core.executeVmcall(p, vp);
    const { status, repsCompleted } = core.decodeHypercallResult(o.resultValue);
    let output: Buffer = Buffer.alloc(0);
    if (!o.exception && r.outputSize > 0 && !fast) {
      p.checkRange(r.outputGpa, r.outputSize);
      output = p.readView(vp.activeVtl, vp.index, r.outputGpa, r.outputSize);
    }
    return { outcome: outcome(o), resultValue: o.resultValue, status, repsCompleted, output };
  }
  async callHypercallPage(r: gpb.CallHypercallPageRequest): Promise<gpb.CallHypercallPageResponse> {
    const { p, vp } = this.vp(r.name);
    const R = core.HvRegisterName;
    if (r.rcx !== undefined) p.setReg(vp, R.HvX64RegisterRcx, r.rcx);
    if (r.rdx !== undefined) p.setReg(vp, R.HvX64RegisterRdx, r.rdx);
    if (r.r8 !== undefined) p.setReg(vp, R.HvX64RegisterR8, r.r8);
    const o = core.callHypercallPage(p, vp, r.offset);
    return { outcome: outcome(o), rax: o.rax };
  }
  async readMemory(r: gpb.ReadMemoryRequest): Promise<gpb.ReadMemoryResponse> {
    const { p, vp } = this.vp(r.name);
    p.assertActive();
    if (r.length < 1 || r.length > MAX_GUEST_ACCESS) throw invalidArgument(`length must be 1..${MAX_GUEST_ACCESS}`);
    const data = p.readView(vp.activeVtl, vp.index, r.gpa, r.length);
    return { outcome: outcome({ activeVtl: vp.activeVtl }), data };
  }
  async writeMemory(r: gpb.WriteMemoryRequest): Promise<gpb.WriteMemoryResponse> {
    const { p, vp } = this.vp(r.name);
    p.assertActive();
    if (r.data.length < 1 || r.data.length > MAX_GUEST_ACCESS) throw invalidArgument(`data must be 1..${MAX_GUEST_ACCESS} bytes`);
    const ok = p.writeView(vp.activeVtl, vp.index, r.gpa, Buffer.from(r.data));
    // A guest write to the hypercall page (read/execute for the guest) raises #GP.
    return { outcome: outcome({ exception: ok ? undefined : core.X64Exception.GP, activeVtl: vp.activeVtl }) };
  }

  // ---- raw memory -----------------------------------------------------------------------------

  async readGpa(r: mpb.ReadGpaRequest): Promise<mpb.ReadGpaResponse> {
    const p = this.partition(r.name);
    if (r.length < 1 || r.length > MAX_GPA_ACCESS) throw invalidArgument(`length must be 1..${MAX_GPA_ACCESS}`);
    p.checkRange(r.gpa, r.length);
    if (r.vtlView === undefined) return { data: p.memory.read(r.gpa, r.length) };
    if (!isVtl(r.vtlView) || !p.vtls.get(r.vtlView).enabled) throw new HvError(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${r.vtlView} is not enabled for the partition`);
    return { data: p.readView(r.vtlView, 0, r.gpa, r.length) };
  }
  async writeGpa(r: mpb.WriteGpaRequest): Promise<mpb.WriteGpaResponse> {
    const p = this.partition(r.name);
    if (r.data.length < 1 || r.data.length > MAX_GPA_ACCESS) throw invalidArgument(`data must be 1..${MAX_GPA_ACCESS} bytes`);
    p.checkRange(r.gpa, r.data.length);
    p.memory.write(r.gpa, r.data);
    return {};
  }

  async listOverlays(r: mpb.ListOverlaysRequest): Promise<mpb.ListOverlaysResponse> {
    const p = this.partition(r.name);
    if (r.vtl !== undefined && !isVtl(r.vtl)) throw invalidArgument(`vtl ${r.vtl} is not a supported VTL`);
    const kinds: Record<core.OverlayKind, P.OverlayKind> = {
      hypercall: P.OverlayKind.OVERLAY_KIND_HYPERCALL,
      'reference-tsc': P.OverlayKind.OVERLAY_KIND_REFERENCE_TSC,
      'vp-assist': P.OverlayKind.OVERLAY_KIND_VP_ASSIST_PAGE,
      simp: P.OverlayKind.OVERLAY_KIND_SIMP,
      siefp: P.OverlayKind.OVERLAY_KIND_SIEFP,
    };
    const overlays = p.overlays
      .list()
      .filter((o) => r.vtl === undefined || o.vtl === r.vtl)
      .map((o) => ({
        kind: kinds[o.kind],
        vtl: o.vtl,
        vpIndex: o.vpIndex ?? undefined,
        gpa: o.gpfn << 12n,
        stackPosition: p.overlays.stackAt(o.vtl, o.gpfn, o.vpIndex).indexOf(o),
        readOnly: o.readOnly,
      }));
    return { overlays, viewGeneration: BigInt(p.overlays.generation) };
  }

  // ---- VTLs -----------------------------------------------------------------------------------

  async enablePartitionVtl(r: tpb.EnablePartitionVtlRequest): Promise<tpb.EnablePartitionVtlResponse> {
    const p = this.partition(r.name);
    p.enablePartitionVtl('host', r.targetVtl, r.enableMbec ? 1 : 0);
    return { enabledVtlSet: p.enabledVtlSet };
  }
  async enableVpVtl(r: tpb.EnableVpVtlRequest): Promise<tpb.EnableVpVtlResponse> {
    const { p, vp } = this.vp(r.name);
    const ctx = r.initialContext ? fromPbContext(r.initialContext) : core.longModeContext();
    p.enableVpVtl('host', vp.index, r.targetVtl, ctx);
    return { vp: toPbVp(p, vp) };
  }
  async watchVtlTransitions(r: tpb.WatchVtlTransitionsRequest, sink: StreamSink<tpb.WatchVtlTransitionsResponse>, signal: AbortSignal): Promise<void> {
    const p = this.partition(r.name);
    if (r.vpIndex !== undefined) p.vp(r.vpIndex);
    const queue: tpb.WatchVtlTransitionsResponse[] = [];
    let missed = 0n;
    let firstMissed = 0n;
    let wake: (() => void) | undefined;
    const off = p.onTransition((t) => {
      if (r.vpIndex !== undefined && t.vpIndex !== r.vpIndex) return;
      if (queue.length >= WATCH_QUEUE) {
        if (missed === 0n) firstMissed = t.sequence;
        missed++;
        return;
      }
      queue.push({ event: { $case: 'transition', value: { sequence: t.sequence, vpIndex: t.vpIndex, fromVtl: t.fromVtl, toVtl: t.toVtl, entryReason: t.entryReason, isReturn: t.isReturn, fastReturn: t.fastReturn, timeUnixUs: t.timeUnixUs } } });
      wake?.();
    });
    try {
      while (!signal.aborted) {
        if (queue.length === 0 && missed === 0n) {
          await new Promise<void>((res) => {
            wake = res;
            signal.addEventListener('abort', () => res(), { once: true });
          });
          wake = undefined;
          continue;
        }
        const next = queue.shift();
        if (next) {
          if (!sink.write(next)) await sink.drained();
        }
        if (queue.length === 0 && missed > 0n) {
          sink.write({ event: { $case: 'lagged', value: { missed, firstMissedSequence: firstMissed } } });
          missed = 0n;
        }
      }
    } finally {
      off();
    }
  }

  async close(): Promise<void> {}

  // ---- helpers --------------------------------------------------------------------------------

  partition(name: string): Partition {
    return this.manager.get(parsePartitionName(name));
  }
  vp(name: string): { p: Partition; vp: VirtualProcessor } {
    const n = parseVpName(name);
    const p = this.manager.get(n.partition);
    return { p, vp: p.vp(n.vp) };
  }
}

function toPbPartition(p: Partition, requestId = ''): pb.Partition {
  return {
    name: partitionName(p.id),
    architecture: p.spec.architecture === 'arm64' ? pb.Architecture.ARCHITECTURE_ARM64 : pb.Architecture.ARCHITECTURE_X64,
    vpCount: p.spec.vpCount,
    memoryBytes: p.spec.memoryBytes,
    labels: { ...p.spec.labels },
    maximumVtl: p.maximumVtl,
    state: p.state === 'active' ? pb.PartitionState.PARTITION_STATE_ACTIVE : pb.PartitionState.PARTITION_STATE_CRASHED,
    enabledVtlSet: p.enabledVtlSet,
    createTimeUnixMs: BigInt(p.createTimeUnixMs),
    requestId,
  };
}

function toPbVp(p: Partition, vp: VirtualProcessor): vpb.VirtualProcessor {
  return {
    name: vpName(p.id, vp.index),
    vpIndex: vp.index,
    vtlStatus: { activeVtl: vp.activeVtl, enabledVtlSet: vp.enabledVtlSet, lastEntryReason: vp.vtls.get(vp.activeVtl).entryReason, interceptSuspended: false },
  };
}

function outcome(o: { exception?: number; activeVtl: number; vtlSwitch?: core.VtlSwitchEvent }): gpb.GuestActionOutcome {
  return {
    exception: (o.exception ?? 0) as gpb.X64Exception,
    activeVtl: o.activeVtl,
    vtlSwitch: o.vtlSwitch ? { fromVtl: o.vtlSwitch.fromVtl, toVtl: o.vtlSwitch.toVtl, entryReason: o.vtlSwitch.entryReason } : undefined,
  };
}

function toPbValue(info: core.RegisterInfo, v: core.Reg128): vpb.RegisterValue {
  switch (info.shape) {
    case 'segment': return { value: { $case: 'segment', value: core.reg128ToSegment(v) } };
    case 'table': return { value: { $case: 'table', value: core.reg128ToTable(v) } };
    default: return { value: { $case: 'reg64', value: v.low } };
  }
}

function fromPbValue(info: core.RegisterInfo, v: vpb.RegisterValue | undefined): core.Reg128 {
  const val = v?.value;
  if (!val) throw invalidArgument(`a value is required for ${info.tlfsName}`);
  switch (val.$case) {
    case 'reg64':
      if (info.shape !== 'reg64') throw invalidArgument(`${info.tlfsName} takes a ${info.shape} value`);
      return core.reg64(val.value);
    case 'reg128':
      return { low: val.value.low, high: val.value.high };
    case 'segment':
      if (info.shape !== 'segment') throw invalidArgument(`${info.tlfsName} is not a segment register`);
      checkBits(val.value.selector, 16, 'selector');
      checkBits(val.value.attributes, 16, 'attributes');
      return core.segmentToReg128(val.value);
    case 'table':
      if (info.shape !== 'table') throw invalidArgument(`${info.tlfsName} is not a table register`);
      checkBits(val.value.limit, 16, 'limit');
      return core.tableToReg128(val.value);
  }
}

function checkBits(v: number, bits: number, what: string): void {
  if (v >= 2 ** bits) throw invalidArgument(`${what} does not fit in ${bits} bits`);
}

function fromPbContext(c: tpb.InitialVpContext): core.HvInitialVpContext {
  const seg = (s: vpb.SegmentRegister | undefined, what: string): core.HvX64SegmentRegister => {
    if (!s) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `initial_context.${what} is required`);
    checkBits(s.selector, 16, `${what}.selector`);
    checkBits(s.attributes, 16, `${what}.attributes`);
    return s;
  };
  const tab = (t: vpb.TableRegister | undefined, what: string): core.HvX64TableRegister => {
    if (!t) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `initial_context.${what} is required`);
    checkBits(t.limit, 16, `${what}.limit`);
    return t;
  };
  return {
    rip: c.rip, rsp: c.rsp, rflags: c.rflags,
    cs: seg(c.cs, 'cs'), ds: seg(c.ds, 'ds'), es: seg(c.es, 'es'), fs: seg(c.fs, 'fs'), gs: seg(c.gs, 'gs'), ss: seg(c.ss, 'ss'), tr: seg(c.tr, 'tr'), ldtr: seg(c.ldtr, 'ldtr'),
    idtr: tab(c.idtr, 'idtr'), gdtr: tab(c.gdtr, 'gdtr'),
    efer: c.efer, cr0: c.cr0, cr3: c.cr3, cr4: c.cr4, msrCrPat: c.msrCrPat,
  };
}
