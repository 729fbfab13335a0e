// service layer, security: transport. TLS credentials whose certificate, key and CA are re-read
// when the files change (no restart), optional/required client certificates, and the rule that
// plaintext is served only on loopback unless explicitly allowed.
//
// grpc-js's ServerCredentials.createSsl() is fixed at bind time; reloading goes through
// grpc.experimental.createCertificateProviderServerCredentials() with a CertificateProvider. We do
// not use grpc-js's FileWatcherCertificateProvider: it publishes whatever it reads, so a
// half-replaced pair (new certificate, old key) or a briefly missing file makes grpc-js drop every
// new connection until the next poll. This provider publishes only a pair that parses and matches,
// and keeps serving the last good one otherwise (logged).
import * as fs from 'node:fs';
import { type KeyObject, X509Certificate, createPrivateKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';

/** Files that changed are read again after this long; only contents that stayed the same are judged. */
const STABLE_READ_MS = 50;

export type ClientAuth = 'none' | 'optional' | 'require';

export interface TlsOptions {
  certFile: string;
  keyFile: string;
  /** CA bundle that client certificates must chain to (needed for client auth). */
  caFile?: string;
  /** `require`: handshake fails without a valid client certificate; `optional`: verified when sent. */
  clientAuth?: ClientAuth;
  /** How often the files are checked for changes (default 2000 ms). */
  reloadIntervalMs?: number;
}

type Listener<T> = (u: T | null) => void;
interface Material {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

/** What the log says about a certificate in force. */
export interface TlsCertificateInfo {
  subject: string;
  notAfter: string;
  fingerprint256: string;
}

/** Parses and cross-checks certificate, key and CA; throws with a clear message. */
export function validateTlsMaterial(m: Material, files: { certFile: string; keyFile: string; caFile?: string }): TlsCertificateInfo {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(m.cert);
  } catch (e) {
    throw new Error(`${files.certFile} is not a PEM certificate: ${(e as Error).message}`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(m.key);
  } catch (e) {
    throw new Error(`${files.keyFile} is not a PEM private key: ${(e as Error).message}`);
  }
  if (!x509.checkPrivateKey(key)) throw new Error(`${files.keyFile} is not the private key of ${files.certFile}`);
  if (m.ca) {
    try {
      new X509Certificate(m.ca);
    } catch (e) {
      throw new Error(`${files.caFile} is not a PEM certificate bundle: ${(e as Error).message}`);
    }
  }
  return { subject: x509.subject.replace(/\n/g, ', '), notAfter: x509.validTo, fingerprint256: x509.fingerprint256 };
}

export class ReloadingCertificateProvider implements grpc.experimental.CertificateProvider {
  private current: Material;
  private lastSeen: Material;
  private readonly identityListeners = new Set<Listener<grpc.experimental.IdentityCertificateUpdate>>();
  private readonly caListeners = new Set<Listener<grpc.experimental.CaCertificateUpdate>>();
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  /** Number of successful reloads (for tests and logs). */
  reloads = 0;

  /** Reads and validates the files now: a server never starts with bad material. */
  constructor(
    private readonly opts: TlsOptions,
    private readonly log?: Logger,
  ) {
    this.current = this.read();
    const info = validateTlsMaterial(this.current, opts);
    this.lastSeen = this.current;
    log?.info({ tls: { cert: opts.certFile, ...info, clientAuth: opts.clientAuth ?? 'none' } }, 'TLS certificate loaded');
    this.timer = setInterval(() => void this.check(), opts.reloadIntervalMs ?? 2000);
    this.timer.unref();
  }

  private read(): Material {
    const rd = (what: string, file: string) => {
      try {
        return fs.readFileSync(file);
      } catch (e) {
        throw new Error(`cannot read the TLS ${what} ${file}: ${(e as Error).message}`);
      }
    };
    return {
      cert: rd('certificate', this.opts.certFile),
      key: rd('private key', this.opts.keyFile),
      ca: this.opts.caFile ? rd('CA bundle', this.opts.caFile) : undefined,
    };
  }

  /** Re-reads the files; publishes a changed, valid set; keeps the old one otherwise. */
  async check(): Promise<boolean> {
    if (this.checking) return false;
    this.checking = true;
    try {
      let m: Material;
      const readAll = async (): Promise<Material> => {
        const rd = fs.promises.readFile;
        const [cert, key, ca] = await Promise.all([
          rd(this.opts.certFile),
          rd(this.opts.keyFile),
          this.opts.caFile ? rd(this.opts.caFile) : Promise.resolve(undefined),
        ]);
        return { cert, key, ca };
      };
      try {
        m = await readAll();
      } catch (e) {
        this.log?.warn({ err: (e as Error).message }, 'TLS files unreadable; keeping the current certificate');
        return false;
      }
      const same = (a: Material, b: Material) =>
        a.cert.equals(b.cert) && a.key.equals(b.key) && (a.ca === undefined ? b.ca === undefined : b.ca !== undefined && a.ca.equals(b.ca));
      if (same(m, this.current)) return false;
      // A file still being written is not a set yet: judge it only once it reads the same twice.
      await new Promise((r) => setTimeout(r, STABLE_READ_MS));
      try {
        if (!same(m, await readAll())) return false; // the next poll looks again
      } catch {
        return false;
      }
      const unchangedSinceLastTry = same(m, this.lastSeen);
      this.lastSeen = m;
      let info: TlsCertificateInfo;
      try {
        info = validateTlsMaterial(m, this.opts);
      } catch (e) {
        // Typically a certificate replaced before its key: the next poll sees the complete pair.
        if (!unchangedSinceLastTry)
          this.log?.warn({ err: (e as Error).message }, 'TLS files changed but are not a valid set (yet); keeping the current certificate');
        return false;
      }
      this.current = m;
      this.reloads++;
      this.log?.info({ tls: { cert: this.opts.certFile, ...info } }, 'TLS certificate reloaded');
      this.publish();
      return true;
    } finally {
      this.checking = false;
    }
  }

  private publish(): void {
    for (const l of this.caListeners) l(this.current.ca ? { caCertificate: this.current.ca } : null);
    for (const l of this.identityListeners) l({ certificate: this.current.cert, privateKey: this.current.key });
  }

  addCaCertificateListener(listener: Listener<grpc.experimental.CaCertificateUpdate>): void {
    this.caListeners.add(listener);
    // Asynchronously, like grpc-js's own providers: the server registers its watcher right after.
    process.nextTick(() => {
      if (this.caListeners.has(listener)) listener(this.current.ca ? { caCertificate: this.current.ca } : null);
    });
  }
  removeCaCertificateListener(listener: Listener<grpc.experimental.CaCertificateUpdate>): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: Listener<grpc.experimental.IdentityCertificateUpdate>): void {
    this.identityListeners.add(listener);
    process.nextTick(() => {
      if (this.identityListeners.has(listener)) listener({ certificate: this.current.cert, privateKey: this.current.key });
    });
  }
  removeIdentityCertificateListener(listener: Listener<grpc.experimental.IdentityCertificateUpdate>): void {
    this.identityListeners.delete(listener);
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** Server credentials backed by a reloading provider. */
export function tlsServerCredentials(opts: TlsOptions, log?: Logger): { credentials: grpc.ServerCredentials; provider: ReloadingCertificateProvider } {
  const clientAuth = opts.clientAuth ?? (opts.caFile ? 'require' : 'none');
  if (clientAuth !== 'none' && !opts.caFile) throw new Error('client certificate authentication needs a CA (--tls-ca)');
  const provider = new ReloadingCertificateProvider({ ...opts, clientAuth }, log);
  // grpc-js 1.14: the FIRST argument is used as the identity (certificate/key) provider and the
  // second, nullable one as the CA provider that turns on requestCert (build/src/server-credentials.js
  // passes them to the constructor in that order; the .d.ts parameter names are swapped).
  // One provider serves both.
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(provider, clientAuth === 'none' ? null : provider, clientAuth === 'require');
  return { credentials, provider };
}

/** Host part of a HOST:PORT listen address (brackets removed for IPv6). */
export function listenHost(listen: string): string {
  const i = listen.lastIndexOf(':');
  const host = i < 0 ? listen : listen.slice(0, i);
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
}

/**
 * localhost, 127.0.0.0/8, ::1 (and its IPv4-mapped form), or a unix: socket (local; its file
 * permissions decide who connects). Other names are not resolved: not loopback.
 */
export function isLoopbackListen(listen: string): boolean {
  if (/^unix:/.test(listen)) return true;
  const h = listenHost(listen).toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = /^(?:::ffff:)?(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return !!v4 && Number(v4[1]) === 127 && v4.slice(2).every((o) => Number(o) <= 255);
}

export const PLAINTEXT_REMOTE_REFUSED = (listen: string) =>
  `refusing to serve plaintext on the non-loopback address ${listen}: configure TLS (--tls-cert FILE --tls-key FILE), ` +
  'or pass --insecure-allow-remote to accept unencrypted, unauthenticated remote connections';
