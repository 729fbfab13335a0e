// vsmctl protections and intercept text, in process (no server): --flags, --pages, --access,
// splitting of large ModifyVtlProtectionMask requests, mask letters, outcome notices, and the map's
// protection grid.
import { pb } from '@vsm/client';
import { painter } from '../../clients/cli/src/format';
import { mapJson, renderMap } from '../../clients/cli/src/map';
import { interceptEventText, interceptLines, outcomeText, resumedLines, stopped } from '../../clients/cli/src/outcome';
import { UsageError } from '../../clients/cli/src/parse';
import {
  MAX_PAGES_PER_CALL,
  MAX_RANGES_PER_CALL,
  accessMaskText,
  gpaRange,
  maskLetter,
  maskText,
  parseAccessMask,
  parseMapFlags,
  parsePageRange,
  planProtectCalls,
} from '../../clients/cli/src/protect';

describe('--flags', () => {
  test.each([
    ['r', 0x1],
    ['rw', 0x3],
    ['rx', 0xd],
    ['r-x', 0xd],
    ['rwx', 0xf],
    ['RWX', 0xf],
    ['rk', 0x5],
    ['ru', 0x9],
    ['none', 0],
    ['-', 0],
    ['---', 0],
    ['0x5', 0x5],
    ['13', 0xd],
  ])('%s', (text, want) => expect(parseMapFlags(text)).toBe(want));
  test.each(['rwz', 'read', '', '0x100000000'])('rejects %j', (text) => expect(() => parseMapFlags(text)).toThrow(UsageError));

  test('mask text and map letters', () => {
    expect([0xf, 0xd, 0x3, 0x1, 0x0, 0x5, 0x9, 0x7].map(maskText)).toEqual(['rwx', 'r-x', 'rw-', 'r--', '---', 'r-k', 'r-u', 'rwk']);
    expect([0xf, 0x1, 0x3, 0xd, 0x5, 0x0, 0x9, 0x7].map(maskLetter).join('')).toBe('.rwxx-u?');
  });
});

describe('page ranges', () => {
  test('--pages START:COUNT and --gpa/--size', () => {
    expect(parsePageRange('0x40:16')).toEqual({ start: 0x40n, count: 16n });
    expect(parsePageRange('100:1')).toEqual({ start: 100n, count: 1n });
    expect(() => parsePageRange('0x40')).toThrow(/not START:COUNT/);
    expect(() => parsePageRange('1:0')).toThrow(/at least 1/);
    expect(() => parsePageRange('a:1')).toThrow(/not a number/);
    expect(gpaRange(0x40000n, 0x3000n)).toEqual({ start: 0x40n, count: 3n });
    expect(() => gpaRange(0x40001n, 0x1000n)).toThrow(/not page aligned/);
    expect(() => gpaRange(0x40000n, 0x1001n)).toThrow(/whole number of 4 KiB pages/);
  });

  test('planProtectCalls: at most 65536 ranges and 2^20 pages per call, order kept', () => {
    expect(planProtectCalls([{ start: 0x40n, count: 1n }])).toEqual([[{ startPage: 0x40n, pageCount: 1n }]]);
    expect(planProtectCalls([{ start: 0n, count: MAX_PAGES_PER_CALL }])).toHaveLength(1);
    const big = planProtectCalls([{ start: 0x100n, count: 2n * MAX_PAGES_PER_CALL + 5n }]);
    expect(big).toEqual([
      [{ startPage: 0x100n, pageCount: MAX_PAGES_PER_CALL }],
      [{ startPage: 0x100n + MAX_PAGES_PER_CALL, pageCount: MAX_PAGES_PER_CALL }],
      [{ startPage: 0x100n + 2n * MAX_PAGES_PER_CALL, pageCount: 5n }],
    ]);
    const many = Array.from({ length: MAX_RANGES_PER_CALL * 2 + 1 }, (_, i) => ({ start: BigInt(i * 2), count: 1n }));
    const calls = planProtectCalls(many);
    expect(calls.map((c) => c.length)).toEqual([MAX_RANGES_PER_CALL, MAX_RANGES_PER_CALL, 1]);
    expect(calls.flat().map((r) => r.startPage)).toEqual(many.map((r) => r.start));
    // A call is also closed when its pages reach the limit: a small range after a full one goes next.
    const mixed = planProtectCalls(
      [
        { start: 0n, count: MAX_PAGES_PER_CALL - 1n },
        { start: MAX_PAGES_PER_CALL * 4n, count: 3n },
      ],
      10,
      MAX_PAGES_PER_CALL,
    );
    expect(mixed).toEqual([
      [
        { startPage: 0n, pageCount: MAX_PAGES_PER_CALL - 1n },
        { startPage: MAX_PAGES_PER_CALL * 4n, pageCount: 1n },
      ],
      [{ startPage: MAX_PAGES_PER_CALL * 4n + 1n, pageCount: 2n }],
    ]);
  });

  test('--access', () => {
    expect(parseAccessMask('r,w,x')).toBe(7);
    expect(parseAccessMask('write')).toBe(2);
    expect(parseAccessMask('rx')).toBe(5);
    expect(parseAccessMask('read, execute')).toBe(5);
    expect(parseAccessMask('all')).toBe(7);
    expect(() => parseAccessMask('q')).toThrow(UsageError);
    expect(() => parseAccessMask(',')).toThrow(/selects nothing/);
    expect(accessMaskText(5)).toBe('read,execute');
  });
});

describe('outcome text', () => {
  const A = pb.HvInterceptAccessType;
  const notice = (heldBack: boolean): pb.InterceptNotice =>
    pb.InterceptNotice.fromPartial({
      interceptId: 7n,
      protectingVtl: 1,
      gpa: 0x40000n,
      accessType: A.HV_INTERCEPT_ACCESS_TYPE_WRITE,
      hvMessage: Buffer.alloc(0),
      heldBack,
    });
  const base = pb.GuestActionOutcome.fromPartial({});

  test('intercepts: entered the protecting VTL, or held back', () => {
    const entered: pb.GuestActionOutcome = {
      ...base,
      activeVtl: 1,
      intercept: notice(false),
      vtlSwitch: { fromVtl: 0, toVtl: 1, entryReason: pb.HvVtlEntryReason.HV_VTL_ENTRY_REASON_INTERRUPT },
    };
    expect(stopped(entered)).toBe(true);
    expect(interceptLines(entered, 0)).toEqual([
      "intercept 7: write at 0x0000000000040000 refused by VTL 1's protection",
      "VP 0 entered VTL 1 (entry reason INTERRUPT) with the intercept message in its SINT0; VTL 1's VtlReturn retries the access (RIP unchanged) or skips it (RIP moved)",
    ]);
    const held: pb.GuestActionOutcome = { ...base, activeVtl: 0, intercept: notice(true) };
    expect(interceptLines(held, 2)[1]).toBe(
      "held back: VTL 1's SINT0 queue is full; VP 2 stays at the instruction in VTL 0 (nothing is lost): repeat the access once VTL 1 has drained its SIM slot",
    );
    expect(outcomeText(held)).toBe("intercepted by VTL 1's protection (intercept 7, write at 0x0000000000040000), held back: SINT0 queue full; VP in VTL 0");
    expect(outcomeText({ ...base, partitionCrashed: true })).toMatch(/^the partition was stopped/);
    expect(stopped({ ...base, activeVtl: 0 })).toBe(false);
  });

  test('resumed access', () => {
    const r = (x: Partial<pb.ResumedAccess>): pb.GuestActionOutcome => ({
      ...base,
      resumedAccess: { interceptId: 3n, completed: false, skipped: false, interceptedAgain: false, data: Buffer.alloc(0), ...x },
    });
    expect(resumedLines(r({ completed: true, data: Buffer.from([0xab, 0xcd]) }), 0)).toEqual([
      'resumed access (intercept 3): retried and completed; returned 2 bytes: abcd',
    ]);
    expect(resumedLines(r({ completed: true }), 0)).toEqual(['resumed access (intercept 3): retried and completed']);
    expect(resumedLines(r({ skipped: true }), 0)[0]).toBe('resumed access (intercept 3): skipped, not retried (the higher VTL moved RIP past the instruction)');
    const again = { ...r({ interceptedAgain: true }), activeVtl: 1, intercept: notice(false) };
    expect(resumedLines(again, 0)).toEqual([
      'resumed access (intercept 3): retried and intercepted again',
      "  intercept 7: write at 0x0000000000040000 refused by VTL 1's protection",
      expect.stringMatching(/^  VP 0 entered VTL 1 with the intercept message/),
    ]);
  });

  test('monitor event line', () => {
    const e = pb.InterceptEvent.fromPartial({
      interceptId: 9n,
      vpIndex: 1,
      vtl: 0,
      protectingVtl: 2,
      accessType: A.HV_INTERCEPT_ACCESS_TYPE_EXECUTE,
      gpa: 0x5000n,
      length: 4,
      rip: 0x401000n,
      viewGeneration: 12n,
      needsReply: true,
      redelivered: true,
    });
    expect(interceptEventText(e)).toBe(
      'intercept 9  vp 1  VTL 0  execute  gpa 0x0000000000005000  len 4  rip 0x0000000000401000  by VTL 2  generation 12  needs reply, redelivered',
    );
  });
});

describe('map protections', () => {
  const partition = pb.Partition.fromPartial({ name: 'partitions/m', memoryBytes: 1n << 30n, enabledVtlSet: 0b111, vpCount: 1 });
  const range = (startPage: bigint, pageCount: bigint, mapFlags: number): pb.ProtectionRange => ({ pages: { startPage, pageCount }, mapFlags });

  test('one grid per enabled protecting VTL, default mask applied outside the ranges', () => {
    const inp = {
      partition,
      from: 0x10000n,
      nonZero: Array<boolean>(20).fill(false),
      overlays: [],
      viewGeneration: 3n,
      vtls: [0],
      protections: [
        { vtl: 1, protectionEnabled: true, defaultMapFlags: 0xf, ranges: [range(0x0n, 0x11n, 0x1), range(0x12n, 2n, 0x0), range(0x20n, 0x100n, 0xd)] },
        { vtl: 2, protectionEnabled: true, defaultMapFlags: 0x3, ranges: [range(0x13n, 1n, 0xf)] },
      ],
    };
    const text = renderMap(inp, painter(false));
    expect(text).toContain('VTL 1 protections (what VTL 1 allows lower VTLs)\n  0x0000000000010000  r.--............ xxxx\n');
    expect(text).toContain(
      'VTL 2 protections (what VTL 2 allows lower VTLs; default mask rw- (0x3) outside the ranges)\n  0x0000000000010000  www.wwwwwwwwwwww wwww\n',
    );
    expect(text).toContain('  VTL 1  0x0000000000000000-0x0000000000010fff  17 pages  r-- (0x1)');
    expect(text).toContain('  VTL 1  0x0000000000020000-0x000000000011ffff  256 pages  r-x (0xd)');
    expect(text).not.toContain('  VTL 2  0x0000000000013000'); // an unrestricted range is not listed
    expect(text).toContain('7 of 20 pages restricted by VTL 1');
    expect(text).toContain('19 of 20 pages restricted by VTL 2');
    expect(text).toMatch(/protections: \. unrestricted {2}r read only/);
    const j = mapJson(inp) as { protections: { protectingVtl: number; restrictedPages: string[]; ranges: unknown[] }[] };
    expect(j.protections[0]!.restrictedPages).toEqual([0x10000, 0x12000, 0x13000, 0x20000, 0x21000, 0x22000, 0x23000].map(String));
    expect(j.protections[0]!.ranges).toHaveLength(3);
    expect(j.protections[1]!.ranges).toEqual([{ pages: { startPage: '19', pageCount: '1' }, mapFlags: 15, mask: 'rwx' }]);
  });

  test('a VTL without EnableVtlProtection gets no grid and no legend', () => {
    const text = renderMap(
      {
        partition,
        from: 0n,
        nonZero: [false],
        overlays: [],
        viewGeneration: 1n,
        vtls: [0],
        protections: [{ vtl: 1, protectionEnabled: false, defaultMapFlags: 0xf, ranges: [] }],
      },
      painter(false),
    );
    expect(text).not.toMatch(/protections/);
  });
});
