// Pure parts of the KVM enforcement of VTL protections: the memslot layout of a view (effective
// masks of the higher VTLs → read-only slots and holes, coalesced, 1 GiB cuts, overlays on top,
// budget), and the x86 decoding that finds the faulting instruction of a refused access (lengths
// checked against GNU as; page walks over small page tables).
import fc from 'fast-check';
import { ProtectionMap, type Vtl } from '@vsm/core';
import { type KvmRegs, type KvmSegment, type KvmSregs, zeroRegs } from '@vsm/platform-kvm/kvm';
import { type RestrictedRun, type ViewSlot, accessOfMask, restrictedRuns, viewSlots } from '@vsm/platform-kvm/platform/view-layout';
import { cpuMode, decodeInsn, instructionAtRip, instructionBeforeRip, translate } from '@vsm/platform-kvm/platform/x86';

const GIB_PAGES = 262144;

describe('view layout', () => {
  test('masks: no R → hole, R without W → read-only, RW → read/write (X bits do not matter)', () => {
    expect([0x0, 0x1, 0x5, 0xd, 0x3, 0xf, 0x7].map(accessOfMask)).toEqual(['none', 'ro', 'ro', 'ro', 'rw', 'rw', 'rw']);
  });

  test('the effective access is the AND over the protecting VTLs above the view; the default mask applies outside ranges', () => {
    const v1 = new ProtectionMap(0xf);
    v1.set(10, 5, 0x1); // 10..14 read-only
    v1.set(100, 1, 0x0); // hole
    const v2 = new ProtectionMap(0xf);
    v2.set(12, 10, 0x0); // 12..21 hole
    v2.set(30, 2, 0x5);
    const maps = [null, v1, v2];
    expect(restrictedRuns(maps, 0, 1000)).toEqual([
      { start: 10, end: 12, access: 'ro' },
      { start: 12, end: 22, access: 'none' },
      { start: 30, end: 32, access: 'ro' },
      { start: 100, end: 101, access: 'none' },
    ]);
    // VTL1's view: only VTL2 protects it.
    expect(restrictedRuns(maps, 1, 1000)).toEqual([
      { start: 12, end: 22, access: 'none' },
      { start: 30, end: 32, access: 'ro' },
    ]);
    expect(restrictedRuns(maps, 2, 1000)).toEqual([]);
    expect(restrictedRuns([null, null, null], 0, 1000)).toEqual([]);
    // A read-only default applies everywhere outside explicit ranges (the core refuses such defaults, the layout copes).
    const ro = new ProtectionMap(0x1);
    ro.set(5, 5, 0xf);
    expect(restrictedRuns([null, ro, null], 0, 20)).toEqual([
      { start: 0, end: 5, access: 'ro' },
      { start: 10, end: 20, access: 'ro' },
    ]);
    // The limit stops early.
    const many = new ProtectionMap(0xf);
    for (let i = 0; i < 100; i++) many.set(2 * i, 1, 0x1);
    expect(restrictedRuns([null, many, null], 0, 1000, 50)).toBeUndefined();
    expect(restrictedRuns([null, many, null], 0, 1000)).toHaveLength(100);
  });

  test('slots: uniform ranges of any size cost one slot per GiB; overlays sit on top, even over holes', () => {
    // 4 GiB of RAM, 1 GiB slots; pages [0x100, 0x100 + 3 GiB) read-only; an overlay inside it and one in a hole.
    const pages = 4 * GIB_PAGES;
    const runs: RestrictedRun[] = [
      { start: 0x100, end: 0x100 + 3 * GIB_PAGES, access: 'ro' },
      { start: 3 * GIB_PAGES + 0x200, end: 3 * GIB_PAGES + 0x300, access: 'none' },
    ];
    const slots = viewSlots(pages, GIB_PAGES, runs, [
      { gpfn: 0x180, offset: 0x3000, readOnly: false },
      { gpfn: 3 * GIB_PAGES + 0x250, offset: 0x4000, readOnly: true },
    ])!;
    const show = (s: ViewSlot) => `${s.backing}:${(s.gpa >> 12n).toString(16)}+${(s.size / 4096).toString(16)}${s.readonly ? ':ro' : ''}`;
    expect(slots.map(show)).toEqual([
      'ram:0+100',
      'ram:100+80:ro',
      'overlay:180+1',
      'ram:181+3fe7f:ro', // first GiB: cut at the overlay and at 1 GiB
      'ram:40000+40000:ro',
      'ram:80000+40000:ro',
      'ram:c0000+100:ro',
      'ram:c0100+100',
      /* hole c0200..c0300, except the overlay */ 'overlay:c0250+1:ro',
      'ram:c0300+3fd00',
    ]);
    expect(slots.find((s) => s.backing === 'overlay' && s.readonly)?.offset).toBe(0x4000);
    // Coverage: the slots are sorted, disjoint and each RAM slot maps its own GPA.
    for (let i = 1; i < slots.length; i++) expect(slots[i]!.gpa).toBeGreaterThanOrEqual(slots[i - 1]!.gpa + BigInt(slots[i - 1]!.size));
    for (const s of slots) if (s.backing === 'ram') expect(BigInt(s.offset)).toBe(s.gpa);
    expect(viewSlots(pages, GIB_PAGES, runs, [], 5)).toBeUndefined(); // over budget
  });

  test('property: every RAM page gets the access of its run (slots vs a per-page model)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ vtl: fc.constantFrom(1, 2), start: fc.nat(300), count: fc.integer({ min: 1, max: 40 }), mask: fc.constantFrom(0, 1, 3, 5, 0xf) }),
          { maxLength: 12 },
        ),
        fc.uniqueArray(fc.nat(339), { maxLength: 4 }),
        fc.constantFrom<Vtl>(0, 1),
        (sets, overlayPages, vtl) => {
          const pages = 340;
          const maps = [null, new ProtectionMap(0xf), new ProtectionMap(0xf)];
          for (const s of sets) maps[s.vtl]!.set(s.start, Math.min(s.count, pages - s.start), s.mask);
          const ovs = [...overlayPages].sort((a, b) => a - b).map((g) => ({ gpfn: g, offset: g * 4096, readOnly: g % 2 === 0 }));
          const slots = viewSlots(pages, 64, restrictedRuns(maps, vtl, pages)!, ovs)!;
          for (let g = 0; g < pages; g++) {
            const s = slots.find((x) => BigInt(g) * 4096n >= x.gpa && BigInt(g) * 4096n < x.gpa + BigInt(x.size));
            const o = ovs.find((x) => x.gpfn === g);
            if (o) {
              expect(s).toMatchObject({ backing: 'overlay', readonly: o.readOnly });
              continue;
            }
            let mask = 0xf;
            for (let m = vtl + 1; m <= 2; m++) mask &= maps[m]!.get(g);
            const want = accessOfMask(mask);
            expect(s ? (s.readonly ? 'ro' : 'rw') : 'none').toBe(want);
            if (s) expect(Math.floor(Number(s.gpa) / 4096 / 64)).toBe(Math.floor((Number(s.gpa) + s.size - 1) / 4096 / 64)); // cut at slot boundaries
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

// ---- x86 ------------------------------------------------------------------------------------------

/** Encodings from GNU as 2.x (objdump -d -M intel), with the store size where the instruction is a plain store. */
const GOLDEN64: [string, string, number][] = [
  ['488907', 'mov [rdi], rax', 8],
  ['8907', 'mov [rdi], eax', 4],
  ['668907', 'mov [rdi], ax', 2],
  ['8807', 'mov [rdi], al', 1],
  ['4d890c24', 'mov [r12], r9', 8],
  ['4889442408', 'mov [rsp+8], rax', 8],
  ['48895df0', 'mov [rbp-16], rbx', 8],
  ['48890d00100000', 'mov [rip+0x1000], rcx', 8],
  ['89949878563412', 'mov [rax+rbx*4+0x12345678], edx', 4],
  ['c6075a', 'mov byte [rdi], 0x5a', 1],
  ['c7470478563412', 'mov dword [rdi+4], 0x12345678', 4],
  ['48c707ffffffff', 'mov qword [rdi], -1', 8],
  ['66c7073412', 'mov word [rdi], 0x1234', 2],
  ['48a38877665544332211', 'movabs [0x1122334455667788], rax', 8],
  ['a28877665544332211', 'movabs [0x1122334455667788], al', 1],
  ['64488918', 'mov fs:[rax], rbx', 8],
  ['6548890c2510000000', 'mov gs:[0x10], rcx', 8],
  ['0f1107', 'movups [rdi], xmm0', 16],
  ['f30f7f0f', 'movdqu [rdi], xmm1', 16],
  ['660f7f5740', 'movdqa [rdi+0x40], xmm2', 16],
  ['f30f111f', 'movss [rdi], xmm3', 4],
  ['f20f1127', 'movsd [rdi], xmm4', 8],
  ['660fd62f', 'movq [rdi], xmm5', 8],
  ['480fc307', 'movnti [rdi], rax', 8],
  ['0f9407', 'sete byte [rdi]', 1],
  ['8c07', 'mov [rdi], es', 2],
  ['480107', 'add [rdi], rax', 0],
  ['488b07', 'mov rax, [rdi]', 0],
  ['0fb606', 'movzx eax, byte [rsi]', 0],
  ['4c8b26', 'mov r12, [rsi]', 0],
  ['488d4708', 'lea rax, [rdi+8]', 0],
  ['aa', 'stosb', 0],
  ['50', 'push rax', 0],
  ['ff10', 'call [rax]', 0],
  ['488707', 'xchg [rdi], rax', 0],
  ['90', 'nop', 0],
];
const GOLDEN32: [string, string, number][] = [
  ['8907', 'mov [edi], eax', 4],
  ['668945fc', 'mov [ebp-4], ax', 2],
  ['c60701', 'mov byte [edi], 1', 1],
  ['a378563412', 'mov [0x12345678], eax', 4],
  ['a200100000', 'mov [0x1000], al', 1],
  ['26891c4f', 'mov es:[edi+ecx*2], ebx', 4],
];

const seg = (o: Partial<KvmSegment> = {}): KvmSegment => ({
  base: 0n,
  limit: 0xffffffff,
  selector: 0x10,
  type: 3,
  present: 1,
  dpl: 0,
  db: 1,
  s: 1,
  l: 0,
  g: 1,
  avl: 0,
  unusable: 0,
  ...o,
});
const regs = (o: Partial<KvmRegs> = {}): KvmRegs => zeroRegs(o);

/** Long mode with 4-level paging in a small "RAM": CR3 at 0x1000, code page mapped at VA `codeVa` → GPA 0x5000, data page VA 0x7fff_0000_0000 → GPA 0x6000. */
function longMode() {
  const ramBytes = Buffer.alloc(0x10000);
  const w = (gpa: number, v: bigint) => ramBytes.writeBigUInt64LE(v, gpa);
  const codeVa = 0xffff_8000_0040_1000n;
  const map = (va: bigint, gpa: bigint, tables: number[]) => {
    const idx = [39n, 30n, 21n, 12n].map((s) => Number((va >> s) & 0x1ffn));
    w(0x1000 + idx[0]! * 8, BigInt(tables[0]!) | 3n);
    w(tables[0]! + idx[1]! * 8, BigInt(tables[1]!) | 3n);
    w(tables[1]! + idx[2]! * 8, BigInt(tables[2]!) | 3n);
    w(tables[2]! + idx[3]! * 8, gpa | 3n);
  };
  map(codeVa, 0x5000n, [0x2000, 0x3000, 0x4000]);
  map(0x7fff_0000_0000n, 0x6000n, [0x8000, 0x9000, 0xa000]);
  const sregs = {
    cs: seg({ selector: 8, type: 0xb, l: 1, db: 0 }),
    ds: seg(),
    es: seg(),
    fs: seg({ base: 0x100n }),
    gs: seg(),
    ss: seg(),
    tr: seg(),
    ldt: seg(),
    gdt: { base: 0n, limit: 0 },
    idt: { base: 0n, limit: 0 },
    cr0: 0x8005_0033n,
    cr2: 0n,
    cr3: 0x1000n,
    cr4: 0x6a0n,
    cr8: 0n,
    efer: 0xd00n | 0x500n,
    apicBase: 0n,
    interruptBitmap: [0n, 0n, 0n, 0n],
  } as unknown as KvmSregs;
  const read = (gpa: bigint, n: number) =>
    gpa + BigInt(n) <= BigInt(ramBytes.length) ? Buffer.from(ramBytes.subarray(Number(gpa), Number(gpa) + n)) : undefined;
  return { ramBytes, codeVa, sregs, read };
}

describe('x86 decoding', () => {
  test.each(GOLDEN64)('64-bit %s (%s): length and store size', (hex, _what, store) => {
    const b = Buffer.from(hex, 'hex');
    const d = decodeInsn(Buffer.concat([b, Buffer.from('cccccccccccccccccccccccccccc', 'hex')]), 64)!;
    expect(d.length).toBe(b.length);
    expect(d.pureStore ? d.storeSize : 0).toBe(store);
  });
  test.each(GOLDEN32)('32-bit %s (%s): length and store size', (hex, _what, store) => {
    const b = Buffer.from(hex, 'hex');
    const d = decodeInsn(Buffer.concat([b, Buffer.alloc(8, 0xcc)]), 32)!;
    expect(d.length).toBe(b.length);
    expect(d.storeSize).toBe(store);
  });
  test('what it does not decode: VEX, truncated bytes, 16-bit code', () => {
    expect(decodeInsn(Buffer.from('c5f87f07', 'hex'), 64)).toBeUndefined(); // vmovdqa [rdi], xmm0 (VEX)
    expect(decodeInsn(Buffer.from('48c707ff', 'hex'), 64)).toBeUndefined();
    expect(decodeInsn(Buffer.from('8907', 'hex'), 16)).toBeUndefined();
  });

  test('page walk: 4-level long mode, 2 MiB pages, no paging; missing levels give undefined', () => {
    const { codeVa, sregs, read, ramBytes } = longMode();
    expect(translate(sregs, codeVa + 0x123n, read)).toBe(0x5123n);
    expect(translate(sregs, 0x7fff_0000_0010n, read)).toBe(0x6010n);
    expect(translate(sregs, 0x1234_5678n, read)).toBeUndefined();
    // A 2 MiB page in the PD of the code mapping.
    ramBytes.writeBigUInt64LE(0x20_0000n | 0x83n, 0x3000 + 8 * 3); // PD[3] of the code mapping (the PD at 0x3000): a 2 MiB page at 0x200000
    const pdIndex = 3n;
    const va = (codeVa & ~0x3fff_ffffn) | (pdIndex << 21n) | 0x1_2345n;
    expect(translate(sregs, va, read)).toBe(0x20_0000n + 0x1_2345n);
    expect(translate({ ...sregs, cr0: 0x11n }, 0x1_2345_6789n, read)).toBe(0x2345_6789n);
    expect(cpuMode(sregs)).toBe(64);
  });

  test('the store before RIP: decoded back from RIP, checked against the faulting GPA (MMIO write exits come with RIP past the instruction)', () => {
    const { ramBytes, codeVa, sregs, read } = longMode();
    // movabs rax, imm64 ; mov [rdi], rax ; mov fs:[rax], rbx (FS base 0x100) ; hlt
    const code = Buffer.from('48b8' + '0800ffff7f000000' + '488907' + '64488918' + 'f4', 'hex');
    code.copy(ramBytes, 0x5000 + 0x20);
    const start = codeVa + 0x20n + 10n;
    const r = regs({ rdi: 0x7fff_0000_0008n, rax: 0x7fff_0000_0000n - 0x100n + 0x18n });
    const insn = instructionBeforeRip(start + 3n, 0x6008n, 8, r, sregs, read)!;
    expect(insn).toMatchObject({ start, end: start + 3n, length: 3 });
    expect(insn.bytes.subarray(0, 3).toString('hex')).toBe('488907');
    expect(insn.bytes.length).toBe(16);
    // `89 07` (mov [rdi], eax) also decodes to end there, but stores 4 bytes: not it.
    expect(instructionBeforeRip(start + 3n, 0x6008n, 8, r, sregs, read)?.length).toBe(3);
    // A 4-byte write there: the 2-byte `89 07` is the shortest candidate that fits.
    expect(instructionBeforeRip(start + 3n, 0x6008n, 4, r, sregs, read)?.length).toBe(2);
    // The wrong GPA: no candidate.
    expect(instructionBeforeRip(start + 3n, 0x6010n, 8, r, sregs, read)).toBeUndefined();
    // The FS-relative store: the segment base counts.
    const fsStart = start + 3n;
    expect(instructionBeforeRip(fsStart + 4n, 0x6018n, 8, r, sregs, read)).toMatchObject({ start: fsStart, length: 4 });
    // A read exits before the instruction: decoded at RIP.
    expect(instructionAtRip(start, sregs, read)).toMatchObject({ start, end: start + 3n, length: 3 });
  });
});
