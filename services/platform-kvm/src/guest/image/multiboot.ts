/**
 * Multiboot version 1 (Multiboot Specification 0.6.96): the OS image header (§3.1), the machine
 * state at entry (§3.2) and the boot information structure (§3.3), plus how an image carrying the
 * header is loaded — as QEMU's hw/i386/multiboot.c does for `qemu -kernel`: the a.out-kludge address
 * fields when flags bit 16 is set, else the image must be ELF32 (i386) and its PT_LOAD segments are
 * loaded by p_paddr (QEMU refuses an ELF64 image there: "Cannot load x86-64 image, give a 32bit one").
 */
import { elfClassOf, MAX_GPA_32, parseElf } from './elf';
import { GuestImageError, hex, range } from './errors';
import { struct, u16, u32, u64 } from './struct';
import type { GuestImage, MultibootHeaderInfo } from './types';

/** §3.1.1: the header must lie inside the first 8192 bytes, 32-bit aligned. */
export const MULTIBOOT_SEARCH = 8192;
/** §3.1.2 `magic`. */
export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
/** §3.2: EAX at entry. */
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;

/** §3.1.2 header flags. Bits 0–15 are requirements a boot loader must understand or refuse; 16–31 optional. */
export const MultibootHeaderFlag = {
  PAGE_ALIGN: 1 << 0,
  MEMORY_INFO: 1 << 1,
  VIDEO_MODE: 1 << 2,
  AOUT_KLUDGE: 1 << 16,
} as const;
/** The requirement bits (0–15) this loader knows. */
const KNOWN_REQUIRED = MultibootHeaderFlag.PAGE_ALIGN | MultibootHeaderFlag.MEMORY_INFO | MultibootHeaderFlag.VIDEO_MODE;

/** §3.1.1 "The layout of Multiboot header" (offsets 0–44). */
export const MultibootHeader = struct('multiboot_header', 48, {
  magic: u32(0),
  flags: u32(4),
  checksum: u32(8),
  header_addr: u32(12),
  load_addr: u32(16),
  load_end_addr: u32(20),
  bss_end_addr: u32(24),
  entry_addr: u32(28),
  mode_type: u32(32),
  width: u32(36),
  height: u32(40),
  depth: u32(44),
});

/** §3.3 "Boot information format": the multiboot_info structure (88 bytes up to vbe_interface_len). */
export const MultibootInfo = struct('multiboot_info', 88, {
  flags: u32(0),
  mem_lower: u32(4),
  mem_upper: u32(8),
  boot_device: u32(12),
  cmdline: u32(16),
  mods_count: u32(20),
  mods_addr: u32(24),
  syms0: u32(28),
  syms1: u32(32),
  syms2: u32(36),
  syms3: u32(40),
  mmap_length: u32(44),
  mmap_addr: u32(48),
  drives_length: u32(52),
  drives_addr: u32(56),
  config_table: u32(60),
  boot_loader_name: u32(64),
  apm_table: u32(68),
  vbe_control_info: u32(72),
  vbe_mode_info: u32(76),
  vbe_mode: u16(80),
  vbe_interface_seg: u16(82),
  vbe_interface_off: u16(84),
  vbe_interface_len: u16(86),
});

/** §3.3 multiboot_info.flags: which fields are valid. */
export const MultibootInfoFlag = {
  MEMORY: 1 << 0,
  BOOT_DEVICE: 1 << 1,
  CMDLINE: 1 << 2,
  MODS: 1 << 3,
  AOUT_SYMS: 1 << 4,
  ELF_SHDR: 1 << 5,
  MEM_MAP: 1 << 6,
  DRIVE_INFO: 1 << 7,
  CONFIG_TABLE: 1 << 8,
  BOOT_LOADER_NAME: 1 << 9,
  APM_TABLE: 1 << 10,
  VBE_INFO: 1 << 11,
} as const;

/**
 * §3.3 one memory-map entry: `size` (of the rest of the entry, 20 here) at offset −4 of what
 * mmap_addr's walk calls the entry, then base_addr, length, type. 24 bytes in all.
 */
export const MultibootMmapEntry = struct('multiboot_mmap_entry', 24, { size: u32(0), base_addr: u64(4), length: u64(12), type: u32(20) });
/** §3.3 memory-map `type`: 1 available RAM, any other value reserved (2 is what BIOSes report). */
export const MULTIBOOT_MEMORY_AVAILABLE = 1;
export const MULTIBOOT_MEMORY_RESERVED = 2;

/** §3.3 one module entry (mod_start, mod_end, string, reserved). */
export const MultibootModule = struct('multiboot_module', 16, { mod_start: u32(0), mod_end: u32(4), string: u32(8), reserved: u32(12) });

export interface MultibootHeaderFound {
  offset: number;
  header: ReturnType<typeof MultibootHeader.read>;
}

/**
 * The first multiboot header in the first 8192 bytes: `magic` at a 4-byte aligned offset with
 * magic + flags + checksum = 0 (mod 2^32). A magic whose checksum does not match is skipped (as QEMU
 * does) and reported in `badChecksumAt` when no valid header follows.
 */
export function findMultibootHeader(bytes: Uint8Array): { found?: MultibootHeaderFound; badChecksumAt?: { offset: number; flags: number; checksum: number } } {
  const limit = Math.min(bytes.length, MULTIBOOT_SEARCH);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let bad: { offset: number; flags: number; checksum: number } | undefined;
  for (let i = 0; i + 12 <= limit; i += 4) {
    if (dv.getUint32(i, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = dv.getUint32(i + 4, true);
    const checksum = dv.getUint32(i + 8, true);
    if ((MULTIBOOT_HEADER_MAGIC + flags + checksum) >>> 0 !== 0) {
      bad ??= { offset: i, flags, checksum };
      continue;
    }
    // Only the 12 mandatory bytes are known to be present; the rest reads as 0 past the end (checked where used).
    const padded = new Uint8Array(MultibootHeader.size);
    padded.set(bytes.subarray(i, Math.min(i + MultibootHeader.size, bytes.length)));
    return { found: { offset: i, header: MultibootHeader.read(padded, 0) } };
  }
  return bad ? { badChecksumAt: bad } : {};
}

/** Why an image has no usable multiboot header, for messages. */
export function noMultibootHeaderReason(bytes: Uint8Array): string {
  const { badChecksumAt: bad } = findMultibootHeader(bytes);
  if (bad) {
    const sum = (MULTIBOOT_HEADER_MAGIC + bad.flags + bad.checksum) >>> 0;
    return `multiboot magic 0x1badb002 at offset ${hex(bad.offset)} has flags ${hex(bad.flags)} and checksum ${hex(bad.checksum)}: magic + flags + checksum is ${hex(sum)}, not 0 (mod 2^32)`;
  }
  return `no multiboot header (magic 0x1badb002 at a 4-byte aligned offset) in the first ${Math.min(bytes.length, MULTIBOOT_SEARCH)} bytes`;
}

/** Loads an image that carries a multiboot header (see the file comment). */
export function parseMultiboot(bytes: Uint8Array): GuestImage {
  const { found } = findMultibootHeader(bytes);
  if (!found) throw new GuestImageError(`not a multiboot image: ${noMultibootHeaderReason(bytes)}`, 'magic');
  const { offset: i, header: h } = found;
  const unknown = h.flags & 0xffff & ~KNOWN_REQUIRED;
  if (unknown) {
    // §3.1.2: "If the boot loader does not understand all the requirements in the flags, it must fail."
    throw new GuestImageError(
      `multiboot header at ${hex(i)}: flags ${hex(h.flags)} set requirement bits ${hex(unknown)} (bits 0-15) this loader does not know`,
      'flags',
    );
  }
  const info: MultibootHeaderInfo = {
    offset: i,
    flags: h.flags,
    checksum: h.checksum,
    pageAlign: (h.flags & MultibootHeaderFlag.PAGE_ALIGN) !== 0,
    memoryInfo: (h.flags & MultibootHeaderFlag.MEMORY_INFO) !== 0,
    videoMode: (h.flags & MultibootHeaderFlag.VIDEO_MODE) !== 0, // QEMU: "multiboot knows VBE. we don't." — no video info is given
    aoutKludge: (h.flags & MultibootHeaderFlag.AOUT_KLUDGE) !== 0,
    loadedAs: 'elf32',
  };

  if (!info.aoutKludge) {
    const cls = elfClassOf(bytes);
    if (cls === 64) {
      throw new GuestImageError(
        `multiboot header at ${hex(i)} without the a.out kludge (flags bit 16) needs an ELF32 i386 image; this one is ELF64 (QEMU refuses it too: give a 32-bit image, or load it with format 'elf64')`,
        'EI_CLASS',
      );
    }
    if (cls !== 32)
      throw new GuestImageError(
        `multiboot header at ${hex(i)} without the a.out kludge (flags bit 16) needs an ELF32 i386 image; the image is not ELF32`,
        'e_ident',
      );
    const elf = parseElf(bytes, 32, MAX_GPA_32);
    checkEntry(elf.entry, elf.segments, 'ELF e_entry');
    return { format: 'multiboot', segments: elf.segments, entry: elf.entry, entryMode: 'protected32', multiboot: info };
  }

  // a.out kludge: the address fields say where the file bytes go (§3.1.3).
  if (i + 32 > bytes.length) {
    throw new GuestImageError(
      `multiboot header at ${hex(i)} sets the a.out kludge (flags bit 16) but its address fields (offsets 12-31) pass the end of the image (${hex(bytes.length)} bytes)`,
      'header_addr',
    );
  }
  const { header_addr: headerAddr, load_addr: loadAddr, load_end_addr: loadEndAddr, bss_end_addr: bssEndAddr, entry_addr: entryAddr } = h;
  Object.assign(info, { headerAddr, loadAddr, loadEndAddr, bssEndAddr, entryAddr, loadedAs: 'aout-kludge' });
  const at = (field: string) => `multiboot header at ${hex(i)}: ${field}`;
  if (headerAddr < loadAddr) throw new GuestImageError(`${at('header_addr')} ${hex(headerAddr)} is below load_addr ${hex(loadAddr)}`, 'header_addr');
  // The file offset of the byte that goes to load_addr: the header's own offset minus its distance from load_addr.
  const textOffset = i - (headerAddr - loadAddr);
  if (textOffset < 0) {
    throw new GuestImageError(
      `${at('header_addr')} ${hex(headerAddr)} − load_addr ${hex(loadAddr)} = ${hex(headerAddr - loadAddr)} is larger than the header's file offset ${hex(i)}: load_addr would precede the file`,
      'load_addr',
    );
  }
  let loadSize: number;
  if (loadEndAddr !== 0) {
    if (loadEndAddr < loadAddr) throw new GuestImageError(`${at('load_end_addr')} ${hex(loadEndAddr)} is below load_addr ${hex(loadAddr)}`, 'load_end_addr');
    loadSize = loadEndAddr - loadAddr;
    if (textOffset + loadSize > bytes.length) {
      throw new GuestImageError(
        `${at('load_end_addr')} ${hex(loadEndAddr)}: the ${hex(loadSize)} bytes to load from file offset ${hex(textOffset)} end at ${hex(textOffset + loadSize)}, past the end of the image (${hex(bytes.length)} bytes)`,
        'load_end_addr',
      );
    }
  } else {
    loadSize = bytes.length - textOffset; // 0 means "to the end of the file"
  }
  let memSize = loadSize;
  if (bssEndAddr !== 0) {
    if (bssEndAddr < loadAddr + loadSize) {
      throw new GuestImageError(`${at('bss_end_addr')} ${hex(bssEndAddr)} is below the end of the loaded bytes ${hex(loadAddr + loadSize)}`, 'bss_end_addr');
    }
    memSize = bssEndAddr - loadAddr;
  }
  if (memSize === 0) throw new GuestImageError(`${at('load_addr')}: the a.out-kludge fields load nothing (0 bytes)`, 'load_end_addr');
  if (BigInt(loadAddr) + BigInt(memSize) > MAX_GPA_32) {
    throw new GuestImageError(`${at('load_addr')} ${hex(loadAddr)} + ${hex(memSize)} bytes ends beyond 4 GiB`, 'load_addr');
  }
  const segments = [{ gpa: BigInt(loadAddr), data: bytes.subarray(textOffset, textOffset + loadSize), memSize: BigInt(memSize) }];
  checkEntry(BigInt(entryAddr), segments, 'entry_addr');
  return { format: 'multiboot', segments, entry: BigInt(entryAddr), entryMode: 'protected32', multiboot: info };
}

function checkEntry(entry: bigint, segments: { gpa: bigint; memSize: bigint }[], field: string): void {
  if (segments.some((s) => entry >= s.gpa && entry < s.gpa + s.memSize)) return;
  const where = segments.map((s) => range(s.gpa, s.memSize)).join(', ');
  throw new GuestImageError(`${field} ${hex(entry)} is not inside any loaded segment (${where})`, field === 'entry_addr' ? 'entry_addr' : 'e_entry');
}

export { checkEntry as checkEntryInSegments };
