// The host facts the agent's secure MSR write intercepts rely on (issue #16; GuestRunner.
// architecturalWrmsr), checked on this KVM with a mini guest doing three WRMSRs of IA32_LSTAR:
// - a write range of KVM_X86_SET_MSR_FILTER with user-space MSR exits sends every WRMSR of that MSR
//   to user space (KVM_EXIT_X86_WRMSR with ECX, EDX:EAX), every time, RIP on the instruction;
// - completing the exit with error 0 writes nothing (the MSR keeps its value) and moves RIP past
//   the WRMSR, but only at the next KVM_RUN: a KVM_RUN with immediate_exit applies it without
//   running the guest (KVM_EXIT_INTR), so registers loaded afterwards are not moved again;
// - KVM_SET_MSRS (host-initiated) is not filtered: it performs a write the agent lets through;
// - an MSR outside the filter is written by KVM without an exit.
import { Asm, MiniGuest } from '@vsm/platform-kvm/kvm';
import { describeKvm } from '../../../test/support/kvm-gate';

const LSTAR = 0xc0000082;
const STAR = 0xc0000081;

function guest(writes: number[]): MiniGuest {
  const g = MiniGuest.create();
  g.vm.trapMsrs(undefined, undefined, writes);
  const a = new Asm().movR32Imm32('rdx', 0xffffffff).movR32Imm32('rcx', LSTAR);
  for (const v of [0x1000, 0x2000, 0x3000]) a.movR32Imm32('rax', v).wrmsr();
  // STAR (not in the filter unless asked): written by KVM.
  a.movR32Imm32('rcx', STAR).movR32Imm32('rax', 0x4000).movR32Imm32('rdx', 0x0023_0010).wrmsr().hlt();
  g.load(a.bytes());
  return g;
}

describeKvm('KVM MSR filter: what a refused WRMSR needs (real KVM)', () => {
  test('every WRMSR of a filtered MSR exits; error 0 writes nothing; immediate_exit applies the skip without running the guest', () => {
    const g = guest([LSTAR]);
    try {
      const at: bigint[] = [];
      for (let i = 0; i < 3; i++) {
        const e = g.step();
        expect(e).toMatchObject({ kind: 'wrmsr', index: LSTAR, data: 0xffff_ffff_0000_0000n | BigInt((i + 1) * 0x1000) });
        const rip = g.vcpu.getRegs().rip;
        at.push(rip);
        expect(g.vm.readGpa(rip, 2)).toEqual(Buffer.from([0x0f, 0x30])); // RIP on the WRMSR
        g.vcpu.completeMsr({ error: false });
        g.vcpu.immediateExit = true;
        expect(g.vcpu.run().kind).toBe('intr');
        g.vcpu.immediateExit = false;
        expect(g.vcpu.getRegs().rip).toBe(rip + 2n); // the skip is applied, nothing else ran
        expect(g.vcpu.getMsrs([LSTAR])[0]?.data).toBe(0n); // nothing written
      }
      expect(new Set(at).size).toBe(3);
      expect(g.step().kind).toBe('hlt'); // STAR is not filtered: no exit
      expect(g.vcpu.getMsrs([STAR])[0]?.data).toBe(0x0023_0010_0000_4000n);
    } finally {
      g.close();
    }
  });

  test('KVM_SET_MSRS performs a write the agent lets through; an MSR outside the filter never exits', () => {
    const g = guest([LSTAR]);
    try {
      const e = g.step();
      expect(e).toMatchObject({ kind: 'wrmsr', index: LSTAR });
      g.vcpu.setMsrs([{ index: LSTAR, data: 0xffff_ffff_0000_1000n }]);
      g.vcpu.completeMsr({ error: false });
      expect(g.step()).toMatchObject({ kind: 'wrmsr', data: 0xffff_ffff_0000_2000n });
      expect(g.vcpu.getMsrs([LSTAR])[0]?.data).toBe(0xffff_ffff_0000_1000n);
    } finally {
      g.close();
    }
    const free = guest([]);
    try {
      expect(free.step().kind).toBe('hlt');
      expect(free.vcpu.getMsrs([LSTAR])[0]?.data).toBe(0xffff_ffff_0000_3000n);
    } finally {
      free.close();
    }
  });
});
