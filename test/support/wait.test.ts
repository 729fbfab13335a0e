// The test kit's waitFor (test/support/wait.ts): returns the first value other than undefined/false
// (sync or async), and past its timeout fails naming what it waited for.
import { waitFor } from './wait';

test('returns the first value that is not undefined or false, polling sync and async functions', async () => {
  let n = 0;
  await expect(waitFor('n to reach 3', () => ++n >= 3)).resolves.toBe(true);
  expect(n).toBe(3);
  let m = 0;
  await expect(waitFor('a value', async () => (++m < 3 ? undefined : { m }))).resolves.toEqual({ m: 3 });
  await expect(waitFor('zero', () => 0)).resolves.toBe(0);
});

test('past the timeout it throws naming what it waited for', async () => {
  await expect(waitFor('the impossible', () => false, 50)).rejects.toThrow('timed out waiting for the impossible (50 ms)');
});
