#!/usr/bin/env node
/**
 * vsm-kvm-agent: serves vsm.v1 over KvmBackend (guest code runs on /dev/kvm).
 *
 *   vsm-kvm-agent [--listen 127.0.0.1:50061 | --listen unix:///run/vsm/agent.sock]
 *                 [--action-timeout-ms 2000] [--memslot-budget 4096] [--device /dev/kvm]
 *                 [vsm-service's transport/authz/limit/log flags]
 *   env: VSM_LISTEN, VSM_AGENT_ACTION_TIMEOUT_MS, VSM_AGENT_MEMSLOT_BUDGET, VSM_KVM_DEVICE and
 *   vsm-service's VSM_* (flags win)
 *
 * SIGTERM/SIGINT shut down gracefully: health NOT_SERVING, in-flight calls drain (bounded), then
 * every partition's VMs, vCPUs, memfds and mappings are freed and /dev/kvm is closed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AGENT_FLEET_FLAGS,
  AGENT_FLEET_USAGE,
  type AgentFleetConfig,
  type Backend,
  type Config,
  KvmBackend,
  UsageError,
  exitOnSignal,
  joinFleet,
  leaveFleetOnShutdown,
  parseAgentFleet,
  parseConfig,
  processLogger,
  serverOptionsFrom,
  shutdownSignal,
  startObservability,
  StateStore,
  persistentBackend,
  restoreAll,
  startServer,
} from '@vsm/vsm-v1';

export interface AgentConfig {
  /** Transport, security, limits and logging: exactly vsm-service's flags (its parseConfig). */
  service: Config;
  /** Where to listen: HOST:PORT, or unix:///absolute/path. */
  listen: string;
  actionTimeoutMs: number;
  /** Memslots a VTL VM's view may use for protections before the core's model answers instead. */
  memslotBudget: number;
  device: string;
  /** Fleet mode (--etcd-endpoints): how it registers in etcd. */
  fleet?: AgentFleetConfig;
}

export const AGENT_USAGE = `usage: vsm-kvm-agent [--listen HOST:PORT | --listen unix:///PATH] [--action-timeout-ms N] [--memslot-budget N] [--device /dev/kvm]
       [vsm-service's transport, authorization, limit and log flags: --log-level, --tls-cert/--tls-key/--tls-ca/--tls-client-auth,
        --insecure, --insecure-allow-remote, --authz-policy, --max-streams, --max-streams-per-client, --max-partitions, --max-vps, --max-memory,
        --metrics-listen HOST:PORT, --metrics-insecure-allow-remote]
  Default listen 127.0.0.1:50061. Plaintext only on loopback or a unix socket unless --insecure-allow-remote.
  --memslot-budget: memslots per VTL VM for VTL protections (default 4096, 64..32000); a view that needs more
  is mapped without them and its memory actions are answered by the core's model.
  --state-dir DIR (VSM_STATE_DIR): partitions kept durable there and brought back, stopped, after a restart.
  env: VSM_LISTEN, VSM_AGENT_ACTION_TIMEOUT_MS, VSM_AGENT_MEMSLOT_BUDGET, VSM_KVM_DEVICE and vsm-service's VSM_* variables
${AGENT_FLEET_USAGE}`;

const AGENT_FLAGS = ['action-timeout-ms', 'memslot-budget', 'device', ...AGENT_FLEET_FLAGS];
const DEFAULT_LISTEN = '127.0.0.1:50061';
/** Stands in for a unix: address while vsm-service's parser (HOST:PORT only) checks the rest. */
const UNIX_PLACEHOLDER = '127.0.0.1:1';

export function parseAgentConfig(argv: string[], env: NodeJS.ProcessEnv): AgentConfig {
  const rest: string[] = [];
  const own = new Map<string, string>();
  let listenFlag: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') throw new UsageError(AGENT_USAGE);
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (m && (AGENT_FLAGS.includes(m[1]!) || m[1] === 'listen')) {
      const v = m[2] ?? argv[++i];
      if (v === undefined) throw new UsageError(`--${m[1]} needs a value\n${AGENT_USAGE}`);
      if (m[1] === 'listen') listenFlag = v;
      else own.set(m[1]!, v);
      continue;
    }
    if (m && (m[1] === 'backend' || m[1] === 'agent'))
      throw new UsageError(`--${m[1]} is a vsm-service flag: the agent runs partitions itself\n${AGENT_USAGE}`);
    rest.push(a);
  }
  const listen = listenFlag ?? (env.VSM_LISTEN || DEFAULT_LISTEN);
  const unix = /^unix:/.test(listen);
  if (unix && !/^unix:(\/\/)?\/[^\0]+$/.test(listen))
    throw new UsageError(`--listen unix: needs an absolute path (unix:///run/vsm/agent.sock), got ${JSON.stringify(listen)}`);
  let service: Config;
  try {
    service = parseConfig([...rest, '--listen', unix ? UNIX_PLACEHOLDER : listen], { ...env, VSM_BACKEND: undefined, VSM_AGENTS: undefined });
  } catch (e) {
    if (e instanceof UsageError && /^usage: vsm-service/m.test(e.message)) throw new UsageError(e.message.replace(/usage: vsm-service[\s\S]*$/, AGENT_USAGE));
    throw e;
  }
  const timeoutRaw = own.get('action-timeout-ms') ?? env.VSM_AGENT_ACTION_TIMEOUT_MS ?? '2000';
  if (!/^\d+$/.test(timeoutRaw) || Number(timeoutRaw) < 1 || Number(timeoutRaw) > 600_000)
    throw new UsageError('--action-timeout-ms must be an integer 1..600000');
  const budgetRaw = own.get('memslot-budget') ?? env.VSM_AGENT_MEMSLOT_BUDGET ?? '4096';
  if (!/^\d+$/.test(budgetRaw) || Number(budgetRaw) < 64 || Number(budgetRaw) > 32_000) throw new UsageError('--memslot-budget must be an integer 64..32000');
  return {
    service: { ...service, listen },
    listen,
    actionTimeoutMs: Number(timeoutRaw),
    memslotBudget: Number(budgetRaw),
    device: own.get('device') ?? env.VSM_KVM_DEVICE ?? '/dev/kvm',
    fleet: parseAgentFleet(own, env, { listen, service }),
  };
}

/** The socket file of a unix: address (unix:/p, unix:///p). */
export function unixSocketPath(listen: string): string | undefined {
  const m = /^unix:(?:\/\/)?(\/.+)$/.exec(listen);
  return m ? m[1] : undefined;
}

async function main(): Promise<void> {
  let cfg: AgentConfig;
  try {
    cfg = parseAgentConfig(process.argv.slice(2), process.env);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(e.message + '\n');
      process.exit(2);
    }
    throw e;
  }
  const { log, dest } = processLogger('vsm-kvm-agent', cfg.service.logLevel);
  const signalled = shutdownSignal();
  const why = KvmBackend.unavailableReason(cfg.device);
  if (why) {
    log.fatal({ device: cfg.device }, `KVM is not usable: ${why}`);
    process.exit(2);
  }
  // Metrics endpoint (--metrics-listen) and traces (OTEL_EXPORTER_OTLP_ENDPOINT).
  const obs = await startObservability('vsm-kvm-agent', cfg.service, log);
  const { maxStreams: _s, maxStreamsPerClient: _c, ...partitionLimits } = cfg.service.limits;
  const backend = new KvmBackend({
    observer: obs.metrics?.kvmObserver(),
    devicePath: cfg.device,
    actionTimeoutMs: cfg.actionTimeoutMs,
    memslotBudget: cfg.memslotBudget,
    limits: Object.fromEntries(Object.entries(partitionLimits).filter(([, v]) => v !== undefined)),
  });
  backend.report = (e, ctx) => log.error({ ...ctx, err: e }, 'partition task failed; the partition crashed');
  obs.observeBackend(backend);
  const host = backend.kvmHost(); // open /dev/kvm now: fail at start, not at the first partition
  log.info({ device: cfg.device, cpuidLeaves: host.cpuid.length, pioOutAdvancesRip: host.pioOutAdvancesRip }, 'KVM ready');
  const sock = unixSocketPath(cfg.listen);
  if (sock && fs.existsSync(sock) && fs.statSync(sock).isSocket()) fs.unlinkSync(sock); // stale socket of an earlier run
  // Plaintext is served on loopback and on unix sockets (local: file permissions decide who connects).
  // --state-dir: partitions kept durable (state-dir.ts) and brought back after a restart, stopped, with
  // their last durable state (a guest that was running is not running any more; see the README).
  let served: Backend = backend;
  if (cfg.service.stateDir) {
    const store = new StateStore(cfg.service.stateDir);
    served = persistentBackend(backend, store, log);
    await restoreAll(served, store, log);
  }
  const srv = await startServer({ listen: cfg.listen, backend: served, logger: log, ...serverOptionsFrom(cfg.service), telemetry: obs.telemetry });
  obs.setReady(true);
  // Fleet mode: register under a lease (retried while etcd is away); shutdown leaves the fleet first.
  if (cfg.fleet) {
    const version = JSON.parse(fs.readFileSync(path.join(__dirname, '../package.json'), 'utf8')).version as string;
    const { maxPartitions, maxResidentBytes } = cfg.service.limits;
    const capacity = { partitions: maxPartitions ?? 4096, memoryBytes: maxResidentBytes, memslots: cfg.memslotBudget };
    leaveFleetOnShutdown(srv, joinFleet(cfg.fleet, { backend: 'kvm', version, capacity, boundPort: srv.port }, log));
  }
  await exitOnSignal(
    signalled,
    (sig) => {
      obs.setReady(false);
      return srv.shutdown(sig).finally(() => obs.close());
    },
    dest,
    () => {
      if (sock && fs.existsSync(sock)) fs.unlinkSync(sock);
    },
  );
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`vsm-kvm-agent failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
