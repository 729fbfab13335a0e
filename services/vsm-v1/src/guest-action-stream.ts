// service layer: GuestService.RunGuestActions, the streaming form of the guest-action RPCs, shared by
// every backend. Each action runs through the backend's own unary method (same validation, same
// semantics, same errors) after being authorized as that unary RPC would be (its partition, its
// role); its response or error goes back tagged with the client's `sequence`. Actions naming the
// same VP are chained (run in the order sent); actions on different VPs run concurrently, so one
// waiting for a Monitor answer holds back only its own VP. At most MAX_IN_FLIGHT_GUEST_ACTIONS are
// accepted and unanswered per stream; the reader also waits while the client does not take the
// responses (sink back-pressure), so a stream's memory is bounded by the cap and the sink's limits.
import { status as Code } from '@grpc/grpc-js';
import { pb } from '@vsm/api';
import type { StreamSink } from './backend';
import { ApiError, toServiceError } from './errors';

/** Actions accepted and not yet answered, per stream (proto/vsm/v1/guest.proto RunGuestActions). */
export const MAX_IN_FLIGHT_GUEST_ACTIONS = 256;

type Action = NonNullable<pb.RunGuestActionsRequest['action']>;
type Result = NonNullable<pb.RunGuestActionsResponse['result']>;

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
 * Serves one RunGuestActions stream over `methods` (the backend's unary guest actions). Returns when
 * the client half-closed and every accepted action was answered, or at once when `signal` aborts
 * (client cancel, revoked authorization, lagging client): answers still owed are dropped then.
 */
export async function runGuestActions(
  methods: GuestActionMethods,
  requests: AsyncIterable<pb.RunGuestActionsRequest>,
  sink: StreamSink<pb.RunGuestActionsResponse>,
  signal: AbortSignal,
  authorize: ActionAuthorizer | undefined,
  maxInFlight = MAX_IN_FLIGHT_GUEST_ACTIONS,
): Promise<void> {
  /** Per VP name: the promise of its last accepted action (settles, never rejects). */
  const tails = new Map<string, Promise<void>>();
  let inFlight = 0;
  let idle: (() => void) | undefined;
  /** True when the sink wants the producer to wait. */
  let full = false;
  const send = (sequence: bigint, result: Result) => {
    if (signal.aborted) return;
    if (!sink.write({ sequence, result })) full = true;
  };

  for await (const req of requests) {
    if (signal.aborted) break;
    const { sequence, action } = req;
    if (!action) {
      send(
        sequence,
        failed(
          new ApiError(
            Code.INVALID_ARGUMENT,
            'HV_STATUS_INVALID_PARAMETER',
            'action is required (one of write_msr, read_msr, hypercall, call_hypercall_page, read_memory, write_memory, execute_memory, write_control_register)',
          ),
        ),
      );
    } else if (inFlight >= maxInFlight) {
      send(
        sequence,
        failed(
          new ApiError(
            Code.RESOURCE_EXHAUSTED,
            'HV_STATUS_INSUFFICIENT_BUFFERS',
            `${inFlight} guest actions of this stream are unanswered (at most ${maxInFlight}); the action was not run: send it again once answers came back`,
          ),
        ),
      );
    } else {
      const unary = UNARY_OF[action.$case];
      let refused: Result | undefined;
      try {
        authorize?.(`/vsm.v1.GuestService/${unary.rpc}`, action.value);
      } catch (e) {
        refused = failed(e);
      }
      if (refused) send(sequence, refused);
      else {
        inFlight++;
        const key = action.value.name;
        const run = async () => {
          let result: Result;
          try {
            result = { $case: action.$case, value: (await unary.run(methods, action.value as never)) as never } as Result;
          } catch (e) {
            result = failed(e);
          }
          send(sequence, result);
          inFlight--;
          if (inFlight === 0) idle?.();
        };
        const prev = tails.get(key);
        const tail = prev ? prev.then(run) : run();
        tails.set(key, tail);
        void tail.then(() => {
          if (tails.get(key) === tail) tails.delete(key);
        });
      }
    }
    // Back-pressure: take the client's next action only once it takes our answers again.
    if (full) {
      full = false;
      await sink.drained();
    }
  }
  if (signal.aborted || inFlight === 0) return;
  // Half-closed: answer everything accepted (or stop at once when the stream is ended meanwhile).
  await new Promise<void>((resolve) => {
    idle = resolve;
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
