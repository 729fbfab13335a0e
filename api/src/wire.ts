// @vsm/api: protobuf serializers that keep their BinaryWriter between messages. The generated
// grpc-js serializers (`Buffer.from(X.encode(value).finish())`) start every message with a new
// writer whose 128-byte buffer doubles (and is copied) until the message fits, then copy the bytes
// twice more (finish() and Buffer.from). An intercept event (a 256-byte HV_MESSAGE inside) took four
// buffers and five copies; this one reuses the grown buffer and copies once, twice for a message of
// up to 64 bytes (issue #13, bench/README.md "Intercept throughput"). The bytes are the same: the
// generated encode() does the writing.
import { BinaryWriter } from '@bufbuild/protobuf/wire';

/** A ts-proto message type (its generated encode). */
export interface MessageCodec<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
}

/** A writer whose buffer grew past this is dropped after the message, so that one large message (a snapshot chunk) is not kept. */
const KEEP_BYTES = 64 * 1024;
/** V8 keeps typed arrays of up to this many bytes in its heap (its typed_array_max_size_in_heap). */
const ON_HEAP_BYTES = 64;

/**
 * `(m) => Buffer` for one message type, with one writer reused from message to message (encode()
 * is synchronous, so no two messages share it at once). The Buffer is a view of finish()'s copy.
 */
export function reusingEncoder<T>(codec: MessageCodec<T>): (message: T) => Buffer {
  let writer = new BinaryWriter();
  return (message: T): Buffer => {
    let bytes: Uint8Array;
    try {
      bytes = codec.encode(message, writer).finish();
    } catch (e) {
      writer = new BinaryWriter(); // an encode that threw left its forks and position behind
      throw e;
    }
    if (bytes.byteLength > KEEP_BYTES) writer = new BinaryWriter();
    // finish() returns a new Uint8Array; V8 keeps one of up to 64 bytes inside its heap, and asking
    // it for its ArrayBuffer moves it out (≈1 µs here). A short message (a unary answer, a `results`
    // message of a few writes: 34 bytes for 4) is copied into Node's pool instead (≈0.1 µs):
    // encoding one went from 1.48 to 0.51 µs (bench/README.md "Session 10").
    if (bytes.byteLength <= ON_HEAP_BYTES) return Buffer.from(bytes);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}
