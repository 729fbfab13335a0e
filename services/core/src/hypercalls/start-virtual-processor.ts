// core, hypercalls: HvCallStartVirtualProcessor, 0x0099, simple (tlfs-hypercalls.md §2.10; TLFS
// HvCallStartVirtualProcessor.md): starts a VP in a VTL at an initial context (INIT-equivalent; the
// only way to start a VP in a VTL > 0). Checks in OpenHCL's order, the caller's rights before any
// state a lower VTL could probe: partition (INVALID_PARTITION_ID), reserved bytes
// (INVALID_PARAMETER), a target VTL above the caller (ACCESS_DENIED), DenyLowerVtlStartup of a higher
// VTL (ACCESS_DENIED), then the VP index (INVALID_VP_INDEX; the caller itself too), the target VTL
// enabled on the VP (INVALID_VP_STATE), the context (INVALID_REGISTER_VALUE). With InterceptVpStartup
// set by a higher VTL, a lower VTL's call does not complete: it becomes an
// HvMessageTypeHypercallIntercept to that VTL (rules/startup.ts, secure-intercepts.ts).
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF } from '../tlfs/vsm';
import { HvMessageType } from '../tlfs/message';
import { HvRegisterName as R } from '../tlfs/registers';
import { HV_START_VIRTUAL_PROCESSOR_INPUT_SIZE, decodeStartVirtualProcessorInput, encodeHypercallInterceptMessage } from '../tlfs/startup';
import { checkStartVirtualProcessor, startVirtualProcessor, startupPolicy } from '../rules/startup';
import { interceptHeader, raiseSecureIntercept } from '../secure-intercepts';

export const HvCallStartVirtualProcessor: HypercallHandler = {
  name: 'HvCallStartVirtualProcessor',
  code: HvCallCode.HvCallStartVirtualProcessor,
  rep: false,
  inputSize: HV_START_VIRTUAL_PROCESSOR_INPUT_SIZE,
  handle(ctx, input) {
    const i = decodeStartVirtualProcessorInput(input);
    if (i.partitionId !== HV_PARTITION_ID_SELF) hvFail(HvStatus.HV_STATUS_INVALID_PARTITION_ID, 'only HV_PARTITION_ID_SELF is accepted from a guest');
    if (i.rsvdZ !== 0) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'RsvdZ bytes of the input are set');
    if (i.targetVtl > ctx.callerVtl) hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${ctx.callerVtl} may not start a VP in VTL ${i.targetVtl}`);
    const policy = startupPolicy(ctx.partition, ctx.callerVtl);
    if (policy.action === 'deny') hvFail(HvStatus.HV_STATUS_ACCESS_DENIED, `VTL ${policy.by} set DenyLowerVtlStartup`);
    if (i.vpIndex === HV_VP_INDEX_SELF) hvFail(HvStatus.HV_STATUS_INVALID_VP_INDEX, 'a VP does not start itself');
    const vp = checkStartVirtualProcessor(ctx.partition, { vp: ctx.vp, vtl: ctx.callerVtl }, i.vpIndex, i.targetVtl, i.vpContext);
    if (policy.action === 'intercept') {
      // The call does not complete: the intercepting VTL receives it (it may start the VP itself).
      const p = ctx.partition;
      const v = ctx.vp;
      const payload = encodeHypercallInterceptMessage({
        header: interceptHeader(v, 'execute'),
        rax: p.reg(v, R.HvX64RegisterRax),
        rbx: p.reg(v, R.HvX64RegisterRbx),
        rcx: p.reg(v, R.HvX64RegisterRcx),
        rdx: p.reg(v, R.HvX64RegisterRdx),
        r8: p.reg(v, R.HvX64RegisterR8),
        rsi: p.reg(v, R.HvX64RegisterRsi),
        rdi: p.reg(v, R.HvX64RegisterRdi),
        xmmRegisters: Buffer.alloc(96),
        flags: 0,
        rsvd2: Buffer.alloc(12),
      });
      return {
        status: HvStatus.HV_STATUS_SUCCESS,
        intercepted: raiseSecureIntercept(p, v, policy.by, HvMessageType.HvMessageTypeHypercallIntercept, payload, 'execute'),
      };
    }
    startVirtualProcessor(ctx.partition, vp, i.targetVtl as 0 | 1 | 2, i.vpContext);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
