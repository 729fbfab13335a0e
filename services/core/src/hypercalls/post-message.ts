// core, hypercalls: HvCallPostMessage (tlfs-hypercalls.md §2.9): posts a message through a connection.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';

export const HvCallPostMessage: HypercallHandler = {
  name: 'HvCallPostMessage',
  code: HvCallCode.HvCallPostMessage,
  rep: false,
  inputSize: 256,
  handle() {
    hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, 'no SynIC connection exists (ports are not modelled)');
  },
};
