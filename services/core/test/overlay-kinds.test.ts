// The overlay-kinds table (services/core/src/overlay-kinds.ts) drives overlay sync, the read-only
// and RsvdP rules of the overlay MSRs and snapshot validation: every row is checked here against
// what the partition does, so a new row is tested without a new test.
import { HvError, HvStatus, Partition, guestAccess, longModeContext, snapshotPartition, DEFAULT_LIMITS } from '@vsm/core';
import { validateSnapshot } from '../src/snapshot-validate';
import { OVERLAY_KINDS, OVERLAY_KIND_NAMES, type OverlayKind, isOverlayKind, overlayKindInfo, overlayKindOfRegister } from '../src/overlay-kinds';
import { msrToRegister } from '../src/tlfs/msr';
import type { CoreSnapshot } from '../src/snapshot-types';

const GUEST_OS_ID = 0x40000000;
const MiB = 1n << 20n;

function partition(): Partition {
  const p = new Partition({ id: 'ok', architecture: 'x64', vpCount: 2, memoryBytes: 16n * MiB, maximumVtl: 1, labels: {} });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  return p;
}

/** The MSR value that enables `kind` at gpfn (after the guest OS id when the kind needs one). */
function enable(p: Partition, kind: OverlayKind, gpfn: bigint, vpIndex = 0): bigint {
  const k = overlayKindInfo(kind);
  const vp = p.vp(vpIndex);
  if (k.enableNeedsGuestOsId) expect(p.writeMsr(vp, GUEST_OS_ID, 0x8100n)).toEqual({});
  const value = k.layout.pack({ enable: true, gpfn });
  expect(p.writeMsr(vp, k.msr, value)).toEqual({});
  return value;
}

test('the table is consistent with the TLFS MSR map, and kinds are recognised only by name', () => {
  for (const kind of OVERLAY_KIND_NAMES) {
    const k = OVERLAY_KINDS[kind];
    expect(msrToRegister.get(k.msr)).toBe(k.register);
    expect(overlayKindOfRegister(k.register)).toBe(kind);
  }
  expect(isOverlayKind('simp')).toBe(true);
  expect(isOverlayKind('constructor')).toBe(false);
  expect(isOverlayKind('sirbp')).toBe(false);
});

describe.each(OVERLAY_KIND_NAMES.map((k) => [k]))('%s', (kind) => {
  const k = overlayKindInfo(kind);

  test('its MSR places the page (scope and read-only as the table says) and Enable = 0 removes it', () => {
    const p = partition();
    enable(p, kind, 0x20n);
    const o = p.overlays.find(kind, 0, k.scope === 'vp' ? 0 : null);
    expect(o).toMatchObject({ kind, vtl: 0, gpfn: 0x20n, readOnly: k.readOnly, vpIndex: k.scope === 'vp' ? 0 : null });
    // VP 1 sees a partition-wide page, never another VP's.
    expect(p.overlays.visible(0, 1, 0x20n)?.kind).toBe(k.scope === 'partition' ? kind : undefined);
    // Guest writes to it fault exactly when it is read-only.
    const w = guestAccess(p, p.vp(0), 'write', 0x20000n, 4, Buffer.from([1, 2, 3, 4]));
    expect(w).toEqual(k.readOnly ? { status: 'exception', exception: 13 } : { status: 'completed' });
    expect(p.writeMsr(p.vp(0), k.msr, k.layout.pack({ enable: false, gpfn: 0x20n }))).toEqual({});
    expect(p.overlays.find(kind, 0, k.scope === 'vp' ? 0 : null)).toBeUndefined();
  });

  test('a WRMSR keeps its RsvdP bits; a host write keeps them only where every write does', () => {
    const p = partition();
    const value = enable(p, kind, 0x21n);
    const vp = p.vp(0);
    expect(p.writeMsr(vp, k.msr, value | k.rsvdP)).toEqual({});
    expect(p.readMsr(vp, k.msr).value & k.rsvdP).toBe(0n);
    p.setRegisters(vp, 0, [{ name: k.register, value: { low: value | k.rsvdP, high: 0n } }], 'host');
    expect(p.getRegister(vp, 0, k.register).low & k.rsvdP).toBe(k.rsvdPKeptBy === 'every-write' ? 0n : k.rsvdP);
  });

  test('a GPFN beyond the GPA space faults only where the table says so', () => {
    const p = partition();
    enable(p, kind, 0x22n);
    const beyond = k.layout.pack({ enable: true, gpfn: (16n * MiB) >> 12n });
    const r = p.writeMsr(p.vp(0), k.msr, beyond);
    expect(r).toEqual(k.outsideGpa === 'fault' ? { exception: 13 } : {});
  });

  test('snapshot validation: the page must be as read-only, and in the scope, the table says', () => {
    const p = partition();
    enable(p, kind, 0x23n);
    const good = snapshotPartition(p);
    expect(() => validateSnapshot(good, DEFAULT_LIMITS)).not.toThrow();
    const refused = (edit: (s: CoreSnapshot) => void, path: RegExp) => {
      const s = snapshotPartition(p);
      edit(s);
      let e: unknown;
      try {
        validateSnapshot(s, DEFAULT_LIMITS);
      } catch (x) {
        e = x;
      }
      expect(e).toBeInstanceOf(HvError);
      expect((e as HvError).status).toBe(HvStatus.HV_STATUS_INVALID_PARAMETER);
      expect((e as HvError).message).toMatch(path);
    };
    const at = good.overlays.placed.findIndex((o) => o.kind === kind);
    refused((s) => {
      s.overlays.placed[at]!.readOnly = !k.readOnly;
    }, /snapshot\.overlays\.placed\[\d+\]\.read_only/);
    refused((s) => {
      const pg = s.overlays.pages.find((x) => x.slot.startsWith(`${kind}/0/`))!;
      pg.slot = `${kind}/0/${k.scope === 'vp' ? '*' : '0'}`;
    }, /snapshot\.overlays\.pages\[\d+\]\.slot: .*(partition-wide|per VP)/);
    // The MSR that placed it must still enable it.
    refused((s) => {
      if (k.scope === 'partition') s.vtls[0]![k.field] = 0n;
      else s.vps[0]!.vtls[0]!.regs.find((r) => r.name === k.register)!.value.low = 0n;
    }, /the MSR that enables it is off/);
  });
});
