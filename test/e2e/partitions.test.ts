// End to end: the real server on an ephemeral loopback port, called through the generated client.
import { status } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { GiB, type Harness, failure, startHarness } from '../support/server';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

describe('PartitionService', () => {
  test('create, get, list with paging, delete', async () => {
    const p = await h.client.partitions.createPartition({
      partition: pb.Partition.fromPartial({ vpCount: 2, memoryBytes: 64n * GiB, labels: { team: 'vsm' }, maximumVtl: 2 }),
    });
    expect(p.name).toMatch(/^partitions\/p[0-9a-z]{6}$/);
    expect(p.vpCount).toBe(2);
    expect(p.memoryBytes).toBe(64n * GiB);
    expect(p.labels).toEqual({ team: 'vsm' });
    expect(p.enabledVtlSet).toBe(1);
    expect(p.architecture).toBe(pb.Architecture.ARCHITECTURE_X64);
    expect(await h.client.partitions.getPartition({ name: p.name })).toEqual(p);
    for (let i = 0; i < 3; i++) await h.client.partitions.createPartition({ partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition });
    const page1 = await h.client.partitions.listPartitions({ pageSize: 2 });
    expect(page1.partitions).toHaveLength(2);
    expect(page1.nextPageToken).not.toBe('');
    const page2 = await h.client.partitions.listPartitions({ pageSize: 2, pageToken: page1.nextPageToken });
    const names = [...page1.partitions, ...page2.partitions].map((x) => x.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toContain(p.name);
    await h.client.partitions.deletePartition({ name: p.name });
    const e = await failure(h.client.partitions.getPartition({ name: p.name }));
    expect(e.code).toBe(status.NOT_FOUND);
    expect(e.reason).toBe('HV_STATUS_INVALID_PARTITION_ID');
    expect(e.domain).toBe('vsm.v1');
  });

  test('create is idempotent for a repeated request_id and refuses reuse with other content', async () => {
    const req = { partitionId: 'idem-1', requestId: 'req-abc', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition };
    const a = await h.client.partitions.createPartition(req);
    const b = await h.client.partitions.createPartition(req);
    expect(b.name).toBe(a.name);
    expect(b.name).toBe('partitions/idem-1');
    const e = await failure(h.client.partitions.createPartition({ ...req, partition: { vpCount: 2, memoryBytes: GiB } as pb.Partition }));
    expect(e.code).toBe(status.ALREADY_EXISTS);
    expect(e.reason).toBe('HV_STATUS_OBJECT_IN_USE');
  });

  test.each([
    ['vp_count 0', { vpCount: 0, memoryBytes: GiB }],
    ['vp_count 65', { vpCount: 65, memoryBytes: GiB }],
    ['memory not page aligned', { vpCount: 1, memoryBytes: 4097n }],
    ['memory 0', { vpCount: 1, memoryBytes: 0n }],
    ['maximum_vtl 3', { vpCount: 1, memoryBytes: GiB, maximumVtl: 3 }],
    ['name set by the client', { vpCount: 1, memoryBytes: GiB, name: 'partitions/x' }],
  ])('CreatePartition rejects %s with INVALID_ARGUMENT / HV_STATUS_INVALID_PARAMETER', async (_what, partition) => {
    const e = await failure(h.client.partitions.createPartition({ partition: partition as pb.Partition }));
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.reason).toBe('HV_STATUS_INVALID_PARAMETER');
  });

  test('CreatePartition rejects a missing partition and a bad partition_id', async () => {
    let e = await failure(h.client.partitions.createPartition({}));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    e = await failure(h.client.partitions.createPartition({ partitionId: 'Bad_ID', partition: { vpCount: 1, memoryBytes: GiB } as pb.Partition }));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  });

  test('Get/Delete/List reject malformed names and tokens', async () => {
    for (const name of ['', 'partitions/', 'partition/x', 'partitions/X', 'partitions/a/vps/0']) {
      const e = await failure(h.client.partitions.getPartition({ name }));
      expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
    }
    let e = await failure(h.client.partitions.deletePartition({ name: 'partitions/nope' }));
    expect([e.code, e.reason]).toEqual([status.NOT_FOUND, 'HV_STATUS_INVALID_PARTITION_ID']);
    e = await failure(h.client.partitions.listPartitions({ pageToken: 'does-not-exist' }));
    expect([e.code, e.reason]).toEqual([status.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER']);
  });

  test('GetCapabilities reports the emulator and the implemented hypercalls', async () => {
    const c = await h.client.partitions.getCapabilities({});
    expect(c.backend).toBe('emulator');
    expect(c.maxVpCount).toBe(64);
    expect(c.maxMemoryBytes).toBeGreaterThanOrEqual(64n * GiB);
    expect(c.hypercallCodes).toEqual(expect.arrayContaining([0x0d, 0x0f, 0x11, 0x12, 0x50, 0x51]));
  });
});
