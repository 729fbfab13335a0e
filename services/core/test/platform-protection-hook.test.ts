// The core's hooks for execution engines that enforce protections themselves (the KVM agent):
// PlatformHooks.onProtectionChange (called when a protecting VTL's EnableVtlProtection takes effect
// and on every ModifyVtlProtectionMask that changed masks, never on a refused one), and
// interceptAccess (an access the engine's hardware refused: same decisions as guestAccess, with the
// faulting instruction's length and bytes in HV_X64_MEMORY_INTERCEPT_MESSAGE).
import {
  HvError,
  HvRegisterName as R,
  Partition,
  type Vtl,
  answerIntercept,
  decodeMemoryInterceptMessage,
  interceptAccess,
  longModeContext,
  reg64,
} from '@vsm/core';

function protectedPartition(calls: Vtl[]): Partition {
  const p = new Partition({
    id: 'p-hook',
    architecture: 'x64',
    vpCount: 1,
    memoryBytes: 1n << 20n,
    maximumVtl: 1,
    labels: {},
    platform: { onProtectionChange: (vtl) => calls.push(vtl) },
  });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, { ...longModeContext(), rip: 0x5000n });
  return p;
}
const enableProtection = (p: Partition) => p.setRegisters(p.vp(0), 1, [{ name: R.HvRegisterVsmPartitionConfig, value: reg64(1n | (0xfn << 1n)) }], 'host');

test('onProtectionChange: EnableVtlProtection and each ModifyVtlProtectionMask that applies, with the protecting VTL', () => {
  const calls: Vtl[] = [];
  const p = protectedPartition(calls);
  // Refused before EnableVtlProtection: no call.
  expect(() => p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 0x40n, count: 1n }])).toThrow(HvError);
  expect(calls).toEqual([]);
  enableProtection(p);
  expect(calls).toEqual([1]);
  // Writing the same configuration again changes nothing: no call.
  enableProtection(p);
  expect(calls).toEqual([1]);
  expect(p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 0x40n, count: 2n }])).toBe(2);
  expect(calls).toEqual([1, 1]);
  // Refused (illegal flags, non-RAM pages): no call, nothing changed.
  expect(() => p.modifyVtlProtectionMask('host', 1, 0x2, [{ start: 0x40n, count: 1n }])).toThrow(HvError);
  expect(() => p.modifyVtlProtectionMask('host', 1, 0x1, [{ start: 0x1000n, count: 1n }])).toThrow(HvError);
  expect(calls).toEqual([1, 1]);
  expect(p.protectionOf(1, 0x40)).toBe(0x1);
});

test("interceptAccess: the engine's instruction length and bytes in the message; otherwise what guestAccess decides", () => {
  const p = protectedPartition([]);
  enableProtection(p);
  p.modifyVtlProtectionMask('host', 1, 0x1 | 0x4, [{ start: 0x40n, count: 1n }]); // no write
  p.interceptRoute = 'monitor';
  const vp = p.vp(0);
  p.setReg(vp, R.HvX64RegisterRip, 0x1234n);
  p.setReg(vp, R.HvX64RegisterRax, 0x1122_3344_5566_7788n);
  const insn = Buffer.from([0x48, 0x89, 0x07]); // mov [rdi], rax
  const o = interceptAccess(p, vp, 'write', 0x40010n, 8, Buffer.alloc(8, 0xaa), { length: 3, bytes: insn });
  expect(o.status).toBe('intercepted');
  if (o.status !== 'intercepted') return;
  expect(o.awaitingMonitor).toBe(true);
  const m = decodeMemoryInterceptMessage(o.intercept.message.subarray(16));
  expect(m.header.instructionLength).toBe(3);
  expect(m.header.rip).toBe(0x1234n);
  expect(m.header.interceptAccessType).toBe(1);
  expect(m.instructionByteCount).toBe(3);
  expect(m.instructionBytes.subarray(0, 4).toString('hex')).toBe('48890700');
  expect(m.guestPhysicalAddress).toBe(0x40010n);
  expect(m.gprs[0]).toBe(0x1122_3344_5566_7788n);
  expect(vp.suspendedOn).toBe(o.intercept.id);
  // Nothing refuses a read of that page: performed on guest memory, like guestAccess.
  expect(answerIntercept(p, o.intercept.id, 'skip').result).toBe('applied');
  p.memory.write(0x40000n, Buffer.from('readable'));
  expect(interceptAccess(p, vp, 'read', 0x40000n, 8)).toEqual({ status: 'completed', data: Buffer.from('readable') });
  // Without an instruction, the message says "unknown" (0), as for guest actions.
  const w = interceptAccess(p, vp, 'write', 0x40000n, 1, Buffer.from([1]));
  expect(w.status === 'intercepted' && w.intercept.message[20]).toBe(0);
  expect(w.status === 'intercepted' && w.intercept.message[60]).toBe(0);
});
