/** parseGuestImage(): flat binaries, ELF64 x86-64 executables and multiboot v1 kernels. */
import { elfClassOf, MAX_GPA_64, parseElf } from './elf';
import { GuestImageError, hex } from './errors';
import { checkEntryInSegments, findMultibootHeader, noMultibootHeaderReason, parseMultiboot } from './multiboot';
import type { EntryMode, GuestImage } from './types';

export interface ParseGuestImageOptions {
  /**
   * 'auto' (default): a multiboot header in the first 8192 bytes wins (as with `qemu -kernel`), else
   * an ELF64 x86-64 executable; anything else is refused (a flat binary must be asked for).
   */
  format?: 'auto' | 'flat' | 'elf64' | 'multiboot';
  /** flat only (required there): the GPA the bytes are loaded at. */
  loadGpa?: bigint;
  /** flat only: the entry GPA (default loadGpa). */
  entry?: bigint;
  /** flat only: the mode the entry runs in (default 'long64'). */
  entryMode?: EntryMode;
}

const ENTRY_MODES: readonly EntryMode[] = ['real16', 'protected32', 'long64'];

/**
 * Reads a guest image into segments + entry. Never modifies or copies `bytes` (segments view it).
 * Malformed, truncated or unsupported input: GuestImageError naming the field and offset.
 */
export function parseGuestImage(bytes: Uint8Array, opts: ParseGuestImageOptions = {}): GuestImage {
  if (!(bytes instanceof Uint8Array)) throw new GuestImageError('image bytes must be a Uint8Array');
  const format = opts.format ?? 'auto';
  if (format !== 'flat' && (opts.loadGpa !== undefined || opts.entry !== undefined || opts.entryMode !== undefined)) {
    throw new GuestImageError(`loadGpa, entry and entryMode apply to format 'flat' only (format is '${format}'): the image itself says where it goes`);
  }
  if (bytes.length === 0) throw new GuestImageError('the image is empty (0 bytes)');
  switch (format) {
    case 'flat':
      return parseFlat(bytes, opts);
    case 'elf64':
      return parseElf64(bytes);
    case 'multiboot':
      return parseMultiboot(bytes);
    case 'auto': {
      if (findMultibootHeader(bytes).found) return parseMultiboot(bytes);
      const cls = elfClassOf(bytes);
      if (cls === 64) return parseElf64(bytes);
      const what = cls === 32 ? 'an ELF32 image' : 'neither multiboot nor ELF64';
      throw new GuestImageError(`cannot detect the image format: ${what} (${noMultibootHeaderReason(bytes)}); a flat binary needs format 'flat' and loadGpa`);
    }
    default:
      throw new GuestImageError(`unknown image format '${String(format)}' (expected 'auto', 'flat', 'elf64' or 'multiboot')`);
  }
}

function parseElf64(bytes: Uint8Array): GuestImage {
  const elf = parseElf(bytes, 64, MAX_GPA_64);
  checkEntryInSegments(elf.entry, elf.segments, 'ELF e_entry');
  return { format: 'elf64', segments: elf.segments, entry: elf.entry, entryMode: 'long64' };
}

function parseFlat(bytes: Uint8Array, opts: ParseGuestImageOptions): GuestImage {
  const { loadGpa } = opts;
  if (typeof loadGpa !== 'bigint') throw new GuestImageError("format 'flat' needs loadGpa (a bigint GPA)", 'loadGpa');
  if (loadGpa < 0n || loadGpa + BigInt(bytes.length) > MAX_GPA_64)
    throw new GuestImageError(`flat image of ${hex(bytes.length)} bytes at loadGpa ${hex(loadGpa)} is outside [0, 2^52)`, 'loadGpa');
  const entryMode = opts.entryMode ?? 'long64';
  if (!ENTRY_MODES.includes(entryMode)) throw new GuestImageError(`unknown entryMode '${String(entryMode)}' (expected ${ENTRY_MODES.join(', ')})`, 'entryMode');
  const entry = opts.entry ?? loadGpa;
  if (typeof entry !== 'bigint' || entry < 0n) throw new GuestImageError('flat entry must be a non-negative bigint GPA', 'entry');
  const limit = entryMode === 'real16' ? 1n << 20n : entryMode === 'protected32' ? 1n << 32n : MAX_GPA_64;
  if (entry >= limit) throw new GuestImageError(`flat entry ${hex(entry)} is not reachable in ${entryMode} mode (limit ${hex(limit)})`, 'entry');
  return { format: 'flat', segments: [{ gpa: loadGpa, data: bytes, memSize: BigInt(bytes.length) }], entry, entryMode };
}
