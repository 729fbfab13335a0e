// fleet: the etcd flags both processes take (config.ts calls parseFleetConfig):
//   --etcd-endpoints URL[,URL...]   | VSM_ETCD_ENDPOINTS  (http://HOST:PORT or https://HOST:PORT; bare HOST:PORT = http,
//                                                           or https with --etcd-ca)
//   --etcd-prefix PREFIX            | VSM_ETCD_PREFIX     (default /vsm/; every key lives under it)
//   --etcd-ca FILE                  | VSM_ETCD_CA         (CA of etcd's server certificates; implies https)
//   --etcd-cert FILE --etcd-key FILE| VSM_ETCD_CERT, VSM_ETCD_KEY (client certificate, when etcd requires one)
//   --checkpoint-dir DIR            | VSM_CHECKPOINT_DIR  (vsm-service: durable checkpoints, shared by every replica)
//   --checkpoint-interval SECONDS   | VSM_CHECKPOINT_INTERVAL (default 300; 0 = only CheckpointPartition)
//   --replica-ttl SECONDS           | VSM_REPLICA_TTL     (vsm-service: its presence lease, default 10)
import * as fs from 'node:fs';

export interface FleetConfig {
  endpoints: string[];
  prefix: string;
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  /** vsm-service: where partitions' checkpoints go (a directory every replica reads and writes). */
  checkpointDir?: string;
  /** vsm-service: how often each partition is checkpointed (0 or absent: only on CheckpointPartition). */
  checkpointIntervalMs?: number;
  /** vsm-service: the lease TTL of its presence (how soon others repair its half-done creates). */
  replicaTtlSeconds?: number;
}

export const FLEET_FLAGS = ['etcd-endpoints', 'etcd-prefix', 'etcd-ca', 'etcd-cert', 'etcd-key', 'checkpoint-dir', 'checkpoint-interval', 'replica-ttl'];
export const DEFAULT_CHECKPOINT_INTERVAL_S = 300;
export const DEFAULT_ETCD_PREFIX = '/vsm/';

/** `get(flag, env)` is config.ts's lookup (flag, else environment); errors are returned as messages. */
export function parseFleetConfig(get: (flag: string, envName: string) => string | undefined): FleetConfig | string | undefined {
  const raw = get('etcd-endpoints', 'VSM_ETCD_ENDPOINTS');
  const prefix = get('etcd-prefix', 'VSM_ETCD_PREFIX');
  const caFile = get('etcd-ca', 'VSM_ETCD_CA');
  const certFile = get('etcd-cert', 'VSM_ETCD_CERT');
  const keyFile = get('etcd-key', 'VSM_ETCD_KEY');
  const checkpointDir = get('checkpoint-dir', 'VSM_CHECKPOINT_DIR');
  const interval = get('checkpoint-interval', 'VSM_CHECKPOINT_INTERVAL');
  const replicaTtl = get('replica-ttl', 'VSM_REPLICA_TTL');
  if (raw === undefined) {
    if (prefix !== undefined || caFile !== undefined || certFile !== undefined || keyFile !== undefined)
      return '--etcd-prefix, --etcd-ca, --etcd-cert and --etcd-key need --etcd-endpoints';
    if (checkpointDir !== undefined || interval !== undefined || replicaTtl !== undefined)
      return '--checkpoint-dir, --checkpoint-interval and --replica-ttl are fleet mode (--etcd-endpoints)';
    return undefined;
  }
  if (checkpointDir !== undefined && (checkpointDir.trim() === '' || !fs.existsSync(checkpointDir) || !fs.statSync(checkpointDir).isDirectory()))
    return `--checkpoint-dir must name an existing directory, got ${JSON.stringify(checkpointDir)}`;
  if (interval !== undefined && (!/^\d+$/.test(interval) || Number(interval) > 86_400))
    return `--checkpoint-interval must be whole seconds 0..86400, got ${JSON.stringify(interval)}`;
  if (interval !== undefined && checkpointDir === undefined) return '--checkpoint-interval needs --checkpoint-dir';
  if (replicaTtl !== undefined && (!/^\d+$/.test(replicaTtl) || Number(replicaTtl) < 1 || Number(replicaTtl) > 300))
    return `--replica-ttl must be whole seconds 1..300, got ${JSON.stringify(replicaTtl)}`;
  if ((certFile === undefined) !== (keyFile === undefined)) return '--etcd-cert and --etcd-key go together';
  const endpoints: string[] = [];
  for (const e of raw.split(',').map((s) => s.trim())) {
    if (!e) continue;
    const m = /^(?:(https?):\/\/)?((?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5})\/?$/.exec(e);
    if (!m) return `--etcd-endpoints: ${JSON.stringify(e)} is not http(s)://HOST:PORT`;
    const scheme = m[1] ?? (caFile ? 'https' : 'http');
    if (scheme === 'http' && (caFile || certFile)) return `--etcd-endpoints: ${e} is plaintext http but --etcd-ca/--etcd-cert ask for TLS`;
    endpoints.push(`${scheme}://${m[2]}`);
  }
  if (endpoints.length === 0) return '--etcd-endpoints needs at least one URL';
  const p = prefix ?? DEFAULT_ETCD_PREFIX;
  if (!/^\/[\x21-\x7e]*\/$/.test(p) || p.includes('//')) return `--etcd-prefix must start and end with / (e.g. /vsm/), got ${JSON.stringify(p)}`;
  for (const f of [caFile, certFile, keyFile]) if (f !== undefined && !fs.existsSync(f)) return `--etcd-ca/--etcd-cert/--etcd-key: ${f} does not exist`;
  const tls = caFile || certFile ? { caFile, certFile, keyFile } : undefined;
  return {
    endpoints,
    prefix: p,
    tls,
    checkpointDir,
    checkpointIntervalMs: (interval === undefined ? DEFAULT_CHECKPOINT_INTERVAL_S : Number(interval)) * 1000,
    replicaTtlSeconds: replicaTtl === undefined ? undefined : Number(replicaTtl),
  };
}
