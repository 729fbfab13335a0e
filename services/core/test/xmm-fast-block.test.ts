// The XMM fast hypercall register block (tlfs-hypercalls.md §1.4): RDX, R8, XMM0..XMM5, 112 bytes.
// Offsets typed out from the reference: RDX 0..7, R8 8..15, XMMn 16 + 16n (low quadword first).
import { HvError, HvRegisterName as R, HvStatus, Partition, fastBlockBytes, fastInputRegisters } from '@vsm/core';

const bytes = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => i + 1));

test('a 20-byte input: RDX, R8 and XMM0 (its rest zero); no XMM register beyond the input', () => {
  const r = fastInputRegisters(bytes(20));
  expect(r.rdx).toBe(0x0807_0605_0403_0201n);
  expect(r.r8).toBe(0x100f_0e0d_0c0b_0a09n);
  expect(r.xmm).toEqual([{ low: 0x1413_1211n, high: 0n }]);
});

test('16 bytes fill RDX and R8 only; 112 bytes fill all six XMM registers; a short input zero-fills R8', () => {
  expect(fastInputRegisters(bytes(16)).xmm).toEqual([]);
  const full = fastInputRegisters(bytes(112));
  expect(full.xmm).toHaveLength(6);
  expect(full.xmm[5]).toEqual({ low: 0x6867_6665_6463_6261n, high: 0x706f_6e6d_6c6b_6a69n }); // offsets 96..111: bytes 0x61..0x70
  expect(fastInputRegisters(bytes(3))).toEqual({ rdx: 0x03_0201n, r8: 0n, xmm: [] });
});

test('more than 112 bytes: HV_STATUS_INVALID_HYPERCALL_INPUT', () => {
  const e = (() => {
    try {
      fastInputRegisters(bytes(113));
    } catch (x) {
      return x;
    }
  })();
  expect(e).toBeInstanceOf(HvError);
  expect((e as HvError).status).toBe(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT);
});

test('the registers it gives read back as the same bytes through the block the dispatcher uses', () => {
  const p = new Partition({ id: 'xmm', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 0, labels: {} });
  const vp = p.vps[0]!;
  for (const n of [8, 20, 48, 112]) {
    const input = bytes(n);
    const r = fastInputRegisters(input);
    vp.shared.set(R.HvX64RegisterRdx, { low: r.rdx, high: 0n });
    vp.shared.set(R.HvX64RegisterR8, { low: r.r8, high: 0n });
    for (const [i, v] of r.xmm.entries()) vp.shared.set(R.HvX64RegisterXmm0 + i, v);
    expect(fastBlockBytes(vp, 0, n)).toEqual(input);
  }
});
