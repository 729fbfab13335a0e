// core, rules: what QEMU's hyperv-testdev (hw/misc/hyperv_testdev.c) does for kvm-unit-tests'
// hyperv_synic and hyperv_connections (x86/hyperv.c synic_ctl): SINT routes a test can assert,
// and message/event connections it creates for HvCallPostMessage/HvCallSignalEvent. The guest
// drives it with `outl(conn_id << 24 | ctl << 16 | vcpu << 8 | sint, 0x3000)`; the agent decodes
// that with decodeTestdevCommand and runs runTestdevCommand. VTL: routes and connections target
// VTL 0 unless told otherwise (the device predates VSM).
import type { PartitionState } from '../state/partition';
import { type Vtl, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_SYNIC_SINT_COUNT } from '../tlfs/message';
import { assertActive, vpOf } from './lifecycle';
import { assertSint } from './synic';
import { createConnection, deleteConnection } from './connections';

/** The I/O port the device decodes (kvm-unit-tests x86/hyperv.c). */
export const HV_TESTDEV_PORT = 0x3000;
/** Control codes (kvm-unit-tests x86/hyperv.c, QEMU hyperv_testdev.c). */
export const HvTestdevCtl = {
  HV_TEST_DEV_SINT_ROUTE_CREATE: 1,
  HV_TEST_DEV_SINT_ROUTE_DESTROY: 2,
  HV_TEST_DEV_SINT_ROUTE_SET_SINT: 3,
  HV_TEST_DEV_MSG_CONN_CREATE: 4,
  HV_TEST_DEV_MSG_CONN_DESTROY: 5,
  HV_TEST_DEV_EVT_CONN_CREATE: 6,
  HV_TEST_DEV_EVT_CONN_DESTROY: 7,
} as const;

export interface TestdevCommand {
  ctl: number;
  vpIndex: number;
  sint: number;
  connectionId: number;
}

/** The 32-bit value written to HV_TESTDEV_PORT: conn_id 31:24, ctl 23:16, vcpu 15:8, sint 7:0. */
export function decodeTestdevCommand(value: number): TestdevCommand {
  const v = value >>> 0;
  return { connectionId: v >>> 24, ctl: (v >>> 16) & 0xff, vpIndex: (v >>> 8) & 0xff, sint: v & 0xff };
}

const routeKey = (vpIndex: number, vtl: Vtl, sint: number) => `${vpIndex}/${vtl}/${sint}`;

function checkRoute(p: PartitionState, vpIndex: number, sint: number, vtl: Vtl): void {
  assertActive(p);
  vpOf(p, vpIndex);
  if (!Number.isInteger(sint) || sint < 0 || sint >= HV_SYNIC_SINT_COUNT) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `SINT ${sint} is not 0..15`);
  if (!isVtl(vtl) || vtl > p.maximumVtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${vtl} is not 0..${p.maximumVtl}`);
}

/** HV_TEST_DEV_SINT_ROUTE_CREATE: a route to SINT `sint` of VP `vpIndex`. HV_STATUS_OBJECT_IN_USE if it exists. */
export function sintRouteCreate(p: PartitionState, vpIndex: number, sint: number, vtl: Vtl = 0): void {
  checkRoute(p, vpIndex, sint, vtl);
  const k = routeKey(vpIndex, vtl, sint);
  if (p.sintRoutes.has(k)) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `a route to SINT${sint} of VP ${vpIndex} VTL ${vtl} exists`);
  p.sintRoutes.add(k);
}

/** HV_TEST_DEV_SINT_ROUTE_DESTROY. HV_STATUS_NOT_FOUND if there is no such route. */
export function sintRouteDestroy(p: PartitionState, vpIndex: number, sint: number, vtl: Vtl = 0): void {
  checkRoute(p, vpIndex, sint, vtl);
  if (!p.sintRoutes.delete(routeKey(vpIndex, vtl, sint))) hvFail(HvStatus.HV_STATUS_NOT_FOUND, `no route to SINT${sint} of VP ${vpIndex} VTL ${vtl}`);
}

/**
 * HV_TEST_DEV_SINT_ROUTE_SET_SINT: asserts SINT `sint` of VP `vpIndex` (raiseInterrupt with the
 * SINTx vector and AutoEOI, unless masked or polling; KVM's kvm_hv_synic_set_irq). Returns whether
 * an interrupt was raised. HV_STATUS_NOT_FOUND if the route was not created.
 */
export function sintRouteSet(p: PartitionState, vpIndex: number, sint: number, vtl: Vtl = 0): boolean {
  checkRoute(p, vpIndex, sint, vtl);
  if (!p.sintRoutes.has(routeKey(vpIndex, vtl, sint))) hvFail(HvStatus.HV_STATUS_NOT_FOUND, `no route to SINT${sint} of VP ${vpIndex} VTL ${vtl}`);
  const vp = vpOf(p, vpIndex);
  if (!vp.vtls.get(vtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_VTL_STATE, `VTL ${vtl} is not enabled on VP ${vpIndex}`);
  return assertSint(p, vp, vtl, sint);
}

/**
 * Runs one device command. MSG_CONN_CREATE makes message connection conn_id to (vcpu, sint);
 * EVT_CONN_CREATE makes event connection conn_id whose flag is conn_id itself (what the device
 * signals; kvm-unit-tests checks bit conn_id of the SINT's flags); *_DESTROY delete by conn_id.
 * Unknown control codes: HV_STATUS_INVALID_PARAMETER.
 */
export function runTestdevCommand(p: PartitionState, cmd: TestdevCommand, vtl: Vtl = 0): void {
  const C = HvTestdevCtl;
  switch (cmd.ctl) {
    case C.HV_TEST_DEV_SINT_ROUTE_CREATE:
      sintRouteCreate(p, cmd.vpIndex, cmd.sint, vtl);
      return;
    case C.HV_TEST_DEV_SINT_ROUTE_DESTROY:
      sintRouteDestroy(p, cmd.vpIndex, cmd.sint, vtl);
      return;
    case C.HV_TEST_DEV_SINT_ROUTE_SET_SINT:
      sintRouteSet(p, cmd.vpIndex, cmd.sint, vtl);
      return;
    case C.HV_TEST_DEV_MSG_CONN_CREATE:
      createConnection(p, { connectionId: cmd.connectionId, kind: 'message', vpIndex: cmd.vpIndex, sint: cmd.sint, vtl });
      return;
    case C.HV_TEST_DEV_EVT_CONN_CREATE:
      createConnection(p, { connectionId: cmd.connectionId, kind: 'event', vpIndex: cmd.vpIndex, sint: cmd.sint, vtl, flagNumber: cmd.connectionId });
      return;
    case C.HV_TEST_DEV_MSG_CONN_DESTROY:
    case C.HV_TEST_DEV_EVT_CONN_DESTROY:
      deleteConnection(p, cmd.connectionId);
      return;
    default:
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `hyperv-testdev control code ${cmd.ctl} is unknown`);
  }
}
