/** What the image loaders produce and the boot planner consumes (plain data, no KVM types). */

/** The formats parseGuestImage() reads. */
export type GuestImageFormat = 'flat' | 'elf64' | 'multiboot';

/** The CPU mode the boot processor starts in. */
export type EntryMode = 'real16' | 'protected32' | 'long64';

/** Bytes to place at a guest-physical address: `data` first, then zeroes up to `memSize`. */
export interface GuestSegment {
  gpa: bigint;
  /** The file bytes (a view into the parsed input, not a copy); data.length <= memSize. */
  data: Uint8Array;
  /** Size in guest memory (>= data.length; the rest is zero, e.g. .bss). */
  memSize: bigint;
}

/** The multiboot (0.6.96) header an image carries, as found. */
export interface MultibootHeaderInfo {
  /** File offset of the header (4-byte aligned, inside the first 8192 bytes). */
  offset: number;
  /** `flags` as written; bit 0 page-align modules, 1 memory info wanted, 2 video mode wanted, 16 a.out kludge. */
  flags: number;
  checksum: number;
  pageAlign: boolean;
  memoryInfo: boolean;
  videoMode: boolean;
  /** Flag bit 16: the address fields below are valid and the image is loaded from them, not as ELF. */
  aoutKludge: boolean;
  /** The a.out-kludge address fields (present when aoutKludge). */
  headerAddr?: number;
  loadAddr?: number;
  loadEndAddr?: number;
  bssEndAddr?: number;
  entryAddr?: number;
  /** How the image was loaded: its ELF32 PT_LOAD segments, or the a.out-kludge address fields. */
  loadedAs: 'elf32' | 'aout-kludge';
}

export interface GuestImage {
  format: GuestImageFormat;
  /** Sorted by gpa, non-overlapping, each with memSize > 0. */
  segments: GuestSegment[];
  /** Guest-physical address the boot processor starts at. */
  entry: bigint;
  entryMode: EntryMode;
  multiboot?: MultibootHeaderInfo;
}
