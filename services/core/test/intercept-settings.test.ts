// The intercept route, its deadline policy and the delivery count are changed through the core
// (Partition.setInterceptRoute, InterceptBroker.noteDelivery), not written by the vsm.v1 layer.
import { HvError, MAX_INTERCEPT_DEADLINE_MS, Partition } from '@vsm/core';
import type { InterceptRecord } from '@vsm/core';

const partition = () => new Partition({ id: 't', architecture: 'x64', vpCount: 1, memoryBytes: 1n << 24n, maximumVtl: 1, labels: {} });

test('setInterceptRoute sets the route and the deadline policy together', () => {
  const p = partition();
  p.setInterceptRoute('monitor', { ms: 250, action: 'retry' });
  expect(p.interceptRoute).toBe('monitor');
  expect(p.interceptDeadline).toEqual({ ms: 250, action: 'retry' });
  p.setInterceptRoute('both');
  expect(p.interceptRoute).toBe('both');
  expect(p.interceptDeadline).toBeUndefined();
});

test('setInterceptRoute refuses a bad route or policy and changes nothing', () => {
  const p = partition();
  p.setInterceptRoute('monitor', { ms: 10, action: 'skip' });
  const bad: [string, number, string][] = [
    ['sideways', 10, 'skip'],
    ['vtl', 0, 'skip'],
    ['vtl', MAX_INTERCEPT_DEADLINE_MS + 1, 'skip'],
    ['vtl', 1.5, 'skip'],
    ['vtl', 10, 'ignore'],
  ];
  for (const [route, ms, action] of bad) {
    expect(() => p.setInterceptRoute(route as 'vtl', { ms, action: action as 'skip' })).toThrow(HvError);
    expect(p.interceptRoute).toBe('monitor');
    expect(p.interceptDeadline).toEqual({ ms: 10, action: 'skip' });
  }
});

test('noteDelivery counts deliveries and tells a re-delivery', () => {
  const p = partition();
  const r = { deliveries: 0 } as InterceptRecord;
  expect(p.intercepts.noteDelivery(r)).toBe(false);
  expect(p.intercepts.noteDelivery(r)).toBe(true);
  expect(r.deliveries).toBe(2);
});
