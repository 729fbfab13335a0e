// service layer: configuration from flags and environment (flags win).
//   --listen HOST:PORT   | VSM_LISTEN    (default 127.0.0.1:50051)
//   --backend emulator   | VSM_BACKEND   (default emulator)
//   --log-level LEVEL    | VSM_LOG_LEVEL (default info)
export interface Config {
  listen: string;
  backend: 'emulator' | 'agent';
  logLevel: string;
  agents: string[];
}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): Config {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') throw new UsageError(USAGE);
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new UsageError(`unexpected argument ${JSON.stringify(a)}\n${USAGE}`);
    const v = m[2] ?? argv[++i];
    if (v === undefined) throw new UsageError(`--${m[1]} needs a value\n${USAGE}`);
    flags.set(m[1]!, v);
  }
  for (const k of flags.keys()) if (!['listen', 'backend', 'log-level', 'agent'].includes(k)) throw new UsageError(`unknown flag --${k}\n${USAGE}`);
  const listen = flags.get('listen') ?? env.VSM_LISTEN ?? '127.0.0.1:50051';
  if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(listen)) throw new UsageError(`--listen must be HOST:PORT, got ${JSON.stringify(listen)}`);
  const backend = flags.get('backend') ?? env.VSM_BACKEND ?? 'emulator';
  if (backend !== 'emulator' && backend !== 'agent') throw new UsageError(`--backend must be emulator or agent, got ${JSON.stringify(backend)}`);
  const agents = (flags.get('agent') ?? env.VSM_AGENTS ?? '').split(',').filter(Boolean);
  return { listen, backend, logLevel: flags.get('log-level') ?? env.VSM_LOG_LEVEL ?? 'info', agents };
}

export class UsageError extends Error {}

export const USAGE = `usage: vsm-service [--listen HOST:PORT] [--backend emulator|agent] [--agent ADDR,...] [--log-level LEVEL]
  env: VSM_LISTEN, VSM_BACKEND, VSM_AGENTS, VSM_LOG_LEVEL`;
