// The register file's change log (state/vp.ts RegisterFile): what a platform mirroring it into a
// vCPU (the KVM agent's runVp exit path) relies on to load only what changed.
import { RegisterFile } from '@vsm/core';
import { reg64 } from '@vsm/core/tlfs/registers';

const names = (f: RegisterFile, since: number): number[] => {
  const out: number[] = [];
  for (let k = since; k < f.changes; k++) out.push(f.changedName(k));
  return out;
};

describe('RegisterFile change log', () => {
  it('is a Map of register values that counts each set and delete and names them in order', () => {
    const f = new RegisterFile();
    expect(f).toBeInstanceOf(Map);
    f.set(0x20000, reg64(1n));
    const since = f.changes;
    f.set(0x20001, reg64(2n));
    f.set(0x20000, reg64(3n));
    f.delete(0x20001);
    expect(f.changes).toBe(since + 3);
    expect(f.remembersSince(since)).toBe(true);
    expect(names(f, since)).toEqual([0x20001, 0x20000, 0x20001]);
    expect(f.get(0x20000)?.low).toBe(3n);
    expect(f.has(0x20001)).toBe(false);
    // get() and iteration are the Map's own.
    expect([...f.keys()]).toEqual([0x20000]);
  });

  it('remembers the names of the latest 32 changes only, and nothing across a clear()', () => {
    const f = new RegisterFile();
    for (let i = 0; i < 32; i++) f.set(0x20000 + i, reg64(BigInt(i)));
    expect(f.remembersSince(0)).toBe(true);
    expect(names(f, 0)).toEqual(Array.from({ length: 32 }, (_, i) => 0x20000 + i));
    f.set(0x20000, reg64(99n));
    expect(f.remembersSince(0)).toBe(false);
    expect(f.remembersSince(1)).toBe(true);
    expect(names(f, 30)).toEqual([0x2001e, 0x2001f, 0x20000]);
    const before = f.changes;
    f.clear();
    expect(f.size).toBe(0);
    expect(f.remembersSince(before)).toBe(false);
    // A value never taken from `changes` (a mirror that knows nothing yet) is never remembered.
    expect(f.remembersSince(-1)).toBe(false);
  });
});
