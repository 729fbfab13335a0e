// service layer: configuration from flags and environment (flags win).
//   --listen HOST:PORT              | VSM_LISTEN        (default 127.0.0.1:50051)
//   --backend emulator              | VSM_BACKEND       (default emulator)
//   --log-level LEVEL               | VSM_LOG_LEVEL     (default info)
// Transport (plaintext is served only on loopback unless --insecure-allow-remote):
//   --tls-cert FILE --tls-key FILE  | VSM_TLS_CERT, VSM_TLS_KEY   (re-read when the files change)
//   --tls-ca FILE                   | VSM_TLS_CA        (CA for client certificates)
//   --tls-client-auth require|optional|none | VSM_TLS_CLIENT_AUTH (default require with --tls-ca)
//   --insecure                      | VSM_INSECURE=1    (plaintext, explicitly; loopback only)
//   --insecure-allow-remote         | VSM_INSECURE_ALLOW_REMOTE=1 (plaintext on any address)
// Authorization:
//   --authz-policy FILE             | VSM_AUTHZ_POLICY  (JSON; unset = authorization off)
// Limits:
//   --max-streams N                 | VSM_MAX_STREAMS             (default 256)
//   --max-streams-per-client N      | VSM_MAX_STREAMS_PER_CLIENT  (default 64)
//   --max-partitions N              | VSM_MAX_PARTITIONS          (default 4096)
//   --max-vps N                     | VSM_MAX_VPS                 (VPs per partition, default 64)
//   --max-memory BYTES              | VSM_MAX_MEMORY              (per partition, default 1 TiB; K/M/G/T suffixes)
//   --max-resident-bytes BYTES      | VSM_MAX_RESIDENT_BYTES      (guest RAM held by all partitions together,
//                                                                  default half of the machine's RAM; K/M/G/T)
// Transport limits (memory a client can make the service hold):
//   --max-request-bytes BYTES       | VSM_MAX_REQUEST_BYTES       (request messages still being received, all clients; default 256M)
//   --max-request-bytes-per-client BYTES | VSM_MAX_REQUEST_BYTES_PER_CLIENT (the same per principal/peer; default 64M)
//   --max-stream-buffer BYTES       | VSM_MAX_STREAM_BUFFER       (responses a stream's client has not taken; default 16M)
//   --max-stream-buffer-messages N  | VSM_MAX_STREAM_BUFFER_MESSAGES (the same in messages; default 4096)
//   --stream-stall-timeout-ms MS    | VSM_STREAM_STALL_TIMEOUT_MS (a client taking none of a waiting backlog; default 30000)
//   --first-message-timeout-ms MS   | VSM_FIRST_MESSAGE_TIMEOUT_MS (Monitor's subscribe must come within; default 10000)
//   --max-health-watches N          | VSM_MAX_HEALTH_WATCHES      (grpc.health.v1 Watch streams; default 64, a quarter per peer)
//   --max-concurrent-streams N      | VSM_MAX_CONCURRENT_STREAMS  (HTTP/2 streams per connection; default 1000)
// Fleet (fleet/config.ts): --etcd-endpoints, --etcd-prefix, --etcd-ca, --etcd-cert, --etcd-key | VSM_ETCD_*
// Observability (observability/): metrics and probes over HTTP, off by default:
//   --metrics-listen HOST:PORT      | VSM_METRICS_LISTEN          (/metrics, /livez, /readyz; loopback unless TLS
//                                                                  or an opt-in, like the gRPC port)
//   --metrics-insecure-allow-remote | VSM_METRICS_INSECURE_ALLOW_REMOTE=1 (plaintext metrics on any address)
//   traces: OTEL_EXPORTER_OTLP_ENDPOINT (OTLP http/protobuf; unset = no tracing), OTEL_SERVICE_NAME
import * as os from 'node:os';
import { FLEET_FLAGS, type FleetConfig, parseFleetConfig } from './fleet/config';
import type { ClientAuth } from './security/tls';
import { PLAINTEXT_REMOTE_REFUSED, isLoopbackListen } from './security/tls';

export interface Config {
  listen: string;
  backend: 'emulator' | 'agent';
  logLevel: string;
  agents: string[];
  tls?: { certFile: string; keyFile: string; caFile?: string; clientAuth: ClientAuth };
  /** Plaintext on a non-loopback address was explicitly allowed. */
  insecureAllowRemote: boolean;
  authzPolicy?: string;
  /** Durable partitions: one atomic snapshot file per partition (state-dir.ts). */
  stateDir?: string;
  /** Fleet mode: etcd holds agent membership and partition records (fleet/config.ts). */
  fleet?: FleetConfig;
  limits: { maxStreams?: number; maxStreamsPerClient?: number; maxPartitions?: number; maxVpCount?: number; maxMemoryBytes?: bigint; maxResidentBytes: bigint };
  /** Transport limits; unset = the server's defaults. */
  transport: TransportLimits;
  /** Where the metrics and probes are served over HTTP (unset: not served). */
  metricsListen?: string;
  /** Plaintext metrics on a non-loopback address were explicitly allowed. */
  metricsInsecureAllowRemote?: boolean;
}

export interface TransportLimits {
  maxRequestBytes?: number;
  maxRequestBytesPerClient?: number;
  maxStreamBufferBytes?: number;
  maxStreamBufferMessages?: number;
  streamStallMs?: number;
  firstMessageTimeoutMs?: number;
  maxHealthWatches?: number;
  maxConcurrentStreams?: number;
}

const TRANSPORT_FLAGS = [
  'max-request-bytes',
  'max-request-bytes-per-client',
  'max-stream-buffer',
  'max-stream-buffer-messages',
  'stream-stall-timeout-ms',
  'first-message-timeout-ms',
  'max-health-watches',
  'max-concurrent-streams',
];

/** Default --max-resident-bytes: half of the machine's RAM, in whole pages. */
export function defaultMaxResidentBytes(): bigint {
  return (BigInt(os.totalmem()) / 2n) & ~4095n;
}

const VALUE_FLAGS = [
  'listen',
  'backend',
  'log-level',
  'agent',
  'tls-cert',
  'tls-key',
  'tls-ca',
  'tls-client-auth',
  'authz-policy',
  'max-streams',
  'max-streams-per-client',
  'max-partitions',
  'max-vps',
  'max-memory',
  'max-resident-bytes',
  'state-dir',
  ...FLEET_FLAGS,
  'metrics-listen',
  ...TRANSPORT_FLAGS,
];
const BOOL_FLAGS = ['insecure', 'insecure-allow-remote', 'metrics-insecure-allow-remote'];

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): Config {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') throw new UsageError(USAGE);
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new UsageError(`unexpected argument ${JSON.stringify(a)}\n${USAGE}`);
    if (BOOL_FLAGS.includes(m[1]!)) {
      const v = m[2] ?? 'true';
      if (!['true', 'false', '1', '0'].includes(v)) throw new UsageError(`--${m[1]} takes no value (or =true/=false)`);
      flags.set(m[1]!, v);
      continue;
    }
    const v = m[2] ?? argv[++i];
    if (v === undefined) throw new UsageError(`--${m[1]} needs a value\n${USAGE}`);
    flags.set(m[1]!, v);
  }
  for (const k of flags.keys()) if (!VALUE_FLAGS.includes(k) && !BOOL_FLAGS.includes(k)) throw new UsageError(`unknown flag --${k}\n${USAGE}`);
  const get = (flag: string, envName: string): string | undefined => {
    const v = flags.get(flag) ?? env[envName];
    return v === '' ? undefined : v;
  };
  const bool = (flag: string, envName: string): boolean => ['true', '1', 'yes'].includes((get(flag, envName) ?? 'false').toLowerCase());

  const listen = get('listen', 'VSM_LISTEN') ?? '127.0.0.1:50051';
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(listen)) throw new UsageError(`--listen must be HOST:PORT, got ${JSON.stringify(listen)}`);
  const backend = get('backend', 'VSM_BACKEND') ?? 'emulator';
  if (backend !== 'emulator' && backend !== 'agent') throw new UsageError(`--backend must be emulator or agent, got ${JSON.stringify(backend)}`);
  const agents = (get('agent', 'VSM_AGENTS') ?? '').split(',').filter(Boolean);

  // Transport.
  const certFile = get('tls-cert', 'VSM_TLS_CERT');
  const keyFile = get('tls-key', 'VSM_TLS_KEY');
  const caFile = get('tls-ca', 'VSM_TLS_CA');
  const clientAuthRaw = get('tls-client-auth', 'VSM_TLS_CLIENT_AUTH');
  const insecure = bool('insecure', 'VSM_INSECURE');
  const insecureAllowRemote = bool('insecure-allow-remote', 'VSM_INSECURE_ALLOW_REMOTE');
  if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  if (clientAuthRaw !== undefined && !['require', 'optional', 'none'].includes(clientAuthRaw))
    throw new UsageError(`--tls-client-auth must be require, optional or none, got ${JSON.stringify(clientAuthRaw)}`);
  let tls: Config['tls'];
  if (certFile && keyFile) {
    if (insecure || insecureAllowRemote) throw new UsageError('--insecure / --insecure-allow-remote contradict --tls-cert/--tls-key');
    const clientAuth = (clientAuthRaw ?? (caFile ? 'require' : 'none')) as ClientAuth;
    if (clientAuth !== 'none' && !caFile) throw new UsageError(`--tls-client-auth ${clientAuth} needs --tls-ca (the CA client certificates must chain to)`);
    if (clientAuth === 'none' && caFile)
      throw new UsageError('--tls-ca without client certificate authentication: drop --tls-ca or use --tls-client-auth require|optional');
    tls = { certFile, keyFile, caFile, clientAuth };
  } else {
    if (caFile !== undefined || clientAuthRaw !== undefined) throw new UsageError('--tls-ca / --tls-client-auth need --tls-cert and --tls-key');
    if (!insecureAllowRemote && !isLoopbackListen(listen)) throw new UsageError(PLAINTEXT_REMOTE_REFUSED(listen));
  }

  // Authorization: client certificates identify principals only through a policy.
  const authzPolicy = get('authz-policy', 'VSM_AUTHZ_POLICY');
  if (tls && tls.clientAuth !== 'none' && !authzPolicy)
    throw new UsageError(
      'client certificate authentication needs --authz-policy FILE (which certificates may do what); without a policy, authorization is off',
    );

  const int = (flag: string, envName: string, min: number, max: number): number | undefined => {
    const v = get(flag, envName);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new UsageError(`--${flag} must be an integer ${min}..${max}, got ${JSON.stringify(v)}`);
    return Number(v);
  };
  /** A byte count with an optional K/M/G/T suffix (powers of 1024; KiB, MB, ... accepted). */
  const size = (flag: string, envName: string): bigint | undefined => {
    const raw = get(flag, envName);
    if (raw === undefined) return undefined;
    const m = /^(\d+)([KMGT]i?B?)?$/i.exec(raw);
    if (!m) throw new UsageError(`--${flag} must be a byte count (suffixes K, M, G, T = powers of 1024), got ${JSON.stringify(raw)}`);
    const shift = { '': 0n, k: 10n, m: 20n, g: 30n, t: 40n }[(m[2] ?? '').charAt(0).toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
    const v = BigInt(m[1]!) << shift;
    if (v < 4096n || v % 4096n !== 0n) throw new UsageError(`--${flag} must be a positive multiple of 4096 bytes`);
    if (v > 1n << 53n) throw new UsageError(`--${flag} is larger than 8 PiB`);
    return v;
  };
  const maxMemoryBytes = size('max-memory', 'VSM_MAX_MEMORY');
  const maxResidentBytes = size('max-resident-bytes', 'VSM_MAX_RESIDENT_BYTES') ?? defaultMaxResidentBytes();
  const limits: Config['limits'] = {
    maxStreams: int('max-streams', 'VSM_MAX_STREAMS', 1, 1_000_000),
    maxStreamsPerClient: int('max-streams-per-client', 'VSM_MAX_STREAMS_PER_CLIENT', 1, 1_000_000),
    maxPartitions: int('max-partitions', 'VSM_MAX_PARTITIONS', 1, 1_000_000),
    maxVpCount: int('max-vps', 'VSM_MAX_VPS', 1, 4096),
    maxMemoryBytes,
    maxResidentBytes,
  };
  const bytes = (flag: string, envName: string) => {
    const v = size(flag, envName);
    return v === undefined ? undefined : Number(v);
  };
  const transport: TransportLimits = {
    maxRequestBytes: bytes('max-request-bytes', 'VSM_MAX_REQUEST_BYTES'),
    maxRequestBytesPerClient: bytes('max-request-bytes-per-client', 'VSM_MAX_REQUEST_BYTES_PER_CLIENT'),
    maxStreamBufferBytes: bytes('max-stream-buffer', 'VSM_MAX_STREAM_BUFFER'),
    maxStreamBufferMessages: int('max-stream-buffer-messages', 'VSM_MAX_STREAM_BUFFER_MESSAGES', 1, 10_000_000),
    streamStallMs: int('stream-stall-timeout-ms', 'VSM_STREAM_STALL_TIMEOUT_MS', 100, 86_400_000),
    firstMessageTimeoutMs: int('first-message-timeout-ms', 'VSM_FIRST_MESSAGE_TIMEOUT_MS', 100, 86_400_000),
    maxHealthWatches: int('max-health-watches', 'VSM_MAX_HEALTH_WATCHES', 1, 1_000_000),
    maxConcurrentStreams: int('max-concurrent-streams', 'VSM_MAX_CONCURRENT_STREAMS', 1, 2 ** 31 - 1),
  };
  const fleet = parseFleetConfig(get);
  if (typeof fleet === 'string') throw new UsageError(fleet);
  const stateDir = get('state-dir', 'VSM_STATE_DIR');
  if (stateDir !== undefined && stateDir.trim() === '') throw new UsageError('--state-dir must name a directory');
  const metricsListen = get('metrics-listen', 'VSM_METRICS_LISTEN');
  const metricsInsecureAllowRemote = bool('metrics-insecure-allow-remote', 'VSM_METRICS_INSECURE_ALLOW_REMOTE');
  if (metricsListen !== undefined) {
    if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(metricsListen) || Number(metricsListen.slice(metricsListen.lastIndexOf(':') + 1)) > 65535)
      throw new UsageError(`--metrics-listen must be HOST:PORT, got ${JSON.stringify(metricsListen)}`);
    if (!tls && !insecureAllowRemote && !metricsInsecureAllowRemote && !isLoopbackListen(metricsListen))
      throw new UsageError(
        `refusing to serve metrics in plaintext on the non-loopback address ${metricsListen}: configure TLS (--tls-cert/--tls-key), or pass --metrics-insecure-allow-remote`,
      );
  }
  return {
    listen,
    backend,
    logLevel: get('log-level', 'VSM_LOG_LEVEL') ?? 'info',
    agents,
    tls,
    insecureAllowRemote,
    authzPolicy,
    stateDir,
    limits,
    transport,
    fleet,
    metricsListen,
    metricsInsecureAllowRemote,
  };
}

export class UsageError extends Error {}

export const USAGE = `usage: vsm-service [--listen HOST:PORT] [--backend emulator|agent] [--agent ADDR,...] [--log-level LEVEL]
       [--tls-cert FILE --tls-key FILE [--tls-ca FILE] [--tls-client-auth require|optional|none]]
       [--insecure] [--insecure-allow-remote] [--authz-policy FILE]
       [--max-streams N] [--max-streams-per-client N] [--max-partitions N] [--max-vps N] [--max-memory BYTES]
       [--max-resident-bytes BYTES] [--state-dir DIR]
       [--max-request-bytes BYTES] [--max-request-bytes-per-client BYTES] [--max-stream-buffer BYTES]
       [--max-stream-buffer-messages N] [--stream-stall-timeout-ms MS] [--first-message-timeout-ms MS]
       [--max-health-watches N] [--max-concurrent-streams N]
       [--etcd-endpoints URL,... [--etcd-prefix /vsm/] [--etcd-ca FILE] [--etcd-cert FILE --etcd-key FILE]]
       [--checkpoint-dir DIR [--checkpoint-interval SECONDS]] [--replica-ttl SECONDS]
       [--metrics-listen HOST:PORT] [--metrics-insecure-allow-remote]
  Plaintext is served only on loopback addresses unless --insecure-allow-remote.
  Fleet mode (--backend agent --etcd-endpoints): agents register in etcd; partitions are placed and recorded there.
  --metrics-listen serves /metrics (Prometheus), /livez and /readyz over HTTP (HTTPS with --tls-cert);
  traces are exported with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
  env: VSM_LISTEN, VSM_BACKEND, VSM_AGENTS, VSM_LOG_LEVEL, VSM_TLS_CERT, VSM_TLS_KEY, VSM_TLS_CA,
       VSM_TLS_CLIENT_AUTH, VSM_INSECURE, VSM_INSECURE_ALLOW_REMOTE, VSM_AUTHZ_POLICY, VSM_MAX_STREAMS,
       VSM_MAX_STREAMS_PER_CLIENT, VSM_MAX_PARTITIONS, VSM_MAX_VPS, VSM_MAX_MEMORY,
       VSM_MAX_RESIDENT_BYTES, VSM_STATE_DIR, VSM_MAX_REQUEST_BYTES, VSM_MAX_REQUEST_BYTES_PER_CLIENT,
       VSM_MAX_STREAM_BUFFER, VSM_MAX_STREAM_BUFFER_MESSAGES, VSM_STREAM_STALL_TIMEOUT_MS,
       VSM_FIRST_MESSAGE_TIMEOUT_MS, VSM_MAX_HEALTH_WATCHES, VSM_MAX_CONCURRENT_STREAMS,
       VSM_METRICS_LISTEN, VSM_METRICS_INSECURE_ALLOW_REMOTE, OTEL_EXPORTER_OTLP_ENDPOINT`;
