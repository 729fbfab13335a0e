import * as os from 'node:os';
import { execFileSync } from 'node:child_process';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  cpuSpeedMHz: number;
  memoryTotalBytes: number;
  memoryFreeBytes: number;
  node: string;
  v8: string;
  platform: string;
  arch: string;
  kernel: string;
  kernelVersion: string;
  loadavg: number[];
  grpcJs: string | null;
  gitCommit: string | null;
}

function tryVersion(pkg: string): string | null {
  try {
    return (require(`${pkg}/package.json`) as { version: string }).version;
  } catch {
    return null;
  }
}

function gitCommit(): string | null {
  try {
    return (
      execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 3000 })
        .toString()
        .trim() || null
    );
  } catch {
    return null;
  }
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cpuSpeedMHz: cpus[0]?.speed ?? 0,
    memoryTotalBytes: os.totalmem(),
    memoryFreeBytes: os.freemem(),
    node: process.version,
    v8: process.versions.v8,
    platform: process.platform,
    arch: process.arch,
    kernel: os.release(),
    kernelVersion: os.version(),
    loadavg: os.loadavg().map((v) => Math.round(v * 100) / 100),
    grpcJs: tryVersion('@grpc/grpc-js'),
    gitCommit: gitCommit(),
  };
}
