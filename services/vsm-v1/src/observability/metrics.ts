// vsm.v1 implementation, observability: the Prometheus metrics of a process (prom-client). One
// registry per process (VsmMetrics), served by metrics-server.ts. What is counted and where from:
//   - every vsm.v1 RPC, unary and streams (server.ts's call wrappers, through RpcTelemetry);
//   - authorization decisions (security/guard.ts's decision hook);
//   - partitions, VPs, VTL transitions, intercepts and SynIC queues of a core-backed backend (the
//     core's events: Partition.onTransition, the intercept broker's raised/resolved, read at scrape
//     time for the gauges) - the core itself knows nothing of metrics;
//   - KVM exits, their handling time, memslot changes and console bytes of the agent (the platform's
//     KvmObserver hooks).
// Labels are bounded: RPC names, gRPC code names, state names, VTL numbers, access kinds, exit kinds;
// never a partition id or anything a client chooses.
import type * as grpc from '@grpc/grpc-js';
import { status as Code } from '@grpc/grpc-js';
import type { Partition } from '@vsm/core';
import type { KvmObserver } from '@vsm/platform-kvm';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CoreBackend } from '../backends/core-backend';
import type { AuthzDecision } from '../security/guard';

/** Seconds: 50 µs .. 30 s (an emulator RPC is ~100 µs; a guest action on KVM ms; a Monitor wait long). */
const RPC_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Seconds a monitor takes to answer an intercept: 100 µs .. 60 s. */
const ANSWER_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60];
/** Seconds the agent's main thread spends on one exit: 1 µs .. 100 ms (an exit round trip is ~12 µs here). */
const EXIT_BUCKETS = [0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1];

/** HV_VTL_ENTRY_REASON (TLFS 15.6.1, tlfs-vsm.md §5.1) as label values; a VtlReturn is "return". */
const ENTRY_REASON: Record<number, string> = { 0: 'reserved', 1: 'vtl_call', 2: 'interrupt', 3: 'intercept' };

/** The gRPC code's name (OK, INVALID_ARGUMENT, ...): bounded, unlike details. */
const CODE_NAMES: string[] = [];
for (const [k, v] of Object.entries(Code)) if (typeof v === 'number') CODE_NAMES[v] = k;
export const codeName = (code: number): string => CODE_NAMES[code] ?? 'UNKNOWN';

/** The metric names this module registers (beyond prom-client's process defaults); the dashboard test checks against them. */
export const VSM_METRIC_NAMES = [
  'vsm_rpc_requests_total',
  'vsm_rpc_duration_seconds',
  'vsm_streams_active',
  'vsm_authz_decisions_total',
  'vsm_partitions',
  'vsm_vps',
  'vsm_vtl_transitions_total',
  'vsm_intercepts_total',
  'vsm_intercepts_pending',
  'vsm_intercept_answer_seconds',
  'vsm_synic_queue_depth',
  'vsm_kvm_exits_total',
  'vsm_kvm_exit_handling_seconds',
  'vsm_memslot_changes_total',
  'vsm_guest_console_bytes_total',
] as const;

/**
 * One RPC's counts, kept in plain numbers on the call path and handed to prom-client when it collects
 * (a prom-client observe hashes and validates its labels on every call; this costs an array index).
 */
interface MethodMetrics {
  method: string;
  /** Calls by gRPC code. */
  codes: number[];
  /** Duration histogram: observations per bucket of RPC_BUCKETS (the last: above every bound), sum, count. */
  buckets: Float64Array;
  sum: number;
  count: number;
  streams: { inc(): void; dec(): void };
}

/**
 * vsm_rpc_duration_seconds: a prom-client Histogram whose values come from the MethodMetrics (get()
 * returns them in prom-client's own shape: _bucket with le, _sum, _count per method).
 */
class RpcDurationHistogram extends Histogram<'method'> {
  constructor(
    private readonly source: () => Iterable<MethodMetrics>,
    registers: Registry[],
  ) {
    super({
      name: 'vsm_rpc_duration_seconds',
      help: 'Time from receiving a vsm.v1 call to its status (streams: their whole life), by RPC name',
      labelNames: ['method'],
      buckets: RPC_BUCKETS,
      registers,
    });
  }
  override async get(): ReturnType<Histogram<'method'>['get']> {
    type Result = Awaited<ReturnType<Histogram<'method'>['get']>>;
    // prom-client's own fields (the base get() would call getForPromString, which comes here).
    const { name, help, type, aggregator } = this as unknown as Pick<Result, 'name' | 'help' | 'type' | 'aggregator'>;
    const values: Result['values'] = [];
    for (const m of this.source()) {
      let acc = 0;
      RPC_BUCKETS.forEach((le, i) => {
        acc += m.buckets[i]!;
        values.push({ value: acc, labels: { method: m.method, le } as { method: string }, metricName: `${name}_bucket` });
      });
      values.push({ value: m.count, labels: { method: m.method, le: '+Inf' } as { method: string }, metricName: `${name}_bucket` });
      values.push({ value: m.sum, labels: { method: m.method }, metricName: `${name}_sum` });
      values.push({ value: m.count, labels: { method: m.method }, metricName: `${name}_count` });
    }
    return { name, help, type, aggregator, values } as Result;
  }
  /** What the registry's text exposition reads (prom-client calls it when a metric has it). */
  getForPromString(): ReturnType<Histogram<'method'>['get']> {
    return this.get();
  }
}

type StateCounts = ReturnType<CoreBackend['stateCounts']>;

export class VsmMetrics {
  readonly registry = new Registry();
  private readonly streamsActive: Gauge<'method'>;
  private readonly authzTotal: Counter<'decision'>;
  private readonly transitions: Counter<'from' | 'to' | 'reason'>;
  private readonly intercepts: Counter<'route' | 'access'>;
  private readonly answerSeconds: Histogram<string>;
  private readonly kvmExits: Counter<'reason'>;
  private readonly exitHandling: Histogram<string>;
  private readonly memslotChanges: Counter<string>;
  private readonly consoleBytes: Counter<string>;
  private readonly methods = new Map<string, MethodMetrics>();
  /** The core-backed backends observed (their partitions and VPs are read at scrape time). */
  private readonly backends: CoreBackend[] = [];
  private readonly watched = new WeakSet<Partition>();
  /** The backends' state during a scrape (text()): read once, every gauge of the scrape uses it. */
  private scrapeState: StateCounts[] | undefined;

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
    const self = this;
    new Counter({
      name: 'vsm_rpc_requests_total',
      help: 'vsm.v1 RPCs handled (streams counted when they end), by RPC name and gRPC status code',
      labelNames: ['method', 'code'],
      registers,
      collect() {
        this.reset();
        for (const m of self.methods.values())
          m.codes.forEach((n, code) => {
            if (n) this.inc({ method: m.method, code: codeName(code) }, n);
          });
      },
    });
    new RpcDurationHistogram(() => this.methods.values(), registers);
    this.streamsActive = new Gauge({ name: 'vsm_streams_active', help: 'vsm.v1 streams open now, by RPC name', labelNames: ['method'], registers });
    this.authzTotal = new Counter({
      name: 'vsm_authz_decisions_total',
      help: 'Authorization decisions (with --authz-policy): allow, deny, unauthenticated, revoked (an open stream ended by a policy change)',
      labelNames: ['decision'],
      registers,
    });
    new Gauge({
      name: 'vsm_partitions',
      help: 'Partitions by state: idle (no guest), loaded, running, paused, stopped, crashed',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const c of self.state()) for (const [state, n] of c.partitions) this.inc({ state }, n);
      },
    });
    new Gauge({
      name: 'vsm_vps',
      help: 'Virtual processors by state: idle (no guest), running, halted, waiting_for_sipi, suspended, stopped, intercept_suspended (waits for a monitor)',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const c of self.state()) for (const [state, n] of c.vps) this.inc({ state }, n);
      },
    });
    this.transitions = new Counter({
      name: 'vsm_vtl_transitions_total',
      help: 'VTL transitions of every VP, by VTL left, VTL entered and HV_VTL_ENTRY_REASON (vtl_call, interrupt, intercept; return for VtlReturn)',
      labelNames: ['from', 'to', 'reason'],
      registers,
    });
    this.intercepts = new Counter({
      name: 'vsm_intercepts_total',
      help: 'Memory intercepts raised, by the partition route at the time (vtl, monitor, both) and access (read, write, execute)',
      labelNames: ['route', 'access'],
      registers,
    });
    new Gauge({
      name: 'vsm_intercepts_pending',
      help: 'Intercepts waiting for a monitor answer, over all partitions',
      registers,
      collect() {
        let n = 0;
        for (const c of self.state()) for (const p of c.partitionList) n += p.intercepts.pending.size;
        this.set(n);
      },
    });
    this.answerSeconds = new Histogram({
      name: 'vsm_intercept_answer_seconds',
      help: 'Time from raising an intercept that a monitor must answer (route monitor) to its answer',
      buckets: ANSWER_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'vsm_synic_queue_depth',
      help: 'The longest SynIC message queue: max over partitions, VPs, VTLs and SINTs of messages waiting for the SIM slot',
      registers,
      collect() {
        let max = 0;
        for (const c of self.state())
          for (const p of c.partitionList)
            for (const vp of p.vps) for (const q of vp.vtls.map((v) => (v.enabled ? v.synic.queues : []))) for (const s of q) max = Math.max(max, s.length);
        this.set(max);
      },
    });
    this.kvmExits = new Counter({
      name: 'vsm_kvm_exits_total',
      help: 'KVM_RUN exits (agent), by kind: io, mmio, rdmsr, wrmsr, hlt, intr, shutdown, ...; io_vp_thread / mmio_vp_thread: finished by the VP thread itself',
      labelNames: ['reason'],
      registers,
    });
    this.exitHandling = new Histogram({
      name: 'vsm_kvm_exit_handling_seconds',
      help: 'Time the agent main thread spends on one exit of a running guest (hand-over to answer)',
      buckets: EXIT_BUCKETS,
      registers,
    });
    this.memslotChanges = new Counter({ name: 'vsm_memslot_changes_total', help: 'KVM memslot changes made for VTL views (overlays, protections)', registers });
    this.consoleBytes = new Counter({ name: 'vsm_guest_console_bytes_total', help: 'Bytes guests wrote to their console (COM1)', registers });
  }

  // ---- RPCs ------------------------------------------------------------------------------------

  private method(method: string): MethodMetrics {
    let m = this.methods.get(method);
    if (!m) {
      m = { method, codes: [], buckets: new Float64Array(RPC_BUCKETS.length + 1), sum: 0, count: 0, streams: this.streamsActive.labels(method) };
      this.methods.set(method, m);
    }
    return m;
  }

  /** A call of `method` starts; the returned function records its end with `code`. */
  rpcStart(method: string, stream: boolean): (code: grpc.status) => void {
    const m = this.method(method);
    const t0 = process.hrtime.bigint();
    if (stream) m.streams.inc();
    return (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      let b = 0;
      while (b < RPC_BUCKETS.length && s > RPC_BUCKETS[b]!) b++;
      m.buckets[b]!++;
      m.sum += s;
      m.count++;
      m.codes[code] = (m.codes[code] ?? 0) + 1;
      if (stream) m.streams.dec();
    };
  }

  authz(decision: AuthzDecision): void {
    this.authzTotal.inc({ decision });
  }

  // ---- core-backed backends -------------------------------------------------------------------

  /** Observes `backend`'s partitions (the ones it has and every one it creates or restores). */
  observeBackend(backend: CoreBackend): void {
    this.backends.push(backend);
    backend.onPartition((p) => this.watchPartition(p));
    for (const p of backend.stateCounts().partitionList) this.watchPartition(p);
  }

  private watchPartition(p: Partition): void {
    if (this.watched.has(p)) return;
    this.watched.add(p);
    const raisedAt = new Map<bigint, bigint>();
    // The labelled children, looked up once per label set (inc with a label object hashes the
    // labels on every call; these run once per VTL switch and per intercept).
    const transitions = new Map<string, { inc(): void }>();
    const intercepts = new Map<string, { inc(): void }>();
    const offs = [
      p.onTransition((t) => {
        const reason = t.isReturn ? 'return' : (ENTRY_REASON[t.entryReason] ?? 'other');
        const key = `${t.fromVtl}/${t.toVtl}/${reason}`;
        let c = transitions.get(key);
        if (!c) transitions.set(key, (c = this.transitions.labels(String(t.fromVtl), String(t.toVtl), reason)));
        c.inc();
      }),
      p.intercepts.onRaised((x) => {
        const key = `${p.interceptRoute}/${x.kind}`;
        let c = intercepts.get(key);
        if (!c) intercepts.set(key, (c = this.intercepts.labels(p.interceptRoute, x.kind)));
        c.inc();
        if (x.needsReply && !raisedAt.has(x.id)) raisedAt.set(x.id, process.hrtime.bigint());
      }),
      p.intercepts.onResolved((id) => {
        const t0 = raisedAt.get(id);
        if (t0 === undefined) return;
        raisedAt.delete(id);
        this.answerSeconds.observe(Number(process.hrtime.bigint() - t0) / 1e9);
      }),
    ];
    p.onEnd(() => {
      raisedAt.clear();
      for (const off of offs) off();
    });
  }

  // ---- the KVM platform -------------------------------------------------------------------------

  /** The hooks the KVM platform calls (KvmHost.observer). */
  kvmObserver(): KvmObserver {
    const exits = new Map<string, { inc(n: number): void }>();
    return {
      exit: (kind, count) => {
        let c = exits.get(kind);
        if (!c) exits.set(kind, (c = this.kvmExits.labels(kind)));
        c.inc(count);
      },
      exitHandled: (seconds) => this.exitHandling.observe(seconds),
      memslotChanges: (count) => this.memslotChanges.inc(count),
      consoleBytes: (bytes) => this.consoleBytes.inc(bytes),
    };
  }

  /** The backends' partitions and VPs by state (once per scrape; fresh outside one). */
  private state(): StateCounts[] {
    return this.scrapeState ?? this.backends.map((b) => b.stateCounts());
  }

  /** The Prometheus text exposition of every metric. */
  async text(): Promise<string> {
    this.scrapeState = this.backends.map((b) => b.stateCounts());
    try {
      return await this.registry.metrics();
    } finally {
      this.scrapeState = undefined;
    }
  }
}
