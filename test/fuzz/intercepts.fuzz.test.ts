// Fuzz (issue #19): monitor intercepts under concurrency. A few partitions (4 VPs, VTL1 protects a
// page no-access for VTL0, route MONITOR) get a random schedule (gen.ts `fuzzActionArb`) run by
// several workers at once: guest accesses that block on the monitor route, other guest actions on
// the same (suspended) VPs, routes with deadline policies (1..500 ms, every deadline action, CRASH
// included), monitors answering at random (ALLOW/SKIP/RETRY/CRASH, duplicates, stale generations,
// unknown ids, invalid actions, mask changes, delays, self-closing), stray replies, DeletePartition
// and RestorePartition (of snapshots taken mid-run, pending intercepts and suspended VPs included),
// protection changes, transition watchers. Every round ends by answering whatever is pending.
//
// Invariants: the service never exits or throws (the process guard; a child's exit); no response
// and no stream end is INTERNAL or UNKNOWN; every blocked guest action returns (within its 30 s
// deadline, and within 20 s once the round's answers are in); an intercept is APPLIED at most once;
// a Monitor stream subscribed to a partition that crashed or was deleted ends; the service reports
// no internal error; afterwards it serves and every partition is consistent.
//
//   VSM_FUZZ_INPUTS  actions (default 4000; `npm run fuzz:long` runs 100,000)
//   VSM_FUZZ_SERVER  child: the service as a separate process (dist/main.js; fuzz:long does)
//   VSM_FUZZ_SEED    (or FUZZ_SEED) reproduces the schedule (interleavings still vary)
//   FUZZ_REPORT      path: the summary JSON is written next to it (x.json -> x.intercepts.json)
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { connect, type MonitorSession, pb, type VsmClient, VsmError } from '@vsm/client';
import { FI_SLOTS, FI_VPS, type FiAnswer, type FuzzAction, type MonitorPersonality, fuzzActionArb, prng } from './gen';
import { type FuzzServer, startFuzzServer } from './server';
import { MSR, VTL1_LAYOUT, setupVtl1Partition } from '../security/support';
import { processGuard } from '../support/guard';

const INPUTS = Number(process.env.VSM_FUZZ_INPUTS ?? 4000);
const SEED = Number(process.env.VSM_FUZZ_SEED ?? process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ROUND = 150;
const WORKERS = 8;
const ACCESS_DEADLINE_MS = 30_000;
const QUIESCE_MS = 20_000;
const MAX_MONITORS = 9;
const MAX_WATCHES = 4;
const PAGES = { secret: VTL1_LAYOUT.secretGpa, plain: 0x30000n, simp: VTL1_LAYOUT.vtl1SimpGpa };
const ACTIONS: Record<FiAnswer, pb.InterceptAction> = {
  ALLOW: pb.InterceptAction.INTERCEPT_ACTION_ALLOW,
  SKIP: pb.InterceptAction.INTERCEPT_ACTION_SKIP,
  RETRY: pb.InterceptAction.INTERCEPT_ACTION_RETRY,
  CRASH: pb.InterceptAction.INTERCEPT_ACTION_CRASH,
};
const ROUTES = {
  MONITOR: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR,
  BOTH: pb.InterceptRoute.INTERCEPT_ROUTE_BOTH,
  HIGHER_VTL: pb.InterceptRoute.INTERCEPT_ROUTE_HIGHER_VTL,
};

jest.setTimeout(Math.max(10 * 60_000, INPUTS * 30));

interface Finding {
  what: string;
  code?: string;
  details: string;
  action?: string;
  recent?: string[];
}
const summary = {
  seed: SEED,
  inputs: INPUTS,
  server: '',
  done: {
    actions: 0,
    rounds: 0,
    accesses: 0,
    slowAccesses: 0,
    repliesSent: 0,
    monitorEvents: 0,
    monitorsOpened: 0,
    watches: 0,
    deletes: 0,
    restores: 0,
    snapshots: 0,
    crashesSeen: 0,
    crashedAccesses: 0,
  },
  codes: {} as Record<string, Record<string, number>>,
  replyStatuses: {} as Record<string, number>,
  findings: [] as Finding[],
  findingCount: 0,
  findingKinds: {} as Record<string, number>,
  notes: [] as Finding[],
  serverErrors: [] as string[],
  ms: { total: 0, rounds: 0, quiesce: 0, quiesceInflight: 0, quiesceStreams: 0, quiesceForget: 0 },
};
const t0 = Date.now();
const show = (x: unknown) => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
/** Findings are kept up to 10 of each kind (every kind shows in the report), all are counted. */
const finding = (f: Finding) => {
  summary.findingCount++;
  const kind = f.what.replace(/ \(round \d+\)$/, '');
  const n = (summary.findingKinds[kind] = (summary.findingKinds[kind] ?? 0) + 1);
  if (n <= 10) summary.findings.push(f);
};
const note = (f: Finding) => {
  if (summary.notes.length < 50) summary.notes.push(f);
};
const codeName = (e: unknown) => (e instanceof VsmError ? (grpc.status[e.code] ?? String(e.code)) : 'UNKNOWN');
const count = (what: string, code: string) => {
  const m = (summary.codes[what] ??= {});
  m[code] = (m[code] ?? 0) + 1;
};
const bad = (code: string) => code === 'INTERNAL' || code === 'UNKNOWN';

let server: FuzzServer;
let client: VsmClient;
let base: pb.PartitionSnapshot;
const snapshots: pb.PartitionSnapshot[] = [];

/** Calls `fn`, records its code under `what`, and flags INTERNAL/UNKNOWN. */
async function call<T>(what: string, fn: () => Promise<T>, a?: FuzzAction): Promise<T | undefined> {
  try {
    const r = await fn();
    count(what, 'OK');
    return r;
  } catch (e) {
    const code = codeName(e);
    count(what, code);
    if (bad(code)) finding({ what, code, details: e instanceof Error ? e.message : String(e), action: a && show(a) });
    else if (code === 'UNAVAILABLE') note({ what, code, details: e instanceof Error ? e.message : String(e) });
    return undefined;
  }
}

// ---- partitions (slots) ---------------------------------------------------------------------------

interface Slot {
  id: string;
  name: string;
  inc: number;
  endedAt: Map<number, number>;
  reviving?: Promise<void>;
}
const slots: Slot[] = Array.from({ length: FI_SLOTS }, (_, i) => ({ id: `fi-${i}`, name: `partitions/fi-${i}`, inc: 0, endedAt: new Map() }));
const vpName = (s: Slot, vp: number) => `${s.name}/vps/${vp}`;

async function revive(s: Slot): Promise<void> {
  if (s.reviving) return s.reviving;
  s.reviving = reviveNow(s).finally(() => {
    s.reviving = undefined;
  });
  return s.reviving;
}

async function reviveNow(s: Slot): Promise<void> {
  const p = await call('revive:GetPartition', () => client.partitions.getPartition({ name: s.name }));
  if (p && p.state === pb.PartitionState.PARTITION_STATE_ACTIVE) return;
  if (p) {
    const t = Date.now();
    if (await call('revive:DeletePartition', () => client.partitions.deletePartition({ name: s.name }))) {
      s.endedAt.set(s.inc, t);
      s.inc++;
    }
  }
  if (await call('revive:RestorePartition', () => client.snapshots.restorePartition({ partitionId: s.id, snapshot: base }))) s.inc++;
  await call('revive:SetInterceptRoute', () => client.intercepts.setInterceptRoute({ name: s.name, route: pb.InterceptRoute.INTERCEPT_ROUTE_MONITOR }));
}

// ---- monitors -----------------------------------------------------------------------------------

interface Mon {
  slot: Slot;
  inc: number;
  janitor: boolean;
  /** Its personality answers nothing but RETRY: with the page still refused, it keeps the access
   *  intercepting for ever, and its answer always comes first (it subscribed before the janitor). */
  retryOnly: boolean;
  s: MonitorSession;
  /** We half-closed or cancelled it (no more writes). */
  closedByUs: boolean;
  closedHow?: string;
  subscribedAt?: number;
  ended?: string;
  done: Promise<void>;
  recent: bigint[];
  /** Kinds of the last responses and requests (newest last), for reports. */
  last: string[];
}
const monitors: Mon[] = [];
const applied = new Map<string, number>();

function openMonitor(s: Slot, p: MonitorPersonality, janitor = false): Mon {
  const rng = prng(p.seed);
  const session = client.intercepts.monitor();
  const retryOnly = p.answer > 0 && p.weights[2] > 0 && p.weights[0] === 0 && p.weights[1] === 0 && p.weights[3] === 0;
  const m: Mon = { slot: s, inc: s.inc, janitor, retryOnly, s: session, closedByUs: false, recent: [], last: [], done: Promise.resolve() };
  const trace = (x: string) => {
    m.last.push(x);
    if (m.last.length > 6) m.last.shift();
  };
  const send = (req: Partial<pb.MonitorRequest>) => {
    if (m.closedByUs || m.ended) return;
    try {
      session.send(req);
      trace(`sent ${req.kind?.$case === 'reply' ? `reply ${pb.InterceptAction[req.kind.value.action] ?? req.kind.value.action}` : req.kind?.$case}`);
      if (req.kind?.$case === 'reply') summary.done.repliesSent++;
    } catch (e) {
      note({ what: 'monitor send', details: String(e) });
    }
  };
  const reply = (interceptId: bigint, action: pb.InterceptAction, data: Buffer, viewGeneration?: bigint) =>
    send({ kind: { $case: 'reply', value: { interceptId, action, data, viewGeneration } as pb.InterceptReply } });
  const pick = (): FiAnswer => {
    const total = p.weights.reduce((a, b) => a + b, 0);
    let r = rng() * total;
    const names: FiAnswer[] = ['ALLOW', 'SKIP', 'RETRY', 'CRASH'];
    for (let i = 0; i < 4; i++) {
      r -= p.weights[i]!;
      if (r < 0) return names[i]!;
    }
    return 'SKIP';
  };
  let seen = 0;
  session.send({ kind: { $case: 'subscribe', value: { name: s.name, accessMask: 0 } as pb.MonitorSubscribe } });
  summary.done.monitorsOpened++;
  monitors.push(m);
  m.done = (async () => {
    try {
      for await (const ev of session.events) {
        summary.done.monitorEvents++;
        const k = ev.kind;
        trace(`got ${k?.$case === 'replyResult' ? `replyResult ${pb.ReplyStatus[k.value.status]}` : k?.$case}`);
        if (k?.$case === 'subscription') {
          m.subscribedAt ??= Date.now();
          continue;
        }
        if (k?.$case === 'replyResult') {
          const st = pb.ReplyStatus[k.value.status] ?? String(k.value.status);
          summary.replyStatuses[st] = (summary.replyStatuses[st] ?? 0) + 1;
          if (k.value.status === pb.ReplyStatus.REPLY_STATUS_UNSPECIFIED)
            finding({ what: 'Monitor replyResult', details: `status UNSPECIFIED: ${show(k.value)}` });
          if (k.value.status === pb.ReplyStatus.REPLY_STATUS_APPLIED) {
            const key = `${s.id}#${m.inc}:${k.value.interceptId}`;
            const n = (applied.get(key) ?? 0) + 1;
            applied.set(key, n);
            if (n > 1) finding({ what: 'intercept answered twice', details: `${key} got APPLIED ${n} times` });
          }
          continue;
        }
        if (k?.$case !== 'intercept') continue;
        const x = k.value;
        m.recent.push(x.interceptId);
        if (m.recent.length > 8) m.recent.shift();
        if (!x.needsReply) continue;
        if (janitor) {
          reply(x.interceptId, pb.InterceptAction.INTERCEPT_ACTION_SKIP, Buffer.alloc(0));
          continue;
        }
        if (p.maskUpdate > rng())
          send({ kind: { $case: 'updateEvents', value: { op: 1 + Math.floor(rng() * 3), accessMask: Math.floor(rng() * 8) } as pb.MonitorUpdateEvents } });
        if (rng() < p.answer) {
          const action = rng() < p.invalid ? [0, 5, 99][Math.floor(rng() * 3)]! : ACTIONS[pick()];
          const gen = rng() < p.stale ? (x.viewGeneration > 0n ? x.viewGeneration - 1n : x.viewGeneration + 1n) : rng() < 0.5 ? x.viewGeneration : undefined;
          const data = Buffer.alloc(Math.floor(rng() * 17), 0x5a);
          const dup = rng() < p.duplicate;
          const unknown = rng() < p.unknown;
          const go = () => {
            reply(x.interceptId, action, data, gen);
            if (dup) reply(x.interceptId, ACTIONS[pick()], data, gen);
            if (unknown) reply(x.interceptId + 100_000n, ACTIONS[pick()], data);
          };
          if (p.maxDelayMs > 0) setTimeout(go, Math.floor(rng() * p.maxDelayMs));
          else go();
        }
        if (p.lifetime && ++seen >= p.lifetime) {
          m.closedByUs = true;
          m.closedHow = rng() < 0.5 ? 'end (lifetime)' : 'cancel (lifetime)';
          if (m.closedHow.startsWith('end')) session.close();
          else session.cancel();
        }
      }
      m.ended = 'OK';
    } catch (e) {
      m.ended = codeName(e);
      if (bad(m.ended)) finding({ what: 'Monitor stream end', code: m.ended, details: e instanceof Error ? e.message : String(e) });
    }
    count('stream:Monitor', m.ended);
  })();
  return m;
}

const JANITOR: MonitorPersonality = {
  answer: 1,
  weights: [0, 1, 0, 0],
  duplicate: 0,
  stale: 0,
  unknown: 0,
  invalid: 0,
  maskUpdate: 0,
  maxDelayMs: 0,
  lifetime: 0,
  seed: 1,
};

function closeMonitor(m: Mon, how: 'cancel' | 'end'): void {
  if (m.closedByUs || m.ended) return;
  m.closedByUs = true;
  m.closedHow = how;
  if (how === 'end') m.s.close();
  else m.s.cancel();
}

const liveMonitors = () => monitors.filter((m) => !m.ended && !m.closedByUs && !m.janitor);

// ---- guest accesses that may block ------------------------------------------------------------------

interface Inflight {
  a: FuzzAction;
  started: number;
  settled: boolean;
  p: Promise<void>;
  inc: number;
}
const inflight = new Set<Inflight>();

function access(a: Extract<FuzzAction, { k: 'access' }>): Inflight {
  const s = slots[a.slot]!;
  const name = vpName(s, a.vp);
  const offset = Math.min(a.offset, 4096 - a.length);
  const gpa = PAGES[a.page] + BigInt(offset);
  const o = { deadlineMs: ACCESS_DEADLINE_MS };
  const req =
    a.kind === 'read'
      ? client.guest.readMemory({ name, gpa, length: a.length }, o)
      : a.kind === 'write'
        ? client.guest.writeMemory({ name, gpa, data: Buffer.alloc(a.length, 0x41 + a.vp) }, o)
        : client.guest.executeMemory({ name, gpa, length: a.length }, o);
  summary.done.accesses++;
  const rec: Inflight = { a, started: Date.now(), settled: false, p: Promise.resolve(), inc: s.inc };
  rec.p = (req as Promise<{ outcome?: pb.GuestActionOutcome }>)
    .then(
      (r) => {
        count(`access:${a.kind}`, 'OK');
        if (r.outcome?.partitionCrashed) {
          summary.done.crashedAccesses++;
          // The partition crashed under this access: delete it and restore it soon, while the schedule goes on.
          setTimeout(() => void revive(s), Math.floor(Math.random() * 50));
        }
      },
      (e: unknown) => {
        const code = codeName(e);
        count(`access:${a.kind}`, code);
        if (bad(code)) finding({ what: `guest ${a.kind}`, code, details: e instanceof Error ? e.message : String(e), action: show(a) });
        if (code === 'DEADLINE_EXCEEDED')
          finding({ what: 'a blocked guest action did not return within its deadline', code, details: `${ACCESS_DEADLINE_MS} ms`, action: show(a) });
      },
    )
    .finally(() => {
      rec.settled = true;
      inflight.delete(rec);
      if (Date.now() - rec.started > 50) summary.done.slowAccesses++;
    });
  inflight.add(rec);
  return rec;
}

// ---- one action ---------------------------------------------------------------------------------

const watches = new Set<AbortController>();

/** The last actions on each slot (with the time they started), for reports. */
const recentBySlot: string[][] = Array.from({ length: FI_SLOTS }, () => []);
const traceAction = (a: FuzzAction) => {
  if (!('slot' in a)) return;
  const r = recentBySlot[a.slot]!;
  r.push(`${Date.now() - t0}ms ${show(a)}`);
  if (r.length > 40) r.shift();
};

async function run(a: FuzzAction): Promise<void> {
  summary.done.actions++;
  traceAction(a);
  const s = 'slot' in a ? slots[a.slot]! : slots[0]!;
  switch (a.k) {
    case 'access': {
      const rec = access(a);
      // Mostly move on while it waits; sometimes wait for it (a guest that blocks its worker).
      await Promise.race([rec.p, new Promise((r) => setTimeout(r, Math.random() < 0.8 ? 0 : 20))]);
      return;
    }
    case 'vp': {
      const name = vpName(s, a.vp);
      const o = { deadlineMs: 10_000 };
      switch (a.op) {
        case 'wrmsr':
          await call('vp:WriteMsr', () => client.guest.writeMsr({ name, msr: MSR.GUEST_OS_ID, value: BigInt(a.vp + 1) }, o), a);
          return;
        case 'rdmsr':
          await call('vp:ReadMsr', () => client.guest.readMsr({ name, msr: MSR.GUEST_OS_ID }, o), a);
          return;
        case 'vtlcall':
          await call('vp:VtlCall', () => client.guest.callHypercallPage({ name, offset: 0x0f, rcx: 0n }, o), a);
          return;
        case 'vtlreturn':
          await call('vp:VtlReturn', () => client.guest.callHypercallPage({ name, offset: 0x26, rcx: 1n }, o), a);
          return;
        case 'hypercall':
          await call('vp:Hypercall', () => client.guest.hypercall({ name, control: 0x11n }, o), a);
          return;
        case 'registers':
          await call('vp:GetVpRegisters', () => client.vps.getVpRegisters({ name }, o), a);
          return;
      }
      return;
    }
    case 'route':
      await call(
        'SetInterceptRoute',
        () =>
          client.intercepts.setInterceptRoute({
            name: s.name,
            route: ROUTES[a.route],
            ...(a.policy ? { answerDeadlineMs: BigInt(a.policy.ms), deadlineAction: ACTIONS[a.policy.action] } : {}),
          }),
        a,
      );
      return;
    case 'monitor':
      if (liveMonitors().length < MAX_MONITORS) openMonitor(s, a.p);
      return;
    case 'closeMonitor': {
      const live = liveMonitors();
      if (live.length) closeMonitor(live[a.pick % live.length]!, a.how);
      return;
    }
    case 'reply': {
      const live = liveMonitors();
      if (!live.length) return;
      const m = live[a.pick % live.length]!;
      const id =
        a.id === 'recent' ? (m.recent[a.pick % Math.max(1, m.recent.length)] ?? 1n) : a.id === 'zero' ? 0n : a.id === 'huge' ? (1n << 64n) - 1n : 9_999_999n;
      if (m.closedByUs || m.ended) return;
      try {
        m.s.send({
          kind: {
            $case: 'reply',
            value: { interceptId: id, action: a.action, data: Buffer.from('stray'), viewGeneration: a.stale ? 0n : undefined } as pb.InterceptReply,
          },
        });
        summary.done.repliesSent++;
      } catch (e) {
        note({ what: 'stray reply send', details: String(e) });
      }
      return;
    }
    case 'inspect':
      switch (a.what) {
        case 'pending':
          await call('ListPendingIntercepts', () => client.intercepts.listPendingIntercepts({ name: s.name }), a);
          return;
        case 'partition':
          await call('GetPartition', () => client.partitions.getPartition({ name: s.name }), a);
          return;
        case 'vp':
          await call('GetVirtualProcessor', () => client.vps.getVirtualProcessor({ name: vpName(s, a.vp) }), a);
          return;
        case 'list':
          await call('ListPartitions', () => client.partitions.listPartitions({ pageSize: 50 }), a);
          return;
      }
      return;
    case 'save': {
      const snap = await call('SavePartition', () => client.snapshots.savePartition({ name: s.name }), a);
      if (snap) {
        summary.done.snapshots++;
        if (snapshots.length < 6) snapshots.push(snap);
        else snapshots[Math.floor(Math.random() * snapshots.length)] = snap;
      }
      return;
    }
    case 'delete': {
      const t = Date.now();
      const inc = s.inc;
      if (await call('DeletePartition', () => client.partitions.deletePartition({ name: s.name }), a)) {
        summary.done.deletes++;
        if (s.inc === inc) {
          s.endedAt.set(inc, t);
          s.inc++;
        }
        // Back soon (from the base or a mid-run snapshot), while the schedule goes on.
        setTimeout(
          () => {
            const pool = [base, ...snapshots];
            void call('RestorePartition', () => client.snapshots.restorePartition({ partitionId: s.id, snapshot: pool[a.slot % pool.length]! })).then((r) => {
              if (r) {
                summary.done.restores++;
                s.inc++;
              }
            });
          },
          Math.floor(Math.random() * 50),
        );
      }
      return;
    }
    case 'restore': {
      const pool = [base, ...snapshots];
      const snap = pool[a.pick % pool.length]!;
      if (a.pick % 4 !== 0) {
        // mostly in place of the current one (else: ALREADY_EXISTS, or a revival)
        const t = Date.now();
        const inc = s.inc;
        if (await call('DeletePartition', () => client.partitions.deletePartition({ name: s.name }), a)) {
          summary.done.deletes++;
          if (s.inc === inc) {
            s.endedAt.set(inc, t);
            s.inc++;
          }
        }
      }
      if (await call('RestorePartition', () => client.snapshots.restorePartition({ partitionId: s.id, snapshot: snap }), a)) {
        summary.done.restores++;
        s.inc++;
      }
      return;
    }
    case 'protect':
      await call(
        'ModifyVtlProtectionMask',
        () =>
          client.intercepts.modifyVtlProtectionMask({
            name: s.name,
            protectingVtl: 1,
            mapFlags: a.flags,
            ranges: [{ startPage: PAGES[a.page] >> 12n, pageCount: 1n }],
          }),
        a,
      );
      return;
    case 'watch': {
      if (watches.size >= MAX_WATCHES) return;
      const ac = new AbortController();
      watches.add(ac);
      summary.done.watches++;
      const timer = setTimeout(() => ac.abort(), a.ms);
      let code = 'OK';
      try {
        for await (const _ of client.vtl.watchTransitions({ name: s.name }, ac.signal)) {
          /* drain */
        }
      } catch (e) {
        code = codeName(e);
      } finally {
        clearTimeout(timer);
        watches.delete(ac);
      }
      count('stream:WatchVtlTransitions', code);
      if (bad(code)) finding({ what: 'WatchVtlTransitions stream end', code, details: '', action: show(a) });
      return;
    }
  }
}

async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

let streamWaitBudgetMs = 30_000;

/** Ends a round: a janitor per partition answers everything pending; every blocked action returns. */
async function quiesce(round: number): Promise<void> {
  // A monitor that only ever answers RETRY legitimately keeps a refused access intercepting (the
  // guest re-executes and faults again); the round's answers are the janitors', so it goes first.
  for (const m of liveMonitors()) if (m.retryOnly) closeMonitor(m, 'cancel');
  const janitors = slots.map((s) => openMonitor(s, JANITOR, true));
  const q0 = Date.now();
  const deadline = q0 + QUIESCE_MS;
  while (inflight.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  summary.ms.quiesceInflight += Date.now() - q0;
  for (const rec of inflight) {
    // What the service says about it (for the report).
    const a = rec.a as Extract<FuzzAction, { k: 'access' }>;
    const s = slots[a.slot]!;
    const vp = await call('diagnose:GetVirtualProcessor', () => client.vps.getVirtualProcessor({ name: vpName(s, a.vp) }));
    const pending = await call('diagnose:ListPendingIntercepts', () => client.intercepts.listPendingIntercepts({ name: s.name }));
    const j = janitors[a.slot]!;
    finding({
      what: `a blocked guest action did not return within ${QUIESCE_MS} ms after the round's answers (round ${round})`,
      details: `waiting ${Date.now() - rec.started} ms; issued on ${s.id}#${rec.inc}${rec.inc !== s.inc ? ` (since deleted: ${s.endedAt.has(rec.inc) ? `${Date.now() - s.endedAt.get(rec.inc)!} ms ago` : 'replaced'}; now #${s.inc})` : ''}; now: VP ${show(vp?.vtlStatus)}, pending ${show(pending?.intercepts.map((x) => [x.interceptId, x.vpIndex]))}; janitor ${j.ended ?? 'open'} (${j.last.join(', ')})`,
      action: show(rec.a),
      recent: recentBySlot[a.slot]!.slice(-25),
    });
  }
  await Promise.all([...inflight].map((r) => r.p)); // their own deadline ends them
  // Monitor streams of partitions that crashed or were deleted must have ended.
  const state = new Map<Slot, pb.PartitionState | undefined>();
  for (const s of slots) state.set(s, (await call('quiesce:GetPartition', () => client.partitions.getPartition({ name: s.name })))?.state);
  summary.done.crashesSeen += [...state.values()].filter((x) => x === pb.PartitionState.PARTITION_STATE_CRASHED).length;
  // Every suspended VP waits for an intercept that is pending (else nothing can ever resume it).
  for (const s of slots) {
    if (state.get(s) !== pb.PartitionState.PARTITION_STATE_ACTIVE) continue;
    const pending = await call('quiesce:ListPendingIntercepts', () => client.intercepts.listPendingIntercepts({ name: s.name }));
    if (!pending) continue;
    for (let i = 0; i < FI_VPS; i++) {
      const vp = await call('quiesce:GetVirtualProcessor', () => client.vps.getVirtualProcessor({ name: vpName(s, i) }));
      const st = vp?.vtlStatus;
      if (st?.interceptSuspended && !pending.intercepts.some((x) => x.interceptId === st.suspendedInterceptId)) {
        // Two reads, not one state: only a VP still suspended on the same intercept after a fresh
        // list of the pending ones is one (a RETRY may have replaced it meanwhile).
        const again = await call('quiesce:ListPendingIntercepts', () => client.intercepts.listPendingIntercepts({ name: s.name }));
        const now = (await call('quiesce:GetVirtualProcessor', () => client.vps.getVirtualProcessor({ name: vpName(s, i) })))?.vtlStatus;
        if (
          !again ||
          !now?.interceptSuspended ||
          now.suspendedInterceptId !== st.suspendedInterceptId ||
          again.intercepts.some((x) => x.interceptId === st.suspendedInterceptId)
        )
          continue;
        finding({
          what: `a VP is suspended on an intercept that is not pending (round ${round})`,
          details: `${vpName(s, i)} (#${s.inc}) suspended on ${st.suspendedInterceptId}; pending ${show(again.intercepts.map((x) => [x.interceptId, x.vpIndex]))}`,
          recent: recentBySlot[slots.indexOf(s)]!.slice(-25),
        });
      }
    }
  }
  const mustEnd = monitors.filter(
    (m) =>
      !m.ended &&
      !m.closedByUs &&
      m.subscribedAt !== undefined &&
      ((m.slot.endedAt.has(m.inc) && m.subscribedAt < m.slot.endedAt.get(m.inc)!) ||
        (m.inc === m.slot.inc && state.get(m.slot) === pb.PartitionState.PARTITION_STATE_CRASHED)),
  );
  const q1 = Date.now();
  // Up to 5 s for them to end, from a budget for the whole run (a service that never ends them
  // would otherwise cost 5 s a round).
  const until = q1 + Math.min(5000, streamWaitBudgetMs);
  while (mustEnd.some((m) => !m.ended) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  summary.ms.quiesceStreams += Date.now() - q1;
  streamWaitBudgetMs -= Date.now() - q1;
  for (const m of mustEnd.filter((x) => !x.ended)) {
    const why = m.slot.endedAt.has(m.inc) ? `deleted ${Date.now() - m.slot.endedAt.get(m.inc)!} ms ago` : 'crashed';
    finding({
      what: 'a Monitor stream outlived its partition (crashed or deleted)',
      details: `${m.slot.id}#${m.inc} ${why}${m.janitor ? ' (janitor)' : ''}; last events: ${m.last.join(', ')}`,
    });
  }
  for (const m of [...janitors, ...mustEnd]) closeMonitor(m, 'cancel');
  // Forget ended monitors.
  const q2 = Date.now();
  const gone = monitors.filter((m) => m.ended || m.closedByUs);
  const settled = new Set<Mon>();
  const q3 = Date.now();
  await Promise.race([
    Promise.all(gone.map((m) => m.done.then(() => settled.add(m)))),
    new Promise((r) => setTimeout(r, Math.min(2000, Math.max(100, streamWaitBudgetMs)))),
  ]);
  streamWaitBudgetMs -= Date.now() - q3;
  for (const m of gone) {
    monitors.splice(monitors.indexOf(m), 1);
    if (settled.has(m)) continue;
    // A half-closed stream the service did not end (it should, after what was sent): then cancelled.
    finding({
      what: 'a Monitor stream we half-closed was not ended by the service',
      details: `${m.slot.id}#${m.inc} closed by ${m.closedHow}${m.janitor ? ' (janitor)' : ''}; last: ${m.last.join(', ')}`,
    });
    m.s.cancel();
  }
  summary.ms.quiesceForget += Date.now() - q2;
  for (const s of slots) await revive(s);
}

beforeAll(async () => {
  server = await startFuzzServer({ maxPartitions: 32 });
  summary.server = server.mode;
  client = connect(server.address, { deadlineMs: 10_000, retries: 0 });
  const b = await setupVtl1Partition(client, 'fi-base', FI_VPS, Buffer.from('fuzz secret'));
  base = await client.snapshots.savePartition({ name: b.name });
  await client.partitions.deletePartition({ name: b.name });
  for (const s of slots) await revive(s);
});

afterAll(async () => {
  for (const m of monitors) closeMonitor(m, 'cancel');
  for (const ac of watches) ac.abort();
  client?.close();
  summary.serverErrors = server?.errors() ?? [];
  await server?.stop();
  summary.ms.total = Date.now() - t0;
  const text = JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);
  if (process.env.FUZZ_REPORT) fs.writeFileSync(process.env.FUZZ_REPORT.replace(/(\.json)?$/, '.intercepts.json'), text);
  console.log(`intercept fuzz summary (VSM_FUZZ_SEED=${SEED} reproduces the schedule):\n${text}`);
});

test(`${INPUTS} concurrent actions around monitor intercepts: no process exit, no INTERNAL, every blocked action returns`, async () => {
  const actions = fc.sample(fuzzActionArb, { seed: SEED, numRuns: INPUTS });
  for (let start = 0, round = 0; start < actions.length; start += ROUND, round++) {
    const r0 = Date.now();
    await pool(actions.slice(start, start + ROUND), WORKERS, run);
    const q0 = Date.now();
    await quiesce(round);
    summary.ms.rounds += q0 - r0;
    summary.ms.quiesce += Date.now() - q0;
    summary.done.rounds++;
    const died = server.died();
    if (died) throw new Error(`after round ${round}: ${died}`);
  }
  expect(summary.done.actions).toBe(INPUTS);
  // The mix really happened.
  expect(summary.done.slowAccesses).toBeGreaterThan(0);
  expect(summary.replyStatuses.REPLY_STATUS_APPLIED ?? 0).toBeGreaterThan(0);
  expect(server.died()).toBeUndefined();
  expect(summary.findings).toEqual([]);
  expect(server.errors()).toEqual([]);
});

test('afterwards: the service serves and every partition is consistent', async () => {
  expect(server.died()).toBeUndefined();
  expect(processGuard()?.records.filter((r) => !r.thrown) ?? []).toEqual([]);
  const caps = await client.partitions.getCapabilities({});
  expect(caps.hypercallCodes.length).toBeGreaterThan(0);
  const problems: string[] = [];
  for (const s of slots) {
    const p = await client.partitions.getPartition({ name: s.name }).catch((e: unknown) => e as VsmError);
    if (p instanceof VsmError) {
      if (bad(codeName(p))) problems.push(`${s.name}: GetPartition ${codeName(p)}`);
      continue;
    }
    const pending = await client.intercepts.listPendingIntercepts({ name: s.name });
    for (let i = 0; i < p.vpCount; i++) {
      const vp = await client.vps.getVirtualProcessor({ name: vpName(s, i) });
      const st = vp.vtlStatus!;
      if (((st.enabledVtlSet >> st.activeVtl) & 1) !== 1) problems.push(`${vp.name}: active VTL ${st.activeVtl} not enabled`);
      if (st.interceptSuspended && !pending.intercepts.some((x) => x.interceptId === st.suspendedInterceptId))
        problems.push(`${vp.name}: suspended on intercept ${st.suspendedInterceptId}, which is not pending`);
    }
  }
  expect(problems).toEqual([]);
});
