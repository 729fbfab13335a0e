// core: the seam between VSM semantics and whatever executes guest instructions. A guest action
// (vsm.v1 GuestService) asks the partition's engine to perform one architectural action as the VP
// in its active VTL; the engine executes it (the emulated engine below: the core's own model; the
// KVM agent's engine: real instructions on a vCPU) and hands every hypervisor-visible event
// (Hyper-V MSR, hypercall, refused access) back to the core's rules. Both give the same outcomes.
import type { AccessKind } from './protections';
import { type AccessOutcome, guestAccess } from './access';
import { type HypercallOutcome, executeVmcall } from './hypercalls';
import type { Partition, VirtualProcessor } from './partition';
import { X64Exception, type X64ExceptionVector } from './outcomes';
import { type StubOutcome, callHypercallPage } from './stub';

export interface GuestEngine {
  /** WRMSR by the VP in its active VTL. */
  writeMsr(vp: VirtualProcessor, msr: number, value: bigint): { exception?: X64ExceptionVector };
  /** RDMSR by the VP in its active VTL. */
  readMsr(vp: VirtualProcessor, msr: number): { value: bigint; exception?: X64ExceptionVector };
  /** The hypercall instruction (VMCALL/VMMCALL) with the registers the VP holds. */
  vmcall(vp: VirtualProcessor): HypercallOutcome;
  /** A CALL into the active VTL's hypercall page at `offset` (the page's code runs). */
  callHypercallPage(vp: VirtualProcessor, offset: number): StubOutcome;
  /** A store of the guest's own (a hypercall's input block): higher VTLs' protections apply. */
  store(vp: VirtualProcessor, gpa: bigint, data: Buffer): AccessOutcome;
  /** A load of bytes the VP's active VTL sees (the caller checked they are accessible). */
  load(vp: VirtualProcessor, gpa: bigint, length: number): Buffer;
  /**
   * A memory guest action (read, write or instruction fetch) with protections applied. `gva`: the
   * guest virtual address the VP used (already translated to `gpa` by the caller, memory-actions.ts),
   * reported in an intercept message (GvaValid).
   */
  access(vp: VirtualProcessor, kind: AccessKind, gpa: bigint, length: number, data?: Buffer, gva?: bigint): AccessOutcome;
}

/** The emulated engine: the core's model performs every action (no guest code runs). */
export function emulatedEngine(p: Partition): GuestEngine {
  return new EmulatedEngine(p);
}

/**
 * One class for every partition's emulated engine, not an object of closures per partition: a call
 * site such as `engineOf(p).access(...)` then sees one target whatever the partition (with closures
 * per partition V8 deoptimized it, "wrong call target", once a second partition ran), and an access
 * without a GVA passes no options object.
 */
class EmulatedEngine implements GuestEngine {
  constructor(private readonly p: Partition) {}
  writeMsr(vp: VirtualProcessor, msr: number, value: bigint): { exception?: X64ExceptionVector } {
    return this.p.writeMsr(vp, msr, value);
  }
  readMsr(vp: VirtualProcessor, msr: number): { value: bigint; exception?: X64ExceptionVector } {
    return this.p.readMsr(vp, msr);
  }
  vmcall(vp: VirtualProcessor): HypercallOutcome {
    return executeVmcall(this.p, vp);
  }
  callHypercallPage(vp: VirtualProcessor, offset: number): StubOutcome {
    return callHypercallPage(this.p, vp, offset);
  }
  store(vp: VirtualProcessor, gpa: bigint, data: Buffer): AccessOutcome {
    return guestAccess(this.p, vp, 'write', gpa, data.length, data);
  }
  load(vp: VirtualProcessor, gpa: bigint, length: number): Buffer {
    return this.p.readView(vp.activeVtl, vp.index, gpa, length);
  }
  access(vp: VirtualProcessor, kind: AccessKind, gpa: bigint, length: number, data?: Buffer, gva?: bigint): AccessOutcome {
    return guestAccess(this.p, vp, kind, gpa, length, data, gva === undefined ? NO_ACCESS_OPTIONS : { gva });
  }
}
const NO_ACCESS_OPTIONS = Object.freeze({});

/** The engine that executes `p`'s guest actions: the one its platform attached, else the emulated one. */
export function engineOf(p: Partition): GuestEngine {
  return (p.engine ??= emulatedEngine(p));
}

/** A guest store that could not complete (#GP from a read-only overlay): as an outcome. */
export const STORE_GP: AccessOutcome = { status: 'exception', exception: X64Exception.GP };

/**
 * A failure of the engine itself rather than a VSM outcome (the host refused an operation, guest
 * code did not finish in time, protections could not be enforced). The vsm.v1 layer maps `code`
 * to the gRPC status and puts `reason` in the ErrorInfo.
 */
export class EngineError extends Error {
  constructor(
    readonly code: 'unavailable' | 'aborted' | 'failed-precondition',
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}
