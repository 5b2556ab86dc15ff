#!/bin/bash
# Description: reads of any alignment that are all cache hits (replied straight from pinned cache
# memory, trimmed to the request) return exactly the written bytes: over keys written in many
# sizes and orders, punched (zeroed) ranges and region boundaries; then again while a writer
# rewrites the image through a small cache so that GC and the writeback recycle segments under
# the readers; finally every byte is compared, on the mount and on the backing after flush-all.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd cmp dd
RC=$TOOLS/read_compare
[ -x "$RC" ] || fail "read_compare not built"

pc_shm 128M
MNT=$SCRATCH/mnt
REF=$SCRATCH/ref
pc_image "$SCRATCH/z.raw" 16M 16
head -c 16M /dev/urandom > "$REF" || fail "cannot create the reference"
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=40M,segment_size=1M,sequential_cutoff=0" -o "image=z:$SCRATCH/z.raw"

# The new content, through the mount: 4 KiB blocks backwards (neighbouring keys never contiguous
# in the cache: many pieces per read), then 64 KiB and 1 MiB blocks.
for ((i = 1023; i >= 0; i--)); do
	dd if="$REF" of="$MNT/z" bs=4k skip=$i seek=$i count=1 conv=notrunc status=none || fail "4k write $i"
done
dd if="$REF" of="$MNT/z" bs=64k skip=64 seek=64 count=64 conv=notrunc status=none || fail "64k writes"
dd if="$REF" of="$MNT/z" bs=1M skip=8 seek=8 count=8 conv=notrunc status=none || fail "1M writes"
# zeroed ranges: ZERO keys (one unaligned, one across the 4 MiB region boundary)
zero() {
	fallocate -p -o "$1" -l "$2" "$MNT/z" || fail "punch $1 $2"
	head -c "$2" /dev/zero | dd of="$REF" bs=64k seek="$1" oflag=seek_bytes conv=notrunc iflag=fullblock status=none
}
zero $((1 << 20)) $((300 << 10))
zero $(((4 << 20) - 70000)) 140000
zero $((9 << 20 | 1000)) 50001

stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$MNT/.pcache/images/z/stats"; }
miss0=$(stat_of read_miss_bytes) hit0=$(stat_of read_hit_bytes)
"$RC" "$MNT/z" "$REF" --ops 1500 --max-len 1100000 --threads 2 --seed 1 || fail "hit reads differ"
"$RC" "$MNT/z" "$REF" --ops 3000 --max-len 9000 --threads 2 --seed 2 || fail "small hit reads differ"
miss1=$(stat_of read_miss_bytes) hit1=$(stat_of read_hit_bytes)
[ "$miss1" = "$miss0" ] || fail "reads of a fully written image missed ($miss0 -> $miss1 bytes)"
[ "$hit1" -gt "$hit0" ] || fail "no hit bytes counted"
note "all-hit reads: $((hit1 - hit0)) hit bytes, no miss"

# The same content rewritten 12 times through a 40 MiB cache while readers read it: segments
# are collected and reused under the readers, whose bytes must not change.
start_bg "$SCRATCH/writer.log" bash -c "for r in \$(seq 12); do
	dd if='$REF' of='$MNT/z' bs=256k conv=notrunc status=none || exit 1; done"
W=$BG_PID
n=0
while kill -0 "$W" 2>/dev/null; do
	"$RC" "$MNT/z" "$REF" --ops 40 --max-len 300000 --threads 2 --seed $((n + 10)) > /dev/null ||
		fail "reads during rewrites differ (round $n)"
	n=$((n + 1))
done
wait "$W" || { cat "$SCRATCH/writer.log"; fail "rewriter failed"; }
grep -q "segs_freed [1-9]" "$MNT/.pcache/status" ||
	fail "no segment was freed during the rewrites: $(grep -o 'segs_freed [0-9]*' "$MNT/.pcache/status")"
note "$n read rounds during the rewrites; $(grep -o 'segs_freed [0-9]*' "$MNT/.pcache/status")"

cmp "$MNT/z" "$REF" || fail "image differs from the reference"
pc_ctl "$MNT" flush 1 || fail "flush-all"
cmp "$SCRATCH/z.raw" "$REF" || fail "backing differs from the reference after flush-all"
pc_umount "$MNT"
exit 0
