// Hardening (issue #19): authorization of long-lived streams.
//   finding 3: when the policy file changes, open streams are checked again - a principal that lost
//     its credentials or its role has its Monitor and WatchVtlTransitions streams ended
//     (UNAUTHENTICATED / PERMISSION_DENIED), and its Monitor answers are no longer applied;
//   finding 10: a stream takes its slot only once it is authorized, a Monitor that does not send its
//     subscribe message in time is ended (DEADLINE_EXCEEDED), and a principal holding no role cannot
//     hold slots.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connect, pb, type VsmClient, VsmError } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { failure } from '../support/server';
import { tempDir } from '../support/tls';
import { waitFor } from '../support/wait';
import { type LogLine, VTL1_LAYOUT, audits, partitionSpec, setupVtl1Partition, startSecured, tokenHash } from './support';

const clients: VsmClient[] = [];
afterAll(() => {
  for (const c of clients) c.close();
});

const subscribe = (name: string) => ({ kind: { $case: 'subscribe' as const, value: { name, accessMask: 0 } as pb.MonitorSubscribe } });

/** Collects a stream's messages; `end` resolves with its error (or 'ok'). */
function collect<T>(it: AsyncIterable<T>): { got: T[]; end: Promise<VsmError | 'ok'> } {
  const got: T[] = [];
  const end = (async () => {
    try {
      for await (const m of it) got.push(m);
      return 'ok' as const;
    } catch (e) {
      if (e instanceof VsmError) return e;
      throw e;
    }
  })();
  return { got, end };
}

describe('finding 3: open streams follow policy changes', () => {
  let dir: string;
  let file: string;
  let srv: RunningServer;
  let lines: LogLine[];
  const writePolicy = (principals: Record<string, unknown>) => fs.writeFileSync(file, JSON.stringify({ principals }));
  const boss = { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } };
  const reloads = () => lines.filter((l) => l.msg === 'authorization policy reloaded').length;

  beforeAll(async () => {
    dir = tempDir('vsm-stream-authz-');
    file = path.join(dir, 'policy.json');
    writePolicy({ boss, mon: { tokens: [tokenHash('mon-token')], roles: { 'partitions/*': ['monitor', 'viewer'] } } });
    ({ srv, lines } = await startSecured({ security: { authzPolicy: { file, reloadIntervalMs: 50 } } }));
  });
  afterAll(async () => {
    await srv.shutdown('test');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('role taken away: Monitor ends PERMISSION_DENIED, the watch it may still hold stays; principal dropped: the watch ends UNAUTHENTICATED', async () => {
    const bossC = connect(srv.address, { token: 'boss-token', retries: 0, deadlineMs: 10_000 });
    const mon = connect(srv.address, { token: 'mon-token', retries: 0, deadlineMs: 10_000 });
    clients.push(bossC, mon);
    await bossC.partitions.createPartition({ partitionId: 'r1', partition: partitionSpec() });
    const m = mon.intercepts.monitor();
    m.send(subscribe('partitions/r1'));
    const monitor = collect(m.events);
    const watch = collect(mon.vtl.watchTransitions({ name: 'partitions/r1' }));
    await waitFor('the subscription answer', () => monitor.got.length > 0);
    await waitFor('both streams tracked', () => srv.guard.trackedStreams === 2);

    // mon keeps its token and viewer, loses monitor.
    let n = reloads();
    writePolicy({ boss, mon: { tokens: [tokenHash('mon-token')], roles: { 'partitions/*': ['viewer'] } } });
    await waitFor('the reload', () => reloads() > n);
    const e = await monitor.end;
    expect(e).toBeInstanceOf(VsmError);
    expect([(e as VsmError).codeName, (e as VsmError).reason, (e as VsmError).message]).toEqual([
      'PERMISSION_DENIED',
      'HV_STATUS_ACCESS_DENIED',
      'mon may no longer call vsm.v1.InterceptService/Monitor on partitions/r1 (needs role monitor); the authorization policy changed',
    ]);
    expect(srv.guard.trackedStreams).toBe(1); // the watch: viewer still allows it

    // mon is dropped from the policy: its token names nobody any more.
    n = reloads();
    writePolicy({ boss });
    await waitFor('the reload', () => reloads() > n);
    const we = await watch.end;
    expect(we).toBeInstanceOf(VsmError);
    expect([(we as VsmError).codeName, (we as VsmError).reason]).toEqual(['UNAUTHENTICATED', 'HV_STATUS_ACCESS_DENIED']);
    expect((we as VsmError).message).toMatch(/unknown bearer token \(the authorization policy changed while vsm.v1.VtlService\/WatchVtlTransitions was open\)/);
    await waitFor('slots returned', () => srv.guard.streams.active === 0);
    expect(srv.guard.trackedStreams).toBe(0);
    // Each revocation is audited.
    expect(
      audits(lines, 'deny')
        .filter((l) => l.msg === 'audit: open stream ended, authorization revoked')
        .map((l) => [l.principal, l.method, l.resource]),
    ).toEqual([
      ['mon', 'vsm.v1.InterceptService/Monitor', 'partitions/r1'],
      ['mon', 'vsm.v1.VtlService/WatchVtlTransitions', 'partitions/r1'],
    ]);
  }, 60_000);

  test('a revoked monitor receives no further intercept and its answer is not applied; the next monitor gets it', async () => {
    writePolicy({ boss, mon2: { tokens: [tokenHash('mon2-token')], roles: { 'partitions/*': ['monitor'] } } });
    await waitFor('mon2 known', async () => {
      const probe = connect(srv.address, { token: 'mon2-token', retries: 0, deadlineMs: 5000 });
      try {
        const s = probe.intercepts.monitor();
        s.send(subscribe('partitions/none'));
        const r = await failure(
          (async () => {
            for await (const _ of s.events) return;
          })(),
        );
        return r.codeName === 'NOT_FOUND';
      } finally {
        probe.close();
      }
    });
    const bossC = connect(srv.address, { token: 'boss-token', retries: 0, deadlineMs: 20_000 });
    const mon2 = connect(srv.address, { token: 'mon2-token', retries: 0, deadlineMs: 20_000 });
    clients.push(bossC, mon2);
    const secret = Buffer.from('vtl1-secret');
    const { name, vps } = await setupVtl1Partition(bossC, 'r2', 1, secret);
    await bossC.intercepts.setInterceptRoute({ name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR });
    const m = mon2.intercepts.monitor();
    m.send(subscribe(name));
    const monitor = collect(m.events);
    await waitFor('the subscription answer', () => monitor.got.length > 0);

    // Revoked (principal dropped) while the stream is open.
    const n = reloads();
    writePolicy({ boss });
    await waitFor('the reload', () => reloads() > n);
    const e = await monitor.end;
    expect((e as VsmError).codeName).toBe('UNAUTHENTICATED');

    // VP0 in VTL0 reads the protected page: the intercept waits for a monitor.
    const read = bossC.guest.readMemory({ name: vps[0]!, gpa: VTL1_LAYOUT.secretGpa, length: 4 });
    let pending: pb.InterceptEvent[] = [];
    await waitFor('the pending intercept', async () => (pending = (await bossC.intercepts.listPendingIntercepts({ name })).intercepts).length === 1);
    // The revoked monitor's stream took nothing more; an answer sent on it now goes nowhere.
    expect(monitor.got.map((r) => r.kind?.$case)).toEqual(['subscription']);
    m.send({
      kind: {
        $case: 'reply',
        value: { interceptId: pending[0]!.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_SKIP, data: Buffer.from('FAKE') } as pb.InterceptReply,
      },
    });
    await new Promise((r) => setTimeout(r, 200));
    expect((await bossC.intercepts.listPendingIntercepts({ name })).intercepts.map((x) => x.interceptId)).toEqual([pending[0]!.interceptId]);

    // An authorized monitor (boss is admin) receives it, redelivered or not, and answers ALLOW.
    const b = bossC.intercepts.monitor();
    b.send(subscribe(name));
    for await (const ev of b.events) {
      if (ev.kind?.$case !== 'intercept') continue;
      expect(ev.kind.value.interceptId).toBe(pending[0]!.interceptId);
      b.send({
        kind: {
          $case: 'reply',
          value: { interceptId: ev.kind.value.interceptId, action: pb.InterceptAction.INTERCEPT_ACTION_ALLOW, data: Buffer.alloc(0) } as pb.InterceptReply,
        },
      });
      break;
    }
    const r = await read;
    // ALLOW performed the read (the real bytes), not the revoked monitor's SKIP with FAKE.
    expect(Buffer.from(r.data).toString()).toBe(secret.subarray(0, 4).toString());
    b.cancel();
  }, 60_000);
});

describe('finding 10: stream slots and the first message', () => {
  test('a Monitor holds no slot before its subscribe is authorized, and one that never subscribes is ended DEADLINE_EXCEEDED', async () => {
    const { srv, lines } = await startSecured({
      firstMessageTimeoutMs: 500,
      security: {
        limits: { maxStreams: 4, maxStreamsPerClient: 2 },
        authzPolicy: {
          file: writeTemp({
            boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } },
            m: { tokens: [tokenHash('m-token')], roles: { 'partitions/x-*': ['monitor'] } },
          }),
        },
      },
    });
    try {
      const boss = connect(srv.address, { token: 'boss-token', retries: 0, deadlineMs: 10_000 });
      const m = connect(srv.address, { token: 'm-token', retries: 0, deadlineMs: 10_000 });
      clients.push(boss, m);
      await boss.partitions.createPartition({ partitionId: 'x-1', partition: partitionSpec() });
      // Three monitors of m that never subscribe: none takes one of m's two slots.
      const silent = [0, 1, 2].map(() => {
        const s = m.intercepts.monitor();
        return { s, c: collect(s.events) };
      });
      await waitFor('the silent streams to reach the server', () => lines.filter((l) => l.msg === 'stream opened').length >= 3);
      expect(srv.guard.streams.active).toBe(0);
      // m can still subscribe (twice: its limit).
      const live = [0, 1].map(() => {
        const s = m.intercepts.monitor();
        s.send(subscribe('partitions/x-1'));
        return { s, c: collect(s.events) };
      });
      await waitFor('both subscriptions answered', () => live.every((l) => l.c.got.length > 0));
      expect(srv.guard.streams.active).toBe(2);
      // The silent ones are ended: DEADLINE_EXCEEDED, with a message that says what was expected.
      for (const { c } of silent) {
        const e = await c.end;
        expect(e).toBeInstanceOf(VsmError);
        expect([(e as VsmError).codeName, (e as VsmError).reason, (e as VsmError).message]).toEqual([
          'DEADLINE_EXCEEDED',
          'HV_STATUS_TIME_OUT',
          'Monitor: no first message within 500 ms of opening the stream; send subscribe right after opening it',
        ]);
      }
      // The live ones were not affected by the timeout.
      expect(live.every((l) => l.c.got.length === 1)).toBe(true);
      for (const l of live) l.s.cancel();
      await waitFor('slots returned', () => srv.guard.streams.active === 0);
    } finally {
      await srv.shutdown('test');
    }
  }, 60_000);

  test('a principal with no role holds no slot: its streams are refused before any', async () => {
    const { srv } = await startSecured({
      security: {
        limits: { maxStreams: 4, maxStreamsPerClient: 4 },
        authzPolicy: {
          file: writeTemp({ boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } }, none: { tokens: [tokenHash('none-token')] } }),
        },
      },
    });
    try {
      const boss = connect(srv.address, { token: 'boss-token', retries: 0, deadlineMs: 10_000 });
      const none = connect(srv.address, { token: 'none-token', retries: 0, deadlineMs: 10_000 });
      clients.push(boss, none);
      await boss.partitions.createPartition({ partitionId: 'n-1', partition: partitionSpec() });
      // More streams than the server-wide limit, none of them sends anything: all are refused
      // PERMISSION_DENIED at once, and nobody else is locked out.
      const opened = Array.from({ length: 8 }, () => collect(none.intercepts.monitor().events));
      const watches = Array.from({ length: 8 }, () => collect(none.vtl.watchTransitions({ name: 'partitions/n-1' })));
      for (const o of [...opened, ...watches]) expect(((await o.end) as VsmError).codeName).toBe('PERMISSION_DENIED');
      expect(srv.guard.streams.active).toBe(0);
      const s = boss.intercepts.monitor();
      s.send(subscribe('partitions/n-1'));
      const c = collect(s.events);
      await waitFor('the subscription answer', () => c.got.length > 0);
      expect(srv.guard.streams.active).toBe(1);
      s.cancel();
    } finally {
      await srv.shutdown('test');
    }
  }, 60_000);
});

const tmpDirs: string[] = [];
afterAll(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});
function writeTemp(principals: Record<string, unknown>): string {
  const d = tempDir('vsm-slots-');
  tmpDirs.push(d);
  const f = path.join(d, 'policy.json');
  fs.writeFileSync(f, JSON.stringify({ principals }));
  return f;
}
