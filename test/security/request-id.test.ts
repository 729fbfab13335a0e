// Hardening (issue #19, finding 14): CreatePartition's request_id is scoped to the caller's
// principal. Another principal reusing an id neither learns about the owner's partition (no
// ALREADY_EXISTS naming it, no copy of it) nor blocks the owner; the owner's retries stay
// idempotent and see their own id. Without authorization (no principals) nothing changes.
import { connect, type pb, type VsmClient } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { parsePolicy } from '@vsm/vsm-v1/security';
import { failure } from '../support/server';
import { partitionSpec, startSecured, tokenHash } from './support';

const clients: VsmClient[] = [];
afterAll(() => {
  for (const c of clients) c.close();
});
const mk = (srv: RunningServer, token?: string) => {
  const c = connect(srv.address, { token, retries: 0, deadlineMs: 10_000 });
  clients.push(c);
  return c;
};

describe('with authorization', () => {
  let srv: RunningServer;
  let a: VsmClient;
  let b: VsmClient;
  beforeAll(async () => {
    const policy = parsePolicy(
      JSON.stringify({
        principals: {
          alice: { tokens: [tokenHash('alice-token')], roles: { 'partitions/*': ['admin'] } },
          bob: { tokens: [tokenHash('bob-token')], roles: { 'partitions/*': ['admin'] } },
        },
      }),
    );
    ({ srv } = await startSecured({ security: { authzPolicy: policy } }));
    a = mk(srv, 'alice-token');
    b = mk(srv, 'bob-token');
  });
  afterAll(() => srv.shutdown('test'));

  test("the same request_id from another principal is that principal's own: no oracle, no copy of the owner's partition", async () => {
    const spec = partitionSpec(2, 1);
    const mine = await a.partitions.createPartition({ requestId: 'req-1', partition: spec });
    expect(mine.requestId).toBe('req-1');
    // Alice's retry is idempotent: the same partition, her own id.
    const again = await a.partitions.createPartition({ requestId: 'req-1', partition: spec });
    expect([again.name, again.requestId]).toEqual([mine.name, 'req-1']);
    // Bob with the same id and the same request gets a partition of his own (before: Alice's).
    const bobs = await b.partitions.createPartition({ requestId: 'req-1', partition: spec });
    expect(bobs.name).not.toBe(mine.name);
    expect(bobs.requestId).toBe('req-1');
    // Bob with the same id and a different request is not told the id is taken (before:
    // ALREADY_EXISTS "request_id req-1 was already used for a different CreatePartition").
    const other = await b.partitions.createPartition({ requestId: 'req-2', partitionId: 'bob-x', partition: spec });
    expect(other.name).toBe('partitions/bob-x');
    const alices = await a.partitions.createPartition({ requestId: 'req-2', partitionId: 'alice-x', partition: spec });
    expect([alices.name, alices.requestId]).toEqual(['partitions/alice-x', 'req-2']);
  });

  test('a squatted id does not block its owner; the owner still gets ALREADY_EXISTS for its own reuse, naming only its own id', async () => {
    const spec = partitionSpec();
    // Bob squats on the id Alice is going to use.
    await b.partitions.createPartition({ requestId: 'alice-next', partitionId: 'squat', partition: spec });
    const p = await a.partitions.createPartition({ requestId: 'alice-next', partitionId: 'alice-real', partition: spec });
    expect(p.name).toBe('partitions/alice-real');
    // Alice reusing her own id for something else is refused as before, with her id in the message.
    const e = await failure(a.partitions.createPartition({ requestId: 'alice-next', partitionId: 'alice-other', partition: spec }));
    expect([e.codeName, e.reason, e.message]).toEqual([
      'ALREADY_EXISTS',
      'HV_STATUS_OBJECT_IN_USE',
      'request_id alice-next was already used for a different CreatePartition',
    ]);
    // Over-long ids are refused as before.
    const long = await failure(a.partitions.createPartition({ requestId: 'x'.repeat(129), partition: spec }));
    expect([long.codeName, long.message]).toEqual(['INVALID_ARGUMENT', 'request_id is longer than 128 characters']);
  });
});

test('without authorization, request_id is shared as before (one idempotency key space)', async () => {
  const { srv } = await startSecured();
  try {
    const c1 = mk(srv);
    const c2 = mk(srv);
    const spec = partitionSpec();
    const p1 = await c1.partitions.createPartition({ requestId: 'shared', partition: spec });
    const p2 = await c2.partitions.createPartition({ requestId: 'shared', partition: spec });
    expect([p2.name, p2.requestId]).toEqual([p1.name, 'shared']);
    const e = await failure(c2.partitions.createPartition({ requestId: 'shared', partitionId: 'other', partition: spec }));
    expect([e.codeName, e.message]).toEqual(['ALREADY_EXISTS', 'request_id shared was already used for a different CreatePartition']);
    expect((await c1.partitions.listPartitions({})).partitions.map((p: pb.Partition) => p.name)).toEqual([p1.name]);
  } finally {
    await srv.shutdown('test');
  }
});
