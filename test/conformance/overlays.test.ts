// Conformance: GPA overlay pages (tlfs-overlays-synic.md §4). The page underneath an overlay is
// hidden, never modified, and back byte for byte when the overlay is disabled or moved; overlays
// are per VTL; stacking order is documented (most recently placed on top). Public API only.
import { pb } from '@vsm/client';
import { GiB, type Harness, startHarness } from '../support/server';
import { HvMsr } from '@vsm/core';

const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  REFERENCE_TSC: HvMsr.HV_X64_MSR_REFERENCE_TSC,
  VP_ASSIST_PAGE: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
  SIEFP: HvMsr.HV_X64_MSR_SIEFP,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
};
const P = 0x5000n;
const Q = 0x7000n;
const pattern = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) & 0xff));

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

async function partition(id: string, maximumVtl = 1) {
  const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await h.client.memory.writeGpa({ name: p.name, gpa: P, data: pattern });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
  return { name: p.name, vp0 };
}
const ram = async (name: string, gpa: bigint) => Buffer.from((await h.client.memory.readGpa({ name, gpa, length: 4096 })).data);
const view = async (vp: string, gpa: bigint) => Buffer.from((await h.client.guest.readMemory({ name: vp, gpa, length: 4096 })).data);

describe.each([
  ['hypercall page', MSR.HYPERCALL, true],
  ['reference TSC page', MSR.REFERENCE_TSC, true],
  ['VP assist page', MSR.VP_ASSIST_PAGE, false],
  ['SynIC message page (SIMP)', MSR.SIMP, false],
  ['SynIC event flags page (SIEFP)', MSR.SIEFP, false],
])('%s', (_what, msr, readOnly) => {
  test('hides RAM without modifying it; move to Q and back; disable uncovers RAM byte for byte', async () => {
    const { name, vp0 } = await partition(`ov-${msr.toString(16)}`);
    await h.client.guest.writeMsr({ name: vp0, msr, value: P | 1n });
    const seen = await view(vp0, P);
    expect(seen.equals(pattern)).toBe(false);
    expect((await ram(name, P)).equals(pattern)).toBe(true);
    const list = await h.client.memory.listOverlays({ name });
    expect(list.overlays).toHaveLength(1);
    expect(list.overlays[0]).toMatchObject({ gpa: P, vtl: 0, stackPosition: 0, readOnly });
    // Guest write: read-only pages fault, others land in the overlay, never in RAM.
    const w = await h.client.guest.writeMemory({ name: vp0, gpa: P + 0x800n, data: Buffer.from('overlay!') });
    expect(w.outcome?.exception).toBe(readOnly ? pb.X64Exception.X64_EXCEPTION_GP : pb.X64Exception.X64_EXCEPTION_UNSPECIFIED);
    const withWrite = await view(vp0, P);
    // Move to Q: P shows RAM again; the overlay's contents move with it.
    await h.client.guest.writeMsr({ name: vp0, msr, value: Q | 1n });
    expect((await view(vp0, P)).equals(pattern)).toBe(true);
    expect((await view(vp0, Q)).equals(withWrite)).toBe(true);
    expect((await ram(name, Q)).equals(Buffer.alloc(4096))).toBe(true);
    // Back to P, then disable.
    await h.client.guest.writeMsr({ name: vp0, msr, value: P | 1n });
    expect((await view(vp0, P)).equals(withWrite)).toBe(true);
    await h.client.guest.writeMsr({ name: vp0, msr, value: P });
    expect((await view(vp0, P)).equals(pattern)).toBe(true);
    expect((await ram(name, P)).equals(pattern)).toBe(true);
    expect((await h.client.memory.listOverlays({ name })).overlays).toHaveLength(0);
  });
});

test('per VTL: VTL1 overlays are invisible to VTL0 and VTL0 cannot move or remove them', async () => {
  const { name, vp0 } = await partition('ov-vtl');
  await h.client.vtl.enablePartitionVtl({ name, targetVtl: 1 });
  await h.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1000n | 1n });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n }); // into VTL1
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: P | 1n });
  await h.client.guest.writeMemory({ name: vp0, gpa: P, data: Buffer.from('vtl1 secret') });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 2n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x2000n | 1n });
  await h.client.guest.callHypercallPage({ name: vp0, offset: 0x26, rcx: 1n }); // back to VTL0
  expect((await view(vp0, P)).equals(pattern)).toBe(true);
  // VTL0 writing its own SIMP MSR (its own instance) does not touch VTL1's overlay.
  expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.SIMP })).value).toBe(0n);
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: 0n });
  const v1 = Buffer.from((await h.client.memory.readGpa({ name, gpa: P, length: 11, vtlView: 1 })).data);
  expect(v1.toString()).toBe('vtl1 secret');
  const l = await h.client.memory.listOverlays({ name, vtl: 1 });
  expect(l.overlays.map((o) => [o.kind, o.gpa])).toEqual(
    expect.arrayContaining([
      [pb.OverlayKind.OVERLAY_KIND_SIMP, P],
      [pb.OverlayKind.OVERLAY_KIND_HYPERCALL, 0x2000n],
    ]),
  );
  // VTL0's hypercall page is at 0x1000 and VTL1's at 0x2000: each VTL sees only its own.
  expect((await h.client.memory.readGpa({ name, gpa: 0x2000n, length: 4, vtlView: 0 })).data).toEqual(Buffer.alloc(4));
  expect((await h.client.memory.readGpa({ name, gpa: 0x1000n, length: 4, vtlView: 1 })).data).toEqual(Buffer.alloc(4));
});

test('stacking: the most recently placed overlay is on top; removing it uncovers the next, then RAM', async () => {
  const { name, vp0 } = await partition('ov-stack');
  // The hypercall page's bytes are the backend's choice (capabilities): learn them at Q first.
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: Q | 1n });
  const hypercallPage = await view(vp0, Q);
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: Q });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: P | 1n });
  await h.client.guest.writeMemory({ name: vp0, gpa: P, data: Buffer.from('simp') });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: P | 1n });
  let l = await h.client.memory.listOverlays({ name });
  expect(l.overlays.map((o) => [o.kind, o.stackPosition])).toEqual([
    [pb.OverlayKind.OVERLAY_KIND_SIMP, 1],
    [pb.OverlayKind.OVERLAY_KIND_HYPERCALL, 0],
  ]);
  const top = await view(vp0, P);
  expect(top.equals(hypercallPage)).toBe(true);
  if (h.backend === 'emulator') expect([...top.subarray(0, 4)]).toEqual([0x0f, 0x01, 0xd9, 0xc3]); // VMMCALL; RET (AMD)
  const gen = l.viewGeneration;
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: P }); // disable the top one
  expect((await view(vp0, P)).subarray(0, 4).toString()).toBe('simp');
  l = await h.client.memory.listOverlays({ name });
  expect(l.viewGeneration).toBeGreaterThan(gen);
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: P });
  expect((await view(vp0, P)).equals(pattern)).toBe(true);
});

test('HV_X64_MSR_HYPERCALL: needs a guest OS id, lock bit, RsvdP preserved, GPFN beyond the GPA space is #GP', async () => {
  const p = await h.client.partitions.createPartition({ partitionId: 'ov-hc', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x3000n | 1n });
  expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.HYPERCALL })).value).toBe(0x3000n); // Enable reads 0
  expect((await h.client.memory.listOverlays({ name: p.name })).overlays).toHaveLength(0);
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 0x8100n });
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x3000n | 0xffcn | 1n }); // RsvdP bits written
  expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.HYPERCALL })).value).toBe(0x3001n); // preserved (0)
  const gp = await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: (GiB + 0x1000n) | 1n });
  expect(gp.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x3000n | 0x3n }); // lock
  const locked = await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x4000n | 1n });
  expect(locked.outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_GP);
  expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.HYPERCALL })).value).toBe(0x3003n);
  // Writing 0 to GUEST_OS_ID disables the hypercall page.
  await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 0n });
  expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.HYPERCALL })).value & 1n).toBe(0n);
  expect((await h.client.memory.listOverlays({ name: p.name })).overlays).toHaveLength(0);
});

test('SynIC and VP assist MSRs keep RsvdP bits 11:1 and read back what was written', async () => {
  const { vp0 } = await partition('ov-rsvdp');
  for (const msr of [MSR.SIMP, MSR.SIEFP, MSR.VP_ASSIST_PAGE]) {
    await h.client.guest.writeMsr({ name: vp0, msr, value: 0x9000n | 0xffen | 1n });
    expect((await h.client.guest.readMsr({ name: vp0, msr })).value).toBe(0x9001n);
    await h.client.guest.writeMsr({ name: vp0, msr, value: 0n });
  }
});
