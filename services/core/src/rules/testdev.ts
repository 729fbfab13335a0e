// core, rules: what QEMU's hyperv-testdev (hw/misc/hyperv_testdev.c) does for kvm-unit-tests'
// hyperv_synic and hyperv_connections (x86/hyperv.c synic_ctl): SINT routes a test can assert,
// and message/event connections it creates for HvCallPostMessage/HvCallSignalEvent (rules/connections.ts).
// The device's port protocol (`outl(conn_id << 24 | ctl << 16 | vcpu << 8 | sint, 0x3000)`) is decoded
// by the platform (@vsm/platform-kvm guest/devices/hyperv-testdev.ts), which calls these. VTL: routes
// target VTL 0 unless told otherwise (the device predates VSM).
import type { PartitionState } from '../state/partition';
import { type Vtl, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import { HV_SYNIC_SINT_COUNT } from '../tlfs/message';
import { assertActive, vpOf } from './lifecycle';
import { assertSint } from './synic';

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
