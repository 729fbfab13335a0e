// service layer: what a backend must implement. The emulator backend runs the core in process; the
// agent backend (KVM host agent) forwards to a remote vsm.v1 server. Types are the generated
// vsm.v1 messages and the methods are derived from the generated service definitions, so a backend is
// exactly "an implementation of the vsm.v1 services".
import type * as grpc from '@grpc/grpc-js';
import type { VsmServers } from '@vsm/api';

export interface StreamSink<T> {
  write(msg: T): boolean;
  /** Resolves when the transport can take more (back-pressure). */
  drained(): Promise<void>;
}

/**
 * The promise-based method a backend gives for one grpc-js handler type of the generated services:
 *   unary                  (r) => Promise<Response>
 *   server stream          (r, sink, signal) => Promise<void>: writes until `signal` aborts (or it
 *                          is done), resolves when the stream ends
 *   bidi stream            (requests, sink, signal) => Promise<void>: reads requests until the client
 *                          half-closes or `signal` aborts
 *   client stream          (requests, signal) => Promise<Response>: reads requests until the client
 *                          half-closes (or `signal` aborts), then answers once
 * Decided on the handler's signature (unary: call + callback) and its call object (a duplex call is
 * also writable: tested first).
 */
type BackendMethod<H> = H extends (call: grpc.ServerUnaryCall<infer Req, unknown>, callback: grpc.sendUnaryData<infer Res>) => void
  ? (r: Req) => Promise<Res>
  : H extends (call: grpc.ServerReadableStream<infer Req, unknown>, callback: grpc.sendUnaryData<infer Res>) => void
    ? (requests: AsyncIterable<Req>, signal: AbortSignal) => Promise<Res>
    : H extends (call: infer C) => void
      ? C extends grpc.ServerDuplexStream<infer Req, infer Res>
        ? (requests: AsyncIterable<Req>, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>
        : C extends grpc.ServerWritableStream<infer Req, infer Res>
          ? (r: Req, sink: StreamSink<Res>, signal: AbortSignal) => Promise<void>
          : never
      : never;

/**
 * One method per vsm.v1 RPC, named as the generated service definitions name it (`createPartition`,
 * `watchVtlTransitions`, `monitor`, ...), typed from them: an RPC added to proto/ is a method every
 * backend must implement (the type check fails until it does; startServer logs an RPC a backend has
 * no method for, which then answers UNIMPLEMENTED).
 */
export type BackendRpcs = { [K in keyof VsmServers as string extends K ? never : K]: BackendMethod<VsmServers[K]> };

export interface Backend extends BackendRpcs {
  readonly kind: string;
  close(): Promise<void>;
}
