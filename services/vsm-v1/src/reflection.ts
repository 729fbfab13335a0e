// service layer: what the reflection service (grpc.reflection v1 / v1alpha, used by grpcurl)
// describes. The vsm.v1 files come from the FileDescriptorSet that scripts/generate.js builds with
// buf (@vsm/api), so they keep their SourceCodeInfo and their method options: `grpcurl describe vsm.v1.ModifyVtlProtectionMaskRequest`
// shows each field's comment (map_flags and the other bit fields). google/rpc/status.proto and
// error_details.proto are in that set too, so grpcurl resolves `google.rpc.ErrorInfo` and prints
// error details decoded instead of base64. grpc.health.v1 and the reflection services themselves
// come from their packages' .proto files through @grpc/proto-loader.
import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { vsmFileDescriptors } from '@vsm/api';

/** A package definition for @grpc/reflection's ReflectionService (it reads only `fileDescriptorProtos`). */
export function reflectionPackage(): protoLoader.PackageDefinition {
  const healthProto = require.resolve('grpc-health-check/proto/health/v1/health.proto');
  const reflectionDir = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto');
  const reflectionProtos = ['v1', 'v1alpha'].map((v) => path.join(reflectionDir, `grpc/reflection/${v}/reflection.proto`));
  const loadOpts = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true };
  // The vsm.v1 files exactly as buf built them (comments, method options), with their imports.
  const files = { 'vsm.v1 (buf)': { fileDescriptorProtos: vsmFileDescriptors() } as unknown as protoLoader.AnyDefinition };
  const others = protoLoader.loadSync([healthProto, ...reflectionProtos], { ...loadOpts, includeDirs: [path.dirname(healthProto), reflectionDir] });
  return { ...others, ...files };
}
