// RPC plumbing from the descriptors (#18): the server binds every vsm.v1 RPC by walking the
// descriptor set; each RPC declares its role (`(vsm.v1.required_role)`) and, when it changes nothing,
// `idempotency_level = NO_SIDE_EFFECTS`, which persistence reads instead of guessing from names.
import pino from 'pino';
import { pb, vsmFileDescriptors, vsmRpc, vsmRpcs, vsmServices } from '@vsm/api';
import { HvMsr } from '@vsm/core';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { connect, VsmError } from '@vsm/client';
import {
  type Backend,
  CoreBackend,
  METHOD_ROLES,
  RemoteBackend,
  type StateStore,
  missingRpcs,
  persistentBackend,
  persistedRpcs,
  requiredRole,
  startServer,
} from '@vsm/vsm-v1';

const GiB = 1n << 30n;

/**
 * The RPCs declared NO_SIDE_EFFECTS besides the Get and List ones (all of which must be): each one reviewed as
 * changing no partition. A new entry needs the same review.
 */
const READ_ONLY_OTHERS = [
  'vsm.v1.MemoryService/ReadGpa', // the host's view of RAM
  'vsm.v1.VtlService/WatchVtlTransitions', // a subscription
  'vsm.v1.SnapshotService/SavePartition', // reads the whole partition
  'vsm.v1.ExecutionService/StreamConsole', // reads the console output
];
/** Read-like names that change state: guest reads can intercept, suspend a VP and switch VTL; a monitor's answers apply. */
const READ_LIKE_MUTATING = ['ReadMsr', 'ReadMemory', 'ExecuteMemory', 'Monitor'];

describe('the vsm.v1 RPC table read from the descriptors', () => {
  test('every service and RPC of the generated code is in it, with its kind from the descriptor', () => {
    const generated = Object.entries(pb).filter(([k, v]) => k.endsWith('ServiceService') && typeof v === 'object');
    const paths = generated.flatMap(([, def]) => Object.values(def as Record<string, { path: string }>).map((m) => m.path)).sort();
    expect(
      vsmRpcs()
        .map((m) => m.path)
        .sort(),
    ).toEqual(paths);
    expect(vsmServices().length).toBe(generated.length);
    expect(vsmRpc('/vsm.v1.InterceptService/Monitor')?.kind).toBe('bidi_streaming');
    expect(vsmRpc('vsm.v1.VtlService/WatchVtlTransitions')?.kind).toBe('server_streaming');
    expect(vsmRpc('/vsm.v1.GuestService/ReadMemory')?.kind).toBe('unary');
    expect(vsmRpc('/vsm.v1.FutureService/DoSomething')).toBeUndefined();
  });

  test('every RPC declares its role in the proto; the policy reads it from there', () => {
    const undeclared = vsmRpcs()
      .filter((m) => !m.roleDeclared)
      .map((m) => m.key);
    expect(undeclared).toEqual([]);
    for (const m of vsmRpcs()) {
      expect(METHOD_ROLES[m.key]).toBe(m.requiredRole);
      expect(requiredRole(m.path)).toBe(m.requiredRole);
    }
    // The README's role table, spot-checked.
    expect(requiredRole('/vsm.v1.PartitionService/CreatePartition')).toBe('admin');
    expect(requiredRole('/vsm.v1.GuestService/ReadMsr')).toBe('operator');
    expect(requiredRole('/vsm.v1.InterceptService/Monitor')).toBe('monitor');
    expect(requiredRole('/vsm.v1.SynicService/GetSynicState')).toBe('viewer');
  });

  test('declared NO_SIDE_EFFECTS exactly on the read-only RPCs: every Get*/List*, the reviewed others, nothing that changes state', () => {
    for (const m of vsmRpcs())
      if (/^(Get|List)/.test(m.name)) expect({ rpc: m.key, noSideEffects: m.noSideEffects }).toEqual({ rpc: m.key, noSideEffects: true });
    const others = vsmRpcs()
      .filter((m) => m.noSideEffects && !/^(Get|List)/.test(m.name))
      .map((m) => m.key);
    expect(others.sort()).toEqual(READ_ONLY_OTHERS.filter((k) => vsmRpc(k)).sort());
    for (const m of vsmRpcs())
      if (/^(Create|Delete|Set|Write|Enable|Modify|Post|Signal|Restore|Start|Stop|Pause|Resume|Load|Call|Hypercall)/.test(m.name))
        expect({ rpc: m.key, noSideEffects: m.noSideEffects }).toEqual({ rpc: m.key, noSideEffects: false });
    for (const name of READ_LIKE_MUTATING) {
      const m = vsmRpcs().find((r) => r.name === name);
      expect(m?.noSideEffects).toBe(false);
      expect(persistedRpcs().has(m?.localName ?? '')).toBe(true);
    }
    for (const name of ['getPartition', 'readGpa', 'savePartition', 'watchVtlTransitions']) expect(persistedRpcs().has(name)).toBe(false);
  });

  test('the descriptors reflection serves carry the method options', () => {
    const files = vsmFileDescriptors().map((b) => fromBinary(FileDescriptorProtoSchema, b));
    expect(files.map((f) => f.name)).toEqual(
      expect.arrayContaining(['vsm/v1/options.proto', 'google/protobuf/descriptor.proto', 'vsm/v1/guest.proto', 'google/rpc/error_details.proto']),
    );
    const partition = files.find((f) => f.name === 'vsm/v1/partition.proto');
    const get = partition?.service[0]?.method.find((m) => m.name === 'GetPartition');
    expect(get?.options?.idempotencyLevel).toBe(1); // NO_SIDE_EFFECTS
    // The custom option travels as extension field 50001 of MethodOptions.
    expect(get?.options?.$unknown?.map((u) => u.no)).toEqual([50001]);
    expect(partition?.sourceCodeInfo?.location.length).toBeGreaterThan(0);
  });
});

describe('persistence by descriptor', () => {
  const fakeStore = () => {
    const saved: string[] = [];
    const removed: string[] = [];
    const store = {
      save: (id: string) => void saved.push(id),
      remove: (id: string) => void removed.push(id),
      quarantined: new Map(),
      assertIdFree: () => undefined,
    } as unknown as StateStore;
    return { store, saved, removed };
  };

  test('a mutating RPC with a read-like name is persisted; a NO_SIDE_EFFECTS one is not', async () => {
    const { store, saved, removed } = fakeStore();
    const b = persistentBackend(new CoreBackend(), store);
    const p = await b.createPartition(pb.CreatePartitionRequest.fromPartial({ partitionId: 'p1', partition: { vpCount: 1, memoryBytes: GiB } }));
    expect(saved).toEqual(['p1']);
    await b.getPartition({ name: p.name });
    await b.readGpa(pb.ReadGpaRequest.fromPartial({ name: p.name, gpa: 0n, length: 8 }));
    await b.savePartition({ name: p.name });
    expect(saved).toEqual(['p1']);
    await b.readMsr(pb.ReadMsrRequest.fromPartial({ name: `${p.name}/vps/0`, msr: HvMsr.HV_X64_MSR_GUEST_OS_ID }));
    expect(saved).toEqual(['p1', 'p1']);
    await b.readMemory(pb.ReadMemoryRequest.fromPartial({ name: `${p.name}/vps/0`, gpa: 0x1000n, length: 8 }));
    expect(saved).toEqual(['p1', 'p1', 'p1']);
    await b.deletePartition({ name: p.name });
    expect(removed).toEqual(['p1']);
    expect(b.kind).toBe('emulator');
  });

  test('any backend method named as a mutating RPC is persisted, whatever its name suggests', async () => {
    const { store, saved } = fakeStore();
    // A backend whose readMsr changes state (as on KVM a guest RDMSR could): persisted because the
    // proto does not declare ReadMsr NO_SIDE_EFFECTS, not because of its name.
    const inner = new CoreBackend();
    await inner.createPartition(pb.CreatePartitionRequest.fromPartial({ partitionId: 'p2', partition: { vpCount: 1, memoryBytes: GiB } }));
    const b = persistentBackend(inner, store);
    for (const m of persistedRpcs().values()) expect(m.noSideEffects).toBe(false);
    await b.readMsr(pb.ReadMsrRequest.fromPartial({ name: 'partitions/p2/vps/0', msr: HvMsr.HV_X64_MSR_HYPERCALL }));
    expect(saved).toEqual(['p2']);
  });
});

describe('binding from the descriptors', () => {
  test('the built-in backends have a method for every vsm.v1 RPC', () => {
    expect(missingRpcs(new CoreBackend())).toEqual([]);
    const remote = new RemoteBackend(['127.0.0.1:1']);
    expect(missingRpcs(remote)).toEqual([]);
    void remote.close();
  });

  test('an RPC the backend has no method for is reported at start-up and answers UNIMPLEMENTED / HV_STATUS_FEATURE_UNAVAILABLE', async () => {
    const backend = new CoreBackend();
    const before = missingRpcs(backend);
    Object.defineProperty(backend, 'getSynicState', { value: undefined });
    expect(missingRpcs(backend).filter((k) => !before.includes(k))).toEqual(['vsm.v1.SynicService/GetSynicState']);
    const lines: { msg: string; missing?: string[] }[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
    const srv = await startServer({ listen: '127.0.0.1:0', backend: backend as Backend, logger });
    const client = connect(srv.address, { retries: 0 });
    try {
      expect(lines.find((l) => l.missing)?.missing).toContain('vsm.v1.SynicService/GetSynicState');
      const err = await client.synic.getSynicState(pb.GetSynicStateRequest.fromPartial({ name: 'partitions/x/vps/0' })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VsmError);
      expect((err as VsmError).code).toBe(grpc.status.UNIMPLEMENTED);
      expect((err as VsmError).reason).toBe('HV_STATUS_FEATURE_UNAVAILABLE');
      // The others are bound as usual.
      expect((await client.partitions.listPartitions(pb.ListPartitionsRequest.fromPartial({}))).partitions).toEqual([]);
    } finally {
      client.close();
      await srv.shutdown('test');
    }
  });
});
