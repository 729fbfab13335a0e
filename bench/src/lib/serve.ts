// Child side of the fork protocol. A server script started by ctx.forkServer must:
//   1. bind 127.0.0.1 on port 0 (ephemeral),
//   2. call announceReady(port) once it accepts connections.
// exitWithParent() makes the child exit when the runner goes away (IPC channel closed), so a
// SIGKILLed runner leaves no orphan behind.

export interface ReadyMessage {
  type: 'bench-ready';
  port: number;
  info?: Record<string, unknown>;
}

export function isReadyMessage(m: unknown): m is ReadyMessage {
  return typeof m === 'object' && m !== null && (m as ReadyMessage).type === 'bench-ready' && Number.isInteger((m as ReadyMessage).port);
}

export function announceReady(port: number, info?: Record<string, unknown>): void {
  if (!process.send) throw new Error('announceReady: not started by ctx.forkServer (no IPC channel)');
  const msg: ReadyMessage = { type: 'bench-ready', port, ...(info ? { info } : {}) };
  process.send(msg);
}

export function exitWithParent(onExit?: () => void): void {
  const bye = () => {
    try {
      onExit?.();
    } finally {
      process.exit(0);
    }
  };
  process.on('disconnect', bye);
  process.on('SIGTERM', bye);
  process.on('SIGINT', bye);
}
