/**
 * Smoke test of the raw exit benchmark (tiny iteration counts; asserts shape, not speed).
 */
import { measureRawExits } from '../src/agent/rawbench';

import { describeKvm } from '../../test/support/kvm-gate';

describeKvm('measureRawExits', () => {
  it('measures every exit loop', () => {
    const r = measureRawExits({ iterations: 200, warmup: 20 });
    expect(r.iterations).toBe(200);
    expect(r.host.apiVersion).toBe(12);
    for (const loop of [r.pio, r.wrmsr, r.rdmsr, r.mmio, r.mmioReadOnly, r.pioGetRegs, r.pioSyncRegs, r.getRegsIoctl, r.memslotToggle]) {
      expect(loop.exits).toBe(200);
      expect(loop.exitsPerSec).toBeGreaterThan(0);
      expect(loop.medianUs).toBeGreaterThan(0);
      expect(loop.p99Us).toBeGreaterThanOrEqual(loop.medianUs);
    }
  });
});
