// The service under fuzz: in-process (default; CI) or, with VSM_FUZZ_SERVER=child (npm run
// fuzz:long), the real process (services/vsm-service/dist/main.js) as a child, whose exit is a
// failure reported by the process guard with its stderr. Either way `errors` collects what the
// service reported at error level (an RPC or stream failed INTERNAL, a partition's background task
// failed) and anything it wrote to stderr.
import { CoreBackend, startServer } from '@vsm/vsm-v1';
import { captureLogger } from '../security/support';
import { type ChildService, spawnService } from '../support/child-service';

export interface FuzzServer {
  mode: 'in-process' | 'child';
  address: string;
  /** Error-level reports of the service (most recent last; capped). */
  errors(): string[];
  /** Why the server is gone, or undefined while it is up. */
  died(): string | undefined;
  stop(): Promise<void>;
}

const MAX_ERRORS = 200;

export async function startFuzzServer(opts: { maxPartitions: number }): Promise<FuzzServer> {
  const errors: string[] = [];
  const push = (s: string) => {
    if (errors.length < MAX_ERRORS) errors.push(s.slice(0, 2000));
  };
  if (process.env.VSM_FUZZ_SERVER === 'child') {
    let svc: ChildService | undefined;
    svc = await spawnService(['--max-partitions', String(opts.maxPartitions)], {
      name: 'vsm-service (fuzz)',
      onStdoutLine: (line) => {
        try {
          const j = JSON.parse(line) as { level?: number; msg?: string; method?: string; error?: string; stack?: string };
          if ((j.level ?? 0) >= 50) push(`${j.msg} ${j.method ?? ''}: ${j.error ?? ''}${j.stack ? `\n${j.stack}` : ''}`);
        } catch {
          if (line.trim()) push(`stdout: ${line}`);
        }
      },
      onStderrLine: (line) => {
        if (line.trim()) push(`stderr: ${line}`);
      },
    });
    return {
      mode: 'child',
      address: svc.address,
      errors: () => [...errors],
      died: () => {
        const x = svc?.unexpectedExit();
        return x ? `the service process exited (code ${x.code}, signal ${x.signal}); stderr:\n${svc!.stderr().slice(-8000)}` : undefined;
      },
      async stop() {
        await svc?.stop();
        svc = undefined;
      },
    };
  }
  const cap = captureLogger('error');
  const backend = new CoreBackend({ maxPartitions: opts.maxPartitions });
  // Where the backend reports a partition's background failures (the guarded path), if it has one.
  if ('report' in backend)
    (backend as unknown as { report: (e: unknown, ctx: { partition: string; task: string }) => void }).report = (e, ctx) =>
      push(`partition task failed (${ctx.partition}: ${ctx.task}): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  const srv = await startServer({ listen: '127.0.0.1:0', backend, logger: cap.logger, shutdownGraceMs: 500 });
  let stopped = false;
  return {
    mode: 'in-process',
    address: srv.address,
    errors: () => [
      ...errors,
      ...cap.lines
        .filter((l) => l.level >= 50)
        .slice(0, MAX_ERRORS)
        .map((l) => `${l.msg} ${(l.method as string) ?? ''}: ${(l.error as string) ?? ''}${l.stack ? `\n${l.stack as string}` : ''}`),
    ],
    died: () => undefined, // an exception that escapes the in-process service fails the test (jest + the process guard)
    async stop() {
      if (stopped) return;
      stopped = true;
      await srv.shutdown('test');
    },
  };
}
