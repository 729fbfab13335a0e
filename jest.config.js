// One jest run, several projects: `unit` (pure library tests), `e2e` (a real server on an
// ephemeral loopback port), `conformance` (scenarios against the public API, backend chosen by
// VSM_BACKEND). TypeScript is transpiled by @swc/jest; type checking is `npm run build` (tsc -b).
const transform = {
  '^.+\\.tsx?$': ['@swc/jest', { jsc: { target: 'es2022', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } }],
};
const moduleNameMapper = {
  '^@vsm/core$': '<rootDir>/services/core/src/index.ts',
  '^@vsm/core/(.*)$': '<rootDir>/services/core/src/$1',
  '^@vsm/api$': '<rootDir>/api/src/index.ts',
  '^@vsm/api/(.*)$': '<rootDir>/api/src/$1',
  '^@vsm/client$': '<rootDir>/clients/typescript/src/index.ts',
  '^@vsm/client/(.*)$': '<rootDir>/clients/typescript/src/$1',
  '^@vsm/vsm-v1$': '<rootDir>/services/vsm-v1/src/index.ts',
  '^@vsm/vsm-v1/(.*)$': '<rootDir>/services/vsm-v1/src/$1',
  '^@vsm/platform-kvm$': '<rootDir>/services/platform-kvm/src/index.ts',
  '^@vsm/platform-kvm/(.*)$': '<rootDir>/services/platform-kvm/src/$1',
};
// Every project runs in the guarded environment with the process guard (test/support/process-guard.ts):
// an uncaught exception, an unhandled rejection or an unexpected child-process exit fails the run.
const guard = ['<rootDir>/test/support/process-guard.ts'];
const common = {
  rootDir: __dirname,
  transform,
  moduleNameMapper,
  testEnvironment: '<rootDir>/test/support/guarded-environment.js',
  setupFilesAfterEnv: guard,
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
};
module.exports = {
  projects: [
    {
      ...common,
      displayName: 'unit',
      testMatch: [
        '<rootDir>/services/*/test/**/*.test.ts',
        '<rootDir>/clients/*/test/**/*.test.ts',
        '<rootDir>/bench/test/**/*.test.ts',
        '<rootDir>/scripts/test/**/*.test.ts',
      ],
    },
    {
      ...common,
      displayName: 'e2e',
      testMatch: [
        '<rootDir>/test/e2e/**/*.test.ts',
        '<rootDir>/test/cli/**/*.test.ts',
        '<rootDir>/test/security/**/*.test.ts',
        '<rootDir>/test/support/**/*.test.ts',
      ],
    },
    {
      ...common,
      displayName: 'conformance',
      testMatch: ['<rootDir>/test/conformance/**/*.test.ts'],
      setupFilesAfterEnv: [...guard, '<rootDir>/test/support/backend-gate.ts'],
    },
    { ...common, displayName: 'integration', testMatch: ['<rootDir>/test/integration/**/*.test.ts'] },
    { ...common, displayName: 'faults', testMatch: ['<rootDir>/test/faults/**/*.test.ts'] },
    { ...common, displayName: 'fuzz', testMatch: ['<rootDir>/test/fuzz/**/*.test.ts'] },
    // Fleet mode (#14): real etcd members, agents and service replicas on loopback ports.
    { ...common, displayName: 'fleet', testMatch: ['<rootDir>/test/fleet/**/*.test.ts'] },
  ],
};
