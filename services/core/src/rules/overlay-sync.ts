// core, rules: overlay sync. An overlay page is where its MSR says (tlfs-overlays-synic.md §4.3):
// placed at the MSR's GPFN while Enable is set, removed when it is clear. Scope, read-only-ness and
// MSR layout come from the overlay-kinds table.
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Vtl } from '../vtl-array';
import { type OverlayKind, overlayEnabled, overlayGpfn, overlayKindInfo, overlayMsrName } from '../overlay-kinds';
import { PAGE_SIZE } from '../memory';
import { HvError, HvStatus } from '../tlfs/status';
import { buildHypercallPage } from '../tlfs/vsm';

/** Makes the overlay of a slot match its enabling MSR value (enabled -> placed at GPFN). */
export function syncOverlay(p: PartitionState, kind: OverlayKind, vtl: Vtl, vpIndex: number | null, msrValue: bigint): void {
  if (!overlayEnabled(kind, msrValue)) {
    p.overlays.remove(kind, vtl, vpIndex);
    return;
  }
  const info = overlayKindInfo(kind);
  const init = info.content === 'hypercall-code' ? () => hypercallPageCode(p) : undefined;
  p.overlays.place(kind, vtl, vpIndex, overlayGpfn(kind, msrValue), info.readOnly, init);
}

/** The hypercall page's bytes: the platform's code, or the emulator's (OpenVMM layout, tlfs/vsm.ts). */
export function hypercallPageCode(p: PartitionState): Buffer {
  const layout = p.spec.platform?.hypercallPage;
  return layout ? layout.build() : buildHypercallPage(p.vendor);
}

/** Refuses a GPFN beyond the GPA space for kinds where that faults (the hypercall page, §4.3). */
export function checkOverlayGpfn(p: PartitionState, kind: OverlayKind, msrValue: bigint): void {
  if (overlayKindInfo(kind).outsideGpa !== 'fault') return;
  const gpfn = overlayGpfn(kind, msrValue);
  if ((gpfn << 12n) + BigInt(PAGE_SIZE) > p.memory.sizeBytes) {
    // GPFN beyond the GPA space -> #GP on WRMSR (tlfs-hypercalls.md §1.7); as a register write
    // it is an invalid value.
    throw new HvError(HvStatus.HV_STATUS_INVALID_REGISTER_VALUE, `${overlayMsrName(kind)} GPFN 0x${gpfn.toString(16)} is outside the GPA space`);
  }
}

/** The MSR value that places overlay `kind` of (vp, vtl): partition state or the VP's private register. */
export function overlayMsrValue(p: PartitionState, kind: OverlayKind, vtl: Vtl, vp: VirtualProcessor): bigint {
  const info = overlayKindInfo(kind);
  return info.scope === 'partition' ? p.vtls.get(vtl)[info.field] : (vp.vtls.get(vtl).regs.get(info.register)?.low ?? 0n);
}
