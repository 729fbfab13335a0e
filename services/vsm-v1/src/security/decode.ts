// service layer, security: tolerant request decoding. grpc-js answers a request that fails to
// deserialize with INTERNAL ("Error deserializing request"), i.e. as if the server were broken.
// Malformed input is the caller's fault: the service definitions are wrapped so that a decode
// failure yields a marker, and the call wrappers answer it with INVALID_ARGUMENT.

const MALFORMED = Symbol('vsm.malformed-request');

export interface Malformed {
  readonly [MALFORMED]: string;
}

export function isMalformed(x: unknown): x is Malformed {
  return typeof x === 'object' && x !== null && MALFORMED in x;
}
export const malformedReason = (x: Malformed): string => x[MALFORMED];

/**
 * The same service definition, with request decoders that never throw, and response encoders that
 * pass an already encoded message (a Buffer, see stream-sink.ts) through unchanged. `encoders`, when
 * given, receives each method's own response encoder by path.
 */
export function tolerantService<
  T extends Record<string, { path: string; requestDeserialize: (b: Buffer) => unknown; responseSerialize: (m: never) => Buffer }>,
>(def: T, encoders?: Map<string, (m: unknown) => Buffer>): T {
  const out: Record<string, unknown> = {};
  for (const [k, m] of Object.entries(def)) {
    const decode = m.requestDeserialize;
    const encode = m.responseSerialize as (m: unknown) => Buffer;
    encoders?.set(m.path, encode);
    out[k] = {
      ...m,
      requestDeserialize: (b: Buffer) => {
        try {
          return decode(b);
        } catch (e) {
          return { [MALFORMED]: e instanceof Error ? e.message : String(e) } satisfies Malformed;
        }
      },
      responseSerialize: (x: unknown) => (Buffer.isBuffer(x) ? x : encode(x)),
    };
  }
  return out as T;
}
