// Fleet mode's pure parts: the etcd flags of both processes and the record codecs (newer formats are
// kept as incompatible, never half-read).
import { pb } from '@vsm/api';
import { UsageError, parseConfig } from '../src/config';
import { parseAgentFleet } from '../src/fleet';
import { FLEET_FORMAT, decodeMember, decodeRecord, encodeMember, encodeRecord, isIncompatible, recordToPartition } from '../src/fleet/records';

const service = (args: string[]) => parseConfig(['--backend', 'agent', ...args], {});

describe('fleet flags', () => {
  it('parses endpoints, prefix and TLS files; bare HOST:PORT is http, https with a CA', () => {
    expect(service(['--etcd-endpoints', '127.0.0.1:2379,http://[::1]:2379/']).fleet).toEqual({
      endpoints: ['http://127.0.0.1:2379', 'http://[::1]:2379'],
      prefix: '/vsm/',
      tls: undefined,
      checkpointDir: undefined,
      checkpointIntervalMs: 300_000,
      replicaTtlSeconds: undefined,
    });
    // Durability across agents: --checkpoint-dir (an existing directory), its interval, the replica's presence TTL.
    expect(service(['--etcd-endpoints', 'x:1', '--checkpoint-dir', __dirname, '--checkpoint-interval', '0', '--replica-ttl', '3']).fleet).toMatchObject({
      checkpointDir: __dirname,
      checkpointIntervalMs: 0,
      replicaTtlSeconds: 3,
    });
    expect(service(['--etcd-endpoints', 'etcd:2379', '--etcd-ca', __filename, '--etcd-prefix', '/a/b/']).fleet).toMatchObject({
      endpoints: ['https://etcd:2379'],
      prefix: '/a/b/',
      tls: { caFile: __filename },
    });
    expect(service([]).fleet).toBeUndefined();
  });

  it.each([
    [['--etcd-endpoints', 'ftp://x:1'], /not http\(s\)/],
    [['--etcd-endpoints', ','], /at least one URL/],
    [['--etcd-endpoints', 'x:1', '--etcd-prefix', 'vsm'], /start and end with \//],
    [['--etcd-prefix', '/vsm/'], /need --etcd-endpoints/],
    [['--etcd-endpoints', 'x:1', '--etcd-cert', __filename], /go together/],
    [['--etcd-endpoints', 'http://x:1', '--etcd-ca', __filename], /plaintext http/],
    [['--etcd-endpoints', 'x:1', '--etcd-ca', '/nonexistent/ca.pem'], /does not exist/],
    [['--checkpoint-dir', '/tmp'], /fleet mode/],
    [['--etcd-endpoints', 'x:1', '--checkpoint-dir', '/nonexistent/dir'], /existing directory/],
    [['--etcd-endpoints', 'x:1', '--checkpoint-dir', __filename], /existing directory/],
    [['--etcd-endpoints', 'x:1', '--checkpoint-interval', '5'], /needs --checkpoint-dir/],
    [['--etcd-endpoints', 'x:1', '--checkpoint-dir', '/tmp', '--checkpoint-interval', '1.5'], /whole seconds/],
    [['--etcd-endpoints', 'x:1', '--replica-ttl', '0'], /replica-ttl/],
  ])('refuses %j', (args, msg) => {
    expect(() => service(args)).toThrow(UsageError);
    expect(() => service(args)).toThrow(msg);
  });

  it('agent: --advertise defaults to a specific --listen; labels, TTL and capacity are checked', () => {
    const cfg = parseConfig(['--etcd-endpoints', 'x:1'], {});
    const own = (o: Record<string, string>) => new Map(Object.entries(o));
    expect(parseAgentFleet(own({}), {}, { listen: '10.0.0.7:50061', service: cfg })).toMatchObject({
      advertise: '10.0.0.7:50061',
      name: '10.0.0.7:50061',
      leaseTtlSeconds: 10,
    });
    expect(
      parseAgentFleet(
        own({ advertise: 'node-7:50061', 'agent-name': 'node-7', 'agent-labels': 'zone=a,cpu=x', 'lease-ttl': '3' }),
        {},
        { listen: '0.0.0.0:50061', service: cfg },
      ),
    ).toMatchObject({ advertise: 'node-7:50061', name: 'node-7', labels: { zone: 'a', cpu: 'x' }, leaseTtlSeconds: 3 });
    expect(() => parseAgentFleet(own({}), {}, { listen: '0.0.0.0:50061', service: cfg })).toThrow(/needs --advertise/);
    expect(() => parseAgentFleet(own({ 'agent-labels': 'bad' }), {}, { listen: '1.2.3.4:1', service: cfg })).toThrow(/key=value/);
    expect(() => parseAgentFleet(own({ 'lease-ttl': '0' }), {}, { listen: '1.2.3.4:1', service: cfg })).toThrow(/lease-ttl/);
    expect(() => parseAgentFleet(own({ advertise: 'x:1' }), {}, { listen: '1.2.3.4:1', service: parseConfig([], {}) })).toThrow(/needs --etcd-endpoints/);
    // Checkpoints are the service replicas' business.
    const withDir = parseConfig(['--etcd-endpoints', 'x:1', '--checkpoint-dir', '/tmp'], {});
    expect(() => parseAgentFleet(own({}), {}, { listen: '1.2.3.4:1', service: withDir })).toThrow(/vsm-service’s/);
  });
});

describe('fleet records', () => {
  const rec = {
    format: FLEET_FORMAT,
    id: 'p1',
    agent: 'a',
    incarnation: 'i',
    state: 'UNAVAILABLE' as const,
    stateReason: 'agent a left',
    stateTimeUnixMs: 5,
    generation: 3,
    createTimeUnixMs: 4,
    requestId: 'r',
    vpCount: 2,
    memoryBytes: 1n << 40n,
    partition: pb.Partition.toJSON(pb.Partition.fromPartial({ name: 'partitions/p1', vpCount: 2, memoryBytes: 1n << 40n, enabledVtlSet: 1 })),
  };

  it('round-trips a record and shows it as the API does', () => {
    const back = decodeRecord(encodeRecord(rec));
    expect(back).toEqual(rec);
    const p = recordToPartition(back as typeof rec);
    expect(p).toMatchObject({ name: 'partitions/p1', agent: 'a', state: pb.PartitionState.PARTITION_STATE_UNAVAILABLE, stateReason: 'agent a left' });
    expect(p.stateTimeUnixMs).toBe(5n);
    expect(p.memoryBytes).toBe(1n << 40n);
  });

  it('keeps the durability fields, fields it does not know, and never a checkpoint path outside its directory', () => {
    const full = {
      ...rec,
      recoveryPolicy: 'RESTART' as const,
      checkpoint: { file: 'p1.1.ab.vsmsnap', timeUnixMs: 9, bytes: 100, sha256: 'ff' },
      creator: 'r-1',
    };
    const raw = JSON.parse(encodeRecord(full));
    raw.futureField = { x: 1 };
    const back = decodeRecord(JSON.stringify(raw));
    expect(back).toEqual({ ...full, extra: { futureField: { x: 1 } } });
    // Rewritten by this version: the unknown field survives.
    expect(JSON.parse(encodeRecord({ ...(back as typeof full), state: 'ACTIVE' })).futureField).toEqual({ x: 1 });
    const p = recordToPartition(back as typeof full);
    expect(p.recoveryPolicy).toBe(pb.RecoveryPolicy.RECOVERY_POLICY_RESTART);
    expect(p.checkpointTimeUnixMs).toBe(9n);
    for (const file of ['../etc/passwd', '/abs', '.hidden', 'a/b']) {
      const d = decodeRecord(JSON.stringify({ ...raw, checkpoint: { ...full.checkpoint, file } }));
      expect((d as typeof full).checkpoint).toBeUndefined();
    }
    // CREATING shows UNAVAILABLE (calls on it answer so), saying what is going on.
    const creating = recordToPartition({ ...full, state: 'CREATING', recovering: { agent: 'old', incarnation: 'o', stateReason: 'lost', stateTimeUnixMs: 1 } });
    expect(creating.state).toBe(pb.PartitionState.PARTITION_STATE_UNAVAILABLE);
    expect(creating.stateReason).toMatch(/being restarted from its checkpoint on agent a/);
  });

  it('keeps newer formats, non-JSON and incomplete values as incompatible with the reason', () => {
    for (const [raw, why] of [
      [JSON.stringify({ ...rec, format: FLEET_FORMAT + 1, memoryBytes: '1' }), /newer version/],
      ['not json', /not JSON/],
      [JSON.stringify({ format: 1, id: 'x', agent: 'a', state: 'MIGRATING' }), /unknown state/],
      [JSON.stringify({ id: 'x' }), /no format/],
    ] as const) {
      const d = decodeRecord(raw);
      expect(isIncompatible(d) && d.reason).toMatch(why);
    }
    const m = {
      format: 1,
      name: 'n',
      address: 'h:1',
      incarnation: 'i',
      backend: 'kvm',
      version: 'v',
      registerTimeUnixMs: 1,
      labels: { a: 'b' },
      capacity: { partitions: 1, vps: 2, memoryBytes: 3n, memslots: 4 },
    };
    expect(decodeMember(encodeMember(m))).toEqual(m);
    expect(isIncompatible(decodeMember(JSON.stringify({ format: 2 })))).toBe(true);
  });
});
