// The test kit's one wait-for (issue #18): polls `fn` until it returns something other than
// undefined or false, and returns that; past `timeoutMs` it throws `timed out waiting for <what>`.
// For conditions the test cannot await directly (a log line, a server-side counter, a file
// reload); never a fixed sleep.

/** Polls `fn` (sync or async) every `intervalMs` until it returns a value other than undefined/false. */
export async function waitFor<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 30_000,
  intervalMs = 20,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (${timeoutMs} ms)`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
