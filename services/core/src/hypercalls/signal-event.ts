// core, hypercalls: HvCallSignalEvent (tlfs-hypercalls.md §2.9): sets an event flag through a
// connection the host created (rules/connections.ts). Input HV_INPUT_SIGNAL_EVENT (8 bytes; Linux
// and kvm-unit-tests issue it as a fast call, RDX = ConnectionId | FlagNumber << 32). Statuses:
// INVALID_HYPERCALL_INPUT for reserved bits set (ConnectionId 31:24, RsvdZ; as QEMU), then
// INVALID_CONNECTION_ID (unknown id), INVALID_PORT_ID (message connection), INVALID_PARAMETER
// (FlagNumber beyond the port's flags), INVALID_SYNIC_STATE (SynIC/SIEF disabled, SINT masked).
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_CONNECTION_ID_MASK, HvSignalEventInputLayout, decodeSignalEventInput } from '../tlfs/message';
import { signalThroughConnection } from '../rules/connections';

export const HvCallSignalEvent: HypercallHandler = {
  name: 'HvCallSignalEvent',
  code: HvCallCode.HvCallSignalEvent,
  rep: false,
  inputSize: HvSignalEventInputLayout.size,
  handle(ctx, input) {
    const i = decodeSignalEventInput(input);
    if ((i.connectionId & ~HV_CONNECTION_ID_MASK) !== 0 || i.rsvdZ !== 0)
      hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'reserved bits of HV_INPUT_SIGNAL_EVENT are set');
    signalThroughConnection(ctx.partition, i.connectionId, i.flagNumber);
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
