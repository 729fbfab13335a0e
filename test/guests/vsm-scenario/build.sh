#!/bin/sh
# Builds the vsm-scenario guest (ELF64, loaded at 2 MiB) into $1 (default: .).
# Parameters by environment: WRITES_PER_VP (16), PROT_PAGES (4), SKEW (2), SINT0_AUTO_EOI (0), SECURE_IPIS (0), MSR_WRITES (0).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-.}
mkdir -p "$out"
CFLAGS="-m64 -O2 -ffreestanding -nostdlib -static -fno-pic -no-pie -fno-stack-protector -mno-red-zone -mgeneral-regs-only \
  -fno-asynchronous-unwind-tables -fno-builtin -Wall -Wextra -Werror \
  -DWRITES_PER_VP=${WRITES_PER_VP:-16} -DPROT_PAGES=${PROT_PAGES:-4} -DSKEW=${SKEW:-2} -DSINT0_AUTO_EOI=${SINT0_AUTO_EOI:-0} -DSECURE_IPIS=${SECURE_IPIS:-0} -DMSR_WRITES=${MSR_WRITES:-0}"
gcc $CFLAGS -c "$here/entry.S" -o "$out/entry.o"
gcc $CFLAGS -c "$here/scenario.c" -o "$out/scenario.o"
gcc $CFLAGS -Wl,-T,"$here/scenario.ld" -Wl,--build-id=none -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
  "$out/entry.o" "$out/scenario.o" -o "$out/vsm-scenario.elf"
echo "$out/vsm-scenario.elf"
