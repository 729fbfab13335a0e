// grpcurl's view of the server: it lists services and fetches file descriptors through the
// reflection service (v1 and v1alpha), then calls methods dynamically. This test does the same.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
// protobufjs is @grpc/proto-loader's own descriptor library.
import * as protobuf from 'protobufjs';
import * as descriptor from 'protobufjs/ext/descriptor';
import { type Harness, startHarness } from '../support/server';

/** A FileDescriptorProto as reflection serves it (protobufjs decodes it into a message with these fields). */
const decodeFile = (b: Uint8Array) => descriptor.FileDescriptorProto.decode(b) as unknown as descriptor.IFileDescriptorProto;
/** protobufjs/ext/descriptor adds Root.fromDescriptor at run time; its typings do not declare it. */
const fromDescriptor = (set: descriptor.IFileDescriptorSet) =>
  (protobuf.Root as unknown as { fromDescriptor(s: descriptor.IFileDescriptorSet): protobuf.Root }).fromDescriptor(set);
/** The one unary method these tests call, on a client built from a package definition. */
type ReadMsrClient = grpc.Client & { ReadMsr(req: { name: string; msr: number }, cb: (e: grpc.ServiceError) => void): void };

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h.stop();
});

const reflectionDir = path.dirname(require.resolve('@grpc/reflection/package.json'));

function reflectionClient(version: 'v1' | 'v1alpha') {
  const def = protoLoader.loadSync(path.join(reflectionDir, `build/proto/grpc/reflection/${version}/reflection.proto`), { keepCase: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { reflection: Record<string, { ServerReflection: grpc.ServiceClientConstructor }> } };
  return new pkg.grpc.reflection[version]!.ServerReflection!(h.address, grpc.credentials.createInsecure());
}

function ask(client: grpc.Client, req: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const call = (client as unknown as { ServerReflectionInfo(): grpc.ClientDuplexStream<object, Record<string, unknown>> }).ServerReflectionInfo();
    call.on('data', (d) => {
      resolve(d);
      call.end();
    });
    call.on('error', reject);
    call.write(req);
  });
}

test.each(['v1', 'v1alpha'] as const)('reflection %s lists vsm.v1 services, health and reflection', async (v) => {
  const c = reflectionClient(v);
  const res = await ask(c, { list_services: '' });
  const names = (res.list_services_response as { service: { name: string }[] }).service.map((s) => s.name);
  expect(names).toEqual(
    expect.arrayContaining([
      'vsm.v1.PartitionService',
      'vsm.v1.VirtualProcessorService',
      'vsm.v1.GuestService',
      'vsm.v1.MemoryService',
      'vsm.v1.VtlService',
      'vsm.v1.InterceptService',
    ]),
  );
  c.close();
});

test('reflection serves the file descriptor of a symbol, and a dynamic call built from it works', async () => {
  const c = reflectionClient('v1');
  const res = await ask(c, { file_containing_symbol: 'vsm.v1.GuestService' });
  const raw = (res.file_descriptor_response as { file_descriptor_proto: Buffer[] }).file_descriptor_proto;
  const files = raw.map(decodeFile);
  const guest = files.find((f) => (f.service ?? []).some((s) => s.name === 'GuestService'));
  expect(guest).toBeDefined();
  expect(guest!.package).toBe('vsm.v1');
  const svc = guest!.service!.find((s) => s.name === 'GuestService');
  // (Other guest actions may follow; these are the ones this test relies on being there.)
  expect(svc!.method!.map((m) => m.name)).toEqual(
    expect.arrayContaining(['WriteMsr', 'ReadMsr', 'Hypercall', 'CallHypercallPage', 'ReadMemory', 'WriteMemory', 'ExecuteMemory', 'RunGuestActions']),
  );
  // A dynamic call as grpcurl would make it, built only from what reflection returned.
  const all = raw;
  const dyn = protoLoader.loadFileDescriptorSetFromBuffer(
    Buffer.concat(all.map((b) => Buffer.concat([Buffer.from([0x0a]), varint(b.length), Buffer.from(b)]))),
    { longs: String },
  );
  c.close();
  const Guest = (grpc.loadPackageDefinition(dyn) as unknown as { vsm: { v1: { GuestService: grpc.ServiceClientConstructor } } }).vsm.v1.GuestService;
  const g = new Guest(h.address, grpc.credentials.createInsecure()) as unknown as ReadMsrClient;
  const err = await new Promise<grpc.ServiceError>((resolve) =>
    g.ReadMsr({ name: 'partitions/none/vps/0', msr: 0x40000000 }, (e: grpc.ServiceError) => resolve(e)),
  );
  expect(err.code).toBe(grpc.status.NOT_FOUND);
  g.close();
});

/** The files reflection returns for `symbol` (the file that declares it and its dependencies). */
async function filesFor(symbol: string): Promise<descriptor.IFileDescriptorProto[]> {
  const c = reflectionClient('v1');
  try {
    const res = await ask(c, { file_containing_symbol: symbol });
    if (res.error_response) throw new Error(`reflection cannot resolve ${symbol}: ${JSON.stringify(res.error_response)}`);
    return (res.file_descriptor_response as { file_descriptor_proto: Buffer[] }).file_descriptor_proto.map(decodeFile);
  } finally {
    c.close();
  }
}

/** The leading comment of field `field` of message `message` in `file` (from its SourceCodeInfo). */
function fieldComment(file: descriptor.IFileDescriptorProto, message: string, field: string): string | undefined {
  const types = file.messageType ?? [];
  const mi = types.findIndex((m) => m.name === message);
  const fi = mi < 0 ? -1 : (types[mi]!.field ?? []).findIndex((f) => f.name === field);
  if (fi < 0) return undefined;
  // FileDescriptorProto.message_type = 4, DescriptorProto.field = 2.
  const loc = (file.sourceCodeInfo?.location ?? []).find(
    (l: { path: number[] }) => l.path.length === 4 && l.path[0] === 4 && l.path[1] === mi && l.path[2] === 2 && l.path[3] === fi,
  );
  return loc?.leadingComments;
}

test('reflected descriptors keep the proto comments (grpcurl describe shows what map_flags means)', async () => {
  const files = await filesFor('vsm.v1.ModifyVtlProtectionMaskRequest');
  const intercept = files.find((f) => f.name === 'vsm/v1/intercept.proto');
  expect(intercept).toBeDefined();
  expect(intercept!.sourceCodeInfo?.location?.length).toBeGreaterThan(0);
  expect(fieldComment(intercept!, 'ModifyVtlProtectionMaskRequest', 'map_flags')).toMatch(
    /HV_MAP_GPA_FLAGS: 0x1 READABLE, 0x2 WRITABLE, 0x4 KERNEL_EXECUTABLE, 0x8 USER_EXECUTABLE/,
  );
  // Every vsm.v1 file is served as the file it is, with its imports resolvable.
  const guest = (await filesFor('vsm.v1.GuestService')).find((f) => f.name === 'vsm/v1/guest.proto');
  expect(fieldComment(guest!, 'CallHypercallPageRequest', 'rcx')).toMatch(/RCX/);
});

test('reflection serves google.rpc.Status and ErrorInfo: error details decode as grpcurl decodes them', async () => {
  const files = [...(await filesFor('google.rpc.Status')), ...(await filesFor('google.rpc.ErrorInfo'))];
  expect(files.map((f) => f.name)).toEqual(expect.arrayContaining(['google/rpc/status.proto', 'google/rpc/error_details.proto', 'google/protobuf/any.proto']));
  const byName = new Map(files.map((f) => [f.name, f]));
  const root = fromDescriptor({ file: [...byName.values()] }).resolveAll();
  // A real error from the server, decoded only with what reflection returned.
  const Guest = (
    grpc.loadPackageDefinition(
      protoLoader.loadSync(path.resolve(__dirname, '../../proto/vsm/v1/guest.proto'), { includeDirs: [path.resolve(__dirname, '../../proto')] }),
    ) as unknown as { vsm: { v1: { GuestService: grpc.ServiceClientConstructor } } }
  ).vsm.v1.GuestService;
  const g = new Guest(h.address, grpc.credentials.createInsecure()) as unknown as ReadMsrClient;
  const err = await new Promise<grpc.ServiceError>((resolve) =>
    g.ReadMsr({ name: 'partitions/none/vps/0', msr: 0x40000000 }, (e: grpc.ServiceError) => resolve(e)),
  );
  g.close();
  const bin = err.metadata.get('grpc-status-details-bin')[0] as Buffer;
  const status = root.lookupType('google.rpc.Status').decode(bin) as unknown as { code: number; details: { type_url: string; value: Uint8Array }[] };
  expect(status.code).toBe(grpc.status.NOT_FOUND);
  expect(status.details[0]!.type_url).toBe('type.googleapis.com/google.rpc.ErrorInfo');
  const info = root.lookupType('google.rpc.ErrorInfo').toObject(root.lookupType('google.rpc.ErrorInfo').decode(status.details[0]!.value));
  expect(info).toMatchObject({ reason: 'HV_STATUS_INVALID_PARTITION_ID', domain: 'vsm.v1' });
});

test('health reports SERVING for the server and each service', async () => {
  const def = protoLoader.loadSync(require.resolve('grpc-health-check/proto/health/v1/health.proto'), { enums: String });
  const Health = (grpc.loadPackageDefinition(def) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } }).grpc.health.v1.Health;
  type Check = (req: { service: string }, cb: (e: Error | null, res: { status: string }) => void) => void;
  const c = new Health(h.address, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Check: Check };
  for (const service of ['', 'vsm.v1.PartitionService', 'vsm.v1.GuestService']) {
    const r = await new Promise<{ status: string }>((resolve, reject) => c.Check({ service }, (e, res) => (e ? reject(e) : resolve(res))));
    expect(r.status).toBe('SERVING');
  }
  c.close();
});

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}
