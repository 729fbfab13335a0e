// @vsm/client quick start: create a partition, let VP0 write HV_X64_MSR_GUEST_OS_ID and enable the
// hypercall page, enable VTL1, VtlCall into VTL1 and VtlReturn back through the hypercall page,
// then list the overlay pages. Run against a server (`npm start`):
//
//   npx tsc -b clients/typescript/examples
//   node clients/typescript/examples/dist/quickstart.js --address 127.0.0.1:50051 [--keep]
import { parseArgs } from 'node:util';
import { VsmError, connect, pb } from '@vsm/client';

const HV_X64_MSR_GUEST_OS_ID = 0x40000000;
const HV_X64_MSR_HYPERCALL = 0x40000001;
const GUEST_OS_ID = 0x8100_0000_0000_0001n; // an open-source guest (bit 63), vendor-defined rest
const hex = (v: bigint | number) => `0x${v.toString(16)}`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.VSM_ADDRESS ?? '127.0.0.1:50051' },
      keep: { type: 'boolean', default: false },
    },
  });
  const client = connect(values.address!, { deadlineMs: 5_000 });
  try {
    // 1. A partition with 2 VPs, 1 GiB of (sparse) guest memory, VTLs up to 1.
    const p = await client.partitions.createPartition({ partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 1n << 30n, maximumVtl: 1 }) });
    console.log(`created ${p.name}`);
    const vp0 = `${p.name}/vps/0`;

    // 2. The guest on VP0 identifies itself, then places the hypercall page at GPA 0x1000 (enable bit 0).
    const must = (what: string, o: pb.GuestActionOutcome | undefined) => {
      if (o?.exception) throw new Error(`${what}: the guest got exception ${pb.x64ExceptionToJSON(o.exception)}`);
      return o;
    };
    must('WRMSR GUEST_OS_ID', (await client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: GUEST_OS_ID })).outcome);
    must('WRMSR HYPERCALL', (await client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x1000n | 1n })).outcome);
    const id = await client.guest.readMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID });
    console.log(`VP0 reads HV_X64_MSR_GUEST_OS_ID = ${hex(id.value)}; hypercall page at 0x1000`);

    // 3. The host enables VTL1 for the partition and on VP0 (default initial context).
    const en = await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    const vp = await client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    console.log(`VTLs enabled: partition set ${hex(en.enabledVtlSet)}, VP0 set ${hex(vp.vp?.vtlStatus?.enabledVtlSet ?? 0)}`);

    // 4. VtlCall: VP0 CALLs its hypercall page at the VtlCall offset from HvRegisterVsmCodePageOffsets.
    const offsets = async () => {
      const r = await client.vps.getVpRegisters({ name: vp0, names: [pb.HvRegisterName.HV_REGISTER_NAME_VSM_CODE_PAGE_OFFSETS] });
      const v = r.registers[0]?.value?.value;
      if (v?.$case !== 'reg64') throw new Error('unexpected HvRegisterVsmCodePageOffsets value');
      return { vtlCall: Number(v.value & 0xfffn), vtlReturn: Number((v.value >> 12n) & 0xfffn) };
    };
    const call = await client.guest.callHypercallPage({ name: vp0, offset: (await offsets()).vtlCall, rcx: 0n });
    const sw = must('VtlCall', call.outcome)?.vtlSwitch;
    console.log(`VtlCall: VTL ${sw?.fromVtl} -> VTL ${sw?.toVtl} (${pb.hvVtlEntryReasonToJSON(sw?.entryReason ?? 0)})`);

    // 5. Now in VTL1, which has its own MSRs: VTL1 identifies itself and places its own hypercall
    //    page (at 0x2000), then returns to VTL0 through it.
    must('VTL1 WRMSR GUEST_OS_ID', (await client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_GUEST_OS_ID, value: GUEST_OS_ID })).outcome);
    must('VTL1 WRMSR HYPERCALL', (await client.guest.writeMsr({ name: vp0, msr: HV_X64_MSR_HYPERCALL, value: 0x2000n | 1n })).outcome);
    const ret = await client.guest.callHypercallPage({ name: vp0, offset: (await offsets()).vtlReturn, rcx: 0n });
    const back = must('VtlReturn', ret.outcome)?.vtlSwitch;
    console.log(`VtlReturn: VTL ${back?.fromVtl} -> VTL ${back?.toVtl}`);

    // 6. The overlay pages now placed: one hypercall page per VTL.
    const ov = await client.memory.listOverlays({ name: p.name });
    for (const o of ov.overlays) {
      console.log(`overlay ${pb.overlayKindToJSON(o.kind)} VTL ${o.vtl} at ${hex(o.gpa)} stack ${o.stackPosition}${o.readOnly ? ' read-only' : ''}`);
    }
    console.log(`view generation ${ov.viewGeneration}`);

    if (!values.keep) {
      await client.partitions.deletePartition({ name: p.name });
      console.log(`deleted ${p.name}`);
    }
  } finally {
    client.close();
  }
}

main().catch((e: unknown) => {
  if (e instanceof VsmError) console.error(`error: ${[e.codeName, e.reason].filter(Boolean).join(' ')}: ${e.message}`);
  else console.error(e);
  process.exitCode = e instanceof VsmError && (e.codeName === 'UNAVAILABLE' || e.codeName === 'DEADLINE_EXCEEDED') ? 4 : 1;
});
