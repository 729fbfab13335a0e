// The hypercall-page CALL is the core's for both engines (issue #18): an engine only reports what
// the page's code did (HypercallPageCode); the core decides the caller's RIP, pendingStubReturn and
// the outcome. A scripted engine stands in for the KVM one here.
import {
  type HypercallPageCode,
  type HypercallPageEvent,
  HvMsr,
  HvRegisterName as R,
  Partition,
  X64Exception,
  callHypercallPage,
  longModeContext,
} from '@vsm/core';

const PAGE = 0x10000n;
const CALLER_RIP = 0x4000n;

function partition(): { p: Partition; vp: Partition['vps'][number] } {
  const p = new Partition({ id: 't', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 1, labels: {} });
  p.enablePartitionVtl('host', 1, 0);
  p.enableVpVtl('host', 0, 1, longModeContext());
  const vp = p.vps[0]!;
  p.writeMsr(vp, HvMsr.HV_X64_MSR_GUEST_OS_ID, 1n);
  p.writeMsr(vp, HvMsr.HV_X64_MSR_HYPERCALL, PAGE | 1n);
  p.setReg(vp, R.HvX64RegisterRip, CALLER_RIP);
  return { p, vp };
}

/** An engine that reports `events` in order, running `before` of each first (the page's code changing registers). */
function scripted(
  events: { before?: () => void; event: HypercallPageEvent }[],
  seen: { entry?: bigint; runs: number },
): (pageGpa: bigint, entry: bigint) => HypercallPageCode {
  return (_pageGpa, entry) => {
    seen.entry = entry;
    return {
      run: () => {
        const next = events[seen.runs++];
        if (!next) throw new Error('the core ran the page past its last event');
        next.before?.();
        return next.event;
      },
    };
  };
}

test("a RET reported by the engine returns to the caller's RIP with the registers the code left", () => {
  const { p, vp } = partition();
  const seen: { entry?: bigint; runs: number } = { runs: 0 };
  const o = callHypercallPage(p, vp, 0x20, scripted([{ before: () => p.setReg(vp, R.HvX64RegisterRax, 0x55n), event: { kind: 'return' } }], seen));
  expect(seen.entry).toBe(PAGE + 0x20n);
  expect(o).toEqual({ activeVtl: 0, rax: 0x55n });
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(CALLER_RIP);
  expect(vp.vtls.get(0).pendingStubReturn).toBeNull();
});

test("an exception reported by the engine leaves the caller's RIP and is the outcome", () => {
  const { p, vp } = partition();
  const o = callHypercallPage(p, vp, 0x800, scripted([{ event: { kind: 'exception', vector: X64Exception.BP } }], { runs: 0 }));
  expect(o.exception).toBe(X64Exception.BP);
  expect(o.activeVtl).toBe(0);
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(CALLER_RIP);
  expect(vp.vtls.get(0).pendingStubReturn).toBeNull();
});

test('a hypercall that completes in the VTL lets the code run on; its dispatcher gets the call site', () => {
  const { p, vp } = partition();
  p.setReg(vp, R.HvX64RegisterRax, 0xa0n);
  p.setReg(vp, R.HvX64RegisterRcx, 0xc0n);
  const seen = { runs: 0 };
  const code = scripted([{ event: { kind: 'hypercall', rip: PAGE + 0x30n } }, { event: { kind: 'return' } }], seen);
  const sites: unknown[] = [];
  const ripAtDispatch: bigint[] = [];
  const o = callHypercallPage(p, vp, 0x2e, (g, e) => ({
    ...code(g, e),
    dispatch: (site) => {
      sites.push(site);
      ripAtDispatch.push(p.reg(vp, R.HvX64RegisterRip));
      expect(vp.vtls.get(0).pendingStubReturn).toBe(CALLER_RIP);
      return { activeVtl: 0, resultValue: 0n };
    },
  }));
  expect(sites).toEqual([{ rax: 0xa0n, rcx: 0xc0n }]);
  expect(ripAtDispatch).toEqual([PAGE + 0x30n]);
  expect(seen.runs).toBe(2);
  expect(o.vtlSwitch).toBeUndefined();
  expect(p.reg(vp, R.HvX64RegisterRip)).toBe(CALLER_RIP);
  expect(vp.vtls.get(0).pendingStubReturn).toBeNull();
});

test("a VtlCall from the engine's hypercall parks the caller on the stub's RET with its RIP to return to", () => {
  const { p, vp } = partition();
  const seen = { runs: 0 };
  // The page's code as the 64-bit VtlCall stub leaves the registers: RAX = 0 (control input), RCX = 0x11.
  const before = () => {
    p.setReg(vp, R.HvX64RegisterRax, 0n);
    p.setReg(vp, R.HvX64RegisterRcx, 0x11n);
  };
  const o = callHypercallPage(p, vp, 0x0f, scripted([{ before, event: { kind: 'hypercall', rip: PAGE + 0x17n } }], seen));
  expect(o.vtlSwitch?.toVtl).toBe(1);
  expect(o.activeVtl).toBe(1);
  expect(seen.runs).toBe(1);
  // VTL0 stays on the RET after the 3-byte hypercall instruction; it returns to CALLER_RIP when resumed.
  expect(p.getRegister(vp, 0, R.HvX64RegisterRip).low).toBe(PAGE + 0x17n + 3n);
  expect(vp.vtls.get(0).pendingStubReturn).toBe(CALLER_RIP);
});
