// core, hypercalls: HvCallGetVpIndexFromApicId, 0x009A, rep (TLFS HvCallGetVpIndexFromApicId.md;
// layout in tlfs/startup.ts): the VP index of each APIC id. Checks (OpenHCL): partition
// (INVALID_PARTITION_ID), reserved bytes and HV_INPUT_VTL reserved bits (INVALID_PARAMETER), a
// target VTL above the caller (ACCESS_DENIED); then per element, an APIC id no VP has stops the call
// with INVALID_PARAMETER; RepsCompleted counts the elements before it (the output block is written only on success, as for every call here).
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvError, HvStatus, hvFail } from '../tlfs/status';
import { HV_PARTITION_ID_SELF } from '../tlfs/vsm';
import { HV_GET_VP_INDEX_FROM_APIC_ID_HEADER_SIZE, decodeGetVpIndexFromApicIdHeader } from '../tlfs/startup';
import { vpIndexFromApicId } from '../rules/startup';
import { targetVtlOf } from './common';

export const HvCallGetVpIndexFromApicId: HypercallHandler = {
  name: 'HvCallGetVpIndexFromApicId',
  code: HvCallCode.HvCallGetVpIndexFromApicId,
  rep: true,
  inputSize: HV_GET_VP_INDEX_FROM_APIC_ID_HEADER_SIZE,
  repInputElementSize: 4,
  outputElementSize: 4,
  handle(ctx, input, rep) {
    const h = decodeGetVpIndexFromApicIdHeader(input);
    if (h.partitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, 'only HV_PARTITION_ID_SELF is accepted from a guest');
    if (h.rsvdZ !== 0n) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the header are set');
    targetVtlOf(ctx, h.targetVtl); // HV_INPUT_VTL: reserved bits, no VTL above the caller
    const out = Buffer.alloc(4 * rep.count);
    for (let i = rep.start; i < rep.count; i++) {
      const apicId = input.readUInt32LE(HV_GET_VP_INDEX_FROM_APIC_ID_HEADER_SIZE + 4 * i);
      try {
        out.writeUInt32LE(vpIndexFromApicId(ctx.partition, apicId), 4 * i);
      } catch (e) {
        if (e instanceof HvError) return { status: e.status, repsCompleted: i, output: out.subarray(4 * rep.start, 4 * i), outputOffset: 4 * rep.start };
        throw e;
      }
    }
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: rep.count, output: out.subarray(4 * rep.start), outputOffset: 4 * rep.start };
  },
};
