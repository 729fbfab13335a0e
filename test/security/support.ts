// Security test support: a pino logger that keeps its JSON lines, a server with a policy, and
// small helpers for audit lines and failed calls.
import pino, { Logger } from 'pino';
import { pb } from '@vsm/client';
import { EmulatorBackend, RunningServer, ServerOptions, startServer } from '@vsm/service';
import { sha256Hex } from '@vsm/service/security';

export interface LogLine {
  level: number;
  msg: string;
  audit?: boolean;
  principal?: string | null;
  method?: string;
  resource?: string;
  decision?: 'allow' | 'deny';
  [k: string]: unknown;
}

export function captureLogger(level = 'info'): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level }, { write: (s: string) => { for (const l of s.split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine); } });
  return { logger, lines };
}

export const tokenHash = (t: string) => `sha256:${sha256Hex(t)}`;

export async function startSecured(extra: Partial<ServerOptions> & { backend?: EmulatorBackend } = {}): Promise<{ srv: RunningServer; lines: LogLine[] }> {
  const { logger, lines } = captureLogger();
  const srv = await startServer({ listen: '127.0.0.1:0', backend: extra.backend ?? new EmulatorBackend(), logger, shutdownGraceMs: 200, ...extra });
  return { srv, lines };
}

export const audits = (lines: LogLine[], decision?: 'allow' | 'deny') => lines.filter((l) => l.audit && (decision === undefined || l.decision === decision));

export const partitionSpec = (vpCount = 1, maximumVtl = 1) => ({ vpCount, memoryBytes: 1n << 30n, maximumVtl } as pb.Partition);
