import { pb } from '@vsm/client';
import { GiB, describeKvm, startAgent, AgentHarness } from './agent-support';

describeKvm('agent-smoke')('smoke', () => {
  let h: AgentHarness;
  beforeAll(async () => { h = await startAgent(); });
  afterAll(async () => { await h.stop(); });
  test('msr + hypercall page', async () => {
    const p = await h.client.partitions.createPartition({ partitionId: 's1', partition: { vpCount: 2, memoryBytes: GiB, maximumVtl: 2 } as pb.Partition });
    const vp0 = `${p.name}/vps/0`;
    const w = await h.client.guest.writeMsr({ name: vp0, msr: 0x40000000, value: 0x8100_0000_0000_0001n });
    expect(w.outcome?.exception).toBe(0);
    const r = await h.client.guest.readMsr({ name: vp0, msr: 0x40000000 });
    expect(r.value).toBe(0x8100_0000_0000_0001n);
    const gp = await h.client.guest.writeMsr({ name: vp0, msr: 0x40000002, value: 1n });
    expect(gp.outcome?.exception).toBe(13);
    await h.client.guest.writeMsr({ name: vp0, msr: 0x40000001, value: 0x1001n });
    const mem = await h.client.guest.readMemory({ name: vp0, gpa: 0x1000n, length: 4 });
    expect([...mem.data]).toEqual([0x66, 0xe7, 0x4d, 0xc3]);
    const wm = await h.client.guest.writeMemory({ name: vp0, gpa: 0x1800n, data: Buffer.from('x') });
    expect(wm.outcome?.exception).toBe(13);
    const c = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
    expect(c.outcome?.exception).toBe(6);
    const bp = await h.client.guest.callHypercallPage({ name: vp0, offset: 0x800 });
    expect(bp.outcome?.exception).toBe(3);
  });
});
