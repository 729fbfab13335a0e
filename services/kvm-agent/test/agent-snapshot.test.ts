import { HvMsr } from '@vsm/core';
import { CoreBackend } from '@vsm/vsm-v1';
import { KvmBackend } from '@vsm/vsm-v1';
import { describeKvm } from './agent-support';
import { type LooseBackend, type Op, differential, vtl1MidCallSession, withDefaults } from './agent-diff-support';

const MSR = {
  GUEST_OS_ID: HvMsr.HV_X64_MSR_GUEST_OS_ID,
  HYPERCALL: HvMsr.HV_X64_MSR_HYPERCALL,
  VP_ASSIST_PAGE: HvMsr.HV_X64_MSR_VP_ASSIST_PAGE,
  SIMP: HvMsr.HV_X64_MSR_SIMP,
};

describeKvm('snapshots of KVM partitions', () => {
  let kvm: KvmBackend;
  let emu: CoreBackend;
  beforeAll(() => {
    kvm = new KvmBackend();
    emu = new CoreBackend();
  });
  afterAll(async () => {
    await kvm?.close();
    await emu?.close();
  });

  /** The same session on each backend: VTL1 entered mid-CALL, overlays in both VTLs, guest-written RAM. */
  async function session(b: LooseBackend, id: string) {
    const { name, vp0 } = await vtl1MidCallSession(b, id);
    await b.writeMemory({ name: vp0, gpa: 0x5000n, data: Buffer.from('vtl1 simp') });
    await b.writeMsr({ name: vp0, msr: MSR.VP_ASSIST_PAGE, value: 0x6001n });
    return b.savePartition({ name });
  }

  /** What both restored copies must then answer alike. */
  function continuation(copy: string): Op[] {
    const c0 = `${copy}/vps/0`;
    const ops: Op[] = [];
    const op = (what: string, run: (b: LooseBackend) => Promise<unknown>) => ops.push({ what, run });
    op('ReadMemory VTL1 SIMP', (b) => b.readMemory({ name: c0, gpa: 0x5000n, length: 16 }));
    op('ReadMemory RAM written by the guest', (b) => b.readMemory({ name: c0, gpa: 0x30000n, length: 20 }));
    op('ReadMemory VTL1 hypercall page', (b) => b.readMemory({ name: c0, gpa: 0x2000n, length: 64 }));
    op('WriteMemory VtlReturnX64Rax/Rcx', (b) => b.writeMemory({ name: c0, gpa: 0x6010n, data: Buffer.from('raxraxr_rcxrcxr_') }));
    op('VtlReturn (normal)', (b) => b.callHypercallPage({ name: c0, offset: 0x26, rcx: 0n }));
    op('ReadMemory VTL0 view of 0x5000', (b) => b.readMemory({ name: c0, gpa: 0x5000n, length: 18 }));
    op('RDMSR GUEST_OS_ID VTL0', (b) => b.readMsr({ name: c0, msr: MSR.GUEST_OS_ID }));
    op('VtlCall', (b) => b.callHypercallPage({ name: c0, offset: 0x0f, rcx: 0n }));
    op('VtlReturn (fast)', (b) => b.callHypercallPage({ name: c0, offset: 0x26, rcx: 1n }));
    op('WriteMemory into the VTL0 hypercall page (#GP)', (b) => b.writeMemory({ name: c0, gpa: 0x1004n, data: Buffer.from([1]) }));
    return ops;
  }

  test('save and restore on KVM continue exactly like save and restore on the emulator', async () => {
    const k = withDefaults(kvm);
    const e = withDefaults(emu);
    const ks = await session(k, 'snap-a');
    const es = await session(e, 'snap-a');
    await k.restorePartition({ partitionId: 'snap-a-copy', snapshot: ks });
    await e.restorePartition({ partitionId: 'snap-a-copy', snapshot: es });
    expect(kvm.platformOf('partitions/snap-a-copy').partition).toBe(kvm.partition('partitions/snap-a-copy'));
    await differential(emu, kvm, 'partitions/snap-a-copy', 2, continuation('partitions/snap-a-copy'));
    // The source partition is untouched by what happened to its copy.
    expect(Buffer.from((await k.readMemory({ name: 'partitions/snap-a/vps/0', gpa: 0x5000n, length: 9 })).data).toString()).toBe('vtl1 simp');
  });

  test('an emulator snapshot restored on KVM gets the KVM hypercall page and runs on', async () => {
    const e = withDefaults(emu);
    const es = await session(e, 'snap-b');
    await withDefaults(kvm).restorePartition({ partitionId: 'snap-b-copy', snapshot: es });
    await e.restorePartition({ partitionId: 'snap-b-copy', snapshot: es });
    const page = await withDefaults(kvm).readGpa({ name: 'partitions/snap-b-copy', gpa: 0x1000n, length: 4, vtlView: 0 });
    expect([...page.data]).toEqual([0x66, 0xe7, 0x4d, 0xc3]);
    await differential(emu, kvm, 'partitions/snap-b-copy', 2, continuation('partitions/snap-b-copy'));
  });
});
