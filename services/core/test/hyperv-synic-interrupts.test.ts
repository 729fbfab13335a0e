// SynIC interrupts (PlatformHooks.raiseInterrupt) raised exactly when the TLFS says
// (tlfs-overlays-synic.md §5.4 rule 2, §5.6): a message newly placed in a SIM slot (posted,
// redelivered at EOM, delivered when SCONTROL/SIMP are enabled), an event flag newly set, the
// test device asserting a SINT; never for masked or polling SINTs; intercepts into a higher VTL's
// SINT0 too; the hyperv-testdev SINT routes (the port protocol is the platform's: guest/devices).
import {
  HvError,
  HvMsr,
  HvRegisterName as R,
  HvStatus,
  createConnection,
  deleteConnection,
  encodeHvMessage,
  guestAccess,
  longModeContext,
  reg64,
  sintRouteCreate,
  sintRouteDestroy,
  sintRouteSet,
} from '@vsm/core';
import { SIEF_GPA, hvHarness } from './hyperv-harness';

const msg = (type: number, b = 0) => encodeHvMessage({ messageType: type, payloadSize: 1, messageFlags: 0, originationId: 0n }, Buffer.from([b]));
const AUTO_EOI = 1n << 17n;
const MASKED = 1n << 16n;
const POLLING = 1n << 18n;

test('a message placed in a free slot raises the SINT vector once; a queued one only when EOM delivers it', () => {
  const h = hvHarness();
  h.wrmsr(h.sintMsr(5), 0x55n | AUTO_EOI);
  expect(h.p.postMessage(h.vp, 0, 5, msg(1))).toBe('delivered');
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0x55, autoEoi: true }]);
  expect(h.p.postMessage(h.vp, 0, 5, msg(2))).toBe('queued');
  expect(h.raised).toHaveLength(1);
  h.eom(); // slot still occupied: nothing new
  expect(h.raised).toHaveLength(1);
  h.clearSlot(5);
  h.eom();
  expect(h.slotHeader(5).messageType).toBe(2);
  expect(h.raised).toEqual([
    { vp: 0, vtl: 0, vector: 0x55, autoEoi: true },
    { vp: 0, vtl: 0, vector: 0x55, autoEoi: true },
  ]);
});

test('masked and polling SINTs raise nothing, but the message is in the slot', () => {
  const h = hvHarness();
  h.wrmsr(h.sintMsr(1), 0x31n | MASKED);
  h.wrmsr(h.sintMsr(2), 0x32n | POLLING);
  h.p.postMessage(h.vp, 0, 1, msg(7));
  h.p.postMessage(h.vp, 0, 2, msg(8));
  expect(h.raised).toEqual([]);
  expect([h.slotHeader(1).messageType, h.slotHeader(2).messageType]).toEqual([7, 8]);
});

test('enabling SCONTROL or the SIM page delivers what waited, raising then', () => {
  const h = hvHarness();
  h.wrmsr(h.sintMsr(4), 0x44n);
  h.wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 0n);
  expect(h.p.postMessage(h.vp, 0, 4, msg(3))).toBe('queued');
  expect(h.raised).toEqual([]);
  h.wrmsr(HvMsr.HV_X64_MSR_SCONTROL, 1n);
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0x44, autoEoi: false }]);
  h.clearSlot(4);
  h.wrmsr(HvMsr.HV_X64_MSR_SIMP, 0n);
  h.p.postMessage(h.vp, 0, 4, msg(4));
  expect(h.raised).toHaveLength(1);
  h.wrmsr(HvMsr.HV_X64_MSR_SIMP, 0x10000n | 1n);
  expect(h.raised).toHaveLength(2);
});

test('an event flag raises when newly set, not when already set; polling sets it silently; masked is refused', () => {
  const h = hvHarness();
  h.wrmsr(h.sintMsr(9), 0xb1n | AUTO_EOI);
  expect(h.p.signalEvent(h.vp, 0, 9, 0x21)).toBe(true);
  expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xb1, autoEoi: true }]);
  expect(h.p.signalEvent(h.vp, 0, 9, 0x21)).toBe(false);
  expect(h.raised).toHaveLength(1);
  expect(h.p.readView(0, 0, SIEF_GPA + 9n * 256n + 4n, 1)[0]).toBe(0x02); // flag 0x21: byte 4, bit 1
  h.wrmsr(h.sintMsr(10), 0xb2n | POLLING);
  expect(h.p.signalEvent(h.vp, 0, 10, 0)).toBe(true);
  h.wrmsr(h.sintMsr(11), 0xb3n | MASKED);
  expect(h.p.signalEvent(h.vp, 0, 11, 0)).toBe('masked');
  expect(h.raised).toHaveLength(1);
});

test("an intercept delivered to the protecting VTL's SINT0 raises that VTL's SINT0 vector", () => {
  const h = hvHarness({ vpCount: 1 });
  const { p, vp } = h;
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  p.setRegisters(
    vp,
    1,
    [
      { name: R.HvRegisterSipp, value: reg64(0x20000n | 1n) },
      { name: R.HvRegisterScontrol, value: reg64(1n) },
      { name: R.HvRegisterSint0, value: reg64(0x50n) },
      { name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) },
    ],
    'host',
  );
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: 0x40n, count: 1n }]); // page 0x40: no write
  h.raised.length = 0;
  const o = guestAccess(p, vp, 'write', 0x40000n, 4, Buffer.from([1, 2, 3, 4]));
  expect(o.status).toBe('intercepted');
  expect(h.raised).toEqual([{ vp: 0, vtl: 1, vector: 0x50, autoEoi: false }]);
});

describe('hyperv-testdev', () => {
  test('SINT routes: set asserts the SINT with its vector and AutoEOI; masked/polling raise nothing', () => {
    const h = hvHarness();
    const vp1 = h.p.vp(1);
    h.wrmsr(h.sintMsr(3), 0xb3n | AUTO_EOI, vp1);
    sintRouteCreate(h.p, 1, 3);
    expect(sintRouteSet(h.p, 1, 3)).toBe(true);
    expect(h.raised).toEqual([{ vp: 1, vtl: 0, vector: 0xb3, autoEoi: true }]);
    h.wrmsr(h.sintMsr(3), 0xffn | MASKED, vp1); // kvm-unit-tests sint_disable
    expect(sintRouteSet(h.p, 1, 3)).toBe(false);
    h.wrmsr(h.sintMsr(3), 0xb3n | POLLING, vp1);
    expect(sintRouteSet(h.p, 1, 3)).toBe(false);
    expect(h.raised).toHaveLength(1);
    sintRouteDestroy(h.p, 1, 3);
  });

  test('bad routes are HvErrors and change nothing', () => {
    const h = hvHarness();
    const status = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e instanceof HvError ? e.status : e;
      }
      return 'ok';
    };
    expect(status(() => sintRouteSet(h.p, 0, 1))).toBe(HvStatus.HV_STATUS_NOT_FOUND);
    expect(status(() => sintRouteDestroy(h.p, 0, 1))).toBe(HvStatus.HV_STATUS_NOT_FOUND);
    expect(status(() => sintRouteCreate(h.p, 7, 1))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(status(() => sintRouteCreate(h.p, 0, 16))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    sintRouteCreate(h.p, 0, 1);
    expect(status(() => sintRouteCreate(h.p, 0, 1))).toBe(HvStatus.HV_STATUS_OBJECT_IN_USE);
    expect(h.raised).toEqual([]);
  });

  test('what the device does for kvm-unit-tests: a route asserts its SINT; an event connection signals flag conn_id', () => {
    const h = hvHarness();
    h.wrmsr(h.sintMsr(2), 0xb2n);
    sintRouteCreate(h.p, 0, 2);
    sintRouteSet(h.p, 0, 2);
    expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xb2, autoEoi: false }]);
    sintRouteDestroy(h.p, 0, 2);
    createConnection(h.p, { connectionId: 0x11, kind: 'message', vpIndex: 1, sint: 8 });
    createConnection(h.p, { connectionId: 0x21, kind: 'event', vpIndex: 1, sint: 9, flagNumber: 0x21 });
    expect(h.p.connections.get(0x11)).toEqual({ connectionId: 0x11, kind: 'message', vpIndex: 1, sint: 8, vtl: 0, flagNumber: 0, flagCount: 1 });
    expect(h.p.connections.get(0x21)).toEqual({ connectionId: 0x21, kind: 'event', vpIndex: 1, sint: 9, vtl: 0, flagNumber: 0x21, flagCount: 1 });
    deleteConnection(h.p, 0x11);
    deleteConnection(h.p, 0x21);
    expect(h.p.connections.size).toBe(0);
  });
});
