/**
 * QEMU's isa-debug-exit (hw/misc/debugexit.c) as kvm-unit-tests is run with it
 * (`-device isa-debug-exit,iobase=0xf4,iosize=0x4`; lib/x86/io.c exit(): `outl(code, 0xf4)`): a write
 * of any size to its ports ends the VM, and QEMU exits with status `(code << 1) | 1` — a test's
 * exit(0) becomes status 1 and exit(1) status 3 (kvm-unit-tests' run scripts count status 1 as a pass).
 * Reads return 0.
 */
import { type PortIoDevice, mask } from './port-io';

export const DEBUG_EXIT_PORT = 0xf4;

export interface DebugExitEvent {
  /** The value written (unsigned, the access's width). */
  code: number;
  /** QEMU's process exit status: (code << 1) | 1, as a number (may exceed 32 bits for a 32-bit code). */
  status: number;
  /** What a shell sees of that status: its low 8 bits. */
  status8: number;
}

/** QEMU's mapping of a debug-exit code to the process status. */
export function debugExitStatus(code: number): DebugExitEvent {
  const c = code >>> 0;
  const status = c * 2 + 1;
  return { code: c, status, status8: status % 256 };
}

export interface DebugExitOptions {
  /** Called on every write: `code` as written, `status` = (code << 1) | 1. */
  onExit(code: number, status: number, event: DebugExitEvent): void;
  /** First port (default 0xf4); the device covers `size` ports (default 4). */
  base?: number;
  size?: number;
}

export class DebugExit implements PortIoDevice {
  readonly base: number;
  readonly portCount: number;
  /** The last exit written, if any. */
  last: DebugExitEvent | undefined;

  constructor(private readonly opts: DebugExitOptions) {
    this.base = opts.base ?? DEBUG_EXIT_PORT;
    this.portCount = opts.size ?? 4;
  }

  ioIn(): number {
    return 0;
  }

  ioOut(_port: number, size: 1 | 2 | 4, value: number): void {
    const e = debugExitStatus(mask(value, size));
    this.last = e;
    this.opts.onExit(e.code, e.status, e);
  }
}
