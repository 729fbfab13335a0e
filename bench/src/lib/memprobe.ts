// Memory figures measured in a fresh Node process (--expose-gc), so that garbage and the harness's
// own allocations in this process cannot blur them. The probe script builds what is measured
// and prints {rssBytes, heapBytes} growth as JSON.
import { execFileSync } from 'node:child_process';
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
