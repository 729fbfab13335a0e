// core, hypercalls: HvCallGetVpRegisters (tlfs-hypercalls.md §2.7), rep: reads registers of a VP in a VTL.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvError, HvStatus, hvFail } from '../tlfs/status';
import { HV_VP_REGISTERS_HEADER_SIZE, decodeVpRegistersHeader } from '../tlfs/vsm';
import { encodeReg128 } from '../tlfs/registers';
import { targetVtlOf, selfChecks } from './common';

export const HvCallGetVpRegisters: HypercallHandler = {
  name: 'HvCallGetVpRegisters',
  code: HvCallCode.HvCallGetVpRegisters,
  rep: true,
  inputSize: HV_VP_REGISTERS_HEADER_SIZE,
  repInputElementSize: 4,
  outputElementSize: 16,
  handle(ctx, input, rep) {
    const h = decodeVpRegistersHeader(input);
    selfChecks(ctx, h.partitionId);
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    // The caller's right to the target VTL before the VP index (ACCESS_DENIED first, issue #16).
    const vtl = targetVtlOf(ctx, h.targetVtl);
    const vp = selfChecks(ctx, h.partitionId, h.vpIndex);
    // From Node's pool (one register: a Buffer.alloc of its own cost more than the call's encoding).
    // Each register's 16 bytes are written whole; what no register fills is cleared.
    const out = Buffer.allocUnsafe(16 * rep.count);
    if (rep.start > 0) out.fill(0, 0, 16 * rep.start);
    for (let i = rep.start; i < rep.count; i++) {
      const name = input.readUInt32LE(HV_VP_REGISTERS_HEADER_SIZE + 4 * i);
      try {
        encodeReg128(ctx.partition.getRegister(vp, vtl, name), out, 16 * i);
      } catch (e) {
        if (e instanceof HvError) return { status: e.status, repsCompleted: i, output: out.fill(0, 16 * i) };
        throw e;
      }
    }
    return {
      status: HvStatus.HV_STATUS_SUCCESS,
      repsCompleted: rep.count,
      output: rep.start === 0 ? out : out.subarray(16 * rep.start),
      outputOffset: 16 * rep.start,
    };
  },
};
