/**
 * The control port of QEMU's hyperv-testdev (hw/misc/hyperv_testdev.c), which kvm-unit-tests'
 * x86/hyperv.c drives with one 32-bit OUT to port 0x3000 of
 *
 *   conn_id << 24 | ctl << 16 | vcpu << 8 | sint
 *
 * ctl (QEMU's enum, starting at 1): 1 SINT route create, 2 destroy, 3 set (assert) the SINT,
 * 4 message-connection create, 5 destroy, 6 event-connection create, 7 destroy. The destroy of a
 * connection uses only conn_id (x86/hyperv.c sends vcpu 0, sint 0). QEMU accepts only 4-byte accesses;
 * reads return 0. This model only decodes: the ops go to the caller's handler (the core implements them).
 * A ctl outside 1..7 (QEMU ignores it) or an access of another size becomes an 'unknown' op, never a throw;
 * what a handler throws propagates to the caller of ioOut.
 */
import { type PortIoDevice, mask } from './port-io';

export const HYPERV_TESTDEV_PORT = 0x3000;

/** QEMU's HV_TEST_DEV_* control codes. */
export const HV_TEST_DEV = {
  SINT_ROUTE_CREATE: 1,
  SINT_ROUTE_DESTROY: 2,
  SINT_ROUTE_SET_SINT: 3,
  MSG_CONN_CREATE: 4,
  MSG_CONN_DESTROY: 5,
  EVT_CONN_CREATE: 6,
  EVT_CONN_DESTROY: 7,
} as const;

export type HypervTestDevOpName =
  | 'sint-route-create'
  | 'sint-route-destroy'
  | 'sint-route-set-sint'
  | 'msg-conn-create'
  | 'msg-conn-destroy'
  | 'evt-conn-create'
  | 'evt-conn-destroy';

export type HypervTestDevOp =
  | { op: HypervTestDevOpName; vpIndex: number; sint: number; connectionId: number; raw: number }
  | { op: 'unknown'; ctl: number; vpIndex: number; sint: number; connectionId: number; raw: number; size: 1 | 2 | 4 };

const OP_NAMES: readonly (HypervTestDevOpName | undefined)[] = [
  undefined,
  'sint-route-create',
  'sint-route-destroy',
  'sint-route-set-sint',
  'msg-conn-create',
  'msg-conn-destroy',
  'evt-conn-create',
  'evt-conn-destroy',
];

/** Decodes one write to the control port (`size` bytes; only 4 is valid). */
export function decodeHypervTestDevControl(value: number, size: 1 | 2 | 4 = 4): HypervTestDevOp {
  const raw = mask(value, size);
  const fields = { sint: raw & 0xff, vpIndex: (raw >>> 8) & 0xff, connectionId: (raw >>> 24) & 0xff, raw };
  const ctl = (raw >>> 16) & 0xff;
  const op = size === 4 ? OP_NAMES[ctl] : undefined;
  return op ? { op, ...fields } : { op: 'unknown', ctl, size, ...fields };
}

/** The value x86/hyperv.c writes for an op (for tests and tools). */
export function encodeHypervTestDevControl(ctl: number, vpIndex: number, sint: number, connectionId = 0): number {
  return (((connectionId & 0xff) << 24) | ((ctl & 0xff) << 16) | ((vpIndex & 0xff) << 8) | (sint & 0xff)) >>> 0;
}

/** What the caller implements: one method per op (the connection destroys get only the connection id). */
export interface HypervTestDevHandler {
  sintRouteCreate(vpIndex: number, sint: number): void;
  sintRouteDestroy(vpIndex: number, sint: number): void;
  sintRouteSet(vpIndex: number, sint: number): void;
  messageConnectionCreate(connectionId: number, vpIndex: number, sint: number): void;
  messageConnectionDestroy(connectionId: number): void;
  eventConnectionCreate(connectionId: number, vpIndex: number, sint: number): void;
  eventConnectionDestroy(connectionId: number): void;
  /** An op QEMU would ignore (bad ctl or access size). Default: ignored (counted in `unknownOps`). */
  unknown?(op: Extract<HypervTestDevOp, { op: 'unknown' }>): void;
}

export class HypervTestDevControl implements PortIoDevice {
  readonly base: number;
  readonly portCount = 4;
  /** Every op decoded, newest last (bounded to the last 64), for diagnostics. */
  readonly recent: HypervTestDevOp[] = [];
  unknownOps = 0;

  /** `handler`: the method object, or one function taking every typed op. */
  constructor(
    private readonly handler: HypervTestDevHandler | ((op: HypervTestDevOp) => void),
    base = HYPERV_TESTDEV_PORT,
  ) {
    this.base = base;
  }

  ioIn(): number {
    return 0; // QEMU's hv_test_dev_read
  }

  ioOut(_port: number, size: 1 | 2 | 4, value: number): void {
    const op = decodeHypervTestDevControl(value, size);
    if (this.recent.length >= 64) this.recent.shift();
    this.recent.push(op);
    if (op.op === 'unknown') this.unknownOps++;
    const h = this.handler;
    if (typeof h === 'function') {
      h(op);
      return;
    }
    switch (op.op) {
      case 'sint-route-create':
        h.sintRouteCreate(op.vpIndex, op.sint);
        return;
      case 'sint-route-destroy':
        h.sintRouteDestroy(op.vpIndex, op.sint);
        return;
      case 'sint-route-set-sint':
        h.sintRouteSet(op.vpIndex, op.sint);
        return;
      case 'msg-conn-create':
        h.messageConnectionCreate(op.connectionId, op.vpIndex, op.sint);
        return;
      case 'msg-conn-destroy':
        h.messageConnectionDestroy(op.connectionId);
        return;
      case 'evt-conn-create':
        h.eventConnectionCreate(op.connectionId, op.vpIndex, op.sint);
        return;
      case 'evt-conn-destroy':
        h.eventConnectionDestroy(op.connectionId);
        return;
      case 'unknown':
        h.unknown?.(op);
        return;
      default:
        op satisfies never;
    }
  }
}
