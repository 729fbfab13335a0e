// service layer, security: who is calling. Two kinds of credentials, both resolved through the
// policy: a verified client certificate (its URI/DNS subjectAltNames, read from grpc-js's
// `call.getAuthContext().sslPeerCertificate`, which grpc-js fills only when the TLS handshake
// verified the certificate against --tls-ca) and a bearer token (`authorization: Bearer <token>`
// metadata, compared by its SHA-256).
import type { Metadata } from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { type Policy, sha256Hex } from './policy';

/** grpc-js's AuthContext (not exported by its index in 1.14): set only for a verified TLS peer. */
export interface AuthContext {
  transportSecurityType?: string;
  sslPeerCertificate?: PeerCertificate;
}

export type Authentication = { ok: true; principal: string; via: 'token' | 'certificate' } | { ok: false; why: string };

/** The SANs of a Node PeerCertificate `subjectaltname` string (`DNS:a, URI:b`, quoted when needed). */
export function subjectAltNames(san: string | undefined): string[] {
  if (!san) return [];
  const out: string[] = [];
  // Node quotes an entry as a JSON string when it contains a comma or quote (CVE-2021-44533).
  const re = /\s*([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)/g;
  for (let m = re.exec(san); m && m[0] !== ''; m = re.exec(san)) {
    let v = m[2]!;
    if (v.startsWith('"')) {
      try {
        v = JSON.parse(v) as string;
      } catch {
        continue;
      }
    }
    out.push(`${m[1]!.trim()}:${v}`);
  }
  return out;
}

/** Identity strings of the verified peer certificate (`URI:...`, `DNS:...`), or [] without one. */
export function certificateIdentities(auth: AuthContext | null | undefined): string[] {
  const cert = auth?.sslPeerCertificate;
  if (!cert) return [];
  return subjectAltNames(cert.subjectaltname).filter((s) => s.startsWith('URI:') || s.startsWith('DNS:'));
}

export function authenticate(policy: Policy, metadata: Metadata, auth: AuthContext | null | undefined): Authentication {
  const header = metadata.get('authorization');
  let byToken: string | undefined;
  if (header.length > 1) return { ok: false, why: 'more than one authorization header' };
  if (header.length === 1) {
    const m = /^Bearer ([\x21-\x7e]{1,4096})$/i.exec(String(header[0]));
    if (!m) return { ok: false, why: 'the authorization header is not "Bearer <token>"' };
    byToken = policy.tokens.get(sha256Hex(m[1]!));
    if (byToken === undefined) return { ok: false, why: 'unknown bearer token' };
  }
  const sans = certificateIdentities(auth);
  const byCert = sans.map((s) => policy.certificates.get(s)).find((p) => p !== undefined);
  if (byToken !== undefined && byCert !== undefined && byToken !== byCert)
    return { ok: false, why: `the bearer token (${byToken}) and the client certificate (${byCert}) name different principals` };
  if (byToken !== undefined) return { ok: true, principal: byToken, via: 'token' };
  if (byCert !== undefined) return { ok: true, principal: byCert, via: 'certificate' };
  if (sans.length) return { ok: false, why: `client certificate ${sans.join(', ')} is not a principal of the policy` };
  return { ok: false, why: 'no credentials: send a bearer token or a client certificate' };
}
