// core: the time source. The core never reads the system clock itself: a partition takes a Clock
// (PartitionSpec.clock, which PartitionManager fills from ManagerOptions.clock), as OpenVMM injects
// its reference time source into the hypervisor emulation. It supplies wall time for timestamps
// (partition creation, VTL transitions, intercepts) and a monotonic reference time in the TLFS's
// 100 ns units, which HV_X64_MSR_TIME_REF_COUNT counts from partition creation
// (tlfs-overlays-synic.md §4.4: ReferenceTime is in 100 ns units).
export interface Clock {
  /** Wall-clock time, milliseconds since the Unix epoch. */
  nowUnixMs(): number;
  /** Wall-clock time, microseconds since the Unix epoch. */
  nowUnixUs(): bigint;
  /** Monotonic reference time in 100 ns units from an arbitrary origin; never goes back. */
  referenceTime100ns(): bigint;
}

/** The process's clocks: Date.now for wall time, process.hrtime for the reference time. */
export const systemClock: Clock = {
  nowUnixMs: () => Date.now(),
  nowUnixUs: () => BigInt(Date.now()) * 1000n,
  referenceTime100ns: () => process.hrtime.bigint() / 100n,
};
