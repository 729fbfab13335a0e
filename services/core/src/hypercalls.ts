// core: the hypercall dispatcher (OpenVMM hv1_hypercall style): decode and validate
// HV_HYPERCALL_INPUT, fetch memory-based or fast parameters, run the call's handler, write the
// output block and return HV_HYPERCALL_RESULT_VALUE. VtlCall/VtlReturn are handled in vtl-switch.ts
// because their failures are #UD, not statuses.
import { GuestOutcome, Partition, VirtualProcessor, X64Exception } from './partition';
import { Vtl, isVtl } from './vtl-array';
import { HvError, HvStatus, HvStatusValue, hvFail } from './tlfs/status';
import {
  HvCallCode,
  HypercallShape,
  decodeHypercallInput,
  encodeHypercallResult,
  validateHypercallInput,
  validateParameterBlock,
} from './tlfs/hypercall';
import { HvRegisterName as R, decodeReg128, encodeReg128 } from './tlfs/registers';
import {
  HV_ENABLE_PARTITION_VTL_INPUT_SIZE,
  HV_ENABLE_VP_VTL_INPUT_SIZE,
  HV_PARTITION_ID_SELF,
  HV_REGISTER_ASSOC_SIZE,
  HV_VP_INDEX_SELF,
  HV_VP_REGISTERS_HEADER_SIZE,
  decodeEnablePartitionVtlInput,
  decodeEnableVpVtlInput,
  decodeInputVtl,
  decodeVpRegistersHeader,
} from './tlfs/vsm';
import { vtlCall, vtlReturn } from './vtl-switch';
import { AccessOutcome, accessibleTo, interceptAccess } from './access';
import { HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE, decodeModifyVtlProtectionMaskHeader } from './tlfs/message';

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
}

/** One entry per implemented call: its shape (for the common checks) and its handler. */
export interface HypercallHandler extends HypercallShape {
  name: string;
  /** input: fixed header (+ rep elements for rep calls, starting at repStartIndex). */
  handle(ctx: HypercallContext, input: Buffer, rep: { start: number; count: number }): HandlerResult;
}

const handlers = new Map<number, HypercallHandler>();
export function registerHypercall(h: HypercallHandler): void {
  handlers.set(h.code, h);
}
/** Codes the dispatcher implements (the capability report falls out of this table). */
export function implementedHypercalls(): number[] {
  return [...handlers.keys(), HvCallCode.HvCallVtlCall, HvCallCode.HvCallVtlReturn].sort((a, b) => a - b);
}

export interface HypercallInvocation {
  control: bigint;
  inputGpa: bigint;
  outputGpa: bigint;
}

export interface HypercallOutcome extends GuestOutcome {
  resultValue: bigint;
  /**
   * Set when a parameter block is on a page the caller's VTL may not read (input) or write
   * (output): the hypervisor raises a memory intercept instead of completing the call
   * (tlfs-hypercalls.md §1.1); RIP and RAX are unchanged.
   */
  parameterIntercept?: AccessOutcome;
}

/** Reads RCX/RDX/R8 (64-bit callers) or EDX:EAX/EBX:ECX/EDI:ESI (32-bit) (tlfs-hypercalls.md §1.4). */
export function hypercallRegisters(p: Partition, vp: VirtualProcessor): HypercallInvocation {
  if (p.is64Bit(vp)) return { control: p.reg(vp, R.HvX64RegisterRcx), inputGpa: p.reg(vp, R.HvX64RegisterRdx), outputGpa: p.reg(vp, R.HvX64RegisterR8) };
  const pair = (hi: number, lo: number) => ((p.reg(vp, hi) & 0xffffffffn) << 32n) | (p.reg(vp, lo) & 0xffffffffn);
  return { control: pair(R.HvX64RegisterRdx, R.HvX64RegisterRax), inputGpa: pair(R.HvX64RegisterRbx, R.HvX64RegisterRcx), outputGpa: pair(R.HvX64RegisterRdi, R.HvX64RegisterRsi) };
}

/**
 * Executes the VMCALL/VMMCALL instruction of the VP's active VTL with the registers it holds.
 * Writes the result value into RAX (EDX:EAX) as the TLFS specifies; returns the outcome.
 */
export function executeVmcall(p: Partition, vp: VirtualProcessor, opts: { instructionLength?: number } = {}): HypercallOutcome {
  const insnLen = BigInt(opts.instructionLength ?? 3);
  p.assertActive();
  if (p.spec.architecture !== 'x64') throw new HvError(HvStatus.HV_STATUS_FEATURE_UNAVAILABLE, 'arm64 hypercalls (HVC #0/#2/#3) are not modelled by this emulator; only memory intercepts are');
  const callerVtl = vp.activeVtl;
  // Legal environment: CPL0 in protected mode; otherwise #UD (tlfs-hypercalls.md §1.1).
  if (p.cpl(vp) !== 0 || p.inRealMode(vp)) return { exception: X64Exception.UD, activeVtl: callerVtl, resultValue: 0n };
  const inv = hypercallRegisters(p, vp);
  const input = decodeHypercallInput(inv.control);
  if (input.callCode === HvCallCode.HvCallVtlCall || input.callCode === HvCallCode.HvCallVtlReturn) {
    // Every bit of the input value other than the call code must be 0, else #UD (OpenVMM).
    if (inv.control !== BigInt(input.callCode)) return { exception: X64Exception.UD, activeVtl: callerVtl, resultValue: 0n };
    // The VTL control input is in RAX for 64-bit callers and in ECX for 32-bit callers (§2.6).
    const controlInput = p.is64Bit(vp) ? p.reg(vp, R.HvX64RegisterRax) : p.reg(vp, R.HvX64RegisterRcx) & 0xffffffffn;
    const o = input.callCode === HvCallCode.HvCallVtlCall ? vtlCall(p, vp, controlInput, insnLen) : vtlReturn(p, vp, controlInput, insnLen);
    return { ...o, resultValue: 0n };
  }
  const d = dispatch(p, vp, inv);
  if ('parameterIntercept' in d) return { activeVtl: vp.activeVtl, vtlSwitch: d.parameterIntercept.status === 'intercepted' ? d.parameterIntercept.vtlSwitch : undefined, resultValue: 0n, parameterIntercept: d.parameterIntercept };
  const { status, repsCompleted, output, outputOffset } = d;
  const resultValue = encodeHypercallResult(status, repsCompleted);
  if (status === HvStatus.HV_STATUS_SUCCESS && output && output.length > 0) p.writeView(callerVtl, vp.index, inv.outputGpa + BigInt(outputOffset ?? 0), output);
  // The VMCALL completed: RIP moves past it (3 bytes; 0 when the platform's exit already did).
  p.setReg(vp, R.HvX64RegisterRip, p.reg(vp, R.HvX64RegisterRip) + insnLen);
  if (p.is64Bit(vp)) p.setReg(vp, R.HvX64RegisterRax, resultValue);
  else {
    p.setReg(vp, R.HvX64RegisterRax, resultValue & 0xffffffffn);
    p.setReg(vp, R.HvX64RegisterRdx, resultValue >> 32n);
  }
  return { activeVtl: vp.activeVtl, resultValue };
}

function dispatch(p: Partition, vp: VirtualProcessor, inv: HypercallInvocation): (HandlerResult & { repsCompleted: number }) | { parameterIntercept: AccessOutcome } {
  const input = decodeHypercallInput(inv.control);
  const h = handlers.get(input.callCode);
  try {
    if (!h) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE, `unknown call code 0x${input.callCode.toString(16)}`);
    validateHypercallInput(input, h);
    const elem = h.repInputElementSize ?? 0;
    const inSize = h.inputSize + input.variableHeaderSize * 8 + (h.rep ? elem * input.repCount : 0);
    let inBytes: Buffer;
    if (input.fast) {
      // Register-based: at most two 8-byte inputs (RDX, R8); XMM fast input is not offered
      // (CPUID 0x40000003 EDX bit 4 clear), and fast calls have no output.
      if (inSize > 16 || (h.outputElementSize ?? 0) > 0) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `${h.name} does not fit a register-based (fast) call`);
      inBytes = Buffer.alloc(16);
      inBytes.writeBigUInt64LE(inv.inputGpa, 0);
      inBytes.writeBigUInt64LE(inv.outputGpa, 8);
    } else {
      validateParameterBlock(inv.inputGpa, inSize, p.memory.sizeBytes, 'input');
      const outSize = (h.outputElementSize ?? 0) * (h.rep ? input.repCount : 1);
      validateParameterBlock(inv.outputGpa, outSize, p.memory.sizeBytes, 'output');
      if (inSize > 0 && outSize > 0) {
        const overlap = inv.inputGpa < inv.outputGpa + BigInt(outSize) && inv.outputGpa < inv.inputGpa + BigInt(inSize);
        if (overlap) hvFail(HvStatus.HV_STATUS_INVALID_ALIGNMENT, 'input and output parameter blocks overlap');
      }
      // The hypervisor reads the input and writes the output as the caller: a block on a page a
      // higher VTL protected from it is a memory intercept, not a completed call (§1.1).
      if (!accessibleTo(p, vp, inv.inputGpa, inSize, 'read')) return { parameterIntercept: interceptAccess(p, vp, 'read', inv.inputGpa, inSize) };
      if (!accessibleTo(p, vp, inv.outputGpa, outSize, 'write')) return { parameterIntercept: interceptAccess(p, vp, 'write', inv.outputGpa, outSize, Buffer.alloc(outSize)) };
      inBytes = p.readView(vp.activeVtl, vp.index, inv.inputGpa, inSize);
    }
    const r = h.handle({ partition: p, vp, callerVtl: vp.activeVtl }, inBytes, { start: input.repStartIndex, count: input.repCount });
    return { ...r, repsCompleted: r.repsCompleted ?? 0 };
  } catch (e) {
    if (e instanceof HvError) return { status: e.status, repsCompleted: 0 };
    throw e;
  }
}

// ---- VSM hypercalls --------------------------------------------------------------------------

/** Resolves the target VTL of Get/SetVpRegisters (HV_INPUT_VTL) under the cross-VTL rule. */
function targetVtlOf(ctx: HypercallContext, inputVtl: number): Vtl {
  const iv = decodeInputVtl(inputVtl);
  if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set');
  if (!iv.useTargetVtl) return ctx.callerVtl;
  if (!isVtl(iv.targetVtl)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `target VTL ${iv.targetVtl} is not implemented`);
  // A VTL may access its own and lower VTLs' registers, never a higher VTL's (tlfs-hypercalls.md §2.7).
  if (iv.targetVtl > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not access VTL ${iv.targetVtl} registers`);
  return iv.targetVtl;
}

function selfChecks(ctx: HypercallContext, partitionId: bigint, vpIndex?: number): VirtualProcessor {
  if (partitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, 'only HV_PARTITION_ID_SELF is accepted from a guest');
  if (vpIndex === undefined) return ctx.vp;
  if (vpIndex === HV_VP_INDEX_SELF) return ctx.vp;
  return ctx.partition.vp(vpIndex);
}

registerHypercall({
  name: 'HvCallEnablePartitionVtl',
  code: HvCallCode.HvCallEnablePartitionVtl,
  rep: false,
  inputSize: HV_ENABLE_PARTITION_VTL_INPUT_SIZE,
  handle(ctx, input) {
    const i = decodeEnablePartitionVtlInput(input);
    selfChecks(ctx, i.targetPartitionId);
    if (i.rsvdZ !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the input are set');
    ctx.partition.enablePartitionVtl(ctx.callerVtl, i.targetVtl, i.flags);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
});

registerHypercall({
  name: 'HvCallEnableVpVtl',
  code: HvCallCode.HvCallEnableVpVtl,
  rep: false,
  inputSize: HV_ENABLE_VP_VTL_INPUT_SIZE,
  handle(ctx, input) {
    const i = decodeEnableVpVtlInput(input);
    const vp = selfChecks(ctx, i.targetPartitionId, i.vpIndex);
    if (i.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the input are set');
    ctx.partition.enableVpVtl(ctx.callerVtl, vp.index, i.targetVtl, i.vpVtlContext, ctx.vp.index);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
});

registerHypercall({
  name: 'HvCallGetVpRegisters',
  code: HvCallCode.HvCallGetVpRegisters,
  rep: true,
  inputSize: HV_VP_REGISTERS_HEADER_SIZE,
  repInputElementSize: 4,
  outputElementSize: 16,
  handle(ctx, input, rep) {
    const h = decodeVpRegistersHeader(input);
    const vp = selfChecks(ctx, h.partitionId, h.vpIndex);
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    const vtl = targetVtlOf(ctx, h.targetVtl);
    const out = Buffer.alloc(16 * rep.count);
    for (let i = rep.start; i < rep.count; i++) {
      const name = input.readUInt32LE(HV_VP_REGISTERS_HEADER_SIZE + 4 * i);
      try {
        encodeReg128(ctx.partition.getRegister(vp, vtl, name), out, 16 * i);
      } catch (e) {
        if (e instanceof HvError) return { status: e.status, repsCompleted: i, output: out };
        throw e;
      }
    }
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count, output: out.subarray(16 * rep.start), outputOffset: 16 * rep.start };
  },
});

registerHypercall({
  name: 'HvCallSetVpRegisters',
  code: HvCallCode.HvCallSetVpRegisters,
  rep: true,
  inputSize: HV_VP_REGISTERS_HEADER_SIZE,
  repInputElementSize: HV_REGISTER_ASSOC_SIZE,
  handle(ctx, input, rep) {
    const h = decodeVpRegistersHeader(input);
    const vp = selfChecks(ctx, h.partitionId, h.vpIndex);
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    const vtl = targetVtlOf(ctx, h.targetVtl);
    // Rep semantics: elements are processed in order; a failing element stops the call and the
    // reps completed so far stay applied (tlfs-hypercalls.md §1.1).
    for (let i = rep.start; i < rep.count; i++) {
      const off = HV_VP_REGISTERS_HEADER_SIZE + HV_REGISTER_ASSOC_SIZE * i;
      const name = input.readUInt32LE(off);
      try {
        if (input.readUInt32LE(off + 4) !== 0 || input.readBigUInt64LE(off + 8) !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_REGISTER_ASSOC RsvdZ is set');
        ctx.partition.prepareSetRegister(vp, vtl, name, decodeReg128(input, off + 16), ctx.callerVtl)();
      } catch (e) {
        if (e instanceof HvError) return { status: e.status, repsCompleted: i };
        throw e;
      }
    }
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count };
  },
});

registerHypercall({
  name: 'HvCallModifyVtlProtectionMask',
  code: HvCallCode.HvCallModifyVtlProtectionMask,
  rep: true,
  inputSize: HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE,
  repInputElementSize: 8,
  handle(ctx, input, rep) {
    const h = decodeModifyVtlProtectionMaskHeader(input);
    // OpenHCL's checks (tlfs-hypercalls.md §2.3): partition != SELF -> ACCESS_DENIED; TargetVtl names
    // the protecting VTL (default: the caller's); VTL0 -> INVALID_PARAMETER; above the caller ->
    // ACCESS_DENIED.
    if (h.targetPartitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, 'only HV_PARTITION_ID_SELF');
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    const iv = decodeInputVtl(h.targetVtl);
    if (iv.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_INPUT_VTL reserved bits are set');
    const target = iv.useTargetVtl ? iv.targetVtl : ctx.callerVtl;
    if (target > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not set VTL ${target}'s protections`);
    const pages = ctx.partition.memory.sizeBytes >> 12n;
    // Rep semantics: elements in order; the first non-RAM page stops the call, earlier ones apply.
    const runs: { start: bigint; count: bigint }[] = [];
    let done = rep.start;
    let failed = false;
    for (let i = rep.start; i < rep.count; i++) {
      const gpfn = input.readBigUInt64LE(HV_MODIFY_VTL_PROTECTION_MASK_HEADER_SIZE + 8 * i);
      if (gpfn >= pages) {
        failed = true;
        break;
      }
      const last = runs[runs.length - 1];
      if (last && last.start + last.count === gpfn) last.count++;
      else runs.push({ start: gpfn, count: 1n });
      done = i + 1;
    }
    if (runs.length) ctx.partition.modifyVtlProtectionMask(ctx.callerVtl, target, h.mapFlags, runs);
    else ctx.partition.modifyVtlProtectionMask(ctx.callerVtl, target, h.mapFlags, []); // state checks still apply
    if (failed) return { status: HvStatus.HV_STATUS_INVALID_PARAMETER, repsCompleted: done };
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count };
  },
});

registerHypercall({
  name: 'HvCallSignalEvent',
  code: HvCallCode.HvCallSignalEvent,
  rep: false,
  inputSize: 8,
  handle() {
    // Ports and connections are created by the parent (HvCallCreatePort/ConnectPort), which this
    // service does not model yet: no connection id is valid (tlfs-hypercalls.md §2.9). Event flags
    // can be signalled by the host with SynicService.SignalEvent.
    hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, 'no SynIC connection exists (ports are not modelled)');
  },
});

registerHypercall({
  name: 'HvCallPostMessage',
  code: HvCallCode.HvCallPostMessage,
  rep: false,
  inputSize: 256,
  handle() {
    hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, 'no SynIC connection exists (ports are not modelled)');
  },
});
