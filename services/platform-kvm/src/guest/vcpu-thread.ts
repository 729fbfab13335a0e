/**
 * platform (kvm), guests that run: the thread of one VP (a worker_threads entry; see vcpu-channel.ts).
 * It calls KVM_RUN in a loop on the vCPU the main thread names, finishes console output itself, and
 * hands every other exit to the main thread, waiting for its answer. It never touches the core.
 * A kick (tgkill from the main thread, with kvm_run.immediate_exit set first) makes KVM_RUN return
 * EINTR, which is handed over like any exit (KVM_EXIT_INTR).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { KVM_EXIT, KVM_EXIT_IO_OUT } from '../kvm/constants';
import { ERRNO, KVM_RUN, errno, ioctlValRaw, nativeView, sysGettid, unblockSignal } from '../kvm/ioctl';
import { EXIT, RUN } from '../kvm/layout';
import { CELL, CMD, OVERLAY_TABLE_BIG, RUN_ADDRESS_BIG, RUN_SIZE_BIG, consoleAppend } from './vcpu-channel';

interface VcpuThreadData {
  channel: SharedArrayBuffer;
  console: SharedArrayBuffer;
  signal: number;
}

const data = workerData as VcpuThreadData;
const cells = new Int32Array(data.channel);
const bigs = new BigInt64Array(data.channel);
const views = new Map<number, Buffer>();
const one = new Uint8Array(1);

function viewOf(fd: number): Buffer {
  let v = views.get(fd);
  if (!v) {
    v = nativeView(BigInt.asUintN(64, bigs[RUN_ADDRESS_BIG]!), Number(bigs[RUN_SIZE_BIG]!));
    views.set(fd, v);
  }
  return v;
}

/** COM1 transmit and LSR on the fast path; true when the exit is finished. */
function finishLocally(run: Buffer): boolean {
  const base = Atomics.load(cells, CELL.uartBase);
  if (base === 0) return false;
  const port = run.readUInt16LE(EXIT.ioPort);
  const size = run[EXIT.ioSize]!;
  if (size !== 1) return false;
  const count = run.readUInt32LE(EXIT.ioCount);
  const off = Number(run.readBigUInt64LE(EXIT.ioDataOffset));
  if (run[EXIT.ioDirection] === KVM_EXIT_IO_OUT) {
    if (port !== base) return false;
    if (count === 1) {
      one[0] = run[off]!;
      return consoleAppend(data.console, one);
    }
    return consoleAppend(data.console, run.subarray(off, off + count));
  }
  if (port !== base + 5) return false;
  run.fill(Atomics.load(cells, CELL.uartLsr) & 0xff, off, off + count);
  return true;
}

const pages = new Map<bigint, Buffer>();

/** An MMIO exit on one of the VP's own overlay pages: read or write that page; true when finished. */
function overlayAccess(run: Buffer): boolean {
  const n = Atomics.load(cells, CELL.overlayCount);
  if (n === 0) return false;
  const gpa = run.readBigUInt64LE(EXIT.mmioPhysAddr);
  const len = run.readUInt32LE(EXIT.mmioLen);
  const off = Number(gpa & 0xfffn);
  if (len === 0 || len > 8 || off + len > 4096) return false;
  const gpfn = gpa >> 12n;
  for (let i = 0; i < n; i++) {
    if (bigs[OVERLAY_TABLE_BIG + 2 * i] !== BigInt.asIntN(64, gpfn)) continue;
    const addr = BigInt.asUintN(64, bigs[OVERLAY_TABLE_BIG + 2 * i + 1]!);
    let page = pages.get(addr);
    if (!page) {
      page = nativeView(addr, 4096);
      pages.set(addr, page);
    }
    if (run[EXIT.mmioIsWrite] !== 0) run.copy(page, off, EXIT.mmioData, EXIT.mmioData + len);
    else page.copy(run, EXIT.mmioData, off, off + len);
    return true;
  }
  return false;
}

function loop(): void {
  unblockSignal(data.signal);
  Atomics.store(cells, CELL.tid, sysGettid());
  Atomics.notify(cells, CELL.tid);
  let handed = 0;
  for (;;) {
    // Wait until the main thread answered the last hand-over (or gave the first command).
    while (Atomics.load(cells, CELL.answer) !== handed) Atomics.wait(cells, CELL.answer, handed - 1);
    if (Atomics.load(cells, CELL.command) === CMD.exit) return;
    const fd = Atomics.load(cells, CELL.vcpuFd);
    const run = viewOf(fd);
    for (;;) {
      Atomics.store(cells, CELL.inGuest, 1);
      const r = ioctlValRaw(fd, KVM_RUN, 0);
      Atomics.store(cells, CELL.inGuest, 0);
      Atomics.add(cells, CELL.runs, 1);
      if (r < 0) {
        const e = errno();
        if (e === ERRNO.EINTR || e === ERRNO.EAGAIN) {
          run.writeUInt32LE(KVM_EXIT.INTR, RUN.exitReason);
          Atomics.store(cells, CELL.runErrno, 0);
        } else Atomics.store(cells, CELL.runErrno, e);
        break;
      }
      const reason = run.readUInt32LE(RUN.exitReason);
      if (reason === KVM_EXIT.IO && finishLocally(run)) {
        Atomics.add(cells, CELL.localExits, 1);
        continue;
      }
      if (reason === KVM_EXIT.MMIO && overlayAccess(run)) {
        Atomics.add(cells, CELL.overlayExits, 1);
        continue;
      }
      break;
    }
    handed++;
    Atomics.store(cells, CELL.request, handed);
    Atomics.notify(cells, CELL.request);
  }
}

try {
  loop();
  parentPort?.postMessage({ done: true });
} catch (e) {
  parentPort?.postMessage({ done: true, error: (e as Error).stack ?? String(e) });
}
