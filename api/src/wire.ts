// @vsm/api: protobuf serializers that keep their BinaryWriter between messages. The generated
// grpc-js serializers (`Buffer.from(X.encode(value).finish())`) start every message with a new
// writer whose 128-byte buffer doubles (and is copied) until the message fits, then copy the bytes
// twice more (finish() and Buffer.from). An intercept event (a 256-byte HV_MESSAGE inside) took four
// buffers and five copies; this one reuses the grown buffer and copies once (issue #13,
// bench/README.md "Intercept throughput"). The bytes are the same: the generated encode() does the
// writing.
import { BinaryWriter } from '@bufbuild/protobuf/wire';

/** A ts-proto message type (its generated encode). */
export interface MessageCodec<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
}

/** A writer whose buffer grew past this is dropped after the message, so that one large message (a snapshot chunk) is not kept. */
const KEEP_BYTES = 64 * 1024;

/**
 * What BinaryWriter keeps (not part of its typed API, @bufbuild/protobuf 2.x): its growable buffer,
 * the write position, and the positions of open forks. Feature-tested per writer; without them the
 * encoder takes finish()'s copy instead (services/vsm-v1/test/reusing-encoder.test.ts checks that the
 * direct path is the one in use).
 */
interface WriterState {
  buffer: Uint8Array;
  pos: number;
  stackPos: number[];
}
function stateOf(w: BinaryWriter): WriterState | undefined {
  const s = w as unknown as Partial<WriterState>;
  return s.buffer instanceof Uint8Array && typeof s.pos === 'number' && Array.isArray(s.stackPos) ? (s as WriterState) : undefined;
}

/** Whether reusingEncoder copies straight out of the writer's buffer (else through finish()). */
export function encoderCopiesDirectly(): boolean {
  return stateOf(new BinaryWriter()) !== undefined;
}

/**
 * `(m) => Buffer` for one message type, with one writer reused from message to message (encode()
 * is synchronous, so no two messages share it at once). The bytes are copied once, from the
 * writer's buffer into a Buffer from Node's pool (≤ 4 KiB) or of its own: finish() would make a new
 * Uint8Array with an ArrayBuffer of its own for every message (an allocation outside V8's heap, ≈0.7 µs
 * for a 200-byte batch of actions) and, for one of up to 64 bytes, one inside the heap that moves out
 * (≈1 µs) when asked for its ArrayBuffer (bench/README.md "Session 10").
 */
export function reusingEncoder<T>(codec: MessageCodec<T>): (message: T) => Buffer {
  let writer = new BinaryWriter();
  let state = stateOf(writer);
  const renew = () => {
    writer = new BinaryWriter();
    state = stateOf(writer);
  };
  return (message: T): Buffer => {
    try {
      codec.encode(message, writer);
    } catch (e) {
      renew(); // an encode that threw left its forks and position behind
      throw e;
    }
    let out: Buffer;
    if (state !== undefined && state.stackPos.length === 0) {
      out = Buffer.from(state.buffer.subarray(0, state.pos));
      state.pos = 0;
    } else {
      const bytes = writer.finish();
      out = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    if (out.length > KEEP_BYTES) renew();
    return out;
  };
}
