// core, hypercalls: what one hypercall implementation is (OpenVMM hv1_hypercall style: one unit per
// call, one dispatcher). A handler declares its shape (simple or rep, fixed input size, rep element
// sizes, variable header allowed) for the dispatcher's common checks, and handles the decoded call.
import type { Partition, VirtualProcessor } from '../partition';
import type { Vtl } from '../vtl-array';
import type { HvStatusValue } from '../tlfs/status';
import type { HypercallShape } from '../tlfs/hypercall';
import type { AccessOutcome } from '../outcomes';

export interface HypercallContext {
  partition: Partition;
  vp: VirtualProcessor;
  callerVtl: Vtl;
}

export interface HandlerResult {
  status: HvStatusValue;
  repsCompleted?: number;
  output?: Buffer;
  /** Byte offset in the output block where `output` goes (rep calls resumed at a start index
   *  must not overwrite the elements before it). */
  outputOffset?: number;
  /**
   * The call returns early for continuation (tlfs-hypercalls.md §1.1, §1.4 rule 2): RIP is not
   * advanced, RAX is not written, and the input value in RCX (EDX:EAX) is rewritten with the new rep
   * start index (`repsCompleted`); the guest re-executes the call. E.g. a flush whose target VP's TLB
   * a higher VTL locked (TLFS HvCallFlushVirtualAddressSpace.md: the caller waits and the call is reissued).
   */
  continuation?: boolean;
  /** The call did not complete: a higher VTL intercepted it (secure-intercepts.ts; e.g.
   *  InterceptVpStartup). RIP and RAX stay; the outcome says where the VP went. */
  intercepted?: AccessOutcome;
}

/** One implemented call: its shape (for the common checks) and its handler. */
export interface HypercallHandler extends HypercallShape {
  /** The TLFS name (HvCall...). */
  name: string;
  /** input: fixed header (+ rep elements for rep calls, starting at repStartIndex). */
  handle(ctx: HypercallContext, input: Buffer, rep: { start: number; count: number }): HandlerResult;
}
