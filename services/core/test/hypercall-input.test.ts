// HV_HYPERCALL_INPUT / result value layout and the common checks (tlfs-hypercalls.md §1.2, §1.3, §1.5).
import { HvError, HvStatus, decodeHypercallInput, decodeHypercallResult, encodeHypercallInput } from '@vsm/core';
import { type HypercallShape, encodeHypercallResult, validateHypercallInput, validateParameterBlock } from '../src/tlfs/hypercall';

/** Runs fn and returns the HV_STATUS of the HvError it throws (fails if it does not throw one). */
function statusOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (e instanceof HvError) return e.status;
    throw e;
  }
  throw new Error('expected an HvError, nothing was thrown');
}

const zeroInput = {
  callCode: 0,
  fast: false,
  variableHeaderSize: 0,
  rsvdZ1: 0,
  isNested: false,
  repCount: 0,
  rsvdZ2: 0,
  repStartIndex: 0,
  rsvdZ3: 0,
};

describe('HV_HYPERCALL_INPUT field positions (§1.2)', () => {
  // [field, value, the exact 64-bit encoding with only that field set]
  const cases: [keyof typeof zeroInput, number | boolean, bigint][] = [
    ['callCode', 0x0001, 0x0000_0000_0000_0001n],
    ['callCode', 0xffff, 0x0000_0000_0000_ffffn],
    ['callCode', 0xa55a, 0x0000_0000_0000_a55an],
    ['fast', true, 0x0000_0000_0001_0000n],
    ['variableHeaderSize', 0x001, 0x0000_0000_0002_0000n],
    ['variableHeaderSize', 0x3ff, 0x0000_0000_07fe_0000n],
    ['variableHeaderSize', 0x200, 0x0000_0000_0400_0000n],
    ['rsvdZ1', 0x1, 0x0000_0000_0800_0000n],
    ['rsvdZ1', 0xf, 0x0000_0000_7800_0000n],
    ['isNested', true, 0x0000_0000_8000_0000n],
    ['repCount', 0x001, 0x0000_0001_0000_0000n],
    ['repCount', 0xfff, 0x0000_0fff_0000_0000n],
    ['repCount', 0x800, 0x0000_0800_0000_0000n],
    ['rsvdZ2', 0x1, 0x0000_1000_0000_0000n],
    ['rsvdZ2', 0xf, 0x0000_f000_0000_0000n],
    ['repStartIndex', 0x001, 0x0001_0000_0000_0000n],
    ['repStartIndex', 0xfff, 0x0fff_0000_0000_0000n],
    ['repStartIndex', 0x800, 0x0800_0000_0000_0000n],
    ['rsvdZ3', 0x1, 0x1000_0000_0000_0000n],
    ['rsvdZ3', 0xf, 0xf000_0000_0000_0000n],
  ];

  test.each(cases)('%s = %p encodes as %p and decodes back', (field, value, encoded) => {
    const decoded = { ...zeroInput, [field]: value };
    expect(encodeHypercallInput(decoded)).toBe(encoded);
    expect(decodeHypercallInput(encoded)).toEqual(decoded);
  });

  test('all ones decodes to every field at its maximum, and encodes back to all ones', () => {
    const max = {
      callCode: 0xffff,
      fast: true,
      variableHeaderSize: 0x3ff,
      rsvdZ1: 0xf,
      isNested: true,
      repCount: 0xfff,
      rsvdZ2: 0xf,
      repStartIndex: 0xfff,
      rsvdZ3: 0xf,
    };
    expect(decodeHypercallInput(0xffff_ffff_ffff_ffffn)).toEqual(max);
    expect(encodeHypercallInput(max)).toBe(0xffff_ffff_ffff_ffffn);
  });

  test('a realistic rep call: GetVpRegisters, rep count 2, start 1', () => {
    const v = encodeHypercallInput({ callCode: 0x0050, repCount: 2, repStartIndex: 1 });
    expect(v).toBe(0x0001_0002_0000_0050n);
    expect(decodeHypercallInput(v)).toEqual({ ...zeroInput, callCode: 0x50, repCount: 2, repStartIndex: 1 });
  });

  test('a mixed value decodes every field independently', () => {
    // call 0x1234, fast, varhdr 5, nested, rep count 0x0ab, rep start 0x0cd
    const v = 0x00cd_00ab_800b_1234n;
    expect(decodeHypercallInput(v)).toEqual({
      callCode: 0x1234,
      fast: true,
      variableHeaderSize: 5,
      rsvdZ1: 0,
      isNested: true,
      repCount: 0xab,
      rsvdZ2: 0,
      repStartIndex: 0xcd,
      rsvdZ3: 0,
    });
    expect(encodeHypercallInput(decodeHypercallInput(v))).toBe(v);
  });

  test('encode masks each field to its width (no bleeding into neighbours)', () => {
    expect(encodeHypercallInput({ callCode: 0x1_ffff })).toBe(0xffffn);
    expect(encodeHypercallInput({ callCode: 0, variableHeaderSize: 0x7ff })).toBe(0x07fe_0000n);
    expect(encodeHypercallInput({ callCode: 0, repCount: 0x1fff })).toBe(0x0000_0fff_0000_0000n);
    expect(encodeHypercallInput({ callCode: 0, repStartIndex: 0x1fff })).toBe(0x0fff_0000_0000_0000n);
    expect(encodeHypercallInput({ callCode: 0, rsvdZ1: 0x1f })).toBe(0x7800_0000n);
  });
});

describe('validateHypercallInput (§1.5)', () => {
  const simple: HypercallShape = { code: 0x000d, rep: false, inputSize: 16 };
  const rep: HypercallShape = { code: 0x0050, rep: true, inputSize: 16, repInputElementSize: 4, outputElementSize: 16 };
  const withVarHeader: HypercallShape = { code: 0x0099, rep: false, inputSize: 16, variableHeader: true };
  const INPUT = HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT;

  test('HV_STATUS_INVALID_HYPERCALL_INPUT is 3', () => {
    expect(INPUT).toBe(3);
  });

  test('valid inputs pass', () => {
    expect(() => validateHypercallInput(decodeHypercallInput(0x000dn), simple)).not.toThrow();
    expect(() => validateHypercallInput(decodeHypercallInput(0x0001_0002_0000_0050n), rep)).not.toThrow();
    expect(() => validateHypercallInput(decodeHypercallInput(0x0000_0002_0000_0050n), rep)).not.toThrow();
    expect(() => validateHypercallInput(decodeHypercallInput(0x0000_0000_0006_0099n), withVarHeader)).not.toThrow();
    // Fast and nested bits are not errors for the common checks.
    expect(() => validateHypercallInput(decodeHypercallInput(0x0000_0000_8001_000dn), simple)).not.toThrow();
  });

  test.each([
    ['RsvdZ 30:27 (bit 27)', 0x0000_0000_0800_000dn],
    ['RsvdZ 30:27 (bit 30)', 0x0000_0000_4000_000dn],
    ['RsvdZ 47:44 (bit 44)', 0x0000_1000_0000_000dn],
    ['RsvdZ 47:44 (bit 47)', 0x0000_8000_0000_000dn],
    ['RsvdZ 63:60 (bit 60)', 0x1000_0000_0000_000dn],
    ['RsvdZ 63:60 (bit 63)', 0x8000_0000_0000_000dn],
  ])('%s set on a simple call -> 3', (_, v) => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(v), simple))).toBe(3);
  });

  test('RsvdZ bits are rejected on a rep call too', () => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0000_1001_0000_0050n), rep))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x1000_0001_0000_0050n), rep))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0000_0001_0800_0050n), rep))).toBe(3);
  });

  test('variable header size on a call that takes none -> 3', () => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0000_0000_0002_000dn), simple))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0000_0001_07fe_0050n), rep))).toBe(3);
  });

  test('rep count 0 on a rep call -> 3', () => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0050n), rep))).toBe(3);
  });

  test('rep start index >= rep count -> 3', () => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0002_0002_0000_0050n), rep))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0003_0002_0000_0050n), rep))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0fff_0fff_0000_0050n), rep))).toBe(3);
    // start = count - 1 is the last valid start
    expect(() => validateHypercallInput(decodeHypercallInput(0x0ffe_0fff_0000_0050n), rep)).not.toThrow();
  });

  test('rep count or rep start index on a simple call -> 3', () => {
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0000_0001_0000_000dn), simple))).toBe(3);
    expect(statusOf(() => validateHypercallInput(decodeHypercallInput(0x0001_0000_0000_000dn), simple))).toBe(3);
  });

  test('the thrown error is an HvError carrying the status and its name', () => {
    let err: unknown;
    try {
      validateHypercallInput(decodeHypercallInput(0x0050n), rep);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HvError);
    expect((err as HvError).status).toBe(3);
    expect((err as HvError).statusName).toBe('HV_STATUS_INVALID_HYPERCALL_INPUT');
  });
});

describe('validateParameterBlock (§1.1, §1.5)', () => {
  const limit = 0x10_0000n; // 1 MiB GPA space
  const ALIGN = HvStatus.HV_STATUS_INVALID_ALIGNMENT;

  test('HV_STATUS_INVALID_ALIGNMENT is 4', () => {
    expect(ALIGN).toBe(4);
  });

  test('aligned, in-page, in-range blocks pass', () => {
    expect(() => validateParameterBlock(0x2000n, 16, limit, 'input')).not.toThrow();
    expect(() => validateParameterBlock(0x2ff8n, 8, limit, 'input')).not.toThrow(); // ends exactly at the page end
    expect(() => validateParameterBlock(0x3000n, 4096, limit, 'input')).not.toThrow(); // a whole page
    expect(() => validateParameterBlock(limit - 8n, 8, limit, 'input')).not.toThrow(); // last qword of the space
  });

  test.each([0x2001n, 0x2002n, 0x2004n, 0x2007n])('misaligned GPA %p -> 4', (gpa) => {
    expect(statusOf(() => validateParameterBlock(gpa, 8, limit, 'input'))).toBe(4);
  });

  test('crossing a page boundary -> 4', () => {
    expect(statusOf(() => validateParameterBlock(0x2ff8n, 16, limit, 'input'))).toBe(4);
    expect(statusOf(() => validateParameterBlock(0x2008n, 4096, limit, 'input'))).toBe(4);
  });

  test('outside the GPA space -> 4', () => {
    expect(statusOf(() => validateParameterBlock(limit, 8, limit, 'output'))).toBe(4);
    expect(statusOf(() => validateParameterBlock(0x1_0000_0000n, 8, limit, 'output'))).toBe(4);
  });

  test('an empty block is never checked', () => {
    expect(() => validateParameterBlock(0x2001n, 0, limit, 'output')).not.toThrow();
    expect(() => validateParameterBlock(limit + 0x1000n, 0, limit, 'output')).not.toThrow();
  });
});

describe('HV_HYPERCALL_RESULT_VALUE (§1.3)', () => {
  test('status in 15:0, reps completed in 43:32', () => {
    expect(encodeHypercallResult(HvStatus.HV_STATUS_SUCCESS)).toBe(0n);
    expect(encodeHypercallResult(HvStatus.HV_STATUS_INVALID_ALIGNMENT)).toBe(0x4n);
    expect(encodeHypercallResult(HvStatus.HV_STATUS_SUCCESS, 2)).toBe(0x0000_0002_0000_0000n);
    expect(encodeHypercallResult(0x0086, 0xfff)).toBe(0x0000_0fff_0000_0086n);
    expect(encodeHypercallResult(0xffff, 0xfff)).toBe(0x0000_0fff_0000_ffffn);
  });

  test('encode masks to the field widths', () => {
    expect(encodeHypercallResult(0x1_0003, 0x1001)).toBe(0x0000_0001_0000_0003n);
  });

  test('decode reads both fields and ignores the reserved bits 31:16 and 63:44', () => {
    expect(decodeHypercallResult(0x0000_0002_0000_0000n)).toEqual({ status: 0, repsCompleted: 2 });
    expect(decodeHypercallResult(0x0000_0fff_0000_0086n)).toEqual({ status: 0x86, repsCompleted: 0xfff });
    expect(decodeHypercallResult(0xffff_f005_ffff_0004n)).toEqual({ status: 4, repsCompleted: 5 });
  });

  test('round trip', () => {
    for (const [s, r] of [
      [0, 0],
      [3, 1],
      [0x51, 7],
      [0xffff, 0xfff],
    ] as const) {
      expect(decodeHypercallResult(encodeHypercallResult(s, r))).toEqual({ status: s, repsCompleted: r });
    }
  });
});
