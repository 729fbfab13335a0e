// @vsm/client: the hand-written ergonomic layer over the generated vsm.v1 code of @vsm/api, whose
// types it re-exports (namespace `pb`) for its users.
export { pb } from '@vsm/api';
export { connect, VsmError } from './client';
export type { ConnectOptions, VsmClient, MonitorSession, GuestActionSession } from './client';
export { SNAPSHOT_FILE_MAGIC, frameSnapshotChunk, readSnapshotFiles, writeSnapshotFile } from './snapshot-stream';
export type { SnapshotStreams } from './snapshot-stream';
export { type ConsoleCapture, captureConsole } from './console';
