// core, hypercalls: the dispatcher (OpenVMM hv1_hypercall style). It knows the ABI only: decode and
// validate HV_HYPERCALL_INPUT against the handler's shape, fetch memory-based or register-based
// (fast) parameters as the caller (a parameter block on a page a higher VTL protected is a memory
// intercept), run the handler, and report HV_STATUS and reps completed. Which calls exist is the
// explicit list it is built with; unknown codes get HV_STATUS_INVALID_HYPERCALL_CODE.
import type { Partition, VirtualProcessor } from '../partition';
import { HvError, HvStatus, hvFail } from '../tlfs/status';
import { type HvHypercallInput, decodeHypercallInput, validateHypercallInput, validateParameterBlock } from '../tlfs/hypercall';
import { type AccessOutcome, accessibleTo, interceptAccess } from '../access';
import type { HandlerResult, HypercallHandler } from './handler';
import { HV_XMM_FAST_BLOCK_BYTES, readFastBlock, xmmFastChunk } from './xmm';

export interface HypercallInvocation {
  control: bigint;
  inputGpa: bigint;
  outputGpa: bigint;
}

/** XMM fast output (tlfs-hypercalls.md §1.4): bytes for the register block RDX, R8, XMM0..XMM5 at `offset`. */
export interface FastOutput {
  /** Where the output region starts: the first 16-byte chunk after the input. */
  start: number;
  offset: number;
  bytes: Buffer;
}

export type DispatchResult = (HandlerResult & { repsCompleted: number; fastOutput?: FastOutput }) | { parameterIntercept: AccessOutcome };

export class HypercallDispatcher {
  private readonly byCode = new Map<number, HypercallHandler>();

  constructor(handlers: readonly HypercallHandler[]) {
    for (const h of handlers) {
      if (this.byCode.has(h.code)) throw new Error(`hypercall code 0x${h.code.toString(16)} is handled twice (${this.byCode.get(h.code)!.name}, ${h.name})`);
      this.byCode.set(h.code, h);
    }
  }

  /** The call codes it dispatches, ascending. */
  codes(): number[] {
    return [...this.byCode.keys()].sort((a, b) => a - b);
  }

  /** `input`: inv.control decoded, when the caller already did (executeVmcall). */
  dispatch(p: Partition, vp: VirtualProcessor, inv: HypercallInvocation, input: HvHypercallInput = decodeHypercallInput(inv.control)): DispatchResult {
    const h = this.byCode.get(input.callCode);
    try {
      if (!h) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE, `unknown call code 0x${input.callCode.toString(16)}`);
      validateHypercallInput(input, h);
      const elem = h.repInputElementSize ?? 0;
      const inSize = h.inputSize + input.variableHeaderSize * 8 + (h.rep ? elem * input.repCount : 0);
      let inBytes: Buffer;
      /** Where XMM fast output goes in the register block, when the call is XMM fast. */
      let xmmOutAt: number | undefined;
      if (input.fast) {
        const outSize = (h.outputElementSize ?? 0) * (h.rep ? input.repCount : 1);
        if (inSize <= 16 && outSize === 0) {
          // Register-based: at most two 8-byte inputs (RDX, R8), no output.
          inBytes = Buffer.alloc(16);
          inBytes.writeBigUInt64LE(inv.inputGpa, 0);
          inBytes.writeBigUInt64LE(inv.outputGpa, 8);
        } else {
          // XMM fast (CPUID 0x40000003 EDX bits 4 and 15): input in RDX, R8, XMM0..XMM5 (at most 112
          // bytes), output in the registers after the input's last 16-byte chunk; what does not fit is
          // HV_STATUS_INVALID_HYPERCALL_INPUT (KVM and OpenVMM answer so). 64-bit callers only.
          if (!p.is64Bit(vp)) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'XMM fast hypercalls are for 64-bit callers');
          xmmOutAt = xmmFastChunk(h.name, inSize, outSize);
          inBytes = readFastBlock(vp, inv).subarray(0, Math.min(inSize, HV_XMM_FAST_BLOCK_BYTES));
        }
      } else {
        validateParameterBlock(inv.inputGpa, inSize, p.memory.sizeBytes, 'input');
        const outSize = (h.outputElementSize ?? 0) * (h.rep ? input.repCount : 1);
        validateParameterBlock(inv.outputGpa, outSize, p.memory.sizeBytes, 'output');
        if (inSize > 0 && outSize > 0) {
          // As numbers: both blocks lie inside the partition's GPA space (validateParameterBlock), far below 2^53.
          const inAt = Number(inv.inputGpa);
          const outAt = Number(inv.outputGpa);
          const overlap = inAt < outAt + outSize && outAt < inAt + inSize;
          if (overlap) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, 'input and output parameter blocks overlap');
        }
        // The hypervisor reads the input and writes the output as the caller: a block on a page a
        // higher VTL protected from it is a memory intercept, not a completed call (§1.1).
        if (!accessibleTo(p, vp, inv.inputGpa, inSize, 'read')) return { parameterIntercept: interceptAccess(p, vp, 'read', inv.inputGpa, inSize) };
        if (!accessibleTo(p, vp, inv.outputGpa, outSize, 'write'))
          return { parameterIntercept: interceptAccess(p, vp, 'write', inv.outputGpa, outSize, Buffer.alloc(outSize)) };
        inBytes = p.readView(vp.activeVtl, vp.index, inv.inputGpa, inSize);
      }
      const r = h.handle({ partition: p, vp, callerVtl: vp.activeVtl }, inBytes, { start: input.repStartIndex, count: input.repCount });
      if (r.intercepted) return { parameterIntercept: r.intercepted };
      // A new object with the handler's fields named (no object spread: it cost about a microsecond
      // per hypercall here; a handler may hand back a shared result, so it is not modified).
      const out: HandlerResult & { repsCompleted: number; fastOutput?: FastOutput } = { status: r.status, repsCompleted: r.repsCompleted ?? 0 };
      if (r.output !== undefined) out.output = r.output;
      if (r.outputOffset !== undefined) out.outputOffset = r.outputOffset;
      if (r.continuation !== undefined) out.continuation = r.continuation;
      if (xmmOutAt !== undefined && r.output && r.output.length > 0)
        out.fastOutput = { start: xmmOutAt, offset: xmmOutAt + (r.outputOffset ?? 0), bytes: r.output };
      return out;
    } catch (e) {
      if (e instanceof HvError) return { status: e.status, repsCompleted: 0 };
      throw e;
    }
  }
}
