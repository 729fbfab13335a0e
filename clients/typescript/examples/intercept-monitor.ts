// @vsm/client example: an external monitor. VTL1 protects a page against writes, the partition's
// intercepts go to monitors, and this program watches them and answers: it ALLOWs the first write
// and SKIPs the second (which then never lands). Run against a server (`npm start`):
//
//   npx tsc -b clients/typescript/examples
//   node clients/typescript/examples/dist/intercept-monitor.js --address 127.0.0.1:50051
import { parseArgs } from 'node:util';
import { VsmError, connect, pb } from '@vsm/client';

const PAGE = 0x40n; // GPA 0x40000

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { address: { type: 'string', default: process.env.VSM_ADDRESS ?? '127.0.0.1:50051' } } });
  const client = connect(values.address!, { deadlineMs: 10_000 });
  const p = await client.partitions.createPartition({ partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 }) });
  const vp0 = `${p.name}/vps/0`;
  try {
    // VTL1 exists and has turned VTL protection on (HvRegisterVsmPartitionConfig.EnableVtlProtection).
    await client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    await client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
    await client.vps.setVpRegisters({
      name: vp0,
      vtl: 1,
      registers: [{ name: pb.HvRegisterName.HV_REGISTER_NAME_VSM_PARTITION_CONFIG, value: { value: { $case: 'reg64', value: 1n | (0xfn << 1n) } } }],
    });
    // VTL1's mask on the page: read only (HV_MAP_GPA_READABLE); intercepts go to monitors.
    await client.intercepts.modifyVtlProtectionMask({ name: p.name, protectingVtl: 1, mapFlags: 0x1, ranges: [{ startPage: PAGE, pageCount: 1n }] });
    await client.intercepts.setInterceptRoute({ name: p.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });

    // The monitor: subscribe to writes, then answer each intercept.
    const monitor = client.intercepts.monitor();
    monitor.send({ kind: { $case: 'subscribe', value: pb.MonitorSubscribe.fromPartial({ name: p.name, accessMask: 0x2 }) } });
    let answered = 0;
    const watching = (async () => {
      for await (const ev of monitor.events) {
        if (ev.kind?.$case === 'subscription') console.log(`monitor: subscribed, access mask 0x${ev.kind.value.accessMask.toString(16)}`);
        if (ev.kind?.$case === 'intercept') {
          const i = ev.kind.value;
          const action = answered++ === 0 ? pb.InterceptAction.INTERCEPT_ACTION_ALLOW : pb.InterceptAction.INTERCEPT_ACTION_SKIP;
          console.log(
            `monitor: intercept ${i.interceptId}: VP${i.vpIndex} VTL${i.vtl} ${pb.hvInterceptAccessTypeToJSON(i.accessType)} at 0x${i.gpa.toString(16)} (RIP 0x${i.rip.toString(16)}) -> ${pb.interceptActionToJSON(action)}`,
          );
          monitor.send({ kind: { $case: 'reply', value: { interceptId: i.interceptId, action, data: Buffer.alloc(0), viewGeneration: i.viewGeneration } } });
        }
        if (ev.kind?.$case === 'replyResult') console.log(`monitor: reply ${ev.kind.value.interceptId} ${pb.replyStatusToJSON(ev.kind.value.status)}`);
      }
    })().catch((e) => {
      if (!(e instanceof VsmError)) throw e;
    });

    // The guest writes twice; each write waits until the monitor answered.
    for (const text of ['first', 'second']) {
      await client.guest.writeMemory({ name: vp0, gpa: PAGE << 12n, data: Buffer.from(text) });
      const now = await client.memory.readGpa({ name: p.name, gpa: PAGE << 12n, length: 6 });
      console.log(`guest wrote ${JSON.stringify(text)}; the page now holds ${JSON.stringify(Buffer.from(now.data).toString().replace(/\0+$/, ''))}`);
    }
    monitor.cancel();
    await watching;
  } finally {
    await client.partitions.deletePartition({ name: p.name });
    client.close();
  }
}

main().catch((e) => {
  console.error(e instanceof VsmError ? `error: ${e.codeName} ${e.reason ?? ''}: ${e.message}` : e);
  process.exit(1);
});
