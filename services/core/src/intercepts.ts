// core: memory intercepts raised by protection violations, and their routes. An intercept is a
// snapshot of the VP at fault time (HV_X64_MEMORY_INTERCEPT_MESSAGE inside an HV_MESSAGE). Routes
// (per partition): 'vtl' (default) delivers it to the protecting VTL's SINT0 and enters that VTL;
// 'monitor' holds the VP suspended until an external monitor answers; 'both' lets a monitor observe
// while the VTL handles it. Pending intercepts are kept until answered (at-least-once to monitors;
// each has an id and a second answer to the same id is reported as a duplicate, not applied).
import { IdMap, high32, low32 } from './id-map';
import type { AccessOutcome, InterceptRecord } from './outcomes';
import { HvStatus, hvFail } from './tlfs/status';

export type { InterceptRecord } from './outcomes';

export type InterceptRoute = 'vtl' | 'monitor' | 'both';
export type InterceptAction = 'allow' | 'skip' | 'retry' | 'crash';

/** A partition's intercept settings (state/partition.ts PartitionState holds them). */
export interface InterceptSettings {
  interceptRoute: InterceptRoute;
  interceptDeadline: { ms: number; action: InterceptAction } | undefined;
}

const ROUTES: ReadonlySet<string> = new Set<InterceptRoute>(['vtl', 'monitor', 'both']);
export function isInterceptRoute(r: unknown): r is InterceptRoute {
  return typeof r === 'string' && ROUTES.has(r);
}
const ACTIONS: ReadonlySet<string> = new Set<InterceptAction>(['allow', 'skip', 'retry', 'crash']);
/** The longest answer deadline a policy may set (one day). */
export const MAX_INTERCEPT_DEADLINE_MS = 86_400_000;

/**
 * The partition's intercept route for intercepts raised from now on, and the deadline policy of
 * those a monitor must answer (undefined: wait for the answer). Both or neither are applied.
 */
export function setInterceptRoute(p: InterceptSettings, route: InterceptRoute, deadline?: { ms: number; action: InterceptAction }): void {
  if (!isInterceptRoute(route)) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `intercept route ${JSON.stringify(route)} is not vtl, monitor or both`);
  if (deadline && (!Number.isInteger(deadline.ms) || deadline.ms < 1 || deadline.ms > MAX_INTERCEPT_DEADLINE_MS || !ACTIONS.has(deadline.action))) {
    hvFail(
      HvStatus.HV_STATUS_INVALID_PARAMETER,
      `intercept deadline ${deadline.ms} ms / ${JSON.stringify(deadline.action)}: 1..${MAX_INTERCEPT_DEADLINE_MS} ms with allow, skip, retry or crash`,
    );
  }
  p.interceptRoute = route;
  p.interceptDeadline = deadline ? { ms: deadline.ms, action: deadline.action } : undefined;
}

/**
 * How many answered ids (and their outcomes) a partition remembers to tell duplicates from unknown
 * ids: one per id modulo this (a power of two).
 */
export const ANSWERED_KEPT = 65536;
/** An id's high 32 bits (ids are u64; those below 2^53, all but imported ones, without bigint arithmetic). */
const highOf = (id: bigint): number => {
  const n = Number(id);
  return n <= Number.MAX_SAFE_INTEGER ? high32(n) : Number(id >> 32n);
};
/** An id's low 32 bits. */
const lowOf = (id: bigint): number => {
  const n = Number(id);
  return n <= Number.MAX_SAFE_INTEGER ? low32(n) : Number(id & 0xffffffffn);
};
const slotOf = (id: bigint): number => lowOf(id) % ANSWERED_KEPT;

export class InterceptBroker {
  private nextId = 1n;
  /** Intercepts waiting for a monitor's answer (iterated oldest first; an IdMap, not a Map: id-map.ts). */
  readonly pending = new IdMap<InterceptRecord>();
  /**
   * Answered ids and what answering each did, to tell duplicates from unknown ids: a direct-mapped
   * table of ANSWERED_KEPT slots, slot = id mod ANSWERED_KEPT, each holding the most recently
   * answered id of its slot. Ids are allocated in sequence, so an answered id is remembered until
   * an id ANSWERED_KEPT greater (or, for one answered late, an id of its slot) is answered. Array
   * slots, not a Set and a Map of bigints: those cost 0.4-1.2 µs per answer at 65,536 entries (cache
   * misses on tables of megabytes, rehashes); evicting by iterating a Set was worse (V8 leaves deleted
   * entries as holes its iterators walk: 7.8 -> 37 µs per intercept once 65,536 were answered).
   * The ids are kept as numbers (`answeredLow` bits 0-31, `answeredHigh` bits 32-63, `answeredSet`
   * whether the slot holds an id), not as bigints: 65,536
   * retained bigints, each replaced about 2 s later at 35k intercepts/s, were promoted out of V8's
   * young generation and collected by major GCs (bench/README.md "Intercept throughput").
   */
  private readonly answeredLow = new Uint32Array(ANSWERED_KEPT);
  private readonly answeredHigh = new Uint32Array(ANSWERED_KEPT);
  private readonly answeredSet = new Uint8Array(ANSWERED_KEPT);
  private readonly answeredOutcomes: (AccessOutcome | undefined)[] = [];
  private readonly listeners = new Set<(r: InterceptRecord) => void>();
  /** Copy on write: markAnswered calls the listeners of the moment without copying them per answer. */
  private resolvedListeners: readonly ((id: bigint, outcome: AccessOutcome) => void)[] = [];
  private readonly raisedListeners = new Set<(r: InterceptRecord) => void>();
  private readonly waiters = new IdMap<((outcome: AccessOutcome) => void)[]>();

  exportState(): { nextId: bigint; pending: InterceptRecord[]; answered: bigint[] } {
    const answered: bigint[] = [];
    for (let slot = 0; slot < ANSWERED_KEPT; slot++) {
      if (this.answeredSet[slot]) answered.push((BigInt(this.answeredHigh[slot]!) << 32n) | BigInt(this.answeredLow[slot]!));
    }
    answered.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return { nextId: this.nextId, pending: [...this.pending.values()].map((r) => ({ ...r })), answered };
  }
  importState(s: ReturnType<InterceptBroker['exportState']>): void {
    this.nextId = s.nextId;
    this.pending.clear();
    for (const r of s.pending) this.pending.set(r.id, { ...r });
    this.answeredSet.fill(0);
    this.answeredOutcomes.length = 0;
    // Outcomes are not part of the state: an imported answered id reports no outcome.
    for (const id of s.answered) this.remember(id, slotOf(id));
  }

  /** Whether slot `slot` (= slotOf(id)) holds `id`. */
  private holds(id: bigint, slot: number): boolean {
    return this.answeredSet[slot] === 1 && this.answeredLow[slot] === lowOf(id) && this.answeredHigh[slot] === highOf(id);
  }
  private remember(id: bigint, slot: number): void {
    this.answeredSet[slot] = 1;
    this.answeredLow[slot] = lowOf(id);
    this.answeredHigh[slot] = highOf(id);
  }

  allocateId(): bigint {
    return this.nextId++;
  }

  publish(r: InterceptRecord): void {
    if (r.needsReply) this.pending.set(r.id, r);
    for (const l of this.listeners) l(r);
  }

  /**
   * Counts one delivery of `r` to a monitor (at-least-once: a pending intercept is replayed to each
   * new monitor); true when it had been delivered before (the monitor flags it as a re-delivery).
   */
  noteDelivery(r: InterceptRecord): boolean {
    return r.deliveries++ > 0;
  }

  /**
   * Every intercept raised, whatever its route (publish() is what monitors get: routes monitor and
   * both); for observers such as the service's metrics. Returns the unsubscribe function.
   */
  onRaised(fn: (r: InterceptRecord) => void): () => void {
    this.raisedListeners.add(fn);
    return () => this.raisedListeners.delete(fn);
  }
  /** Tells the onRaised observers of intercept `r` (called where an intercept is raised). */
  raised(r: InterceptRecord): void {
    for (const l of this.raisedListeners) l(r);
  }

  /** Subscribes to new intercepts; returns the unsubscribe function. */
  subscribe(fn: (r: InterceptRecord) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
  /** Called once per answered intercept with what the answer did to its own access. */
  onResolved(fn: (id: bigint, outcome: AccessOutcome) => void): () => void {
    this.resolvedListeners = [...this.resolvedListeners, fn];
    return () => {
      this.resolvedListeners = this.resolvedListeners.filter((l) => l !== fn);
    };
  }

  /**
   * Calls `fn` once, when intercept `id` is answered (markAnswered); the caller checked it is
   * pending. A waiter per id, so an answer wakes only its own waiters, whatever the number of VPs
   * waiting (an onResolved listener per waiter would be called for every answer).
   */
  whenAnswered(id: bigint, fn: (outcome: AccessOutcome) => void): void {
    const list = this.waiters.get(id);
    if (list) list.push(fn);
    else this.waiters.set(id, [fn]);
  }

  /** 'pending' (answer it), 'duplicate' (already answered) or 'unknown'. */
  status(id: bigint): 'pending' | 'duplicate' | 'unknown' {
    if (this.pending.has(id)) return 'pending';
    return this.holds(id, slotOf(id)) ? 'duplicate' : 'unknown';
  }

  /** The outcome of answered intercept `id` (undefined: not answered, or answered long ago). */
  outcomeOf(id: bigint): AccessOutcome | undefined {
    const slot = slotOf(id);
    return this.holds(id, slot) ? this.answeredOutcomes[slot] : undefined;
  }

  /**
   * Takes pending intercept `id` out of the pending set while its answer is applied: what the answer
   * does next (a RETRY that intercepts again publishes a new intercept of the same VP) is announced
   * with this one no longer pending. `markAnswered` completes it, `untake` puts it back (the answer
   * was not applied).
   */
  take(id: bigint): InterceptRecord | undefined {
    const r = this.pending.get(id);
    this.pending.delete(id);
    return r;
  }
  untake(r: InterceptRecord): void {
    this.pending.set(r.id, r);
  }

  /** Records the answer of intercept `id` (pending or taken) and wakes whoever waits for that id (only). */
  markAnswered(id: bigint, outcome: AccessOutcome): void {
    this.pending.delete(id);
    const slot = slotOf(id);
    this.remember(id, slot);
    this.answeredOutcomes[slot] = outcome;
    const waiters = this.waiters.get(id);
    if (waiters) {
      this.waiters.delete(id);
      for (const w of waiters) w(outcome);
    }
    const resolved = this.resolvedListeners;
    for (let i = 0; i < resolved.length; i++) resolved[i]!(id, outcome);
  }

  /** Drops every listener (the partition ended). */
  closeListeners(): void {
    this.listeners.clear();
    this.resolvedListeners = [];
    this.raisedListeners.clear();
    this.waiters.clear();
  }
}
