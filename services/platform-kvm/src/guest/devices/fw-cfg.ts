/**
 * QEMU's fw_cfg, legacy port interface (docs/specs/fw_cfg.rst in QEMU; x86 ports 0x510/0x511):
 * a 16-bit write to the selector port 0x510 picks an item and rewinds it; each 8-bit read of the data
 * port 0x511 (or of 0x510) returns the item's next byte, 0 past its end or for an item that does not
 * exist. 8-bit writes (the old data-write interface) are ignored, as in QEMU >= 2.4; other access sizes
 * are not valid on these ports (reads return all-ones, writes are ignored). No DMA interface (FW_CFG_ID
 * says so).
 *
 * Items: those kvm-unit-tests reads (lib/x86/fwcfg.c: FW_CFG_NB_CPUS, FW_CFG_RAM_SIZE, FW_CFG_MAX_RAM),
 * plus the ones QEMU's x86 machines always have. FW_CFG_MAX_RAM (0x11) is kvm-unit-tests' bare-metal
 * dummy, not a QEMU item: it reads as 0 (= no limit), as do all keys not listed.
 */
import { type PortIoDevice, allOnes } from './port-io';

export const FW_CFG_PORT_SEL = 0x510;
export const FW_CFG_PORT_DATA = 0x511;

/** Item keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h; kvm-unit-tests lib/x86/fwcfg.h). */
export const FW_CFG = {
  SIGNATURE: 0x00,
  ID: 0x01,
  UUID: 0x02,
  RAM_SIZE: 0x03,
  NOGRAPHIC: 0x04,
  NB_CPUS: 0x05,
  MACHINE_ID: 0x06,
  KERNEL_ADDR: 0x07,
  KERNEL_SIZE: 0x08,
  KERNEL_CMDLINE: 0x09,
  INITRD_ADDR: 0x0a,
  INITRD_SIZE: 0x0b,
  BOOT_DEVICE: 0x0c,
  NUMA: 0x0d,
  BOOT_MENU: 0x0e,
  MAX_CPUS: 0x0f,
  /** kvm-unit-tests' dummy for bare metal (MEMLIMIT); not a QEMU item. */
  MAX_RAM: 0x11,
  /** Bit 14 marks a write selector, bit 15 an architecture-specific item. */
  WRITE_CHANNEL: 0x4000,
  ARCH_LOCAL: 0x8000,
  INVALID: 0xffff,
} as const;

/** FW_CFG_ID bits: the traditional (port) interface; bit 1 would be DMA. */
export const FW_CFG_VERSION = 0x01;

export interface FwCfgOptions {
  /** FW_CFG_RAM_SIZE. */
  ramBytes: bigint;
  /** FW_CFG_NB_CPUS (1..65535). */
  cpus: number;
  /** FW_CFG_MAX_CPUS (default cpus). */
  maxCpus?: number;
  /** More items, or replacements, by key. */
  items?: ReadonlyMap<number, Uint8Array>;
}

const le = (n: number, v: bigint): Uint8Array => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return b;
};

export class FwCfg implements PortIoDevice {
  readonly base = FW_CFG_PORT_SEL;
  readonly portCount = 2;
  private readonly items = new Map<number, Uint8Array>();
  private current: Uint8Array | undefined;
  private offset = 0;
  /** The selected key (FW_CFG.INVALID after a key that has no item, as QEMU's cur_entry). */
  selected: number = FW_CFG.INVALID;

  constructor(o: FwCfgOptions) {
    if (typeof o.ramBytes !== 'bigint' || o.ramBytes < 0n || o.ramBytes >= 1n << 64n) throw new RangeError('FwCfg: ramBytes must be a bigint in [0, 2^64)');
    const maxCpus = o.maxCpus ?? o.cpus;
    if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > 0xffff) throw new RangeError('FwCfg: cpus must be an integer 1..65535');
    if (!Number.isInteger(maxCpus) || maxCpus < o.cpus || maxCpus > 0xffff) throw new RangeError('FwCfg: maxCpus must be an integer cpus..65535');
    this.items.set(FW_CFG.SIGNATURE, Uint8Array.of(0x51, 0x45, 0x4d, 0x55)); // "QEMU"
    this.items.set(FW_CFG.ID, le(4, BigInt(FW_CFG_VERSION)));
    this.items.set(FW_CFG.UUID, new Uint8Array(16));
    this.items.set(FW_CFG.RAM_SIZE, le(8, o.ramBytes));
    this.items.set(FW_CFG.NOGRAPHIC, le(2, 1n));
    this.items.set(FW_CFG.NB_CPUS, le(2, BigInt(o.cpus)));
    this.items.set(FW_CFG.BOOT_MENU, le(2, 0n));
    this.items.set(FW_CFG.MAX_CPUS, le(2, BigInt(maxCpus)));
    // x86 FW_CFG_NUMA: u64 node count (0), then one u64 node per possible CPU (0) — QEMU's layout without NUMA nodes
    this.items.set(FW_CFG.NUMA, new Uint8Array(8 * (1 + maxCpus)));
    for (const [k, v] of o.items ?? []) this.items.set(k & 0xffff, Uint8Array.from(v));
  }

  /** Selects `key` and rewinds it (what a 16-bit write to 0x510 does). */
  select(key: number): void {
    key &= 0xffff;
    this.offset = 0;
    this.current = this.items.get(key & ~FW_CFG.WRITE_CHANNEL);
    this.selected = this.current ? key : FW_CFG.INVALID;
  }

  /** The next byte of the selected item, 0 past its end or without one (an 8-bit read of 0x511). */
  readByte(): number {
    const c = this.current;
    if (!c || this.offset >= c.length) return 0;
    return c[this.offset++]!;
  }

  ioIn(port: number, size: 1 | 2 | 4): number {
    if (size !== 1 || (port !== FW_CFG_PORT_SEL && port !== FW_CFG_PORT_DATA)) return allOnes(size);
    return this.readByte();
  }

  ioOut(port: number, size: 1 | 2 | 4, value: number): void {
    if (size === 2 && port === FW_CFG_PORT_SEL) this.select(value);
    // 8-bit data writes: ignored (read-only items, as QEMU >= 2.4); other sizes/ports: not valid, ignored
  }
}
