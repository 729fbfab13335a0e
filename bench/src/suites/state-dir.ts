// Durable state at real sizes (issue #17): with --state-dir, what an 8-byte guest write costs in a
// partition with 1 GiB of touched RAM against one with nothing touched, both in the same server and
// sampled in alternation. A save writes what changed (one page, the small VSM state), so the two
// should cost the same; before, every call re-encoded and fsynced the whole partition (189 ms with
// 64 MiB touched).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect, pb } from '@vsm/client';
import type { Suite } from '../api';

const MiB = 1024 * 1024;
const TOUCH_BYTES = 1024 * MiB;
const CHUNK = MiB; // WriteGpa takes at most 1 MiB a call

export const suite: Suite = {
  name: 'state-dir',
  description: 'durable partitions (--state-dir): an 8-byte guest write with 1 GiB touched vs nothing touched',
  figures: [
    {
      id: 'state_dir.write8.untouched',
      kind: 'latency',
      unit: 'us',
      description: 'WriteMemory of 8 bytes (guest action on VP 0) with --state-dir, partition with one page touched; answered once durable',
    },
    {
      id: 'state_dir.write8.1gib',
      kind: 'latency',
      unit: 'us',
      description: 'the same in a partition with 1 GiB of RAM touched (262,144 pages in the store), same server, sampled alternately',
    },
    {
      id: 'state_dir.touch_1gib.mib_s',
      kind: 'rate',
      unit: 'MiB/s',
      description: 'WriteGpa of 1 GiB in 1 MiB calls with --state-dir, each answered once durable (setup of the figure above)',
    },
  ],
  ratios: [
    {
      figure: 'state_dir.write8.1gib.p50',
      baseline: 'state_dir.write8.untouched.p50',
      target: { op: '<=', value: 2 },
      description: 'O(change), not O(partition)',
    },
  ],
  budget: { quickSec: 240, fullSec: 420 },
  async run(ctx) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-bench-state-'));
    try {
      const server = await ctx.forkServer('servers/vsm-state-dir-server.js', { args: [dir], execArgv: ['--max-old-space-size=4096'] });
      const c = connect(server.address, { deadlineMs: 120_000 });
      const mk = async (id: string) => {
        const p = await c.partitions.createPartition({ partitionId: id, partition: pb.Partition.fromPartial({ vpCount: 1, memoryBytes: 4n << 30n }) });
        return { name: p.name, vp: `${p.name}/vps/0` };
      };
      const small = await mk('untouched');
      const big = await mk('touched');
      const t0 = process.hrtime.bigint();
      const chunk = Buffer.alloc(CHUNK);
      for (let off = 0; off < TOUCH_BYTES; off += CHUNK) {
        chunk.fill((off / CHUNK) % 251 || 1);
        await c.memory.writeGpa({ name: big.name, gpa: BigInt(off), data: chunk });
      }
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      ctx.log(`1 GiB touched in ${secs.toFixed(1)} s`);
      ctx.recordRate('state_dir.touch_1gib.mib_s', TOUCH_BYTES / MiB / secs);
      const targets = [
        { figure: 'state_dir.write8.untouched', vp: small.vp, gpa: 0x10000n },
        { figure: 'state_dir.write8.1gib', vp: big.vp, gpa: 0x10000n },
      ];
      const data = Buffer.from('8 bytes!');
      for (let r = 0; r < ctx.repeats; r++) {
        const samples = new Map<string, number[]>(targets.map((t) => [t.figure, []]));
        for (let s = 0; s < 6; s++)
          for (const t of s % 2 === 0 ? targets : [...targets].reverse()) {
            const got = await ctx.sampleLatency(() => c.guest.writeMemory({ name: t.vp, gpa: t.gpa, data }), {
              warmup: ctx.pick(5, 10),
              samples: ctx.pick(20, 60),
            });
            samples.get(t.figure)!.push(...got);
          }
        for (const [figure, got] of samples) ctx.recordLatency(figure, got);
      }
      c.close();
      await server.stop();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
};
