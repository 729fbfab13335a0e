// The ABI-only hypercall dispatcher with synthetic handlers (simple, rep, variable header): what it
// checks before a handler runs (tlfs-hypercalls.md §1.5), how it fetches parameters (memory-based and
// register-based fast), and what it reports. The real VSM calls are tested through executeVmcall in
// dispatcher.test.ts.
import { HvStatus, Partition, encodeHypercallInput } from '@vsm/core';
import { HypercallDispatcher, type HypercallHandler } from '@vsm/core/hypercalls';

const IN = 0x10000n;
const OUT = 0x20000n;

function setup(handlers: HypercallHandler[]) {
  const p = new Partition({ id: 'd', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 20n, maximumVtl: 1, labels: {} });
  return { p, vp: p.vp(0), d: new HypercallDispatcher(handlers) };
}

const seen: { name: string; input: Buffer; rep: { start: number; count: number } }[] = [];
const simple: HypercallHandler = {
  name: 'SyntheticSimple',
  code: 0x7001,
  rep: false,
  inputSize: 16,
  outputElementSize: 8,
  handle(_ctx, input, rep) {
    seen.push({ name: this.name, input: Buffer.from(input), rep });
    const out = Buffer.alloc(8);
    out.writeBigUInt64LE(input.readBigUInt64LE(0) + input.readBigUInt64LE(8));
    return { status: HvStatus.HV_STATUS_SUCCESS, output: out };
  },
};
const rep: HypercallHandler = {
  name: 'SyntheticRep',
  code: 0x7002,
  rep: true,
  inputSize: 8,
  repInputElementSize: 8,
  handle(_ctx, input, r) {
    seen.push({ name: this.name, input: Buffer.from(input), rep: r });
    // Stops at the first element that is 0xdead (rep semantics: earlier elements stay done).
    for (let i = r.start; i < r.count; i++)
      if (input.readBigUInt64LE(8 + 8 * i) === 0xdeadn) return { status: HvStatus.HV_STATUS_INVALID_PARAMETER, repsCompleted: i };
    return { status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: r.count };
  },
};
const variable: HypercallHandler = {
  name: 'SyntheticVariable',
  code: 0x7003,
  rep: false,
  inputSize: 8,
  variableHeader: true,
  handle(_ctx, input, r) {
    seen.push({ name: this.name, input: Buffer.from(input), rep: r });
    return { status: HvStatus.HV_STATUS_SUCCESS };
  },
};

beforeEach(() => {
  seen.length = 0;
});

test('codes() lists exactly the handlers it was built with; a code handled twice is refused', () => {
  expect(new HypercallDispatcher([variable, simple, rep]).codes()).toEqual([0x7001, 0x7002, 0x7003]);
  expect(() => new HypercallDispatcher([simple, { ...simple, name: 'Again' }])).toThrow(/handled twice/);
});

test('an unknown code is HV_STATUS_INVALID_HYPERCALL_CODE and runs nothing', () => {
  const { p, vp, d } = setup([simple]);
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7fff }), inputGpa: IN, outputGpa: OUT })).toEqual({
    status: HvStatus.HV_STATUS_INVALID_HYPERCALL_CODE,
    repsCompleted: 0,
  });
  expect(seen).toEqual([]);
});

test('simple call: the input block is read from guest memory; the output goes back to the caller', () => {
  const { p, vp, d } = setup([simple]);
  const input = Buffer.alloc(16);
  input.writeBigUInt64LE(40n, 0);
  input.writeBigUInt64LE(2n, 8);
  p.memory.write(IN, input);
  const r = d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7001 }), inputGpa: IN, outputGpa: OUT });
  expect(r).toMatchObject({ status: HvStatus.HV_STATUS_SUCCESS, repsCompleted: 0 });
  expect('output' in r && r.output!.readBigUInt64LE(0)).toBe(42n);
  expect(seen[0]!.input).toEqual(input);
});

test('simple call: rep count, variable header or RsvdZ bits are HV_STATUS_INVALID_HYPERCALL_INPUT before the handler runs', () => {
  const { p, vp, d } = setup([simple]);
  for (const control of [
    encodeHypercallInput({ callCode: 0x7001, repCount: 1 }),
    encodeHypercallInput({ callCode: 0x7001, variableHeaderSize: 1 }),
    encodeHypercallInput({ callCode: 0x7001 }) | (1n << 27n),
    encodeHypercallInput({ callCode: 0x7001 }) | (1n << 60n),
  ]) {
    expect(d.dispatch(p, vp, { control, inputGpa: IN, outputGpa: OUT })).toMatchObject({ status: HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT });
  }
  expect(seen).toEqual([]);
});

test('parameter blocks: misaligned → INVALID_ALIGNMENT, overlapping input/output → INVALID_ALIGNMENT, beyond the GPA space → INVALID_PARAMETER', () => {
  const { p, vp, d } = setup([simple]);
  const call = (inputGpa: bigint, outputGpa: bigint) => d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7001 }), inputGpa, outputGpa });
  expect(call(IN + 4n, OUT)).toMatchObject({ status: HvStatus.HV_STATUS_INVALID_ALIGNMENT });
  expect(call(IN, IN + 8n)).toMatchObject({ status: HvStatus.HV_STATUS_INVALID_ALIGNMENT });
  expect(call(1n << 30n, OUT)).toMatchObject({ status: expect.any(Number) });
  expect((call(1n << 30n, OUT) as { status: number }).status).not.toBe(HvStatus.HV_STATUS_SUCCESS);
  expect(seen).toEqual([]);
});

test('fast (register-based) call: RDX and R8 are the 16 input bytes; a call with output is XMM fast (issue #16)', () => {
  const { p, vp, d } = setup([variable, simple]);
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7003, fast: true }), inputGpa: 0x1122n, outputGpa: 0x3344n })).toMatchObject({
    status: HvStatus.HV_STATUS_SUCCESS,
  });
  expect(seen[0]!.input.readBigUInt64LE(0)).toBe(0x1122n);
  expect(seen[0]!.input.readBigUInt64LE(8)).toBe(0x3344n);
  // 16 input bytes in RDX, R8; the 8 output bytes go to the next register, XMM0 (tlfs-hypercalls.md §1.4).
  const out = d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7001, fast: true }), inputGpa: 1n, outputGpa: 2n });
  expect(out).toMatchObject({ status: HvStatus.HV_STATUS_SUCCESS, fastOutput: { start: 16, offset: 16 } });
  expect((out as { fastOutput: { bytes: Buffer } }).fastOutput.bytes.readBigUInt64LE(0)).toBe(3n);
});

test('rep call: header + rep elements are fetched; start index and count reach the handler; reps completed are reported', () => {
  const { p, vp, d } = setup([rep]);
  const input = Buffer.alloc(8 + 8 * 4);
  for (let i = 0; i < 4; i++) input.writeBigUInt64LE(BigInt(i + 1), 8 + 8 * i);
  input.writeBigUInt64LE(0xdeadn, 8 + 8 * 2);
  p.memory.write(IN, input);
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7002, repCount: 4 }), inputGpa: IN, outputGpa: 0n })).toEqual({
    status: HvStatus.HV_STATUS_INVALID_PARAMETER,
    repsCompleted: 2,
  });
  expect(seen[0]!.rep).toEqual({ start: 0, count: 4 });
  expect(seen[0]!.input.length).toBe(8 + 8 * 4);
  // Resumed past the failing element by the caller: start index 3.
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7002, repCount: 4, repStartIndex: 3 }), inputGpa: IN, outputGpa: 0n })).toEqual({
    status: HvStatus.HV_STATUS_SUCCESS,
    repsCompleted: 4,
  });
  expect(seen[1]!.rep).toEqual({ start: 3, count: 4 });
  // Rep count 0, or a start index not below the count: refused before the handler.
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7002, repCount: 0 }), inputGpa: IN, outputGpa: 0n })).toMatchObject({
    status: HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
  });
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7002, repCount: 2, repStartIndex: 2 }), inputGpa: IN, outputGpa: 0n })).toMatchObject({
    status: HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT,
  });
  expect(seen.length).toBe(2);
});

test('variable header: its 8-byte units are fetched after the fixed header', () => {
  const { p, vp, d } = setup([variable]);
  const input = Buffer.alloc(8 + 16, 0xab);
  p.memory.write(IN, input);
  expect(d.dispatch(p, vp, { control: encodeHypercallInput({ callCode: 0x7003, variableHeaderSize: 2 }), inputGpa: IN, outputGpa: 0n })).toMatchObject({
    status: HvStatus.HV_STATUS_SUCCESS,
  });
  expect(seen[0]!.input).toEqual(input);
});
