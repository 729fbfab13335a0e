// core: the limits that keep bad input from exhausting a backend, in one place for every path that
// makes a partition (CreatePartition and RestorePartition apply the same ones).

export interface Limits {
  maxPartitions: number;
  maxVpCount: number;
  /** GPA space of one partition. */
  maxMemoryBytes: bigint;
  /**
   * Guest RAM resident in the whole process (every partition), or undefined for no cap. The
   * emulator counts the pages its sparse memory holds; an engine whose RAM is one mapping of the
   * whole GPA space (the KVM agent's memfd) counts memory_bytes at create time.
   */
  maxResidentBytes?: bigint;
}
export const DEFAULT_LIMITS: Limits = { maxPartitions: 4096, maxVpCount: 64, maxMemoryBytes: 1n << 40n };

/**
 * Partition labels, as Google Cloud labels (AIP-122/128 resources) and Kubernetes label values:
 * at most 64 per partition, keys of 1..63 characters, values of at most 63.
 */
export const LABEL_LIMITS = { maxLabels: 64, maxKeyLength: 63, maxValueLength: 63 } as const;

/** What is wrong with a label set, or undefined when it is within LABEL_LIMITS. */
export function labelsProblem(labels: Record<string, string>): string | undefined {
  const entries = Object.entries(labels);
  if (entries.length > LABEL_LIMITS.maxLabels) return `${entries.length} labels exceed the limit of ${LABEL_LIMITS.maxLabels}`;
  for (const [k, v] of entries) {
    if (typeof v !== 'string') return `label ${JSON.stringify(k)} has no string value`;
    if (k.length === 0 || k.length > LABEL_LIMITS.maxKeyLength || v.length > LABEL_LIMITS.maxValueLength) {
      const shown = k.length > 80 ? `${k.slice(0, 80)}...` : k;
      return `label ${JSON.stringify(shown)} must have a 1..${LABEL_LIMITS.maxKeyLength} character key and a value of at most ${LABEL_LIMITS.maxValueLength} (key ${k.length}, value ${v.length})`;
    }
  }
  return undefined;
}
