/**
 * The port-I/O interface of the device models: what a KVM_EXIT_IO becomes. Values are unsigned and
 * `size` bytes wide (ioIn's result is masked by the caller's size; devices return it masked already).
 * No KVM, no Node-only globals: the models run on a VP's worker thread or on the main thread.
 */
export interface PortIoDevice {
  ioIn(port: number, size: 1 | 2 | 4): number;
  ioOut(port: number, size: 1 | 2 | 4, value: number): void;
}

/** All-ones of an access size: what a read of a port nobody decodes returns on the ISA bus (and in QEMU). */
export const allOnes = (size: 1 | 2 | 4): number => (size === 1 ? 0xff : size === 2 ? 0xffff : 0xffff_ffff);

/** `value` cut to `size` bytes, unsigned. */
export const mask = (value: number, size: 1 | 2 | 4): number => (size === 4 ? value >>> 0 : value & (size === 1 ? 0xff : 0xffff));
