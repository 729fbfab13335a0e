// SparseMemory: pages allocated on first non-zero write, zeros everywhere else.
import { SparseMemory } from '@vsm/core';
import { PAGE_SIZE } from '../src/memory';

const GiB = 1n << 30n;

describe('SparseMemory', () => {
  test('untouched memory reads as zeros and allocates nothing', () => {
    const m = new SparseMemory(16n * 1024n * 1024n);
    expect(m.read(0n, 64).equals(Buffer.alloc(64))).toBe(true);
    expect(m.read(0x12_3456n, 8192).equals(Buffer.alloc(8192))).toBe(true);
    expect(m.pagesTouched).toBe(0);
    expect(m.touchedPages()).toEqual([]);
    expect(m.peekPage(0)).toBeUndefined();
  });

  test('a write inside one page reads back exactly and leaves the neighbours zero', () => {
    const m = new SparseMemory(1n << 20n);
    m.write(0x2010n, Buffer.from('0102030405', 'hex'));
    expect(m.read(0x200en, 9).toString('hex')).toBe('0000' + '0102030405' + '0000');
    expect(m.pagesTouched).toBe(1);
    expect(m.touchedPages()).toEqual([2]);
  });

  test('a write across a page boundary lands in both pages', () => {
    const m = new SparseMemory(1n << 20n);
    const data = Buffer.from('a1a2a3a4a5a6a7a8', 'hex');
    m.write(0x1ffcn, data); // 4 bytes at the end of page 1, 4 at the start of page 2
    expect(m.read(0x1ffcn, 8).toString('hex')).toBe('a1a2a3a4a5a6a7a8');
    expect(
      m
        .peekPage(1)!
        .subarray(PAGE_SIZE - 4)
        .toString('hex'),
    ).toBe('a1a2a3a4');
    expect(m.peekPage(2)!.subarray(0, 4).toString('hex')).toBe('a5a6a7a8');
    expect(m.touchedPages()).toEqual([1, 2]);
    // a read across the same boundary with a wider window
    expect(m.read(0x1ff8n, 16).toString('hex')).toBe('00000000a1a2a3a4a5a6a7a800000000');
  });

  test('a write spanning three pages', () => {
    const m = new SparseMemory(1n << 20n);
    const data = Buffer.alloc(PAGE_SIZE + 16, 0x5a);
    m.write(0x4ff8n, data);
    expect(m.touchedPages()).toEqual([4, 5, 6]);
    expect(m.read(0x4ff8n, data.length).equals(data)).toBe(true);
    expect(m.read(0x4ff0n, 8).equals(Buffer.alloc(8))).toBe(true);
    expect(m.read(0x4ff8n + BigInt(data.length), 8).equals(Buffer.alloc(8))).toBe(true);
  });

  test('pagesTouched counts only pages that were written, not pages that were read', () => {
    const m = new SparseMemory(1n << 24n);
    m.read(0x10_0000n, 3 * PAGE_SIZE);
    expect(m.pagesTouched).toBe(0);
    m.write(0x3000n, Buffer.from([1]));
    m.write(0x3ff0n, Buffer.from([2])); // same page again
    m.write(0x9000n, Buffer.from([3]));
    expect(m.pagesTouched).toBe(2);
    expect(m.touchedPages()).toEqual([3, 9]);
  });

  test('writing zeros into an untouched page allocates nothing', () => {
    const m = new SparseMemory(1n << 20n);
    m.write(0x5000n, Buffer.alloc(PAGE_SIZE));
    m.write(0x6ff0n, Buffer.alloc(64)); // zeros across a page boundary
    expect(m.pagesTouched).toBe(0);
    expect(m.read(0x5000n, 16).equals(Buffer.alloc(16))).toBe(true);
  });

  test('a mixed write allocates only the pages that receive non-zero bytes', () => {
    const m = new SparseMemory(1n << 20n);
    const data = Buffer.alloc(PAGE_SIZE * 2);
    data[PAGE_SIZE + 7] = 0x77; // non-zero only in the second page
    m.write(0x7000n, data);
    expect(m.touchedPages()).toEqual([8]);
    expect(m.read(0x8007n, 1)[0]).toBe(0x77);
  });

  test('writing zeros into a touched page overwrites the data and keeps the page', () => {
    const m = new SparseMemory(1n << 20n);
    m.write(0x5000n, Buffer.from('ffffffff', 'hex'));
    m.write(0x5001n, Buffer.alloc(2));
    expect(m.read(0x5000n, 4).toString('hex')).toBe('ff0000ff');
    expect(m.pagesTouched).toBe(1);
  });

  test('a Uint8Array view with a non-zero byteOffset is written from the right bytes', () => {
    const m = new SparseMemory(1n << 20n);
    const backing = new Uint8Array([9, 9, 1, 2, 3, 9]);
    m.write(0x100n, backing.subarray(2, 5));
    expect(m.read(0x100n, 4).toString('hex')).toBe('01020300');
  });

  test('a 64 GiB memory with 10 touched pages holds exactly 10 pages', () => {
    const size = 64n * GiB;
    const m = new SparseMemory(size);
    expect(m.sizeBytes).toBe(0x10_0000_0000n);
    const gpas = Array.from({ length: 10 }, (_, i) => (BigInt(i) * 6n * GiB + BigInt(i) * 0x1234n) & ~7n);
    gpas[9] = size - 8n; // the very last qword
    gpas.forEach((gpa, i) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(0x0101_0101_0101_0101n * BigInt(i + 1));
      m.write(gpa, b);
    });
    expect(m.pagesTouched).toBe(10);
    expect(m.touchedPages()).toEqual(gpas.map((g) => Number(g >> 12n)).sort((a, b) => a - b));
    expect(m.touchedPages()[9]).toBe(Number(size / 4096n) - 1);
    gpas.forEach((gpa, i) => {
      expect(m.read(gpa, 8).readBigUInt64LE()).toBe(0x0101_0101_0101_0101n * BigInt(i + 1));
    });
    expect(m.read(32n * GiB + 0x800n, 8).equals(Buffer.alloc(8))).toBe(true);
  });

  test('contains: the exact bounds', () => {
    const m = new SparseMemory(0x10000n);
    expect(m.contains(0n, 0x10000)).toBe(true);
    expect(m.contains(0xfff8n, 8)).toBe(true);
    expect(m.contains(0xfff8n, 9)).toBe(false);
    expect(m.contains(0x10000n, 1)).toBe(false);
    expect(m.contains(-8n, 8)).toBe(false);
  });

  test('clear drops every page', () => {
    const m = new SparseMemory(1n << 20n);
    m.write(0x1000n, Buffer.from([1]));
    m.write(0x2000n, Buffer.from([2]));
    m.clear();
    expect(m.pagesTouched).toBe(0);
    expect(m.read(0x1000n, 1)[0]).toBe(0);
  });
});
