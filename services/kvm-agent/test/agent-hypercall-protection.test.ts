// Hypercall parameter blocks respect VTL protections on KVM as on the emulator: the guest's store
// of an input block into a protected page, and an output block on one, are memory intercepts, and
// the protected bytes are neither changed nor returned.
import { pb } from '@vsm/client';
import { KvmBackend } from '@vsm/vsm-v1';
import { describeKvm } from '../../../test/support/kvm-gate';

const SECRET = Buffer.from('VTL1 SECRET');
const PAGE = 0x40n;

describeKvm('hypercall parameter blocks on a VTL1-protected page (KVM)', () => {
  let b: KvmBackend;
  beforeAll(() => {
    b = new KvmBackend();
  });
  afterAll(async () => {
    await b.close();
  });

  async function setup(id: string) {
    const p = await b.createPartition(
      pb.CreatePartitionRequest.fromPartial({ partitionId: id, partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } }),
    );
    const vp = `${p.name}/vps/0`;
    await b.writeGpa(pb.WriteGpaRequest.fromPartial({ name: p.name, gpa: PAGE << 12n, data: SECRET }));
    await b.enablePartitionVtl(pb.EnablePartitionVtlRequest.fromPartial({ name: p.name, targetVtl: 1 }));
    await b.enableVpVtl(pb.EnableVpVtlRequest.fromPartial({ name: vp, targetVtl: 1 }));
    await b.setVpRegisters(
      pb.SetVpRegistersRequest.fromPartial({
        name: vp,
        vtl: 1,
        registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
      }),
    );
    await b.modifyVtlProtectionMask(
      pb.ModifyVtlProtectionMaskRequest.fromPartial({ name: p.name, protectingVtl: 1, mapFlags: 0, ranges: [{ startPage: PAGE, pageCount: 1n }] }),
    );
    const ram = async () => Buffer.from((await b.readGpa(pb.ReadGpaRequest.fromPartial({ name: p.name, gpa: PAGE << 12n, length: SECRET.length }))).data);
    return { vp, ram };
  }

  test('an input block stored into the protected page intercepts and changes nothing', async () => {
    const { vp, ram } = await setup('hp-in');
    const r = await b.hypercall(pb.HypercallRequest.fromPartial({ name: vp, control: 0x0dn, inputGpa: PAGE << 12n, input: Buffer.alloc(16, 0x41) }));
    expect(r.outcome?.intercept?.protectingVtl).toBe(1);
    expect((await ram()).equals(SECRET)).toBe(true);
  });

  test('an output block on the protected page intercepts; nothing is written or returned', async () => {
    const { vp, ram } = await setup('hp-out');
    const input = Buffer.alloc(20);
    input.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
    input.writeUInt32LE(0xfffffffe, 8);
    input.writeUInt32LE(0x00020000, 16); // HvX64RegisterRax
    const r = await b.hypercall(
      pb.HypercallRequest.fromPartial({ name: vp, control: 0x50n | (1n << 32n), inputGpa: 0x20000n, outputGpa: PAGE << 12n, input, outputSize: 16 }),
    );
    expect(r.outcome?.intercept?.protectingVtl).toBe(1);
    expect(r.output.length).toBe(0);
    expect((await ram()).equals(SECRET)).toBe(true);
  });
});
