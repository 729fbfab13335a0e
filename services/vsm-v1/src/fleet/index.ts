// fleet (#14): agent membership, placement and partition records on etcd. What the two processes
// call: vsm-service builds a FleetBackend (startFleetBackend) and holds its health NOT_SERVING until
// the fleet is loaded; vsm-kvm-agent parses its fleet flags (parseAgentFleet) and joins (joinFleet).
import * as os from 'node:os';
import type { Logger } from 'pino';
import type { Config } from '../config';
import { UsageError } from '../config';
import { type RunningServer, SERVICE_NAMES } from '../server';
import { FleetBackend } from './backend';
import type { FleetConfig } from './config';
import { Membership } from './membership';
import type { AgentCapacity } from './records';
import { FleetStore } from './store';

export { FleetBackend } from './backend';
export { FleetDirectory } from './directory';
export { FleetStore } from './store';
export { Membership } from './membership';
export { type FleetConfig, DEFAULT_ETCD_PREFIX } from './config';
export * as fleetRecords from './records';

/** vsm-service --backend agent --etcd-endpoints: the backend, loading from etcd in the background. */
export function startFleetBackend(fleet: FleetConfig, log: Logger): FleetBackend {
  const backend = new FleetBackend({ store: new FleetStore(fleet), log, replicaTtlSeconds: fleet.replicaTtlSeconds });
  backend.start();
  return backend;
}

/** Health NOT_SERVING (server and every service) until the fleet is loaded from etcd. */
export function holdHealthUntilSynced(srv: RunningServer, backend: FleetBackend, log: Logger): void {
  if (backend.directory.synced) return;
  const names = ['', ...SERVICE_NAMES];
  for (const s of names) srv.health.setStatus(s, 'NOT_SERVING');
  log.info('fleet: health NOT_SERVING until the fleet is loaded from etcd');
  void backend.directory.firstSync.then(() => {
    for (const s of names) srv.health.setStatus(s, 'SERVING');
  });
}

/** Fleet mode's checks on vsm-service's configuration; a message when it is not usable. */
export function fleetConfigProblem(cfg: Config): string | undefined {
  if (!cfg.fleet) return undefined;
  if (cfg.backend !== 'agent') return '--etcd-endpoints is the fleet mode of --backend agent (the emulator runs partitions in process and needs no etcd)';
  if (cfg.agents.length) return '--agent and --etcd-endpoints exclude each other: in fleet mode the agents register themselves in etcd';
  return undefined;
}

// ---- agent side -------------------------------------------------------------------------------

export const AGENT_FLEET_FLAGS = ['advertise', 'agent-name', 'agent-labels', 'lease-ttl', 'capacity-vps'];

export const AGENT_FLEET_USAGE = `  Fleet (with --etcd-endpoints URL,... [--etcd-prefix /vsm/] [--etcd-ca F] [--etcd-cert F --etcd-key F]): the agent registers
  under a lease: --advertise HOST:PORT (the address vsm-service dials; default --listen when it is a specific TCP address),
  --agent-name NAME (default the advertised address), --agent-labels k=v,..., --lease-ttl SECONDS (default 10),
  --capacity-vps N (VPs it offers; default 16 per host CPU).
  env: VSM_ADVERTISE, VSM_AGENT_NAME, VSM_AGENT_LABELS, VSM_AGENT_LEASE_TTL, VSM_AGENT_CAPACITY_VPS`;

export interface AgentFleetConfig {
  fleet: FleetConfig;
  advertise: string;
  name: string;
  labels: Record<string, string>;
  leaseTtlSeconds: number;
  capacityVps: number;
}

/** The agent's fleet flags (`own`: its own flags by name); undefined without --etcd-endpoints. Throws UsageError. */
export function parseAgentFleet(own: Map<string, string>, env: NodeJS.ProcessEnv, o: { listen: string; service: Config }): AgentFleetConfig | undefined {
  const get = (flag: string, envName: string) => {
    const v = own.get(flag) ?? env[envName];
    return v === '' ? undefined : v;
  };
  const raw = {
    advertise: get('advertise', 'VSM_ADVERTISE'),
    name: get('agent-name', 'VSM_AGENT_NAME'),
    labels: get('agent-labels', 'VSM_AGENT_LABELS'),
    ttl: get('lease-ttl', 'VSM_AGENT_LEASE_TTL'),
    vps: get('capacity-vps', 'VSM_AGENT_CAPACITY_VPS'),
  };
  const fleet = o.service.fleet;
  if (fleet?.checkpointDir !== undefined || fleet?.replicaTtlSeconds !== undefined)
    throw new UsageError('--checkpoint-dir and --replica-ttl are vsm-service’s (its replicas write the checkpoints); the agent takes neither');
  if (!fleet) {
    const set = AGENT_FLEET_FLAGS.filter((f) => own.has(f));
    if (set.length) throw new UsageError(`--${set[0]} is a fleet flag: it needs --etcd-endpoints`);
    return undefined;
  }
  const hostPort = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;
  let advertise = raw.advertise;
  if (advertise === undefined) {
    const m = hostPort.exec(o.listen);
    if (!m || ['0.0.0.0', '[::]', '::'].includes(m[1]!))
      throw new UsageError(`--etcd-endpoints needs --advertise HOST:PORT: the address vsm-service dials (--listen ${o.listen} does not name one)`);
    advertise = o.listen;
  }
  const am = hostPort.exec(advertise);
  // Port 0 (an ephemeral --listen): the port the server bound is advertised (joinFleet's boundPort).
  if (!am || Number(am[2]) > 65535 || ['0.0.0.0', '[::]'].includes(am[1]!))
    throw new UsageError(`--advertise must be a HOST:PORT the service can dial, got ${JSON.stringify(advertise)}`);
  const name = raw.name ?? advertise; // with port 0: completed by joinFleet
  if (!/^[A-Za-z0-9._:[\]-]{1,128}$/.test(name))
    throw new UsageError(`--agent-name must be 1..128 characters of [A-Za-z0-9._:[]-], got ${JSON.stringify(name)}`);
  const labels: Record<string, string> = {};
  for (const kv of (raw.labels ?? '').split(',').filter(Boolean)) {
    const m = /^([a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?)=([A-Za-z0-9._-]{0,63})$/.exec(kv);
    if (!m) throw new UsageError(`--agent-labels: ${JSON.stringify(kv)} is not key=value (key [a-z0-9._/-], value [A-Za-z0-9._-])`);
    labels[m[1]!] = m[3]!;
  }
  const int = (v: string | undefined, flag: string, def: number, min: number, max: number) => {
    if (v === undefined) return def;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`--${flag} must be an integer ${min}..${max}, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  return {
    fleet,
    advertise,
    name,
    labels,
    leaseTtlSeconds: int(raw.ttl, 'lease-ttl', 10, 1, 300),
    capacityVps: int(raw.vps, 'capacity-vps', os.availableParallelism() * 16, 1, 1_000_000),
  };
}

/** Registers the agent in the fleet (in the background, retrying while etcd is away); close() leaves. */
export function joinFleet(
  cfg: AgentFleetConfig,
  info: { backend: string; version: string; capacity: Omit<AgentCapacity, 'vps'>; boundPort: number },
  log: Logger,
): Membership {
  const ephemeral = /:0$/.test(cfg.advertise);
  const address = ephemeral ? cfg.advertise.replace(/:0$/, `:${info.boundPort}`) : cfg.advertise;
  const m = new Membership({
    store: new FleetStore(cfg.fleet),
    member: {
      name: ephemeral && cfg.name === cfg.advertise ? address : cfg.name,
      address,
      backend: info.backend,
      version: info.version,
      labels: cfg.labels,
      capacity: { ...info.capacity, vps: cfg.capacityVps },
    },
    ttlSeconds: cfg.leaseTtlSeconds,
    log,
  });
  m.start();
  return m;
}

/** The server's shutdown first leaves the fleet (its partitions turn UNAVAILABLE at once), then drains. */
export function leaveFleetOnShutdown(srv: RunningServer, membership: Membership): void {
  const shutdown = srv.shutdown.bind(srv);
  srv.shutdown = async (reason?: string) => {
    await membership.close();
    return shutdown(reason);
  };
}
