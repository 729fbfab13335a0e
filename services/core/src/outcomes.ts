// core: what a guest action produces: completed, an exception injected into the guest (x86
// vectors), a VTL switch (and the record every switch leaves for WatchVtlTransitions), a memory
// intercept (the record monitors and the protecting VTL receive) and what became of the access.
import type { Vtl } from './vtl-array';
import type { AccessKind } from './protections';

/** Exceptions a guest action can raise instead of completing (x86 vectors). */
export const X64Exception = { BP: 3, UD: 6, GP: 13, PF: 14 } as const;
export type X64ExceptionVector = (typeof X64Exception)[keyof typeof X64Exception];

export interface VtlSwitchEvent {
  fromVtl: Vtl;
  toVtl: Vtl;
  entryReason: number;
  isReturn: boolean;
  fastReturn: boolean;
}

/** A VTL switch as recorded for observers: numbered per partition, timestamped by its clock. */
export interface VtlTransitionRecord extends VtlSwitchEvent {
  sequence: bigint;
  vpIndex: number;
  timeUnixUs: bigint;
}

/** The result of a guest action: completed, or an exception injected into the guest. */
export interface GuestOutcome {
  exception?: X64ExceptionVector;
  activeVtl: Vtl;
  vtlSwitch?: VtlSwitchEvent;
  /** A VtlReturn into a VTL with an intercepted access: what became of it (retried or skipped). */
  resumedAccess?: ResumedAccess;
  /**
   * A second switch the same instruction caused after `vtlSwitch`: a VtlReturn into a VTL below one
   * that still has a deliverable interrupt re-enters it (entry reason Interrupt; rules/interrupts.ts).
   */
  reentry?: VtlSwitchEvent;
}

/** What a guest memory access did (access.ts). */
export type AccessOutcome =
  | { status: 'completed'; data?: Buffer }
  | { status: 'exception'; exception: X64ExceptionVector }
  | { status: 'intercepted'; intercept: InterceptRecord; vtlSwitch?: VtlSwitchEvent; awaitingMonitor: boolean; heldBack?: boolean }
  | { status: 'crashed' };

/** An intercepted access of a lower VTL, when the VP returned to it: retried (its outcome) or skipped. */
export interface ResumedAccess {
  interceptId: bigint;
  kind: AccessKind;
  gpa: bigint;
  outcome: AccessOutcome | { status: 'skipped' };
}

/**
 * A memory intercept raised by a protection violation: a snapshot of the VP at fault time
 * (HV_X64_MEMORY_INTERCEPT_MESSAGE inside an HV_MESSAGE) and what the access was (intercepts.ts).
 */
export interface InterceptRecord {
  id: bigint;
  vpIndex: number;
  /** VTL the access was made in. */
  vtl: Vtl;
  /** VTL whose protection refused it. */
  protectingVtl: Vtl;
  kind: AccessKind;
  gpa: bigint;
  length: number;
  /** Bytes a write would have stored. */
  data?: Buffer;
  /** Memory-view generation at fault time. */
  generation: number;
  /** The HV_MESSAGE (256 bytes) as written to the SIM slot. */
  message: Buffer;
  /** Whether a monitor must answer (route 'monitor'); false when it only observes. */
  needsReply: boolean;
  timeUnixUs: bigint;
  /** How many times it was sent to monitors (to flag re-deliveries). */
  deliveries: number;
  /** GuestVirtualAddress of the faulting byte, when the access named a GVA (the message has GvaValid = 1). */
  gva?: bigint;
  /** An execute refused where MBEC is in force: the permission that applied (the VP's CPL: 3 = user). */
  mbecExecuteMode?: 'kernel' | 'user';
}
