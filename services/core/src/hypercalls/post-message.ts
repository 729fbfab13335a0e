// core, hypercalls: HvCallPostMessage (tlfs-hypercalls.md §2.8): posts a message through a connection
// the host created (rules/connections.ts). Input HV_INPUT_POST_MESSAGE (256 bytes, memory only: it
// does not fit a fast call). Statuses: INVALID_HYPERCALL_INPUT for reserved bits set (ConnectionId
// 31:24, RsvdZ), PayloadSize > 240 or a MessageType that is 0 or has bit 31 set (QEMU answers a bad
// size so; the TLFS lists these under INVALID_PARAMETER); then INVALID_CONNECTION_ID (unknown id),
// INVALID_PORT_ID (event connection), INVALID_SYNIC_STATE, INSUFFICIENT_BUFFERS (queue full).
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';
import {
  HV_CONNECTION_ID_MASK,
  HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT,
  HV_MESSAGE_TYPE_HYPERVISOR_MASK,
  HvInputPostMessageLayout,
  decodePostMessageInput,
} from '../tlfs/message';
import { postThroughConnection } from '../rules/connections';

export const HvCallPostMessage: HypercallHandler = {
  name: 'HvCallPostMessage',
  code: HvCallCode.HvCallPostMessage,
  rep: false,
  inputSize: HvInputPostMessageLayout.size,
  handle(ctx, input) {
    const m = decodePostMessageInput(input);
    if ((m.connectionId & ~HV_CONNECTION_ID_MASK) !== 0 || m.rsvdZ !== 0)
      hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'reserved bits of HV_INPUT_POST_MESSAGE are set');
    if (m.payloadSize > HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `PayloadSize ${m.payloadSize} exceeds 240`);
    if (m.messageType === 0 || (m.messageType & HV_MESSAGE_TYPE_HYPERVISOR_MASK) !== 0)
      hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `MessageType 0x${m.messageType.toString(16)} may not be posted by a guest`);
    postThroughConnection(ctx.partition, m.connectionId, m.messageType, m.payload.subarray(0, m.payloadSize));
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};
