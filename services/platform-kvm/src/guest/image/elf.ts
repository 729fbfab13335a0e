/**
 * ELF32 (i386) and ELF64 (x86-64) executables: headers and program headers as the System V ABI
 * (gABI, "ELF header" and "Program header") lays them out, and their PT_LOAD segments loaded by
 * physical address (p_paddr), as QEMU's load_elf() does for -kernel.
 */
import { GuestImageError, hex, range } from './errors';
import { struct, u16, u32, u64, u8 } from './struct';
import type { GuestSegment } from './types';

/** e_ident: the first 16 bytes (gABI "ELF Identification"). */
export const ElfIdent = struct('e_ident', 16, {
  EI_MAG: u32(0), //       0x7f 'E' 'L' 'F' → 0x464c457f read little-endian
  EI_CLASS: u8(4), //      ELFCLASS32 = 1, ELFCLASS64 = 2
  EI_DATA: u8(5), //       ELFDATA2LSB = 1
  EI_VERSION: u8(6), //    EV_CURRENT = 1
  EI_OSABI: u8(7),
});
export const ELF_MAGIC = 0x464c457f;
export const ELFCLASS32 = 1;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const EV_CURRENT = 1;
export const ET_EXEC = 2;
export const EM_386 = 3;
export const EM_X86_64 = 62;
export const PT_LOAD = 1;
/** e_phnum value meaning "the real count is in section header 0" (extended numbering). */
export const PN_XNUM = 0xffff;

export const Elf32Ehdr = struct('Elf32_Ehdr', 52, {
  e_type: u16(16),
  e_machine: u16(18),
  e_version: u32(20),
  e_entry: u32(24),
  e_phoff: u32(28),
  e_shoff: u32(32),
  e_flags: u32(36),
  e_ehsize: u16(40),
  e_phentsize: u16(42),
  e_phnum: u16(44),
  e_shentsize: u16(46),
  e_shnum: u16(48),
  e_shstrndx: u16(50),
});
export const Elf64Ehdr = struct('Elf64_Ehdr', 64, {
  e_type: u16(16),
  e_machine: u16(18),
  e_version: u32(20),
  e_entry: u64(24),
  e_phoff: u64(32),
  e_shoff: u64(40),
  e_flags: u32(48),
  e_ehsize: u16(52),
  e_phentsize: u16(54),
  e_phnum: u16(56),
  e_shentsize: u16(58),
  e_shnum: u16(60),
  e_shstrndx: u16(62),
});
export const Elf32Phdr = struct('Elf32_Phdr', 32, {
  p_type: u32(0),
  p_offset: u32(4),
  p_vaddr: u32(8),
  p_paddr: u32(12),
  p_filesz: u32(16),
  p_memsz: u32(20),
  p_flags: u32(24),
  p_align: u32(28),
});
export const Elf64Phdr = struct('Elf64_Phdr', 56, {
  p_type: u32(0),
  p_flags: u32(4),
  p_offset: u64(8),
  p_vaddr: u64(16),
  p_paddr: u64(24),
  p_filesz: u64(32),
  p_memsz: u64(40),
  p_align: u64(48),
});

/** Highest guest-physical address + 1 an ELF64 segment may reach (52-bit MAXPHYADDR, the x86-64 architectural maximum). */
export const MAX_GPA_64 = 1n << 52n;
/** ... and an ELF32 / multiboot one (paging off: 32-bit physical addresses). */
export const MAX_GPA_32 = 1n << 32n;

export interface ElfImage {
  elfClass: 32 | 64;
  /** Physical entry: e_entry, moved by p_paddr − p_vaddr when it lies inside a PT_LOAD's virtual range. */
  entry: bigint;
  segments: GuestSegment[];
}

const CLASS_NAME: Record<number, string> = { [ELFCLASS32]: 'ELFCLASS32', [ELFCLASS64]: 'ELFCLASS64' };

/** The ELF class of `bytes` (32 or 64) if they start with the ELF magic, else undefined. */
export function elfClassOf(bytes: Uint8Array): 32 | 64 | undefined {
  if (bytes.length < 16) return undefined;
  const id = ElfIdent.read(bytes, 0);
  if (id.EI_MAG !== ELF_MAGIC) return undefined;
  return id.EI_CLASS === ELFCLASS32 ? 32 : id.EI_CLASS === ELFCLASS64 ? 64 : undefined;
}

/**
 * Reads an ELF executable of the given class for x86 (ELF32: EM_386, ELF64: EM_X86_64): its PT_LOAD
 * segments by p_paddr (segments with p_memsz 0 are skipped), sorted, checked not to overlap and to
 * lie below `maxGpa`.
 */
export function parseElf(bytes: Uint8Array, elfClass: 32 | 64, maxGpa: bigint = elfClass === 32 ? MAX_GPA_32 : MAX_GPA_64): ElfImage {
  if (bytes.length < 16) throw new GuestImageError(`not an ELF image: e_ident needs 16 bytes; the image has ${bytes.length}`, 'e_ident');
  const id = ElfIdent.read(bytes, 0);
  if (id.EI_MAG !== ELF_MAGIC) throw new GuestImageError(`not an ELF image: bytes 0..3 are ${hex(id.EI_MAG)} (little-endian), not 0x7f 'E' 'L' 'F'`, 'EI_MAG');
  const wantClass = elfClass === 32 ? ELFCLASS32 : ELFCLASS64;
  if (id.EI_CLASS !== wantClass) {
    throw new GuestImageError(
      `ELF EI_CLASS (offset 0x4) is ${id.EI_CLASS} (${CLASS_NAME[id.EI_CLASS] ?? 'invalid'}); expected ${wantClass} (${CLASS_NAME[wantClass]})`,
      'EI_CLASS',
    );
  }
  if (id.EI_DATA !== ELFDATA2LSB)
    throw new GuestImageError(`ELF EI_DATA (offset 0x5) is ${id.EI_DATA}; only 1 (ELFDATA2LSB, little-endian) is supported`, 'EI_DATA');
  if (id.EI_VERSION !== EV_CURRENT) throw new GuestImageError(`ELF EI_VERSION (offset 0x6) is ${id.EI_VERSION}; expected 1 (EV_CURRENT)`, 'EI_VERSION');

  const big = (v: number | bigint): bigint => BigInt(v);
  const eh = elfClass === 32 ? Elf32Ehdr.read(bytes, 0) : Elf64Ehdr.read(bytes, 0);
  const ehdr = elfClass === 32 ? Elf32Ehdr : Elf64Ehdr;
  const phdr = elfClass === 32 ? Elf32Phdr : Elf64Phdr;
  const wantMachine = elfClass === 32 ? EM_386 : EM_X86_64;
  if (eh.e_version !== EV_CURRENT)
    throw new GuestImageError(`ELF e_version (offset ${hex(ehdr.offsetOf('e_version'))}) is ${eh.e_version}; expected 1 (EV_CURRENT)`, 'e_version');
  if (eh.e_type !== ET_EXEC) {
    throw new GuestImageError(
      `ELF e_type (offset 0x10) is ${eh.e_type}${eh.e_type === 3 ? ' (ET_DYN)' : eh.e_type === 1 ? ' (ET_REL)' : ''}; only 2 (ET_EXEC) images are loaded`,
      'e_type',
    );
  }
  if (eh.e_machine !== wantMachine) {
    throw new GuestImageError(
      `ELF e_machine (offset 0x12) is ${eh.e_machine}; an ELF${elfClass} image must be ${wantMachine} (${elfClass === 32 ? 'EM_386' : 'EM_X86_64'})`,
      'e_machine',
    );
  }
  if (eh.e_phnum === 0) throw new GuestImageError('ELF has no program headers (e_phnum 0): nothing to load', 'e_phnum');
  if (eh.e_phnum === PN_XNUM) throw new GuestImageError('ELF e_phnum is 0xffff (PN_XNUM, extended numbering): not supported', 'e_phnum');
  if (eh.e_phentsize !== phdr.size) {
    throw new GuestImageError(
      `ELF e_phentsize (offset ${hex(ehdr.offsetOf('e_phentsize'))}) is ${eh.e_phentsize}; an ${phdr.name} is ${phdr.size} bytes`,
      'e_phentsize',
    );
  }
  const phoff = big(eh.e_phoff);
  const tableEnd = phoff + BigInt(eh.e_phnum * phdr.size);
  if (tableEnd > BigInt(bytes.length)) {
    throw new GuestImageError(
      `ELF program header table (e_phoff ${hex(phoff)}, ${eh.e_phnum} × ${phdr.size} bytes) ends at ${hex(tableEnd)}, past the end of the image (${hex(bytes.length)} bytes)`,
      'e_phoff',
    );
  }

  const loads: { index: number; paddr: bigint; vaddr: bigint; segment: GuestSegment }[] = [];
  for (let i = 0; i < eh.e_phnum; i++) {
    const at = Number(phoff) + i * phdr.size;
    const ph = phdr.read(bytes, at);
    if (ph.p_type !== PT_LOAD) continue;
    const [offset, filesz, memsz, paddr, vaddr] = [big(ph.p_offset), big(ph.p_filesz), big(ph.p_memsz), big(ph.p_paddr), big(ph.p_vaddr)];
    const where = `ELF program header ${i} (PT_LOAD at file offset ${hex(at)})`;
    if (filesz > memsz) throw new GuestImageError(`${where}: p_filesz ${hex(filesz)} is larger than p_memsz ${hex(memsz)}`, 'p_filesz');
    if (offset + filesz > BigInt(bytes.length)) {
      throw new GuestImageError(
        `${where}: its file bytes [p_offset ${hex(offset)}, +p_filesz ${hex(filesz)}) end at ${hex(offset + filesz)}, past the end of the image (${hex(bytes.length)} bytes)`,
        'p_offset',
      );
    }
    if (memsz === 0n) continue;
    if (paddr + memsz > maxGpa) {
      throw new GuestImageError(
        `${where}: p_paddr ${hex(paddr)} + p_memsz ${hex(memsz)} ends at ${hex(paddr + memsz)}, beyond the ${hex(maxGpa)} limit of an ELF${elfClass} image`,
        'p_paddr',
      );
    }
    const data = bytes.subarray(Number(offset), Number(offset + filesz));
    loads.push({ index: i, paddr, vaddr, segment: { gpa: paddr, data, memSize: memsz } });
  }
  if (loads.length === 0)
    throw new GuestImageError(`ELF has no PT_LOAD segment with p_memsz > 0 among its ${eh.e_phnum} program headers: nothing to load`, 'p_type');
  loads.sort((a, b) => (a.paddr < b.paddr ? -1 : a.paddr > b.paddr ? 1 : 0));
  for (let k = 1; k < loads.length; k++) {
    const p = loads[k - 1]!;
    const q = loads[k]!;
    if (q.paddr < p.paddr + p.segment.memSize) {
      throw new GuestImageError(
        `ELF PT_LOAD segments overlap: program header ${p.index} ${range(p.paddr, p.segment.memSize)} and program header ${q.index} ${range(q.paddr, q.segment.memSize)} (by p_paddr)`,
        'p_paddr',
      );
    }
  }
  // e_entry is a virtual address; with paging off (multiboot) or an identity map (long64) it must be
  // physical. Where it lies inside a PT_LOAD's virtual range, move it by that segment's p_paddr − p_vaddr
  // (as GRUB 2's multiboot loader does); images linked with p_vaddr == p_paddr are unaffected.
  let entry = big(eh.e_entry);
  const home = loads.find((l) => entry >= l.vaddr && entry < l.vaddr + l.segment.memSize);
  if (home) entry = entry - home.vaddr + home.paddr;
  return { elfClass, entry, segments: loads.map((l) => l.segment) };
}
