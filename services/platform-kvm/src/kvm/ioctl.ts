/**
 * Thin libc bindings (through koffi) and the KVM ioctl numbers.
 *
 * Everything here is synchronous and runs on the calling thread: KVM_RUN in particular is
 * meant to be called synchronously (handing exits between threads costs ≈160 µs on the
 * project's hosts, a synchronous port-I/O exit round trip ≈12 µs).
 *
 * koffi 3.x represents pointers as bigint, so host addresses are bigint throughout.
 *
 * `ioctl(2)` is variadic in libc. On x86-64 SysV a variadic callee that receives only
 * integer/pointer arguments is ABI-compatible with a non-variadic call, so it is bound twice
 * with fixed prototypes (pointer argument / integer argument) to avoid koffi's slower
 * variadic call path.
 */
import * as koffi from 'koffi';

// ---------------------------------------------------------------------------------------------
// ioctl number encoding (include/uapi/asm-generic/ioctl.h, also used by x86):
//   bits 0..7 nr, 8..15 type, 16..29 size (14 bits), 30..31 direction.
// ---------------------------------------------------------------------------------------------

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

/** `_IOC(dir, type, nr, size)`; computed with arithmetic so the result is never negative. */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  if (size >= 1 << 14) throw new RangeError(`ioctl size ${size} does not fit in 14 bits`);
  return dir * 2 ** 30 + size * 2 ** 16 + type * 2 ** 8 + nr;
}
/** `_IO(type, nr)`: no argument / integer argument. */
export const _IO = (type: number, nr: number): number => _IOC(IOC_NONE, type, nr, 0);
/** `_IOR(type, nr, size)`: the kernel writes `size` bytes to the user pointer. */
export const _IOR = (type: number, nr: number, size: number): number => _IOC(IOC_READ, type, nr, size);
/** `_IOW(type, nr, size)`: the kernel reads `size` bytes from the user pointer. */
export const _IOW = (type: number, nr: number, size: number): number => _IOC(IOC_WRITE, type, nr, size);
/** `_IOWR(type, nr, size)`: both directions. */
export const _IOWR = (type: number, nr: number, size: number): number => _IOC(IOC_READ | IOC_WRITE, type, nr, size);

/** The KVM ioctl type byte (`KVMIO`). */
export const KVMIO = 0xae;

// Struct sizes used in ioctl numbers (x86-64; see layout.ts for the field offsets).
export const SIZEOF_KVM_REGS = 144;
export const SIZEOF_KVM_SREGS = 312;
export const SIZEOF_KVM_FPU = 416;
export const SIZEOF_KVM_USERSPACE_MEMORY_REGION = 32;
export const SIZEOF_KVM_ENABLE_CAP = 104;
export const SIZEOF_KVM_MSR_FILTER = 392;
export const SIZEOF_KVM_MSRS_HEADER = 8;
export const SIZEOF_KVM_CPUID2_HEADER = 8;
export const SIZEOF_KVM_VCPU_EVENTS = 64;

// --- /dev/kvm (system) ioctls ---
/** KVM_GET_API_VERSION = _IO(KVMIO, 0x00): returns 12 on every supported kernel. */
export const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
/** KVM_CREATE_VM = _IO(KVMIO, 0x01): arg = machine type (0 = default); returns a VM fd. */
export const KVM_CREATE_VM = _IO(KVMIO, 0x01);
/** KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03): arg = KVM_CAP_*; returns 0 (absent) or a value. Also a VM ioctl. */
export const KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
/** KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04): size of the per-vCPU mmap (kvm_run + PIO page + ...). */
export const KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
/** KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, struct kvm_cpuid2): header 8 bytes + nent × 40. */
export const KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, SIZEOF_KVM_CPUID2_HEADER);

// --- VM ioctls ---
/** KVM_CREATE_VCPU = _IO(KVMIO, 0x41): arg = vCPU id; returns a vCPU fd. */
export const KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
/** KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region /32/). */
export const KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, SIZEOF_KVM_USERSPACE_MEMORY_REGION);
/** KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, struct kvm_enable_cap /104/): VM and vCPU ioctl. */
export const KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, SIZEOF_KVM_ENABLE_CAP);
/**
 * KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, struct kvm_dirty_log /16/): { u32 slot; u32 pad; u64
 * dirty_bitmap (user pointer) }. Copies the slot's dirty bitmap (one bit per page, in longs) and
 * clears it (write-protecting the pages again), for a slot created with KVM_MEM_LOG_DIRTY_PAGES.
 */
export const KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, 16);
/** KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xc6, struct kvm_msr_filter /392/). */
export const KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xc6, SIZEOF_KVM_MSR_FILTER);

// --- vCPU ioctls ---
/** KVM_RUN = _IO(KVMIO, 0x80): enter the guest until the next exit to userspace. */
export const KVM_RUN = _IO(KVMIO, 0x80);
/** KVM_GET_REGS = _IOR(KVMIO, 0x81, struct kvm_regs /144/). */
export const KVM_GET_REGS = _IOR(KVMIO, 0x81, SIZEOF_KVM_REGS);
/** KVM_SET_REGS = _IOW(KVMIO, 0x82, struct kvm_regs /144/). */
export const KVM_SET_REGS = _IOW(KVMIO, 0x82, SIZEOF_KVM_REGS);
/** KVM_GET_SREGS = _IOR(KVMIO, 0x83, struct kvm_sregs /312/). */
export const KVM_GET_SREGS = _IOR(KVMIO, 0x83, SIZEOF_KVM_SREGS);
/** KVM_SET_SREGS = _IOW(KVMIO, 0x84, struct kvm_sregs /312/). */
export const KVM_SET_SREGS = _IOW(KVMIO, 0x84, SIZEOF_KVM_SREGS);
/** KVM_GET_MSRS = _IOWR(KVMIO, 0x88, struct kvm_msrs): header 8 bytes + nmsrs × 16; returns count done. */
export const KVM_GET_MSRS = _IOWR(KVMIO, 0x88, SIZEOF_KVM_MSRS_HEADER);
/** KVM_SET_MSRS = _IOW(KVMIO, 0x89, struct kvm_msrs): returns the number of MSRs set. */
export const KVM_SET_MSRS = _IOW(KVMIO, 0x89, SIZEOF_KVM_MSRS_HEADER);
/** KVM_GET_FPU = _IOR(KVMIO, 0x8c, struct kvm_fpu /416/). */
export const KVM_GET_FPU = _IOR(KVMIO, 0x8c, SIZEOF_KVM_FPU);
/** KVM_SET_FPU = _IOW(KVMIO, 0x8d, struct kvm_fpu /416/). */
export const KVM_SET_FPU = _IOW(KVMIO, 0x8d, SIZEOF_KVM_FPU);
/** KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, struct kvm_xsave /4096/): the vCPU's XSAVE area (x87, SSE, AVX, ... in XSAVE format). */
export const SIZEOF_KVM_XSAVE = 4096;
export const KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, SIZEOF_KVM_XSAVE);
/** KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, struct kvm_xsave /4096/). */
export const KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, SIZEOF_KVM_XSAVE);
/** KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, struct kvm_cpuid2): header 8 bytes + nent × 40. */
export const KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, SIZEOF_KVM_CPUID2_HEADER);
/** KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, struct kvm_vcpu_events /64/). */
export const KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, SIZEOF_KVM_VCPU_EVENTS);
/** KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, struct kvm_vcpu_events /64/). */
export const KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, SIZEOF_KVM_VCPU_EVENTS);

// --- in-kernel irqchip, interrupts and time (guests that run) ---
export const SIZEOF_KVM_LAPIC_STATE = 1024;
export const SIZEOF_KVM_MSI = 32;
/** KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60): in-kernel PIC, IOAPIC and a LAPIC per vCPU; before any vCPU. */
export const KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);
/** KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47): 3 pages KVM uses to run real mode on VMX without unrestricted guest. */
export const KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
/** KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, __u64). */
export const KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, 8);
/** KVM_SIGNAL_MSI = _IOW(KVMIO, 0xa5, struct kvm_msi /32/): returns >0 delivered, 0 blocked. */
export const KVM_SIGNAL_MSI = _IOW(KVMIO, 0xa5, SIZEOF_KVM_MSI);
/** KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, struct kvm_lapic_state /1024/): the APIC register page. */
export const KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, SIZEOF_KVM_LAPIC_STATE);
/** KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, struct kvm_lapic_state /1024/). */
export const KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, SIZEOF_KVM_LAPIC_STATE);
/** KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, struct kvm_mp_state /4/). */
export const KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, 4);
/** KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, struct kvm_mp_state /4/). */
export const KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, 4);
/** KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3): the vCPU's TSC frequency in kHz. */
export const KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3);

// ---------------------------------------------------------------------------------------------
// libc constants (Linux x86-64)
// ---------------------------------------------------------------------------------------------
export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MFD_CLOEXEC = 0x1;
/** `MAP_FAILED` = (void *)-1, as koffi returns it (a bigint pointer). */
export const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

// ---------------------------------------------------------------------------------------------
// Error type
// ---------------------------------------------------------------------------------------------

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno)) if (!errnoNames.has(value)) errnoNames.set(value, name);

/** A failed system call: `errno` and its symbolic `code` (e.g. 'EINVAL'). */
export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  constructor(syscall: string, errno: number) {
    const code = errnoNames.get(errno) ?? `E#${errno}`;
    super(`${syscall} failed: ${code} (${strerror(errno)})`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

export const ERRNO: Readonly<Record<string, number>> = koffi.os.errno;

// ---------------------------------------------------------------------------------------------
// libc bindings
// ---------------------------------------------------------------------------------------------

const libc = koffi.load('libc.so.6');

const c_open = libc.func('open', 'int', ['const char *', 'int', 'uint32_t']);
const c_close = libc.func('close', 'int', ['int']);
/** ioctl with a pointer argument (Buffer, or a bigint host address, or null). */
const c_ioctl_ptr = libc.func('ioctl', 'int', ['int', 'unsigned long', 'void *']);
/** ioctl with an integer argument. */
const c_ioctl_val = libc.func('ioctl', 'int', ['int', 'unsigned long', 'uint64_t']);
const c_mmap = libc.func('mmap', 'void *', ['void *', 'size_t', 'int', 'int', 'int', 'int64_t']);
const c_munmap = libc.func('munmap', 'int', ['void *', 'size_t']);
const c_memfd_create = libc.func('memfd_create', 'int', ['const char *', 'unsigned int']);
const c_ftruncate = libc.func('ftruncate', 'int', ['int', 'int64_t']);
const c_strerror = libc.func('strerror', 'const char *', ['int']);
const c_sigaction = libc.func('sigaction', 'int', ['int', 'void *', 'void *']);
const c_syscall3 = libc.func('syscall', 'long', ['long', 'long', 'long', 'long']);
const c_pthread_sigmask = libc.func('pthread_sigmask', 'int', ['int', 'void *', 'void *']);

/** The current thread's errno (valid right after a failing call). */
export function errno(): number {
  return koffi.errno();
}

export function strerror(err: number): string {
  const s: unknown = c_strerror(err);
  return typeof s === 'string' ? s : `errno ${err}`;
}

function check(syscall: string, r: number): number {
  if (r < 0) throw new SysError(syscall, koffi.errno());
  return r;
}

/** open(2); throws SysError. */
export function sysOpen(path: string, flags: number, mode = 0): number {
  return check(`open(${path})`, c_open(path, flags, mode) as number);
}

/** close(2); throws SysError. */
export function sysClose(fd: number): void {
  check('close', c_close(fd) as number);
}

/** ioctl(2) with a pointer argument; returns the (non-negative) result or throws SysError. */
export function ioctlPtr(fd: number, request: number, arg: Uint8Array | bigint | null, what = 'ioctl'): number {
  for (;;) {
    const r = c_ioctl_ptr(fd, request, arg) as number;
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== ERRNO.EINTR) throw new SysError(what, e);
  }
}

/**
 * ioctl(2) with an integer argument; returns the (non-negative) result or throws SysError. Both
 * retry a call a signal interrupted (EINTR: nothing was done; e.g. KVM_CREATE_VM while a profiler's
 * SIGPROF or a vCPU kick arrives). KVM_RUN does not come here: its EINTR is an exit (ioctlValRaw).
 */
export function ioctlVal(fd: number, request: number, arg: number | bigint = 0, what = 'ioctl'): number {
  for (;;) {
    const r = c_ioctl_val(fd, request, arg) as number;
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== ERRNO.EINTR) throw new SysError(what, e);
  }
}

/** ioctl(2) with an integer argument that does not throw: returns the raw result (−1 on error, see errno()). */
export function ioctlValRaw(fd: number, request: number, arg: number | bigint = 0): number {
  return c_ioctl_val(fd, request, arg) as number;
}

/** mmap(2); returns the host address or throws SysError. */
export function sysMmap(length: number, prot: number, flags: number, fd: number, offset = 0, addr: bigint | null = null): bigint {
  const p: unknown = c_mmap(addr, length, prot, flags, fd, offset);
  if (p === null || p === undefined) throw new SysError('mmap', koffi.errno());
  const a = typeof p === 'bigint' ? p : BigInt(p as number);
  if (a === MAP_FAILED) throw new SysError('mmap', koffi.errno());
  return a;
}

/** munmap(2); throws SysError. */
export function sysMunmap(addr: bigint, length: number): void {
  check('munmap', c_munmap(addr, length) as number);
}

/** memfd_create(2); throws SysError. */
export function sysMemfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return check('memfd_create', c_memfd_create(name, flags) as number);
}

/** ftruncate(2); throws SysError. */
export function sysFtruncate(fd: number, length: number): void {
  check('ftruncate', c_ftruncate(fd, length) as number);
}

/**
 * A Buffer aliasing `length` bytes of native memory at `addr` (no copy). The Buffer must not be
 * used after the memory is unmapped. Each call costs ≈1 µs (an external ArrayBuffer); at most
 * 4 GiB per view.
 */
export function nativeView(addr: bigint, length: number): Buffer {
  if (length === 0) return Buffer.alloc(0);
  return Buffer.from(koffi.view(addr, length));
}

/**
 * Anonymous private memory with a known host address (for ioctl arguments that embed pointers,
 * such as the MSR filter bitmaps). Page granular.
 */
export class NativeScratch {
  readonly address: bigint;
  readonly length: number;
  readonly buffer: Buffer;
  private closed = false;
  constructor(length: number) {
    this.length = Math.max(4096, Math.ceil(length / 4096) * 4096);
    this.address = sysMmap(this.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    this.buffer = nativeView(this.address, this.length);
  }
  free(): void {
    if (this.closed) return;
    this.closed = true;
    sysMunmap(this.address, this.length);
  }
}

// ---------------------------------------------------------------------------------------------
// Signal disposition for vCPU kicks
// ---------------------------------------------------------------------------------------------

/** Linux x86-64 signal numbers usable for kicks. */
export const SIGNO = { SIGUSR1: 10, SIGUSR2: 12, SIGURG: 23, SIGWINCH: 28 } as const;
export type KickSignal = keyof typeof SIGNO;

/** glibc struct sigaction (152 bytes): sa_handler @0, sa_mask (128 bytes) @8, sa_flags @136, sa_restorer @144. */
const SIGACTION_SIZE = 152;

/**
 * Makes sure `signal` has a handler, so that its delivery interrupts KVM_RUN with EINTR instead
 * of terminating the process (SIG_DFL) or being discarded (SIG_IGN). If the signal already has a
 * handler (e.g. Node's own, from process.on()), it is left alone. Otherwise libc's getpid() is
 * installed as the handler: it is async-signal-safe, has no side effects and, under the x86-64
 * ABI, ignores the signal-number argument — a native no-op that works even where `process` is a
 * sandboxed proxy (jest). No SA_RESTART (KVM_RUN is never restarted anyway).
 * Returns true when it installed the handler.
 */
export function ensureSignalHandler(signal: KickSignal): boolean {
  const signo = SIGNO[signal];
  const old = Buffer.alloc(SIGACTION_SIZE);
  check('sigaction', c_sigaction(signo, null, old) as number);
  const handler = old.readBigUInt64LE(0);
  if (handler !== 0n && handler !== 1n) return false; // neither SIG_DFL nor SIG_IGN
  const act = Buffer.alloc(SIGACTION_SIZE);
  const noop: unknown = libc.symbol('getpid');
  if (typeof noop !== 'bigint' || noop === 0n) throw new Error('cannot resolve getpid for the kick signal handler');
  act.writeBigUInt64LE(noop, 0);
  check('sigaction', c_sigaction(signo, act, null) as number);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Threads (vCPU threads of running guests)
// ---------------------------------------------------------------------------------------------
const SYS_gettid = 186;
const SYS_tgkill = 234;
const SIG_UNBLOCK = 1;

/** The calling thread's kernel id (gettid(2)). */
export function sysGettid(): number {
  return Number(c_syscall3(SYS_gettid, 0, 0, 0));
}

/**
 * tgkill(2): sends `signal` to one thread of this process (a vCPU thread in KVM_RUN returns EINTR).
 * Returns false when the thread is gone (ESRCH).
 */
export function sysTgkill(tid: number, signal: number): boolean {
  const r = Number(c_syscall3(SYS_tgkill, process.pid, tid, signal));
  if (r === 0) return true;
  const e = koffi.errno();
  if (e === ERRNO.ESRCH) return false;
  throw new SysError('tgkill', e);
}

/** Unblocks `signal` in the calling thread (a worker thread may inherit a mask that blocks it). */
export function unblockSignal(signal: number): void {
  const set = Buffer.alloc(128);
  set.writeBigUInt64LE(1n << BigInt(signal - 1), 0);
  const r = c_pthread_sigmask(SIG_UNBLOCK, set, null);
  if (r !== 0) throw new SysError('pthread_sigmask', r);
}
