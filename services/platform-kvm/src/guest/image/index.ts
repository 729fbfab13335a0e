/** Guest image loaders (flat, ELF64, multiboot v1) and the boot planner: pure, no KVM, no I/O. */
export { GuestImageError } from './errors';
export type { EntryMode, GuestImage, GuestImageFormat, GuestSegment, MultibootHeaderInfo } from './types';
export { parseGuestImage } from './parse';
export type { ParseGuestImageOptions } from './parse';
export { BOOT_LOADER_NAME, BootLayout, HIGH_MEMORY_START, LOW_MEMORY_END, MULTIBOOT_MAX_MEMORY, buildGdt32, multibootMemoryMap, planBoot } from './boot-plan';
export type { BootPlan, BootRegisters, GpaRange, MemoryMapEntry, PlanBootOptions, SegmentRegister } from './boot-plan';
export {
  MULTIBOOT_BOOTLOADER_MAGIC,
  MULTIBOOT_HEADER_MAGIC,
  MULTIBOOT_MEMORY_AVAILABLE,
  MULTIBOOT_MEMORY_RESERVED,
  MULTIBOOT_SEARCH,
  MultibootHeader,
  MultibootHeaderFlag,
  MultibootInfo,
  MultibootInfoFlag,
  MultibootMmapEntry,
  findMultibootHeader,
} from './multiboot';
export { Elf32Ehdr, Elf32Phdr, Elf64Ehdr, Elf64Phdr, ElfIdent, parseElf } from './elf';
