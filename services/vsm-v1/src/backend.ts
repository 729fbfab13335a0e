// service layer: what a backend must implement. The emulator backend runs the core in process; the
// agent backend (KVM host agent) forwards to a remote vsm.v1 server. Types are the generated
// vsm.v1 messages, so a backend is exactly "an implementation of the vsm.v1 services".
import type { pb } from '@vsm/client';

export interface StreamSink<T> {
  write(msg: T): boolean;
  /** Resolves when the transport can take more (back-pressure). */
  drained(): Promise<void>;
}

export interface Backend {
  readonly kind: string;
  createPartition(r: pb.CreatePartitionRequest): Promise<pb.Partition>;
  getPartition(r: pb.GetPartitionRequest): Promise<pb.Partition>;
  listPartitions(r: pb.ListPartitionsRequest): Promise<pb.ListPartitionsResponse>;
  deletePartition(r: pb.DeletePartitionRequest): Promise<pb.DeletePartitionResponse>;
  getCapabilities(r: pb.GetCapabilitiesRequest): Promise<pb.Capabilities>;

  getVirtualProcessor(r: pb.GetVirtualProcessorRequest): Promise<pb.VirtualProcessor>;
  getVpRegisters(r: pb.GetVpRegistersRequest): Promise<pb.GetVpRegistersResponse>;
  setVpRegisters(r: pb.SetVpRegistersRequest): Promise<pb.SetVpRegistersResponse>;

  writeMsr(r: pb.WriteMsrRequest): Promise<pb.WriteMsrResponse>;
  readMsr(r: pb.ReadMsrRequest): Promise<pb.ReadMsrResponse>;
  hypercall(r: pb.HypercallRequest): Promise<pb.HypercallResponse>;
  callHypercallPage(r: pb.CallHypercallPageRequest): Promise<pb.CallHypercallPageResponse>;
  readMemory(r: pb.ReadMemoryRequest): Promise<pb.ReadMemoryResponse>;
  writeMemory(r: pb.WriteMemoryRequest): Promise<pb.WriteMemoryResponse>;
  executeMemory(r: pb.ExecuteMemoryRequest): Promise<pb.ExecuteMemoryResponse>;

  readGpa(r: pb.ReadGpaRequest): Promise<pb.ReadGpaResponse>;
  writeGpa(r: pb.WriteGpaRequest): Promise<pb.WriteGpaResponse>;
  listOverlays(r: pb.ListOverlaysRequest): Promise<pb.ListOverlaysResponse>;

  enablePartitionVtl(r: pb.EnablePartitionVtlRequest): Promise<pb.EnablePartitionVtlResponse>;
  enableVpVtl(r: pb.EnableVpVtlRequest): Promise<pb.EnableVpVtlResponse>;
  /** Streams transitions until `signal` aborts; resolves when the stream ends. */
  watchVtlTransitions(r: pb.WatchVtlTransitionsRequest, sink: StreamSink<pb.WatchVtlTransitionsResponse>, signal: AbortSignal): Promise<void>;

  modifyVtlProtectionMask(r: pb.ModifyVtlProtectionMaskRequest): Promise<pb.ModifyVtlProtectionMaskResponse>;
  getVtlProtections(r: pb.GetVtlProtectionsRequest): Promise<pb.GetVtlProtectionsResponse>;
  setInterceptRoute(r: pb.SetInterceptRouteRequest): Promise<pb.SetInterceptRouteResponse>;
  listPendingIntercepts(r: pb.ListPendingInterceptsRequest): Promise<pb.ListPendingInterceptsResponse>;
  /** A monitor session: reads requests until the client half-closes or `signal` aborts. */
  monitor(requests: AsyncIterable<pb.MonitorRequest>, sink: StreamSink<pb.MonitorResponse>, signal: AbortSignal): Promise<void>;

  postMessage(r: pb.PostMessageRequest): Promise<pb.PostMessageResponse>;
  signalEvent(r: pb.SignalEventRequest): Promise<pb.SignalEventResponse>;
  getSynicState(r: pb.GetSynicStateRequest): Promise<pb.GetSynicStateResponse>;

  savePartition(r: pb.SavePartitionRequest): Promise<pb.PartitionSnapshot>;
  restorePartition(r: pb.RestorePartitionRequest): Promise<pb.Partition>;

  close(): Promise<void>;
}
