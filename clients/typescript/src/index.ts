// @vsm/client: generated vsm.v1 types (namespace `pb`) plus the hand-written ergonomic layer.
export * as pb from './pb';
export { connect, VsmError } from './client';
export type { ConnectOptions, VsmClient, MonitorSession } from './client';
