/**
 * The one error type of the guest image loaders and the boot planner: malformed, truncated or
 * unsupported input, or an image that does not fit the guest. The message names the field and the
 * file offset or GPA involved; `field` (when known) is the field's name as its specification spells it
 * (`e_phoff`, `p_filesz`, `mh_load_addr`, ...).
 */
export class GuestImageError extends Error {
  override readonly name = 'GuestImageError';
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** `0x…` spelling of a number or bigint, for messages. */
export const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

/** `[0x…, 0x…)` spelling of a range, for messages. */
export const range = (start: bigint, size: bigint): string => `[${hex(start)}, ${hex(start + size)})`;
