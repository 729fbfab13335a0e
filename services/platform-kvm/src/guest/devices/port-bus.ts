/**
 * The port-I/O address space (0..0xffff): ranges mapped to devices, as QEMU's address_space_io. An
 * access is given to the device whose range holds its first port; a port nobody maps reads all-ones
 * and ignores writes (QEMU's unassigned_io_ops), counted in `unknown`. O(1) lookup (one table entry per port).
 */
import { type PortIoDevice, allOnes, mask } from './port-io';

export interface PortRange {
  /** First port. */
  from: number;
  /** Last port, inclusive. */
  to: number;
  device: PortIoDevice;
  /** For diagnostics (default "from-to"). */
  name?: string;
}

export interface UnknownPortAccesses {
  reads: number;
  writes: number;
  /** Accesses per port (reads + writes), for the ports seen. */
  byPort: Map<number, number>;
  /** The most recent one. */
  last?: { port: number; size: 1 | 2 | 4; direction: 'in' | 'out'; value?: number };
}

export class PortBus implements PortIoDevice {
  private readonly table = new Int16Array(0x10000).fill(-1);
  private readonly ranges: Required<PortRange>[] = [];
  readonly unknown: UnknownPortAccesses = { reads: 0, writes: 0, byPort: new Map() };

  constructor(ranges: readonly PortRange[] = []) {
    for (const r of ranges) this.add(r);
  }

  /** Maps [from, to] to a device; a range that overlaps a mapped one is refused (RangeError). */
  add(r: PortRange): this {
    const { from, to } = r;
    if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > 0xffff || from > to)
      throw new RangeError(`PortBus: bad port range ${from}..${to}`);
    const name = r.name ?? `0x${from.toString(16)}-0x${to.toString(16)}`;
    for (let p = from; p <= to; p++) {
      const i = this.table[p]!;
      if (i >= 0) throw new RangeError(`PortBus: ${name} overlaps ${this.ranges[i]!.name} at port 0x${p.toString(16)}`);
    }
    if (this.ranges.length >= 0x7fff) throw new RangeError('PortBus: too many ranges');
    const index = this.ranges.push({ from, to, device: r.device, name }) - 1;
    this.table.fill(index, from, to + 1);
    return this;
  }

  /** The device mapped at `port`, if any. */
  deviceAt(port: number): PortIoDevice | undefined {
    const i = this.table[port & 0xffff]!;
    return i >= 0 ? this.ranges[i]!.device : undefined;
  }

  /** The mapped ranges, in the order added. */
  mapped(): readonly Readonly<Required<PortRange>>[] {
    return this.ranges;
  }

  ioIn(port: number, size: 1 | 2 | 4): number {
    const d = this.deviceAt(port);
    if (d) return mask(d.ioIn(port, size), size);
    this.miss(port, size, 'in');
    return allOnes(size);
  }

  ioOut(port: number, size: 1 | 2 | 4, value: number): void {
    const d = this.deviceAt(port);
    if (d) d.ioOut(port, size, mask(value, size));
    else this.miss(port, size, 'out', mask(value, size));
  }

  private miss(port: number, size: 1 | 2 | 4, direction: 'in' | 'out', value?: number): void {
    if (direction === 'in') this.unknown.reads++;
    else this.unknown.writes++;
    this.unknown.byPort.set(port, (this.unknown.byPort.get(port) ?? 0) + 1);
    this.unknown.last = value === undefined ? { port, size, direction } : { port, size, direction, value };
  }
}
