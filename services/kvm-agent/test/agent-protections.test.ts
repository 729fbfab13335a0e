// VTL protections as memslots on real KVM: what the lower VTL's VM maps after EnableVtlProtection and
// ModifyVtlProtectionMask (read-only slots, holes, coalesced ranges, overlays on top), that refused
// guest actions really exit (and become the core's intercepts), and the memslot budget fallback.
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { KvmBackend } from '@vsm/vsm-v1';
import { type AgentHarness, GiB, describeKvm, startAgent } from './agent-support';
import { withDefaults } from './agent-diff-support';

const MSR = { GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID, HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL };
const R = pb.HvRegisterName;
const r64 = (name: pb.HvRegisterName, v: bigint): pb.RegisterAssoc => ({ name, value: { value: { $case: 'reg64', value: v } } });

describeKvm('VTL protections enforced by memslots', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  let small: KvmBackend;
  beforeAll(async () => {
    backend = new KvmBackend();
    h = await startAgent(backend);
    small = new KvmBackend({ memslotBudget: 64 });
  });
  afterAll(async () => {
    await h?.stop();
    await small?.close();
  });

  /** VTL1 enabled on VP0 with EnableVtlProtection (default RWX); VP0 back in VTL0 with its hypercall page at 0x1000. */
  async function partition(kb: KvmBackend, id: string) {
    const b = withDefaults(kb);
    await b.createPartition({ partitionId: id, requestId: '', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    const name = `partitions/${id}`;
    const vp0 = `${name}/vps/0`;
    await b.enablePartitionVtl({ name, targetVtl: 1, enableMbec: false });
    await b.enableVpVtl({ name: vp0, targetVtl: 1 });
    await b.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
    await b.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n });
    await b.setVpRegisters({ name: vp0, vtl: 1, registers: [r64(R.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, 1n | (0xfn << 1n))] });
    const protect = (flags: number, startPage: bigint, pageCount: bigint) =>
      b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: flags, ranges: [{ startPage, pageCount }] });
    return { name, vp0, protect, kp: kb.platformOf(name), b };
  }
  const layout = (kb: KvmBackend, name: string) =>
    kb
      .platformOf(name)
      .vmOf(0)!
      .vm.mappings()
      .filter((m) => m.gpa < GiB)
      .map((m) => `${(m.gpa >> 12n).toString(16)}+${(m.size / 4096).toString(16)}${m.readonly ? ':ro' : ''}`);

  test("the lower VTL's VM maps no-write pages read-only and no-access pages not at all; a uniform range is one slot; lifting restores one RAM slot", async () => {
    const { name, vp0, protect, kp, b } = await partition(backend, 'prot-layout');
    await b.readMemory({ name: vp0, gpa: 0x2000n, length: 8 }); // VTL0's VM exists, with its hypercall page
    expect(layout(backend, name)).toEqual(['0+1', '1+1:ro', '2+3fffe']);
    await protect(0x1, 0x10n, 0x30000n); // 196,608 pages read-only: one slot
    await protect(0x0, 0x40000n - 0x10n, 0x8n); // 8 pages without access: a hole
    await protect(0x1 | 0x4, 0x1n, 1n); // under the hypercall page: the overlay stays on top, read-only as it is
    await b.readMemory({ name: vp0, gpa: 0x2000n, length: 8 });
    expect(layout(backend, name)).toEqual(['0+1', '1+1:ro', '2+e', '10+30000:ro', '30010+ffe0', /* hole 3fff0..3fff7 */ '3fff8+8']);
    const vm = kp.vmOf(0)!;
    expect(vm.enforced).toBe(true);
    expect(vm.slotCount).toBeLessThan(12);
    // VTL1's own view is not restricted by its own protections.
    await b.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    await b.readMemory({ name: vp0, gpa: 0x2000n, length: 8 });
    expect(
      kp
        .vmOf(1)!
        .vm.mappings()
        .filter((m) => m.gpa < GiB)
        .map((m) => m.readonly),
    ).toEqual([false]);
    await b.hypercall({ name: vp0, control: 0x12n }); // VtlReturn
    // Lifting everything: back to RAM in one slot per GiB (the hypercall page stays).
    await protect(0xf, 0n, 0x40000n);
    await b.readMemory({ name: vp0, gpa: 0x2000n, length: 8 });
    expect(layout(backend, name)).toEqual(['0+1', '1+1:ro', '2+3fffe']);
  });

  test("refused guest actions are real exits: the MMIO exit on the read-only slot or the hole, then the core's intercept", async () => {
    const { name, vp0, protect, kp, b } = await partition(backend, 'prot-exits');
    await protect(0x1, 0x40n, 1n);
    await protect(0x0, 0x41n, 1n);
    const count = async <T>(f: () => Promise<T>) => {
      const e = kp.exits;
      const r = kp.refusedAccesses;
      const out = await f();
      return { exits: kp.exits - e, refused: kp.refusedAccesses - r, out };
    };
    const w = await count(() => b.writeMemory({ name: vp0, gpa: 0x40008n, data: Buffer.from('12345678') }));
    expect(w).toMatchObject({ exits: 1, refused: 1 });
    expect(w.out.outcome?.intercept).toMatchObject({ protectingVtl: 1, gpa: 0x40008n, accessType: pb.HvInterceptAccessType.HV_INTERCEPT_ACCESS_TYPE_WRITE });
    // VTL1 lets writes through and returns: the retried write completes.
    await protect(0x3, 0x40n, 1n);
    const ret = await b.hypercall({ name: vp0, control: 0x12n }); // VtlReturn
    expect(ret.outcome?.resumedAccess).toMatchObject({ completed: true });
    expect(Buffer.from((await b.readGpa({ name, gpa: 0x40008n, length: 8 })).data).toString()).toBe('12345678');
    await protect(0x1, 0x40n, 1n);
    // A read of the read-only page runs natively (one HLT); a read of the hole exits.
    await b.setInterceptRoute({
      name,
      route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
      answerDeadlineMs: 1n,
      deadlineAction: pb.InterceptAction.INTERCEPT_ACTION_SKIP,
    });
    expect(await count(() => b.readMemory({ name: vp0, gpa: 0x40000n, length: 8 }))).toMatchObject({ exits: 1, refused: 0 });
    const r = await count(() => b.readMemory({ name: vp0, gpa: 0x40ff8n, length: 16 }));
    // The deadline policy answered SKIP for the absent monitor: the read completes with zeros (the
    // whole access: the page before the hole is not read either).
    expect(r).toMatchObject({ exits: 1, refused: 1 });
    expect(Buffer.from(r.out.data).toString('hex')).toBe('00'.repeat(16));
    expect(r.out.outcome?.exception).toBe(0);
    // Writes that cross into a refused page write nothing (the access is atomic, as on the emulator).
    await b.writeGpa({ name, gpa: 0x3ff8n, data: Buffer.alloc(8, 0x11) });
    await protect(0x1, 0x4n, 1n);
    await b.writeMemory({ name: vp0, gpa: 0x3ff8n, data: Buffer.alloc(16, 0xee) });
    expect(Buffer.from((await b.readGpa({ name, gpa: 0x3ff8n, length: 16 })).data).toString('hex')).toBe('11'.repeat(8) + '00'.repeat(8));
  });

  test('over the memslot budget: the view is mapped without protections, the model answers memory actions, whole-guest runs are refused', async () => {
    const { name, vp0, kp, b } = await partition(small, 'prot-budget');
    // 100 isolated read-only pages: 200 slots > 64.
    for (let i = 0; i < 100; i++)
      await b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: 0x100n + 2n * BigInt(i), pageCount: 1n }] });
    const w = await b.writeMemory({ name: vp0, gpa: 0x100000n, data: Buffer.from([1]) });
    expect(w.outcome?.intercept).toMatchObject({ gpa: 0x100000n }); // the core's model refused it
    const vm = kp.vmOf(0)!;
    expect(vm.enforced).toBe(false);
    expect(vm.unenforcedReason).toMatch(/more than 64 memslots/);
    expect(vm.vm.mappings().some((m) => m.readonly && m.gpa >= 0x100000n && m.gpa < GiB)).toBe(false);
    await b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0x3, ranges: [{ startPage: 0x100n, pageCount: 1n }] });
    expect((await b.hypercall({ name: vp0, control: 0x12n })).outcome?.resumedAccess?.completed).toBe(true); // VtlReturn: the retry passes
    const e = (() => {
      try {
        small.runVp(vp0, { timeoutMs: 100 });
      } catch (x) {
        return x as { code?: number; reason?: string };
      }
      return undefined;
    })();
    expect(e).toMatchObject({ reason: 'KVM_PROTECTIONS_NOT_ENFORCED' });
    // Back under the budget: enforced again.
    await b.modifyVtlProtectionMask({ name, protectingVtl: 1, mapFlags: 0xf, ranges: [{ startPage: 0x100n, pageCount: 200n }] });
    await b.readMemory({ name: vp0, gpa: 0n, length: 1 });
    expect(vm.enforced).toBe(true);
  });
});
