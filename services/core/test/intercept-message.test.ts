// Golden bytes: HV_MESSAGE carrying HV_X64_MEMORY_INTERCEPT_MESSAGE (tlfs-intercepts.md §6.1-6.7,
// tlfs-overlays-synic.md §5.3). Offsets below are slot offsets (payload + 16).
import {
  HvRegisterName as R,
  Partition,
  longModeContext,
  ProtectionMap,
  type VirtualProcessor,
  decodeMemoryInterceptMessage,
  encodeHvMessage,
  hvMessageTypeOf,
  interceptMessageIpOf,
} from '@vsm/core';
import { buildInterceptMessage } from '../src/access';
import type { AccessKind } from '../src/protections';
import { normalizeMapFlags } from '../src/protections';
import { HvMessageHeaderLayout, HvMessageType, encodeMemoryInterceptMessage, type HvX64MemoryInterceptMessage } from '../src/tlfs/message';

const seg = (n: number) => ({ base: 0x1111_0000_0000_0000n + BigInt(n), limit: 0x2222_0000 + n, selector: 0x3300 + n, attributes: 0x4400 + n });
const msg: HvX64MemoryInterceptMessage = {
  header: {
    vpIndex: 0x0a0b0c0d,
    instructionLength: 3,
    interceptAccessType: 1,
    executionState: { cpl: 3, cr0Pe: true, cr0Am: false, eferLma: true, debugActive: false, interruptionPending: true, vtl: 1 },
    csSegment: seg(1),
    rip: 0x8877665544332211n,
    rflags: 0x246n,
  },
  cacheType: 6,
  instructionByteCount: 2,
  memoryAccessInfo: { gvaValid: true },
  tprPriority: 0,
  guestVirtualAddress: 0xffff_8000_0000_1000n,
  guestPhysicalAddress: 0x4_0008n,
  instructionBytes: Buffer.from([0x89, 0x07]),
  dsSegment: seg(2),
  ssSegment: seg(3),
  gprs: Array.from({ length: 16 }, (_, i) => 0x100n + BigInt(i)),
};

test('HV_X64_MEMORY_INTERCEPT_MESSAGE: 240 bytes at the reference offsets', () => {
  const p = encodeMemoryInterceptMessage(msg);
  expect(p.length).toBe(240);
  const slot = encodeHvMessage({ messageType: HvMessageType.HvMessageTypeGpaIntercept, payloadSize: 240, messageFlags: 0, originationId: 0n }, p);
  expect(slot.length).toBe(256);
  const hex = (o: number, n: number) => slot.subarray(o, o + n).toString('hex');
  expect(hex(0, 16)).toBe('01000080' + 'f0' + '00' + '0000' + '0000000000000000'); // header: type, PayloadSize 240
  expect(hex(16, 4)).toBe('0d0c0b0a'); // VpIndex
  expect(slot[20]).toBe(3); // InstructionLength
  expect(slot[21]).toBe(1); // InterceptAccessType = write
  // ExecutionState: Cpl 3 | Cr0Pe (bit 2) | EferLma (bit 4) | InterruptionPending (bit 6) | Vtl 1 << 7
  expect(slot.readUInt16LE(22)).toBe(3 | 4 | 0x10 | 0x40 | (1 << 7));
  expect(hex(24, 16)).toBe('0100000000001111' + '01002222' + '0133' + '0144'); // CsSegment
  expect(hex(40, 8)).toBe('1122334455667788'); // Rip
  expect(slot.readBigUInt64LE(48)).toBe(0x246n); // Rflags
  expect(slot.readUInt32LE(56)).toBe(6); // CacheType
  expect(slot[60]).toBe(2); // InstructionByteCount
  expect(slot[61]).toBe(1); // MemoryAccessInfo.GvaValid
  expect(slot.readBigUInt64LE(64)).toBe(0xffff_8000_0000_1000n); // GuestVirtualAddress
  expect(slot.readBigUInt64LE(72)).toBe(0x4_0008n); // GuestPhysicalAddress
  expect(hex(80, 16)).toBe('8907' + '00'.repeat(14)); // InstructionBytes
  expect(slot.readUInt16LE(96 + 12)).toBe(0x3302); // DsSegment.Selector
  expect(slot.readUInt16LE(112 + 12)).toBe(0x3303); // SsSegment.Selector
  for (let i = 0; i < 16; i++) expect(slot.readBigUInt64LE(128 + 8 * i)).toBe(0x100n + BigInt(i)); // Rax..R15
  expect(decodeMemoryInterceptMessage(p)).toEqual({ ...msg, instructionBytes: Buffer.concat([msg.instructionBytes, Buffer.alloc(14)]) });
  // The two fields the Monitor stream's InterceptEvent reads without decoding the message.
  expect(hvMessageTypeOf(slot)).toBe(0x80000001); // HvMessageTypeGpaIntercept
  expect(interceptMessageIpOf(slot, 'x64')).toBe(0x8877665544332211n); // Rip
});

test('encoding twice never carries a field over (seed 004)', () => {
  const a = encodeMemoryInterceptMessage(msg);
  const b = encodeMemoryInterceptMessage({
    ...msg,
    memoryAccessInfo: { gvaValid: false },
    guestVirtualAddress: 0n,
    instructionByteCount: 0,
    instructionBytes: Buffer.alloc(0),
  });
  expect(a[45]).toBe(1);
  expect(b[45]).toBe(0);
  expect(b.subarray(64, 80).equals(Buffer.alloc(16))).toBe(true);
});

test('the header and payload encoders write every byte of theirs: encoded over garbage, the slot equals a fresh encoding (access.ts builds it in an unzeroed pool buffer)', () => {
  const header = { messageType: HvMessageType.HvMessageTypeGpaIntercept, payloadSize: 240, messageFlags: 0, originationId: 0n };
  const short = { ...msg, instructionByteCount: 0, instructionBytes: Buffer.alloc(0), memoryAccessInfo: { gvaValid: false }, guestVirtualAddress: 0n };
  for (const m of [msg, short]) {
    const fresh = encodeHvMessage(header, encodeMemoryInterceptMessage(m));
    const dirty = Buffer.alloc(256, 0xff);
    HvMessageHeaderLayout.encode(header, dirty, 0);
    encodeMemoryInterceptMessage(m, dirty, 16);
    expect(dirty.equals(fresh)).toBe(true);
  }
});

describe('ProtectionMap', () => {
  test('ranges split, overwrite and merge; lookups fall back to the default mask', () => {
    const m = new ProtectionMap(0xf);
    m.set(100, 1_048_576, 0x1);
    expect(m.rangeCount).toBe(1);
    expect([m.get(99), m.get(100), m.get(100 + 1_048_575), m.get(100 + 1_048_576)]).toEqual([0xf, 0x1, 0x1, 0xf]);
    m.set(200, 10, 0x3);
    expect(m.list().map((r) => [r.start, r.end, r.mask])).toEqual([
      [100, 200, 1],
      [200, 210, 3],
      [210, 100 + 1_048_576, 1],
    ]);
    m.set(200, 10, 0x1); // back: the three merge into one
    expect(m.rangeCount).toBe(1);
    m.set(50, 100, 0x7); // overlaps the start
    expect(m.list().map((r) => [r.start, r.end, r.mask])).toEqual([
      [50, 150, 7],
      [150, 100 + 1_048_576, 1],
    ]);
  });
  test('10,000 disjoint ranges, each lookup a binary search', () => {
    const m = new ProtectionMap(0xf);
    for (let i = 0; i < 10_000; i++) m.set(i * 4, 2, i % 2 ? 0x1 : 0x3);
    expect(m.rangeCount).toBe(10_000);
    for (let i = 0; i < 10_000; i += 997) {
      expect(m.get(i * 4 + 1)).toBe(i % 2 ? 0x1 : 0x3);
      expect(m.get(i * 4 + 2)).toBe(0xf);
    }
  });
  test('HV_MAP_GPA_FLAGS validation', () => {
    expect(normalizeMapFlags(0x2, false)).toMatch(/without read/);
    expect(normalizeMapFlags(0x4, false)).toMatch(/without read/);
    expect(normalizeMapFlags(0x10, false)).toMatch(/not protection bits/);
    expect(normalizeMapFlags(0x5, false)).toBe(0xd); // UX follows KX without MBEC
    expect(normalizeMapFlags(0x9, false)).toBe(0x1);
    expect(normalizeMapFlags(0x5, true)).toMatch(/undefined/);
    expect(normalizeMapFlags(0x9, true)).toBe(0x9);
    expect(normalizeMapFlags(0, false)).toBe(0);
  });
});

describe('buildInterceptMessage: the message of an access without an instruction, from the last one while the registers stay the same (access.ts InterceptMessageTemplate)', () => {
  const setup = () => {
    const p = new Partition({ id: 'p-template', architecture: 'x64', vpCount: 2, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {} });
    const vp = p.vps[0]!;
    for (let i = 0; i < 16; i++) p.setReg(vp, R.HvX64RegisterRax + i, 0x1000n + BigInt(i));
    p.setReg(vp, R.HvX64RegisterRip, 0x40_1000n);
    return { p, vp };
  };
  /** The message built in full: after a register write of the same value (which counts as a change). */
  const full = (p: Partition, vp: VirtualProcessor, kind: AccessKind, gpa: bigint, gva?: bigint) => {
    p.setReg(vp, R.HvX64RegisterRax, p.reg(vp, R.HvX64RegisterRax));
    return buildInterceptMessage(p, vp, kind, gpa, undefined, gva);
  };

  test('the same bytes as a full build, access after access; only the addresses differ', () => {
    const { p, vp } = setup();
    const first = buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    for (const [gpa, gva] of [
      [0x4_1008n, undefined],
      [0x5_2ff0n, undefined],
      [0x6_0000n, 0xffff_8000_0000_0000n],
      [0x6_0001n, 0x7000n],
    ] as [bigint, bigint | undefined][]) {
      const quick = buildInterceptMessage(p, vp, 'write', gpa, undefined, gva);
      const quick2 = buildInterceptMessage(p, vp, 'write', gpa, undefined, gva);
      expect(quick).toEqual(full(p, vp, 'write', gpa, gva));
      expect(quick2).toEqual(quick);
      const m = decodeMemoryInterceptMessage(quick.subarray(16));
      expect(m.guestPhysicalAddress).toBe(gpa);
      expect(m.guestVirtualAddress).toBe(gva ?? 0n);
      expect(m.memoryAccessInfo.gvaValid).toBe(gva !== undefined);
      expect(quick.subarray(0, 16)).toEqual(first.subarray(0, 16));
    }
  });

  test('a register change, a shared or a private one, a VTL switch of its files or another access kind is in the next message', () => {
    const { p, vp } = setup();
    buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    p.setReg(vp, R.HvX64RegisterR15, 0xdead_beefn);
    let m = decodeMemoryInterceptMessage(buildInterceptMessage(p, vp, 'write', 0x4_0000n).subarray(16));
    expect(m.gprs[15]).toBe(0xdead_beefn);
    p.setReg(vp, R.HvX64RegisterRip, 0x40_2000n);
    m = decodeMemoryInterceptMessage(buildInterceptMessage(p, vp, 'write', 0x4_0000n).subarray(16));
    expect(m.header.rip).toBe(0x40_2000n);
    m = decodeMemoryInterceptMessage(buildInterceptMessage(p, vp, 'read', 0x4_0000n).subarray(16));
    expect(m.header.interceptAccessType).toBe(0);
    m = decodeMemoryInterceptMessage(buildInterceptMessage(p, vp, 'execute', 0x4_0000n).subarray(16));
    expect(m.header.interceptAccessType).toBe(2);
    // Another VP's registers are its own.
    const other = decodeMemoryInterceptMessage(buildInterceptMessage(p, p.vps[1]!, 'execute', 0x4_0000n).subarray(16));
    expect(other.header.vpIndex).toBe(1);
    expect(other.gprs[15]).toBe(0n);
    // The active VTL's private file: a VTL switch builds from VTL1's registers.
    p.enablePartitionVtl('host', 1, 0);
    p.enableVpVtl('host', 0, 1, { ...longModeContext(), rip: 0xffff_f800_0000_1000n });
    const before = buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    vp.activeVtl = 1;
    const inVtl1 = decodeMemoryInterceptMessage(buildInterceptMessage(p, vp, 'write', 0x4_0000n).subarray(16));
    expect(inVtl1.header.executionState.vtl).toBe(1);
    expect(inVtl1.header.rip).toBe(0xffff_f800_0000_1000n);
    vp.activeVtl = 0;
    expect(buildInterceptMessage(p, vp, 'write', 0x4_0000n)).toEqual(before);
  });

  test('an access with an instruction is built in full, and the next one without carries none of its bytes over (seed 004)', () => {
    const { p, vp } = setup();
    buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    const withInsn = decodeMemoryInterceptMessage(
      buildInterceptMessage(p, vp, 'write', 0x4_0000n, { length: 2, bytes: Buffer.from([0x89, 0x07]) }).subarray(16),
    );
    expect(withInsn.header.instructionLength).toBe(2);
    expect(withInsn.instructionByteCount).toBe(2);
    const after = buildInterceptMessage(p, vp, 'write', 0x4_0000n);
    const m = decodeMemoryInterceptMessage(after.subarray(16));
    expect(m.header.instructionLength).toBe(0);
    expect(m.instructionByteCount).toBe(0);
    expect(m.instructionBytes).toEqual(Buffer.alloc(16));
    expect(after).toEqual(full(p, vp, 'write', 0x4_0000n));
  });
});
