// Security (#17): the streaming snapshot RPCs are admin calls like SavePartition/RestorePartition —
// ExportPartition (server stream) and ImportPartition (client stream, authorized on its first
// message) refuse a viewer and an anonymous caller, and are audit-logged; an admin's round trip works.
import * as grpc from '@grpc/grpc-js';
import { connect, type VsmClient, type pb } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { parsePolicy } from '@vsm/vsm-v1/security';
import { failure } from '../support/server';
import { type LogLine, audits, partitionSpec, startSecured, tokenHash } from './support';

const policy = parsePolicy(
  JSON.stringify({
    principals: {
      boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } },
      viewer: { tokens: [tokenHash('viewer-token')], roles: { 'partitions/*': ['viewer', 'operator'] } },
    },
  }),
);
let srv: RunningServer;
let lines: LogLine[];
const clients: VsmClient[] = [];
const as = (token?: string) => {
  const c = connect(srv.address, { token, deadlineMs: 10_000, retries: 0 });
  clients.push(c);
  return c;
};
beforeAll(async () => {
  ({ srv, lines } = await startSecured({ security: { authzPolicy: policy } }));
});
afterAll(async () => {
  for (const c of clients) c.close();
  await srv.shutdown('test');
});

test('ExportPartition and ImportPartition need the admin role', async () => {
  const boss = as('boss-token');
  const viewer = as('viewer-token');
  const anonymous = as();
  await boss.partitions.createPartition({ partitionId: 'sec-snap', partition: partitionSpec(1, 1) });
  await boss.memory.writeGpa({ name: 'partitions/sec-snap', gpa: 0n, data: Buffer.from('secret') });
  const collect = async (c: VsmClient) => {
    const out: pb.SnapshotChunk[] = [];
    for await (const x of c.snapshots.exportPartition({ name: 'partitions/sec-snap' })) out.push(x);
    return out;
  };
  expect((await failure(collect(viewer))).code).toBe(grpc.status.PERMISSION_DENIED);
  expect((await failure(collect(anonymous))).code).toBe(grpc.status.UNAUTHENTICATED);
  const chunks = await collect(boss);
  expect(chunks.at(-1)?.chunk?.$case).toBe('trailer');
  const denied = await failure(viewer.snapshots.importPartition(chunks, { partitionId: 'sec-copy' }));
  expect({ code: denied.code, reason: denied.reason }).toEqual({ code: grpc.status.PERMISSION_DENIED, reason: 'HV_STATUS_ACCESS_DENIED' });
  expect((await failure(anonymous.snapshots.importPartition(chunks, { partitionId: 'sec-copy' }))).code).toBe(grpc.status.UNAUTHENTICATED);
  expect((await failure(boss.partitions.getPartition({ name: 'partitions/sec-copy' }))).code).toBe(grpc.status.NOT_FOUND);
  const copy = await boss.snapshots.importPartition(chunks, { partitionId: 'sec-copy' });
  expect(copy.name).toBe('partitions/sec-copy');
  const denials = audits(lines, 'deny').map((l) => l.method);
  expect(denials).toEqual(expect.arrayContaining(['vsm.v1.SnapshotService/ExportPartition', 'vsm.v1.SnapshotService/ImportPartition']));
});

test('MigratePartition needs the admin role (refused before anything moves; audit-logged)', async () => {
  const boss = as('boss-token');
  const viewer = as('viewer-token');
  const anonymous = as();
  await boss.partitions.createPartition({ partitionId: 'sec-mig', partition: partitionSpec(1, 1) });
  const migrate = async (c: VsmClient) => {
    const out: pb.MigrationProgress[] = [];
    for await (const x of c.snapshots.migratePartition({ name: 'partitions/sec-mig', targetAgent: '127.0.0.1:1' })) out.push(x);
    return out;
  };
  expect((await failure(migrate(viewer))).code).toBe(grpc.status.PERMISSION_DENIED);
  expect((await failure(migrate(anonymous))).code).toBe(grpc.status.UNAUTHENTICATED);
  // An admin gets past authorization: this emulator backend keeps partitions in process (nothing to move).
  const e = await failure(migrate(boss));
  expect([e.code, e.message]).toEqual([grpc.status.FAILED_PRECONDITION, expect.stringContaining('emulator backend')]);
  expect(audits(lines, 'deny').map((l) => l.method)).toContain('vsm.v1.SnapshotService/MigratePartition');
});
