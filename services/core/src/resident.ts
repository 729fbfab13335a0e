// core: the process-wide account of resident guest RAM. One instance is owned by the
// PartitionManager and shared by every partition's memory; a write that would allocate beyond the
// limit is refused (HV_STATUS_INSUFFICIENT_MEMORY) before anything is allocated or written.
import { HvError, HvStatus } from './tlfs/status';

export class ResidentMemory {
  private used = 0;
  /** Bytes allowed (Infinity: no cap). */
  readonly limit: number;

  constructor(limitBytes?: bigint) {
    this.limit = limitBytes === undefined ? Infinity : Number(limitBytes);
  }

  get usedBytes(): number {
    return this.used;
  }
  get availableBytes(): number {
    return Math.max(0, this.limit - this.used);
  }

  /** Throws HV_STATUS_INSUFFICIENT_MEMORY when `bytes` more would exceed the limit. Counts nothing. */
  check(bytes: number, what: string): void {
    if (bytes > 0 && this.used + bytes > this.limit) {
      throw new HvError(
        HvStatus.HV_STATUS_INSUFFICIENT_MEMORY,
        `${what} needs ${bytes} more bytes of guest RAM; the service-wide limit is ${this.limit} bytes and ${this.used} are resident (--max-resident-bytes)`,
      );
    }
  }

  /** Counts `bytes` (after check()); throws like check() when they do not fit. */
  reserve(bytes: number, what: string): void {
    this.check(bytes, what);
    this.used += bytes;
  }

  release(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }
}
