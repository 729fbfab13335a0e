// @vsm/core public surface: VSM semantics with no I/O.
export * from './tlfs/status';
export * from './tlfs/hypercall';
export * from './tlfs/registers';
export * from './tlfs/msr';
export * from './tlfs/vsm';
export * from './memory';
export * from './vtl-array';
export * from './overlays';
export * from './partition';
export * from './hypercalls';
export * from './vtl-switch';
export * from './stub';
export * from './manager';
export * from './platform';
