// Fault: a process killed (SIGKILL) in the middle of writing its state leaves the previous complete
// snapshot or the new complete one, never a torn file.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { pb } from '@vsm/client';
import { StateStore } from '@vsm/vsm-v1';

test('SIGKILL during atomic writes never leaves a torn snapshot (20 kills)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vsm-crash-'));
  for (let round = 0; round < 20; round++) {
    const child = spawn(process.execPath, [path.join(__dirname, 'atomic-write-child.js'), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (c) => reject(new Error(`child exited early (${c})`)));
    });
    await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 40)));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const loaded = new StateStore(dir).loadAll(); // also removes leftover temp files
    expect(loaded).toHaveLength(1);
    expect(loaded[0]!.error).toBeUndefined();
    const snap = loaded[0]!.snapshot as pb.PartitionSnapshot;
    const gen = Number(snap.sourceName.split('-')[1]);
    expect(snap.memory).toHaveLength(64 + (gen % 64));
    expect(snap.memory.every((m) => m.data.length === 4096 && m.data[4095] === (gen & 0xff))).toBe(true);
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}, 120_000);
