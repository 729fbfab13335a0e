// Fuzz: a vsm-service (emulator backend, 127.0.0.1:0; in-process, or the real process as a child
// with VSM_FUZZ_SERVER=child, see server.ts) gets thousands of random and
// mutated requests on EVERY unary RPC of every vsm.v1 service as raw bytes (generic grpc-js client,
// Buffer serializers): random byte strings, schema-aware random messages from the .proto
// descriptors, and mutations of valid requests encoded with the generated `Xxx.encode`. Then random
// hypercalls and other guest actions on a partition with VTL1 enabled, and Monitor / watch streams
// with random messages. Asserted: the server never crashes and keeps serving (health SERVING), no
// response is INTERNAL or UNKNOWN, and the model's invariants hold afterwards.
//
//   FUZZ_ITERATIONS (else VSM_FUZZ_INPUTS, default 5000) raw unary requests; guest-action phase = half that.
//   FUZZ_SEED       reproduces a run (printed in the summary).
//   FUZZ_REPORT     path: write the summary JSON there.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { connect, pb, type VsmClient } from '@vsm/client';
import { FIXTURES, type RpcMethod, allMethods, messageArb, mutatedArb, rawBytesArb } from './gen';
import { MSR, VTL1_LAYOUT, setupVtl1Partition } from '../security/support';
import { processGuard } from '../support/guard';
import { type FuzzServer, startFuzzServer } from './server';

const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? process.env.VSM_FUZZ_INPUTS ?? 5000);
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CONCURRENCY = 24;
const DEADLINE_MS = 3000;
const R = pb.HvRegisterName;

jest.setTimeout(15 * 60_000);

let srv: FuzzServer;
let client: VsmClient;
let raw: grpc.Client & Record<string, (...a: unknown[]) => grpc.ClientUnaryCall>;

interface Finding {
  phase: string;
  method: string;
  code: string;
  details: string;
  requestHex: string;
}
const summary = {
  seed: SEED,
  iterations: ITERATIONS,
  inputs: { unary: 0, guestActions: 0, streams: 0, streamMessages: 0 },
  /** Unary requests that did not decode (INVALID_ARGUMENT from the tolerant decoders; grpc-js alone answers INTERNAL). */
  undecodable: 0,
  codes: {} as Record<string, number>,
  byMethod: {} as Record<string, Record<string, number>>,
  findings: [] as Finding[],
  /** Client-side outcomes worth a look (deadline, connection loss), not failures by themselves. */
  notes: [] as Finding[],
  serverErrors: [] as string[],
  ms: 0,
};
const count = (method: string, code: string) => {
  summary.codes[code] = (summary.codes[code] ?? 0) + 1;
  (summary.byMethod[method] ??= {})[code] = (summary.byMethod[method]![code] ?? 0) + 1;
};
const bad = (code: number) => code === grpc.status.INTERNAL || code === grpc.status.UNKNOWN;

const methods = allMethods();
const unaryMethods = methods.filter((m) => !m.requestStream && !m.responseStream);
let snapshotSeed: Buffer | undefined;

function initialContext(): pb.InitialVpContext {
  const seg = (selector: number, attributes: number) => ({ base: 0n, limit: 0xffffffff, selector, attributes });
  return pb.InitialVpContext.fromPartial({
    rip: 0x1000n,
    rsp: 0x8000n,
    rflags: 2n,
    cs: seg(8, 0xa09b),
    ds: seg(16, 0xc093),
    es: seg(16, 0xc093),
    fs: seg(16, 0xc093),
    gs: seg(16, 0xc093),
    ss: seg(16, 0xc093),
    tr: seg(24, 0x8b),
    ldtr: seg(0, 0x82),
    idtr: { limit: 0xfff, base: 0n },
    gdtr: { limit: 0xff, base: 0x1000n },
    efer: 0xd01n,
    cr0: 0x80000031n,
    cr3: 0x10000n,
    cr4: 0x20n,
    msrCrPat: 0x0007040600070406n,
  });
}

/** Valid requests of each method (generated encoders), the bases of the mutations. */
function seedRequests(m: RpcMethod): Buffer[] {
  const vp = 'partitions/fz-a/vps/0';
  const part = 'partitions/fz-a';
  const reg = (name: pb.HvRegisterName, v: bigint) => ({ name, value: { value: { $case: 'reg64' as const, value: v } } });
  const seeds: Record<string, unknown[]> = {
    CreatePartitionRequest: [
      { partitionId: 'fz-new', partition: { vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1 } },
      {
        requestId: 'r1',
        partition: { vpCount: 2, memoryBytes: 1n << 30n, maximumVtl: 2, architecture: pb.Architecture.ARCHITECTURE_ARM64, labels: { a: 'b' } },
      },
    ],
    GetPartitionRequest: [{ name: part }],
    ListPartitionsRequest: [{ pageSize: 2 }, { pageToken: FIXTURES.a, pageSize: 1 }],
    DeletePartitionRequest: [{ name: 'partitions/fz-new' }],
    GetCapabilitiesRequest: [{}],
    GetVirtualProcessorRequest: [{ name: vp }],
    GetVpRegistersRequest: [
      { name: vp },
      { name: vp, vtl: 1, names: [R.HV_REGISTER_NAME_X64_RIP, R.HV_REGISTER_NAME_X64_HYPERCALL, R.HV_REGISTER_NAME_X64_CS] },
    ],
    SetVpRegistersRequest: [
      { name: vp, vtl: 0, registers: [reg(R.HV_REGISTER_NAME_X64_RIP, 0x1000n)] },
      {
        name: vp,
        vtl: 1,
        registers: [
          { name: R.HV_REGISTER_NAME_X64_CS, value: { value: { $case: 'segment', value: { base: 0n, limit: 0xffffffff, selector: 8, attributes: 0xa09b } } } },
        ],
      },
      { name: vp, registers: [reg(R.HV_REGISTER_NAME_SIPP, 0x7001n)] },
    ],
    WriteMsrRequest: [
      { name: vp, msr: MSR.GUEST_OS_ID, value: 1n },
      { name: vp, msr: MSR.SIMP, value: 0x5001n },
    ],
    ReadMsrRequest: [{ name: vp, msr: MSR.HYPERCALL }],
    HypercallRequest: [
      { name: vp, control: 0x0cn | (1n << 32n), inputGpa: 0x20000n, input: Buffer.from('ffffffffffffffff0000000000000000' + '4000000000000000', 'hex') },
      { name: vp, control: 0x11n },
      { name: vp, control: 0x50n | (1n << 16n), input: Buffer.alloc(16), outputSize: 16, inputGpa: 0x21000n, outputGpa: 0x22000n },
    ],
    CallHypercallPageRequest: [
      { name: vp, offset: 0x0f, rcx: 0n },
      { name: vp, offset: 0x26, rcx: 1n },
      { name: vp, offset: 0 },
    ],
    ReadMemoryRequest: [
      { name: vp, gpa: VTL1_LAYOUT.secretGpa, length: 8 },
      { name: vp, gpa: 0x1000n, length: 16 },
    ],
    WriteMemoryRequest: [
      { name: vp, gpa: VTL1_LAYOUT.secretGpa, data: Buffer.from('evil') },
      { name: vp, gpa: 0x30000n, data: Buffer.from('ok') },
    ],
    ExecuteMemoryRequest: [{ name: vp, gpa: 0x1000n, length: 4 }],
    ReadGpaRequest: [
      { name: part, gpa: 0x1000n, length: 16, vtlView: 1 },
      { name: part, gpa: 0n, length: 4096 },
    ],
    WriteGpaRequest: [
      { name: part, gpa: 0x30000n, data: Buffer.from('x') },
      { name: part, gpa: 0x30000n, data: Buffer.from('x'), expectedViewGeneration: 0n },
    ],
    ListOverlaysRequest: [{ name: part }, { name: part, vtl: 1 }],
    EnablePartitionVtlRequest: [
      { name: 'partitions/fz-b', targetVtl: 2 },
      { name: 'partitions/fz-c', targetVtl: 1 },
    ],
    EnableVpVtlRequest: [
      { name: 'partitions/fz-b/vps/0', targetVtl: 1 },
      { name: 'partitions/fz-b/vps/0', targetVtl: 1, initialContext: initialContext() },
    ],
    ModifyVtlProtectionMaskRequest: [{ name: part, protectingVtl: 1, mapFlags: 1, ranges: [{ startPage: 0x50n, pageCount: 2n }] }],
    GetVtlProtectionsRequest: [{ name: part, protectingVtl: 1 }],
    SetInterceptRouteRequest: [
      { name: part, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR, answerDeadlineMs: 50n, deadlineAction: pb.InterceptAction.INTERCEPT_ACTION_SKIP },
      { name: part, route: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH },
    ],
    ListPendingInterceptsRequest: [{ name: part }],
    PostMessageRequest: [{ name: vp, vtl: 1, sint: 2, messageType: 5, payload: Buffer.from('hello') }],
    SignalEventRequest: [{ name: vp, vtl: 1, sint: 0, flag: 7 }],
    GetSynicStateRequest: [{ name: vp, vtl: 1 }],
    SavePartitionRequest: [{ name: part }],
    RestorePartitionRequest: [{ partitionId: 'fz-rest' }],
  };
  const type = (pb as unknown as Record<string, { fromPartial(o: unknown): unknown; encode(m: unknown): { finish(): Uint8Array } }>)[m.requestType];
  const list = seeds[m.requestType] ?? [{ name: part }];
  const out: Buffer[] = type ? list.map((o) => Buffer.from(type.encode(type.fromPartial(o)).finish())) : [];
  if (m.requestType === 'RestorePartitionRequest' && snapshotSeed) out.push(snapshotSeed);
  return out.length ? out : [Buffer.alloc(0)];
}

function inputArb(m: RpcMethod): fc.Arbitrary<Buffer> {
  const seeds = fc.constantFrom(...seedRequests(m));
  const structured = messageArb(m.requestType);
  return fc.oneof(
    { weight: 2, arbitrary: rawBytesArb },
    { weight: 3, arbitrary: structured },
    { weight: 2, arbitrary: mutatedArb(seeds) },
    { weight: 2, arbitrary: mutatedArb(structured) },
    { weight: 1, arbitrary: seeds },
  );
}

function unary(path: string, bytes: Buffer): Promise<{ code: number; details: string }> {
  return new Promise((resolve) => {
    raw.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      new grpc.Metadata(),
      { deadline: Date.now() + DEADLINE_MS },
      (e) => resolve(e ? { code: e.code, details: e.details } : { code: 0, details: '' }),
    );
  });
}

async function pool<T>(items: T[], n: number, fn: (x: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

/** Recreates the fixture partitions when the fuzz deleted or crashed them; keeps room for them. */
const monitors: Array<() => void> = [];
async function ensureFixtures(): Promise<void> {
  const all: pb.Partition[] = [];
  let pageToken = '';
  do {
    const r = await client.partitions.listPartitions({ pageSize: 1000, pageToken });
    all.push(...r.partitions);
    pageToken = r.nextPageToken;
  } while (pageToken);
  const fixtureNames = Object.values(FIXTURES).map((f) => `partitions/${f}`);
  for (const p of all) {
    const isFixture = fixtureNames.includes(p.name);
    const scratch = p.name === 'partitions/fz-rest' || p.name === 'partitions/fz-new';
    if (scratch || (!isFixture && all.length > 20) || (isFixture && p.state !== pb.PartitionState.PARTITION_STATE_ACTIVE))
      await client.partitions.deletePartition({ name: p.name }).catch(() => undefined);
  }
  const have = new Set((await client.partitions.listPartitions({ pageSize: 1000 })).partitions.map((p) => p.name));
  if (!have.has(`partitions/${FIXTURES.a}`)) {
    await setupVtl1Partition(client, FIXTURES.a, 2, Buffer.from('fuzz secret'));
    startAutoMonitor(`partitions/${FIXTURES.a}`);
  }
  if (!have.has(`partitions/${FIXTURES.b}`)) {
    const b = await client.partitions.createPartition({
      partitionId: FIXTURES.b,
      partition: { vpCount: 1, memoryBytes: 1n << 30n, maximumVtl: 2, architecture: pb.Architecture.ARCHITECTURE_ARM64 } as pb.Partition,
    });
    await client.vtl.enablePartitionVtl({ name: b.name, targetVtl: 1 });
    startAutoMonitor(b.name);
  }
  if (!have.has(`partitions/${FIXTURES.c}`))
    await client.partitions.createPartition({ partitionId: FIXTURES.c, partition: { vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 0 } as pb.Partition });
}

/** Answers every intercept that needs a reply (ALLOW / SKIP, sometimes RETRY), so MONITOR routes do not stall the fuzz. */
function startAutoMonitor(name: string): void {
  const m = client.intercepts.monitor();
  m.send({ kind: { $case: 'subscribe', value: { name, accessMask: 0 } as pb.MonitorSubscribe } });
  let n = 0;
  (async () => {
    for await (const ev of m.events) {
      if (ev.kind?.$case !== 'intercept' || !ev.kind.value.needsReply) continue;
      const action = [
        pb.InterceptAction.INTERCEPT_ACTION_ALLOW,
        pb.InterceptAction.INTERCEPT_ACTION_SKIP,
        pb.InterceptAction.INTERCEPT_ACTION_SKIP,
        pb.InterceptAction.INTERCEPT_ACTION_RETRY,
      ][n++ % 4]!;
      m.send({ kind: { $case: 'reply', value: { interceptId: ev.kind.value.interceptId, action, data: Buffer.alloc(0) } as pb.InterceptReply } });
    }
  })().catch(() => undefined);
  monitors.push(() => m.cancel());
}

beforeAll(async () => {
  srv = await startFuzzServer({ maxPartitions: 32 });
  client = connect(srv.address, { deadlineMs: 10_000, retries: 0 });
  const services: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  for (const m of unaryMethods)
    services[m.path] = {
      path: m.path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    };
  const Generic = grpc.makeGenericClientConstructor(services, 'VsmFuzz');
  raw = new Generic(srv.address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 16 << 20,
    'grpc.max_send_message_length': 16 << 20,
  }) as typeof raw;
  await ensureFixtures();
  // A real snapshot as a mutation base for RestorePartition.
  const snap = await new Promise<Buffer>((resolve, reject) =>
    raw.makeUnaryRequest(
      '/vsm.v1.SnapshotService/SavePartition',
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.from(pb.SavePartitionRequest.encode({ name: `partitions/${FIXTURES.a}` }).finish()),
      (e, r) => (e ? reject(e) : resolve(r!)),
    ),
  ).catch(() => undefined);
  if (snap) snapshotSeed = Buffer.from(pb.RestorePartitionRequest.encode({ partitionId: 'fz-rest', snapshot: pb.PartitionSnapshot.decode(snap) }).finish());
});

afterAll(async () => {
  for (const stop of monitors) stop();
  raw?.close();
  client?.close();
  summary.serverErrors = srv?.errors().slice(0, 50) ?? [];
  await srv?.stop();
  const text = JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
  if (process.env.FUZZ_REPORT) fs.writeFileSync(process.env.FUZZ_REPORT, text);
  console.log(`fuzz summary (seed ${SEED}; FUZZ_SEED=${SEED} reproduces):\n${JSON.stringify({ ...summary, byMethod: undefined }, null, 1)}`);
});

const t0 = Date.now();

test(`raw random and mutated requests on every unary RPC (${unaryMethods.length} RPCs)`, async () => {
  // Every unary RPC the generated code knows is in the set (the descriptors and pb agree).
  const generated = Object.entries(pb)
    .filter(([k]) => k.endsWith('ServiceService'))
    .flatMap(([, d]) => Object.values(d as Record<string, { path: string; requestStream: boolean; responseStream: boolean }>))
    .filter((d) => !d.requestStream && !d.responseStream)
    .map((d) => d.path);
  expect(unaryMethods.map((m) => m.path).sort()).toEqual(generated.sort());
  const perMethod = new Map(unaryMethods.map((m) => [m.path, inputArb(m)]));
  const arb = fc.constantFrom(...unaryMethods).chain((m) => perMethod.get(m.path)!.map((bytes) => ({ m, bytes })));
  const inputs = fc.sample(arb, { seed: SEED, numRuns: ITERATIONS });
  // Every method is exercised.
  expect(new Set(inputs.map((i) => i.m.path)).size).toBe(unaryMethods.length);
  const batch = 250;
  for (let start = 0; start < inputs.length; start += batch) {
    await pool(inputs.slice(start, start + batch), CONCURRENCY, async ({ m, bytes }) => {
      const r = await unary(m.path, bytes);
      summary.inputs.unary++;
      if (r.code === grpc.status.INVALID_ARGUMENT && r.details.startsWith('the request is not a valid ')) summary.undecodable++;
      count(`${m.service.replace('vsm.v1.', '')}/${m.method}`, grpc.status[r.code]!);
      if (bad(r.code))
        summary.findings.push({
          phase: 'unary',
          method: m.path,
          code: grpc.status[r.code]!,
          details: r.details,
          requestHex: bytes.toString('hex').slice(0, 2000),
        });
      else if (r.code === grpc.status.UNAVAILABLE || r.code === grpc.status.DEADLINE_EXCEEDED)
        summary.notes.push({ phase: 'unary', method: m.path, code: grpc.status[r.code]!, details: r.details, requestHex: bytes.toString('hex').slice(0, 400) });
    });
    await ensureFixtures();
  }
  expect(summary.findings).toEqual([]);
});

test('random hypercalls and guest actions on a partition with VTL1 enabled', async () => {
  await ensureFixtures();
  const codes = (await client.partitions.getCapabilities({})).hypercallCodes;
  const vpName = fc.constantFrom(`partitions/${FIXTURES.a}/vps/0`, `partitions/${FIXTURES.a}/vps/1`);
  const gpa = fc.oneof(
    fc.constantFrom(0n, 0x1000n, 0x2000n, VTL1_LAYOUT.secretGpa, VTL1_LAYOUT.vtl1SimpGpa, 0x20000n, (1n << 30n) - 8n, 1n << 30n, (1n << 64n) - 1n),
    fc.bigInt({ min: 0n, max: (1n << 30n) - 1n }),
  );
  const control = fc
    .record({
      code: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...codes) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
      fast: fc.boolean(),
      varHeader: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x3ff }) }),
      reps: fc.oneof(fc.constantFrom(0, 1, 2, 0xfff), fc.integer({ min: 0, max: 0xfff })),
      start: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xfff }) }),
      junk: fc.oneof({ weight: 5, arbitrary: fc.constant(0n) }, { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
    })
    .map((c) => BigInt(c.code) | (c.fast ? 1n << 16n : 0n) | (BigInt(c.varHeader) << 17n) | (BigInt(c.reps) << 32n) | (BigInt(c.start) << 48n) | c.junk);
  const input = fc.oneof(
    { weight: 3, arbitrary: fc.uint8Array({ maxLength: 64 }) },
    // Plausible VSM inputs: partition id ~0 (self), VTL/target bytes, a page list.
    {
      weight: 3,
      arbitrary: fc
        .tuple(
          fc.constantFrom(0xffff_ffff_ffff_ffffn, 0n, 1n),
          fc.nat({ max: 0xffffffff }),
          fc.nat({ max: 0xff }),
          fc.array(fc.bigInt({ min: 0n, max: 0x100n }), { maxLength: 6 }),
        )
        .map(([pid, w, b, pages]) => {
          const buf = Buffer.alloc(16 + pages.length * 8);
          buf.writeBigUInt64LE(pid, 0);
          buf.writeUInt32LE(w, 8);
          buf[12] = b;
          pages.forEach((p, i) => {
            buf.writeBigUInt64LE(p, 16 + i * 8);
          });
          return new Uint8Array(buf);
        }),
    },
    { weight: 1, arbitrary: fc.integer({ min: 4000, max: 4200 }).map((n) => new Uint8Array(n).fill(0x41)) },
  );
  const action = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        k: fc.constant('hypercall' as const),
        name: vpName,
        control,
        inputGpa: gpa,
        outputGpa: gpa,
        input,
        outputSize: fc.oneof(fc.constantFrom(0, 8, 16, 4096, 4097), fc.nat({ max: 256 })),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('page' as const),
        name: vpName,
        offset: fc.oneof(fc.constantFrom(0, 0x0f, 0x26, 0x04, 0x1b), fc.nat({ max: 0xffff })),
        rcx: fc.option(control, { nil: undefined }),
        rdx: fc.option(gpa, { nil: undefined }),
        r8: fc.option(gpa, { nil: undefined }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('wrmsr' as const),
        name: vpName,
        msr: fc.oneof(fc.constantFrom(...Object.values(MSR)), fc.integer({ min: 0x40000000, max: 0x400000ff })),
        value: fc.oneof(
          gpa.map((g) => g | 1n),
          gpa,
        ),
      }),
    },
    { weight: 1, arbitrary: fc.record({ k: fc.constant('rdmsr' as const), name: vpName, msr: fc.integer({ min: 0x40000000, max: 0x400000ff }) }) },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constant('mem' as const),
        name: vpName,
        kind: fc.constantFrom('read', 'write', 'execute'),
        gpa,
        length: fc.integer({ min: 1, max: 16 }),
      }),
    },
  );
  const actions = fc.sample(action, { seed: SEED + 1, numRuns: Math.floor(ITERATIONS / 2) });
  let done = 0;
  for (let start = 0; start < actions.length; start += 200) {
    // Guest actions on one VP are serial in a real guest; the fuzz keeps a few in flight anyway.
    await pool(actions.slice(start, start + 200), 4, async (a) => {
      let p: Promise<unknown>;
      switch (a.k) {
        case 'hypercall':
          p = client.guest.hypercall(
            { name: a.name, control: a.control, inputGpa: a.inputGpa, outputGpa: a.outputGpa, input: Buffer.from(a.input), outputSize: a.outputSize },
            { deadlineMs: DEADLINE_MS },
          );
          break;
        case 'page':
          p = client.guest.callHypercallPage({ name: a.name, offset: a.offset, rcx: a.rcx, rdx: a.rdx, r8: a.r8 }, { deadlineMs: DEADLINE_MS });
          break;
        case 'wrmsr':
          p = client.guest.writeMsr({ name: a.name, msr: a.msr, value: a.value }, { deadlineMs: DEADLINE_MS });
          break;
        case 'rdmsr':
          p = client.guest.readMsr({ name: a.name, msr: a.msr }, { deadlineMs: DEADLINE_MS });
          break;
        case 'mem':
          p =
            a.kind === 'read'
              ? client.guest.readMemory({ name: a.name, gpa: a.gpa, length: a.length }, { deadlineMs: DEADLINE_MS })
              : a.kind === 'write'
                ? client.guest.writeMemory({ name: a.name, gpa: a.gpa, data: Buffer.alloc(a.length, 0x5a) }, { deadlineMs: DEADLINE_MS })
                : client.guest.executeMemory({ name: a.name, gpa: a.gpa, length: a.length }, { deadlineMs: DEADLINE_MS });
          break;
      }
      const code = await p.then(
        () => 0,
        (e: { code?: number }) => e.code ?? grpc.status.UNKNOWN,
      );
      summary.inputs.guestActions++;
      count(`guest:${a.k}`, grpc.status[code]!);
      if (bad(code))
        summary.findings.push({
          phase: 'guest',
          method: a.k,
          code: grpc.status[code]!,
          details: '',
          requestHex: JSON.stringify(a, (_k, v: unknown) =>
            typeof v === 'bigint' ? `0x${v.toString(16)}` : v instanceof Uint8Array ? Buffer.from(v).toString('hex').slice(0, 200) : v,
          ),
        });
    });
    done += 200;
    await ensureFixtures();
  }
  expect(done).toBeGreaterThan(0);
  expect(summary.findings).toEqual([]);
});

test('Monitor and WatchVtlTransitions streams with random messages', async () => {
  const Monitor = '/vsm.v1.InterceptService/Monitor';
  const Watch = '/vsm.v1.VtlService/WatchVtlTransitions';
  const subscribe = Buffer.from(
    pb.MonitorRequest.encode({ kind: { $case: 'subscribe', value: { name: `partitions/${FIXTURES.a}`, accessMask: 0 } as pb.MonitorSubscribe } }).finish(),
  );
  const enc = (m: pb.MonitorRequest) => Buffer.from(pb.MonitorRequest.encode(m).finish());
  const reply = fc
    .record({
      interceptId: fc.bigInt({ min: 0n, max: 64n }),
      action: fc.integer({ min: 0, max: 5 }),
      data: fc.uint8Array({ maxLength: 16 }),
      viewGeneration: fc.option(fc.bigInt({ min: 0n, max: 64n }), { nil: undefined }),
    })
    .map((r) => enc({ kind: { $case: 'reply', value: { ...r, data: Buffer.from(r.data) } as pb.InterceptReply } }));
  const update = fc
    .record({ op: fc.integer({ min: 0, max: 4 }), accessMask: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.nat()) })
    .map((u) => enc({ kind: { $case: 'updateEvents', value: u as pb.MonitorUpdateEvents } }));
  const msg = fc.oneof(
    { weight: 2, arbitrary: rawBytesArb },
    { weight: 2, arbitrary: messageArb('MonitorRequest') },
    { weight: 1, arbitrary: mutatedArb(fc.constant(subscribe)) },
    { weight: 4, arbitrary: reply },
    { weight: 2, arbitrary: update },
  );
  const validUpdate = fc
    .record({ op: fc.integer({ min: 1, max: 3 }), accessMask: fc.integer({ min: 0, max: 7 }) })
    .map((u) => enc({ kind: { $case: 'updateEvents', value: u as pb.MonitorUpdateEvents } }));
  const sessions = fc.sample(
    fc.oneof(
      fc.tuple(fc.boolean(), fc.array(msg, { minLength: 1, maxLength: 30, size: 'medium' })),
      // Well-formed sessions: subscribe, then answers to (mostly unknown) intercepts and mask changes.
      fc.tuple(fc.constant(true), fc.array(fc.oneof(reply, validUpdate), { minLength: 1, maxLength: 30, size: 'medium' })),
    ),
    { seed: SEED + 2, numRuns: Math.max(12, Math.floor(ITERATIONS / 250)) },
  );
  const monitorCodes: number[] = [];
  await pool(sessions, 6, async ([validFirst, msgs]) => {
    const call = raw.makeBidiStreamRequest(
      Monitor,
      (b: Buffer) => b,
      (b: Buffer) => b,
      new grpc.Metadata(),
      { deadline: Date.now() + 5000 },
    );
    const code = new Promise<number>((resolve) => {
      call.on('data', () => undefined);
      call.on('error', (e: grpc.ServiceError) => resolve(e.code));
      call.on('status', (s: grpc.StatusObject) => resolve(s.code));
    });
    if (validFirst) call.write(subscribe);
    for (const m of msgs) call.write(m);
    summary.inputs.streams++;
    summary.inputs.streamMessages += msgs.length + (validFirst ? 1 : 0);
    call.end();
    // The server ends the stream after the half-close; cancelling is only the safety net.
    const timer = setTimeout(() => call.cancel(), 5000);
    const c = await code;
    clearTimeout(timer);
    monitorCodes.push(c);
    count('stream:Monitor', grpc.status[c]!);
    if (bad(c))
      summary.findings.push({
        phase: 'monitor',
        method: Monitor,
        code: grpc.status[c]!,
        details: '',
        requestHex: msgs
          .map((m) => m.toString('hex'))
          .join(' ')
          .slice(0, 2000),
      });
  });
  const watches = fc.sample(fc.oneof(rawBytesArb, messageArb('WatchVtlTransitionsRequest')), { seed: SEED + 3, numRuns: 40 });
  await pool(watches, 8, async (bytes) => {
    const call = raw.makeServerStreamRequest(
      Watch,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      new grpc.Metadata(),
      {},
    );
    const code = new Promise<number>((resolve) => {
      call.on('data', () => undefined);
      call.on('error', (e: grpc.ServiceError) => resolve(e.code));
      call.on('status', (s: grpc.StatusObject) => resolve(s.code));
    });
    const timer = setTimeout(() => call.cancel(), 100);
    const c = await code;
    clearTimeout(timer);
    summary.inputs.streams++;
    count('stream:WatchVtlTransitions', grpc.status[c]!);
    if (bad(c)) summary.findings.push({ phase: 'watch', method: Watch, code: grpc.status[c]!, details: '', requestHex: bytes.toString('hex') });
  });
  expect(monitorCodes.length).toBe(sessions.length);
  // Every session ended by the server (OK or a validation error), none had to be cancelled.
  expect(monitorCodes.filter((c) => c === grpc.status.CANCELLED)).toEqual([]);
  expect(summary.findings).toEqual([]);
});

test('afterwards: still serving, and the invariants hold', async () => {
  summary.ms = Date.now() - t0;
  // Nothing escaped the service (jest and the process guard fail the file on an uncaught exception
  // or unhandled rejection of the in-process service; a child service must still be running).
  expect(processGuard()?.records.filter((r) => !r.thrown) ?? []).toEqual([]);
  expect(srv.died()).toBeUndefined();
  // Health.
  const health = await new Promise<Buffer>((resolve, reject) =>
    raw.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      (e, r) => (e ? reject(e) : resolve(r!)),
    ),
  );
  expect([...health]).toEqual([0x08, 0x01]); // SERVING
  // Every partition ListPartitions returns is gettable; every VP readable; active VTL enabled.
  const all: pb.Partition[] = [];
  let pageToken = '';
  do {
    const r = await client.partitions.listPartitions({ pageSize: 7, pageToken });
    all.push(...r.partitions);
    pageToken = r.nextPageToken;
  } while (pageToken);
  expect(all.length).toBeGreaterThan(0);
  expect(new Set(all.map((p) => p.name)).size).toBe(all.length);
  const overlayMsrs: Array<[pb.HvRegisterName, pb.OverlayKind, boolean]> = [
    [R.HV_REGISTER_NAME_X64_HYPERCALL, pb.OverlayKind.OVERLAY_KIND_HYPERCALL, false],
    [R.HV_REGISTER_NAME_REFERENCE_TSC, pb.OverlayKind.OVERLAY_KIND_REFERENCE_TSC, false],
    [R.HV_REGISTER_NAME_VP_ASSIST_PAGE, pb.OverlayKind.OVERLAY_KIND_VP_ASSIST_PAGE, true],
    [R.HV_REGISTER_NAME_SIPP, pb.OverlayKind.OVERLAY_KIND_SIMP, true],
    [R.HV_REGISTER_NAME_SIFP, pb.OverlayKind.OVERLAY_KIND_SIEFP, true],
  ];
  const problems: string[] = [];
  for (const p of all) {
    const got = await client.partitions.getPartition({ name: p.name });
    expect(got.name).toBe(p.name);
    const expected = new Set<string>();
    const partitionWideSeen = new Set<number>();
    for (let i = 0; i < p.vpCount; i++) {
      const name = `${p.name}/vps/${i}`;
      const vp = await client.vps.getVirtualProcessor({ name });
      const st = vp.vtlStatus!;
      if (((st.enabledVtlSet >> st.activeVtl) & 1) !== 1)
        problems.push(`${name}: active VTL ${st.activeVtl} is not in enabled set 0x${st.enabledVtlSet.toString(16)}`);
      if ((p.enabledVtlSet & st.enabledVtlSet) !== st.enabledVtlSet)
        problems.push(`${name}: VP VTLs 0x${st.enabledVtlSet.toString(16)} not a subset of the partition's 0x${p.enabledVtlSet.toString(16)}`);
      await client.vps.getVpRegisters({ name }); // every modelled register of the active VTL
      for (let v = 0; v <= 2; v++) {
        if (((st.enabledVtlSet >> v) & 1) === 0) continue;
        const regs = await client.vps.getVpRegisters({ name, vtl: v });
        expect(regs.registers.length).toBeGreaterThan(10);
        const values = await client.vps.getVpRegisters({ name, vtl: v, names: overlayMsrs.map(([r]) => r) });
        values.registers.forEach((r, k) => {
          const [, kind, perVp] = overlayMsrs[k]!;
          const val = r.value?.value?.$case === 'reg64' ? r.value.value.value : 0n;
          if ((val & 1n) === 0n) return;
          if (!perVp && partitionWideSeen.has(v * 16 + k)) return;
          if (!perVp) partitionWideSeen.add(v * 16 + k);
          expected.add(`${kind}/${v}/${perVp ? i : '-'}/${(val & ~0xfffn).toString(16)}`);
        });
      }
    }
    const listed = new Set(
      (await client.memory.listOverlays({ name: p.name })).overlays.map((o) => `${o.kind}/${o.vtl}/${o.vpIndex ?? '-'}/${o.gpa.toString(16)}`),
    );
    const missing = [...expected].filter((x) => !listed.has(x));
    const extra = [...listed].filter((x) => !expected.has(x));
    if (missing.length || extra.length) problems.push(`${p.name}: overlays from MSRs vs ListOverlays: missing ${missing.join(',')}; extra ${extra.join(',')}`);
    await client.intercepts.listPendingIntercepts({ name: p.name });
  }
  expect(problems).toEqual([]);
});
