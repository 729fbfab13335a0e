// core, hypercalls: HvCallSetVpRegisters (tlfs-hypercalls.md §2.7), rep: writes registers of a VP in a VTL.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvError, HvStatus, hvFail } from '../tlfs/status';
import { HV_REGISTER_ASSOC_SIZE, HV_VP_REGISTERS_HEADER_SIZE, HvRegisterAssocLayout, decodeVpRegistersHeader } from '../tlfs/vsm';
import { targetVtlOf, selfChecks } from './common';

export const HvCallSetVpRegisters: HypercallHandler = {
  name: 'HvCallSetVpRegisters',
  code: HvCallCode.HvCallSetVpRegisters,
  rep: true,
  inputSize: HV_VP_REGISTERS_HEADER_SIZE,
  repInputElementSize: HV_REGISTER_ASSOC_SIZE,
  handle(ctx, input, rep) {
    const h = decodeVpRegistersHeader(input);
    selfChecks(ctx, h.partitionId);
    if (h.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    // The caller's right to the target VTL before the VP index (ACCESS_DENIED first, issue #16).
    const vtl = targetVtlOf(ctx, h.targetVtl);
    const vp = selfChecks(ctx, h.partitionId, h.vpIndex);
    // Rep semantics: elements are processed in order; a failing element stops the call and the
    // reps completed so far stay applied (tlfs-hypercalls.md §1.1).
    for (let i = rep.start; i < rep.count; i++) {
      const a = HvRegisterAssocLayout.decode(input, HV_VP_REGISTERS_HEADER_SIZE + HV_REGISTER_ASSOC_SIZE * i);
      try {
        if (a.rsvdZ.some((b) => b !== 0)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'HV_REGISTER_ASSOC RsvdZ is set');
        ctx.partition.prepareSetRegister(vp, vtl, a.name, a.value, ctx.callerVtl)();
      } catch (e) {
        if (e instanceof HvError) return { status: e.status, repsCompleted: i };
        throw e;
      }
    }
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count };
  },
};
