// planBoot (src/guest/image/boot-plan.ts): the bytes a boot writes and the BSP registers, golden,
// with the multiboot_info offsets taken from the Multiboot 0.6.96 spec §3.3 (not from the code's table).
import { BootLayout, type BootPlan, GuestImageError, parseGuestImage, planBoot } from '../../src/guest';
import { buildElf, filled, kutLikeKernel, toHex, u32le, u64le } from './image-builders';

const MiB = 1n << 20n;
const writeAt = (plan: BootPlan, gpa: bigint) => {
  const w = plan.writes.find((x) => x.gpa === gpa);
  if (!w) throw new Error(`no write at 0x${gpa.toString(16)}`);
  return w;
};
const expectPlanError = (f: () => unknown, message: RegExp) => {
  expect(f).toThrow(GuestImageError);
  expect(f).toThrow(message);
};

describe('multiboot boot plan', () => {
  const image = parseGuestImage(kutLikeKernel());
  const plan = planBoot(image, { memoryBytes: 128n * MiB, cmdline: 'direct  x=1', vpCount: 2 });

  it('writes the segments, zero-fills their bss, and lists the boot data areas', () => {
    expect(plan.writes.slice(0, 2).map((w) => [w.gpa, w.data])).toEqual([
      [0x400000n, image.segments[0]!.data],
      [0x401000n, image.segments[1]!.data],
    ]);
    expect(plan.zeroFill).toEqual([{ gpa: 0x401040n, size: 0x2fc0n, what: 'segment 1 (zero-filled part)' }]);
    expect(plan.bootData.map((d) => [d.gpa, d.size])).toEqual([
      [0x7000n, 0x1000n],
      [0x8000n, 0x1000n],
      [0x9000n, 0x2000n],
    ]);
    expect(plan.apCount).toBe(1);
  });

  it('multiboot_info at 0x9500, field by field (spec §3.3 offsets)', () => {
    const mbi = writeAt(plan, 0x9500n).data;
    expect(mbi.length).toBe(88);
    expect(u32le(mbi, 0)).toBe(0x24d); // flags: mem (0) | cmdline (2) | mods (3) | mmap (6) | boot_loader_name (9)
    expect(u32le(mbi, 4)).toBe(639); // mem_lower: 0x9fc00 / 1024
    expect(u32le(mbi, 8)).toBe(128 * 1024 - 1024); // mem_upper: KiB from 1 MiB to 128 MiB
    expect(u32le(mbi, 12)).toBe(0); // boot_device (flag 1 not set)
    expect(u32le(mbi, 16)).toBe(0xa000); // cmdline
    expect(u32le(mbi, 20)).toBe(0); // mods_count
    expect(u32le(mbi, 24)).toBe(0x9580); // mods_addr
    expect(u32le(mbi, 44)).toBe(3 * 24); // mmap_length
    expect(u32le(mbi, 48)).toBe(0x9000); // mmap_addr
    expect(u32le(mbi, 64)).toBe(0x9600); // boot_loader_name
    for (const off of [28, 32, 36, 40, 52, 56, 60, 68, 72, 76, 80, 84]) expect(u32le(mbi, off)).toBe(0);
  });

  it('memory map at 0x9000: size/base/length/type entries (golden bytes)', () => {
    const mmap = writeAt(plan, 0x9000n).data;
    expect(toHex(mmap)).toBe(
      [
        '14000000' + '0000000000000000' + '00fc090000000000' + '01000000', // [0, 0x9fc00) available
        '14000000' + '00fc090000000000' + '0004060000000000' + '02000000', // [0x9fc00, 0x100000) reserved
        '14000000' + '0000100000000000' + '0000f00700000000' + '01000000', // [0x100000, 0x8000000) available
      ].join(''),
    );
    expect(plan.memoryMap).toEqual([
      { base: 0n, length: 0x9fc00n, type: 1 },
      { base: 0x9fc00n, length: 0x60400n, type: 2 },
      { base: 0x100000n, length: 0x7f00000n, type: 1 },
    ]);
  });

  it('boot loader name and command line, NUL-terminated', () => {
    expect(Buffer.from(writeAt(plan, 0x9600n).data).toString('latin1')).toBe('vsm-service\0');
    expect(Buffer.from(writeAt(plan, 0xa000n).data).toString('latin1')).toBe('direct  x=1\0');
    const qemuStyle = planBoot(image, { memoryBytes: 128n * MiB, kernelName: 'hyperv_stimer.flat', cmdline: 'direct', vpCount: 2 });
    expect(Buffer.from(writeAt(qemuStyle, 0xa000n).data).toString('latin1')).toBe('hyperv_stimer.flat direct\0');
    const none = planBoot(image, { memoryBytes: 128n * MiB, vpCount: 1 });
    expect(Array.from(writeAt(none, 0xa000n).data)).toEqual([0]);
  });

  it('GDT at 0x8000: null, flat 32-bit code 0x08, flat data 0x10', () => {
    expect(toHex(writeAt(plan, 0x8000n).data)).toBe('0000000000000000' + 'ffff0000009bcf00' + 'ffff00000093cf00');
  });

  it('BSP registers as Multiboot §3.2 says', () => {
    const flat = { base: 0n, limit: 0xffffffff, s: 1, dpl: 0, present: 1, db: 1, l: 0, g: 1 };
    expect(plan.bsp).toEqual({
      mode: 'protected32',
      rip: 0x40000cn,
      rsp: 0x8000n,
      rax: 0x2badb002n,
      rbx: 0x9500n,
      rflags: 0x2n,
      cr0: 0x11n, // PE | ET, paging off
      cr3: 0n,
      cr4: 0n,
      efer: 0n,
      gdt: { base: 0x8000n, limit: 23 },
      idt: { base: 0n, limit: 0 },
      segments: {
        cs: { selector: 0x08, type: 0xb, ...flat },
        ds: { selector: 0x10, type: 0x3, ...flat },
        es: { selector: 0x10, type: 0x3, ...flat },
        fs: { selector: 0x10, type: 0x3, ...flat },
        gs: { selector: 0x10, type: 0x3, ...flat },
        ss: { selector: 0x10, type: 0x3, ...flat },
      },
    });
  });

  it('reserved ranges are split out of the available memory and shorten mem_upper', () => {
    const p = planBoot(image, {
      memoryBytes: 128n * MiB,
      vpCount: 1,
      reserved: [
        { gpa: 0x7000000n, size: 0x100000n },
        { gpa: 0xfee00000n, size: 0x1000n },
      ],
    });
    expect(p.memoryMap).toEqual([
      { base: 0n, length: 0x9fc00n, type: 1 },
      { base: 0x9fc00n, length: 0x60400n, type: 2 },
      { base: 0x100000n, length: 0x6f00000n, type: 1 },
      { base: 0x7000000n, length: 0x100000n, type: 2 },
      { base: 0x7100000n, length: 0xf00000n, type: 1 },
      { base: 0xfee00000n, length: 0x1000n, type: 2 },
    ]);
    const mbi = writeAt(p, 0x9500n).data;
    expect(u32le(mbi, 8)).toBe((0x7000000 - 0x100000) / 1024);
    expect(u32le(mbi, 44)).toBe(6 * 24);
  });
});

describe('long64 boot plan', () => {
  const image = parseGuestImage(buildElf({ cls: 64, entry: 0x200040n, segments: [{ paddr: 0x200000n, data: filled(0x100, 0x90), memsz: 0x3000n }] }));

  it('identity page tables at 0x10000 with 2 MiB pages over 4 GiB (the LAPIC page included), GDT + TSS at 0x8000', () => {
    const plan = planBoot(image, { memoryBytes: 256n * MiB, vpCount: 1 });
    const pt = writeAt(plan, 0x10000n).data;
    expect(pt.length).toBe(6 * 4096); // PML4, PDPT, 4 PDs
    expect(u64le(pt, 0)).toBe(0x11000n | 0x23n); // PML4[0] → PDPT, P|RW|A
    for (let g = 0; g < 4; g++) expect(u64le(pt, 0x1000 + 8 * g)).toBe(BigInt(0x12000 + g * 0x1000) | 0x23n);
    expect(u64le(pt, 0x1000 + 8 * 4)).toBe(0n);
    expect(u64le(pt, 0x2000)).toBe(0xe3n); // 0 → 0, P|RW|A|D|PS
    const lapicPde = 0x2000 + 3 * 0x1000 + ((0xfee00000 - 3 * 2 ** 30) / 2 ** 21) * 8;
    expect(u64le(pt, lapicPde)).toBe(0xfee00000n | 0xe3n);
    const gdt = writeAt(plan, 0x8000n).data;
    expect(u64le(gdt, 0x08)).toBe(0x00af9b000000ffffn);
    expect(u64le(gdt, 0x10)).toBe(0x00cf93000000ffffn);
    expect(plan.bootData.map((d) => [d.gpa, d.size])).toEqual([
      [0x7000n, 0x1000n],
      [0x8000n, 0x1000n],
      [0x10000n, 0x6000n],
    ]);
    expect(plan.bsp).toMatchObject({
      mode: 'long64',
      rip: 0x200040n,
      rsp: 0x8000n,
      rflags: 0x2n,
      cr0: 0x80010033n, // PE | MP | ET | NE | WP | PG
      cr3: 0x10000n,
      cr4: 0x620n, // PAE | OSFXSR | OSXMMEXCPT
      efer: 0x500n, // LME | LMA
      gdt: { base: 0x8000n, limit: 39 },
      idt: { base: 0n, limit: 0 },
    });
    expect(plan.bsp.segments.cs).toEqual({ selector: 0x08, base: 0n, limit: 0xffffffff, type: 0xb, s: 1, dpl: 0, present: 1, db: 0, l: 1, g: 1 });
    expect(plan.bsp.segments.ss).toMatchObject({ selector: 0x10, type: 0x3, db: 1, l: 0 });
    expect(plan.bsp.segments.tr).toMatchObject({ selector: 0x18, base: 0x8080n, limit: 0x67, type: 0xb, s: 0 });
    expect(plan.memoryMap).toBeUndefined();
    expect(plan.zeroFill).toEqual([{ gpa: 0x200100n, size: 0x2f00n, what: 'segment 0 (zero-filled part)' }]);
  });

  it('maps all of a memory larger than 4 GiB', () => {
    const plan = planBoot(image, { memoryBytes: (8n << 30n) + 4096n, vpCount: 4 });
    expect(writeAt(plan, 0x10000n).data.length).toBe((2 + 9) * 4096);
    expect(plan.apCount).toBe(3);
    expectPlanError(
      () => planBoot(image, { memoryBytes: 200n << 30n, vpCount: 1 }),
      /identity map of 200 GiB needs 0xca000 bytes of page tables at 0x10000, past 0x9f000/,
    );
  });
});

describe('flat images in real and protected mode', () => {
  it('real16: CS base from the entry, 64 KiB segments, IVT-style IDT', () => {
    const img = parseGuestImage(filled(0x200, 0x90), { format: 'flat', loadGpa: 0x10000n, entry: 0x10100n, entryMode: 'real16' });
    const plan = planBoot(img, { memoryBytes: 4n * MiB, vpCount: 1 });
    expect(plan.bsp).toMatchObject({ mode: 'real16', rip: 0x100n, rsp: 0x8000n, cr0: 0x10n, idt: { base: 0n, limit: 0x3ff } });
    expect(plan.bsp.gdt).toBeUndefined();
    expect(plan.bsp.segments.cs).toEqual({ selector: 0x1000, base: 0x10000n, limit: 0xffff, type: 0xb, s: 1, dpl: 0, present: 1, db: 0, l: 0, g: 0 });
    expect(plan.bsp.segments.ds).toMatchObject({ selector: 0, base: 0n, limit: 0xffff, type: 0x3 });
    expect(plan.writes.map((w) => w.gpa)).toEqual([0x10000n]);
  });

  it('protected32 flat: the multiboot register set without EAX/EBX magic or multiboot data', () => {
    const img = parseGuestImage(filled(0x200, 0x90), { format: 'flat', loadGpa: 0x100000n, entryMode: 'protected32' });
    const plan = planBoot(img, { memoryBytes: 4n * MiB, vpCount: 1 });
    expect(plan.bsp).toMatchObject({ mode: 'protected32', rip: 0x100000n, rax: 0n, rbx: 0n, cr0: 0x11n, gdt: { base: 0x8000n, limit: 23 } });
    expect(plan.writes.map((w) => w.gpa)).toEqual([0x100000n, 0x8000n]);
    expect(plan.memoryMap).toBeUndefined();
  });
});

describe('what does not fit → GuestImageError with the numbers', () => {
  const mb = parseGuestImage(kutLikeKernel());
  it('an image larger than memory', () => {
    expectPlanError(
      () => planBoot(mb, { memoryBytes: 4n * MiB, vpCount: 1 }),
      /segment 0 \[0x400000, 0x400100\) does not fit in guest memory \[0x0, 0x400000\) \(memoryBytes 0x400000\)/,
    );
    const big = parseGuestImage(filled(0x2000, 0), { format: 'flat', loadGpa: 0xfff000n });
    expectPlanError(() => planBoot(big, { memoryBytes: 16n * MiB, vpCount: 1 }), /segment 0 \[0xfff000, 0x1001000\) does not fit/);
  });
  it('a segment on a reserved range, a reserved range on the boot data', () => {
    expectPlanError(
      () => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, reserved: [{ gpa: 0x402000n, size: 0x1000n }] }),
      /segment 1 \[0x401000, 0x404000\) overlaps reserved\[0\] \[0x402000, 0x403000\)/,
    );
    expectPlanError(
      () => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, reserved: [{ gpa: 0x9800n, size: 0x10n }] }),
      /reserved\[0\] \[0x9800, 0x9810\) overlaps the boot data \(multiboot information, memory map and command line\) at \[0x9000, 0xb000\)/,
    );
  });
  it('an image on the boot data', () => {
    const low = parseGuestImage(filled(0x100, 0x90), { format: 'flat', loadGpa: 0x7c00n });
    expectPlanError(
      () => planBoot(low, { memoryBytes: 16n * MiB, vpCount: 1 }),
      /image segment 0 \[0x7c00, 0x7d00\) overlaps the boot data \(boot stack\) at \[0x7000, 0x8000\); load the image elsewhere/,
    );
    const onTables = parseGuestImage(filled(0x100, 0x90), { format: 'flat', loadGpa: 0x12000n });
    expectPlanError(
      () => planBoot(onTables, { memoryBytes: 16n * MiB, vpCount: 1 }),
      /overlaps the boot data \(identity page tables \(4 GiB, 2 MiB pages\)\) at \[0x10000, 0x16000\)/,
    );
  });
  it('bad options', () => {
    expectPlanError(() => planBoot(mb, { memoryBytes: 64n * MiB + 1n, vpCount: 1 }), /memoryBytes must be a positive multiple of 4 KiB/);
    expectPlanError(() => planBoot(mb, { memoryBytes: 0n, vpCount: 1 }), /memoryBytes must be a positive multiple of 4 KiB/);
    expectPlanError(() => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 0 }), /vpCount must be an integer 1..255; got 0/);
    expectPlanError(() => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, reserved: [{ gpa: 0x1000n, size: 0n }] }), /reserved\[0\] must be/);
    expectPlanError(() => planBoot(mb, { memoryBytes: 0xff000000n, vpCount: 1 }), /multiboot: memoryBytes 0xff000000 must be between 1 MiB and 0xfec00000/);
    expectPlanError(
      () => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, cmdline: 'x'.repeat(4096) }),
      /command line is 4096 bytes \(UTF-8\); at most 4095 fit at 0xa000/,
    );
    expectPlanError(() => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, cmdline: 'a\0b' }), /NUL/);
    const many = Array.from({ length: 30 }, (_, i) => ({ gpa: 0x1000000n + BigInt(i) * 0x10000n, size: 0x1000n }));
    expectPlanError(
      () => planBoot(mb, { memoryBytes: 64n * MiB, vpCount: 1, reserved: many }),
      /memory map has 63 entries \(1512 bytes\); at most 53 fit: too many reserved ranges/,
    );
  });
  it('the layout constants match the documented GPAs', () => {
    expect(BootLayout).toMatchObject({
      STACK_TOP: 0x8000n,
      GDT: 0x8000n,
      MB_MMAP: 0x9000n,
      MB_INFO: 0x9500n,
      MB_MODS: 0x9580n,
      MB_LOADER_NAME: 0x9600n,
      MB_CMDLINE: 0xa000n,
      PAGE_TABLES: 0x10000n,
    });
  });
});
