// Golden values of the per-VTL local-APIC layouts (tlfs/apic.ts): IA32_APIC_BASE (SDM Vol. 3A
// §11.4.4) and the MSR numbers (TLFS synthetic MSRs; SDM §11.12.1.2 x2APIC).
import { APIC_ICR_DEFINED, ApicIcrLayout, ApicMsr, IA32_APIC_BASE_DEFINED, Ia32ApicBaseLayout, apicBaseReset, priorityClass } from '../src/tlfs/apic';

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

test('the 64-bit ICR (SDM §11.12.9): vector 7:0, delivery mode 10:8, logical 11, level 14, trigger 15, shorthand 19:18, destination 63:32', () => {
  expect(
    ApicIcrLayout.pack({
      vector: 0x44,
      deliveryMode: 0,
      logical: false,
      deliveryStatus: false,
      level: true,
      triggerLevel: false,
      shorthand: 0,
      destination: 1n,
    }),
  ).toBe(0x0000_0001_0000_4044n);
  expect(ApicIcrLayout.unpack(0xffff_ffff_000c_0530n)).toEqual({
    vector: 0x30,
    deliveryMode: 5,
    logical: false,
    deliveryStatus: false,
    level: false,
    triggerLevel: false,
    shorthand: 3,
    destination: 0xffff_ffffn,
  });
  // Reserved: 12 (delivery status, read-only), 13, 16-17, 20-31.
  expect(APIC_ICR_DEFINED).toBe(0xffff_ffff_000c_cfffn);
});
