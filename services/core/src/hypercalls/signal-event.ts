// core, hypercalls: HvCallSignalEvent (tlfs-hypercalls.md §2.9): sets an event flag through a connection.
import { HvCallCode } from '../tlfs/hypercall';
import type { HypercallHandler } from './handler';
import { HvStatus, hvFail } from '../tlfs/status';

export const HvCallSignalEvent: HypercallHandler = {
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
};
