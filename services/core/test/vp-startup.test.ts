// VP startup (issue #16): HvCallStartVirtualProcessor (0x0099) and HvCallGetVpIndexFromApicId (0x009A)
// through the VMCALL path, DenyLowerVtlStartup / InterceptVpStartup of a higher VTL, and where a
// VtlReturn goes with three VTLs (rules/transitions.ts returnTarget). Golden bytes of the new layouts.
import { HV_PARTITION_ID_SELF, HvRegisterName as R, HvStatus, Partition, executeVmcall, longModeContext, reg64 } from '@vsm/core';
import { HvCallCode, decodeHypercallResult, encodeHypercallInput } from '../src/tlfs/hypercall';
import { HV_VP_INDEX_SELF, encodeVsmPartitionConfig } from '../src/tlfs/vsm';
import { HvMessageType, decodeHvMessageHeader } from '../src/tlfs/message';
import {
  HvX64HypercallInterceptMessageLayout,
  decodeHypercallInterceptMessage,
  encodeGetVpIndexFromApicIdHeader,
  encodeStartVirtualProcessorInput,
} from '../src/tlfs/startup';
import { guestAccess } from '../src/access';
import { vtlCall, vtlReturn } from '../src/vtl-switch';

const IN = 0x2000n;
const OUT = 0x3000n;
const RIP = 0x40_1000n;

function partition(vpCount = 3, maximumVtl = 2) {
  const p = new Partition({ id: 'p-start', architecture: 'x64', vpCount, memoryBytes: 1n << 22n, maximumVtl, labels: {} });
  for (const vp of p.vps) p.setReg(vp, R.HvX64RegisterRip, RIP);
  return p;
}

function call(p: Partition, vpIndex: number, control: bigint, input: Buffer) {
  const vp = p.vp(vpIndex);
  p.memory.write(IN, input);
  p.setReg(vp, R.HvX64RegisterRcx, control);
  p.setReg(vp, R.HvX64RegisterRdx, IN);
  p.setReg(vp, R.HvX64RegisterR8, OUT);
  const o = executeVmcall(p, vp);
  return { o, ...decodeHypercallResult(o.resultValue) };
}

const ctxAt = (rip: bigint) => ({ ...longModeContext(), rip, rsp: 0x9000n });
const startInput = (vpIndex: number, targetVtl: number, rip = 0x5000n, extra: { partitionId?: bigint; rsvdZ?: number } = {}) =>
  encodeStartVirtualProcessorInput({
    partitionId: extra.partitionId ?? HV_PARTITION_ID_SELF,
    vpIndex,
    targetVtl,
    rsvdZ: extra.rsvdZ ?? 0,
    vpContext: ctxAt(rip),
  });
const START = encodeHypercallInput({ callCode: HvCallCode.HvCallStartVirtualProcessor });

/** VTL1 (and VTL2 when asked) enabled for the partition and on every VP, by the host. */
function withVtls(p: Partition, top: 1 | 2) {
  for (let v = 1; v <= top; v++) {
    p.enablePartitionVtl('host', v, 0);
    for (const vp of p.vps) p.enableVpVtl('host', vp.index, v, ctxAt(0x10_0000n * BigInt(v)));
  }
}

describe('golden bytes', () => {
  test('HvCallStartVirtualProcessor input: 240 bytes, context at +16 as HV_INITIAL_VP_CONTEXT', () => {
    const b = startInput(3, 1, 0x1122_3344_5566_7788n);
    expect(b.length).toBe(240);
    expect(b.subarray(0, 16).toString('hex')).toBe('ffffffffffffffff0300000001000000');
    expect(b.readBigUInt64LE(16)).toBe(0x1122_3344_5566_7788n); // Rip
    expect(b.readBigUInt64LE(24)).toBe(0x9000n); // Rsp
    expect(b.readBigUInt64LE(16 + 216)).toBe(longModeContext().msrCrPat); // MsrCrPat, last field
  });
  test('HvCallGetVpIndexFromApicId header: 16 bytes', () => {
    const b = encodeGetVpIndexFromApicIdHeader({ partitionId: HV_PARTITION_ID_SELF, targetVtl: 0x11, rsvdZ: 0n });
    expect(b.toString('hex')).toBe('ffffffffffffffff1100000000000000');
  });
  test('HV_X64_HYPERCALL_INTERCEPT_MESSAGE: 208 bytes, XMM at +96, flags at +192', () => {
    expect(HvX64HypercallInterceptMessageLayout.size).toBe(208);
    expect(HvX64HypercallInterceptMessageLayout.offsetOf('rax')).toBe(40);
    expect(HvX64HypercallInterceptMessageLayout.offsetOf('rdi')).toBe(88);
    expect(HvX64HypercallInterceptMessageLayout.offsetOf('xmmRegisters')).toBe(96);
    expect(HvX64HypercallInterceptMessageLayout.offsetOf('flags')).toBe(192);
  });
});

describe('HvCallStartVirtualProcessor', () => {
  test('starts another VP in VTL0 at the given context (INIT-equivalent); the caller completes', () => {
    const p = partition();
    const r = call(p, 0, START, startInput(1, 0, 0x7000n));
    expect(r.status).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(p.reg(p.vp(0), R.HvX64RegisterRip)).toBe(RIP + 3n);
    const vp1 = p.vp(1);
    expect(vp1.activeVtl).toBe(0);
    expect(p.reg(vp1, R.HvX64RegisterRip)).toBe(0x7000n);
    expect(p.reg(vp1, R.HvX64RegisterRsp)).toBe(0x9000n);
  });

  test('with VTL1 enabled on the target, starting VTL0 runs VTL1 first; VTL1 starts a VP in VTL1', () => {
    const p = partition();
    withVtls(p, 1);
    const started: number[] = [];
    (p.spec as { platform?: object }).platform = { onVpStart: (i: number) => started.push(i) };
    expect(call(p, 0, START, startInput(1, 0, 0x7000n)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
    const vp1 = p.vp(1);
    expect(vp1.activeVtl).toBe(1);
    expect(p.getRegister(vp1, 0, R.HvX64RegisterRip).low).toBe(0x7000n);
    // VTL1's VtlReturn goes to VTL0, which runs from the started context.
    vtlReturn(p, vp1, 1n);
    expect(vp1.activeVtl).toBe(0);
    expect(p.reg(vp1, R.HvX64RegisterRip)).toBe(0x7000n);
    // VTL1 (VP0 in VTL1 after a VtlCall) starts VP2 in VTL1.
    vtlCall(p, p.vp(0), 0n);
    expect(call(p, 0, START, startInput(2, 1, 0x8000n)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
    expect(p.vp(2).activeVtl).toBe(1);
    expect(p.reg(p.vp(2), R.HvX64RegisterRip)).toBe(0x8000n);
    expect(started).toEqual([1, 2]);
  });

  test('bad input: statuses, caller first, nothing changed', () => {
    const p = partition();
    const before = p.getRegister(p.vp(1), 0, R.HvX64RegisterRip).low;
    const st = (input: Buffer, control = START, vp = 0) => call(p, vp, control, input).status;
    expect(st(startInput(1, 0, 0x7000n, { partitionId: 5n }))).toBe(HvStatus.HV_STATUS_INVALID_PARTITION_ID);
    expect(st(startInput(1, 0, 0x7000n, { rsvdZ: 1 }))).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(st(startInput(1, 1))).toBe(HvStatus.HV_STATUS_ACCESS_DENIED); // VTL above the caller, before state
    expect(st(startInput(0, 0))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX); // itself
    expect(st(startInput(HV_VP_INDEX_SELF, 0))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(st(startInput(7, 0))).toBe(HvStatus.HV_STATUS_INVALID_VP_INDEX);
    expect(st(startInput(1, 0), START | (1n << 32n))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep count on a simple call
    expect(st(startInput(1, 0), START | (1n << 16n))).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // does not fit a fast call
    const lmaNoLme = encodeStartVirtualProcessorInput({
      partitionId: HV_PARTITION_ID_SELF,
      vpIndex: 1,
      targetVtl: 0,
      rsvdZ: 0,
      vpContext: { ...ctxAt(0x7000n), efer: 0x400n },
    });
    expect(st(lmaNoLme)).toBe(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE);
    expect(p.getRegister(p.vp(1), 0, R.HvX64RegisterRip).low).toBe(before);
    // VTL1 not enabled on the target VP (VTL1 caller): INVALID_VP_STATE; real mode for VTL1: INVALID_REGISTER_VALUE.
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, ctxAt(0x10_0000n));
    p.enableVpVtl('host', 2, 1, ctxAt(0x10_0000n));
    vtlCall(p, p.vp(0), 0n);
    expect(st(startInput(1, 1))).toBe(HvStatus.HV_STATUS_INVALID_VP_STATE);
    const real = encodeStartVirtualProcessorInput({
      partitionId: HV_PARTITION_ID_SELF,
      vpIndex: 2,
      targetVtl: 1,
      rsvdZ: 0,
      vpContext: { ...ctxAt(0n), cr0: 0n },
    });
    expect(st(real)).toBe(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE);
  });

  test('DenyLowerVtlStartup: VTL0 is refused (ACCESS_DENIED) before the VP index is looked at; VTL1 may start', () => {
    const p = partition();
    withVtls(p, 1);
    p.setRegisters(
      p.vp(0),
      1,
      [
        {
          name: R.HvRegisterVsmPartitionConfig,
          value: reg64(
            encodeVsmPartitionConfig({
              enableVtlProtection: false,
              defaultVtlProtectionMask: 0xf,
              zeroMemoryOnReset: true,
              denyLowerVtlStartup: true,
              interceptVpStartup: false,
            }),
          ),
        },
      ],
      'host',
    );
    expect(call(p, 0, START, startInput(1, 0)).status).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
    expect(call(p, 0, START, startInput(9, 0)).status).toBe(HvStatus.HV_STATUS_ACCESS_DENIED);
    expect(p.vp(1).activeVtl).toBe(0);
    vtlCall(p, p.vp(0), 0n);
    expect(call(p, 0, START, startInput(1, 0, 0x7000n)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
  });

  test('InterceptVpStartup: VTL0 call does not complete; VTL1 gets HvMessageTypeHypercallIntercept in SINT0 and is entered', () => {
    const p = partition();
    withVtls(p, 1);
    const vp0 = p.vp(0);
    p.setRegisters(
      vp0,
      1,
      [
        {
          name: R.HvRegisterVsmPartitionConfig,
          value: reg64(
            encodeVsmPartitionConfig({
              enableVtlProtection: false,
              defaultVtlProtectionMask: 0xf,
              zeroMemoryOnReset: true,
              denyLowerVtlStartup: false,
              interceptVpStartup: true,
            }),
          ),
        },
      ],
      'host',
    );
    // VTL1's SynIC: SIMP at 0x30_0000, SCONTROL enabled, SINT0 unmasked, vector 0x40.
    p.setRegisters(
      vp0,
      1,
      [
        { name: R.HvRegisterScontrol, value: reg64(1n) },
        { name: R.HvRegisterSipp, value: reg64(0x30_0000n | 1n) },
        { name: R.HvRegisterSint0, value: reg64(0x40n) },
      ],
      'host',
    );
    p.setReg(vp0, R.HvX64RegisterRax, 0xaaaan);
    const r = call(p, 0, START, startInput(1, 0, 0x7000n));
    expect(r.o.parameterIntercept?.status).toBe('intercepted');
    expect(r.o.resultValue).toBe(0n);
    expect(vp0.activeVtl).toBe(1);
    expect(p.vtls.get(0).enabled && vp0.vtls.get(1).entryReason).toBe(2); // HvVtlEntryInterrupt
    // VTL0 stays on the VMCALL; RAX untouched; VP1 not started.
    expect(p.getRegister(vp0, 0, R.HvX64RegisterRip).low).toBe(RIP);
    expect(p.getRegister(vp0, 0, R.HvX64RegisterRax).low).toBe(0xaaaan);
    expect(p.getRegister(p.vp(1), 0, R.HvX64RegisterRip).low).toBe(RIP);
    const slot = p.readView(1, 0, 0x30_0000n, 256);
    const h = decodeHvMessageHeader(slot);
    expect(h.messageType).toBe(HvMessageType.HvMessageTypeHypercallIntercept);
    expect(h.payloadSize).toBe(208);
    const m = decodeHypercallInterceptMessage(slot, 16);
    expect(m.header.executionState.vtl).toBe(0);
    expect(m.header.rip).toBe(RIP);
    expect(m.rcx).toBe(START);
    expect(m.rdx).toBe(IN);
    // VTL1 handles it: starts VP1 itself, completes VTL0's VMCALL (RIP past it, as an emulating
    // handler does) and returns.
    expect(call(p, 0, START, startInput(1, 0, 0x7000n)).status).toBe(HvStatus.HV_STATUS_SUCCESS);
    p.setRegisters(vp0, 0, [{ name: R.HvX64RegisterRip, value: reg64(RIP + 3n) }], 1);
    vtlReturn(p, vp0, 1n);
    expect(vp0.activeVtl).toBe(0);
    expect(p.getRegister(p.vp(1), 0, R.HvX64RegisterRip).low).toBe(0x7000n);
  });
});

describe('HvCallGetVpIndexFromApicId', () => {
  const GET = (count: number) => encodeHypercallInput({ callCode: HvCallCode.HvCallGetVpIndexFromApicId, repCount: count });
  const input = (ids: number[], hdr: { targetVtl?: number; rsvdZ?: bigint; partitionId?: bigint } = {}) => {
    const h = encodeGetVpIndexFromApicIdHeader({ partitionId: hdr.partitionId ?? HV_PARTITION_ID_SELF, targetVtl: hdr.targetVtl ?? 0, rsvdZ: hdr.rsvdZ ?? 0n });
    const e = Buffer.alloc(Math.ceil((ids.length * 4) / 8) * 8);
    for (const [i, id] of ids.entries()) e.writeUInt32LE(id, 4 * i);
    return Buffer.concat([h, e]);
  };
  test('maps APIC ids to VP indices (APIC id = VP index)', () => {
    const p = partition(3);
    const r = call(p, 0, GET(3), input([2, 0, 1]));
    expect(r).toMatchObject({ status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: 3 });
    const out = p.memory.read(OUT, 12);
    expect([out.readUInt32LE(0), out.readUInt32LE(4), out.readUInt32LE(8)]).toEqual([2, 0, 1]);
  });
  test('bad input', () => {
    const p = partition(3);
    expect(call(p, 0, GET(3), input([0, 5, 1]))).toMatchObject({ status: HvStatus.HV_STATUS_INVALID_PARAMETER, repsCompleted: 1 });
    expect(call(p, 0, GET(1), input([0], { partitionId: 1n })).status).toBe(HvStatus.HV_STATUS_INVALID_PARTITION_ID);
    expect(call(p, 0, GET(1), input([0], { rsvdZ: 1n })).status).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
    expect(call(p, 0, GET(1), input([0], { targetVtl: 0x20 })).status).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER); // HV_INPUT_VTL RsvdZ
    expect(call(p, 0, GET(1), input([0], { targetVtl: 0x11 })).status).toBe(HvStatus.HV_STATUS_ACCESS_DENIED); // VTL1 from VTL0
    expect(call(p, 0, GET(0), input([0])).status).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT); // rep count 0 on a rep call
  });
});

describe('VtlReturn with three VTLs goes back where the VTL was entered from', () => {
  test('VTL0 intercepts into VTL2 (VTL1 protects nothing): VTL2 returns to VTL0; VTL1 is not entered', () => {
    const p = partition(1);
    withVtls(p, 2);
    const vp = p.vp(0);
    // VTL2 protects page 0x50 against writes (EnableVtlProtection with RWX default, then the mask).
    p.setRegisters(
      vp,
      2,
      [
        {
          name: R.HvRegisterVsmPartitionConfig,
          value: reg64(
            encodeVsmPartitionConfig({
              enableVtlProtection: true,
              defaultVtlProtectionMask: 0xf,
              zeroMemoryOnReset: true,
              denyLowerVtlStartup: false,
              interceptVpStartup: false,
            }),
          ),
        },
      ],
      'host',
    );
    p.modifyVtlProtectionMask('host', 2, 0x1 | 0x4, [{ start: 0x50n, count: 1n }]);
    const seen: string[] = [];
    p.onTransition((t) => seen.push(`${t.fromVtl}->${t.toVtl}`));
    const o = guestAccess(p, vp, 'write', 0x50_000n, 8, Buffer.alloc(8, 1));
    expect(o.status).toBe('intercepted');
    expect(vp.activeVtl).toBe(2);
    // VTL2 returns with VTL0's RIP unchanged: back to VTL0, whose write is retried and intercepts again.
    const r1 = vtlReturn(p, vp, 1n);
    expect(r1.vtlSwitch).toMatchObject({ fromVtl: 2, toVtl: 0 });
    expect(r1.resumedAccess?.outcome.status).toBe('intercepted');
    expect(vp.activeVtl).toBe(2);
    // VTL2 skips the write (moves VTL0's RIP) and returns: VTL0 runs on.
    p.setRegisters(vp, 0, [{ name: R.HvX64RegisterRip, value: reg64(RIP + 4n) }], 2);
    const r2 = vtlReturn(p, vp, 1n);
    expect(r2.resumedAccess?.outcome.status).toBe('skipped');
    expect(vp.activeVtl).toBe(0);
    expect(seen).toEqual(['0->2', '2->0', '0->2', '2->0']);
    expect(p.vtls.get(1).enabled && vp.vtls.get(1).entryReason).toBe(0); // VTL1 never entered
  });
  test('nested calls unwind one level at a time: 0 -call-> 1 -call-> 2 -return-> 1 -return-> 0', () => {
    const p = partition(1);
    withVtls(p, 2);
    const vp = p.vp(0);
    vtlCall(p, vp, 0n);
    vtlCall(p, vp, 0n);
    expect(vp.activeVtl).toBe(2);
    vtlReturn(p, vp, 1n);
    expect(vp.activeVtl).toBe(1);
    vtlReturn(p, vp, 1n);
    expect(vp.activeVtl).toBe(0);
  });
});
