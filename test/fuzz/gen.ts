// Fuzz input generation (fast-check arbitraries): raw protobuf-ish bytes, schema-aware random
// messages built from the .proto descriptors (every field type, repeated/packed, duplicates,
// unknown fields, nested messages), and mutations of valid encoded requests.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import fc from 'fast-check';

export const PROTO_DIR = path.resolve(__dirname, '../../proto');
// Every .proto of vsm.v1 (a new service is fuzzed without editing this list).
const FILES = fs
  .readdirSync(path.join(PROTO_DIR, 'vsm/v1'))
  .filter((f) => f.endsWith('.proto'))
  .sort()
  .map((f) => `vsm/v1/${f}`);
export const descriptors = protoLoader.loadSync(FILES, { includeDirs: [PROTO_DIR], keepCase: true });

interface FieldDesc {
  name: string;
  number: number;
  label: string;
  type: string;
  typeName: string;
}
interface MessageDesc {
  name: string;
  field: FieldDesc[];
}

export interface RpcMethod {
  /** `/vsm.v1.GuestService/WriteMsr` */
  path: string;
  service: string;
  method: string;
  requestType: string;
  requestStream: boolean;
  responseStream: boolean;
}

/** Every RPC of every vsm.v1 service in the descriptors. */
export function allMethods(): RpcMethod[] {
  const out: RpcMethod[] = [];
  for (const [svc, def] of Object.entries(descriptors)) {
    if (!svc.endsWith('Service') || 'format' in def) continue;
    for (const [method, m] of Object.entries(def as Record<string, protoLoader.MethodDefinition<object, object>>)) {
      out.push({
        path: m.path,
        service: svc,
        method,
        requestType: (m.requestType.type as unknown as MessageDesc).name,
        requestStream: m.requestStream,
        responseStream: m.responseStream,
      });
    }
  }
  return out;
}

// ---- wire encoding --------------------------------------------------------------------------

export function varint(v: bigint): number[] {
  let x = BigInt.asUintN(64, v);
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x) b |= 0x80;
    out.push(b);
  } while (x);
  return out;
}
const tag = (n: number, wt: number) => varint((BigInt(n) << 3n) | BigInt(wt));
const lenDelimited = (n: number, body: Uint8Array | number[]) => [...tag(n, 2), ...varint(BigInt(body.length)), ...body];

// ---- value pools ----------------------------------------------------------------------------

export const FIXTURES = { a: 'fz-a', b: 'fz-b', c: 'fz-c' } as const;
export const NAME_POOL = [
  'partitions/fz-a',
  'partitions/fz-a/vps/0',
  'partitions/fz-a/vps/1',
  'partitions/fz-a/vps/2',
  'partitions/fz-b',
  'partitions/fz-b/vps/0',
  'partitions/fz-c',
  'partitions/fz-c/vps/0',
  'partitions/zz-missing',
  'partitions/zz-missing/vps/0',
  'partitions/fz-a/vps/00',
  'partitions/FZ-A',
  'partitions/fz-a/vps/-1',
  'partitions/fz-a/vps/99999',
  'partitions/',
  'partitions',
  '',
  'partitions/fz-a/',
  'partitions/fz-a\n',
  'partitions/fz-a/vps/0/x',
  'x'.repeat(2000),
  '\u0000',
  'partitions/\u00e9',
  'partitions/fz-a/vps/4294967296',
];
const ID_POOL = ['fz-new', 'fz-a', 'fz-rest', '', 'UPPER', 'a'.repeat(70), '-x', 'x-', 'fz-\u00e9', 'fz-b'];
const U64 = [
  0n,
  1n,
  2n,
  3n,
  0xfffn,
  0x1000n,
  0x1001n,
  0x2001n,
  0x9001n,
  0x40000n,
  0x40000000n,
  (1n << 30n) - 1n,
  1n << 30n,
  (1n << 32n) - 1n,
  1n << 32n,
  1n << 63n,
  (1n << 64n) - 1n,
  0xffff_ffff_ffff_fff0n,
];
const U32 = [
  0,
  1,
  2,
  3,
  15,
  16,
  0x0f,
  0x26,
  0xff,
  0x1000,
  0xffff,
  0x10000,
  0x10001,
  1 << 20,
  (1 << 20) + 1,
  0x7fffffff,
  0xffffffff,
  0x40000000,
  0x40000001,
  0x40000002,
  0x40000021,
  0x40000073,
  0x40000080,
  0x40000082,
  0x40000083,
  0x40000084,
  0x40000090,
  0x4000009f,
  0x400000ff,
];

const u64Arb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...U64) },
  { weight: 2, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) },
  { weight: 2, arbitrary: fc.bigInt({ min: 0n, max: 1n << 31n }) },
);
const u32Arb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...U32) },
  { weight: 2, arbitrary: fc.nat({ max: 0xffffffff }) },
  { weight: 2, arbitrary: fc.nat({ max: 4096 }) },
);
const bytesArb = fc.oneof(
  { weight: 6, arbitrary: fc.uint8Array({ maxLength: 64 }) },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom(16, 24, 240, 241, 256, 4096, 4097, 65536, 65537)
      .chain((n) => fc.integer({ min: 0, max: 255 }).map((b) => new Uint8Array(n).fill(b))),
  },
);
const stringArb = (field: string) =>
  field === 'name' || field.endsWith('_name')
    ? fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...NAME_POOL) }, { weight: 1, arbitrary: fc.string({ maxLength: 40 }) })
    : field.endsWith('_id') || field === 'page_token'
      ? fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...ID_POOL) }, { weight: 1, arbitrary: fc.string({ maxLength: 20 }) })
      : fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('x64', 'amd', 'intel', 'vtl', 'monitor', 'both', ''));
const strBytes = (s: string) => [...Buffer.from(s, 'utf8')];

// ---- schema-aware messages -------------------------------------------------------------------

function lookup(typeName: string): { kind: 'message'; d: MessageDesc } | { kind: 'enum'; values: number[] } | undefined {
  const t = (descriptors as Record<string, { format?: string; type?: unknown }>)[typeName.startsWith('.') ? typeName.slice(1) : `vsm.v1.${typeName}`];
  if (!t?.type) return undefined;
  if (t.format?.includes('EnumDescriptorProto')) return { kind: 'enum', values: (t.type as { value: { number: number }[] }).value.map((v) => v.number) };
  return { kind: 'message', d: t.type as MessageDesc };
}

const memo = new Map<string, fc.Arbitrary<number[]>>();

/** Encoded bytes of one field occurrence (tag included). */
function fieldArb(f: FieldDesc, depth: number): fc.Arbitrary<number[]> {
  const vi = (a: fc.Arbitrary<bigint>) => a.map((v) => [...tag(f.number, 0), ...varint(v)]);
  switch (f.type) {
    case 'TYPE_UINT64':
    case 'TYPE_INT64':
    case 'TYPE_SINT64':
      return vi(u64Arb);
    case 'TYPE_UINT32':
    case 'TYPE_INT32':
    case 'TYPE_SINT32':
      return vi(fc.oneof({ weight: 6, arbitrary: u32Arb.map(BigInt) }, { weight: 1, arbitrary: u64Arb }));
    case 'TYPE_BOOL':
      return vi(fc.oneof({ weight: 5, arbitrary: fc.constantFrom(0n, 1n) }, { weight: 1, arbitrary: u64Arb }));
    case 'TYPE_ENUM': {
      const e = lookup(f.typeName);
      const valid = e?.kind === 'enum' ? e.values : [0];
      return vi(
        fc.oneof(
          { weight: 6, arbitrary: fc.constantFrom(...valid).map(BigInt) },
          { weight: 1, arbitrary: fc.constantFrom(-1n, 99n, 0x7fffffffn, (1n << 64n) - 1n) },
        ),
      );
    }
    case 'TYPE_FIXED64':
    case 'TYPE_SFIXED64':
    case 'TYPE_DOUBLE':
      return fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => [...tag(f.number, 1), ...b]);
    case 'TYPE_FIXED32':
    case 'TYPE_SFIXED32':
    case 'TYPE_FLOAT':
      return fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => [...tag(f.number, 5), ...b]);
    case 'TYPE_STRING':
      return fc
        .oneof({ weight: 9, arbitrary: stringArb(f.name).map(strBytes) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 16 }).map((b) => [...b]) })
        .map((b) => lenDelimited(f.number, b));
    case 'TYPE_BYTES':
      return bytesArb.map((b) => lenDelimited(f.number, b));
    case 'TYPE_MESSAGE': {
      const t = lookup(f.typeName);
      const body =
        t?.kind === 'message' && depth < 3
          ? messageBodyArb(t.d, depth + 1)
          : t === undefined // a map entry: key 1, value 2
            ? fc.tuple(stringArb('key'), stringArb('value')).map(([k, v]) => [...lenDelimited(1, strBytes(k)), ...lenDelimited(2, strBytes(v))])
            : fc.constant<number[]>([]);
      return body.map((b) => lenDelimited(f.number, b));
    }
    default:
      return fc.uint8Array({ maxLength: 8 }).map((b) => lenDelimited(f.number, b));
  }
}

function packedArb(f: FieldDesc): fc.Arbitrary<number[]> | undefined {
  if (!['TYPE_UINT64', 'TYPE_UINT32', 'TYPE_INT32', 'TYPE_INT64', 'TYPE_ENUM', 'TYPE_BOOL'].includes(f.type)) return undefined;
  const elem =
    f.type === 'TYPE_ENUM'
      ? fc.oneof(fc.constantFrom(...((lookup(f.typeName) as { values?: number[] })?.values ?? [0]).map(BigInt)), u32Arb.map(BigInt))
      : f.type.includes('64')
        ? u64Arb
        : u32Arb.map(BigInt);
  return fc.array(elem, { maxLength: 8 }).map((vs) => lenDelimited(f.number, vs.flatMap(varint)));
}

function messageBodyArb(d: MessageDesc, depth: number): fc.Arbitrary<number[]> {
  const key = `${d.name}@${depth}`;
  const hit = memo.get(key);
  if (hit) return hit;
  const perField = d.field.map((f) => {
    const one = fieldArb(f, depth);
    if (f.label === 'LABEL_REPEATED') {
      const packed = packedArb(f);
      // Deeper levels repeat less: nested snapshots would otherwise grow geometrically.
      const unpacked = fc.array(one, { maxLength: depth === 0 ? 4 : depth === 1 ? 2 : 1 }).map((xs) => xs.flat());
      return packed ? fc.oneof(unpacked, packed) : unpacked;
    }
    // Absent, once, or (rarely) twice: the last occurrence wins in proto3.
    return fc.oneof(
      { weight: 4, arbitrary: fc.constant<number[]>([]) },
      { weight: 6, arbitrary: one },
      { weight: 1, arbitrary: fc.tuple(one, one).map(([a, b]) => [...a, ...b]) },
    );
  });
  const unknown = fc.oneof({ weight: 9, arbitrary: fc.constant<number[]>([]) }, { weight: 1, arbitrary: randomFieldArb });
  const arb = fc.tuple(fc.tuple(...perField), unknown).map(([fields, extra]) => [...fields.flat(), ...extra]);
  memo.set(key, arb);
  return arb;
}

/** One syntactically plausible field with a random number and wire type. */
const randomFieldArb: fc.Arbitrary<number[]> = fc
  .tuple(fc.integer({ min: 1, max: 40 }), fc.constantFrom(0, 1, 2, 5), u64Arb, fc.uint8Array({ maxLength: 12 }))
  .map(([n, wt, v, b]) =>
    wt === 0
      ? [...tag(n, 0), ...varint(v)]
      : wt === 1
        ? [...tag(n, 1), ...b.slice(0, 8), ...new Array(Math.max(0, 8 - b.length)).fill(0)]
        : wt === 5
          ? [...tag(n, 5), 1, 2, 3, 4]
          : lenDelimited(n, b),
  );

export function messageArb(typeName: string): fc.Arbitrary<Buffer> {
  const t = lookup(typeName);
  if (t?.kind !== 'message') throw new Error(`no message ${typeName}`);
  return messageBodyArb(t.d, 0).map((b) => Buffer.from(b));
}

// ---- raw bytes and mutations ----------------------------------------------------------------

export const rawBytesArb: fc.Arbitrary<Buffer> = fc
  .oneof(
    { weight: 4, arbitrary: fc.uint8Array({ maxLength: 48 }) },
    { weight: 2, arbitrary: fc.array(randomFieldArb, { maxLength: 6 }).map((fs) => new Uint8Array(fs.flat())) },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 100, maxLength: 2000 }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        new Uint8Array([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        new Uint8Array([0x0a, 0x02, 0x12, 0x05]),
      ),
    },
  )
  .map((b) => Buffer.from(b));

type Mutation =
  | { k: 'flip'; at: number; bit: number }
  | { k: 'set'; at: number; v: number }
  | { k: 'truncate'; at: number }
  | { k: 'insert'; at: number; b: Uint8Array }
  | { k: 'dup'; at: number; len: number }
  | { k: 'append'; b: number[] }
  | { k: 'maxvarint'; at: number };

const at = fc.double({ min: 0, max: 1, noNaN: true });
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ k: fc.constant('flip' as const), at, bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ k: fc.constant('set' as const), at, v: fc.constantFrom(0x00, 0xff, 0x7f, 0x80, 0x0a, 0x12, 0x08) }),
  fc.record({ k: fc.constant('truncate' as const), at }),
  fc.record({ k: fc.constant('insert' as const), at, b: fc.uint8Array({ minLength: 1, maxLength: 6 }) }),
  fc.record({ k: fc.constant('dup' as const), at, len: fc.integer({ min: 1, max: 32 }) }),
  fc.record({ k: fc.constant('append' as const), b: randomFieldArb }),
  fc.record({ k: fc.constant('maxvarint' as const), at }),
);

export function mutate(input: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(input);
  const pos = (f: number, n = b.length) => Math.min(n - 1, Math.floor(f * n));
  const splice = (at: number, del: number, ins: Uint8Array | number[]) => Buffer.concat([b.subarray(0, at), Buffer.from(ins), b.subarray(at + del)]);
  for (const m of ms) {
    switch (m.k) {
      case 'flip':
        if (b.length) b[pos(m.at)]! ^= 1 << m.bit;
        break;
      case 'set':
        if (b.length) b[pos(m.at)] = m.v;
        break;
      case 'truncate':
        b = b.subarray(0, Math.floor(m.at * b.length));
        break;
      case 'insert':
        b = splice(pos(m.at, b.length + 1), 0, m.b);
        break;
      case 'dup': {
        const s = pos(m.at, b.length + 1);
        b = splice(s, 0, Buffer.from(b.subarray(s, s + m.len)));
        break;
      }
      case 'append':
        b = Buffer.concat([b, Buffer.from(m.b)]);
        break;
      case 'maxvarint':
        b = splice(pos(m.at, b.length + 1), 0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        break;
    }
  }
  return b;
}

export const mutatedArb = (base: fc.Arbitrary<Buffer>) => fc.tuple(base, fc.array(mutationArb, { minLength: 1, maxLength: 4 })).map(([b, ms]) => mutate(b, ms));

// ---- intercept scenarios (issue #19) ---------------------------------------------------------
// A schedule of actions on a few partitions whose VPs block on monitor intercepts: guest
// accesses to a VTL1-protected page, other guest actions on the same VPs, routes with deadline
// policies (every deadline action, CRASH included), monitors with random answering habits,
// deletes, saves and restores of snapshots taken mid-run, protection changes (stale generations),
// transition watchers, and stray replies. intercepts.fuzz.test.ts runs them concurrently.

export const FI_SLOTS = 3;
export const FI_VPS = 4;
export type FiAccess = 'read' | 'write' | 'execute';
export type FiAnswer = 'ALLOW' | 'SKIP' | 'RETRY' | 'CRASH';
export type FiPage = 'secret' | 'plain' | 'simp';

/** How a monitor behaves: probabilities per intercept, and its own PRNG seed. */
export interface MonitorPersonality {
  /** Chance it answers an intercept that needs a reply (else it leaves it pending). */
  answer: number;
  /** Relative weights of ALLOW, SKIP, RETRY, CRASH. */
  weights: [number, number, number, number];
  duplicate: number;
  stale: number;
  unknown: number;
  invalid: number;
  maskUpdate: number;
  maxDelayMs: number;
  /** Ends its stream itself after this many intercepts (0: never). */
  lifetime: number;
  seed: number;
}

export type FuzzAction =
  | { k: 'access'; slot: number; vp: number; kind: FiAccess; page: FiPage; offset: number; length: number }
  | { k: 'vp'; slot: number; vp: number; op: 'wrmsr' | 'rdmsr' | 'vtlcall' | 'vtlreturn' | 'hypercall' | 'registers' }
  | { k: 'route'; slot: number; route: 'MONITOR' | 'BOTH' | 'HIGHER_VTL'; policy?: { ms: number; action: FiAnswer } }
  | { k: 'monitor'; slot: number; p: MonitorPersonality }
  | { k: 'closeMonitor'; pick: number; how: 'cancel' | 'end' }
  | { k: 'reply'; pick: number; id: 'recent' | 'unknown' | 'zero' | 'huge'; action: number; stale: boolean }
  | { k: 'inspect'; slot: number; vp: number; what: 'pending' | 'partition' | 'vp' | 'list' }
  | { k: 'save'; slot: number }
  | { k: 'delete'; slot: number }
  | { k: 'restore'; slot: number; pick: number }
  | { k: 'protect'; slot: number; page: 'secret' | 'plain'; flags: number }
  | { k: 'watch'; slot: number; ms: number };

const slotArb = fc.integer({ min: 0, max: FI_SLOTS - 1 });
const vpArb = fc.integer({ min: 0, max: FI_VPS - 1 });
const answerArb = fc.constantFrom<FiAnswer>('ALLOW', 'ALLOW', 'ALLOW', 'SKIP', 'SKIP', 'SKIP', 'RETRY', 'RETRY', 'CRASH');
const prob = (max: number) => fc.double({ min: 0, max, noNaN: true });

export const personalityArb: fc.Arbitrary<MonitorPersonality> = fc
  .record({
    answer: fc.oneof(fc.constant(1), prob(1)),
    weights: fc.tuple(
      fc.nat({ max: 6 }),
      fc.nat({ max: 6 }),
      fc.nat({ max: 3 }),
      fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat({ max: 1 }) }),
    ),
    duplicate: prob(0.3),
    stale: prob(0.3),
    unknown: prob(0.2),
    invalid: prob(0.05),
    maskUpdate: prob(0.1),
    maxDelayMs: fc.constantFrom(0, 0, 5, 50, 300),
    lifetime: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 20 }) }),
    seed: fc.nat(),
  })
  .map((p) => ({ ...p, weights: p.weights.every((w) => w === 0) ? ([1, 1, 0, 0] as [number, number, number, number]) : p.weights }));

export const fuzzActionArb: fc.Arbitrary<FuzzAction> = fc.oneof(
  {
    weight: 30,
    arbitrary: fc.record({
      k: fc.constant('access' as const),
      slot: slotArb,
      vp: vpArb,
      kind: fc.constantFrom<FiAccess>('read', 'write', 'write', 'execute'),
      page: fc.constantFrom<FiPage>('secret', 'secret', 'secret', 'plain', 'simp'),
      offset: fc.oneof(fc.constant(0), fc.nat({ max: 4095 })),
      length: fc.integer({ min: 1, max: 16 }),
    }),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      k: fc.constant('vp' as const),
      slot: slotArb,
      vp: vpArb,
      op: fc.constantFrom(
        'wrmsr' as const,
        'rdmsr' as const,
        'vtlcall' as const,
        'vtlreturn' as const,
        'vtlreturn' as const,
        'hypercall' as const,
        'registers' as const,
      ),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('route' as const),
      slot: slotArb,
      route: fc.constantFrom('MONITOR' as const, 'MONITOR' as const, 'MONITOR' as const, 'MONITOR' as const, 'BOTH' as const, 'HIGHER_VTL' as const),
      policy: fc.option(fc.record({ ms: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: 500 })), action: answerArb }), {
        nil: undefined,
        freq: 3,
      }),
    }),
  },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('monitor' as const), slot: slotArb, p: personalityArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('closeMonitor' as const), pick: fc.nat(), how: fc.constantFrom('cancel' as const, 'end' as const) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('reply' as const),
      pick: fc.nat(),
      id: fc.constantFrom('recent' as const, 'recent' as const, 'unknown' as const, 'zero' as const, 'huge' as const),
      action: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 4 }) }, { weight: 1, arbitrary: fc.constantFrom(0, 5, 99) }),
      stale: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('inspect' as const),
      slot: slotArb,
      vp: vpArb,
      what: fc.constantFrom('pending' as const, 'partition' as const, 'vp' as const, 'list' as const),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('save' as const), slot: slotArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('delete' as const), slot: slotArb }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('restore' as const), slot: slotArb, pick: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant('protect' as const),
      slot: slotArb,
      page: fc.constantFrom('secret' as const, 'plain' as const),
      flags: fc.constantFrom(0, 0, 1, 3, 5, 0xf),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('watch' as const), slot: slotArb, ms: fc.integer({ min: 5, max: 300 }) }) },
);

/** A small deterministic PRNG (mulberry32) for a monitor's per-event choices. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
