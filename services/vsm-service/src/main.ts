#!/usr/bin/env node
// service layer: process entry point. Parses configuration, starts the server, and shuts down
// gracefully on SIGTERM/SIGINT (health NOT_SERVING, drain in-flight calls, bounded).
import {
  type Backend,
  type Config,
  CoreBackend,
  FleetBackend,
  RemoteBackend,
  StateStore,
  UsageError,
  exitOnSignal,
  fleetConfigProblem,
  holdHealthUntilSynced,
  parseConfig,
  persistentBackend,
  processLogger,
  restoreAll,
  serverOptionsFrom,
  shutdownSignal,
  startFleetBackend,
  startObservability,
  startServer,
} from '@vsm/vsm-v1';

async function main(): Promise<void> {
  let cfg: Config;
  try {
    cfg = parseConfig(process.argv.slice(2), process.env);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(e.message + '\n');
      process.exit(2);
    }
    throw e;
  }
  const { log, dest } = processLogger('vsm-service', cfg.logLevel);
  // Signal handlers first: a SIGTERM that arrives while starting (e.g. right after "listening" is
  // logged, before startServer's promise settles) must not meet the default action and kill the
  // process without a graceful shutdown.
  const signalled = shutdownSignal();
  const fleetProblem = fleetConfigProblem(cfg);
  if (fleetProblem) {
    log.fatal(fleetProblem);
    process.exit(2);
  }
  if (cfg.backend === 'agent' && cfg.agents.length === 0 && !cfg.fleet) {
    log.fatal(
      '--backend agent needs --agent ADDR[,ADDR...] (VSM_AGENTS): the vsm-kvm-agent addresses, e.g. unix:///run/vsm/agent.sock or 127.0.0.1:50061; or --etcd-endpoints URL,... (fleet mode: the agents register in etcd)',
    );
    process.exit(2);
  }
  // Metrics endpoint (--metrics-listen) and traces (OTEL_EXPORTER_OTLP_ENDPOINT): before the backend,
  // whose agent clients carry the trace context, and before restoring (probes answer, not ready yet).
  const obs = await startObservability('vsm-service', cfg, log);
  const { maxStreams: _s, maxStreamsPerClient: _c, ...partitionLimits } = cfg.limits;
  let backend: Backend =
    cfg.backend === 'agent'
      ? cfg.fleet
        ? startFleetBackend(cfg.fleet, log)
        : new RemoteBackend(cfg.agents)
      : new CoreBackend(Object.fromEntries(Object.entries(partitionLimits).filter(([, v]) => v !== undefined)));
  // A partition's failing background task (a deadline timer, a stream callback) is logged once.
  if (backend instanceof CoreBackend) backend.report = (e, ctx) => log.error({ ...ctx, err: e }, 'partition task failed; the partition crashed');
  obs.observeBackend(backend);
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
  const srv = await startServer({ listen: cfg.listen, backend, logger: log, ...serverOptionsFrom(cfg), telemetry: obs.telemetry });
  obs.setReady(true);
  // Fleet mode: NOT_SERVING until the agents and partition records are loaded from etcd.
  if (backend instanceof FleetBackend) holdHealthUntilSynced(srv, backend, log);
  await exitOnSignal(
    signalled,
    (sig) => {
      obs.setReady(false);
      return srv.shutdown(sig).finally(() => obs.close());
    },
    dest,
  );
}

main().catch((e) => {
  process.stderr.write(`vsm-service failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
