#!/bin/bash
# Description: concurrent unaligned writers on disjoint byte ranges that share sectors never lose
# each other's bytes (read-modify-write under the range lock), compared with a model; on a
# 512-byte-sector file image and on a 4096-byte-sector loop device image; the data survives a
# flush-all and a remount.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd losetup cmp
US=$TOOLS/unaligned_stress
[ -x "$US" ] || fail "unaligned_stress not built"

pc_shm 512M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/u.raw" 32M 4
pc_image "$SCRATCH/big.raw" 32M 4
LOOP=$(losetup --sector-size 4096 -f --show "$SCRATCH/big.raw") || skip "cannot create a 4K-sector loop device"
pc_cleanup_add losetup -d "$LOOP"
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=384M" -o "image=u:$SCRATCH/u.raw" -o "image=k:$LOOP"
grep -q "^image k .* lbs 4096 " "$MNT/.pcache/status" || note "loop image does not report lbs 4096: $(grep '^image k' "$MNT/.pcache/status")"

run() {
	"$US" "$@" > "$SCRATCH/us.out" 2>&1 || { cat "$SCRATCH/us.out"; fail "unaligned_stress $*"; }
	note "$(tail -1 "$SCRATCH/us.out") ($*)"
}
for img in u k; do
	run "$MNT/$img" --threads 4 --length 32768 --max-cell 300 --ops 20000 --seed 1
	run "$MNT/$img" --threads 4 --offset 777 --length 262144 --max-cell 3000 --ops 10000 --seed 2
	run "$MNT/$img" --threads 3 --offset 1000000 --length 65536 --max-cell 40 --ops 20000 --seed 3
	run "$MNT/$img" --threads 2 --offset 5000000 --length 4194304 --max-cell 200000 --ops 500 --seed 4
done
sum_u=$(md5sum < "$MNT/u") sum_k=$(md5sum < "$MNT/k")
pc_ctl "$MNT" flush 1 || fail "flush-all"
cmp "$MNT/u" "$SCRATCH/u.raw" || fail "u: backing differs after flush-all"
cmp "$MNT/k" "$LOOP" || fail "k: backing differs after flush-all"
pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
[ "$(md5sum < "$MNT/u")" = "$sum_u" ] || fail "u reads differently after remount"
[ "$(md5sum < "$MNT/k")" = "$sum_k" ] || fail "k reads differently after remount"
pc_umount "$MNT"
exit 0
