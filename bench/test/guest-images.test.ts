// The guest-run suite's flat images (lib/guest-images.ts), checked without KVM: the loops' instruction
// bytes, and the HvCallEnableVpVtl input the VTL guest carries (decoded with the core's layout), whose
// VTL1 context must be the boot plan's long64 state.
import { decodeEnableVpVtlInput } from '@vsm/core/tlfs/vsm';
import { parseGuestImage, planBoot } from '@vsm/platform-kvm';
import { DEBUG_EXIT_PORT, FLAT_GPA, VG, bootState, vtlImage, wrmsrImage } from '../src/lib/guest-images';

const MiB = 1n << 20n;

describe('wrmsrImage', () => {
  test('loads the MSR, the guest OS id and the count, loops on wrmsr; dec ebx; jnz, then writes 0 to the debug-exit port', () => {
    const img = wrmsrImage(0x1234);
    expect(img.subarray(0, 20).toString('hex')).toBe(
      [
        'b900000040', // mov ecx, 0x40000000 (HV_X64_MSR_GUEST_OS_ID)
        'b801000000', // mov eax, 1
        'ba00000081', // mov edx, 0x81000000
        'bb34120000', // mov ebx, 0x1234
      ].join(''),
    );
    expect(img.subarray(20, 24).toString('hex')).toBe('0f30ffcb'); // wrmsr; dec ebx
    expect(img[24]).toBe(0x75); // jnz back to the wrmsr
    expect(img[25]! - 256 + 26).toBe(20);
    const out = img.indexOf(Buffer.from([0xe7, DEBUG_EXIT_PORT])); // out 0xf4, eax
    expect(out).toBeGreaterThan(25);
  });
});

describe('vtlImage', () => {
  const img = vtlImage(5, 64n * MiB);

  test('is one flat image covering code, both hypercall pages, the input and the VTL1 stack', () => {
    expect(img.length).toBe(VG.size);
    expect(() => parseGuestImage(img, { format: 'flat', loadGpa: FLAT_GPA, entryMode: 'long64' })).not.toThrow();
    // VTL1's code starts with its own guest OS id write.
    expect(img.subarray(Number(VG.vtl1Code - FLAT_GPA), Number(VG.vtl1Code - FLAT_GPA) + 5).toString('hex')).toBe('b900000040');
  });

  test("the HvCallEnableVpVtl input asks for VTL1 on VP 0 of this partition, starting at VTL1's code on the boot plan's long64 state", () => {
    const at = Number(VG.input - FLAT_GPA);
    const input = decodeEnableVpVtlInput(img.subarray(at, at + 240));
    const { bsp } = planBoot(parseGuestImage(img, { format: 'flat', loadGpa: FLAT_GPA, entryMode: 'long64' }), { memoryBytes: 64n * MiB, vpCount: 1 });
    expect(input).toMatchObject({ targetPartitionId: 0xffff_ffff_ffff_ffffn, vpIndex: 0, targetVtl: 1 });
    const c = input.vpVtlContext;
    expect(c).toMatchObject({ rip: VG.vtl1Code, rsp: VG.vtl1StackTop, rflags: 2n, cr0: bsp.cr0, cr3: bsp.cr3, cr4: bsp.cr4, efer: bsp.efer });
    expect(c.gdtr).toEqual({ base: bsp.gdt!.base, limit: bsp.gdt!.limit });
    expect(c.cs).toMatchObject({ selector: 0x08, attributes: 0xa09b });
    expect(c.ss).toMatchObject({ selector: 0x10, attributes: 0xc093 });
    expect(c.tr).toMatchObject({ base: bsp.segments.tr!.base, selector: bsp.segments.tr!.selector, attributes: 0x8b });
    expect(bootState(64n * MiB).cr3).toBe(bsp.cr3);
  });
});
