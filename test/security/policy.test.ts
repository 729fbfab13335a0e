// Security: the authorization policy (parsing, evaluation, method classification), credential
// parsing and the configuration rules for transport, authorization and limits.
import { Metadata } from '@grpc/grpc-js';
import { pb } from '@vsm/client';
import { parseConfig, UsageError } from '@vsm/vsm-v1';
import {
  METHOD_ROLES,
  PolicyError,
  authenticate,
  isAllowed,
  isLoopbackListen,
  parsePolicy,
  requiredRole,
  resourceOf,
  sha256Hex,
  subjectAltNames,
} from '@vsm/vsm-v1/security';

const policyDoc = {
  principals: {
    ops: { certificates: ['URI:spiffe://vsm.test/ops'], roles: { 'partitions/*': ['viewer'], 'partitions/prod-*': ['operator', 'monitor'] } },
    boss: { tokens: [`sha256:${sha256Hex('boss-token')}`], roles: { 'partitions/*': ['admin'] } },
    ci: { tokens: [`sha256:${sha256Hex('ci-token')}`], roles: { 'partitions/ci-*': ['admin'] } },
    nobody: { tokens: [`sha256:${sha256Hex('nobody-token')}`] },
  },
};
const policy = parsePolicy(JSON.stringify(policyDoc));

describe('policy file', () => {
  test.each([
    ['not JSON', '{', /not valid JSON/],
    ['unknown top-level key', JSON.stringify({ principals: {}, rules: [] }), /rules: unknown key/],
    ['unknown role', JSON.stringify({ principals: { a: { roles: { 'partitions/*': ['root'] } } } }), /unknown role "root"/],
    ['token in clear', JSON.stringify({ principals: { a: { tokens: ['hunter2'] } } }), /sha256:<64 lower-case hex digits>.*never in clear/],
    ['bad pattern', JSON.stringify({ principals: { a: { roles: { 'prod-*': ['viewer'] } } } }), /pattern "prod-\*" must be "partitions\//],
    ['bad SAN', JSON.stringify({ principals: { a: { certificates: ['CN=ops'] } } }), /must be "URI:<uri>" or "DNS:<name>"/],
    ['duplicate SAN', JSON.stringify({ principals: { a: { certificates: ['DNS:x'] }, b: { certificates: ['DNS:x'] } } }), /already identifies principal a/],
    ['typo in a principal', JSON.stringify({ principals: { a: { role: {} } } }), /principals\.a\.role: unknown key/],
    ['bad principal name', JSON.stringify({ principals: { 'a b': {} } }), /principal names must match/],
  ])('%s is refused with a clear message', (_what, text, msg) => {
    expect(() => parsePolicy(text, 'p.json')).toThrow(PolicyError);
    expect(() => parsePolicy(text, 'p.json')).toThrow(msg);
  });

  test('deny by default; globs; admin implies every role; partitions/* covers "all"', () => {
    const p = (id: string) => ({ kind: 'partition' as const, id });
    expect(isAllowed(policy, 'nobody', 'viewer', p('x'))).toBe(false);
    expect(isAllowed(policy, 'stranger', 'viewer', p('x'))).toBe(false);
    expect(isAllowed(policy, 'ops', 'viewer', p('dev-1'))).toBe(true);
    expect(isAllowed(policy, 'ops', 'operator', p('dev-1'))).toBe(false);
    expect(isAllowed(policy, 'ops', 'operator', p('prod-1'))).toBe(true);
    expect(isAllowed(policy, 'ops', 'operator', p('preprod-1'))).toBe(false);
    expect(isAllowed(policy, 'ops', 'admin', p('prod-1'))).toBe(false);
    expect(isAllowed(policy, 'ci', 'operator', p('ci-7'))).toBe(true);
    expect(isAllowed(policy, 'ci', 'monitor', p('ci-7'))).toBe(true);
    expect(isAllowed(policy, 'ci', 'viewer', p('prod-1'))).toBe(false);
    expect(isAllowed(policy, 'ci', 'admin', { kind: 'all' })).toBe(false); // ci-* is not every partition
    expect(isAllowed(policy, 'boss', 'admin', { kind: 'all' })).toBe(true);
    expect(isAllowed(policy, 'ops', 'viewer', { kind: 'all' })).toBe(true);
    expect(isAllowed(policy, 'ops', 'operator', { kind: 'any', label: 'x' })).toBe(true);
    expect(isAllowed(policy, 'nobody', 'viewer', { kind: 'any', label: 'x' })).toBe(false);
  });

  test('every RPC of every vsm.v1 service is classified (new RPCs need a deliberate role)', () => {
    const services = Object.entries(pb).filter(([k, v]) => k.endsWith('ServiceService') && typeof v === 'object');
    expect(services.length).toBeGreaterThanOrEqual(7);
    const paths = services.flatMap(([, def]) => Object.values(def as Record<string, { path: string }>).map((m) => m.path.slice(1)));
    const missing = paths.filter((p) => !(p in METHOD_ROLES));
    expect(missing).toEqual([]);
    // Unknown methods need admin.
    expect(requiredRole('/vsm.v1.FutureService/DoSomething')).toBe('admin');
    expect(requiredRole('/vsm.v1.GuestService/ReadMemory')).toBe('operator');
    expect(requiredRole('/vsm.v1.MemoryService/ReadGpa')).toBe('viewer');
  });

  test('resources: name, VP name, partition_id, list = all, capabilities = any, monitor = subscribe', () => {
    expect(resourceOf('/vsm.v1.GuestService/WriteMsr', { name: 'partitions/prod-1/vps/3' })).toEqual({ kind: 'partition', id: 'prod-1' });
    expect(resourceOf('/vsm.v1.PartitionService/GetPartition', { name: 'partitions/prod-1' })).toEqual({ kind: 'partition', id: 'prod-1' });
    expect(resourceOf('/vsm.v1.PartitionService/GetPartition', { name: 'partitions/../etc' }).kind).toBe('any');
    expect(resourceOf('/vsm.v1.PartitionService/CreatePartition', { partitionId: 'x' })).toEqual({ kind: 'partition', id: 'x' });
    expect(resourceOf('/vsm.v1.PartitionService/CreatePartition', { partitionId: '' })).toEqual({ kind: 'all' });
    expect(resourceOf('/vsm.v1.PartitionService/ListPartitions', {})).toEqual({ kind: 'all' });
    expect(resourceOf('/vsm.v1.PartitionService/GetCapabilities', {}).kind).toBe('any');
    expect(resourceOf('/vsm.v1.InterceptService/Monitor', { kind: { $case: 'subscribe', value: { name: 'partitions/a' } } })).toEqual({
      kind: 'partition',
      id: 'a',
    });
    expect(resourceOf('/vsm.v1.InterceptService/Monitor', { kind: { $case: 'reply', value: {} } }).kind).toBe('any');
  });
});

describe('credentials', () => {
  const md = (auth?: string) => {
    const m = new Metadata();
    if (auth !== undefined) m.set('authorization', auth);
    return m;
  };
  const cert = (san: string) => ({ sslPeerCertificate: { subjectaltname: san } as never });

  test('bearer tokens resolve by SHA-256; unknown or malformed ones are refused', () => {
    expect(authenticate(policy, md('Bearer boss-token'), {})).toEqual({ ok: true, principal: 'boss', via: 'token' });
    expect(authenticate(policy, md('bearer ci-token'), {})).toMatchObject({ ok: true, principal: 'ci' });
    expect(authenticate(policy, md('Bearer wrong'), {})).toEqual({ ok: false, why: 'unknown bearer token' });
    expect(authenticate(policy, md('Basic Ym9zczp4'), {})).toMatchObject({ ok: false });
    expect(authenticate(policy, md(), {})).toMatchObject({ ok: false, why: expect.stringMatching(/no credentials/) });
  });

  test('client certificates resolve by URI/DNS subjectAltName; token and certificate must agree', () => {
    expect(authenticate(policy, md(), cert('DNS:ops.example, URI:spiffe://vsm.test/ops'))).toEqual({ ok: true, principal: 'ops', via: 'certificate' });
    expect(authenticate(policy, md(), cert('URI:spiffe://vsm.test/other'))).toMatchObject({ ok: false, why: expect.stringMatching(/not a principal/) });
    expect(authenticate(policy, md('Bearer boss-token'), cert('URI:spiffe://vsm.test/ops'))).toMatchObject({
      ok: false,
      why: expect.stringMatching(/different principals/),
    });
  });

  test('subjectAltName parsing handles quoted entries', () => {
    expect(subjectAltNames('DNS:a.example, URI:spiffe://x/y, IP Address:127.0.0.1')).toEqual(['DNS:a.example', 'URI:spiffe://x/y', 'IP Address:127.0.0.1']);
    expect(subjectAltNames('URI:"spiffe://x/a, b", DNS:c')).toEqual(['URI:spiffe://x/a, b', 'DNS:c']);
    expect(subjectAltNames(undefined)).toEqual([]);
  });
});

describe('configuration', () => {
  const parse = (argv: string[], env: NodeJS.ProcessEnv = {}) => parseConfig(argv, env);

  test('loopback addresses', () => {
    for (const a of ['127.0.0.1:1', '127.9.8.7:1', 'localhost:1', '[::1]:1', 'LOCALHOST:1', '[::ffff:127.0.0.1]:1'])
      expect([a, isLoopbackListen(a)]).toEqual([a, true]);
    for (const a of ['0.0.0.0:1', '[::]:1', '10.0.0.1:1', 'example.com:1', '128.0.0.1:1', 'localhost.evil.com:1'])
      expect([a, isLoopbackListen(a)]).toEqual([a, false]);
  });

  test('plaintext: loopback by default, non-loopback refused unless --insecure-allow-remote', () => {
    expect(parse([]).listen).toBe('127.0.0.1:50051');
    expect(parse(['--insecure']).tls).toBeUndefined();
    expect(() => parse(['--listen', '0.0.0.0:50051'])).toThrow(/refusing to serve plaintext on the non-loopback address 0\.0\.0\.0:50051/);
    expect(() => parse([], { VSM_LISTEN: '[::]:50051' })).toThrow(UsageError);
    expect(parse(['--listen', '0.0.0.0:50051', '--insecure-allow-remote']).insecureAllowRemote).toBe(true);
    expect(parse(['--listen', '0.0.0.0:50051'], { VSM_INSECURE_ALLOW_REMOTE: '1' }).insecureAllowRemote).toBe(true);
    expect(parse(['--listen', '0.0.0.0:1', '--tls-cert', 'c', '--tls-key', 'k']).tls).toEqual({
      certFile: 'c',
      keyFile: 'k',
      caFile: undefined,
      clientAuth: 'none',
    });
  });

  test('TLS flag combinations', () => {
    expect(() => parse(['--tls-cert', 'c'])).toThrow(/go together/);
    expect(() => parse(['--tls-ca', 'ca'])).toThrow(/need --tls-cert/);
    expect(() => parse(['--tls-cert', 'c', '--tls-key', 'k', '--insecure'])).toThrow(/contradict/);
    expect(() => parse(['--tls-cert', 'c', '--tls-key', 'k', '--tls-client-auth', 'require'])).toThrow(/needs --tls-ca/);
    expect(() => parse(['--tls-cert', 'c', '--tls-key', 'k', '--tls-client-auth', 'maybe'])).toThrow(/require, optional or none/);
    // Client certificates identify principals only through a policy.
    expect(() => parse(['--tls-cert', 'c', '--tls-key', 'k', '--tls-ca', 'ca'])).toThrow(/needs --authz-policy/);
    const c = parse(['--tls-cert', 'c', '--tls-key', 'k', '--tls-ca', 'ca', '--authz-policy', 'p.json']);
    expect(c.tls).toEqual({ certFile: 'c', keyFile: 'k', caFile: 'ca', clientAuth: 'require' });
    expect(c.authzPolicy).toBe('p.json');
    const e = parse([], { VSM_TLS_CERT: 'c', VSM_TLS_KEY: 'k', VSM_TLS_CA: 'ca', VSM_TLS_CLIENT_AUTH: 'optional', VSM_AUTHZ_POLICY: 'p' });
    expect(e.tls?.clientAuth).toBe('optional');
  });

  test('limits', () => {
    const c = parse(['--max-streams', '10', '--max-streams-per-client=3', '--max-partitions', '5', '--max-vps', '8', '--max-memory', '4G']);
    expect(c.limits).toEqual({
      maxStreams: 10,
      maxStreamsPerClient: 3,
      maxPartitions: 5,
      maxVpCount: 8,
      maxMemoryBytes: 4n << 30n,
      maxResidentBytes: expect.any(BigInt),
    }); // default: test/e2e/resident-limit.test.ts
    expect(parse([], { VSM_MAX_MEMORY: '1048576' }).limits.maxMemoryBytes).toBe(1048576n);
    expect(() => parse(['--max-streams', '0'])).toThrow(/integer 1\.\./);
    expect(() => parse(['--max-memory', '12345'])).toThrow(/multiple of 4096/);
    expect(() => parse(['--max-memory', 'lots'])).toThrow(/byte count/);
  });
});
