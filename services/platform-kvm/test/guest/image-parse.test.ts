// Guest image loaders (src/guest/image): flat, ELF64 and multiboot v1 images built by hand in the
// test, their segments/entry/mode, and every kind of malformed input ending in a GuestImageError.
import fc from 'fast-check';
import { GuestImageError, type GuestImage, parseGuestImage } from '../../src/guest';
import { buildElf, concat, filled, kutLikeKernel, multibootHeader } from './image-builders';

const expectImageError = (f: () => unknown, message: RegExp, field?: string) => {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(GuestImageError);
  expect((caught as Error).message).toMatch(message);
  if (field !== undefined) expect((caught as GuestImageError).field).toBe(field);
};

describe('multiboot v1 images', () => {
  it('loads a kvm-unit-tests-like ELF32 kernel by p_paddr, in 32-bit protected mode', () => {
    const bytes = kutLikeKernel();
    const img = parseGuestImage(bytes);
    expect(img.format).toBe('multiboot');
    expect(img.entryMode).toBe('protected32');
    expect(img.entry).toBe(0x40000cn);
    expect(img.segments.map((s) => [s.gpa, s.data.length, s.memSize])).toEqual([
      [0x400000n, 0x100, 0x100n],
      [0x401000n, 0x40, 0x3000n],
    ]);
    // the text segment's file bytes start with the multiboot header, at file offset 128 (after ehdr + 2 phdrs)
    expect(img.multiboot).toMatchObject({ offset: 128, flags: 0, loadedAs: 'elf32', aoutKludge: false, memoryInfo: false });
    expect(Array.from(img.segments[0]!.data.subarray(0, 4))).toEqual([0x02, 0xb0, 0xad, 0x1b]);
    expect(img.segments[1]!.data.every((b) => b === 0xaa)).toBe(true);
    expect(parseGuestImage(bytes, { format: 'multiboot' })).toEqual(img);
  });

  it('honours the a.out-kludge address fields when flags bit 16 is set (file bytes from header_addr - load_addr before the header)', () => {
    // header at file offset 0x20; header_addr − load_addr = 0x20 → the file loads from offset 0 at load_addr
    const flags = (1 << 16) | (1 << 1);
    const hdr = multibootHeader(flags, { headerAddr: 0x100020, loadAddr: 0x100000, loadEndAddr: 0x100080, bssEndAddr: 0x102000, entryAddr: 0x100040 });
    const bytes = concat(filled(0x20, 0x11), hdr, filled(0x80, 0x22));
    const img = parseGuestImage(bytes);
    expect(img.format).toBe('multiboot');
    expect(img.entry).toBe(0x100040n);
    expect(img.segments).toHaveLength(1);
    expect(img.segments[0]!.gpa).toBe(0x100000n);
    expect(img.segments[0]!.memSize).toBe(0x2000n);
    expect(Array.from(img.segments[0]!.data)).toEqual(Array.from(bytes.subarray(0, 0x80)));
    expect(img.multiboot).toMatchObject({
      offset: 0x20,
      aoutKludge: true,
      memoryInfo: true,
      loadedAs: 'aout-kludge',
      headerAddr: 0x100020,
      loadAddr: 0x100000,
      loadEndAddr: 0x100080,
      bssEndAddr: 0x102000,
      entryAddr: 0x100040,
    });
  });

  it('a.out kludge: load_end_addr 0 loads to the end of the file, bss_end_addr 0 adds no bss; a text offset inside the file skips the bytes before it', () => {
    const hdr = multibootHeader(1 << 16, { headerAddr: 0x200000, loadAddr: 0x200000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x200010 });
    const bytes = concat(filled(0x40, 0x33), hdr, filled(0x30, 0x44)); // header at 0x40 = load_addr → text offset 0x40
    const img = parseGuestImage(bytes);
    expect(img.segments[0]!.gpa).toBe(0x200000n);
    expect(img.segments[0]!.data.length).toBe(bytes.length - 0x40);
    expect(img.segments[0]!.memSize).toBe(BigInt(bytes.length - 0x40));
    expect(img.segments[0]!.data[0]).toBe(0x02);
  });

  it('the a.out kludge wins over the ELF program headers (as QEMU)', () => {
    const elf = buildElf({ cls: 32, entry: 0x400000n, segments: [{ paddr: 0x400000n, data: filled(0x200, 0x90) }] });
    const hdr = multibootHeader(1 << 16, { headerAddr: 0x300080, loadAddr: 0x300000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x300080 });
    elf.set(hdr, 0x80);
    const img = parseGuestImage(elf);
    expect(img.multiboot?.loadedAs).toBe('aout-kludge');
    expect(img.segments[0]!.gpa).toBe(0x300000n);
    expect(img.segments[0]!.data.length).toBe(elf.length);
  });

  it('a multiboot header wins over ELF64 detection, and an ELF64 multiboot image without the kludge is refused (as QEMU)', () => {
    const text = concat(multibootHeader(0), filled(0x40, 0x90));
    const elf64 = buildElf({ cls: 64, entry: 0x200000n, segments: [{ paddr: 0x200000n, data: text }] });
    expectImageError(() => parseGuestImage(elf64), /ELF64 .*QEMU refuses it too/, 'EI_CLASS');
    // asked for explicitly, the same bytes load as ELF64
    expect(parseGuestImage(elf64, { format: 'elf64' })).toMatchObject({ format: 'elf64', entryMode: 'long64', entry: 0x200000n });
  });

  it('skips a magic whose checksum is wrong and uses a later valid header (as QEMU)', () => {
    const bytes = concat(
      multibootHeader(0, undefined, 0x12345678),
      multibootHeader(1 << 16, { headerAddr: 0x10000c, loadAddr: 0x100000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x100000 }),
    );
    const img = parseGuestImage(bytes);
    expect(img.multiboot?.offset).toBe(12);
  });
});

describe('ELF64 images', () => {
  it('loads PT_LOAD segments by p_paddr, sorted, zero-filled to p_memsz, in long mode', () => {
    const bytes = buildElf({
      cls: 64,
      entry: 0x200010n,
      segments: [
        { paddr: 0x300000n, data: filled(0x20, 0xbb), memsz: 0x1000n },
        { paddr: 0x200000n, data: filled(0x80, 0x90) },
        { paddr: 0x500000n, data: new Uint8Array(0), memsz: 0n }, // empty: skipped
        { paddr: 0x600000n, data: filled(8, 1), type: 4 }, // PT_NOTE: not loaded
      ],
    });
    const img: GuestImage = parseGuestImage(bytes);
    expect(img.format).toBe('elf64');
    expect(img.entryMode).toBe('long64');
    expect(img.entry).toBe(0x200010n);
    expect(img.multiboot).toBeUndefined();
    expect(img.segments.map((s) => [s.gpa, s.data.length, s.memSize])).toEqual([
      [0x200000n, 0x80, 0x80n],
      [0x300000n, 0x20, 0x1000n],
    ]);
  });

  it('moves e_entry from the virtual to the physical address of its segment (a kernel linked high)', () => {
    const bytes = buildElf({ cls: 64, entry: 0xffffffff80001000n, segments: [{ paddr: 0x1000000n, vaddr: 0xffffffff80000000n, data: filled(0x2000, 0x90) }] });
    expect(parseGuestImage(bytes).entry).toBe(0x1001000n);
  });
});

describe('flat binaries', () => {
  it('need format flat and loadGpa; entry defaults to loadGpa and mode to long64', () => {
    const bytes = filled(0x30, 0xf4);
    expect(parseGuestImage(bytes, { format: 'flat', loadGpa: 0x100000n })).toEqual({
      format: 'flat',
      segments: [{ gpa: 0x100000n, data: bytes, memSize: 0x30n }],
      entry: 0x100000n,
      entryMode: 'long64',
    });
    expect(parseGuestImage(bytes, { format: 'flat', loadGpa: 0x7c00n, entry: 0x7c10n, entryMode: 'real16' })).toMatchObject({
      entry: 0x7c10n,
      entryMode: 'real16',
    });
    expectImageError(() => parseGuestImage(bytes, { format: 'flat' }), /needs loadGpa/, 'loadGpa');
    expectImageError(() => parseGuestImage(bytes), /cannot detect the image format.*format 'flat'/);
    expectImageError(
      () => parseGuestImage(bytes, { format: 'flat', loadGpa: 0x100000n, entry: 0x100000n, entryMode: 'real16' }),
      /not reachable in real16/,
      'entry',
    );
    expectImageError(() => parseGuestImage(bytes, { loadGpa: 0x1000n }), /apply to format 'flat' only/);
    expectImageError(() => parseGuestImage(bytes, { format: 'flat', loadGpa: 0x1000n, entryMode: 'vm86' as never }), /unknown entryMode/, 'entryMode');
  });
});

describe('malformed input → GuestImageError naming the field and offset', () => {
  const good64 = () => buildElf({ cls: 64, entry: 0x200000n, segments: [{ paddr: 0x200000n, data: filled(0x40, 0x90) }] });

  it('empty file', () => {
    for (const format of ['auto', 'flat', 'elf64', 'multiboot'] as const) {
      expectImageError(() => parseGuestImage(new Uint8Array(0), format === 'flat' ? { format, loadGpa: 0n } : { format }), /empty/);
    }
  });

  it('truncated ELF identification and header', () => {
    expectImageError(() => parseGuestImage(good64().subarray(0, 10), { format: 'elf64' }), /e_ident needs 16 bytes; the image has 10/, 'e_ident');
    expectImageError(() => parseGuestImage(good64().subarray(0, 40), { format: 'elf64' }), /Elf64_Ehdr at offset 0x0 needs 64 bytes; the image has 40/);
    expectImageError(() => parseGuestImage(good64().subarray(0, 40)), /neither multiboot nor ELF64|Elf64_Ehdr/);
  });

  it('program header table past the end of the file', () => {
    const b = good64();
    expectImageError(
      () => parseGuestImage(b.subarray(0, 64 + 30)),
      /program header table \(e_phoff 0x40, 1 × 56 bytes\) ends at 0x78, past the end of the image \(0x5e bytes\)/,
      'e_phoff',
    );
    const far = good64();
    new DataView(far.buffer).setBigUint64(32, 0xffff_ffff_ffff_fff0n, true); // e_phoff near 2^64
    expectImageError(() => parseGuestImage(far), /e_phoff 0xfffffffffffffff0, 1 × 56 bytes\) ends at 0x10000000000000028, past the end/, 'e_phoff');
  });

  it('segment file bytes past the end of the file', () => {
    const b = buildElf({ cls: 64, entry: 0x200000n, segments: [{ paddr: 0x200000n, data: filled(0x40, 0x90) }] });
    expectImageError(
      () => parseGuestImage(b.subarray(0, b.length - 1)),
      /program header 0 \(PT_LOAD at file offset 0x40\).*p_offset 0x80, \+p_filesz 0x40\) end at 0xc0, past the end of the image \(0xbf bytes\)/,
      'p_offset',
    );
  });

  it('p_filesz larger than p_memsz', () => {
    const b = buildElf({ cls: 64, entry: 0x200000n, segments: [{ paddr: 0x200000n, data: filled(0x40, 0x90), memsz: 0x20n }] });
    expectImageError(() => parseGuestImage(b), /p_filesz 0x40 is larger than p_memsz 0x20/, 'p_filesz');
  });

  it('wrong class, machine, type, version, endianness, phentsize, phnum', () => {
    expectImageError(
      () => parseGuestImage(kutLikeKernel(), { format: 'elf64' }),
      /EI_CLASS \(offset 0x4\) is 1 \(ELFCLASS32\); expected 2 \(ELFCLASS64\)/,
      'EI_CLASS',
    );
    expectImageError(
      () => parseGuestImage(buildElf({ cls: 64, machine: 3, entry: 0n, segments: [{ paddr: 0n, data: filled(4, 0) }] })),
      /e_machine \(offset 0x12\) is 3; an ELF64 image must be 62 \(EM_X86_64\)/,
      'e_machine',
    );
    expectImageError(
      () => parseGuestImage(buildElf({ cls: 64, type: 3, entry: 0n, segments: [{ paddr: 0n, data: filled(4, 0) }] })),
      /e_type \(offset 0x10\) is 3 \(ET_DYN\)/,
      'e_type',
    );
    const mb32 = kutLikeKernel();
    mb32[18] = 62; // e_machine EM_X86_64 in an ELF32 multiboot kernel
    expectImageError(() => parseGuestImage(mb32), /an ELF32 image must be 3 \(EM_386\)/, 'e_machine');
    const be = good64();
    be[5] = 2;
    expectImageError(() => parseGuestImage(be), /EI_DATA \(offset 0x5\) is 2/, 'EI_DATA');
    const ver = good64();
    ver[20] = 7;
    expectImageError(() => parseGuestImage(ver), /e_version \(offset 0x14\) is 7/, 'e_version');
    expectImageError(
      () => parseGuestImage(buildElf({ cls: 64, phentsize: 40, entry: 0n, segments: [{ paddr: 0n, data: filled(4, 0) }] })),
      /e_phentsize \(offset 0x36\) is 40; an Elf64_Phdr is 56 bytes/,
      'e_phentsize',
    );
    expectImageError(() => parseGuestImage(buildElf({ cls: 64, phnum: 0, entry: 0n, segments: [{ paddr: 0n, data: filled(4, 0) }] })), /e_phnum 0/, 'e_phnum');
    expectImageError(
      () => parseGuestImage(buildElf({ cls: 64, phnum: 0xffff, entry: 0n, segments: [{ paddr: 0n, data: filled(4, 0) }] })),
      /PN_XNUM/,
      'e_phnum',
    );
  });

  it('no PT_LOAD segment', () => {
    const b = buildElf({
      cls: 64,
      entry: 0n,
      segments: [
        { paddr: 0x1000n, data: filled(4, 0), type: 4 },
        { paddr: 0x2000n, data: new Uint8Array(0), memsz: 0n },
      ],
    });
    expectImageError(() => parseGuestImage(b), /no PT_LOAD segment with p_memsz > 0 among its 2 program headers/, 'p_type');
  });

  it('overlapping PT_LOAD segments', () => {
    const b = buildElf({
      cls: 64,
      entry: 0x200000n,
      segments: [
        { paddr: 0x200000n, data: filled(0x40, 0), memsz: 0x2000n },
        { paddr: 0x201000n, data: filled(0x40, 0) },
      ],
    });
    expectImageError(
      () => parseGuestImage(b),
      /PT_LOAD segments overlap: program header 0 \[0x200000, 0x202000\) and program header 1 \[0x201000, 0x201040\)/,
      'p_paddr',
    );
  });

  it('entry outside every loaded segment', () => {
    const b = buildElf({ cls: 64, entry: 0x900000n, segments: [{ paddr: 0x200000n, data: filled(0x40, 0) }] });
    expectImageError(() => parseGuestImage(b), /e_entry 0x900000 is not inside any loaded segment \(\[0x200000, 0x200040\)\)/, 'e_entry');
  });

  it('multiboot: a segment beyond 4 GiB', () => {
    const text = concat(multibootHeader(0), filled(0x20, 0x90));
    const b = buildElf({ cls: 32, entry: 0xfffff000n, segments: [{ paddr: 0xfffff000n, data: text, memsz: 0x2000n }] });
    expectImageError(
      () => parseGuestImage(b),
      /p_paddr 0xfffff000 \+ p_memsz 0x2000 ends at 0x100001000, beyond the 0x100000000 limit of an ELF32 image/,
      'p_paddr',
    );
    const aout = concat(
      multibootHeader(1 << 16, { headerAddr: 0xfffffff0, loadAddr: 0xfffffff0, loadEndAddr: 0, bssEndAddr: 0xffffffff, entryAddr: 0xfffffff0 }),
      filled(0x40, 0),
    );
    expectImageError(() => parseGuestImage(aout), /bss_end_addr 0xffffffff is below the end of the loaded bytes/);
  });

  it('multiboot: bad checksum, unknown requirement flags, a.out-kludge field errors', () => {
    const bad = kutLikeKernel({ checksum: 0xdeadbeef });
    expectImageError(
      () => parseGuestImage(bad, { format: 'multiboot' }),
      /magic 0x1badb002 at offset 0x80 has flags 0x0 and checksum 0xdeadbeef: magic \+ flags \+ checksum is 0xfa5b6ef1, not 0/,
      'magic',
    );
    expectImageError(() => parseGuestImage(bad), /an ELF32 image .*checksum 0xdeadbeef/);
    expectImageError(() => parseGuestImage(filled(64, 0), { format: 'multiboot' }), /no multiboot header .* in the first 64 bytes/, 'magic');
    expectImageError(() => parseGuestImage(kutLikeKernel({ flags: 1 << 3 })), /requirement bits 0x8 \(bits 0-15\) this loader does not know/, 'flags');
    const k = (a: { headerAddr: number; loadAddr: number; loadEndAddr: number; bssEndAddr: number; entryAddr: number }) =>
      concat(multibootHeader(1 << 16, a), filled(0x40, 0));
    expectImageError(
      () => parseGuestImage(k({ headerAddr: 0x1000, loadAddr: 0x2000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x2000 })),
      /header_addr 0x1000 is below load_addr 0x2000/,
      'header_addr',
    );
    expectImageError(
      () => parseGuestImage(k({ headerAddr: 0x2100, loadAddr: 0x2000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x2000 })),
      /larger than the header's file offset 0x0/,
      'load_addr',
    );
    expectImageError(
      () => parseGuestImage(k({ headerAddr: 0x2000, loadAddr: 0x2000, loadEndAddr: 0x1000, bssEndAddr: 0, entryAddr: 0x2000 })),
      /load_end_addr 0x1000 is below load_addr/,
      'load_end_addr',
    );
    expectImageError(
      () => parseGuestImage(k({ headerAddr: 0x2000, loadAddr: 0x2000, loadEndAddr: 0x3000, bssEndAddr: 0, entryAddr: 0x2000 })),
      /end at 0x1000, past the end of the image \(0x60 bytes\)/,
      'load_end_addr',
    );
    expectImageError(
      () => parseGuestImage(k({ headerAddr: 0x2000, loadAddr: 0x2000, loadEndAddr: 0, bssEndAddr: 0, entryAddr: 0x9000 })),
      /entry_addr 0x9000 is not inside any loaded segment/,
      'entry_addr',
    );
    const short = concat(filled(8, 0), multibootHeader(1 << 16)); // kludge flag, but only the 12 mandatory bytes
    expectImageError(() => parseGuestImage(short), /address fields \(offsets 12-31\) pass the end of the image/, 'header_addr');
    const notElf = concat(multibootHeader(0), filled(0x40, 0));
    expectImageError(() => parseGuestImage(notElf), /needs an ELF32 i386 image; the image is not ELF32/);
  });

  it('random bytes and corrupted images: a GuestImage or a GuestImageError, nothing else', () => {
    const seeds = [
      kutLikeKernel(),
      good64(),
      concat(
        filled(0x20, 0x11),
        multibootHeader(0x10002, { headerAddr: 0x100020, loadAddr: 0x100000, loadEndAddr: 0x100080, bssEndAddr: 0x102000, entryAddr: 0x100040 }),
        filled(0x80, 0x22),
      ),
    ];
    const check = (bytes: Uint8Array, format: 'auto' | 'elf64' | 'multiboot') => {
      let img: GuestImage;
      try {
        img = parseGuestImage(bytes, { format });
      } catch (e) {
        if (!(e instanceof GuestImageError)) throw e;
        expect(e.message.length).toBeGreaterThan(10);
        return;
      }
      const limit = img.format === 'multiboot' ? 1n << 32n : 1n << 52n;
      let end = 0n;
      for (const s of img.segments) {
        expect(s.gpa).toBeGreaterThanOrEqual(end);
        expect(BigInt(s.data.length)).toBeLessThanOrEqual(s.memSize);
        expect(s.memSize).toBeGreaterThan(0n);
        end = s.gpa + s.memSize;
        expect(end).toBeLessThanOrEqual(limit);
      }
      expect(img.segments.some((s) => img.entry >= s.gpa && img.entry < s.gpa + s.memSize)).toBe(true);
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.constantFrom('auto' as const, 'elf64' as const, 'multiboot' as const), (bytes, format) =>
        check(bytes, format),
      ),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seeds.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.nat(),
        fc.constantFrom('auto' as const, 'elf64' as const, 'multiboot' as const),
        (which, edits, cut, format) => {
          const b = Uint8Array.from(seeds[which]!);
          for (const [at, v] of edits) b[at % b.length] = v;
          check(b.subarray(0, b.length - (cut % 16)), format);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
