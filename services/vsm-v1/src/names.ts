// service layer: AIP resource names. `partitions/{partition}`, `partitions/{partition}/vps/{vp}`.
import { invalidArgument } from './errors';

const PARTITION = /^partitions\/([a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)$/;
const VP = /^partitions\/([a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)\/vps\/(0|[1-9][0-9]{0,4})$/;

export function parsePartitionName(name: string): string {
  const m = PARTITION.exec(name ?? '');
  if (!m) throw invalidArgument(`name ${JSON.stringify(name)} is not of the form partitions/{partition}`);
  return m[1]!;
}
/** Valid VP names parsed before (a stream of guest actions names the same few VPs again and again). */
const vpNames = new Map<string, Readonly<{ partition: string; vp: number }>>();
const VP_NAMES_KEPT = 4096;

export function parseVpName(name: string): Readonly<{ partition: string; vp: number }> {
  const seen = vpNames.get(name);
  if (seen) return seen;
  const m = VP.exec(name ?? '');
  if (!m) throw invalidArgument(`name ${JSON.stringify(name)} is not of the form partitions/{partition}/vps/{vp}`);
  // The regular expression costs ≈130 ns a name, the lookup ≈10-40; bounded: cleared when full.
  if (vpNames.size >= VP_NAMES_KEPT) vpNames.clear();
  const parsed = Object.freeze({ partition: m[1]!, vp: Number(m[3]) });
  vpNames.set(name, parsed);
  return parsed;
}
export const partitionName = (id: string) => `partitions/${id}`;
export const vpName = (id: string, vp: number) => `partitions/${id}/vps/${vp}`;
