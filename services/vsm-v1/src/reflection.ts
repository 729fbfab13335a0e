// service layer: what the reflection service (grpc.reflection v1 / v1alpha, used by grpcurl)
// describes. The vsm.v1 files come from the FileDescriptorSet that scripts/generate.js builds with
// buf, so they keep their SourceCodeInfo: `grpcurl describe vsm.v1.ModifyVtlProtectionMaskRequest`
// shows each field's comment (map_flags and the other bit fields). google/rpc/status.proto and
// error_details.proto are in that set too, so grpcurl resolves `google.rpc.ErrorInfo` and prints
// error details decoded instead of base64. grpc.health.v1 and the reflection services themselves
// come from their packages' .proto files through @grpc/proto-loader.
import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import type { Logger } from 'pino';
// protobufjs is @grpc/proto-loader's (and @grpc/reflection's) descriptor library.
import * as descriptor from 'protobufjs/ext/descriptor';

/** The generated FileDescriptorSet, or undefined when the tree was built without `npm run generate`. */
function generatedDescriptorSet(): Buffer | undefined {
  try {
    // A require, not an import: the generated module may be absent.
    const m = require('./gen/descriptor-set') as { FILE_DESCRIPTOR_SET_BASE64: string };
    return Buffer.from(m.FILE_DESCRIPTOR_SET_BASE64, 'base64');
  } catch {
    return undefined;
  }
}

/** Encoded FileDescriptorProtos of the vsm.v1 and google.rpc files, with source info. */
export function vsmFileDescriptors(): Buffer[] | undefined {
  const set = generatedDescriptorSet();
  if (!set) return undefined;
  const { file } = descriptor.FileDescriptorSet.decode(set) as unknown as descriptor.IFileDescriptorSet;
  return file.map((f) => Buffer.from(descriptor.FileDescriptorProto.encode(f).finish()));
}

/** A package definition for @grpc/reflection's ReflectionService (it reads only `fileDescriptorProtos`). */
export function reflectionPackage(protoDir: string, serviceNames: string[], log: Logger): protoLoader.PackageDefinition {
  const healthProto = require.resolve('grpc-health-check/proto/health/v1/health.proto');
  const reflectionDir = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const reflectionProtos = ['v1', 'v1alpha'].map((v) => path.join(reflectionDir, `grpc/reflection/${v}/reflection.proto`));
  const loadOpts = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true };
  const vsm = vsmFileDescriptors();
  let files: protoLoader.PackageDefinition;
  if (vsm) {
    files = { 'vsm.v1 (buf)': { fileDescriptorProtos: vsm } as unknown as protoLoader.AnyDefinition };
  } else {
    log.warn('reflection: the generated descriptor set is missing (run `npm run generate`); serving descriptors without comments and without google.rpc');
    files = protoLoader.loadSync(serviceNames.map((s) => path.join(protoDir, 'vsm/v1', protoFileOf(s))), { ...loadOpts, includeDirs: [protoDir] });
  }
  const others = protoLoader.loadSync([healthProto, ...reflectionProtos], { ...loadOpts, includeDirs: [path.dirname(healthProto), reflectionDir] });
  return { ...others, ...files };
}

function protoFileOf(service: string): string {
  return ({ PartitionService: 'partition.proto', VirtualProcessorService: 'vp.proto', GuestService: 'guest.proto', MemoryService: 'memory.proto', VtlService: 'vtl.proto', InterceptService: 'intercept.proto', SynicService: 'synic.proto', SnapshotService: 'snapshot.proto' } as Record<string, string>)[service.split('.').pop()!]!;
}
