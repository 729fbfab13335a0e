/**
 * A watchdog for the synchronous KVM_RUN: a guest that never exits would block the Node thread
 * forever. A helper worker thread watches a deadline in shared memory and, once it passes,
 * signals the process (SIGUSR2 by default) until the vCPU thread leaves KVM_RUN; KVM_RUN then
 * returns EINTR (a signal with a handler is pending), which run() reports as { kind: 'timeout' }.
 *
 * Cost on the vCPU thread per run: two Atomics stores (no syscalls, no wake-ups). The worker
 * polls every `periodMs`, so a timeout fires between timeoutMs and timeoutMs + periodMs.
 *
 * Side effect: unless the signal already has a handler, a native no-op handler is installed for
 * the life of the process (ensureSignalHandler): a kick must never meet the default action,
 * which would terminate the process. Do not process.on()/off() the kick signal elsewhere:
 * removing Node's last listener resets it to SIG_DFL.
 */
import { Worker } from 'node:worker_threads';
import { type KickSignal, ensureSignalHandler } from './ioctl';
import { KVM_EXIT } from './constants';
import type { KvmExit, KvmVcpu } from './kvm';

/** runRawUntil's reason for a run the watchdog ended (not a KVM exit reason). */
export const WATCHDOG_TIMEOUT = -1;

export interface TimeoutExit {
  kind: 'timeout';
  reason: -1;
}

export interface WatchdogOptions {
  /** Poll period of the watchdog thread (default 10 ms). */
  periodMs?: number;
  /** Signal used to kick the vCPU thread out of KVM_RUN (default SIGUSR2). */
  signal?: KickSignal;
}

// Shared cells (Int32 indexes): 0 armed generation (0 = disarmed), 1 stop flag, 2 last kicked generation.
// Float64 at byte 16: deadline (Date.now() ms).
const ARMED = 0;
const STOP = 1;
const KICKED = 2;

const WORKER_SOURCE = `
const { workerData } = require('worker_threads');
const cells = new Int32Array(workerData.sab, 0, 4);
const deadline = new Float64Array(workerData.sab, 16, 1);
for (;;) {
  Atomics.wait(cells, ${STOP}, 0, workerData.periodMs);
  if (Atomics.load(cells, ${STOP}) !== 0) break;
  const gen = Atomics.load(cells, ${ARMED});
  if (gen !== 0 && Date.now() >= deadline[0]) {
    Atomics.store(cells, ${KICKED}, gen);
    try { process.kill(workerData.pid, workerData.signal); } catch (e) { /* process exiting */ }
  }
}
`;

export class VcpuWatchdog {
  private readonly worker: Worker;
  private readonly cells: Int32Array;
  private readonly deadline: Float64Array;
  private gen = 0;
  private closed = false;

  private constructor(worker: Worker, sab: SharedArrayBuffer) {
    this.worker = worker;
    this.cells = new Int32Array(sab, 0, 4);
    this.deadline = new Float64Array(sab, 16, 1);
  }

  static start(o: WatchdogOptions = {}): VcpuWatchdog {
    const signal = o.signal ?? 'SIGUSR2';
    ensureSignalHandler(signal);
    const sab = new SharedArrayBuffer(24);
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { sab, pid: process.pid, signal, periodMs: o.periodMs ?? 10 },
    });
    worker.unref();
    return new VcpuWatchdog(worker, sab);
  }

  /**
   * vcpu.run() with a deadline. EINTRs not caused by this watchdog (stray signals) are retried;
   * an explicit immediate_exit still returns { kind: 'intr' }.
   */
  run(vcpu: KvmVcpu, timeoutMs: number): KvmExit | TimeoutExit {
    return this.runUntil(vcpu, Date.now() + timeoutMs);
  }

  /**
   * run() with an absolute deadline (Date.now() time, ms): a loop of runs towards one deadline reads
   * the clock not at all per run (Date.now() ≈73 ns here; the agent's hypercall loop read it twice
   * per exit).
   */
  runUntil(vcpu: KvmVcpu, deadlineMs: number): KvmExit | TimeoutExit {
    const r = this.runRawUntil(vcpu, deadlineMs);
    return r === WATCHDOG_TIMEOUT ? { kind: 'timeout', reason: -1 } : vcpu.decodeExit(r);
  }

  /**
   * runUntil() returning the exit reason only (vcpu.runRaw(); WATCHDOG_TIMEOUT when the deadline
   * ended it): a loop that recognises its hot exit from kvm_run itself makes no exit object for it,
   * and decodes the others with vcpu.decodeExit().
   */
  runRawUntil(vcpu: KvmVcpu, deadlineMs: number): number {
    if (this.closed) throw new Error('watchdog closed');
    this.gen = (this.gen % 0x7fff_fffe) + 1;
    const gen = this.gen;
    this.deadline[0] = deadlineMs;
    Atomics.store(this.cells, ARMED, gen);
    try {
      for (;;) {
        const r = vcpu.runRaw();
        if (r !== KVM_EXIT.INTR) return r;
        if (Atomics.load(this.cells, KICKED) === gen) return WATCHDOG_TIMEOUT;
        if (vcpu.immediateExit) return r;
      }
    } finally {
      Atomics.store(this.cells, ARMED, 0);
    }
  }

  /**
   * Stops the watchdog thread (the signal handler stays installed). The returned promise resolves
   * once the thread is gone (its event loop's fds are released then); callers may ignore it.
   */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    Atomics.store(this.cells, STOP, 1);
    Atomics.notify(this.cells, STOP);
    return this.worker.terminate().then(() => undefined);
  }
}
