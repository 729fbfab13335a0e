// core: guest memory accesses (read, write, execute) by a VP through its active VTL's view, with
// VTL protections enforced (tlfs-vsm.md §7-8). A violating access does not complete: it raises a
// memory intercept (intercepts.ts) and the VP either enters the protecting VTL (route 'vtl'/'both')
// or stays suspended until a monitor answers (route 'monitor').
import { settleInterrupts, withInterruptsDeferred } from './rules/interrupts';
import type { PartitionState } from './state/partition';
import type { RegisterFile, VirtualProcessor } from './state/vp';
import { type AccessOutcome, type InterceptRecord, type ResumedAccess, X64Exception } from './outcomes';
import { type AccessKind, requiredFlag } from './protections';
import type { InterceptAction } from './intercepts';
import { type Vtl, VTLS } from './vtl-array';
import { resumeStub } from './stub-return';
import { INTERCEPT_ACCESS_TYPE, interceptHeader } from './secure-intercepts';
import { assertActive, assertVpCanAct, crash, vpOf } from './rules/lifecycle';
import { checkRange, readView, writeView } from './rules/memory-view';
import { cpl, reg } from './rules/processor';
import { postMessage } from './rules/synic';
import { switchVtl } from './rules/transitions';
import { HvError, HvStatus, hvFail } from './tlfs/status';
import { isExactNumber, u64 } from './tlfs/layout';
import { HvRegisterName as R, type Reg128, reg128ToSegment } from './tlfs/registers';
import { HvVtlEntryReason } from './tlfs/vsm';
import {
  HV_SYNIC_INTERCEPTION_SINT_INDEX,
  HvCacheType,
  HV_MESSAGE_SIZE,
  HV_MESSAGE_PAYLOAD_OFFSET,
  HV_X64_MEMORY_INTERCEPT_MESSAGE_SIZE,
  HvMessageHeaderLayout,
  HvMessageType,
  HvX64MemoryInterceptMessageLayout,
  encodeHvMessage,
  encodeMemoryInterceptMessage,
  encodeArm64MemoryInterceptMessage,
  arm64PermissionFaultSyndrome,
} from './tlfs/message';

export type { PendingAccess } from './state/vp';
export type { AccessOutcome, ResumedAccess } from './outcomes';

export const MAX_GUEST_ACCESS_BYTES = 65536;

/**
 * Whether MBEC is in force for VTL `lower` on `vp` under the protections of `protectingVtl` (tlfs-vsm.md
 * §7.1: enabled at two levels, HvCallEnablePartitionVtl(protectingVtl, EnableMbec) and that VTL's
 * HvRegisterVsmVpSecureConfigVtl<lower>.MbecEnabled on the VP). Then kernel-mode and user-mode execute
 * are separate permissions (KMX, UMX); otherwise KMX governs every execute.
 */
export function mbecInForce(p: PartitionState, vp: VirtualProcessor, protectingVtl: Vtl, lower: Vtl): boolean {
  return p.vtls.get(protectingVtl).mbec && (vp.vtls.get(protectingVtl).secureConfig.get(lower) & 1n) !== 0n;
}

/**
 * The protecting VTL that refuses `kind` at gpfn for VTL `vtl`, if any (lowest first, §8.1). An execute
 * is user-mode when `userMode` (default: the VP's CPL is 3), which matters only where MBEC is in force.
 */
export function violatingVtl(
  p: PartitionState,
  vp: VirtualProcessor,
  vtl: Vtl,
  gpfn: number,
  kind: AccessKind,
  userMode: boolean = kind === 'execute' && cpl(vp) === 3,
): Vtl | undefined {
  for (let m = vtl + 1; m < VTLS.length; m++) {
    const map = p.protections.get(m as Vtl);
    if (!map) continue;
    const flag = requiredFlag(kind, userMode, mbecInForce(p, vp, m as Vtl, vtl));
    if ((map.get(gpfn) & flag) === 0) return m as Vtl;
  }
  return undefined;
}

/** Which execute permission an MBEC check applied to an execute of VTL `vtl` refused by `protectingVtl` (undefined: not an execute, or MBEC not in force). */
export function mbecExecuteMode(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, protectingVtl: Vtl, kind: AccessKind): 'kernel' | 'user' | undefined {
  if (kind !== 'execute' || !mbecInForce(p, vp, protectingVtl, vtl)) return undefined;
  return cpl(vp) === 3 ? 'user' : 'kernel';
}

/**
 * The faulting instruction as an execution engine saw it (the KVM agent reads it from guest memory
 * at CS:RIP), for HV_X64_MEMORY_INTERCEPT_MESSAGE: InstructionLength (0 = unknown) and up to 16
 * InstructionBytes. Without it (guest actions, the emulator) both are 0.
 */
export interface InterceptInstruction {
  length: number;
  bytes: Buffer;
}

/**
 * Whether every page of [gpa, gpa+size) may be accessed as `kind` by the VP's active VTL: pages of
 * its own overlays always, RAM pages unless a higher VTL's protection refuses it.
 */
export function accessibleTo(p: PartitionState, vp: VirtualProcessor, gpa: bigint, size: number, kind: AccessKind): boolean {
  if (size === 0) return true;
  const at = Number(gpa); // exact below 2^53
  if (isExactNumber(gpa) && (at % 0x1000) + size <= 0x1000) {
    // One page (every hypercall parameter block, §1.1): the loop below without its bigint arithmetic;
    // the protections first (numbers), the overlays (bigint page numbers) only for a refused page.
    const g = Math.floor(at / 0x1000);
    return violatingVtl(p, vp, vp.activeVtl, g, kind) === undefined || p.overlays.visible(vp.activeVtl, vp.index, BigInt(g)) !== undefined;
  }
  for (let g = gpa >> 12n; g <= (gpa + BigInt(size) - 1n) >> 12n; g++) {
    if (p.overlays.visible(vp.activeVtl, vp.index, g)) continue;
    if (violatingVtl(p, vp, vp.activeVtl, Number(g), kind) !== undefined) return false;
  }
  return true;
}

/**
 * The outcome of every write that completed: one frozen object, not one per write (a partition keeps
 * the outcomes of its last 65,536 answered intercepts, intercepts.ts; one object each was promoted
 * out of V8's young generation at intercept rates and collected by major GCs).
 */
const WRITE_COMPLETED: AccessOutcome = Object.freeze({ status: 'completed' });
const CRASHED: AccessOutcome = Object.freeze({ status: 'crashed' });

/** Performs the access as the VP in its active VTL. */
export function guestAccess(
  p: PartitionState,
  vp: VirtualProcessor,
  kind: AccessKind,
  gpa: bigint,
  length: number,
  data?: Buffer,
  opts: { ignoreProtections?: boolean; instruction?: InterceptInstruction; gva?: bigint } = {},
): AccessOutcome {
  assertVpCanAct(p, vp);
  if (!Number.isInteger(length) || length < 1 || length > MAX_GUEST_ACCESS_BYTES)
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `length must be 1..${MAX_GUEST_ACCESS_BYTES}`);
  checkRange(p, gpa, length);
  const vtl = vp.activeVtl;
  if (!opts.ignoreProtections) {
    const firstPage = gpa >> 12n;
    const lastPage = Number(gpa & 0xfffn) + length <= 0x1000 ? firstPage : (gpa + BigInt(length) - 1n) >> 12n;
    for (let g = firstPage; g <= lastPage; g++) {
      const o = p.overlays.visible(vtl, vp.index, g);
      if (o) {
        // Overlay pages are not subject to the RAM page's protections (tlfs-overlays-synic.md §4.1).
        if (kind === 'write' && o.readOnly) return { status: 'exception', exception: X64Exception.GP };
        continue;
      }
      const m = violatingVtl(p, vp, vtl, Number(g), kind);
      if (m !== undefined) {
        const at = g === firstPage ? gpa : g << 12n; // lowest address that intercepted
        // With a GVA, the GuestVirtualAddress of the same byte (the access stays within one GVA page).
        return raiseIntercept(p, vp, m, kind, at, gpa, length, data, opts.instruction, opts.gva === undefined ? undefined : opts.gva + (at - gpa));
      }
    }
  }
  if (kind === 'write') {
    if (!writeView(p, vtl, vp.index, gpa, data!)) return { status: 'exception', exception: X64Exception.GP };
    return WRITE_COMPLETED;
  }
  return { status: 'completed', data: readView(p, vtl, vp.index, gpa, length) };
}

/**
 * Entry point for an execution engine that enforces protections itself (the KVM agent: read-only
 * memslots and holes) and stopped the VP on an access its hardware refused. The core decides
 * exactly as for guestAccess: a read-only overlay gives #GP, a protection raises the intercept
 * (message built from the VP's registers, which the engine synced first, plus `instruction`;
 * routed to the protecting VTL's SINT0 and entry, or to monitors), and an access nothing refuses
 * any more (the view changed meanwhile) is performed on guest memory. Same outcomes as guestAccess.
 */
export function interceptAccess(
  p: PartitionState,
  vp: VirtualProcessor,
  kind: AccessKind,
  gpa: bigint,
  length: number,
  data?: Buffer,
  instruction?: InterceptInstruction,
  gva?: bigint,
): AccessOutcome {
  return guestAccess(p, vp, kind, gpa, length, data, { instruction, gva });
}

function raiseIntercept(
  p: PartitionState,
  vp: VirtualProcessor,
  protectingVtl: Vtl,
  kind: AccessKind,
  faultGpa: bigint,
  gpa: bigint,
  length: number,
  data?: Buffer,
  instruction?: InterceptInstruction,
  gva?: bigint,
): AccessOutcome {
  // The suspension invariant (rules/lifecycle.ts suspensionViolations): a suspended VP executes
  // nothing, so it raises nothing; overwriting suspendedOn would orphan the intercept it waits on.
  if (vp.suspendedOn !== null) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is suspended on intercept ${vp.suspendedOn}; it raises no other`);
  const vtl = vp.activeVtl;
  const route = p.interceptRoute;
  const id = p.intercepts.allocateId();
  const message = buildInterceptMessage(p, vp, kind, faultGpa, instruction, gva);
  const mbecMode = mbecExecuteMode(p, vp, vtl, protectingVtl, kind);
  const rec: InterceptRecord = {
    id,
    vpIndex: vp.index,
    vtl,
    protectingVtl,
    kind,
    gpa: faultGpa,
    length,
    data: data ? Buffer.from(data) : undefined,
    generation: p.viewGeneration,
    message,
    needsReply: route === 'monitor',
    timeUnixUs: p.clock.nowUnixUs(),
    deliveries: 0,
  };
  // Present only when they apply (no spread of a conditional object literal: V8's object spread
  // costs about a microsecond here).
  if (gva !== undefined) rec.gva = gva;
  if (mbecMode) rec.mbecExecuteMode = mbecMode;
  p.intercepts.raised(rec);
  if (route === 'monitor') {
    vp.suspendedOn = id;
    vp.suspendedAccess = { kind, gpa, length, data: rec.data, rip: instructionPointer(p, vp), interceptId: id };
    p.intercepts.publish(rec);
    return { status: 'intercepted', intercept: rec, awaitingMonitor: true };
  }
  // Route 'vtl' / 'both': SINT0 of the protecting VTL's SynIC on this VP, then enter that VTL (SINT0's
  // interrupt is evaluated once it is entered: rules/interrupts.ts).
  const posted = withInterruptsDeferred(p, vp, () => postMessage(p, vp, protectingVtl, HV_SYNIC_INTERCEPTION_SINT_INDEX, message));
  if (posted === 'full') {
    // The queue is full: hold the source back. The VP stays at the faulting instruction in its VTL
    // (nothing is dropped); the guest action reports it and may be retried after the higher VTL
    // drained its queue.
    return { status: 'intercepted', intercept: rec, awaitingMonitor: false, heldBack: true };
  }
  vp.vtls.get(vtl).pendingAccess = {
    kind,
    gpa,
    length,
    data: rec.data,
    rip: instructionPointer(p, vp),
    interceptId: id,
  };
  if (route === 'both') p.intercepts.publish(rec);
  const ev = switchVtl(p, vp, protectingVtl, HvVtlEntryReason.HvVtlEntryInterrupt, false);
  resumeStub(vp);
  settleInterrupts(p, vp);
  return { status: 'intercepted', intercept: rec, vtlSwitch: ev, awaitingMonitor: false };
}

const NO_INSTRUCTION_BYTES = Buffer.alloc(0);
/** guestAccess's options of an ALLOW answer (one object, not one per answer). */
const IGNORE_PROTECTIONS = Object.freeze({ ignoreProtections: true });
/** An unset segment register (one object, so that its decoded segment is cached too). */
const ZERO_REG128: Reg128 = Object.freeze({ low: 0n, high: 0n });

/** HV_MESSAGE{HvMessageTypeGpaIntercept, HV_X64_MEMORY_INTERCEPT_MESSAGE} for the VP's state now. */
export function buildInterceptMessage(
  p: PartitionState,
  vp: VirtualProcessor,
  kind: AccessKind,
  gpa: bigint,
  instruction?: InterceptInstruction,
  gva?: bigint,
): Buffer {
  if (p.spec.architecture === 'arm64') {
    const st = vp.vtls.get(vp.activeVtl);
    const payload = encodeArm64MemoryInterceptMessage({
      vpIndex: vp.index,
      instructionLength: 4, // A64 instructions are 4 bytes
      interceptAccessType: INTERCEPT_ACCESS_TYPE[kind],
      executionState: { cpl: 1, debugActive: false, interruptionPending: false, vtl: vp.activeVtl }, // EL1
      pc: st.arm64Pc,
      cpsr: st.arm64Cpsr,
      cacheType: HvCacheType.HvCacheTypeWriteBack,
      instructionByteCount: 0,
      memoryAccessInfo: { gvaValid: false },
      instructionBytes: Buffer.alloc(4),
      guestVirtualAddress: 0n,
      guestPhysicalAddress: gpa,
      syndrome: arm64PermissionFaultSyndrome(kind),
    });
    return encodeHvMessage({ messageType: HvMessageType.HvMessageTypeGpaIntercept, payloadSize: payload.length, messageFlags: 0, originationId: 0n }, payload);
  }
  const regs = vp.vtls.get(vp.activeVtl).regs;
  // An access without an instruction (the emulator's guest actions) on a VP whose registers did not
  // change since its last such message: that message's bytes with this access's addresses.
  const template = instruction === undefined ? messageTemplates.get(vp) : undefined;
  if (template?.matches(vp, regs, kind, gva !== undefined)) return template.build(gpa, gva);
  const seg = (n: number) => reg128ToSegment(regs.get(n) ?? ZERO_REG128);
  const gprs: bigint[] = new Array(16);
  for (let i = 0; i < 16; i++) gprs[i] = reg(vp, R.HvX64RegisterRax + i);
  // The field is 16 bytes; the layout zero-fills what a shorter value leaves.
  const instructionBytes = instruction ? instruction.bytes.subarray(0, 16) : NO_INSTRUCTION_BYTES;
  // The HV_MESSAGE built in place: header at +0, the payload after it (as encodeHvMessage lays them out).
  // From Node's buffer pool (a fresh zeroed ArrayBuffer per message costs more than the encoding);
  // the header and payload encoders write every byte of theirs, the rest is zeroed below.
  const message = Buffer.allocUnsafe(HV_MESSAGE_SIZE);
  // OriginationId: 0, as OpenVMM/OpenHCL send for secure intercepts (the TLFS value is unconfirmed).
  HvMessageHeaderLayout.encode(
    { messageType: HvMessageType.HvMessageTypeGpaIntercept, payloadSize: HV_X64_MEMORY_INTERCEPT_MESSAGE_SIZE, messageFlags: 0, originationId: 0n },
    message,
    0,
  );
  encodeMemoryInterceptMessage(
    {
      // The emulator has no instruction stream for a guest action: length 0 = unknown (the recipient
      // decodes), as the TLFS allows (tlfs-intercepts.md §6.1). An engine that ran the instruction
      // may know it (interceptAccess).
      header: interceptHeader(vp, kind, instruction?.length ?? 0),
      cacheType: HvCacheType.HvCacheTypeWriteBack,
      instructionByteCount: Math.min(16, instruction?.bytes.length ?? 0),
      // GvaValid when the access named a GVA that the VP's page tables translated (the caller did).
      memoryAccessInfo: { gvaValid: gva !== undefined },
      tprPriority: 0,
      guestVirtualAddress: gva ?? 0n,
      guestPhysicalAddress: gpa,
      instructionBytes,
      dsSegment: seg(R.HvX64RegisterDs),
      ssSegment: seg(R.HvX64RegisterSs),
      gprs,
    },
    message,
    PAYLOAD_AT,
  );
  message.fill(0, PAYLOAD_AT + HV_X64_MEMORY_INTERCEPT_MESSAGE_SIZE);
  if (instruction === undefined) {
    let t = template;
    if (t === undefined) messageTemplates.set(vp, (t = new InterceptMessageTemplate()));
    t.keep(message, vp, regs, kind, gva !== undefined);
  }
  return message;
}

/** Byte offsets, in an HV_MESSAGE, of its payload and of the HV_X64_MEMORY_INTERCEPT_MESSAGE fields an access sets. */
const PAYLOAD_AT = HV_MESSAGE_PAYLOAD_OFFSET;
const GVA_AT = PAYLOAD_AT + HvX64MemoryInterceptMessageLayout.offsetOf('guestVirtualAddress');
const GPA_AT = PAYLOAD_AT + HvX64MemoryInterceptMessageLayout.offsetOf('guestPhysicalAddress');

/**
 * The last memory intercept message built for a VP's access without an instruction, and what it was
 * built from: everything in it but GuestVirtualAddress and GuestPhysicalAddress comes from the VP's
 * index and active VTL, the access kind, whether a GVA was given, and the registers of that VTL's
 * private file and of the VP's shared file (interceptHeader, the segments, the GPRs). A register file
 * counts every change (RegisterFile.changes: set, delete, clear), so while both counts are the same
 * the next message of the same kind is these bytes with the new addresses: no field of an earlier
 * access is carried over (the addresses are the only per-access fields and both are written), and
 * the registers are the same values. Building one from the registers cost ≈1.35 µs in a warm loop,
 * the largest piece of the service's own work per monitor intercept (bench/README.md "Session 10").
 * Accesses with an instruction (the KVM agent's decoded faults) are built in full.
 */
class InterceptMessageTemplate {
  private readonly bytes = Buffer.alloc(HV_MESSAGE_SIZE);
  private regs!: RegisterFile;
  private regsChanges = 0;
  private sharedChanges = 0;
  private vtl = 0;
  private kind!: AccessKind;
  private gvaValid = false;

  keep(message: Buffer, vp: VirtualProcessor, regs: RegisterFile, kind: AccessKind, gvaValid: boolean): void {
    message.copy(this.bytes);
    this.regs = regs;
    this.regsChanges = regs.changes;
    this.sharedChanges = vp.shared.changes;
    this.vtl = vp.activeVtl;
    this.kind = kind;
    this.gvaValid = gvaValid;
  }

  matches(vp: VirtualProcessor, regs: RegisterFile, kind: AccessKind, gvaValid: boolean): boolean {
    return (
      regs === this.regs &&
      regs.changes === this.regsChanges &&
      vp.shared.changes === this.sharedChanges &&
      vp.activeVtl === this.vtl &&
      kind === this.kind &&
      gvaValid === this.gvaValid
    );
  }

  build(gpa: bigint, gva: bigint | undefined): Buffer {
    const message = Buffer.allocUnsafe(HV_MESSAGE_SIZE);
    this.bytes.copy(message);
    u64.write(message, GVA_AT, gva ?? 0n);
    u64.write(message, GPA_AT, gpa);
    return message;
  }
}
const messageTemplates = new WeakMap<VirtualProcessor, InterceptMessageTemplate>();

/** The address of the instruction the VP is at in its active VTL: RIP (x64), PC (arm64). */
function instructionPointer(p: PartitionState, vp: VirtualProcessor): bigint {
  return p.spec.architecture === 'arm64' ? vp.vtls.get(vp.activeVtl).arm64Pc : reg(vp, R.HvX64RegisterRip);
}

/**
 * A VP returning to a VTL that has a pending (intercepted) access: if the higher VTL left RIP where
 * it was, the instruction is retried (it may intercept again); if RIP moved, the higher VTL
 * completed or skipped it.
 */
export function resumePendingAccess(p: PartitionState, vp: VirtualProcessor): ResumedAccess | undefined {
  const st = vp.vtls.get(vp.activeVtl);
  const pa = st.pendingAccess;
  if (!pa) return undefined;
  st.pendingAccess = null;
  if (instructionPointer(p, vp) !== pa.rip) return { interceptId: pa.interceptId, kind: pa.kind, gpa: pa.gpa, outcome: { status: 'skipped' } };
  const o = guestAccess(p, vp, pa.kind, pa.gpa, pa.length, pa.data);
  return { interceptId: pa.interceptId, kind: pa.kind, gpa: pa.gpa, outcome: o };
}

/**
 * A monitor's answer to an intercept on the 'monitor' route (seed 001 actions):
 * allow = perform the access once; skip = complete the instruction without the access (a read
 * returns `data`, zero-filled); retry = re-execute (the monitor changed protections); crash = stop
 * the partition. A `generation` other than the current memory-view generation is refused.
 */
export function answerIntercept(
  p: PartitionState,
  id: bigint,
  action: InterceptAction,
  opts: { data?: Buffer; generation?: number; by?: string } = {},
): { result: 'applied' | 'duplicate'; outcome?: AccessOutcome } {
  // A crashed or deleted partition takes no answers (its intercepts were resolved when it ended).
  assertActive(p);
  const st = p.intercepts.status(id);
  if (st === 'duplicate') return { result: 'duplicate' };
  if (st === 'unknown') hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `intercept ${id} is not pending`);
  if (opts.generation !== undefined && opts.generation !== p.viewGeneration) {
    throw new HvError(
      HvStatus.HV_STATUS_OPERATION_DENIED,
      `stale memory-view generation ${opts.generation} (now ${p.viewGeneration}): re-read the view and answer again`,
    );
  }
  const rec = p.intercepts.pending.get(id)!;
  const vp = vpOf(p, rec.vpIndex);
  const pa = vp.suspendedAccess;
  if (vp.suspendedOn !== id || !pa) hvFail(HvStatus.HV_STATUS_INVALID_VP_STATE, `VP ${vp.index} is not suspended on intercept ${id}`);
  // From here the intercept is no longer pending and the VP no longer suspended on it, before the
  // answer runs: a RETRY that intercepts again announces the new intercept with the VP suspended on
  // it alone (the suspension invariant holds for every listener, not only after this call).
  p.intercepts.take(id);
  vp.suspendedOn = null;
  vp.suspendedAccess = null;
  let outcome: AccessOutcome = CRASHED;
  try {
    switch (action) {
      case 'allow':
        outcome = guestAccess(p, vp, pa.kind, pa.gpa, pa.length, pa.data, IGNORE_PROTECTIONS);
        break;
      case 'skip': {
        const d = Buffer.alloc(pa.kind === 'write' ? 0 : pa.length);
        opts.data?.copy(d, 0, 0, Math.min(d.length, opts.data.length));
        outcome = { status: 'completed', data: pa.kind === 'write' ? undefined : d };
        break;
      }
      case 'retry':
        outcome = guestAccess(p, vp, pa.kind, pa.gpa, pa.length, pa.data);
        break;
      case 'crash':
        outcome = CRASHED;
        break;
    }
  } catch (e) {
    if (e instanceof HvError && e.status === HvStatus.HV_STATUS_INSUFFICIENT_MEMORY) {
      // The access could not be performed (resident-RAM limit) and nothing of it landed: the answer
      // is refused and the intercept stays pending, the VP suspended on it, for a later answer.
      p.intercepts.untake(rec);
      vp.suspendedOn = id;
      vp.suspendedAccess = pa;
      throw e;
    }
    // Never half-applied: the intercept is resolved and the partition stops with the reason.
    p.intercepts.markAnswered(id, outcome);
    crash(p, `answering intercept ${id} failed: ${e instanceof Error ? e.message : String(e)}`);
    throw e;
  }
  // The answer's outcome goes to this intercept's waiter only (keyed by id).
  p.intercepts.markAnswered(id, outcome);
  if (action === 'crash') crash(p, `${opts.by ?? 'a monitor'} answered CRASH to intercept ${id}`);
  return { result: 'applied', outcome };
}
