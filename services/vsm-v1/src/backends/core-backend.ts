// service layer, emulator backend: runs the core in process and translates vsm.v1 messages to and
// from core calls. VSM rules live in the core; this file only converts and routes.
import * as core from '@vsm/core';
import { HvError, HvStatus, Partition, PartitionManager, type VirtualProcessor, hvFail, isVtl } from '@vsm/core';
import { pb as P } from '@vsm/client';
import pb = P;
import vpb = P;
import gpb = P;
import mpb = P;
import tpb = P;
const PbRegisterName = P.HvRegisterName;
type PbRegisterName = P.HvRegisterName;
import type { Backend, StreamSink } from '../backend';
import { invalidArgument } from '../errors';
import { parsePartitionName, parseVpName, partitionName, vpName } from '../names';
import { fromPbSnapshot, toPbSnapshot } from '../snapshot-codec';
import { exportPartition as exportPartitionStream, importPartition as importPartitionStream } from '../snapshot-stream';
import {
  EMULATOR_NO_EXECUTION,
  NOT_LOADED,
  type RunFields,
  checkConsoleWrite,
  checkDevices,
  checkLoadRequest,
  connectionSpec,
  executionUnsupported,
  toPbConnection,
} from './execution';
import { assertSnapshotFits, modifyProtectionsSliced, protectionsPage } from './protections-at-scale';
import { type BackgroundErrorReport, awaitMonitorAnswers, keepInterceptDeadlines, partitionTask, reportToStderr } from './monitor-wait';
import { type ActionAuthorizer, runGuestActions } from '../guest-action-stream';
import { abortLatch } from '../stop-latch';

export const MAX_GUEST_ACCESS = 65536;
export const MAX_GPA_ACCESS = 1 << 20;
/** Monitor: answers one `replies` message may hold (proto/vsm/v1/intercept.proto). */
export const MAX_REPLIES_PER_MESSAGE = 4096;
/** What reply() returns for an applied answer of a `quiet` replies message (no result is sent for it). */
const APPLIED_QUIETLY: P.ReplyResult = Object.freeze({ interceptId: 0n, status: P.ReplyStatus.REPLY_STATUS_APPLIED, detail: '', viewGeneration: 0n });
/** answerIntercept's options for an answer without data or generation (most): one object, not one per answer. */
const NO_ANSWER_OPTIONS = Object.freeze({});
const WATCH_QUEUE = 1024;
/** Core overlay kind -> vsm.v1.OverlayKind: one entry per kind of the core's overlay-kinds table (a new kind does not compile until it is mapped). */
const OVERLAY_KIND_TO_PB = {
  hypercall: P.OverlayKind.OVERLAY_KIND_HYPERCALL,
  'reference-tsc': P.OverlayKind.OVERLAY_KIND_REFERENCE_TSC,
  'vp-assist': P.OverlayKind.OVERLAY_KIND_VP_ASSIST_PAGE,
  simp: P.OverlayKind.OVERLAY_KIND_SIMP,
  siefp: P.OverlayKind.OVERLAY_KIND_SIEFP,
} as const satisfies Record<core.OverlayKind, P.OverlayKind>;

/** What a core-backed backend is built from: limits, each partition's platform (engine), what it reports. */
export interface CoreBackendOptions extends core.ManagerOptions {
  /** GetCapabilities.backend (default 'emulator'). */
  kind?: string;
  /** Architectures it runs (default x64 and arm64). */
  architectures?: P.Architecture[];
  /** Features beyond the core's own (the engine's: what it enforces, what it cannot do). */
  features?: P.Feature[];
}

export class CoreBackend implements Backend {
  readonly kind: string;
  readonly manager: PartitionManager;
  /** Where a partition's background failures (deadline timers, stream callbacks) are reported. */
  report: BackgroundErrorReport = reportToStderr;
  private readonly architectures: P.Architecture[];
  private readonly extraFeatures: P.Feature[];
  /** Partition.devices, as created (not in snapshots: a restored partition has none). */
  protected readonly devices = new WeakMap<Partition, string[]>();
  /** Told of every partition created or restored (and again on an idempotent retry): metrics subscribe to its events. */
  private readonly partitionListeners = new Set<(p: Partition) => void>();

  /** `options.platform`: an execution engine for every partition (the KVM agent passes one). */
  constructor(limits: Partial<core.Limits> = {}, options: CoreBackendOptions = {}) {
    this.manager = new PartitionManager({ ...core.DEFAULT_LIMITS, ...limits }, { platform: options.platform, clock: options.clock });
    this.kind = options.kind ?? 'emulator';
    this.architectures = options.architectures ?? [pb.Architecture.ARCHITECTURE_X64, pb.Architecture.ARCHITECTURE_ARM64];
    this.extraFeatures = options.features ?? [];
  }

  // ---- partitions -----------------------------------------------------------------------------

  async createPartition(r: pb.CreatePartitionRequest): Promise<pb.Partition> {
    const want = r.partition;
    if (!want) throw invalidArgument('partition is required');
    if (want.name) throw invalidArgument('partition.name is output only; choose the id with partition_id');
    const arch =
      want.architecture === pb.Architecture.ARCHITECTURE_ARM64
        ? 'arm64'
        : want.architecture === pb.Architecture.ARCHITECTURE_X64 || want.architecture === pb.Architecture.ARCHITECTURE_UNSPECIFIED
          ? 'x64'
          : undefined;
    if (!arch) throw invalidArgument(`unknown architecture ${want.architecture}`);
    if (want.runState || want.exitCode !== undefined || want.endReason || want.endTimeUnixMs !== undefined)
      throw invalidArgument('run_state, exit_code, end_reason and end_time_unix_ms are output only');
    if (r.agent || Object.keys(r.agentSelector ?? {}).length)
      throw invalidArgument('agent and agent_selector place partitions in a fleet (vsm-service --etcd-endpoints); this backend has no agents to choose from');
    if (want.recoveryPolicy)
      throw invalidArgument('recovery_policy restarts partitions on other agents of a fleet (vsm-service --etcd-endpoints); this backend has none');
    if (want.checkpointTimeUnixMs !== undefined) throw invalidArgument('checkpoint_time_unix_ms is output only');
    const devices = checkDevices(want.devices ?? []);
    const p = this.manager.create({
      partitionId: r.partitionId || undefined,
      requestId: r.requestId || undefined,
      architecture: arch,
      vpCount: want.vpCount,
      memoryBytes: want.memoryBytes,
      maximumVtl: want.maximumVtl,
      labels: want.labels ?? {},
    });
    const had = this.devices.get(p);
    // A retry of the same request_id returns the partition it created: with the same devices only.
    if (had && had.join() !== devices.join())
      throw new HvError(
        HvStatus.HV_STATUS_OBJECT_IN_USE,
        `request_id ${r.requestId} was used to create partition ${p.id} with other devices (${had.join(', ') || 'none'})`,
      );
    this.devices.set(p, devices);
    for (const l of this.partitionListeners) l(p);
    return this.toPartition(p, r.requestId);
  }
  async getPartition(r: pb.GetPartitionRequest) {
    return this.toPartition(this.partition(r.name));
  }
  async listPartitions(r: pb.ListPartitionsRequest): Promise<pb.ListPartitionsResponse> {
    const { partitions, nextPageToken } = this.manager.list(r.pageSize, r.pageToken);
    return { partitions: partitions.map((p) => this.toPartition(p)), nextPageToken };
  }
  async deletePartition(r: pb.DeletePartitionRequest) {
    this.manager.delete(parsePartitionName(r.name));
    return {};
  }
  /** FleetService: partitions run here, on no agents (the service's agent backend answers it). */
  async listAgents(): Promise<pb.ListAgentsResponse> {
    throw new HvError(
      HvStatus.HV_STATUS_FEATURE_UNAVAILABLE,
      `ListAgents: this ${this.kind} backend runs partitions itself and has no agents (vsm-service --backend agent lists them)`,
    );
  }
  /** FleetService.CheckpointPartition / RecoverPartition: durability across agents is fleet mode's (vsm-service --etcd-endpoints --checkpoint-dir). */
  async checkpointPartition(): Promise<pb.Partition> {
    throw new HvError(
      HvStatus.HV_STATUS_FEATURE_UNAVAILABLE,
      `CheckpointPartition: checkpoints for restarting on another agent are fleet mode's (vsm-service --etcd-endpoints --checkpoint-dir); this ${this.kind} backend has no other agent${this.kind === 'emulator' ? ' (--state-dir keeps its partitions durable)' : ''}`,
    );
  }
  async recoverPartition(): Promise<pb.Partition> {
    throw new HvError(
      HvStatus.HV_STATUS_FEATURE_UNAVAILABLE,
      `RecoverPartition: restarting a lost partition on another agent is fleet mode's (vsm-service --etcd-endpoints --checkpoint-dir); this ${this.kind} backend has no other agent`,
    );
  }
  async getCapabilities(): Promise<pb.Capabilities> {
    return {
      backend: this.kind,
      architectures: [...this.architectures],
      maxVpCount: this.manager.limits.maxVpCount,
      maxMemoryBytes: this.manager.limits.maxMemoryBytes,
      maxVtl: core.HV_MAX_SUPPORTED_VTL,
      hypercallCodes: core.implementedHypercalls(),
      features: [
        { name: 'vtl', supported: true, reason: '' },
        { name: 'overlays', supported: true, reason: '' },
        // From the core's one table of enlightenments (the CPUID bits a guest sees): XMM fast input/output.
        ...core.HYPERV_FEATURES.filter((f) => f.name === 'hv-xmm-input' || f.name === 'hv-xmm-output').map((f) => ({
          name: f.name,
          supported: true,
          reason: `${f.tlfsName} (CPUID 0x${f.leaf.toString(16)} ${f.register.toUpperCase()} bit ${f.bit}): ${f.what}`,
        })),
        ...this.extraFeatures,
        // MBEC (tlfs-vsm.md §7.1) unless the engine says what it can do.
        ...(this.extraFeatures.some((f) => f.name === 'mbec')
          ? []
          : [
              {
                name: 'mbec',
                supported: true,
                reason: 'user-mode and kernel-mode execute enforced for ExecuteMemory by the VP CPL; intercepts name the permission refused',
              },
            ]),
        // Unless the engine says otherwise: no guest code runs here.
        ...(this.extraFeatures.some((f) => f.name === 'guest-execution') ? [] : [{ name: 'guest-execution', supported: false, reason: EMULATOR_NO_EXECUTION }]),
      ],
    };
  }

  // ---- virtual processors ---------------------------------------------------------------------

  async getVirtualProcessor(r: vpb.GetVirtualProcessorRequest): Promise<vpb.VirtualProcessor> {
    const { p, vp } = this.vp(r.name);
    return this.toVp(p, vp);
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
    const { p, vp } = this.guestVp(r.name);
    const o = core.engineOf(p).writeMsr(vp, r.msr, r.value);
    return { outcome: outcome({ ...o, activeVtl: vp.activeVtl }) };
  }
  async readMsr(r: gpb.ReadMsrRequest): Promise<gpb.ReadMsrResponse> {
    const { p, vp } = this.guestVp(r.name);
    const o = core.engineOf(p).readMsr(vp, r.msr);
    return { outcome: outcome({ exception: o.exception, activeVtl: vp.activeVtl }), value: o.exception ? 0n : o.value };
  }
  async hypercall(r: gpb.HypercallRequest): Promise<gpb.HypercallResponse> {
    const { p, vp } = this.guestVp(r.name);
    if (r.input.length > 4096) throw invalidArgument('input is larger than a page');
    if (r.outputSize > 4096) throw invalidArgument('output_size is larger than a page');
    const fast = core.decodeHypercallInput(r.control).fast;
    const R = core.HvRegisterName;
    const stopped = (o: core.AccessOutcome) => ({
      ...accessOutcomeOnly(vp, o),
      resultValue: 0n,
      status: 0,
      repsCompleted: 0,
      output: Buffer.alloc(0),
      controlAfter: r.control,
      fastOutput: Buffer.alloc(0),
      continuation: false,
    });
    // The guest loads its registers (and, memory-based, stores the input block) before VMCALL.
    if (fast && r.input.length) {
      // RDX, R8 and, XMM fast, XMM0..XMM5 (tlfs-hypercalls.md §1.4): at most 112 bytes.
      if (r.input.length > core.HV_XMM_FAST_BLOCK_BYTES) throw invalidArgument(`fast input is at most ${core.HV_XMM_FAST_BLOCK_BYTES} bytes (RDX, R8, XMM0-5)`);
      const regs = core.fastInputRegisters(Buffer.from(r.input));
      p.setReg(vp, R.HvX64RegisterRcx, r.control);
      p.setReg(vp, R.HvX64RegisterRdx, regs.rdx);
      p.setReg(vp, R.HvX64RegisterR8, regs.r8);
      const xmm = regs.xmm.map((value, i) => ({ name: R.HvX64RegisterXmm0 + i, value }));
      if (xmm.length) p.setRegisters(vp, vp.activeVtl, xmm, 'host');
    } else {
      if (r.input.length) {
        // The guest's own stores of its input block: subject to higher VTLs' protections.
        p.checkRange(r.inputGpa, r.input.length);
        const stored = core.engineOf(p).store(vp, r.inputGpa, Buffer.from(r.input));
        if (stored.status !== 'completed') return stopped(stored);
      }
      p.setReg(vp, R.HvX64RegisterRcx, r.control);
      p.setReg(vp, R.HvX64RegisterRdx, r.inputGpa);
      p.setReg(vp, R.HvX64RegisterR8, r.outputGpa);
    }
    const o = core.engineOf(p).vmcall(vp);
    // A parameter block the caller may not access: a memory intercept instead of the call.
    if (o.parameterIntercept) return stopped(o.parameterIntercept);
    const { status, repsCompleted } = core.decodeHypercallResult(o.resultValue);
    let output: Buffer = Buffer.alloc(0);
    if (!o.exception && r.outputSize > 0 && !fast) {
      p.checkRange(r.outputGpa, r.outputSize);
      // The guest reading its output block back: only what its VTL may read (no intercept is
      // raised for this convenience read; protected bytes are simply not returned).
      if (core.accessibleTo(p, vp, r.outputGpa, r.outputSize, 'read')) output = core.engineOf(p).load(vp, r.outputGpa, r.outputSize);
    }
    // What the call wrote besides RAX: RCX (the input value, with the new rep start index on a
    // continuation) and the XMM fast output registers (tlfs-hypercalls.md §1.4).
    const fo = o.fastOutput;
    const fastOutput = fo ? core.fastBlockBytes(vp, fo.start, fo.offset + fo.bytes.length - fo.start) : Buffer.alloc(0);
    return {
      outcome: outcome(o),
      resultValue: o.resultValue,
      status: o.continuation ? 0 : status,
      repsCompleted: o.continuation ? 0 : repsCompleted,
      output,
      controlAfter: o.controlAfter ?? r.control,
      fastOutput,
      continuation: !!o.continuation,
    };
  }

  async callHypercallPage(r: gpb.CallHypercallPageRequest): Promise<gpb.CallHypercallPageResponse> {
    const { p, vp } = this.guestVp(r.name);
    const R = core.HvRegisterName;
    if (r.rcx !== undefined) p.setReg(vp, R.HvX64RegisterRcx, r.rcx);
    if (r.rdx !== undefined) p.setReg(vp, R.HvX64RegisterRdx, r.rdx);
    if (r.r8 !== undefined) p.setReg(vp, R.HvX64RegisterR8, r.r8);
    const o = core.engineOf(p).callHypercallPage(vp, r.offset);
    return { outcome: outcome(o), rax: o.rax };
  }
  async readMemory(r: gpb.ReadMemoryRequest): Promise<gpb.ReadMemoryResponse> {
    const { p, vp } = this.guestVp(r.name);
    const { outcome: o, data } = await this.access(p, vp, 'read', r.gpa, r.length, undefined, r.gva);
    return { outcome: o, data: data ?? Buffer.alloc(0) };
  }
  async writeMemory(r: gpb.WriteMemoryRequest): Promise<gpb.WriteMemoryResponse> {
    const { p, vp } = this.guestVp(r.name);
    if (r.data.length < 1 || r.data.length > MAX_GUEST_ACCESS) throw invalidArgument(`data must be 1..${MAX_GUEST_ACCESS} bytes`);
    // A guest write to the hypercall page (read/execute for the guest) raises #GP.
    return { outcome: (await this.access(p, vp, 'write', r.gpa, r.data.length, Buffer.from(r.data), r.gva)).outcome };
  }
  async executeMemory(r: gpb.ExecuteMemoryRequest): Promise<gpb.ExecuteMemoryResponse> {
    const { p, vp } = this.guestVp(r.name);
    if (r.length < 1 || r.length > 16) throw invalidArgument('length must be 1..16 (one instruction fetch)');
    const { outcome: o, data } = await this.access(p, vp, 'execute', r.gpa, r.length, undefined, r.gva);
    return { outcome: o, data: data ?? Buffer.alloc(0) };
  }
  /** MOV to CR0/CR4 (the core's model on both engines: KVM does not exit to user space on CR writes). */
  async writeControlRegister(r: gpb.WriteControlRegisterRequest): Promise<gpb.WriteControlRegisterResponse> {
    const name = CONTROL_REGISTERS[r.register];
    if (name === undefined) throw invalidArgument('register must be CONTROL_REGISTER_CR0 or CONTROL_REGISTER_CR4');
    const { p, vp } = this.guestVp(r.name);
    return accessOutcomeOnly(vp, p.writeControlRegister(vp, name, r.value));
  }

  /** RunGuestActions: the stream of the guest actions above (guest-action-stream.ts), each authorized as its unary RPC. */
  runGuestActions(
    requests: AsyncIterable<gpb.RunGuestActionsRequest>,
    sink: StreamSink<gpb.RunGuestActionsResponse>,
    signal: AbortSignal,
    authorize?: ActionAuthorizer,
  ): Promise<void> {
    return runGuestActions(this, requests, sink, signal, authorize);
  }

  /**
   * Runs a memory guest action; on the monitor route, waits (until the client's deadline) for a
   * monitor's answer, following RETRY answers that intercept again.
   */
  private async access(
    p: Partition,
    vp: VirtualProcessor,
    kind: core.AccessKind,
    gpa: bigint,
    length: number,
    data?: Buffer,
    gva?: bigint,
  ): Promise<{ outcome: gpb.GuestActionOutcome; data?: Buffer }> {
    if (length < 1 || length > MAX_GUEST_ACCESS) throw invalidArgument(`length must be 1..${MAX_GUEST_ACCESS}`);
    // A GVA is translated by the VP's page tables first (a fault is #PF, nothing accessed).
    p.assertVpCanAct(vp);
    const a = core.resolveActionAddress(p, vp, kind, gpa, length, gva);
    if ('exception' in a) return { outcome: outcome({ activeVtl: vp.activeVtl, exception: a.exception }) };
    return accessOutcome(vp, await awaitMonitorAnswers(p, core.engineOf(p).access(vp, kind, a.gpa, length, data, a.gva)));
  }

  // ---- raw memory -----------------------------------------------------------------------------

  async readGpa(r: mpb.ReadGpaRequest): Promise<mpb.ReadGpaResponse> {
    const p = this.partition(r.name);
    if (r.length < 1 || r.length > MAX_GPA_ACCESS) throw invalidArgument(`length must be 1..${MAX_GPA_ACCESS}`);
    p.checkRange(r.gpa, r.length);
    const viewGeneration = BigInt(p.viewGeneration);
    if (r.vtlView === undefined) return { data: p.memory.read(r.gpa, r.length), viewGeneration };
    if (!isVtl(r.vtlView) || !p.vtls.get(r.vtlView).enabled)
      throw new HvError(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${r.vtlView} is not enabled for the partition`);
    return { data: p.readView(r.vtlView, 0, r.gpa, r.length), viewGeneration };
  }
  async writeGpa(r: mpb.WriteGpaRequest): Promise<mpb.WriteGpaResponse> {
    const p = this.partition(r.name);
    if (r.data.length < 1 || r.data.length > MAX_GPA_ACCESS) throw invalidArgument(`data must be 1..${MAX_GPA_ACCESS} bytes`);
    p.checkRange(r.gpa, r.data.length);
    if (r.expectedViewGeneration !== undefined && r.expectedViewGeneration !== BigInt(p.viewGeneration)) {
      throw new HvError(
        HvStatus.HV_STATUS_OPERATION_DENIED,
        `stale memory-view generation ${r.expectedViewGeneration} (now ${p.viewGeneration}): re-read and write again`,
      );
    }
    p.memory.write(r.gpa, r.data);
    return {};
  }

  async listOverlays(r: mpb.ListOverlaysRequest): Promise<mpb.ListOverlaysResponse> {
    const p = this.partition(r.name);
    if (r.vtl !== undefined && !isVtl(r.vtl)) throw invalidArgument(`vtl ${r.vtl} is not a supported VTL`);
    const overlays = p.overlays
      .list()
      .filter((o) => r.vtl === undefined || o.vtl === r.vtl)
      .map((o) => ({
        kind: OVERLAY_KIND_TO_PB[o.kind],
        vtl: o.vtl,
        vpIndex: o.vpIndex ?? undefined,
        gpa: o.gpfn << 12n,
        stackPosition: p.overlays.stackAt(o.vtl, o.gpfn, o.vpIndex).indexOf(o),
        readOnly: o.readOnly,
      }));
    return { overlays, viewGeneration: BigInt(p.viewGeneration) };
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
    return { vp: this.toVp(p, vp) };
  }
  async watchVtlTransitions(r: tpb.WatchVtlTransitionsRequest, sink: StreamSink<tpb.WatchVtlTransitionsResponse>, signal: AbortSignal): Promise<void> {
    const p = this.partition(r.name);
    if (r.vpIndex !== undefined) p.vp(r.vpIndex);
    const queue: tpb.WatchVtlTransitionsResponse[] = [];
    let missed = 0n;
    let firstMissed = 0n;
    let wake: (() => void) | undefined;
    const poke = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    // One abort listener and one end listener for the stream's whole life (not one per idle wait).
    signal.addEventListener('abort', poke);
    let ended: 'crashed' | 'deleted' | undefined = p.state === 'crashed' ? 'crashed' : undefined;
    const offEnd = p.onEnd((why) => {
      ended = why;
      poke();
    });
    const off = p.onTransition((t) => {
      if (r.vpIndex !== undefined && t.vpIndex !== r.vpIndex) return;
      if (queue.length >= WATCH_QUEUE) {
        if (missed === 0n) firstMissed = t.sequence;
        missed++;
        return;
      }
      queue.push({
        event: {
          $case: 'transition',
          value: {
            sequence: t.sequence,
            vpIndex: t.vpIndex,
            fromVtl: t.fromVtl,
            toVtl: t.toVtl,
            entryReason: t.entryReason,
            isReturn: t.isReturn,
            fastReturn: t.fastReturn,
            timeUnixUs: t.timeUnixUs,
          },
        },
      });
      poke();
    });
    // Registered: every transition from here on reaches this stream (or its lagged count).
    sink.write({ event: { $case: 'subscribed', value: { nextSequence: p.transitionSeq + 1n } } });
    try {
      while (!signal.aborted) {
        if (queue.length === 0 && missed === 0n) {
          if (ended) throw endedError(p, ended);
          await new Promise<void>((res) => {
            wake = res;
          });
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
      offEnd();
      signal.removeEventListener('abort', poke);
    }
  }

  // ---- protections and intercepts ------------------------------------------------------------

  async modifyVtlProtectionMask(r: P.ModifyVtlProtectionMaskRequest): Promise<P.ModifyVtlProtectionMaskResponse> {
    const p = this.partition(r.name);
    if (r.ranges.length === 0) throw invalidArgument('ranges must not be empty');
    if (r.ranges.length > 65536) throw invalidArgument('at most 65536 ranges per call');
    const changed = await modifyProtectionsSliced(
      p,
      r.protectingVtl,
      r.mapFlags,
      r.ranges.map((x) => ({ start: x.startPage, count: x.pageCount })),
    );
    return { pagesChanged: BigInt(changed), viewGeneration: BigInt(p.viewGeneration) };
  }
  async getVtlProtections(r: P.GetVtlProtectionsRequest): Promise<P.GetVtlProtectionsResponse> {
    return protectionsPage(this.partition(r.name), r);
  }
  async setInterceptRoute(r: P.SetInterceptRouteRequest): Promise<P.SetInterceptRouteResponse> {
    const p = this.partition(r.name);
    const routes: Partial<Record<P.InterceptRoute, core.InterceptRoute>> = {
      [P.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL]: 'vtl',
      [P.InterceptRoute.INTERCEPT_ROUTE_MONITOR]: 'monitor',
      [P.InterceptRoute.INTERCEPT_ROUTE_BOTH]: 'both',
    };
    const route = routes[r.route];
    if (!route) throw invalidArgument('route must be HIGHER_VTL, MONITOR or BOTH');
    let policy: { ms: number; action: core.InterceptAction } | undefined;
    if (r.answerDeadlineMs !== undefined) {
      const action = INTERCEPT_ACTIONS[r.deadlineAction];
      if (!action) throw invalidArgument('deadline_action must be ALLOW, SKIP, RETRY or CRASH when answer_deadline_ms is set');
      if (r.answerDeadlineMs < 1n || r.answerDeadlineMs > BigInt(core.MAX_INTERCEPT_DEADLINE_MS))
        throw invalidArgument(`answer_deadline_ms must be 1..${core.MAX_INTERCEPT_DEADLINE_MS}`);
      policy = { ms: Number(r.answerDeadlineMs), action };
    }
    p.setInterceptRoute(route, policy);
    // The policy applies to every intercept raised from now on (not only those a guest action waits on).
    keepInterceptDeadlines(p, this.report);
    return {
      route: r.route,
      answerDeadlineMs: policy ? BigInt(policy.ms) : undefined,
      deadlineAction: policy ? r.deadlineAction : P.InterceptAction.INTERCEPT_ACTION_UNSPECIFIED,
    };
  }
  async listPendingIntercepts(r: P.ListPendingInterceptsRequest): Promise<P.ListPendingInterceptsResponse> {
    const p = this.partition(r.name);
    return { intercepts: [...p.intercepts.pending.values()].map((x) => interceptEvent(p, x, false)) };
  }

  async monitor(requests: AsyncIterable<P.MonitorRequest>, sink: StreamSink<P.MonitorResponse>, signal: AbortSignal): Promise<void> {
    const it = requests[Symbol.asyncIterator]();
    const first = await it.next();
    if (first.done || first.value.kind?.$case !== 'subscribe') throw invalidArgument('the first Monitor message must be subscribe');
    const sub = first.value.kind.value;
    const p = this.partition(sub.name);
    if (sub.vpIndex !== undefined) p.vp(sub.vpIndex);
    if (sub.vtl !== undefined && !isVtl(sub.vtl)) throw invalidArgument(`vtl ${sub.vtl} is not a supported VTL`);
    if ((sub.accessMask & ~7) !== 0) throw invalidArgument('access_mask has bits other than read 0x1, write 0x2, execute 0x4');
    // A crashed partition has nothing to monitor and takes no answers.
    p.assertActive();
    let mask = sub.accessMask === 0 ? 7 : sub.accessMask;
    const kindBit: Record<core.AccessKind, number> = { read: 1, write: 2, execute: 4 };
    const matches = (x: core.InterceptRecord) =>
      (mask & kindBit[x.kind]) !== 0 &&
      (sub.vpIndex === undefined || x.vpIndex === sub.vpIndex) &&
      (sub.vtl === undefined || x.vtl === sub.vtl) &&
      (sub.gpaStart === undefined || x.gpa >= sub.gpaStart) &&
      (sub.gpaEnd === undefined || x.gpa < sub.gpaEnd);
    /** Sends one intercept; false when the stream wants the producer to wait (back-pressure). */
    const send = (x: core.InterceptRecord): boolean => {
      if (signal.aborted) return true; // a dead stream takes nothing (the intercept stays pending for the next monitor)
      const redelivered = p.intercepts.noteDelivery(x);
      return sink.write({ kind: { $case: 'intercept', value: interceptEvent(p, x, redelivered) } });
    };
    // subscribe.batch: live intercepts raised by one piece of the service's work (a message read and
    // everything its promises set off: a `replies` message resuming VPs that fault again) go out
    // together in one `intercepts` message once that work is done (process.nextTick from inside it:
    // after its microtasks, before Node hands the HTTP/2 session's pending writes to the socket; a
    // setImmediate here ran after that hand-over and the message waited for the next one, 1.06-1.21x
    // fewer intercepts per second, bench/README.md "Third pass"), or as soon as the message holds half
    // as many intercepts as the partition has VPs: a turn in which every VP faults again then sends two
    // messages (8 VPs: 1.1-1.3x the intercepts per second of one message per turn, measured against
    // each other in the same run; 16 VPs 1.24x, 32 VPs 1.10x; bench/README.md).
    const earlyFlush = Math.max(1, p.vps.length >> 1);
    let batch: core.InterceptRecord[] | undefined;
    const flushBatch = () => {
      const b = batch;
      if (!b) return; // sent early (half the VPs), nothing raised since
      batch = undefined;
      if (signal.aborted) return; // a dead stream takes nothing (the intercepts stay pending)
      sink.write({ kind: { $case: 'intercepts', value: { intercepts: b.map((x) => interceptEvent(p, x, p.intercepts.noteDelivery(x))) } } });
    };
    const deliver = (x: core.InterceptRecord) => {
      if (!sub.batch) return void send(x);
      if (batch) batch.push(x);
      else {
        batch = [x];
        process.nextTick(() => partitionTask(p, 'Monitor stream delivery', flushBatch, this.report));
      }
      if (batch.length >= earlyFlush) flushBatch();
    };
    // New intercepts are taken from the moment of subscribing; while the pending ones are replayed
    // (with back-pressure: a long backlog must not overflow the stream's cap) they wait in order.
    let replaying: core.InterceptRecord[] | undefined = [];
    const off = p.intercepts.subscribe((x) =>
      partitionTask(
        p,
        'Monitor stream delivery',
        () => {
          if (replaying) replaying.push(x);
          else if (matches(x)) deliver(x);
        },
        this.report,
      ),
    );
    // The partition's end (crash, delete) ends the stream with a status, also one that comes while
    // the pending intercepts are replayed.
    // One latch for both (not Promise.race per message: see stop-latch.ts).
    const stop = abortLatch<'crashed' | 'deleted' | 'aborted'>(signal, 'aborted');
    const offEnd = p.onEnd((why) => stop.stop(why));
    try {
      sink.write({ kind: { $case: 'subscription', value: { accessMask: mask, viewGeneration: BigInt(p.viewGeneration) } } });
      // At-least-once: everything still unanswered goes to the new monitor first.
      const replayed = new Set<bigint>();
      for (const x of [...p.intercepts.pending.values()]) {
        if (signal.aborted) break;
        if (!matches(x) || !p.intercepts.pending.has(x.id)) continue;
        replayed.add(x.id);
        if (!send(x)) await sink.drained();
      }
      for (const x of replaying) if (!replayed.has(x.id) && matches(x)) send(x);
      replaying = undefined;
      if (p.deleted || p.state !== 'active') throw endedError(p, p.deleted ? 'deleted' : 'crashed');
      while (!signal.aborted) {
        const next = await stop.race(it.next());
        if (next === 'aborted') break;
        if (next === 'crashed' || next === 'deleted') throw endedError(p, next);
        if (next.done) break;
        const k = next.value.kind;
        if (!k) continue;
        if (k.$case === 'subscribe') throw invalidArgument('subscribe may only be sent once per stream');
        let wrote: boolean;
        if (k.$case === 'updateEvents') {
          const m = k.value.accessMask;
          if ((m & ~7) !== 0) throw invalidArgument('access_mask has bits other than read 0x1, write 0x2, execute 0x4');
          if (k.value.op === P.EventMaskOp.EVENT_MASK_OP_SET) mask = m;
          else if (k.value.op === P.EventMaskOp.EVENT_MASK_OP_ENABLE) mask |= m;
          else if (k.value.op === P.EventMaskOp.EVENT_MASK_OP_DISABLE) mask &= ~m;
          else throw invalidArgument('update_events.op must be SET, ENABLE or DISABLE');
          wrote = sink.write({ kind: { $case: 'subscription', value: { accessMask: mask, viewGeneration: BigInt(p.viewGeneration) } } });
        } else if (k.$case === 'replies') {
          const replies = k.value.replies;
          if (replies.length > MAX_REPLIES_PER_MESSAGE)
            throw invalidArgument(`replies holds ${replies.length} answers; at most ${MAX_REPLIES_PER_MESSAGE} per message`);
          if (p.deleted || p.state !== 'active') throw endedError(p, p.deleted ? 'deleted' : 'crashed');
          // Each as a `reply`, in order; once one ended the partition (CRASH) the rest are not applied.
          // quiet: only the results of replies not applied, and no message when every one was.
          const quiet = k.value.quiet === true;
          const results: P.ReplyResult[] = [];
          for (const r of replies) {
            const x =
              p.deleted || p.state !== 'active'
                ? {
                    interceptId: r.interceptId,
                    status: P.ReplyStatus.REPLY_STATUS_INVALID,
                    detail: 'not applied: the partition ended (an earlier reply of this message answered CRASH)',
                    viewGeneration: BigInt(p.viewGeneration),
                  }
                : this.reply(p, r, quiet);
            if (x !== APPLIED_QUIETLY) results.push(x);
          }
          wrote = !quiet || results.length > 0 ? sink.write({ kind: { $case: 'replyResults', value: { results } } }) : true;
        } else {
          // An answer to a partition that ended meanwhile is not applied: the stream ends instead.
          if (p.deleted || p.state !== 'active') throw endedError(p, p.deleted ? 'deleted' : 'crashed');
          wrote = sink.write({ kind: { $case: 'replyResult', value: this.reply(p, k.value) } });
        }
        // Back-pressure: read the client's next message only once it takes our answers again.
        if (!wrote) await sink.drained();
      }
    } finally {
      off();
      offEnd();
    }
  }

  /** Applies one answer; its result (APPLIED_QUIETLY for an applied reply of a `quiet` message: nothing built). */
  private reply(p: Partition, r: P.InterceptReply, quiet = false): P.ReplyResult {
    // One object literal per outcome (not a spread of a shared base: V8's object spread was the
    // largest self time of a monitor's answer in the intercept benchmark).
    const result = (status: P.ReplyStatus, detail: string): P.ReplyResult => ({
      interceptId: r.interceptId,
      status,
      detail,
      viewGeneration: BigInt(p.viewGeneration),
    });
    const action = INTERCEPT_ACTIONS[r.action];
    if (!action) return result(P.ReplyStatus.REPLY_STATUS_INVALID, 'action must be ALLOW, SKIP, RETRY or CRASH');
    const st = p.intercepts.status(r.interceptId);
    if (st === 'unknown') return result(P.ReplyStatus.REPLY_STATUS_UNKNOWN_INTERCEPT, `intercept ${r.interceptId} is not pending`);
    if (st === 'duplicate') return result(P.ReplyStatus.REPLY_STATUS_DUPLICATE, 'already answered; ignored');
    try {
      core.answerIntercept(
        p,
        r.interceptId,
        action,
        r.data.length === 0 && r.viewGeneration === undefined
          ? NO_ANSWER_OPTIONS
          : {
              // Only SKIP reads the data (a read's bytes); the message's own bytes, not a copy.
              data: r.data.length > 0 ? Buffer.from(r.data.buffer, r.data.byteOffset, r.data.length) : undefined,
              generation: r.viewGeneration === undefined ? undefined : Number(r.viewGeneration),
            },
      );
      return quiet ? APPLIED_QUIETLY : result(P.ReplyStatus.REPLY_STATUS_APPLIED, action);
    } catch (e) {
      if (e instanceof HvError && e.status === HvStatus.HV_STATUS_OPERATION_DENIED) return result(P.ReplyStatus.REPLY_STATUS_STALE_GENERATION, e.message);
      if (e instanceof HvError && e.status === HvStatus.HV_STATUS_INSUFFICIENT_MEMORY)
        return result(P.ReplyStatus.REPLY_STATUS_INVALID, `not applied, the intercept stays pending: ${e.message}`);
      throw e;
    }
  }

  // ---- SynIC ---------------------------------------------------------------------------------

  private synicTarget(name: string, vtl: number, sint: number): { p: Partition; vp: VirtualProcessor; vtl: core.Vtl } {
    const { p, vp } = this.vp(name);
    p.assertActive();
    if (!isVtl(vtl) || !vp.vtls.get(vtl).enabled) throw new HvError(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${vtl} is not enabled on VP ${vp.index}`);
    if (!Number.isInteger(sint) || sint < 0 || sint > 15) throw invalidArgument('sint must be 0..15');
    return { p, vp, vtl };
  }
  async postMessage(r: P.PostMessageRequest): Promise<P.PostMessageResponse> {
    const { p, vp, vtl } = this.synicTarget(r.name, r.vtl, r.sint);
    if (r.messageType === 0 || (r.messageType & 0x80000000) !== 0)
      throw invalidArgument('message_type must be non-zero with bit 31 clear (hypervisor types are reserved)');
    if (r.payload.length > core.HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT) throw invalidArgument('payload exceeds 240 bytes');
    const view = p.synicView(vp, vtl);
    // A VP whose SynIC or SIM page is disabled is not an eligible target (§5.4 rule 1).
    if (!view.enabled() || !view.simPage())
      throw new HvError(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `the SynIC or SIM page of VP ${vp.index} VTL ${vtl} is disabled`);
    const msg = core.encodeHvMessage({ messageType: r.messageType, payloadSize: r.payload.length, messageFlags: 0, originationId: 0n }, Buffer.from(r.payload));
    const res = p.postMessage(vp, vtl, r.sint, msg);
    if (res === 'full') throw new HvError(HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS, `SINT${r.sint} already has ${core.SYNIC_QUEUE_LIMIT} queued messages`);
    return { delivered: res === 'delivered' };
  }
  async signalEvent(r: P.SignalEventRequest): Promise<P.SignalEventResponse> {
    const { p, vp, vtl } = this.synicTarget(r.name, r.vtl, r.sint);
    if (!Number.isInteger(r.flag) || r.flag < 0 || r.flag >= core.HV_EVENT_FLAGS_COUNT) throw invalidArgument('flag must be 0..2047');
    const res = vp.vtls.get(vtl).synic.signalEvent(p.synicView(vp, vtl), r.sint, r.flag);
    if (res === 'disabled') throw new HvError(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, 'the SynIC or SIEF page is disabled');
    if (res === 'masked') throw new HvError(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `SINT${r.sint} is masked`);
    return { newlySet: res };
  }
  async getSynicState(r: P.GetSynicStateRequest): Promise<P.GetSynicStateResponse> {
    const { vp } = this.vp(r.name);
    if (!isVtl(r.vtl) || !vp.vtls.get(r.vtl).enabled) throw new HvError(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${r.vtl} is not enabled on VP ${vp.index}`);
    return { queued: vp.vtls.get(r.vtl).synic.queues.map((q) => q.length) };
  }

  // ---- snapshots -------------------------------------------------------------------------------

  async savePartition(r: P.SavePartitionRequest): Promise<P.PartitionSnapshot> {
    const p = this.partition(r.name);
    assertSnapshotFits(p, partitionName(p.id));
    return toPbSnapshot(core.snapshotPartition(p), partitionName(p.id));
  }
  async restorePartition(r: P.RestorePartitionRequest): Promise<P.Partition> {
    if (!r.snapshot) throw invalidArgument('snapshot is required');
    // Validated completely (core validateSnapshot, resident-RAM limit) before anything is created.
    const p = this.manager.restore(fromPbSnapshot(r.snapshot), r.partitionId || undefined);
    for (const l of this.partitionListeners) l(p);
    return this.toPartition(p);
  }

  /** Streamed snapshots (snapshot-stream.ts). A running guest writes RAM behind the export's copy-on-write: pause it first. */
  async exportPartition(r: P.ExportPartitionRequest, sink: StreamSink<P.SnapshotChunk>, signal: AbortSignal): Promise<void> {
    const p = this.partition(r.name);
    if (this.runFieldsOf(p).runState === P.RunState.RUN_STATE_RUNNING && r.mode !== P.ExportMode.EXPORT_MODE_LIVE)
      throw new HvError(
        HvStatus.HV_STATUS_INVALID_PARTITION_STATE,
        `${partitionName(p.id)} runs a guest: pause it (PausePartition) before ExportPartition, or export with mode EXPORT_MODE_LIVE / EXPORT_MODE_PAUSE_GUEST`,
      );
    return exportPartitionStream(p, partitionName(p.id), r, sink, signal);
  }
  async importPartition(requests: AsyncIterable<P.ImportPartitionRequest>, signal: AbortSignal): Promise<P.Partition> {
    return this.toPartition(await importPartitionStream(this.manager, requests, signal));
  }

  /** MigratePartition moves partitions between KVM agents: only vsm-service --backend agent does it. */
  async migratePartition(r: P.MigratePartitionRequest, _sink: StreamSink<P.MigrationProgress>, _signal: AbortSignal): Promise<void> {
    const p = this.partition(r.name);
    throw new HvError(
      HvStatus.HV_STATUS_INVALID_PARTITION_STATE,
      this.kind === 'kvm'
        ? `${partitionName(p.id)} is on this KVM agent: MigratePartition is run by vsm-service --backend agent, which pipes it to the target agent`
        : `${partitionName(p.id)} is on the emulator backend, which keeps partitions inside this process: live migration moves running guests between KVM agents (vsm-service --backend agent --agent A --agent B)`,
    );
  }

  // ---- execution (ExecutionService) -------------------------------------------------------------
  // The guest RPCs check their input (name, partition, fields) and then answer FAILED_PRECONDITION:
  // the emulated engine performs guest actions one at a time and runs no guest code. A backend that
  // runs guests (KvmBackend) overrides them. Connections are VSM semantics: served here.

  async loadGuestImage(r: P.LoadGuestImageRequest): Promise<P.LoadGuestImageResponse> {
    this.partition(r.name);
    checkLoadRequest(r);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async startPartition(r: P.StartPartitionRequest): Promise<P.Partition> {
    this.partition(r.name);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async pausePartition(r: P.PausePartitionRequest): Promise<P.Partition> {
    this.partition(r.name);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async resumePartition(r: P.ResumePartitionRequest): Promise<P.Partition> {
    this.partition(r.name);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async stopPartition(r: P.StopPartitionRequest): Promise<P.Partition> {
    this.partition(r.name);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async streamConsole(r: P.StreamConsoleRequest, _sink: StreamSink<P.StreamConsoleResponse>, _signal: AbortSignal): Promise<void> {
    this.partition(r.name);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }
  async writeConsole(r: P.WriteConsoleRequest): Promise<P.WriteConsoleResponse> {
    this.partition(r.name);
    checkConsoleWrite(r);
    throw executionUnsupported(EMULATOR_NO_EXECUTION);
  }

  async createConnection(r: P.CreateConnectionRequest): Promise<P.Connection> {
    const p = this.partition(r.name);
    return toPbConnection(core.createConnection(p, connectionSpec(r)));
  }
  async deleteConnection(r: P.DeleteConnectionRequest): Promise<P.DeleteConnectionResponse> {
    const p = this.partition(r.name);
    core.deleteConnection(p, r.connectionId);
    return {};
  }
  async listConnections(r: P.ListConnectionsRequest): Promise<P.ListConnectionsResponse> {
    return { connections: core.listConnections(this.partition(r.name)).map(toPbConnection) };
  }

  /** The run fields of a partition (run_state ...): NOT_LOADED unless the backend runs its guest. */
  protected runFieldsOf(_p: Partition): RunFields {
    return NOT_LOADED;
  }
  /** A VP's run state: UNSPECIFIED unless the backend runs the partition's guest. */
  protected vpRunStateOf(_p: Partition, _vp: VirtualProcessor): P.VpRunState {
    return P.VpRunState.VP_RUN_STATE_UNSPECIFIED;
  }
  /** The devices a partition was created with. */
  devicesOf(p: Partition): readonly string[] {
    return this.devices.get(p) ?? [];
  }
  protected toPartition(p: Partition, requestId = ''): P.Partition {
    return { ...toPbPartition(p, requestId), devices: [...this.devicesOf(p)], ...this.runFieldsOf(p) };
  }
  protected toVp(p: Partition, vp: VirtualProcessor): P.VirtualProcessor {
    return { ...toPbVp(p, vp), runState: this.vpRunStateOf(p, vp) };
  }

  async close(): Promise<void> {}

  // ---- observation (metrics) -------------------------------------------------------------------

  /** Calls `fn` with every partition created or restored from now on; returns the unsubscribe. */
  onPartition(fn: (p: Partition) => void): () => void {
    this.partitionListeners.add(fn);
    return () => this.partitionListeners.delete(fn);
  }
  /**
   * Partitions and VPs by state, for the metrics gauges. A partition: crashed, its guest's run state
   * (loaded, running, paused, stopped, crashed) or idle (no guest); a VP: intercept_suspended (waits
   * for a monitor's answer), its run state in a running guest, or idle.
   */
  stateCounts(): { partitions: Map<string, number>; vps: Map<string, number>; partitionList: Partition[] } {
    const partitions = new Map<string, number>();
    const vps = new Map<string, number>();
    const partitionList: Partition[] = [];
    const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
    for (let page = this.manager.list(1000, ''); ; page = this.manager.list(1000, page.nextPageToken)) {
      for (const p of page.partitions) {
        partitionList.push(p);
        const run = this.runFieldsOf(p).runState;
        add(partitions, p.state === 'crashed' ? 'crashed' : run === P.RunState.RUN_STATE_NOT_LOADED ? 'idle' : runStateLabel(P.RunState[run], 'RUN_STATE_'));
        for (const vp of p.vps) {
          const vs = this.vpRunStateOf(p, vp);
          add(
            vps,
            vp.suspendedOn !== null
              ? 'intercept_suspended'
              : vs === P.VpRunState.VP_RUN_STATE_UNSPECIFIED
                ? 'idle'
                : runStateLabel(P.VpRunState[vs], 'VP_RUN_STATE_'),
          );
        }
      }
      if (!page.nextPageToken) break;
    }
    return { partitions, vps, partitionList };
  }

  // ---- helpers --------------------------------------------------------------------------------

  partition(name: string): Partition {
    return this.manager.get(parsePartitionName(name));
  }
  vp(name: string): { p: Partition; vp: VirtualProcessor } {
    const n = parseVpName(name);
    const p = this.manager.get(n.partition);
    return { p, vp: p.vp(n.vp) };
  }
  /**
   * The VP a guest action runs on, after the rule every guest action obeys (both backends): the
   * partition is active and the VP is not suspended on a monitor intercept.
   */
  guestVp(name: string): { p: Partition; vp: VirtualProcessor } {
    const t = this.vp(name);
    t.p.assertVpCanAct(t.vp);
    return t;
  }
}

/** RUN_STATE_RUNNING -> running. */
function runStateLabel(name: string | undefined, prefix: string): string {
  return (name ?? 'unknown').replace(prefix, '').toLowerCase();
}

/** The status a partition's streams end with when it crashed or was deleted. */
function endedError(p: Partition, why: 'crashed' | 'deleted'): HvError {
  return why === 'deleted'
    ? new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_ID, `partition ${p.id} was deleted`)
    : new HvError(HvStatus.HV_STATUS_INVALID_PARTITION_STATE, `partition ${p.id} crashed${p.crashReason ? `: ${p.crashReason}` : ''}`);
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
    recoveryPolicy: pb.RecoveryPolicy.RECOVERY_POLICY_UNSPECIFIED,
    devices: [],
    ...NOT_LOADED,
    // Fleet fields: the service in front of a fleet of agents sets them from the partition's record.
    agent: '',
    stateReason: '',
  };
}

function toPbVp(p: Partition, vp: VirtualProcessor): vpb.VirtualProcessor {
  return {
    name: vpName(p.id, vp.index),
    vpIndex: vp.index,
    vtlStatus: {
      activeVtl: vp.activeVtl,
      enabledVtlSet: vp.enabledVtlSet,
      lastEntryReason: vp.vtls.get(vp.activeVtl).entryReason,
      interceptSuspended: vp.suspendedOn !== null,
      suspendedInterceptId: vp.suspendedOn ?? 0n,
      vtlInterrupts: core.VTLS.filter((v) => vp.vtls.get(v).enabled).map((vtl) => {
        const s = p.interruptState(vp, vtl);
        return {
          vtl,
          pendingVectors: s.pendingVectors,
          inServiceVectors: s.inServiceVectors,
          tpr: s.tpr,
          apicBase: s.apicBase,
          x2apic: s.x2apic,
          vina: s.vina,
          vinaAsserted: s.vinaAsserted,
        };
      }),
    },
    runState: P.VpRunState.VP_RUN_STATE_UNSPECIFIED,
  };
}

const CONTROL_REGISTERS: Partial<Record<gpb.ControlRegister, number>> = {
  [gpb.ControlRegister.CONTROL_REGISTER_CR0]: core.HvRegisterName.HvX64RegisterCr0,
  [gpb.ControlRegister.CONTROL_REGISTER_CR4]: core.HvRegisterName.HvX64RegisterCr4,
};

export function outcome(o: {
  exception?: number;
  activeVtl: number;
  vtlSwitch?: core.VtlSwitchEvent;
  resumedAccess?: core.ResumedAccess;
  reentry?: core.VtlSwitchEvent;
}): gpb.GuestActionOutcome {
  let resumedAccess: gpb.ResumedAccess | undefined;
  let intercept: gpb.InterceptNotice | undefined;
  if (o.resumedAccess) {
    const ro = o.resumedAccess.outcome;
    resumedAccess = {
      interceptId: o.resumedAccess.interceptId,
      completed: ro.status === 'completed',
      skipped: ro.status === 'skipped',
      interceptedAgain: ro.status === 'intercepted',
      data: ro.status === 'completed' && ro.data ? ro.data : Buffer.alloc(0),
    };
    if (ro.status === 'intercepted') intercept = interceptNotice(ro);
  }
  return {
    exception: (o.exception ?? 0) as gpb.X64Exception,
    activeVtl: o.activeVtl,
    vtlSwitch: o.vtlSwitch ? { fromVtl: o.vtlSwitch.fromVtl, toVtl: o.vtlSwitch.toVtl, entryReason: o.vtlSwitch.entryReason } : undefined,
    intercept,
    resumedAccess,
    partitionCrashed: false,
    reentry: o.reentry ? { fromVtl: o.reentry.fromVtl, toVtl: o.reentry.toVtl, entryReason: o.reentry.entryReason } : undefined,
  };
}

export function interceptNotice(o: Extract<core.AccessOutcome, { status: 'intercepted' }>): gpb.InterceptNotice {
  const r = o.intercept;
  return {
    interceptId: r.id,
    protectingVtl: r.protectingVtl,
    gpa: r.gpa,
    accessType: ACCESS_TYPE[r.kind],
    hvMessage: r.message,
    heldBack: !!o.heldBack,
    gva: r.gva,
    mbecExecuteMode:
      r.mbecExecuteMode === 'user'
        ? P.MbecExecuteMode.MBEC_EXECUTE_MODE_USER
        : r.mbecExecuteMode === 'kernel'
          ? P.MbecExecuteMode.MBEC_EXECUTE_MODE_KERNEL
          : P.MbecExecuteMode.MBEC_EXECUTE_MODE_UNSPECIFIED,
  };
}

const INTERCEPT_ACTIONS: Partial<Record<P.InterceptAction, core.InterceptAction>> = {
  [P.InterceptAction.INTERCEPT_ACTION_ALLOW]: 'allow',
  [P.InterceptAction.INTERCEPT_ACTION_SKIP]: 'skip',
  [P.InterceptAction.INTERCEPT_ACTION_RETRY]: 'retry',
  [P.InterceptAction.INTERCEPT_ACTION_CRASH]: 'crash',
};

const ACCESS_TYPE: Record<core.AccessKind, P.HvInterceptAccessType> = {
  read: P.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_READ,
  write: P.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_WRITE,
  execute: P.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_EXECUTE,
};

export function accessOutcome(vp: VirtualProcessor, o: core.AccessOutcome): { outcome: gpb.GuestActionOutcome; data?: Buffer } {
  const base = outcome({ activeVtl: vp.activeVtl });
  switch (o.status) {
    case 'completed':
      return { outcome: base, data: o.data };
    case 'exception':
      return { outcome: { ...base, exception: o.exception as gpb.X64Exception } };
    case 'crashed':
      return { outcome: { ...base, partitionCrashed: true } };
    case 'intercepted':
      return {
        outcome: {
          ...base,
          intercept: interceptNotice(o),
          vtlSwitch: o.vtlSwitch ? { fromVtl: o.vtlSwitch.fromVtl, toVtl: o.vtlSwitch.toVtl, entryReason: o.vtlSwitch.entryReason } : undefined,
        },
      };
  }
}

/** The outcome part of a guest action that stopped at a memory access (intercept, #GP, crash). */
function accessOutcomeOnly(vp: VirtualProcessor, o: core.AccessOutcome): { outcome: gpb.GuestActionOutcome } {
  return { outcome: accessOutcome(vp, o).outcome };
}

/** Built fresh for every delivery: no flag or optional field is carried over (seed 004). */
function interceptEvent(p: Partition, x: core.InterceptRecord, redelivered: boolean): P.InterceptEvent {
  return {
    interceptId: x.id,
    vpIndex: x.vpIndex,
    vtl: x.vtl,
    protectingVtl: x.protectingVtl,
    accessType: ACCESS_TYPE[x.kind],
    gpa: x.gpa,
    length: x.length,
    writeData: x.data ?? Buffer.alloc(0),
    viewGeneration: BigInt(x.generation),
    hvMessage: x.message,
    messageType: core.hvMessageTypeOf(x.message),
    rip: core.interceptMessageIpOf(x.message, p.spec.architecture),
    needsReply: x.needsReply,
    redelivered,
  };
}

function toPbValue(info: core.RegisterInfo, v: core.Reg128): vpb.RegisterValue {
  switch (info.shape) {
    case 'segment':
      return { value: { $case: 'segment', value: core.reg128ToSegment(v) } };
    case 'table':
      return { value: { $case: 'table', value: core.reg128ToTable(v) } };
    case 'reg128':
      return { value: { $case: 'reg128', value: { low: v.low, high: v.high } } };
    default:
      return { value: { $case: 'reg64', value: v.low } };
  }
}

function fromPbValue(info: core.RegisterInfo, v: vpb.RegisterValue | undefined): core.Reg128 {
  const val = v?.value;
  if (!val) throw invalidArgument(`a value is required for ${info.tlfsName}`);
  switch (val.$case) {
    case 'reg64':
      if (info.shape !== 'reg64' && info.shape !== 'reg128') throw invalidArgument(`${info.tlfsName} takes a ${info.shape} value`);
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
    rip: c.rip,
    rsp: c.rsp,
    rflags: c.rflags,
    cs: seg(c.cs, 'cs'),
    ds: seg(c.ds, 'ds'),
    es: seg(c.es, 'es'),
    fs: seg(c.fs, 'fs'),
    gs: seg(c.gs, 'gs'),
    ss: seg(c.ss, 'ss'),
    tr: seg(c.tr, 'tr'),
    ldtr: seg(c.ldtr, 'ldtr'),
    idtr: tab(c.idtr, 'idtr'),
    gdtr: tab(c.gdtr, 'gdtr'),
    efer: c.efer,
    cr0: c.cr0,
    cr3: c.cr3,
    cr4: c.cr4,
    msrCrPat: c.msrCrPat,
  };
}
