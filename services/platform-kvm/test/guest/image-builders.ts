// Hand-built guest images for the loader tests: ELF32/ELF64 executables laid out byte by byte from
// the gABI tables (not through the loader's own struct tables, so a wrong offset there shows), a
// multiboot v1 header, and small helpers.

export interface BuildSegment {
  paddr: bigint;
  vaddr?: bigint;
  data: Uint8Array;
  memsz?: bigint;
  type?: number;
  /** File offset of the data (default: packed after the program headers, 16-byte aligned). */
  offset?: number;
}

export interface BuildElfOptions {
  cls: 32 | 64;
  entry: bigint;
  segments: BuildSegment[];
  machine?: number;
  type?: number;
  phentsize?: number;
  phoff?: number;
  phnum?: number;
}

/** A little-endian ELF executable: ehdr at 0, program headers right after it, then the segment data. */
export function buildElf(o: BuildElfOptions): Uint8Array {
  const is64 = o.cls === 64;
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const phoff = o.phoff ?? ehsize;
  let cursor = phoff + phentsize * o.segments.length;
  const offsets = o.segments.map((s) => {
    if (s.offset !== undefined) return s.offset;
    cursor = (cursor + 15) & ~15;
    const at = cursor;
    cursor += s.data.length;
    return at;
  });
  const size = Math.max(cursor, ...o.segments.map((s, i) => offsets[i]! + s.data.length), phoff + phentsize * o.segments.length);
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1, 0]);
  v.setUint16(16, o.type ?? 2, true); // e_type ET_EXEC
  v.setUint16(18, o.machine ?? (is64 ? 62 : 3), true); // e_machine
  v.setUint32(20, 1, true); // e_version
  if (is64) {
    v.setBigUint64(24, o.entry, true); // e_entry
    v.setBigUint64(32, BigInt(phoff), true); // e_phoff
    v.setUint16(52, ehsize, true); // e_ehsize
    v.setUint16(54, o.phentsize ?? phentsize, true); // e_phentsize
    v.setUint16(56, o.phnum ?? o.segments.length, true); // e_phnum
  } else {
    v.setUint32(24, Number(o.entry), true);
    v.setUint32(28, phoff, true);
    v.setUint16(40, ehsize, true);
    v.setUint16(42, o.phentsize ?? phentsize, true);
    v.setUint16(44, o.phnum ?? o.segments.length, true);
  }
  o.segments.forEach((s, i) => {
    const p = phoff + i * phentsize;
    const memsz = s.memsz ?? BigInt(s.data.length);
    const vaddr = s.vaddr ?? s.paddr;
    if (is64) {
      v.setUint32(p, s.type ?? 1, true); // p_type PT_LOAD
      v.setUint32(p + 4, 5, true); // p_flags R+X
      v.setBigUint64(p + 8, BigInt(offsets[i]!), true); // p_offset
      v.setBigUint64(p + 16, vaddr, true);
      v.setBigUint64(p + 24, s.paddr, true);
      v.setBigUint64(p + 32, BigInt(s.data.length), true); // p_filesz
      v.setBigUint64(p + 40, memsz, true);
      v.setBigUint64(p + 48, 0x1000n, true);
    } else {
      v.setUint32(p, s.type ?? 1, true);
      v.setUint32(p + 4, offsets[i]!, true);
      v.setUint32(p + 8, Number(vaddr), true);
      v.setUint32(p + 12, Number(s.paddr), true);
      v.setUint32(p + 16, s.data.length, true);
      v.setUint32(p + 20, Number(memsz), true);
      v.setUint32(p + 24, 5, true);
      v.setUint32(p + 28, 0x1000, true);
    }
    if (offsets[i]! + s.data.length <= b.length) b.set(s.data, offsets[i]!);
  });
  return b;
}

/** A multiboot v1 header (12 bytes, or 32 with the a.out-kludge fields), checksum made right unless given. */
export function multibootHeader(
  flags: number,
  aout?: { headerAddr: number; loadAddr: number; loadEndAddr: number; bssEndAddr: number; entryAddr: number },
  checksum?: number,
): Uint8Array {
  const b = new Uint8Array(aout ? 32 : 12);
  const v = new DataView(b.buffer);
  v.setUint32(0, 0x1badb002, true);
  v.setUint32(4, flags >>> 0, true);
  v.setUint32(8, checksum ?? -(0x1badb002 + flags) >>> 0, true);
  if (aout) {
    v.setUint32(12, aout.headerAddr, true);
    v.setUint32(16, aout.loadAddr, true);
    v.setUint32(20, aout.loadEndAddr, true);
    v.setUint32(24, aout.bssEndAddr, true);
    v.setUint32(28, aout.entryAddr, true);
  }
  return b;
}

export const concat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
};

export const filled = (n: number, byte: number): Uint8Array => new Uint8Array(n).fill(byte);

export const u32le = (b: Uint8Array, off: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
export const u64le = (b: Uint8Array, off: number): bigint => new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(off, true);
export const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** A kvm-unit-tests-like multiboot kernel: ELF32, text at 4 MiB starting with the header, data + bss after. */
export function kutLikeKernel(opts: { flags?: number; checksum?: number } = {}): Uint8Array {
  const text = concat(multibootHeader(opts.flags ?? 0, undefined, opts.checksum), filled(0x100 - 12, 0x90));
  return buildElf({
    cls: 32,
    entry: 0x40000cn,
    segments: [
      { paddr: 0x400000n, data: text },
      { paddr: 0x401000n, data: filled(0x40, 0xaa), memsz: 0x3000n },
    ],
  });
}
