#!/bin/bash
# Description: core/ and backing/ build for aarch64 (a weakly ordered CPU without SSE4.2) with
# the Makefile's own rules and -Werror: no x86-only flag or intrinsic outside
# core/crc32c_x86_64.c, which the Makefile leaves out there; and the hit path's seqlock-style
# check gets real barriers on that CPU (a dmb ishld in the reader, a dmb ish in the allocator).
# Compile only: the objects are not linked or run. Skips without Debian's gcc-aarch64-linux-gnu.
# Timeout: 300
. "$TESTS_DIR/behaviour/lib.sh"
CROSS=aarch64-linux-gnu-
need_cmd "${CROSS}gcc" "${CROSS}ar" "${CROSS}objdump" make pkg-config

SRC=$(cd "$TESTS_DIR/.." && pwd)
OUT=$SCRATCH/build-aarch64
# The cross compiler searches its own arm64 libc and kernel headers first; -idirafter adds the
# host's system include directory after them, only for what they lack: the headers of liburing,
# libpmem2, fuse3 and blkid, which do not depend on the architecture (no arm64 -dev packages).
make -C "$SRC" -j2 --no-print-directory DEVELOPER=1 CC="${CROSS}gcc" AR="${CROSS}ar" O="$OUT" \
	INSTALL_DEPS=true CFLAGS="-O2 -g -idirafter /usr/include" "$OUT/libcore.a" "$OUT/libbacking.a" \
	> "$SCRATCH/make.log" 2>&1 || { cat "$SCRATCH/make.log" >&2; fail "cross build for aarch64 failed"; }

file_arch() { LC_ALL=C "${CROSS}objdump" -f "$1" | sed -n 's/.*file format //p'; }
for o in "$OUT"/core/*.o "$OUT"/backing/*.o; do
	[ "$(file_arch "$o")" = elf64-littleaarch64 ] || fail "$o is not an aarch64 object: $(file_arch "$o")"
done
[ -e "$OUT/core/crc32c_generic.o" ] || fail "the portable CRC32C variant was not built"
[ -e "$OUT/core/crc32c_x86_64.o" ] && fail "the x86-64 CRC32C variant was built for aarch64"
note "$(ls "$OUT"/core/*.o "$OUT"/backing/*.o | wc -l) objects built for aarch64"

# fns_with BARRIER OBJECT: the functions of OBJECT whose code holds that barrier instruction
fns_with() {
	"${CROSS}objdump" -d "$2" | awk -v b="$1" '/^[0-9a-f]+ <.*>:$/ { fn = $2 } $0 ~ "\tdmb\t" b "$" { print fn }' | sort -u
}
# reader: the copy of a hit is ordered before the generation re-read (acquire fence)
fns_with ishld "$OUT/core/cache_read.o" | grep -q . || fail "no read barrier (dmb ishld) in core/cache_read.c"
# writer: a new generation is ordered before the first store into a reused segment (release fence)
fns_with ish "$OUT/core/segment.o" | grep -qx '<pcache_seg_alloc>:' \
	|| fail "no barrier (dmb ish) in pcache_seg_alloc"
exit 0
