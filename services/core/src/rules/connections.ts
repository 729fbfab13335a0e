// core, rules: SynIC connections (tlfs-overlays-synic.md §5.8; tlfs-hypercalls.md §2.8, §2.9). The
// host creates them (the TLFS's HvCallCreatePort + HvCallConnectPort done by the parent, folded into
// one object: a ConnectionId bound to a message or event port on (VP, VTL, SINT)); the guest uses
// them with HvCallPostMessage and HvCallSignalEvent. Bad input is an HvError, nothing half-applied.
import type { PartitionState, SynicConnection } from '../state/partition';
import { type Vtl, isVtl } from '../vtl-array';
import { HvStatus, hvFail } from '../tlfs/status';
import {
  HV_CONNECTION_ID_MASK,
  HV_EVENT_FLAGS_COUNT,
  HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT,
  HV_MESSAGE_TYPE_HYPERVISOR_MASK,
  HV_SYNIC_SINT_COUNT,
  encodeHvMessage,
} from '../tlfs/message';
import { assertActive } from './lifecycle';
import { postMessage, signalEvent, synicView } from './synic';

export interface ConnectionSpec {
  connectionId: number;
  kind: 'message' | 'event';
  vpIndex: number;
  sint: number;
  /** Default 0. */
  vtl?: Vtl;
  /** Event connections: the port's base flag (default 0). */
  flagNumber?: number;
  /** Event connections: the port's flag count (default 1): HvCallSignalEvent's FlagNumber must be below it. */
  flagCount?: number;
}

const isUint = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0;

/**
 * Creates a connection. HV_STATUS_INVALID_CONNECTION_ID: the id is not a 24-bit value;
 * HV_STATUS_OBJECT_IN_USE: it exists; HV_STATUS_INVALID_VP_INDEX: no such VP;
 * HV_STATUS_INVALID_PARAMETER: kind, SINT, VTL or flags out of range. The target VTL need not be
 * enabled yet (a use while it is not answers HV_STATUS_INVALID_SYNIC_STATE).
 */
export function createConnection(p: PartitionState, spec: ConnectionSpec): SynicConnection {
  assertActive(p);
  const { connectionId, kind, vpIndex, sint } = spec;
  if (!isUint(connectionId) || connectionId > HV_CONNECTION_ID_MASK)
    hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, `connection id ${connectionId} is not a 24-bit HV_CONNECTION_ID`);
  if (p.connections.has(connectionId)) hvFail(HvStatus.HV_STATUS_OBJECT_IN_USE, `connection ${connectionId} already exists`);
  if (kind !== 'message' && kind !== 'event') hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `connection kind ${String(kind)} is neither 'message' nor 'event'`);
  if (!isUint(vpIndex) || vpIndex >= p.vps.length) hvFail(HvStatus.HV_STATUS_INVALID_VP_INDEX, `VP index ${vpIndex} does not exist (vp_count ${p.vps.length})`);
  if (!isUint(sint) || sint >= HV_SYNIC_SINT_COUNT) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `SINT ${sint} is not 0..15`);
  const vtl = spec.vtl ?? 0;
  if (!isVtl(vtl) || vtl > p.maximumVtl) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `VTL ${vtl} is not 0..${p.maximumVtl}`);
  let flagNumber = 0;
  let flagCount = 1;
  if (kind === 'message') {
    if (spec.flagNumber !== undefined || spec.flagCount !== undefined) hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, 'a message connection has no event flags');
  } else {
    flagNumber = spec.flagNumber ?? 0;
    flagCount = spec.flagCount ?? 1;
    if (!isUint(flagNumber) || !isUint(flagCount) || flagCount < 1 || flagNumber + flagCount > HV_EVENT_FLAGS_COUNT)
      hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `event flags ${flagNumber}..+${flagCount} do not fit the ${HV_EVENT_FLAGS_COUNT} flags of a SINT`);
  }
  const c: SynicConnection = { connectionId, kind, vpIndex, sint, vtl, flagNumber, flagCount };
  p.connections.set(connectionId, c);
  return { ...c };
}

/** Deletes a connection; HV_STATUS_INVALID_CONNECTION_ID if there is none with that id. */
export function deleteConnection(p: PartitionState, connectionId: number): void {
  if (!p.connections.delete(connectionId)) hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, `connection ${connectionId} does not exist`);
}

/** The partition's connections by ascending id (copies). */
export function listConnections(p: PartitionState): SynicConnection[] {
  return [...p.connections.values()].sort((a, b) => a.connectionId - b.connectionId).map((c) => ({ ...c }));
}

function connectionOf(p: PartitionState, connectionId: number, kind: SynicConnection['kind']): SynicConnection {
  const c = p.connections.get(connectionId);
  if (!c) hvFail(HvStatus.HV_STATUS_INVALID_CONNECTION_ID, `connection ${connectionId} does not exist`);
  // The connection's port is not of the kind the call needs (tlfs-hypercalls.md §2.8, §2.9).
  if (c.kind !== kind) hvFail(HvStatus.HV_STATUS_INVALID_PORT_ID, `connection ${connectionId} is an ${c.kind} connection, not a ${kind} one`);
  return c;
}

function targetOf(p: PartitionState, c: SynicConnection) {
  const vp = p.vps[c.vpIndex]!;
  if (!vp.vtls.get(c.vtl).enabled) hvFail(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `VTL ${c.vtl} is not enabled on VP ${vp.index}: it has no SynIC`);
  return vp;
}

/**
 * HvCallPostMessage semantics (tlfs-hypercalls.md §2.8) after the input checks: the message goes to
 * the connection's SINT queue (delivered at once if the slot is free). HV_STATUS_INVALID_CONNECTION_ID
 * / INVALID_PORT_ID (not a message connection) / INVALID_SYNIC_STATE (target SynIC or SIM page
 * disabled) / INSUFFICIENT_BUFFERS (SYNIC_QUEUE_LIMIT messages already wait).
 */
export function postThroughConnection(p: PartitionState, connectionId: number, messageType: number, payload: Buffer): 'delivered' | 'queued' {
  const c = connectionOf(p, connectionId, 'message');
  if (messageType === 0 || (messageType & HV_MESSAGE_TYPE_HYPERVISOR_MASK) !== 0)
    hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, `message type 0x${messageType.toString(16)} is reserved`);
  if (payload.length > HV_MESSAGE_MAX_PAYLOAD_BYTE_COUNT) hvFail(HvStatus.HV_STATUS_INVALID_HYPERCALL_INPUT, 'payload exceeds 240 bytes');
  const vp = targetOf(p, c);
  const view = synicView(p, vp, c.vtl);
  if (!view.enabled() || !view.simPage()) hvFail(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `the SynIC or SIM page of VP ${vp.index} VTL ${c.vtl} is disabled`);
  // OriginationId: the port (here: the connection's id, ports are not separate objects) (§5.3).
  const message = encodeHvMessage({ messageType, payloadSize: payload.length, messageFlags: 0, originationId: BigInt(connectionId) }, payload);
  const r = postMessage(p, vp, c.vtl, c.sint, message);
  if (r === 'full') hvFail(HvStatus.HV_STATUS_INSUFFICIENT_BUFFERS, `SINT${c.sint} of VP ${vp.index} has no free message buffer`);
  return r;
}

/**
 * HvCallSignalEvent semantics (tlfs-hypercalls.md §2.9): sets flag flagNumber + `flagNumber` of the
 * connection's SINT; returns whether it was newly set (then the SINT was asserted).
 * HV_STATUS_INVALID_CONNECTION_ID / INVALID_PORT_ID (not an event connection) /
 * INVALID_PARAMETER (FlagNumber >= the port's flag count) / INVALID_SYNIC_STATE (target SynIC or
 * SIEF page disabled, or the SINT masked).
 */
export function signalThroughConnection(p: PartitionState, connectionId: number, flagNumber: number): boolean {
  const c = connectionOf(p, connectionId, 'event');
  if (!isUint(flagNumber) || flagNumber >= c.flagCount)
    hvFail(HvStatus.HV_STATUS_INVALID_PARAMETER, `flag number ${flagNumber} is not below the port's ${c.flagCount} flags`);
  const vp = targetOf(p, c);
  const r = signalEvent(p, vp, c.vtl, c.sint, c.flagNumber + flagNumber);
  if (r === 'disabled') hvFail(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `the SynIC or SIEF page of VP ${vp.index} VTL ${c.vtl} is disabled`);
  if (r === 'masked') hvFail(HvStatus.HV_STATUS_INVALID_SYNIC_STATE, `SINT${c.sint} of VP ${vp.index} VTL ${c.vtl} is masked`);
  return r;
}
