// Test support: a throw-away PKI made with the openssl CLI (EC P-256, valid for two days) in a
// temporary directory: a CA, server certificates for 127.0.0.1/localhost, client certificates
// with URI/DNS subjectAltNames.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface KeyPair {
  cert: string;
  key: string;
  /** PEM contents. */
  certPem: Buffer;
  keyPem: Buffer;
}

export interface Ca extends KeyPair {
  name: string;
}

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });

export function tempDir(prefix = 'vsm-tls-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function opensslAvailable(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function pair(dir: string, name: string): KeyPair {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  return { cert, key, certPem: fs.readFileSync(cert), keyPem: fs.readFileSync(key) };
}

export function makeCa(dir: string, name = 'ca'): Ca {
  openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-subj',
      `/CN=vsm test ${name}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return { name, ...pair(dir, name) };
}

/** Issues `name` from `ca` with the given SANs (e.g. `IP:127.0.0.1`, `DNS:localhost`, `URI:spiffe://x/y`). */
export function issue(ca: Ca, dir: string, name: string, sans: string[], cn = name): KeyPair {
  fs.writeFileSync(
    path.join(dir, `${name}.ext`),
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth,clientAuth',
      ...(sans.length ? [`subjectAltName=${sans.join(',')}`] : []),
    ].join('\n') + '\n',
  );
  openssl(
    ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`],
    dir,
  );
  openssl(
    ['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`],
    dir,
  );
  return pair(dir, name);
}

export const SERVER_SANS = ['IP:127.0.0.1', 'DNS:localhost'];
