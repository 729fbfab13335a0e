// Host-created SynIC connections (tlfs-overlays-synic.md §5.8) and the guest's HvCallPostMessage /
// HvCallSignalEvent through them (tlfs-hypercalls.md §2.8, §2.9), driven through executeVmcall as
// kvm-unit-tests hyperv_connections does (post to self/another VP, busy slot, pending message on
// EOM, event flags set once), plus every bad input.
import {
  HvError,
  HvRegisterName as R,
  HvStatus,
  createConnection,
  deleteConnection,
  encodeHypercallInput,
  encodePostMessageInput,
  encodeSignalEventInput,
  executeVmcall,
  listConnections,
} from '@vsm/core';
import { HvCallCode } from '../src/tlfs/hypercall';
import { SIEF_GPA, hvHarness } from './hyperv-harness';

const IN = 0x3000n;
const MSG_SINT = 8;
const EVT_SINT = 9;

function setup() {
  const h = hvHarness();
  const vp1 = h.p.vp(1);
  for (const v of [h.vp, vp1]) {
    h.wrmsr(h.sintMsr(MSG_SINT), 0xb0n | (1n << 17n), v);
    h.wrmsr(h.sintMsr(EVT_SINT), 0xb1n | (1n << 17n), v);
  }
  createConnection(h.p, { connectionId: 0x10, kind: 'message', vpIndex: 0, sint: MSG_SINT });
  createConnection(h.p, { connectionId: 0x20, kind: 'event', vpIndex: 0, sint: EVT_SINT, flagNumber: 0x20 });
  const call = (control: bigint, rdx: bigint, v = vp1) => {
    h.p.setReg(v, R.HvX64RegisterRcx, control);
    h.p.setReg(v, R.HvX64RegisterRdx, rdx);
    h.p.setReg(v, R.HvX64RegisterR8, 0n);
    return Number(executeVmcall(h.p, v).resultValue & 0xffffn);
  };
  const post = (input: Parameters<typeof encodePostMessageInput>[0], v = vp1) => {
    h.p.writeView(0, v.index, IN, encodePostMessageInput(input));
    return call(encodeHypercallInput({ callCode: HvCallCode.HvCallPostMessage }), IN, v);
  };
  const signal = (connectionId: number, flagNumber = 0, rsvdZ = 0) =>
    call(
      encodeHypercallInput({ callCode: HvCallCode.HvCallSignalEvent, fast: true }),
      encodeSignalEventInput({ connectionId, flagNumber, rsvdZ }).readBigUInt64LE(0),
    );
  const m = (payload0: bigint, over: Partial<Parameters<typeof encodePostMessageInput>[0]> = {}) => {
    const payload = Buffer.alloc(8);
    payload.writeBigUInt64LE(payload0);
    return { connectionId: 0x10, rsvdZ: 0, messageType: 0x12345678, payloadSize: 8, payload, ...over };
  };
  return { ...h, vp1, post, signal, m, call };
}

describe('connections', () => {
  test('create, list (by id), delete; bad input is an HvError with the TLFS status and changes nothing', () => {
    const h = setup();
    const status = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e instanceof HvError ? e.status : e;
      }
      return 'ok';
    };
    expect(listConnections(h.p)).toEqual([
      { connectionId: 0x10, kind: 'message', vpIndex: 0, sint: MSG_SINT, vtl: 0, flagNumber: 0, flagCount: 1 },
      { connectionId: 0x20, kind: 'event', vpIndex: 0, sint: EVT_SINT, vtl: 0, flagNumber: 0x20, flagCount: 1 },
    ]);
    const base = { connectionId: 0x30, kind: 'message' as const, vpIndex: 0, sint: 0 };
    expect(status(() => createConnection(h.p, { ...base, connectionId: 0x10 }))).toBe(HvStatus.HV_STATUS_OBJECT_IN_USE);
    expect(status(() => createConnection(h.p, { ...base, connectionId: 0x100_0000 }))).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
    expect(status(() => createConnection(h.p, { ...base, connectionId: -1 }))).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
    expect(status(() => createConnection(h.p, { ...base, vpIndex: 2 }))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(status(() => createConnection(h.p, { ...base, sint: 16 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(() => createConnection(h.p, { ...base, vtl: 2 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER); // maximumVtl 1
    expect(status(() => createConnection(h.p, { ...base, kind: 'port' as 'message' }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(() => createConnection(h.p, { ...base, flagNumber: 1 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(() => createConnection(h.p, { ...base, kind: 'event', flagNumber: 2047, flagCount: 2 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(() => createConnection(h.p, { ...base, kind: 'event', flagCount: 0 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(status(() => deleteConnection(h.p, 0x30))).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
    expect(listConnections(h.p).map((c) => c.connectionId)).toEqual([0x10, 0x20]);
    deleteConnection(h.p, 0x10);
    expect(listConnections(h.p).map((c) => c.connectionId)).toEqual([0x20]);
    // A listed connection is a copy.
    listConnections(h.p)[0]!.sint = 3;
    expect(h.p.connections.get(0x20)!.sint).toBe(EVT_SINT);
  });
});

describe('HvCallPostMessage', () => {
  test('kvm-unit-tests flow: deliver + interrupt, busy slot -> SUCCESS with MessagePending, pending message arrives at EOM', () => {
    const h = setup();
    expect(h.post(h.m(0x10001n))).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(h.slotHeader(MSG_SINT)).toEqual({ messageType: 0x12345678, payloadSize: 8, messageFlags: 0, originationId: 0x10n });
    expect(h.slot(MSG_SINT).readBigUInt64LE(16)).toBe(0x10001n);
    expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xb0, autoEoi: true }]);
    // Slot still busy: accepted, queued, MessagePending set in the occupied slot, no interrupt.
    expect(h.post(h.m(0x10002n))).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(h.slotHeader(MSG_SINT).messageFlags).toBe(1);
    expect(h.slot(MSG_SINT).readBigUInt64LE(16)).toBe(0x10001n);
    expect(h.raised).toHaveLength(1);
    h.clearSlot(MSG_SINT);
    h.eom();
    expect(h.slotHeader(MSG_SINT)).toEqual({ messageType: 0x12345678, payloadSize: 8, messageFlags: 0, originationId: 0x10n });
    expect(h.slot(MSG_SINT).readBigUInt64LE(16)).toBe(0x10002n);
    expect(h.raised).toHaveLength(2);
  });

  test('only PayloadSize bytes are delivered', () => {
    const h = setup();
    const payload = Buffer.alloc(240, 0xee);
    expect(h.post(h.m(0n, { payloadSize: 3, payload }))).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(h.slot(MSG_SINT).subarray(16, 24).toString('hex')).toBe('eeeeee0000000000');
  });

  test('bad input and unusable targets get the documented statuses; nothing is delivered', () => {
    const h = setup();
    expect(h.post(h.m(1n, { connectionId: 0x77 }))).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
    expect(h.post(h.m(1n, { payloadSize: 241 }))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.post(h.m(1n, { messageType: 0 }))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.post(h.m(1n, { messageType: 0x80000010 }))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.post(h.m(1n, { rsvdZ: 1 }))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.post(h.m(1n, { connectionId: 0x0100_0010 }))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.post(h.m(1n, { connectionId: 0x20 }))).toBe(HvStatus.HV_STATUS_INVALID_PORT_ID);
    // A fast call cannot carry the 256-byte input.
    expect(h.call(encodeHypercallInput({ callCode: HvCallCode.HvCallPostMessage, fast: true }), 0x10n)).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    h.wrmsr(0x40000083, 0n); // SIMP off on VP 0
    expect(h.post(h.m(1n))).toBe(HvStatus.HV_STATUS_INVALID_SYNIC_STATE);
    expect(h.raised).toEqual([]);
    // The target VTL has no SynIC (not enabled on that VP).
    createConnection(h.p, { connectionId: 0x11, kind: 'message', vpIndex: 0, sint: 1, vtl: 1 });
    expect(h.post(h.m(1n, { connectionId: 0x11 }))).toBe(HvStatus.HV_STATUS_INVALID_SYNIC_STATE);
  });

  test('a full queue answers HV_STATUS_INSUFFICIENT_BUFFERS', () => {
    const h = setup();
    expect(h.post(h.m(0n))).toBe(HvStatus.HV_STATUS_SUCCESS); // in the slot
    for (let i = 1; i <= 16; i++) expect(h.post(h.m(BigInt(i)))).toBe(HvStatus.HV_STATUS_SUCCESS); // queued
    expect(h.post(h.m(99n))).toBe(HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS);
  });
});

describe('HvCallSignalEvent', () => {
  const flagByte = (h: ReturnType<typeof setup>, flag: number) =>
    h.p.readView(0, 0, SIEF_GPA + BigInt(EVT_SINT * 256 + (flag >> 3)), 1)[0]! & (1 << (flag & 7));

  test("fast call: sets the connection's flag and raises once; an already set flag is SUCCESS without an interrupt", () => {
    const h = setup();
    expect(h.signal(0x20)).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(flagByte(h, 0x20)).not.toBe(0);
    expect(h.raised).toEqual([{ vp: 0, vtl: 0, vector: 0xb1, autoEoi: true }]);
    expect(h.signal(0x20)).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(h.raised).toHaveLength(1);
  });

  test("memory-based input works too; FlagNumber selects within the port's flags", () => {
    const h = setup();
    createConnection(h.p, { connectionId: 0x30, kind: 'event', vpIndex: 0, sint: EVT_SINT, flagNumber: 100, flagCount: 4 });
    h.p.writeView(0, 1, IN, encodeSignalEventInput({ connectionId: 0x30, flagNumber: 3, rsvdZ: 0 }));
    expect(h.call(encodeHypercallInput({ callCode: HvCallCode.HvCallSignalEvent }), IN)).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(flagByte(h, 103)).not.toBe(0);
    expect(h.signal(0x30, 4)).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
  });

  test('bad input and unusable targets get the documented statuses', () => {
    const h = setup();
    expect(h.signal(0x1234)).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID); // kvm-unit-tests' probe
    expect(h.signal(0x10)).toBe(HvStatus.HV_STATUS_INVALID_PORT_ID);
    expect(h.signal(0x20, 1)).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(h.signal(0x20, 0, 1)).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    expect(h.signal(0x0100_0020)).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
    h.wrmsr(h.sintMsr(EVT_SINT), 0xb1n | (1n << 16n)); // masked
    expect(h.signal(0x20)).toBe(HvStatus.HV_STATUS_INVALID_SYNIC_STATE);
    h.wrmsr(h.sintMsr(EVT_SINT), 0xb1n);
    h.wrmsr(0x40000082, 0n); // SIEFP off
    expect(h.signal(0x20)).toBe(HvStatus.HV_STATUS_INVALID_SYNIC_STATE);
    expect(h.raised).toEqual([]);
    deleteConnection(h.p, 0x20);
    expect(h.signal(0x20)).toBe(HvStatus.HV_STATUS_INVALID_CONNECTION_ID);
  });
});
