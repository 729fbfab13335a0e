// Guest actions on KVM beyond what the emulator comparison shows: how many exits each action
// costs, per-VP views of a VTL VM, the watchdog on a guest action, and what a CALL into a hidden
// hypercall page executes (the visible bytes, as hardware would).
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { KvmBackend } from '@vsm/vsm-v1';
import { type AgentHarness, GiB, describeKvm, failure, startAgent } from './agent-support';

const MSR = { GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID, HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL, SIMP: HvMsr.HV_X64_MSR_SIMP };
const R = pb.HvRegisterName;

describeKvm('guest actions on KVM', () => {
  let h: AgentHarness;
  let backend: KvmBackend;
  beforeAll(async () => {
    backend = new KvmBackend({ actionTimeoutMs: 300 });
    h = await startAgent(backend);
  });
  afterAll(async () => {
    await h?.stop();
  });

  async function partition(id: string) {
    const p = await h.client.partitions.createPartition({ partitionId: id, partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
    return { name: p.name, vp0: `${p.name}/vps/0`, vp1: `${p.name}/vps/1` };
  }

  test('exits per action: WRMSR, RDMSR = MSR exit + HLT; a memory access = HLT; a page hypercall = port exit + HLT', async () => {
    const { name, vp0 } = await partition('act-exits');
    const kp = backend.platformOf(name);
    const count = async (f: () => Promise<unknown>) => {
      const before = kp.exits;
      await f();
      return kp.exits - before;
    };
    expect(await count(() => h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n }))).toBe(2);
    expect(await count(() => h.client.guest.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID }))).toBe(2);
    expect(await count(() => h.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_VP_INDEX, value: 1n }))).toBe(2); // #GP: MSR exit, then the IDT handler's port exit
    expect(await count(() => h.client.guest.readMsr({ name: vp0, msr: 0x10 }))).toBe(0); // not a Hyper-V MSR: not trapped, the core answers (#GP)
    expect(await count(() => h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x1001n }))).toBe(2);
    expect(await count(() => h.client.guest.readMemory({ name: vp0, gpa: 0x1000n, length: 8 }))).toBe(1);
    expect(await count(() => h.client.guest.readMemory({ name: vp0, gpa: 0x1000n, length: 4096 }))).toBe(1);
    expect(await count(() => h.client.guest.writeMemory({ name: vp0, gpa: 0x1000n, data: Buffer.from([1]) }))).toBe(1); // MMIO exit on the read-only slot
    expect(await count(() => h.client.guest.callHypercallPage({ name: vp0, offset: 0, rcx: 0x50n }))).toBe(2);
    expect(await count(() => h.client.guest.hypercall({ name: vp0, control: 0x7777n }))).toBe(2);
  });

  test('per-VP overlays: one VTL VM shows each VP its own SIMP (the layout follows the VP that runs)', async () => {
    const { name, vp0, vp1 } = await partition('act-pervp');
    await h.client.memory.writeGpa({ name, gpa: 0x9000n, data: Buffer.from('ram ram ram') });
    await h.client.guest.writeMsr({ name: vp1, msr: MSR.SIMP, value: 0x9001n });
    await h.client.guest.writeMemory({ name: vp1, gpa: 0x9000n, data: Buffer.from('simp of vp1') });
    const vm = backend.platformOf(name).vmOf(0)!;
    const before = vm.overlaySlotChanges;
    for (let i = 0; i < 3; i++) {
      expect(Buffer.from((await h.client.guest.readMemory({ name: vp0, gpa: 0x9000n, length: 11 })).data).toString()).toBe('ram ram ram');
      expect(Buffer.from((await h.client.guest.readMemory({ name: vp1, gpa: 0x9000n, length: 11 })).data).toString()).toBe('simp of vp1');
    }
    expect(vm.overlaySlotChanges - before).toBe(12); // one memslot change (2 ioctls: delete, create) per switch of the running VP
  });

  test('a CALL into a hypercall page hidden under another overlay executes the visible bytes; a loop there is stopped (ABORTED)', async () => {
    const { vp0 } = await partition('act-hidden');
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.GUEST_OS_ID, value: 1n });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.HYPERCALL, value: 0x5001n });
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: 0x5001n }); // on top of the hypercall page
    await h.client.guest.writeMemory({ name: vp0, gpa: 0x5100n, data: Buffer.from([0xeb, 0xfe]) }); // jmp $ in the SIMP
    await h.client.vps.setVpRegisters({
      name: vp0,
      vtl: 0,
      registers: [{ name: R.HV_REGISTER_NAME_X64_RIP, value: { value: { $case: 'reg64', value: 0x40_0000n } } }],
    });
    const t0 = Date.now();
    const e = await failure(h.client.guest.callHypercallPage({ name: vp0, offset: 0x100 }));
    expect([e.code, e.reason]).toEqual([status.ABORTED, 'KVM_GUEST_TIMEOUT']);
    expect(Date.now() - t0).toBeLessThan(3000);
    // Nothing changed architecturally, and the VP keeps working.
    const rip = await h.client.vps.getVpRegisters({ name: vp0, vtl: 0, names: [R.HV_REGISTER_NAME_X64_RIP] });
    expect(rip.registers[0]?.value?.value).toEqual({ $case: 'reg64', value: 0x40_0000n });
    expect((await h.client.guest.readMsr({ name: vp0, msr: MSR.GUEST_OS_ID })).value).toBe(1n);
    await h.client.guest.writeMsr({ name: vp0, msr: MSR.SIMP, value: 0n }); // uncover the page
    expect((await h.client.guest.callHypercallPage({ name: vp0, offset: 0x100 })).outcome?.exception).toBe(pb.X64Exception.X64_EXCEPTION_BP);
  });

  test('arm64 partitions are refused (x64 host)', async () => {
    const e = await failure(
      h.client.partitions.createPartition({
        partitionId: 'act-arm',
        partition: { architecture: pb.Architecture.ARCHITECTURE_ARM64, vpCount: 1, memoryBytes: GiB } as pb.Partition,
      }),
    );
    expect([e.code, e.reason]).toEqual([status.UNIMPLEMENTED, 'HV_STATUS_FEATURE_UNAVAILABLE']);
    expect((await h.client.partitions.listPartitions({})).partitions.map((p) => p.name)).not.toContain('partitions/act-arm');
  });
});
