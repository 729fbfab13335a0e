// Fault: the real service process (main.js) is SIGKILLed and started again on the same state
// directory: every partition that had been acknowledged comes back.
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect, type pb } from '@vsm/client';
import { HvMsr } from '@vsm/core';
import { freePort } from '../support/ports';

const MAIN = path.resolve(__dirname, '../../services/vsm-service/dist/main.js');

async function start(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [MAIN, '--listen', `127.0.0.1:${port}`, '--state-dir', dir, '--log-level', 'info'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('vsm-service listening')) resolve();
    });
    child.once('exit', (c) => reject(new Error(`service exited (${c}): ${out}`)));
  });
  return child;
}

test('SIGKILL and restart with --state-dir: acknowledged partitions and their VSM state come back', async () => {
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: build first (npm test runs the build)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-restart-'));
  const port = await freePort();
  let svc = await start(port, dir);
  const c = connect(`127.0.0.1:${port}`);
  const names: string[] = [];
  for (let i = 0; i < 5; i++) {
    const p = await c.partitions.createPartition({ partitionId: `r${i}`, partition: { vpCount: 2, memoryBytes: 1n << 30n, maximumVtl: 1 } as pb.Partition });
    await c.guest.writeMsr({ name: `${p.name}/vps/1`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID, value: BigInt(1000 + i) });
    await c.vtl.enablePartitionVtl({ name: p.name, targetVtl: 1 });
    names.push(p.name);
  }
  svc.kill('SIGKILL');
  await new Promise((r) => svc.once('exit', r));
  c.close();
  svc = await start(port, dir);
  const c2 = connect(`127.0.0.1:${port}`);
  try {
    const list = await c2.partitions.listPartitions({});
    expect(list.partitions.map((p) => p.name)).toEqual(names);
    for (let i = 0; i < 5; i++) {
      expect((await c2.guest.readMsr({ name: `${names[i]}/vps/1`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID })).value).toBe(BigInt(1000 + i));
      expect((await c2.partitions.getPartition({ name: names[i]! })).enabledVtlSet).toBe(0b11);
    }
  } finally {
    c2.close();
    svc.kill('SIGTERM');
    await new Promise((r) => svc.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);
