#!/usr/bin/env node
// service layer: process entry point. Parses configuration, starts the server, and shuts down
// gracefully on SIGTERM/SIGINT (health NOT_SERVING, drain in-flight calls, bounded).
import pino from 'pino';
import { Backend, CoreBackend, FdLogDestination, RemoteBackend, StateStore, UsageError, parseConfig, persistentBackend, restoreAll, startServer } from '@vsm/vsm-v1';

// A reader of stdout/stderr that went away (EPIPE) must not crash or hang the process: failed
// writes through process.stdout/stderr (console, usage messages) are ignored, and the logger
// writes through FdLogDestination, which turns itself off on such an error.
for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);

/** Graceful shutdown gives unary calls 5 s; after this the process exits regardless. */
const SHUTDOWN_WATCHDOG_MS = 20_000;

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = parseConfig(process.argv.slice(2), process.env);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(e.message + '\n');
      process.exit(2);
    }
    throw e;
  }
  const logDest = new FdLogDestination(1);
  const log = pino({ level: cfg.logLevel, base: { svc: 'vsm-service' } }, logDest);
  // Signal handlers first: a SIGTERM that arrives while starting (e.g. right after "listening" is
  // logged, before startServer's promise settles) must not meet the default action and kill the
  // process without a graceful shutdown.
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve(sig));
  });
  if (cfg.backend === 'agent' && cfg.agents.length === 0) {
    log.fatal('--backend agent needs --agent ADDR[,ADDR...] (VSM_AGENTS): the vsm-kvm-agent addresses, e.g. unix:///run/vsm/agent.sock or 127.0.0.1:50061');
    process.exit(2);
  }
  const { maxStreams, maxStreamsPerClient, ...partitionLimits } = cfg.limits;
  let backend: Backend =
    cfg.backend === 'agent'
      ? new RemoteBackend(cfg.agents)
      : new CoreBackend(Object.fromEntries(Object.entries(partitionLimits).filter(([, v]) => v !== undefined)));
  // Guest RAM held by all partitions together (--max-resident-bytes); with --backend agent each agent applies its own.
  if (cfg.backend === 'emulator') log.info({ maxResidentBytes: Number(cfg.limits.maxResidentBytes) }, 'resident guest RAM limit');
  if (cfg.backend === 'agent' && cfg.stateDir) {
    log.fatal('--state-dir applies to the emulator backend; with --backend agent the agents hold the partitions');
    process.exit(2);
  }
  if (cfg.stateDir) {
    const store = new StateStore(cfg.stateDir);
    backend = persistentBackend(backend, store, log);
    await restoreAll(backend, store, log);
  }
  const t = cfg.transport;
  const srv = await startServer({
    listen: cfg.listen,
    backend,
    logger: log,
    tls: cfg.tls,
    allowInsecureRemote: cfg.insecureAllowRemote,
    security: {
      authzPolicy: cfg.authzPolicy ? { file: cfg.authzPolicy } : undefined,
      limits: { maxStreams, maxStreamsPerClient },
      requestBudget: { maxBytes: t.maxRequestBytes, maxBytesPerClient: t.maxRequestBytesPerClient },
      healthWatches: t.maxHealthWatches === undefined ? undefined : { maxStreams: t.maxHealthWatches, maxStreamsPerClient: Math.max(1, Math.ceil(t.maxHealthWatches / 4)) },
    },
    streamBuffer: { maxBytes: t.maxStreamBufferBytes, maxMessages: t.maxStreamBufferMessages, stallMs: t.streamStallMs },
    firstMessageTimeoutMs: t.firstMessageTimeoutMs,
    maxConcurrentStreams: t.maxConcurrentStreams,
  });
  const sig = await signalled;
  // Whatever happens during shutdown, the process ends: a watchdog well beyond the grace period.
  setTimeout(() => process.exit(1), SHUTDOWN_WATCHDOG_MS);
  const code = await srv.shutdown(sig).then(() => 0, () => 1);
  await logDest.flush(1000);
  process.exit(code);
}

main().catch((e) => {
  process.stderr.write(`vsm-service failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
