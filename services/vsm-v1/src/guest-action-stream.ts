// service layer: GuestService.RunGuestActions, the streaming form of the guest-action RPCs, shared by
// every backend. Each action runs through the backend's own unary method (same validation, same
// semantics, same errors) after being authorized as that unary RPC would be (its partition, its
// role); its response or error goes back tagged with the client's `sequence`. Actions naming the
// same VP are chained (run in the order sent); actions on different VPs run concurrently, so one
// waiting for a Monitor answer holds back only its own VP. At most MAX_IN_FLIGHT_GUEST_ACTIONS are
// accepted and unanswered per stream; the reader also waits while the client does not take the
// responses (sink back-pressure), so a stream's memory is bounded by the cap and the sink's limits.
//
// Batched form: a `batch` message carries up to MAX_GUEST_ACTIONS_PER_BATCH actions, each taken
// exactly as if it had come alone (same checks, cap, authorization, chaining). Their answers are
// coalesced: those produced by one piece of the service's work (a message read, and everything its
// promises set off) go out together in one `results` message once that work is done
// (process.nextTick from inside it: after its microtasks, before Node hands the HTTP/2 session's
// pending writes to the socket; as the Monitor's subscribe.batch), or earlier once a message holds
// MAX_GUEST_ACTIONS_PER_BATCH answers or about RESULTS_MESSAGE_BYTES. While the sink is
// full, coalesced answers wait here for it to drain instead of piling into it (a batch of 256 reads
// of 64 KiB would otherwise exceed the sink's 16 MiB cap in one turn and end the stream as lagging);
// an accepted action counts against the in-flight cap until its answer is handed to the sink, so
// what waits here is bounded by the cap (plus one batch's refused entries). Actions sent alone are
// answered one per message as before, at once when nothing waits; otherwise after what waits, so the
// stream's answers stay in completion order.
import { status as Code } from '@grpc/grpc-js';
import { pb } from '@vsm/api';
import type { StreamSink } from './backend';
import { ApiError, toServiceError } from './errors';

/** Actions accepted and not yet answered, per stream (proto/vsm/v1/guest.proto RunGuestActions). */
export const MAX_IN_FLIGHT_GUEST_ACTIONS = 256;
/** Entries of one `batch` message at most; more end the stream with INVALID_ARGUMENT (guest.proto RunGuestActionsBatch). */
export const MAX_GUEST_ACTIONS_PER_BATCH = 256;
/** A `results` message is flushed early once its answers reach about this many bytes (client receive limits are 4-8 MiB). */
export const RESULTS_MESSAGE_BYTES = 1024 * 1024;

/** One action (a batch is not one: it is unpacked into its entries). */
type Action = Exclude<NonNullable<pb.RunGuestActionsRequest['action']>, { $case: 'batch' }>;
/** One action's answer (a `results` message is not one: it carries several). */
type Result = Exclude<NonNullable<pb.RunGuestActionsResponse['result']>, { $case: 'results' }>;

/** The unary guest-action methods a backend has (the executor of each action kind). */
export interface GuestActionMethods {
  writeMsr(r: pb.WriteMsrRequest): Promise<pb.WriteMsrResponse>;
  readMsr(r: pb.ReadMsrRequest): Promise<pb.ReadMsrResponse>;
  hypercall(r: pb.HypercallRequest): Promise<pb.HypercallResponse>;
  callHypercallPage(r: pb.CallHypercallPageRequest): Promise<pb.CallHypercallPageResponse>;
  readMemory(r: pb.ReadMemoryRequest): Promise<pb.ReadMemoryResponse>;
  writeMemory(r: pb.WriteMemoryRequest): Promise<pb.WriteMemoryResponse>;
  executeMemory(r: pb.ExecuteMemoryRequest): Promise<pb.ExecuteMemoryResponse>;
  writeControlRegister(r: pb.WriteControlRegisterRequest): Promise<pb.WriteControlRegisterResponse>;
}

/**
 * Authorizes one action as its unary RPC (`path` = `/vsm.v1.GuestService/WriteMsr`, ...) with the
 * stream's caller; throws the unary call's PERMISSION_DENIED. The server passes it to bidi handlers.
 */
export type ActionAuthorizer = (path: string, request: unknown) => void;

/** Action kind (oneof case) -> the unary RPC's method name, for authorization and the executor. */
const UNARY_OF: Record<Action['$case'], { rpc: string; run: (m: GuestActionMethods, r: never) => Promise<unknown> }> = {
  writeMsr: { rpc: 'WriteMsr', run: (m, r) => m.writeMsr(r) },
  readMsr: { rpc: 'ReadMsr', run: (m, r) => m.readMsr(r) },
  hypercall: { rpc: 'Hypercall', run: (m, r) => m.hypercall(r) },
  callHypercallPage: { rpc: 'CallHypercallPage', run: (m, r) => m.callHypercallPage(r) },
  readMemory: { rpc: 'ReadMemory', run: (m, r) => m.readMemory(r) },
  writeMemory: { rpc: 'WriteMemory', run: (m, r) => m.writeMemory(r) },
  executeMemory: { rpc: 'ExecuteMemory', run: (m, r) => m.executeMemory(r) },
  writeControlRegister: { rpc: 'WriteControlRegister', run: (m, r) => m.writeControlRegister(r) },
};

/** The per-action error a failed unary call would have carried (google.rpc.Status + ErrorInfo.reason). */
export function guestActionError(e: unknown): pb.GuestActionError {
  const se = toServiceError(e);
  let reason = 'UNKNOWN';
  const raw = se.metadata?.get('grpc-status-details-bin')?.[0];
  if (Buffer.isBuffer(raw)) {
    for (const d of pb.RpcStatus.decode(raw).details) if (d.typeUrl.endsWith('/google.rpc.ErrorInfo')) reason = pb.ErrorInfo.decode(d.value).reason;
  }
  const hv = (pb.HvStatus as unknown as Record<string, number>)[reason];
  return { code: se.code, message: se.details, reason, hvStatus: typeof hv === 'number' ? hv : pb.HvStatus.HV_STATUS_SUCCESS };
}

const failed = (e: unknown): Result => ({ $case: 'error', value: guestActionError(e) });

/**
 * Rough encoded size of an answer (its bytes and strings plus a little per field), to bound a
 * `results` message: an upper bound for strings (3 UTF-8 bytes per UTF-16 unit). `for…in` over the
 * fields, no Object.values array and no Buffer.byteLength per string: 294 → 68 ns for a WriteMemory
 * answer, once per answer (it was the largest self time of the service's JS in
 * intercept.throughput.8vp).
 */
function sizeHint(v: unknown): number {
  if (v instanceof Uint8Array) return v.length + 4;
  if (typeof v === 'string') return v.length * 3 + 4;
  if (typeof v !== 'object' || v === null) return 10;
  let n = 4;
  for (const k in v) n += sizeHint((v as Record<string, unknown>)[k]);
  return n;
}

/** An answer waiting to be handed to the stream. */
interface Queued {
  response: pb.RunGuestActionsResponse;
  /** The action came in a batch: its answer goes out in a `results` message. */
  batched: boolean;
  /** The action was accepted (it counts against the in-flight cap until its answer is handed over). */
  accepted: boolean;
  /** sizeHint of the answer (batched answers only). */
  bytes: number;
}

/** A VP's actions on one stream: those waiting behind the running one (`busy`). */
interface VpQueue {
  jobs: (() => Promise<void>)[];
  busy: boolean;
}
/** Idle VP queues a stream keeps before dropping them (guest-action-stream runGuestActions). */
const VP_QUEUES_KEPT = 1024;

/** The per-action error of an action that was not run. */
const refusal = (code: Code, reason: string, message: string): Result => failed(new ApiError(code, reason, message));
const ACTION_KINDS = 'one of write_msr, read_msr, hypercall, call_hypercall_page, read_memory, write_memory, execute_memory, write_control_register';

/**
 * Serves one RunGuestActions stream over `methods` (the backend's unary guest actions). Returns when
 * the client half-closed and every accepted action was answered, or at once when `signal` aborts
 * (client cancel, revoked authorization, lagging client): answers still owed are dropped then.
 * Throws INVALID_ARGUMENT for a batch the stream cannot take (too many entries, a non-zero outer
 * sequence), before any of its entries runs.
 */
export async function runGuestActions(
  methods: GuestActionMethods,
  requests: AsyncIterable<pb.RunGuestActionsRequest>,
  sink: StreamSink<pb.RunGuestActionsResponse>,
  signal: AbortSignal,
  authorize: ActionAuthorizer | undefined,
  maxInFlight = MAX_IN_FLIGHT_GUEST_ACTIONS,
): Promise<void> {
  /**
   * Per VP name the stream named: its accepted actions waiting behind the one running, in order
   * (each a job that answers its action and never rejects). One loop per busy VP runs them one after
   * another; a queue, not a promise chain per action (two promises and a closure fewer per action).
   * An idle VP keeps its entry, so a VP alternating between one action and none does not add and
   * delete a Map entry per action (a Map churned like that rebuilds its table every few operations,
   * in V8's old generation once the table is there: core id-map.ts); idle entries are dropped once
   * the stream named more than VP_QUEUES_KEPT VPs.
   */
  const vpQueues = new Map<string, VpQueue>();
  const drain = async (q: VpQueue, first: () => Promise<void>) => {
    for (let job: (() => Promise<void>) | undefined = first; job !== undefined; job = q.jobs.shift()) await job();
    q.busy = false;
  };
  /** Accepted actions whose answer was not handed to the stream yet. */
  let inFlight = 0;
  let idle: (() => void) | undefined;
  /** True when the sink wants the producer to wait (until it drained). */
  let full = false;
  /**
   * Answers not handed to the stream yet, in completion order: those of batched actions produced by
   * the work in progress (flushed once it is done), and, while the sink is full, whatever completes
   * after a held-back one (answers stay in completion order). Bounded: the accepted actions' answers
   * by the in-flight cap (they count until handed over), the refused ones by one batch (the reader
   * takes no further message while the sink is full).
   */
  const queue: Queued[] = [];
  /** The batched answers at the queue's tail (after its last single answer): count and sizeHint bytes. */
  let tailCount = 0;
  let tailBytes = 0;
  /** A flush is due once the work in progress is done (process.nextTick). */
  let flushScheduled = false;
  let waitingDrain = false;

  const handedOver = (accepted: boolean) => {
    if (accepted) inFlight--;
    if (inFlight === 0 && queue.length === 0) idle?.();
  };
  const measureTail = () => {
    tailCount = 0;
    tailBytes = 0;
    for (let i = queue.length - 1; i >= 0 && queue[i]!.batched; i--) {
      tailCount++;
      tailBytes += queue[i]!.bytes;
    }
  };
  /** Hands the queued answers to the sink: runs of batched ones as `results` messages, single ones alone. */
  const flush = () => {
    flushScheduled = false;
    if (signal.aborted) return;
    while (queue.length > 0 && !full) {
      const head = queue[0]!;
      if (!head.batched) {
        queue.shift();
        if (!sink.write(head.response)) full = true;
        handedOver(head.accepted);
        continue;
      }
      // One `results` message: at most MAX_GUEST_ACTIONS_PER_BATCH answers, about RESULTS_MESSAGE_BYTES.
      let n = 1;
      let bytes = head.bytes;
      while (n < queue.length && n < MAX_GUEST_ACTIONS_PER_BATCH && queue[n]!.batched && bytes + queue[n]!.bytes <= RESULTS_MESSAGE_BYTES) {
        bytes += queue[n]!.bytes;
        n++;
      }
      const taken = queue.splice(0, n);
      if (!sink.write({ sequence: 0n, result: { $case: 'results', value: { results: taken.map((q) => q.response) } } })) full = true;
      for (const q of taken) handedOver(q.accepted);
    }
    measureTail();
    if (queue.length > 0 && !waitingDrain) {
      // Held back until the client took what the sink has (its lag and stall rules apply meanwhile).
      waitingDrain = true;
      void sink.drained().then(() => {
        waitingDrain = false;
        full = false;
        flush();
      });
    }
  };
  /** Answers one action: alone (its own message) or, for an action that came in a batch, coalesced. */
  const send = (sequence: bigint, result: Result, batched: boolean, accepted: boolean) => {
    if (signal.aborted) return;
    if (!batched && queue.length === 0) {
      // As before batches existed: written at once (the sink's back-pressure and limits apply).
      if (!sink.write({ sequence, result })) full = true;
      handedOver(accepted);
      return;
    }
    const bytes = batched ? sizeHint(result) : 0;
    queue.push({ response: { sequence, result }, batched, accepted, bytes });
    if (!batched) {
      // After the answers that completed before it.
      tailCount = 0;
      tailBytes = 0;
      flush();
      return;
    }
    tailCount++;
    tailBytes += bytes;
    // A full `results` message goes out now, the rest once the work in progress is done (or once the
    // sink drained). process.nextTick, not setImmediate: an answer flushed in an immediate missed the
    // HTTP/2 session's write of the turn (Node sends it from a native immediate that runs first) and
    // went out in a write of its own one loop iteration later (bench/README.md "Third pass").
    if (!full && (tailCount >= MAX_GUEST_ACTIONS_PER_BATCH || tailBytes >= RESULTS_MESSAGE_BYTES)) flush();
    else if (!flushScheduled) {
      flushScheduled = true;
      process.nextTick(() => {
        if (flushScheduled) flush();
      });
    }
  };

  /** Takes one action, exactly as when it comes alone; `batched`: it came in a batch. */
  const accept = (sequence: bigint, action: pb.RunGuestActionsRequest['action'], batched: boolean) => {
    if (!action) return send(sequence, refusal(Code.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', `action is required (${ACTION_KINDS})`), batched, false);
    if (action.$case === 'batch')
      return send(
        sequence,
        refusal(Code.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', `a batch entry may not be a batch itself (${ACTION_KINDS})`),
        batched,
        false,
      );
    if (inFlight >= maxInFlight)
      return send(
        sequence,
        refusal(
          Code.RESOURCE_EXHAUSTED,
          'HV_STATUS_INSUFFICIENT_BUFFERS',
          `${inFlight} guest actions of this stream are unanswered (at most ${maxInFlight}); the action was not run: send it again once answers came back`,
        ),
        batched,
        false,
      );
    const unary = UNARY_OF[action.$case];
    try {
      authorize?.(`/vsm.v1.GuestService/${unary.rpc}`, action.value);
    } catch (e) {
      return send(sequence, failed(e), batched, false);
    }
    inFlight++;
    const key = action.value.name;
    const run = async () => {
      let result: Result;
      try {
        result = { $case: action.$case, value: (await unary.run(methods, action.value as never)) as never } as Result;
      } catch (e) {
        result = failed(e);
      }
      send(sequence, result, batched, true);
    };
    let q = vpQueues.get(key);
    if (!q) {
      if (vpQueues.size >= VP_QUEUES_KEPT) for (const [k, v] of vpQueues) if (!v.busy) vpQueues.delete(k);
      q = { jobs: [], busy: false };
      vpQueues.set(key, q);
    }
    if (q.busy) q.jobs.push(run);
    else {
      q.busy = true;
      void drain(q, run);
    }
  };

  for await (const req of requests) {
    if (signal.aborted) break;
    const { sequence, action } = req;
    if (action?.$case === 'batch') {
      const entries = action.value.actions;
      const bad =
        entries.length > MAX_GUEST_ACTIONS_PER_BATCH
          ? `a batch holds ${entries.length} actions, at most ${MAX_GUEST_ACTIONS_PER_BATCH}; none of them was run`
          : sequence !== 0n
            ? `a batch's own sequence must be 0 (each action carries its own), got ${sequence}; none of its actions was run`
            : undefined;
      if (bad) {
        flush(); // the answers made so far go out before the stream's status
        throw new ApiError(Code.INVALID_ARGUMENT, 'HV_STATUS_INVALID_PARAMETER', bad);
      }
      for (const e of entries) {
        if (signal.aborted) break;
        accept(e.sequence, e.action, true);
      }
    } else accept(sequence, action, false);
    // Back-pressure: take the client's next action only once it takes our answers again.
    if (full) {
      await sink.drained();
      full = false;
    }
  }
  if (signal.aborted) return;
  flush();
  if (inFlight === 0 && queue.length === 0) return;
  // Half-closed: answer everything accepted (or stop at once when the stream is ended meanwhile).
  await new Promise<void>((resolve) => {
    idle = resolve;
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
