// Security: TLS and mutual TLS with a throw-away PKI (openssl CLI), client-certificate identities
// through the policy, and certificate reload when the files change (new connections see the new
// certificate, no restart; a half-replaced pair is not published).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { connect, pb, type VsmClient } from '@vsm/client';
import type { RunningServer } from '@vsm/vsm-v1';
import { parsePolicy } from '@vsm/vsm-v1/security';
import { failure } from '../support/server';
import { type Ca, type KeyPair, SERVER_SANS, issue, makeCa, opensslAvailable, tempDir } from '../support/tls';
import { waitFor } from '../support/wait';
import { type LogLine, audits, startSecured, tokenHash } from './support';

if (!opensslAvailable()) throw new Error('these tests need the openssl CLI');

let dir: string;
let ca: Ca, otherCa: Ca;
let server: KeyPair, opsClient: KeyPair, viewerClient: KeyPair, strangerClient: KeyPair, rogueClient: KeyPair, noSanClient: KeyPair;
const open: Array<{ close(): void }> = [];

beforeAll(() => {
  dir = tempDir();
  ca = makeCa(dir, 'ca');
  otherCa = makeCa(dir, 'other-ca');
  server = issue(ca, dir, 'server', SERVER_SANS, 'vsm-service');
  opsClient = issue(ca, dir, 'ops', ['URI:spiffe://vsm.test/ops', 'DNS:ops.vsm.test']);
  viewerClient = issue(ca, dir, 'viewer', ['URI:spiffe://vsm.test/viewer']);
  strangerClient = issue(ca, dir, 'stranger', ['URI:spiffe://vsm.test/stranger']);
  noSanClient = issue(ca, dir, 'nosan', [], 'ops'); // CN alone identifies nobody
  rogueClient = issue(otherCa, dir, 'rogue', ['URI:spiffe://vsm.test/ops']); // right SAN, wrong CA
});
afterAll(() => {
  for (const c of open) c.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const policy = () =>
  parsePolicy(
    JSON.stringify({
      principals: {
        ops: { certificates: ['URI:spiffe://vsm.test/ops'], roles: { 'partitions/*': ['admin'] } },
        viewer: { certificates: ['URI:spiffe://vsm.test/viewer'], tokens: [tokenHash('viewer-token')], roles: { 'partitions/*': ['viewer'] } },
      },
    }),
  );

function client(srv: RunningServer, o: { ca?: Buffer; pair?: KeyPair; token?: string }): VsmClient {
  const c = connect(`localhost:${srv.port}`, {
    tls: { ca: o.ca ?? ca.certPem, cert: o.pair?.certPem, key: o.pair?.keyPem },
    token: o.token,
    retries: 0,
    deadlineMs: 5000,
  });
  open.push(c);
  return c;
}
const unavailable = async (p: Promise<unknown>) => expect((await failure(p)).codeName).toBe('UNAVAILABLE');

describe('TLS (server authentication only)', () => {
  let srv: RunningServer;
  beforeAll(async () => {
    ({ srv } = await startSecured({ tls: { certFile: server.cert, keyFile: server.key } }));
  });
  afterAll(() => srv.shutdown('test'));

  test('a client that trusts the CA is served; plaintext and untrusting clients are not', async () => {
    expect((await client(srv, {}).partitions.getCapabilities({})).backend).toBe('emulator');
    const plain = connect(`127.0.0.1:${srv.port}`, { retries: 0, deadlineMs: 2000 });
    open.push(plain);
    await unavailable(plain.partitions.getCapabilities({}));
    await unavailable(client(srv, { ca: otherCa.certPem }).partitions.getCapabilities({}));
  });
});

describe('mutual TLS, client certificate required', () => {
  let srv: RunningServer;
  let lines: LogLine[];
  beforeAll(async () => {
    ({ srv, lines } = await startSecured({
      tls: { certFile: server.cert, keyFile: server.key, caFile: ca.cert, clientAuth: 'require' },
      security: { authzPolicy: policy() },
    }));
  });
  afterAll(() => srv.shutdown('test'));

  test('a certificate from the CA whose SAN is a principal gets that principal roles', async () => {
    const ops = client(srv, { pair: opsClient });
    const p = await ops.partitions.createPartition({ partitionId: 'mtls-1', partition: { vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 0 } as pb.Partition });
    expect(p.name).toBe('partitions/mtls-1');
    expect(audits(lines, 'allow').at(-1)).toMatchObject({ principal: 'ops', method: 'vsm.v1.PartitionService/CreatePartition', resource: 'partitions/mtls-1' });
    const viewer = client(srv, { pair: viewerClient });
    await viewer.partitions.getPartition({ name: 'partitions/mtls-1' });
    const e = await failure(viewer.partitions.deletePartition({ name: 'partitions/mtls-1' }));
    expect([e.codeName, e.reason]).toEqual(['PERMISSION_DENIED', 'HV_STATUS_ACCESS_DENIED']);
  });

  test('no client certificate, or one from another CA: the handshake fails', async () => {
    await unavailable(client(srv, {}).partitions.getCapabilities({}));
    await unavailable(client(srv, { token: 'viewer-token' }).partitions.getCapabilities({}));
    await unavailable(client(srv, { pair: rogueClient }).partitions.getCapabilities({}));
  });

  test('a valid certificate that names no principal (or has no SAN) is UNAUTHENTICATED', async () => {
    for (const pair of [strangerClient, noSanClient]) {
      const e = await failure(client(srv, { pair }).partitions.getCapabilities({}));
      expect([e.codeName, e.reason]).toEqual(['UNAUTHENTICATED', 'HV_STATUS_ACCESS_DENIED']);
    }
    expect(audits(lines, 'deny').at(-2)).toMatchObject({
      principal: null,
      reason: 'client certificate URI:spiffe://vsm.test/stranger is not a principal of the policy',
    });
  });
});

describe('mutual TLS, client certificate optional', () => {
  let srv: RunningServer;
  beforeAll(async () => {
    ({ srv } = await startSecured({
      tls: { certFile: server.cert, keyFile: server.key, caFile: ca.cert, clientAuth: 'optional' },
      security: { authzPolicy: policy() },
    }));
  });
  afterAll(() => srv.shutdown('test'));

  test('certificate or token; neither is UNAUTHENTICATED; an unverified certificate identifies nobody', async () => {
    await client(srv, { pair: opsClient }).partitions.listPartitions({});
    await client(srv, { token: 'viewer-token' }).partitions.listPartitions({});
    await client(srv, { pair: viewerClient, token: 'viewer-token' }).partitions.listPartitions({});
    expect((await failure(client(srv, {}).partitions.listPartitions({}))).codeName).toBe('UNAUTHENTICATED');
    // Signed by another CA: the connection is accepted (optional) but the certificate is not trusted.
    expect((await failure(client(srv, { pair: rogueClient }).partitions.listPartitions({}))).codeName).toBe('UNAUTHENTICATED');
    // A token and a certificate naming different principals are refused.
    const e = await failure(client(srv, { pair: opsClient, token: 'viewer-token' }).partitions.listPartitions({}));
    expect([e.codeName, e.message]).toEqual([
      'UNAUTHENTICATED',
      'unauthenticated: the bearer token (viewer) and the client certificate (ops) name different principals',
    ]);
  });
});

describe('certificate reload', () => {
  /** The certificate a fresh TLS connection is served. */
  const servedFingerprint = (port: number, caPem: Buffer) =>
    new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: caPem, ALPNProtocols: ['h2'] }, () => {
        resolve(s.getPeerCertificate().fingerprint256);
        s.end();
      });
      s.on('error', reject);
    });
  /** A client on its own connection (no subchannel shared with earlier clients). */
  const fresh = (port: number, caPem: Buffer) => {
    const c = new pb.PartitionServiceClient(`localhost:${port}`, grpc.credentials.createSsl(caPem), { 'grpc.use_local_subchannel_pool': 1 });
    open.push(c);
    return new Promise<grpc.status>((resolve) =>
      c.getCapabilities({}, new grpc.Metadata(), { deadline: Date.now() + 3000 }, (e) => resolve(e ? e.code : grpc.status.OK)),
    );
  };

  test('replaced files are served to new connections without restart; a mismatched pair is not', async () => {
    const live = path.join(dir, 'live');
    fs.mkdirSync(live);
    const certFile = path.join(live, 'tls.crt');
    const keyFile = path.join(live, 'tls.key');
    fs.copyFileSync(server.cert, certFile);
    fs.copyFileSync(server.key, keyFile);
    const { srv, lines } = await startSecured({ tls: { certFile, keyFile, reloadIntervalMs: 50 } });
    try {
      const fp1 = new X509Certificate(server.certPem).fingerprint256;
      expect(await servedFingerprint(srv.port, ca.certPem)).toBe(fp1);
      expect(await fresh(srv.port, ca.certPem)).toBe(grpc.status.OK);
      // An established connection keeps working across the rotation.
      const established = client(srv, {});
      await established.partitions.getCapabilities({});

      // Rotate to a certificate from another CA. Certificate first: the pair does not match yet.
      const next = issue(otherCa, dir, 'server2', SERVER_SANS, 'vsm-service-2');
      fs.writeFileSync(certFile, next.certPem);
      await waitFor('the invalid set to be reported', () => lines.some((l) => /not a valid set/.test(l.msg)));
      expect(lines.find((l) => /not a valid set/.test(l.msg))).toMatchObject({ level: 40, err: expect.stringMatching(/is not the private key of/) });
      expect(await servedFingerprint(srv.port, ca.certPem)).toBe(fp1); // still the old one
      expect(srv.tls?.reloads).toBe(0);
      // Then the key: the new pair is published.
      fs.writeFileSync(keyFile, next.keyPem);
      await waitFor('the reload', () => (srv.tls?.reloads ?? 0) === 1);
      const fp2 = new X509Certificate(next.certPem).fingerprint256;
      await waitFor('the new certificate to be served', async () => (await servedFingerprint(srv.port, otherCa.certPem).catch(() => '')) === fp2);
      expect(lines.find((l) => l.msg === 'TLS certificate reloaded')).toMatchObject({ level: 30, tls: { fingerprint256: fp2 } });
      // New connections: trusting the new CA works, trusting only the old one fails.
      expect(await fresh(srv.port, otherCa.certPem)).toBe(grpc.status.OK);
      expect(await fresh(srv.port, ca.certPem)).toBe(grpc.status.UNAVAILABLE);
      await established.partitions.getCapabilities({});
      // A file that disappears (e.g. mid-rename) changes nothing.
      fs.rmSync(keyFile);
      await new Promise((r) => setTimeout(r, 150));
      expect(await fresh(srv.port, otherCa.certPem)).toBe(grpc.status.OK);
    } finally {
      await srv.shutdown('test');
    }
  });

  test('a rotated client CA applies to new connections', async () => {
    const live = path.join(dir, 'live-ca');
    fs.mkdirSync(live);
    const caFile = path.join(live, 'clients.crt');
    fs.copyFileSync(ca.cert, caFile);
    const { srv } = await startSecured({
      tls: { certFile: server.cert, keyFile: server.key, caFile, clientAuth: 'require', reloadIntervalMs: 50 },
      security: { authzPolicy: policy() },
    });
    try {
      const fromOther = issue(otherCa, dir, 'ops-other', ['URI:spiffe://vsm.test/ops']);
      const call = (pair: KeyPair) => {
        const c = new pb.PartitionServiceClient(`localhost:${srv.port}`, grpc.credentials.createSsl(ca.certPem, pair.keyPem, pair.certPem), {
          'grpc.use_local_subchannel_pool': 1,
        });
        open.push(c);
        return new Promise<grpc.status>((resolve) =>
          c.listPartitions({ pageSize: 0, pageToken: '' }, new grpc.Metadata(), { deadline: Date.now() + 3000 }, (e) => resolve(e ? e.code : grpc.status.OK)),
        );
      };
      expect(await call(opsClient)).toBe(grpc.status.OK);
      expect(await call(fromOther)).toBe(grpc.status.UNAVAILABLE);
      fs.writeFileSync(caFile, otherCa.certPem);
      await waitFor('the reload', () => (srv.tls?.reloads ?? 0) === 1);
      await waitFor('the new CA to be trusted', async () => (await call(fromOther)) === grpc.status.OK);
      expect(await call(opsClient)).toBe(grpc.status.UNAVAILABLE);
    } finally {
      await srv.shutdown('test');
    }
  });

  test('bad material at start-up is refused with a clear message', async () => {
    await expect(startSecured({ tls: { certFile: server.cert, keyFile: opsClient.key } })).rejects.toThrow(/is not the private key of/);
    await expect(startSecured({ tls: { certFile: path.join(dir, 'missing.crt'), keyFile: server.key } })).rejects.toThrow(
      /cannot read the TLS certificate .*missing\.crt/,
    );
    await expect(startSecured({ tls: { certFile: server.key, keyFile: server.key } })).rejects.toThrow(/is not a PEM certificate/);
  });
});
