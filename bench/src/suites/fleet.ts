// Fleet mode (#14): what routing by etcd records costs, and how fast partitions are created through
// the fleet path. A real single-member etcd (Debian's etcd-server) on a loopback port; one agent
// server in this process (the emulator backend behind vsm.v1: the figures are about the fleet
// layer, not KVM) registered under a lease; then 99 more memberships at the same address (so all
// 100 answer the readiness check and take placements). The FleetBackend under test runs in this
// process: `locate` (record lookup + member check) alone, a routed unary call, and creates/s. For
// comparison, the static --agent list's routing (no etcd: the id's rendezvous-hash owner among the
// addresses, O(addresses) hashes per call) with 1 and 100 addresses.
import { type ChildProcess, spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CoreBackend, FleetBackend, FleetStore, Membership, RemoteBackend, type RunningServer, startServer } from '@vsm/vsm-v1';
import { pb } from '@vsm/client';
import pino from 'pino';
import type { BenchContext, FigureSpec, Suite } from '../api';
import { stopChild, trackChild } from '../lib/children';

const figures: FigureSpec[] = [
  { id: 'fleet.locate.1agent', kind: 'latency', unit: 'us', description: 'FleetBackend routing alone (cached record + membership check), 1 registered agent' },
  { id: 'fleet.locate.100agents', kind: 'latency', unit: 'us', description: 'the same with 100 registered agents' },
  {
    id: 'fleet.route.1agent',
    kind: 'latency',
    unit: 'us',
    description: 'GetVirtualProcessor through the FleetBackend to the agent (gRPC on loopback), 1 agent',
  },
  { id: 'fleet.route.100agents', kind: 'latency', unit: 'us', description: 'the same with 100 registered agents' },
  {
    id: 'fleet.static_locate.1agent',
    kind: 'latency',
    unit: 'us',
    description: 'without etcd: RemoteBackend routing of a static --agent list (rendezvous hash of the id), 1 address',
  },
  { id: 'fleet.static_locate.100agents', kind: 'latency', unit: 'us', description: 'the same with 100 addresses (one SHA-256 per address)' },
  {
    id: 'fleet.create.rate',
    kind: 'rate',
    unit: 'creates/s',
    description: 'CreatePartition through the fleet path (placement, etcd create txn, agent create, etcd ACTIVE txn), 16 in flight, 100 agents',
  },
];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function available(): true | string {
  try {
    execFileSync('etcd', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return 'etcd not installed (scripts/ensure-setup.js installs etcd-server)';
  }
}

async function run(ctx: BenchContext): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-bench-etcd-'));
  const [client, peer] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${client}`;
  const etcd: ChildProcess = spawn(
    'etcd',
    [
      ...['--name', 'b0', '--data-dir', dir, '--listen-client-urls', url, '--advertise-client-urls', url],
      ...['--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`],
      ...['--initial-cluster', `b0=http://127.0.0.1:${peer}`, '--logger', 'zap', '--log-level', 'error'],
    ],
    { stdio: 'ignore' },
  );
  trackChild(etcd);
  const log = pino({ level: 'silent' });
  const fleet = { endpoints: [url], prefix: '/vsm-bench/' };
  let agent: RunningServer | undefined;
  const members: Membership[] = [];
  let backend: FleetBackend | undefined;
  try {
    for (let i = 0; ; i++) {
      try {
        execFileSync('etcdctl', ['--endpoints', url, '--command-timeout=1s', 'endpoint', 'health'], { stdio: 'ignore' });
        break;
      } catch {
        if (i > 100) throw new Error('etcd did not become healthy');
        await ctx.sleep(100);
      }
    }
    agent = await startServer({ listen: '127.0.0.1:0', backend: new CoreBackend(), logger: log, shutdownGraceMs: 100 });
    const address = `127.0.0.1:${agent.port}`;
    const join = async (name: string) => {
      const m = new Membership({
        store: new FleetStore(fleet),
        member: {
          name,
          address,
          backend: 'emulator',
          version: 'bench',
          labels: {},
          capacity: { partitions: 100000, vps: 1000000, memoryBytes: 1n << 40n, memslots: 4096 },
        },
        ttlSeconds: 30,
        log,
      });
      m.start();
      await m.firstRegistration;
      members.push(m);
    };
    await join('agent-000');
    backend = new FleetBackend({ store: new FleetStore(fleet), log });
    backend.start();
    await backend.directory.firstSync;
    const b = backend;
    const waitReady = async (n: number) => {
      while ([...b.directory.members.values()].filter((v) => v.readiness === 'READY').length < n) await ctx.sleep(20);
    };
    await waitReady(1);
    const p = await b.createPartition({
      partition: { vpCount: 1, memoryBytes: 1n << 20n } as never,
      partitionId: 'bench-route',
      requestId: '',
      agent: '',
      agentSelector: {},
    });
    const locate = (b as unknown as { locate(n: string): Promise<unknown> }).locate.bind(b);
    const samples = ctx.pick(20000, 100000);
    const warmup = ctx.pick(2000, 10000);
    const measure = async (n: string) => {
      for (let r = 0; r < ctx.repeats; r++) {
        ctx.recordLatency(`fleet.locate.${n}`, await ctx.sampleLatency(() => locate(`${p.name}/vps/0`), { samples, warmup }));
        ctx.recordLatency(
          `fleet.route.${n}`,
          await ctx.sampleLatency(() => b.getVirtualProcessor({ name: `${p.name}/vps/0` }), { samples: ctx.pick(500, 3000), warmup: 100 }),
        );
      }
    };
    await measure('1agent');
    // The static list's routing needs no agent to answer (channels connect lazily; nothing is called).
    for (const n of [1, 100]) {
      const stat = new RemoteBackend(Array.from({ length: n }, (_, i) => `127.0.0.1:${20000 + i}`));
      const sl = (stat as unknown as { locate(n: string): Promise<unknown> }).locate.bind(stat);
      for (let r = 0; r < ctx.repeats; r++)
        ctx.recordLatency(
          `fleet.static_locate.${n === 1 ? '1agent' : '100agents'}`,
          await ctx.sampleLatency(() => sl('partitions/p-0123456789ab/vps/0'), { samples: ctx.pick(5000, 20000), warmup: 500 }),
        );
      await stat.close();
    }
    ctx.log('registering 99 more agents');
    await Promise.all(Array.from({ length: 99 }, (_, i) => join(`agent-${String(i + 1).padStart(3, '0')}`)));
    await waitReady(100);
    // Their partitions: load spread over all of them.
    await Promise.all(
      Array.from({ length: 200 }, () =>
        b.createPartition({
          partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 1n << 20n }),
          partitionId: '',
          requestId: '',
          agent: '',
          agentSelector: {},
        }),
      ),
    );
    await ctx.sleep(1000); // let the joins' watch events and readiness checks settle
    await measure('100agents');
    for (let r = 0; r < ctx.repeats; r++) {
      const n = ctx.pick(200, 1000);
      let next = 0;
      const made: string[] = [];
      const t0 = process.hrtime.bigint();
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          while (next++ < n)
            made.push(
              (
                await b.createPartition({
                  partition: { vpCount: 1, memoryBytes: 1n << 20n } as never,
                  partitionId: '',
                  requestId: '',
                  agent: '',
                  agentSelector: {},
                })
              ).name,
            );
        }),
      );
      ctx.recordRate('fleet.create.rate', n / (Number(process.hrtime.bigint() - t0) / 1e9));
      // Not timed: the agent's partition limit (4096) must hold over the full run's repeats.
      for (let i = 0; i < made.length; i += 16) await Promise.all(made.slice(i, i + 16).map((name) => b.deletePartition({ name })));
    }
  } finally {
    await backend?.close();
    await Promise.all(members.map((m) => m.close()));
    await agent?.shutdown('bench done');
    await stopChild(etcd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export const suite: Suite = {
  name: 'fleet',
  description: 'fleet mode on a real etcd: routing cost with 1 and 100 registered agents, creates/s through the fleet path',
  figures,
  ratios: [
    {
      figure: 'fleet.locate.100agents.p50',
      baseline: 'fleet.locate.1agent.p50',
      // About 1 µs either way: a map lookup of the record and of its member, O(1) in the fleet's size
      // (a linear search would be ~100x); 2x leaves room for this machine's noise at that scale.
      target: { op: '<=', value: 2 },
      description: 'routing does not grow with the number of agents',
    },
    {
      figure: 'fleet.route.100agents.p50',
      baseline: 'fleet.route.1agent.p50',
      target: { op: '<=', value: 1.5 },
      description: 'a routed call costs the same with 100 agents',
    },
  ],
  budget: { quickSec: 90, fullSec: 240 },
  available,
  run,
};
