// @vsm/api: every vsm.v1 RPC as the descriptors declare it. The descriptor set (gen/descriptor-set.ts,
// built by buf from proto/) is the one source: the server binds its handlers by walking it (the
// kind, unary / server stream / bidi, comes from the method's streaming flags), the authorization
// policy reads each RPC's `(vsm.v1.required_role)` option (proto/vsm/v1/options.proto), and
// persistence saves after every RPC that does not declare `idempotency_level = NO_SIDE_EFFECTS`.
// Each RPC is matched with its ts-proto grpc-js definition (gen/services.ts) by path; a mismatch
// (a definition missing, a path or a streaming flag that differs) throws when the table is built.
import { create, createFileRegistry, type DescExtension, fromBinary, getOption, hasOption, toBinary } from '@bufbuild/protobuf';
import { type FileDescriptorProto, FileDescriptorProtoSchema, FileDescriptorSetSchema, MethodOptions_IdempotencyLevel } from '@bufbuild/protobuf/wkt';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import { FILE_DESCRIPTOR_SET_BASE64 } from './gen/descriptor-set';
import { SERVICE_DEFINITIONS } from './gen/services';
import { RequiredRole } from './gen/vsm/v1/options';
import * as messages from './pb';
import { type MessageCodec, reusingEncoder } from './wire';

export type RpcKind = 'unary' | 'server_streaming' | 'client_streaming' | 'bidi_streaming';
/** The roles of the authorization policy (README "Security"); `admin` implies every other. */
export type RpcRole = 'viewer' | 'operator' | 'monitor' | 'admin';
export const RPC_ROLES: readonly RpcRole[] = ['viewer', 'operator', 'monitor', 'admin'];

/** The role each value of the `(vsm.v1.required_role)` option stands for; not declared = admin (deny by default). */
const ROLE_OF = {
  [RequiredRole.REQUIRED_ROLE_UNSPECIFIED]: 'admin',
  [RequiredRole.REQUIRED_ROLE_VIEWER]: 'viewer',
  [RequiredRole.REQUIRED_ROLE_OPERATOR]: 'operator',
  [RequiredRole.REQUIRED_ROLE_MONITOR]: 'monitor',
  [RequiredRole.REQUIRED_ROLE_ADMIN]: 'admin',
} as const satisfies Record<RequiredRole, RpcRole>;

export interface RpcMethod {
  /** Full service name, e.g. `vsm.v1.PartitionService`. */
  readonly service: string;
  /** The RPC's name, e.g. `CreatePartition`. */
  readonly name: string;
  /** `vsm.v1.PartitionService/CreatePartition` (the audit log's `method`). */
  readonly key: string;
  /** `/vsm.v1.PartitionService/CreatePartition` (the HTTP/2 path). */
  readonly path: string;
  /** The handler's name in the grpc-js definition and in a backend: `createPartition`. */
  readonly localName: string;
  readonly kind: RpcKind;
  /** From `(vsm.v1.required_role)`; admin when the option is absent. */
  readonly requiredRole: RpcRole;
  /** Whether the RPC declares a role (`(vsm.v1.required_role)` present and not UNSPECIFIED). */
  readonly roleDeclared: boolean;
  /** `idempotency_level = NO_SIDE_EFFECTS`: the RPC never changes a partition. */
  readonly noSideEffects: boolean;
  /**
   * The ts-proto grpc-js method definition, with serializers that reuse their writer (wire.ts); the
   * deserializers are the generated ones.
   */
  readonly definition: MethodDefinition<unknown, unknown>;
}

export interface RpcService {
  /** Full name, e.g. `vsm.v1.PartitionService`. */
  readonly name: string;
  readonly methods: readonly RpcMethod[];
  /** The ts-proto grpc-js service definition (with the methods' `definition`s). */
  readonly definition: ServiceDefinition;
}

let files: FileDescriptorProto[] | undefined;
/** The FileDescriptorProtos of the set, each file once (the set is two buf builds concatenated). */
function descriptorFiles(): FileDescriptorProto[] {
  if (!files) {
    const set = fromBinary(FileDescriptorSetSchema, Buffer.from(FILE_DESCRIPTOR_SET_BASE64, 'base64'));
    const seen = new Set<string>();
    files = set.file.filter((f) => !seen.has(f.name) && seen.add(f.name));
  }
  return files;
}

/**
 * The encoded FileDescriptorProtos (vsm.v1 with comments and method options, their imports,
 * google.rpc.Status / ErrorInfo), for gRPC reflection. Unknown fields (the custom options) are kept.
 */
export function vsmFileDescriptors(): Buffer[] {
  return descriptorFiles().map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f)));
}

let services: RpcService[] | undefined;
/** Every vsm.v1 service and its RPCs, in the order the descriptors list them. */
export function vsmServices(): readonly RpcService[] {
  if (services) return services;
  const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: descriptorFiles() }));
  const roleOption = registry.getExtension('vsm.v1.required_role') as DescExtension | undefined;
  if (!roleOption) throw new Error('the descriptor set has no vsm.v1.required_role option (proto/vsm/v1/options.proto): run npm run generate');
  const out: RpcService[] = [];
  for (const file of registry.files) {
    if (file.proto.package !== 'vsm.v1') continue;
    for (const s of file.services) {
      const generated = (SERVICE_DEFINITIONS as Record<string, ServiceDefinition | undefined>)[s.typeName];
      if (!generated) throw new Error(`${s.typeName}: no generated grpc-js definition (run npm run generate)`);
      const byPath = new Map(Object.entries(generated).map(([localName, d]) => [d.path, { localName, d }]));
      const methods = s.methods.map((m): RpcMethod => {
        const key = `${s.typeName}/${m.name}`;
        const path = `/${key}`;
        const def = byPath.get(path);
        if (!def) throw new Error(`${key}: not in the generated grpc-js definition of ${s.typeName} (run npm run generate)`);
        const kind: RpcKind = m.methodKind;
        if (
          def.d.requestStream !== (kind === 'client_streaming' || kind === 'bidi_streaming') ||
          def.d.responseStream !== (kind === 'server_streaming' || kind === 'bidi_streaming')
        ) {
          throw new Error(`${key}: the generated definition's streaming flags disagree with the descriptor (${kind}); run npm run generate`);
        }
        const codec = (typeName: string, generated: (v: never) => Buffer): ((v: unknown) => Buffer) => {
          const c = (messages as unknown as Record<string, MessageCodec<unknown> | undefined>)[typeName.replace(/^vsm\.v1\./, '')];
          return typeName.startsWith('vsm.v1.') && c ? reusingEncoder(c) : (generated as (v: unknown) => Buffer);
        };
        const definition = {
          ...def.d,
          requestSerialize: codec(m.input.typeName, def.d.requestSerialize),
          responseSerialize: codec(m.output.typeName, def.d.responseSerialize),
        } as MethodDefinition<unknown, unknown>;
        const role = hasOption(m, roleOption) ? (getOption(m, roleOption) as RequiredRole) : RequiredRole.REQUIRED_ROLE_UNSPECIFIED;
        return {
          service: s.typeName,
          name: m.name,
          key,
          path,
          localName: def.localName,
          kind,
          requiredRole: ROLE_OF[role] ?? 'admin',
          roleDeclared: role !== RequiredRole.REQUIRED_ROLE_UNSPECIFIED,
          noSideEffects: m.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS,
          definition,
        };
      });
      out.push({ name: s.typeName, methods, definition: Object.fromEntries(methods.map((m) => [m.localName, m.definition])) });
    }
  }
  services = out;
  return out;
}

/** Every vsm.v1 RPC. */
export const vsmRpcs = (): RpcMethod[] => vsmServices().flatMap((s) => s.methods);

let byPath: Map<string, RpcMethod> | undefined;
/** The RPC of a path (`/vsm.v1.X/Y` or `vsm.v1.X/Y`), or undefined for anything that is not a vsm.v1 RPC. */
export function vsmRpc(path: string): RpcMethod | undefined {
  byPath ??= new Map(vsmRpcs().map((m) => [m.key, m]));
  return byPath.get(path.replace(/^\//, ''));
}
