import type { Suite } from '../src/api';
import { parseArgs } from '../src/run';
import { validateSuites } from '../src/lib/registry';
import { suite as rawGrpc } from '../src/suites/raw-grpc';
import { figureTable, ratioTable } from '../src/lib/table';
import { evaluateRatios } from '../src/lib/ratios';
import { latencyFigure, latSpec, rateSpec, skippedFigure } from './fixtures';

const noop = async () => undefined;
const mk = (name: string, figures = [latSpec(`${name}.lat`)], ratios: Suite['ratios'] = []): Suite => ({ name, description: name, figures, ratios, run: noop });

describe('registry validation', () => {
  test('the shipped raw-grpc suite is valid', () => {
    expect(validateSuites([rawGrpc])).toEqual([]);
    expect(rawGrpc.figures.map((f) => f.id)).toContain('raw.unary.64B');
  });

  test('a later suite may declare ratios against the raw baselines', () => {
    const later = mk(
      'emulator',
      [latSpec('emulator.rdmsr.unary')],
      [{ figure: 'emulator.rdmsr.unary.p50', baseline: 'raw.unary.64B.p50', target: { op: '<=', value: 1.3 } }],
    );
    expect(validateSuites([rawGrpc, later])).toEqual([]);
  });

  test('duplicate names and ids, bad ids, bad ratio refs', () => {
    const errs = validateSuites([
      mk('a'),
      mk('a', [latSpec('a.lat')]),
      mk('Bad Name', [latSpec('x.p99'), { ...rateSpec('y'), unit: '' }, { ...latSpec('z'), unit: 'ms' }]),
      mk('c', [latSpec('c.lat')], [{ figure: 'c.lat.p42', baseline: 'a.lat', target: { op: '<=', value: 1 } }]),
    ]);
    const text = errs.join('\n');
    expect(text).toMatch(/suite "a": duplicate name/);
    expect(text).toMatch(/"a.lat": duplicate id/);
    expect(text).toMatch(/"Bad Name": name must match/);
    expect(text).toMatch(/"x.p99": id must not end in a statistic/);
    expect(text).toMatch(/"y": unit required/);
    expect(text).toMatch(/"z": latency figures are recorded in us/);
    expect(text).toMatch(/c.lat.p42" names no declared figure/);
  });
});

describe('table', () => {
  test('skipped figures and ratios say "skipped: reason"', () => {
    const figs = [latencyFigure('raw.unary.64B', [100]), skippedFigure('kvm.exit', 'no /dev/kvm')];
    const t = figureTable(figs);
    expect(t).toMatch(/raw\.unary\.64B\s+µs\s+100 \[100–100\]/);
    expect(t).toMatch(/kvm\.exit.*skipped: no \/dev\/kvm/);
    const r = ratioTable(evaluateRatios([{ figure: 'kvm.exit', baseline: 'raw.unary.64B', target: { op: '<=', value: 2 } }], figs));
    expect(r).toMatch(/skipped: kvm.exit skipped: no \/dev\/kvm/);
    expect(ratioTable([])).toBe('ratios: none declared');
  });
});

describe('cli arguments', () => {
  test('parses flags', () => {
    const a = parseArgs(['--quick', '--repeats', '5', '--filter=raw', '--strict']);
    expect(a).toMatchObject({ quick: true, repeats: 5, strict: true, list: false });
    expect(a.filter?.test('raw-grpc')).toBe(true);
    expect(() => parseArgs(['--repeats', '0'])).toThrow();
    expect(() => parseArgs(['--bogus'])).toThrow(/unknown argument/);
  });
});
