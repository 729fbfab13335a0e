// Durability: a state directory keeps partitions across a service restart.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { connect, pb } from '@vsm/client';
import { CoreBackend, StateStore, persistentBackend, restoreAll, startServer } from '@vsm/vsm-v1';
import { HvMsr } from '@vsm/core';

const GiB = 1n << 30n;

async function serve(dir: string) {
  const store = new StateStore(dir);
  const backend = persistentBackend(new CoreBackend(), store);
  const log = pino({ level: 'silent' });
  const restored = await restoreAll(backend, store, log);
  const srv = await startServer({ listen: '127.0.0.1:0', backend, logger: log, shutdownGraceMs: 500 });
  const client = connect(srv.address);
  return {
    srv,
    client,
    restored,
    stop: async () => {
      client.close();
      await srv.shutdown();
    },
  };
}

test('partitions, VTL state, overlays and protections survive a restart; deletes too', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-state-'));
  const a = await serve(dir);
  expect(a.restored).toBe(0);
  const p = await a.client.partitions.createPartition({ partitionId: 'durable', partition: { vpCount: 1, memoryBytes: GiB, maximumVtl: 1 } as pb.Partition });
  await a.client.partitions.createPartition({ partitionId: 'gone', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  const vp0 = `${p.name}/vps/0`;
  await a.client.memory.writeGpa({ name: p.name, gpa: 0x1000n, data: Buffer.from('underneath') });
  await a.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 7n });
  await a.client.guest.writeMsr({ name: vp0, msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
  await a.client.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
  await a.client.vtl.enableVpVtl({ name: vp0, targetVtl: 1 });
  await a.client.guest.callHypercallPage({ name: vp0, offset: 0x0f, rcx: 0n });
  await a.client.partitions.deletePartition({ name: 'partitions/gone' });
  const before = await a.client.vps.getVpRegisters({ name: vp0, vtl: 0 });
  await a.stop();

  const b = await serve(dir);
  expect(b.restored).toBe(1);
  const list = await b.client.partitions.listPartitions({});
  expect(list.partitions.map((x) => x.name)).toEqual(['partitions/durable']);
  expect((await b.client.vps.getVirtualProcessor({ name: vp0 })).vtlStatus?.activeVtl).toBe(1);
  const after = await b.client.vps.getVpRegisters({ name: vp0, vtl: 0 });
  const strip = (r: pb.GetVpRegistersResponse) => r.registers.filter((x) => x.name !== pb.HvRegisterName.HV_REGISTER_NAME_TIME_REF_COUNT);
  expect(strip(after)).toEqual(strip(before));
  expect(Buffer.from((await b.client.memory.readGpa({ name: p.name, gpa: 0x1000n, length: 10 })).data).toString()).toBe('underneath');
  expect([...(await b.client.memory.readGpa({ name: p.name, gpa: 0x1000n, length: 4, vtlView: 0 })).data]).toEqual([0x0f, 0x01, 0xd9, 0xc3]);
  await b.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a corrupt state file is reported and left alone; the others load', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-state-'));
  const a = await serve(dir);
  await a.client.partitions.createPartition({ partitionId: 'ok', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
  await a.stop();
  fs.writeFileSync(path.join(dir, 'broken.snapshot'), Buffer.from([0xff, 0xff, 0xff]));
  const b = await serve(dir);
  expect(b.restored).toBe(1);
  expect(fs.existsSync(path.join(dir, 'broken.snapshot'))).toBe(true);
  await b.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});
