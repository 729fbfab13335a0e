// Security: authentication (bearer tokens) and role-based authorization for every kind of call -
// unary, server stream (WatchVtlTransitions), bidi stream (Monitor) - with audit log lines.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect, pb, type VsmClient } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { parsePolicy } from '@vsm/vsm-v1/security';
import { failure } from '../support/server';
import { tempDir } from '../support/tls';
import { type LogLine, audits, partitionSpec, startSecured, tokenHash } from './support';
import { HvMsr } from '@vsm/core';

const policy = parsePolicy(
  JSON.stringify({
    principals: {
      boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } },
      viewer: { tokens: [tokenHash('viewer-token')], roles: { 'partitions/*': ['viewer'] } },
      prodops: { tokens: [tokenHash('prodops-token')], roles: { 'partitions/*': ['viewer'], 'partitions/prod-*': ['operator'] } },
      prodmon: { tokens: [tokenHash('prodmon-token')], roles: { 'partitions/prod-*': ['monitor', 'viewer'] } },
      nobody: { tokens: [tokenHash('nobody-token')] },
    },
  }),
);

let srv: RunningServer;
let lines: LogLine[];
const clients: VsmClient[] = [];
const as = (token?: string) => {
  const c = connect(srv.address, { token, deadlineMs: 5000, retries: 0 });
  clients.push(c);
  return c;
};
let boss: VsmClient, viewer: VsmClient, prodops: VsmClient, prodmon: VsmClient, nobody: VsmClient, anonymous: VsmClient;

beforeAll(async () => {
  ({ srv, lines } = await startSecured({ security: { authzPolicy: policy } }));
  [boss, viewer, prodops, prodmon, nobody, anonymous] = [
    as('boss-token'),
    as('viewer-token'),
    as('prodops-token'),
    as('prodmon-token'),
    as('nobody-token'),
    as(),
  ];
  for (const id of ['prod-1', 'dev-1']) await boss.partitions.createPartition({ partitionId: id, partition: partitionSpec(1, 1) });
});
afterAll(async () => {
  for (const c of clients) c.close();
  await srv.shutdown('test');
});

const denied = async (p: Promise<unknown>, code = grpc.status.PERMISSION_DENIED) => {
  const e = await failure(p);
  expect({ code: e.codeName, reason: e.reason, domain: e.domain }).toEqual({ code: grpc.status[code], reason: 'HV_STATUS_ACCESS_DENIED', domain: 'vsm.v1' });
  return e;
};

describe('authentication', () => {
  test('no credentials or an unknown token: UNAUTHENTICATED, audit-logged at warn', async () => {
    const before = lines.length;
    const e = await denied(anonymous.partitions.getCapabilities({}), grpc.status.UNAUTHENTICATED);
    expect(e.message).toMatch(/no credentials/);
    await denied(as('not-a-token').partitions.getPartition({ name: 'partitions/prod-1' }), grpc.status.UNAUTHENTICATED);
    const entries = audits(lines.slice(before), 'deny');
    expect(entries).toHaveLength(2);
    expect(entries[0]).toMatchObject({
      level: 40,
      principal: null,
      method: 'vsm.v1.PartitionService/GetCapabilities',
      decision: 'deny',
      reason: expect.stringMatching(/no credentials/),
    });
    expect(entries[1]).toMatchObject({ level: 40, principal: null, method: 'vsm.v1.PartitionService/GetPartition', reason: 'unknown bearer token' });
  });

  test('health needs no credentials; reflection does', async () => {
    const health = new grpc.Client(srv.address, grpc.credentials.createInsecure());
    const check = await new Promise<Buffer>((resolve, reject) =>
      health.makeUnaryRequest(
        '/grpc.health.v1.Health/Check',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        (e, r) => (e ? reject(e) : resolve(r!)),
      ),
    );
    expect([...check]).toEqual([0x08, 0x01]); // status: SERVING
    const refl = health.makeBidiStreamRequest(
      '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
      (b: Buffer) => b,
      (b: Buffer) => b,
    );
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      refl.on('error', resolve);
      refl.on('data', () => undefined);
      refl.write(Buffer.from([0x3a, 0x01, 0x2a]));
    });
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    health.close();
  });
});

describe('authorization (unary)', () => {
  test('deny by default: a principal without grants can call nothing; audit has principal/method/resource/decision', async () => {
    const before = lines.length;
    await denied(nobody.partitions.getCapabilities({}));
    await denied(nobody.partitions.listPartitions({}));
    // Holding the method's role on no partition at all, the call is refused from its headers: its
    // request (which names the partition) is never read.
    const e = await denied(nobody.partitions.getPartition({ name: 'partitions/prod-1' }));
    expect(e.message).toBe('nobody may not call vsm.v1.PartitionService/GetPartition on any partition (needs role viewer)');
    // A caller with the role somewhere is refused on the partition its request names.
    const e2 = await denied(prodmon.partitions.getPartition({ name: 'partitions/dev-1' }));
    expect(e2.message).toBe('prodmon may not call vsm.v1.PartitionService/GetPartition on partitions/dev-1 (needs role viewer)');
    const entries = audits(lines.slice(before), 'deny');
    expect(entries.map((l) => [l.principal, l.method, l.resource, l.decision, l.level])).toEqual([
      ['nobody', 'vsm.v1.PartitionService/GetCapabilities', '(any partition)', 'deny', 40],
      ['nobody', 'vsm.v1.PartitionService/ListPartitions', '(any partition)', 'deny', 40],
      ['nobody', 'vsm.v1.PartitionService/GetPartition', '(any partition)', 'deny', 40],
      ['prodmon', 'vsm.v1.PartitionService/GetPartition', 'partitions/dev-1', 'deny', 40],
    ]);
  });

  test('viewer reads everything and changes nothing', async () => {
    expect((await viewer.partitions.getPartition({ name: 'partitions/prod-1' })).name).toBe('partitions/prod-1');
    expect((await viewer.partitions.listPartitions({})).partitions.map((p) => p.name).sort()).toEqual(['partitions/dev-1', 'partitions/prod-1']);
    await viewer.vps.getVpRegisters({ name: 'partitions/dev-1/vps/0', names: [pb.HvRegisterName.HV_REGISTER_NAME_X64_RIP] });
    await viewer.memory.readGpa({ name: 'partitions/dev-1', gpa: 0n, length: 16 });
    await viewer.intercepts.getVtlProtections({ name: 'partitions/dev-1', protectingVtl: 1 });
    await denied(viewer.guest.writeMsr({ name: 'partitions/dev-1/vps/0', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n }));
    await denied(viewer.guest.readMemory({ name: 'partitions/dev-1/vps/0', gpa: 0n, length: 1 })); // a guest action
    await denied(viewer.memory.writeGpa({ name: 'partitions/dev-1', gpa: 0n, data: Buffer.from([1]) }));
    await denied(viewer.vps.setVpRegisters({ name: 'partitions/dev-1/vps/0', registers: [] }));
    await denied(viewer.partitions.createPartition({ partitionId: 'v-1', partition: partitionSpec() }));
    await denied(viewer.partitions.deletePartition({ name: 'partitions/dev-1' }));
  });

  test('operator on partitions/prod-* acts on prod partitions only; allowed mutating calls are audited at info', async () => {
    const before = lines.length;
    const r = await prodops.guest.writeMsr({ name: 'partitions/prod-1/vps/0', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n });
    expect(r.outcome?.exception).toBe(0);
    await prodops.vtl.enablePartitionVtl({ name: 'partitions/prod-1', targetVtl: 1 });
    await denied(prodops.guest.writeMsr({ name: 'partitions/dev-1/vps/0', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n }));
    await denied(prodops.vtl.enablePartitionVtl({ name: 'partitions/dev-1', targetVtl: 1 }));
    await denied(prodops.partitions.createPartition({ partitionId: 'prod-2', partition: partitionSpec() })); // admin only
    await denied(prodops.partitions.deletePartition({ name: 'partitions/prod-1' }));
    expect((await prodops.partitions.listPartitions({})).partitions).toHaveLength(2); // viewer on partitions/*
    const allowed = audits(lines.slice(before), 'allow');
    expect(allowed.map((l) => [l.principal, l.method, l.resource, l.level])).toEqual([
      ['prodops', 'vsm.v1.GuestService/WriteMsr', 'partitions/prod-1', 30],
      ['prodops', 'vsm.v1.VtlService/EnablePartitionVtl', 'partitions/prod-1', 30],
    ]);
    // Reads are not audited (only mutating calls and denials are).
    expect(audits(lines.slice(before)).filter((l) => l.method === 'vsm.v1.PartitionService/ListPartitions')).toEqual([]);
  });

  test('a viewer of some partitions cannot list all of them, but can read capabilities', async () => {
    await denied(prodmon.partitions.listPartitions({}));
    expect((await prodmon.partitions.getCapabilities({})).backend).toBe('emulator');
    await prodmon.partitions.getPartition({ name: 'partitions/prod-1' });
    await denied(prodmon.partitions.getPartition({ name: 'partitions/dev-1' }));
  });

  test('admin: create with or without an id; without one needs admin on partitions/*', async () => {
    const ci = as('boss-token');
    const p = await ci.partitions.createPartition({ partition: partitionSpec() });
    expect(p.name).toMatch(/^partitions\//);
    await ci.partitions.deletePartition({ name: p.name });
  });

  test('malformed names: INVALID_ARGUMENT for callers who hold the role somewhere, PERMISSION_DENIED otherwise', async () => {
    const e = await failure(prodops.guest.writeMsr({ name: 'not-a-name', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n }));
    expect([e.codeName, e.reason]).toEqual(['INVALID_ARGUMENT', 'HV_STATUS_INVALID_PARAMETER']);
    await denied(viewer.guest.writeMsr({ name: 'not-a-name', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 1n }));
  });
});

describe('authorization (streams)', () => {
  test('WatchVtlTransitions: viewer may watch; principals without viewer are refused', async () => {
    const ac = new AbortController();
    const it = viewer.vtl.watchTransitions({ name: 'partitions/prod-1' }, ac.signal)[Symbol.asyncIterator]();
    // The stream's first event: the watch is registered.
    expect((await it.next()).value?.event?.$case).toBe('subscribed');
    const next = it.next();
    // Make a transition happen: VTL1 on VP0, hypercall page, VtlCall.
    await boss.vtl.enableVpVtl({ name: 'partitions/prod-1/vps/0', targetVtl: 1 });
    await boss.guest.writeMsr({ name: 'partitions/prod-1/vps/0', msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x1001n });
    await boss.guest.callHypercallPage({ name: 'partitions/prod-1/vps/0', offset: 0x0f, rcx: 0n });
    const ev = await next;
    expect(ev.value?.event?.$case).toBe('transition');
    ac.abort();
    await boss.guest.writeMsr({ name: 'partitions/prod-1/vps/0', msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: 2n }); // VTL1 sets up its own hypercall page
    await boss.guest.writeMsr({ name: 'partitions/prod-1/vps/0', msr: HvMsr.HV_X64_MSR_HYPERCALL, value: 0x2001n });
    expect((await boss.guest.callHypercallPage({ name: 'partitions/prod-1/vps/0', offset: 0x26, rcx: 1n })).outcome?.activeVtl).toBe(0); // VtlReturn

    const before = lines.length;
    for (const [c, code] of [
      [nobody, grpc.status.PERMISSION_DENIED],
      [prodmon, grpc.status.PERMISSION_DENIED],
      [anonymous, grpc.status.UNAUTHENTICATED],
    ] as const) {
      const e = await failure(
        (async () => {
          for await (const _ of c.vtl.watchTransitions({ name: 'partitions/dev-1' })) return;
        })(),
      );
      expect([e.codeName, e.reason]).toEqual([grpc.status[code], 'HV_STATUS_ACCESS_DENIED']);
    }
    expect(audits(lines.slice(before), 'deny').map((l) => [l.principal, l.method, l.resource ?? null])).toEqual([
      ['nobody', 'vsm.v1.VtlService/WatchVtlTransitions', '(any partition)'],
      ['prodmon', 'vsm.v1.VtlService/WatchVtlTransitions', 'partitions/dev-1'],
      [null, 'vsm.v1.VtlService/WatchVtlTransitions', null],
    ]);
  });

  test('Monitor: authorized on the subscribe message, before anything is sent', async () => {
    const subscribe = (name: string) => ({ kind: { $case: 'subscribe' as const, value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
    // Allowed: the subscription answer arrives.
    const ok = prodmon.intercepts.monitor();
    ok.send(subscribe('partitions/prod-1'));
    const first = await ok.events[Symbol.asyncIterator]().next();
    expect(first.value?.kind?.$case).toBe('subscription');
    ok.cancel();
    // Denied: not a single message, then PERMISSION_DENIED.
    const before = lines.length;
    for (const [c, target] of [
      [prodmon, 'partitions/dev-1'],
      [viewer, 'partitions/prod-1'],
      [prodops, 'partitions/prod-1'],
    ] as const) {
      const m = c.intercepts.monitor();
      m.send(subscribe(target));
      const got: pb.MonitorResponse[] = [];
      const e = await failure(
        (async () => {
          for await (const r of m.events) got.push(r);
        })(),
      );
      expect([e.codeName, e.reason, got]).toEqual(['PERMISSION_DENIED', 'HV_STATUS_ACCESS_DENIED', []]);
    }
    // viewer and prodops hold the monitor role nowhere: refused from the headers, subscribe unread.
    expect(audits(lines.slice(before), 'deny').map((l) => [l.principal, l.resource])).toEqual([
      ['prodmon', 'partitions/dev-1'],
      ['viewer', '(any partition)'],
      ['prodops', '(any partition)'],
    ]);
    // Allowed Monitor streams are audited (monitoring is a privileged action).
    expect(
      audits(lines, 'allow').some((l) => l.principal === 'prodmon' && l.method === 'vsm.v1.InterceptService/Monitor' && l.resource === 'partitions/prod-1'),
    ).toBe(true);
  });
});

describe('policy file reload', () => {
  test('a changed policy applies without restart; an invalid change keeps the last good one', async () => {
    const dir = tempDir('vsm-policy-');
    const file = path.join(dir, 'policy.json');
    const write = (roles: string[]) =>
      fs.writeFileSync(file, JSON.stringify({ principals: { t: { tokens: [tokenHash('t')], roles: { 'partitions/*': roles } } } }));
    write(['viewer']);
    const s = await startSecured({ security: { authzPolicy: { file, reloadIntervalMs: 50 } } });
    const c = connect(s.srv.address, { token: 't', retries: 0 });
    const waitFor = async (cond: () => boolean) => {
      for (let i = 0; i < 100 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
      expect(cond()).toBe(true);
    };
    try {
      await denied(c.partitions.createPartition({ partitionId: 'x', partition: partitionSpec() }));
      write(['admin']);
      await waitFor(() => s.lines.some((l) => l.msg === 'authorization policy reloaded'));
      await c.partitions.createPartition({ partitionId: 'x', partition: partitionSpec() });
      fs.writeFileSync(file, '{"principals": {"t": {"roles": {"partitions/*": ["superuser"]}}}}');
      await waitFor(() => s.lines.some((l) => /invalid; keeping the current one/.test(l.msg)));
      expect(s.lines.find((l) => /invalid; keeping/.test(l.msg))).toMatchObject({ level: 40, err: expect.stringMatching(/unknown role "superuser"/) });
      await c.partitions.deletePartition({ name: 'partitions/x' }); // still admin
    } finally {
      c.close();
      await s.srv.shutdown('test');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
