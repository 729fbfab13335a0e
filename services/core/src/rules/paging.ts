// core, rules: the x64 page walk of one VTL of a VP, as the processor (and the hypervisor, for
// HvCallTranslateVirtualAddress) performs it with that VTL's paging state: CR0.PG/WP, CR3, CR4.PSE/
// PAE/SMEP/SMAP/LA57, EFER.LMA/NXE, RFLAGS.AC and the VTL's CPL. The page tables are read (and, with
// setPageTableBits, the accessed/dirty bits written) through that VTL's view of guest memory. Intel
// SDM vol. 3 §4 (paging modes, access rights); the result codes are HV_TRANSLATE_GVA_RESULT_CODE
// (tlfs/translate.ts), mapped as OpenVMM's virt_support_x86emu translate does (a non-canonical GVA or
// a reserved bit -> InvalidPageTableFlags, a table outside RAM -> GpaUnmapped).
import type { PartitionState } from '../state/partition';
import type { VirtualProcessor } from '../state/vp';
import type { Vtl } from '../vtl-array';
import { HvRegisterName as R, segmentDpl } from '../tlfs/registers';
import { HvTranslateGvaResultCode as C, type HvTranslateGvaResultCodeValue } from '../tlfs/translate';
import { HvCacheType } from '../tlfs/message';
import { readView, writeView } from './memory-view';

const CR0_PG = 1n << 31n;
const CR0_WP = 1n << 16n;
const CR4_PSE = 1n << 4n;
const CR4_PAE = 1n << 5n;
const CR4_LA57 = 1n << 12n;
const CR4_SMEP = 1n << 20n;
const CR4_SMAP = 1n << 21n;
const EFER_LMA = 1n << 10n;
const EFER_NXE = 1n << 11n;
const RFLAGS_AC = 1n << 18n;

const P = 1n; // present
const RW = 2n; // writable
const US = 4n; // user
const PWT = 8n;
const PCD = 16n;
const A = 32n; // accessed
const D = 64n; // dirty
const PS = 128n; // page size (PDE/PDPTE), PAT (PTE)
const NX = 1n << 63n;
/** Physical address bits this model implements (MAXPHYADDR): bits above are reserved in entries. */
const MAXPHYADDR = 52n;
const ADDR_MASK_64 = ((1n << MAXPHYADDR) - 1n) & ~0xfffn;

export type TranslateAccess = 'read' | 'write' | 'execute';

export interface TranslateRequest {
  /** Which rights the walk checks (none: the walk only, as HvCallTranslateVirtualAddress without VALIDATE flags). */
  access: readonly TranslateAccess[];
  /** User or supervisor access (default: from the VTL's CPL, 3 = user). */
  mode?: 'user' | 'supervisor';
  /** No user/supervisor, SMEP or SMAP checks (HV_TRANSLATE_GVA_PRIVILEGE_EXEMPT). */
  privilegeExempt?: boolean;
  /** Set the accessed bits of every entry used and the dirty bit for a write (HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS). */
  setPageTableBits?: boolean;
  /** SMAP: enforce as for an implicit supervisor access / EFLAGS.AC = 0 (ENFORCE_SMAP), or never (OVERRIDE_SMAP). */
  smap?: 'enforce' | 'override';
}

export type TranslateResult =
  | { code: typeof C.HvTranslateGvaSuccess; gpa: bigint; cacheType: number; paging: boolean }
  | { code: Exclude<HvTranslateGvaResultCodeValue, typeof C.HvTranslateGvaSuccess> };

/** The VTL's register (its private file, or the VP's shared one). */
function regOf(vp: VirtualProcessor, vtl: Vtl, name: number): bigint {
  return (vp.vtls.get(vtl).syncRegs(name).get(name) ?? vp.shared.get(name))?.low ?? 0n;
}

/** CPL of the VTL from its CS.DPL. */
export function cplOf(vp: VirtualProcessor, vtl: Vtl): number {
  const cs = vp.vtls.get(vtl).regs.get(R.HvX64RegisterCs);
  return cs ? segmentDpl(Number((cs.high >> 48n) & 0xffffn)) : 0;
}

/** Whether paging is on for the VTL (CR0.PG). */
export function pagingEnabled(vp: VirtualProcessor, vtl: Vtl): boolean {
  return (regOf(vp, vtl, R.HvX64RegisterCr0) & CR0_PG) !== 0n;
}

/**
 * Walks the page tables of VTL `vtl` of `vp` for `gva`. Paging off: the GVA is the GPA (truncated to
 * 32 bits), write-back, no checks. The rights of every level are combined (writable and user only if
 * every level says so; no-execute if any level says so, with EFER.NXE) and checked against the request.
 */
export function translateGva(p: PartitionState, vp: VirtualProcessor, vtl: Vtl, gva: bigint, req: TranslateRequest): TranslateResult {
  const cr0 = regOf(vp, vtl, R.HvX64RegisterCr0);
  const cr4 = regOf(vp, vtl, R.HvX64RegisterCr4);
  const efer = regOf(vp, vtl, R.HvX64RegisterEfer);
  gva = BigInt.asUintN(64, gva);
  if ((cr0 & CR0_PG) === 0n) return { code: C.HvTranslateGvaSuccess, gpa: gva & 0xffff_ffffn, cacheType: HvCacheType.HvCacheTypeWriteBack, paging: false };
  const nxe = (efer & EFER_NXE) !== 0n;
  const read = (gpa: bigint, size: 4 | 8): bigint | undefined => {
    if (gpa + BigInt(size) > p.memory.sizeBytes) return undefined;
    const b = readView(p, vtl, vp.index, gpa, size);
    return size === 8 ? b.readBigUInt64LE(0) : BigInt(b.readUInt32LE(0));
  };
  /** Entries used, for the accessed/dirty bits: [gpa, size, value, isLeaf]. */
  const used: [bigint, 4 | 8, bigint, boolean][] = [];
  let writable = true;
  let user = true;
  let noExec = false;
  let gpa: bigint;
  let pat: bigint; // PAT index bits from the leaf: PAT, PCD, PWT
  const take = (e: bigint) => {
    writable &&= (e & RW) !== 0n;
    user &&= (e & US) !== 0n;
    if (nxe && (e & NX) !== 0n) noExec = true;
  };
  const patIndex = (e: bigint, patBit: bigint) => ((e & patBit) !== 0n ? 4n : 0n) | ((e & PCD) !== 0n ? 2n : 0n) | ((e & PWT) !== 0n ? 1n : 0n);

  if ((efer & EFER_LMA) !== 0n) {
    // IA-32e paging: 4 levels (48-bit GVA) or 5 (CR4.LA57, 57-bit).
    const levels = (cr4 & CR4_LA57) !== 0n ? 5 : 4;
    const vaBits = BigInt(12 + 9 * levels);
    const sign = gva >> (vaBits - 1n);
    if (sign !== 0n && sign !== (1n << (65n - vaBits)) - 1n) return { code: C.HvTranslateGvaInvalidPageTableFlags }; // non-canonical
    // Reserved in every 64-bit entry: address bits above MAXPHYADDR (51:MAXPHYADDR), NX without EFER.NXE.
    const rsvd = (e: bigint) => (e & (((1n << 63n) - 1n) & ~((1n << MAXPHYADDR) - 1n))) !== 0n || (!nxe && (e & NX) !== 0n);
    let table = regOf(vp, vtl, R.HvX64RegisterCr3) & ADDR_MASK_64;
    for (let level = levels; ; level--) {
      const shift = BigInt(12 + 9 * (level - 1));
      const at = table + ((gva >> shift) & 0x1ffn) * 8n;
      const e = read(at, 8);
      if (e === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
      if ((e & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
      if (rsvd(e)) return { code: C.HvTranslateGvaInvalidPageTableFlags };
      take(e);
      const large = level <= 3 && level >= 2 && (e & PS) !== 0n;
      if (level >= 4 && (e & PS) !== 0n) return { code: C.HvTranslateGvaInvalidPageTableFlags }; // PS is reserved in PML5E/PML4E
      if (level === 1 || large) {
        used.push([at, 8, e, true]);
        if (large) {
          const pageMask = (1n << shift) - 1n;
          // Bits 12 (PAT) .. shift-1 of the frame: bits 13..shift-1 are reserved.
          if ((e & pageMask & ~0x1fffn) !== 0n) return { code: C.HvTranslateGvaInvalidPageTableFlags };
          gpa = (e & ADDR_MASK_64 & ~pageMask) | (gva & pageMask);
          pat = patIndex(e, 1n << 12n);
        } else {
          gpa = (e & ADDR_MASK_64) | (gva & 0xfffn);
          pat = patIndex(e, PS);
        }
        break;
      }
      used.push([at, 8, e, false]);
      table = e & ADDR_MASK_64;
    }
  } else if ((cr4 & CR4_PAE) !== 0n) {
    // PAE paging: 32-bit GVA, PDPTE (no rights bits), PDE, PTE.
    gva &= 0xffff_ffffn;
    const pdpteAt = (regOf(vp, vtl, R.HvX64RegisterCr3) & 0xffff_ffe0n) + ((gva >> 30n) & 3n) * 8n;
    const pdpte = read(pdpteAt, 8);
    if (pdpte === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
    if ((pdpte & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
    if ((pdpte & 0x1e6n) !== 0n || (pdpte & ~((1n << MAXPHYADDR) - 1n)) !== 0n) return { code: C.HvTranslateGvaInvalidPageTableFlags };
    const rsvd = (e: bigint) => (e & (((1n << 63n) - 1n) & ~((1n << MAXPHYADDR) - 1n))) !== 0n || (!nxe && (e & NX) !== 0n);
    const pdeAt = (pdpte & ADDR_MASK_64) + ((gva >> 21n) & 0x1ffn) * 8n;
    const pde = read(pdeAt, 8);
    if (pde === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
    if ((pde & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
    if (rsvd(pde)) return { code: C.HvTranslateGvaInvalidPageTableFlags };
    take(pde);
    if ((pde & PS) !== 0n) {
      if ((pde & 0x1fe000n) !== 0n) return { code: C.HvTranslateGvaInvalidPageTableFlags };
      used.push([pdeAt, 8, pde, true]);
      gpa = (pde & ADDR_MASK_64 & ~0x1f_ffffn) | (gva & 0x1f_ffffn);
      pat = patIndex(pde, 1n << 12n);
    } else {
      used.push([pdeAt, 8, pde, false]);
      const pteAt = (pde & ADDR_MASK_64) + ((gva >> 12n) & 0x1ffn) * 8n;
      const pte = read(pteAt, 8);
      if (pte === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
      if ((pte & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
      if (rsvd(pte)) return { code: C.HvTranslateGvaInvalidPageTableFlags };
      take(pte);
      used.push([pteAt, 8, pte, true]);
      gpa = (pte & ADDR_MASK_64) | (gva & 0xfffn);
      pat = patIndex(pte, PS);
    }
  } else {
    // 32-bit paging: 4-byte PDE (4 MiB pages with CR4.PSE; bits 20:13 reserved then, PSE-36 not
    // modelled) and PTE; no NX.
    gva &= 0xffff_ffffn;
    const pdeAt = (regOf(vp, vtl, R.HvX64RegisterCr3) & 0xffff_f000n) + (gva >> 22n) * 4n;
    const pde = read(pdeAt, 4);
    if (pde === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
    if ((pde & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
    take(pde);
    if ((pde & PS) !== 0n && (cr4 & CR4_PSE) !== 0n) {
      if ((pde & 0x3fe000n) !== 0n) return { code: C.HvTranslateGvaInvalidPageTableFlags };
      used.push([pdeAt, 4, pde, true]);
      gpa = (pde & 0xffc0_0000n) | (gva & 0x3f_ffffn);
      pat = patIndex(pde, 1n << 12n);
    } else {
      used.push([pdeAt, 4, pde, false]);
      const pteAt = (pde & 0xffff_f000n) + ((gva >> 12n) & 0x3ffn) * 4n;
      const pte = read(pteAt, 4);
      if (pte === undefined) return { code: C.HvTranslateGvaGpaUnmapped };
      if ((pte & P) === 0n) return { code: C.HvTranslateGvaPageNotPresent };
      take(pte);
      used.push([pteAt, 4, pte, true]);
      gpa = (pte & 0xffff_f000n) | (gva & 0xfffn);
      pat = patIndex(pte, PS);
    }
  }

  // Access rights (SDM vol. 3 §4.6).
  if (!req.privilegeExempt) {
    const userMode = (req.mode ?? (cplOf(vp, vtl) === 3 ? 'user' : 'supervisor')) === 'user';
    const wp = (cr0 & CR0_WP) !== 0n;
    for (const a of req.access) {
      if (userMode) {
        if (!user) return { code: C.HvTranslateGvaPrivilegeViolation };
        if (a === 'write' && !writable) return { code: C.HvTranslateGvaPrivilegeViolation };
      } else {
        if (a === 'write' && !writable && wp) return { code: C.HvTranslateGvaPrivilegeViolation };
        if (a === 'execute' && user && (cr4 & CR4_SMEP) !== 0n) return { code: C.HvTranslateGvaPrivilegeViolation };
        if (a !== 'execute' && user && (cr4 & CR4_SMAP) !== 0n) {
          const blocked = req.smap === 'override' ? false : req.smap === 'enforce' ? true : (regOf(vp, vtl, R.HvX64RegisterRflags) & RFLAGS_AC) === 0n;
          if (blocked) return { code: C.HvTranslateGvaPrivilegeViolation };
        }
      }
      if (a === 'execute' && noExec) return { code: C.HvTranslateGvaPrivilegeViolation };
    }
  } else {
    for (const a of req.access) {
      if (a === 'execute' && noExec) return { code: C.HvTranslateGvaPrivilegeViolation };
      if (a === 'write' && !writable && (cr0 & CR0_WP) !== 0n) return { code: C.HvTranslateGvaPrivilegeViolation };
    }
  }

  if (req.setPageTableBits) {
    const dirty = req.access.includes('write');
    for (const [at, size, e, leaf] of used) {
      const next = e | A | (leaf && dirty ? D : 0n);
      if (next === e) continue;
      const b = Buffer.alloc(size);
      if (size === 8) b.writeBigUInt64LE(next);
      else b.writeUInt32LE(Number(next & 0xffff_ffffn));
      writeView(p, vtl, vp.index, at, b);
    }
  }
  // Cache type: the PAT entry the leaf selects (PAT MSR of the VTL; reset value 0x0007040600070406).
  const patMsr = regOf(vp, vtl, R.HvX64RegisterPat) || 0x0007040600070406n;
  const cacheType = Number((patMsr >> (pat * 8n)) & 0xffn);
  return { code: C.HvTranslateGvaSuccess, gpa, cacheType, paging: true };
}
