// Hardening (issue #19, finding 5): half-sent requests cannot hold unbounded memory. Measured on
// the service process (services/vsm-service/dist/main.js) with raw HTTP/2 clients that start
// WriteGpa requests declaring 8 MiB bodies and never finish them:
//   - a principal holding no role for the method is refused from the headers: its bodies are
//     never read;
//   - a principal with the role is bounded by --max-request-bytes-per-client, everybody together by
//     --max-request-bytes; calls over the budget are refused RESOURCE_EXHAUSTED.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as http2 from 'node:http2';
import { connect, type pb } from '@vsm/client';
import { type ChildService, spawnService } from '../support/child-service';
import { tempDir } from '../support/tls';
import { tokenHash } from './support';
import { MiB, type RawCall, openCall, rssOf, sampleRss, writeWithin } from './raw-grpc';

let dir: string;
let svc: ChildService;
beforeAll(async () => {
  dir = tempDir('vsm-request-memory-');
  const policy = path.join(dir, 'policy.json');
  fs.writeFileSync(
    policy,
    JSON.stringify({
      principals: {
        boss: { tokens: [tokenHash('boss-token')], roles: { 'partitions/*': ['admin'] } },
        w1: { tokens: [tokenHash('w1-token')], roles: { 'partitions/*': ['operator'] } },
        w2: { tokens: [tokenHash('w2-token')], roles: { 'partitions/*': ['operator'] } },
        norole: { tokens: [tokenHash('norole-token')] },
        viewer: { tokens: [tokenHash('viewer-token')], roles: { 'partitions/*': ['viewer'] } },
      },
    }),
  );
  svc = await spawnService(['--authz-policy', policy, '--max-request-bytes', '96M', '--max-request-bytes-per-client', '64M'], {
    name: 'vsm-service (request memory)',
  });
  const boss = connect(svc.address, { token: 'boss-token', retries: 0, deadlineMs: 10_000 });
  await boss.partitions.createPartition({ partitionId: 'mem', partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
  boss.close();
}, 60_000);
afterAll(async () => {
  await svc?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const DECLARED = 8 * MiB - 64; // a valid size (the limit is 8 MiB)
const CHUNK = Buffer.alloc(64 * 1024, 0x41);

/**
 * `calls` WriteGpa requests as `token` spread over `connections` HTTP/2 connections; each sends the
 * length prefix of an 8 MiB message, then its body up to one byte short, and never finishes. Resolves
 * once every call has either sent all it will send or stopped making progress.
 */
async function halfSend(token: string, calls: number, connections: number): Promise<{ calls: RawCall[]; sessions: http2.ClientHttp2Session[] }> {
  const sessions = Array.from({ length: connections }, () => http2.connect(`http://${svc.address}`));
  for (const s of sessions) {
    s.on('error', () => undefined);
    s.setMaxListeners(0);
  }
  const out: RawCall[] = [];
  const header = Buffer.alloc(5);
  header.writeUInt32BE(DECLARED, 1);
  await Promise.all(
    Array.from({ length: calls }, async (_, i) => {
      const call = openCall(svc.address, '/vsm.v1.MemoryService/WriteGpa', { token, session: sessions[i % connections] });
      out.push(call);
      if (!(await writeWithin(call.stream, header, 5000))) return;
      for (let sent = 0; sent + CHUNK.length < DECLARED; sent += CHUNK.length) if (!(await writeWithin(call.stream, CHUNK, 3000))) return;
    }),
  );
  return { calls: out, sessions };
}

const statusOf = async (c: RawCall, ms = 2000) => Promise.race([c.ended, new Promise<'open'>((r) => setTimeout(() => r('open'), ms))]);

test('a principal with no role: 100 unfinished 8 MiB requests on 4 connections are refused from their headers, nothing is buffered', async () => {
  const pid = svc.child.pid!;
  const base = rssOf(pid);
  const rss = sampleRss(pid);
  const { calls, sessions } = await halfSend('norole-token', 100, 4);
  const ends = await Promise.all(calls.map((c) => statusOf(c)));
  const peak = rss.stop();
  for (const s of sessions) s.destroy();
  console.log(`no role: RSS ${Math.round(base / MiB)} MiB -> peak ${Math.round(peak / MiB)} MiB`);
  expect(ends.every((e) => e !== 'open' && e.grpcStatus === 7)).toBe(true); // PERMISSION_DENIED
  expect((ends[0] as { grpcMessage?: string }).grpcMessage).toBe('norole may not call vsm.v1.MemoryService/WriteGpa on any partition (needs role operator)');
  expect(peak - base).toBeLessThan(48 * MiB);
}, 300_000);

test('principals with the role: bounded per principal and in total; over the budget RESOURCE_EXHAUSTED; the budget comes back', async () => {
  const pid = svc.child.pid!;
  const base = rssOf(pid);
  const rss = sampleRss(pid);
  const a = await halfSend('w1-token', 20, 2);
  const b = await halfSend('w2-token', 20, 2);
  const [ea, eb] = await Promise.all([Promise.all(a.calls.map((c) => statusOf(c))), Promise.all(b.calls.map((c) => statusOf(c)))]);
  const peak = rss.stop();
  const held = (ends: typeof ea) => ends.filter((e) => e === 'open').length;
  const refused = (ends: typeof ea) => ends.filter((e) => e !== 'open' && e.grpcStatus === 8) as { grpcMessage?: string }[];
  console.log(
    `w1 held ${held(ea)}, refused ${refused(ea).length}; w2 held ${held(eb)}, refused ${refused(eb).length}; RSS ${Math.round(base / MiB)} MiB -> peak ${Math.round(peak / MiB)} MiB`,
  );
  // 64 MiB per principal: at most 8 of w1's 8 MiB requests are being received at once.
  expect(held(ea)).toBeLessThanOrEqual(8);
  expect(held(ea) + refused(ea).length).toBe(20);
  expect(
    refused(ea).some((e) =>
      /^requests of client principal:w1 still being received would hold more than 67108864 bytes; finish or cancel some first$/.test(e.grpcMessage ?? ''),
    ),
  ).toBe(true);
  // 96 MiB in total: w2 gets what w1 left.
  expect(held(ea) + held(eb)).toBeLessThanOrEqual(12);
  expect(held(eb) + refused(eb).length).toBe(20);
  expect(
    refused(eb).some((e) => /^requests still being received on this server would hold more than 100663296 bytes; retry later$/.test(e.grpcMessage ?? '')),
  ).toBe(true);
  // What the budget lets be held (96 MiB) plus the churn of reading it (copies, read buffers not yet
  // collected); before the budget: 40 x 8 MiB held (~+400 MiB).
  expect(peak - base).toBeLessThan(200 * MiB);
  // The clients go away: their budget comes back, a 1 MiB write goes through.
  for (const s of [...a.sessions, ...b.sessions]) s.destroy();
  const w1 = connect(svc.address, { token: 'w1-token', retries: 0, deadlineMs: 30_000 });
  try {
    const t0 = Date.now();
    for (;;) {
      try {
        await w1.memory.writeGpa({ name: 'partitions/mem', gpa: 0n, data: Buffer.alloc(MiB, 1) });
        break;
      } catch (e) {
        if (Date.now() - t0 > 20_000) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    w1.close();
  }
}, 300_000);
