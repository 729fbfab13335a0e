import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BenchContext, Suite } from '../src/api';
import { liveChildren } from '../src/lib/children';
import { runSuite } from '../src/lib/runner';
import { latSpec, rateSpec } from './fixtures';

const opts = () => ({ quick: true, repeats: 2, globalDeadline: performance.now() + 60_000, log: () => undefined });
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let dir: string;
let server: string;
let stubborn: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-runner-'));
  server = path.join(dir, 'server.js');
  fs.writeFileSync(server, `process.send({ type: 'bench-ready', port: 4242, info: { hello: 1 } }); setInterval(() => {}, 1000);\n`);
  stubborn = path.join(dir, 'stubborn.js');
  fs.writeFileSync(stubborn, `process.on('SIGTERM', () => {}); process.send({ type: 'bench-ready', port: 1 }); setInterval(() => {}, 1000);\n`);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function suite(run: (ctx: BenchContext) => Promise<void>, extra: Partial<Suite> = {}): Suite {
  return { name: 's', description: 'test', figures: [latSpec('s.lat'), rateSpec('s.rate')], run, ...extra };
}

describe('runSuite', () => {
  test('records repeats; unrecorded figures are reported as failed', async () => {
    const r = await runSuite(
      suite(async (ctx) => {
        for (let i = 0; i < ctx.repeats; i++) ctx.recordLatency('s.lat', await ctx.sampleLatency(async () => undefined, { samples: 50, warmup: 5 }));
      }),
      opts(),
    );
    expect(r.outcome.status).toBe('ok');
    expect(r.figures.map((f) => [f.id, f.status, f.repeats])).toEqual([
      ['s.lat', 'ok', 2],
      ['s.rate', 'failed', 0],
    ]);
    expect(r.figures[1]?.reason).toMatch(/without recording/);
  });

  test('undeclared figure ids fail the suite', async () => {
    const r = await runSuite(
      suite(async (ctx) => ctx.recordRate('nope', 1)),
      opts(),
    );
    expect(r.outcome.status).toBe('failed');
    expect(r.outcome.reason).toMatch(/not declared/);
  });

  test('availability check and ctx.skip give "skipped: reason" for every figure', async () => {
    const a = await runSuite(
      suite(async () => undefined, { available: () => 'no /dev/kvm' }),
      opts(),
    );
    expect(a.outcome).toMatchObject({ status: 'skipped', reason: 'no /dev/kvm' });
    expect(a.figures.every((f) => f.status === 'skipped' && f.reason === 'no /dev/kvm')).toBe(true);
    const b = await runSuite(
      suite(async (ctx) => {
        ctx.recordRate('s.rate', 5);
        ctx.skip('later');
      }),
      opts(),
    );
    expect(b.outcome.status).toBe('skipped');
    expect(b.figures.map((f) => f.status)).toEqual(['skipped', 'ok']);
  });

  test('ctx.skipFigure skips one figure with its reason; the suite and its other figures go on', async () => {
    const r = await runSuite(
      suite(async (ctx) => {
        ctx.skipFigure('s.lat', 'qemu-system-x86_64 is not installed');
        ctx.recordRate('s.rate', 5);
      }),
      opts(),
    );
    expect(r.outcome.status).toBe('ok');
    expect(r.figures.map((f) => [f.id, f.status, f.reason])).toEqual([
      ['s.lat', 'skipped', 'qemu-system-x86_64 is not installed'],
      ['s.rate', 'ok', null],
    ]);
    // A figure skipped then recorded anyway is ok; an undeclared id fails the suite.
    const b = await runSuite(
      suite(async (ctx) => {
        ctx.skipFigure('s.rate', 'first');
        ctx.recordRate('s.rate', 1);
        ctx.skipFigure('nope', 'x');
      }),
      opts(),
    );
    expect(b.outcome.status).toBe('failed');
    expect(b.outcome.reason).toMatch(/not declared/);
    expect(b.figures.map((f) => [f.id, f.status])).toEqual([
      ['s.lat', 'failed'],
      ['s.rate', 'ok'],
    ]);
  });

  test('forked children are stopped when the suite ends', async () => {
    let pid = 0;
    const r = await runSuite(
      suite(async (ctx) => {
        const h = await ctx.forkServer(server);
        expect(h.address).toBe('127.0.0.1:4242');
        expect(h.info).toEqual({ hello: 1 });
        pid = h.pid;
        expect(alive(pid)).toBe(true);
        ctx.recordRate('s.rate', 1);
      }),
      opts(),
    );
    expect(r.outcome.status).toBe('ok');
    expect(alive(pid)).toBe(false);
    expect(liveChildren()).toBe(0);
  });

  test('a hung suite is bounded by its budget; its children are killed even if they ignore SIGTERM', async () => {
    let pid = 0;
    const t0 = performance.now();
    const r = await runSuite(
      suite(
        async (ctx) => {
          pid = (await ctx.forkServer(stubborn)).pid;
          ctx.recordRate('s.rate', 3);
          await new Promise(() => undefined); // never settles
        },
        { budget: { quickSec: 0.5 } },
      ),
      opts(),
    );
    expect(r.outcome).toMatchObject({ status: 'failed', reason: 'timed out after 0.5 s' });
    expect(r.figures.map((f) => f.status)).toEqual(['failed', 'ok']); // what was recorded is kept
    expect(alive(pid)).toBe(false);
    expect(performance.now() - t0).toBeLessThan(5000);
  }, 10_000);

  test('a child that dies before ready fails the suite with its output', async () => {
    const crash = path.join(dir, 'crash.js');
    fs.writeFileSync(crash, `console.error('boom: no port'); process.exit(3);\n`);
    const r = await runSuite(
      suite(async (ctx) => void (await ctx.forkServer(crash))),
      { ...opts(), log: () => undefined },
    );
    expect(r.outcome.status).toBe('failed');
    expect(r.outcome.reason).toMatch(/exited before ready \(code 3/);
  });
});
