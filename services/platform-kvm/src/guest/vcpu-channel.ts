/**
 * platform (kvm), guests that run: the shared memory between the agent's main thread and the thread
 * of one VP (vcpu-thread.ts). The VP's thread calls KVM_RUN in a loop; an exit it cannot finish by
 * itself is handed to the main thread (which owns the core) through these cells, and the VP's thread
 * waits (Atomics.wait) until the main thread answered. Handing an exit over costs no message: the
 * main thread reads the exit from the vCPU's kvm_run page (the same memory) and completes it there.
 *
 * Exits the VP's thread finishes alone (no hand-over): COM1 transmit (THR) and line-status (LSR)
 * reads while the UART's divisor latch is off, which are all of a guest's console output.
 */

/** Int32 cells of a VP's channel. */
export const CELL = {
  /** Exits handed to the main thread so far (the VP's thread increments it and notifies). */
  request: 0,
  /** Exits the main thread answered (it sets it to `request` and notifies). */
  answer: 1,
  /** What the VP's thread does after the answer (CMD). */
  command: 2,
  /** The vCPU fd to run next (the VP's active VTL). */
  vcpuFd: 3,
  /** The VP's thread id (gettid), for tgkill. 0 until the thread started. */
  tid: 4,
  /** KVM_RUN returns so far (including those finished by the VP's thread). */
  runs: 5,
  /** errno of a failed KVM_RUN (0: none; EINTR is reported as KVM_EXIT_INTR). */
  runErrno: 6,
  /** 1 while the VP's thread is inside KVM_RUN. */
  inGuest: 7,
  /** Exits finished by the VP's thread itself (console fast path). */
  localExits: 8,
  /** COM1 base port for the fast path, 0 = off (the main thread turns it off while DLAB is set). */
  uartBase: 9,
  /** The value a read of COM1's LSR returns on the fast path. */
  uartLsr: 10,
  /** Entries of the VP's own overlay table (below). */
  overlayCount: 11,
  /** MMIO exits on the VP's own overlay pages finished by the VP's thread. */
  overlayExits: 12,
  /** Cells 16..19 (as BigInt64 index 8, 9): the kvm_run mapping of vcpuFd (address, size). */
} as const;

/**
 * The VP's own overlay pages in its active VTL (VP assist, SIM, SIEF: holes in the VM's layout while
 * every VP runs), as BigInt64 pairs from index OVERLAY_TABLE_BIG: (GPA page number, host address of the
 * page). The VP's thread serves MMIO exits there itself, reading and writing the page the core uses.
 * The main thread rewrites the table only while the VP's thread waits (its VTL changed, views synced).
 */
export const OVERLAY_TABLE_BIG = 16;
export const OVERLAY_TABLE_MAX = 12;

/** Bytes of a VP's channel. */
export const CHANNEL_BYTES = 8 * (OVERLAY_TABLE_BIG + 2 * OVERLAY_TABLE_MAX);
/** BigInt64 index of the kvm_run address of `vcpuFd`, then its size. */
export const RUN_ADDRESS_BIG = 8;
export const RUN_SIZE_BIG = 9;

/** What the VP's thread does next. */
export const CMD = {
  /** Enter the guest (KVM_RUN) with `vcpuFd`. */
  run: 0,
  /** End the thread. */
  exit: 1,
} as const;

/**
 * The console ring of a partition: every VP's thread appends COM1 output, the main thread drains it.
 * Int32 header: [0] lock (0 free, 1 held), [1] bytes written (mod 2^32), [2] bytes drained (mod 2^32);
 * then CONSOLE_RING_BYTES of data. A writer that finds it full hands the exit to the main thread,
 * which drains first: output is never dropped and the ring never grows.
 */
export const CONSOLE_RING_BYTES = 64 * 1024;
export const CONSOLE_HEADER_BYTES = 16;

export function consoleRingBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(CONSOLE_HEADER_BYTES + CONSOLE_RING_BYTES);
}

function lock(h: Int32Array): void {
  while (Atomics.compareExchange(h, 0, 0, 1) !== 0) Atomics.wait(h, 0, 1, 1);
}

function unlock(h: Int32Array): void {
  Atomics.store(h, 0, 0);
  Atomics.notify(h, 0, 1);
}

/** Appends `bytes` if they fit (all or nothing); false when the ring is full. Any thread. */
export function consoleAppend(sab: SharedArrayBuffer, bytes: Uint8Array): boolean {
  const h = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, CONSOLE_HEADER_BYTES);
  lock(h);
  try {
    const w = h[1]! >>> 0;
    const r = h[2]! >>> 0;
    if (((w - r) >>> 0) + bytes.length > CONSOLE_RING_BYTES) return false;
    for (let i = 0; i < bytes.length; i++) data[(w + i) % CONSOLE_RING_BYTES] = bytes[i]!;
    h[1] = (w + bytes.length) | 0;
    return true;
  } finally {
    unlock(h);
  }
}

/** Takes everything written so far (the main thread). */
export function consoleDrain(sab: SharedArrayBuffer): Uint8Array {
  const h = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, CONSOLE_HEADER_BYTES);
  lock(h);
  try {
    const w = h[1]! >>> 0;
    const r = h[2]! >>> 0;
    const n = (w - r) >>> 0;
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = data[(r + i) % CONSOLE_RING_BYTES]!;
    h[2] = w | 0;
    return out;
  } finally {
    unlock(h);
  }
}
