// The serializers the server and @vsm/client use (@vsm/api wire.ts, issue #13): one BinaryWriter
// reused per message type. They must give the generated serializers' bytes exactly, whatever came
// before them: a larger message, a message over the size a writer is kept at, an encode that threw.
import { encoderCopiesDirectly, pb, reusingEncoder, vsmServices } from '@vsm/api';

const generated = <T>(codec: { encode(m: T): { finish(): Uint8Array } }, m: T) => Buffer.from(codec.encode(m).finish());

const event = (id: bigint, messageBytes: number): pb.InterceptEvent =>
  pb.InterceptEvent.fromPartial({
    interceptId: id,
    vpIndex: 3,
    vtl: 0,
    protectingVtl: 1,
    gpa: 0x40123n,
    hvMessage: Buffer.alloc(messageBytes, Number(id & 0xffn)),
    writeData: Buffer.from([1, 2, 3]),
  });
const batch = (n: number, messageBytes = 256): pb.MonitorResponse => ({
  kind: { $case: 'intercepts', value: { intercepts: Array.from({ length: n }, (_, i) => event(BigInt(i + 1), messageBytes)) } },
});
const chunk = (pages: number): pb.SnapshotChunk => {
  const run: pb.MemoryRunSnapshot = { gpfn: 0x100n, data: Buffer.alloc(pages * 4096, 0xa5) };
  return { chunk: { $case: 'memory', value: { runs: [run] } } };
};

describe('reusingEncoder', () => {
  test('the bytes of the generated encoder, message after message of varying size', () => {
    const enc = reusingEncoder(pb.MonitorResponse);
    // growing, shrinking (no stale bytes of the larger one), then over the kept size and back
    for (const m of [batch(1), batch(8), batch(1), batch(0), batch(300), batch(2), batch(1, 0)]) expect(enc(m)).toEqual(generated(pb.MonitorResponse, m));
    const snap = reusingEncoder(pb.SnapshotChunk);
    for (const m of [chunk(1), chunk(64), chunk(2)]) expect(snap(m)).toEqual(generated(pb.SnapshotChunk, m));
  });

  test('each Buffer is its own: a later message does not change an earlier one', () => {
    const enc = reusingEncoder(pb.MonitorResponse);
    const first = enc(batch(2));
    const copy = Buffer.from(first);
    enc(batch(2, 100));
    enc(batch(5));
    expect(first).toEqual(copy);
  });

  test('short messages (up to 64 bytes: copied out of the writer) and the sizes around that bound: the same bytes, each Buffer its own', () => {
    const enc = reusingEncoder(pb.RunGuestActionsResponse);
    const results = (n: number): pb.RunGuestActionsResponse => ({
      sequence: 0n,
      result: {
        $case: 'results',
        value: {
          results: Array.from({ length: n }, (_, i) => ({
            sequence: BigInt(8 * i + 3),
            result: { $case: 'writeMemory', value: { outcome: { exception: 0, activeVtl: i & 1, partitionCrashed: false } } },
          })),
        },
      },
    });
    const seen: [Buffer, Buffer][] = [];
    for (let n = 0; n <= 8; n++) {
      const m = results(n);
      const b = enc(m);
      expect(b).toEqual(generated(pb.RunGuestActionsResponse, m));
      expect(Buffer.isBuffer(b)).toBe(true);
      seen.push([b, Buffer.from(b)]);
    }
    const sizes = seen.map(([b]) => b.length);
    expect(sizes.some((x) => x <= 64) && sizes.some((x) => x > 64)).toBe(true); // both sides of the bound
    for (const [b, copy] of seen) expect(b).toEqual(copy); // later messages changed none of them
  });

  test("bytes are copied straight out of the writer's buffer (the BinaryWriter internals it relies on are there), each message into a Buffer of its own", () => {
    // A @bufbuild/protobuf upgrade that renames them makes this fail (the encoder would fall back to finish()).
    expect(encoderCopiesDirectly()).toBe(true);
    const enc = reusingEncoder(pb.MonitorResponse);
    const a = enc(batch(4));
    const b = enc(batch(4, 10));
    expect(a).toEqual(generated(pb.MonitorResponse, batch(4)));
    expect(b).toEqual(generated(pb.MonitorResponse, batch(4, 10)));
    expect(a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length).toBe(false);
  });

  test('an encode that throws leaves the next message intact', () => {
    const enc = reusingEncoder(pb.MonitorResponse);
    const bad = {
      kind: { $case: 'intercepts', value: { intercepts: [event(1n, 16), { ...event(2n, 16), interceptId: 'x' as unknown as bigint }] } },
    } as pb.MonitorResponse;
    expect(() => enc(bad)).toThrow();
    expect(enc(batch(3))).toEqual(generated(pb.MonitorResponse, batch(3)));
  });

  test('every vsm.v1 RPC serializes requests and responses as the generated definition does', () => {
    let n = 0;
    for (const svc of vsmServices())
      for (const m of svc.methods) {
        expect(svc.definition[m.localName]).toBe(m.definition);
        // an empty message of each type: the same bytes through the descriptor-built definition
        const gen = (
          pb as unknown as Record<
            string,
            Record<
              string,
              {
                path: string;
                requestDeserialize(b: Buffer): unknown;
                responseDeserialize(b: Buffer): unknown;
                requestSerialize(v: unknown): Buffer;
                responseSerialize(v: unknown): Buffer;
              }
            >
          >
        )[`${m.service.replace(/^vsm\.v1\./, '')}Service`][m.localName];
        expect(gen.path).toBe(m.path);
        const req = gen.requestDeserialize(Buffer.alloc(0));
        const res = gen.responseDeserialize(Buffer.alloc(0));
        expect(m.definition.requestSerialize(req)).toEqual(gen.requestSerialize(req));
        expect(m.definition.responseSerialize(res)).toEqual(gen.responseSerialize(res));
        expect(m.definition.requestSerialize).not.toBe(gen.requestSerialize);
        expect(m.definition.responseSerialize).not.toBe(gen.responseSerialize);
        n++;
      }
    expect(n).toBeGreaterThan(40);
  });
});
