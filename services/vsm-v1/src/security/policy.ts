// service layer, security: the authorization policy. A JSON file maps principals (identified by a
// client-certificate SAN or a bearer token, stored as its SHA-256) to roles per partition pattern.
// Evaluation is deny by default; `admin` implies every other role.
//
//   {
//     "principals": {
//       "ops":     { "certificates": ["URI:spiffe://vsm.example/ops"], "roles": { "partitions/*": ["viewer"], "partitions/prod-*": ["operator", "monitor"] } },
//       "ci-bot":  { "tokens": ["sha256:<64 hex digits>"],            "roles": { "partitions/ci-*": ["admin"] } }
//     }
//   }
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { RPC_ROLES, type RpcRole, vsmRpc, vsmRpcs } from '@vsm/api';
import { parsePartitionName, parseVpName } from '../names';

export type Role = RpcRole;
export const ROLES: readonly Role[] = RPC_ROLES;

/**
 * Role each vsm.v1 RPC needs, as the RPC declares it in the proto (`option (vsm.v1.required_role)`,
 * proto/vsm/v1/options.proto), read from the descriptors. An RPC that declares none needs `admin`
 * (deny by default for anything new).
 */
export const METHOD_ROLES: Readonly<Record<string, Role>> = Object.fromEntries(
  vsmRpcs()
    .filter((m) => m.roleDeclared)
    .map((m) => [m.key, m.requiredRole]),
);

/** `/vsm.v1.PartitionService/GetPartition` or `vsm.v1.PartitionService/GetPartition` -> the latter. */
export const methodKey = (path: string): string => path.replace(/^\//, '');
export const requiredRole = (path: string): Role => METHOD_ROLES[methodKey(path)] ?? 'admin';
/**
 * Whether an allowed call is audit-logged at info: it changes state (not declared NO_SIDE_EFFECTS)
 * or needs more than `viewer` (SavePartition exports a whole partition).
 */
export const isMutating = (path: string): boolean => requiredRole(path) !== 'viewer' || !vsmRpc(path)?.noSideEffects;

/**
 * What a call acts on. `partition`: one partition; `all`: every partition (needs a grant whose
 * pattern covers all of them, i.e. `partitions/*`); `any`: nothing partition-specific (capabilities,
 * or a name that does not parse, which the backend then rejects) - a grant of the role on any
 * pattern suffices.
 */
export type Resource = { kind: 'partition'; id: string } | { kind: 'all' } | { kind: 'any'; label: string };

export function resourceString(r: Resource): string {
  return r.kind === 'partition' ? `partitions/${r.id}` : r.kind === 'all' ? 'partitions/*' : r.label;
}

function fromName(name: unknown): Resource {
  if (typeof name !== 'string') return { kind: 'any', label: '(no name)' };
  for (const parse of [parsePartitionName, (n: string) => parseVpName(n).partition]) {
    try {
      return { kind: 'partition', id: parse(name) };
    } catch {
      // not of this form
    }
  }
  return { kind: 'any', label: `(invalid name ${JSON.stringify(name.slice(0, 80))})` };
}

/** The resource of a request (for Monitor: of its first message, which must subscribe). */
export function resourceOf(path: string, req: unknown): Resource {
  const r = (req ?? {}) as Record<string, unknown>;
  switch (methodKey(path)) {
    case 'vsm.v1.PartitionService/CreatePartition':
    case 'vsm.v1.SnapshotService/RestorePartition':
      return typeof r.partitionId === 'string' && r.partitionId !== '' ? { kind: 'partition', id: r.partitionId } : { kind: 'all' };
    case 'vsm.v1.PartitionService/ListPartitions':
      return { kind: 'all' };
    case 'vsm.v1.PartitionService/GetCapabilities':
      return { kind: 'any', label: 'capabilities' };
    case 'vsm.v1.GuestService/RunGuestActions':
      // Every action is authorized on its own (as its unary RPC, on its partition); the stream needs
      // the role on some partition.
      return { kind: 'any', label: 'guest actions (each authorized on its partition)' };
    case 'vsm.v1.InterceptService/Monitor': {
      const kind = r.kind as { $case?: string; value?: { name?: unknown } } | undefined;
      return kind?.$case === 'subscribe' ? fromName(kind.value?.name) : { kind: 'any', label: '(first message is not subscribe)' };
    }
    default:
      if ('name' in r) return fromName(r.name);
      if (typeof r.partitionId === 'string' && r.partitionId !== '') return { kind: 'partition', id: r.partitionId };
      return { kind: 'all' };
  }
}

// ---- the policy file -------------------------------------------------------------------------

interface Grant {
  pattern: string;
  re: RegExp;
  /** The pattern matches every partition id (`partitions/*`). */
  all: boolean;
  roles: ReadonlySet<Role>;
}

export interface Policy {
  readonly principals: ReadonlyMap<string, readonly Grant[]>;
  /** sha256(token) as lower-case hex -> principal. */
  readonly tokens: ReadonlyMap<string, string>;
  /** Certificate SAN (`URI:...`, `DNS:...`) -> principal. */
  readonly certificates: ReadonlyMap<string, string>;
}

export class PolicyError extends Error {}

const PRINCIPAL_RE = /^[A-Za-z0-9._@:+-]{1,128}$/;
const PATTERN_RE = /^partitions\/[a-z0-9*-]{1,63}$/;
const SAN_RE = /^(URI|DNS):\S{1,1024}$/;
const TOKEN_RE = /^sha256:([0-9a-f]{64})$/;

export const sha256Hex = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

function globToRegExp(glob: string): RegExp {
  return new RegExp(
    '^' +
      glob
        .split('*')
        .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*') +
      '$',
    's',
  );
}

/** Parses and validates a policy document (JSON). Every mistake is reported with its path. */
export function parsePolicy(text: string, source = 'policy'): Policy {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new PolicyError(`${source}: not valid JSON: ${(e as Error).message}`);
  }
  const fail = (where: string, msg: string): never => {
    throw new PolicyError(`${source}: ${where}: ${msg}`);
  };
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const strings = (v: unknown, where: string): string[] => {
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) fail(where, 'must be an array of strings');
    return v as string[];
  };
  if (!isObj(doc)) return fail('(top level)', 'must be an object with "principals"');
  for (const k of Object.keys(doc)) if (k !== 'principals' && k !== 'version') fail(k, 'unknown key (expected "principals", "version")');
  if (doc.version !== undefined && doc.version !== 1) fail('version', 'must be 1');
  if (!isObj(doc.principals)) return fail('principals', 'must be an object of principal name -> { certificates, tokens, roles }');

  const principals = new Map<string, Grant[]>();
  const tokens = new Map<string, string>();
  const certificates = new Map<string, string>();
  for (const [name, spec] of Object.entries(doc.principals)) {
    const at = `principals.${name}`;
    if (!PRINCIPAL_RE.test(name)) fail(at, `principal names must match ${PRINCIPAL_RE}`);
    if (!isObj(spec)) return fail(at, 'must be an object');
    for (const k of Object.keys(spec))
      if (!['certificates', 'tokens', 'roles'].includes(k)) fail(`${at}.${k}`, 'unknown key (expected "certificates", "tokens", "roles")');
    for (const san of strings(spec.certificates, `${at}.certificates`)) {
      if (!SAN_RE.test(san))
        fail(`${at}.certificates`, `${JSON.stringify(san)} must be "URI:<uri>" or "DNS:<name>" (a subjectAltName of the client certificate)`);
      const prior = certificates.get(san);
      if (prior !== undefined) fail(`${at}.certificates`, `${san} already identifies principal ${prior}`);
      certificates.set(san, name);
    }
    for (const t of strings(spec.tokens, `${at}.tokens`)) {
      const m = TOKEN_RE.exec(t);
      if (!m)
        fail(`${at}.tokens`, 'tokens are stored as "sha256:<64 lower-case hex digits>" of the token (e.g. printf %s "$TOKEN" | sha256sum), never in clear');
      const prior = tokens.get(m![1]!);
      if (prior !== undefined) fail(`${at}.tokens`, `a token hash is listed twice (also for ${prior})`);
      tokens.set(m![1]!, name);
    }
    const grants: Grant[] = [];
    if (spec.roles !== undefined) {
      if (!isObj(spec.roles)) return fail(`${at}.roles`, 'must be an object of partition pattern -> [roles]');
      for (const [pattern, roles] of Object.entries(spec.roles)) {
        if (!PATTERN_RE.test(pattern))
          fail(`${at}.roles`, `pattern ${JSON.stringify(pattern)} must be "partitions/<id or glob with *>", e.g. "partitions/*", "partitions/prod-*"`);
        const rs = strings(roles, `${at}.roles["${pattern}"]`);
        for (const r of rs) if (!ROLES.includes(r as Role)) fail(`${at}.roles["${pattern}"]`, `unknown role ${JSON.stringify(r)} (roles: ${ROLES.join(', ')})`);
        const glob = pattern.slice('partitions/'.length);
        grants.push({ pattern, re: globToRegExp(glob), all: /^\*+$/.test(glob), roles: new Set(rs as Role[]) });
      }
    }
    principals.set(name, grants);
  }
  return { principals, tokens, certificates };
}

export function loadPolicyFile(file: string): Policy {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new PolicyError(`cannot read the authorization policy ${file}: ${(e as Error).message}`);
  }
  return parsePolicy(text, file);
}

/** Whether `principal` holds `role` (or admin) on `resource`. Unknown principals hold nothing. */
export function isAllowed(policy: Policy, principal: string, role: Role, resource: Resource): boolean {
  const grants = policy.principals.get(principal);
  if (!grants) return false;
  return grants.some((g) => {
    if (!g.roles.has(role) && !g.roles.has('admin')) return false;
    switch (resource.kind) {
      case 'partition':
        return g.re.test(resource.id);
      case 'all':
        return g.all;
      case 'any':
        return true;
      default:
        resource satisfies never; // a new resource kind must be decided above
        return false; // deny what is not understood
    }
  });
}
