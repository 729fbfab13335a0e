// Golden values of the per-VTL local-APIC layouts (tlfs/apic.ts): IA32_APIC_BASE (SDM Vol. 3A
// §11.4.4) and the MSR numbers (TLFS synthetic MSRs; SDM §11.12.1.2 x2APIC).
import { ApicMsr, IA32_APIC_BASE_DEFINED, Ia32ApicBaseLayout, apicBaseReset, priorityClass } from '../src/tlfs/apic';

test('IA32_APIC_BASE: BSP bit 8, EXTD bit 10, EN bit 11, base 51:12', () => {
  expect(apicBaseReset(0)).toBe(0xfee0_0900n);
  expect(apicBaseReset(1)).toBe(0xfee0_0800n);
  expect(Ia32ApicBaseLayout.unpack(0xfee0_0d00n)).toEqual({ bsp: true, extd: true, enable: true, base: 0xfee00n });
  expect(Ia32ApicBaseLayout.pack({ bsp: false, extd: true, enable: true, base: 0xfee00n })).toBe(0xfee0_0c00n);
  expect(IA32_APIC_BASE_DEFINED).toBe(0x000f_ffff_ffff_fd00n);
});

test('APIC MSR numbers and priority classes', () => {
  expect([ApicMsr.HV_X64_MSR_EOI, ApicMsr.HV_X64_MSR_ICR, ApicMsr.HV_X64_MSR_TPR]).toEqual([0x40000070, 0x40000071, 0x40000072]);
  expect([ApicMsr.X2APIC_TPR, ApicMsr.X2APIC_EOI, ApicMsr.X2APIC_ICR]).toEqual([0x808, 0x80b, 0x830]);
  expect([priorityClass(0x45), priorityClass(0x61), priorityClass(0xff)]).toEqual([4, 6, 15]);
});
