// Memory figures measured in a fresh Node process (--expose-gc), so that garbage and the harness's
// own allocations in this process cannot blur them. The probe script builds what is measured
// and prints {rssBytes, heapBytes} growth as JSON.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

export interface MemGrowth {
  rssBytes: number;
  heapBytes: number;
}

/** `build` is JavaScript run in the child with `core` = @vsm/core; it must keep what it builds in `keep`. */
export function measureInChild(build: string): MemGrowth {
  const coreDist = path.resolve(__dirname, '../../../services/core/dist');
  const script = `
    const core = require(${JSON.stringify(coreDist)});
    const keep = [];
    const m = () => { global.gc(); global.gc(); const u = process.memoryUsage(); return { rss: u.rss, heap: u.heapUsed + u.arrayBuffers + u.external }; };
    const before = m();
    ${build}
    const after = m();
    if (keep.length === 0) throw new Error('nothing kept');
    process.stdout.write(JSON.stringify({ rssBytes: after.rss - before.rss, heapBytes: after.heap - before.heap }));
  `;
  return JSON.parse(execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 120_000 })) as MemGrowth;
}

/** VmRSS and VmHWM (peak RSS) of process `pid`, bytes, from /proc/<pid>/status. */
export function procRss(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => {
    const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s);
    if (!m) throw new Error(`/proc/${pid}/status has no ${k}`);
    return Number(m[1]) * 1024;
  };
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

export interface RssWatch {
  /** RSS when the watch began. */
  readonly baseline: number;
  /** Stops sampling: the peak RSS seen (samples and, where it could be reset, the kernel's VmHWM) and the sample count. */
  stop(): { peak: number; samples: number; hwmReset: boolean };
}

/**
 * Watches another process's RSS from now on: the kernel's peak (VmHWM, reset first through
 * /proc/<pid>/clear_refs "5" so that it covers this window exactly, between samples too) and samples
 * every `periodMs` (the peak if the reset is not permitted).
 */
export function watchRss(pid: number, periodMs = 20): RssWatch {
  let hwmReset = false;
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    hwmReset = true;
  } catch {
    /* not permitted: samples only */
  }
  const baseline = procRss(pid).rss;
  let peak = baseline;
  let samples = 0;
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, procRss(pid).rss);
      samples++;
    } catch {
      /* the process ended */
    }
  }, periodMs);
  return {
    baseline,
    stop() {
      clearInterval(t);
      const now = procRss(pid);
      peak = Math.max(peak, now.rss, hwmReset ? now.hwm : 0);
      return { peak, samples, hwmReset };
    },
  };
}
