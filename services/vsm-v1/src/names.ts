// service layer: AIP resource names. `partitions/{partition}`, `partitions/{partition}/vps/{vp}`.
import { invalidArgument } from './errors';

const PARTITION = /^partitions\/([a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)$/;
const VP = /^partitions\/([a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)\/vps\/(0|[1-9][0-9]{0,4})$/;

export function parsePartitionName(name: string): string {
  const m = PARTITION.exec(name ?? '');
  if (!m) throw invalidArgument(`name ${JSON.stringify(name)} is not of the form partitions/{partition}`);
  return m[1]!;
}
export function parseVpName(name: string): { partition: string; vp: number } {
  const m = VP.exec(name ?? '');
  if (!m) throw invalidArgument(`name ${JSON.stringify(name)} is not of the form partitions/{partition}/vps/{vp}`);
  return { partition: m[1]!, vp: Number(m[3]) };
}
export const partitionName = (id: string) => `partitions/${id}`;
export const vpName = (id: string, vp: number) => `partitions/${id}/vps/${vp}`;
