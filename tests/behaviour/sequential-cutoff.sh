#!/bin/bash
# Description: a sequential read stream (dd of a whole image) does not push the working set out
# of the cache: past the per-image sequential_cutoff (default 4 MiB) its misses are read from
# the backing without being cached (counted as read_bypass_bytes), and the hot blocks read
# before it are still hits after it. A sequential write stream past the cutoff goes around the
# cache to the backing (write_bypass_bytes). The cutoff is a per-image control file and mount option,
# persisted; 0 caches every read; bad values are refused.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd dd jq

pc_shm 512M
MNT=$SCRATCH/mnt
mkdir -p "$MNT"
pc_image "$SCRATCH/a.raw" 64M 64
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=256M" -o "image=a:$SCRATCH/a.raw"

ctl=$MNT/.pcache/images/a/sequential_cutoff
st() { jq ".images[] | select(.name == \"a\") | .$1" "$MNT/.pcache/status.json"; }
[ "$(cat "$ctl")" = 4194304 ] || fail "default cutoff reads $(cat "$ctl")"
[ "$(st sequential_cutoff)" = 4194304 ] || fail "status.json sequential_cutoff: $(st sequential_cutoff)"

# the working set: 32 scattered 4 KiB blocks, read once (misses, cached), then hits
hot() { for i in $(seq 0 31); do
	dd if="$MNT/a" of=/dev/null bs=4k count=1 skip=$(( (i * 397) % 16384 )) iflag=direct status=none ||
		fail "hot read $i"
done; }
hot
m0=$(st read_miss_bytes)
hot
[ "$(st read_miss_bytes)" = "$m0" ] || fail "the hot blocks are not hits on the second pass"

# a scan: one dd of the whole image
dd if="$MNT/a" of="$SCRATCH/copy" bs=1M iflag=direct status=none || fail "dd of the image failed"
cmp "$SCRATCH/copy" "$SCRATCH/a.raw" || fail "the scan read wrong data"
byp=$(st read_bypass_bytes) cached=$(st cached_bytes)
note "after the scan: $byp bytes not cached, $cached bytes cached"
[ "$byp" -ge $(( 56 << 20 )) ] || fail "only $byp bytes of the 64 MiB scan bypassed the cache"
[ "$cached" -le $(( (4 << 20) + 32 * 4096 + (1 << 20) )) ] || fail "the scan filled the cache: $cached bytes cached"
m1=$(st read_miss_bytes)
hot
[ "$(st read_miss_bytes)" = "$m1" ] || fail "the scan pushed hot blocks out of the cache"

# a write stream (a restore, a dd onto the image): past the cutoff its writes go around the
# cache to the backing (counted as write_bypass_bytes), the hot blocks stay hits
head -c 64M /dev/urandom > "$SCRATCH/new" || fail "cannot make the new content"
dd if="$SCRATCH/new" of="$MNT/a" bs=1M oflag=direct conv=notrunc status=none || fail "dd onto the image failed"
wbyp=$(st write_bypass_bytes) dirty=$(st dirty_bytes)
note "after the write stream: $wbyp bytes around the cache, $dirty bytes dirty"
[ "$wbyp" -ge $(( 56 << 20 )) ] || fail "only $wbyp bytes of the 64 MiB write stream went around the cache"
[ "$dirty" -le $(( 9 << 20 )) ] || fail "the write stream filled the cache with dirty data: $dirty bytes"
cmp -s <(tail -c +$(( (8 << 20) + 1 )) "$SCRATCH/new") <(tail -c +$(( (8 << 20) + 1 )) "$SCRATCH/a.raw") ||
	fail "the backing does not hold the bytes written around the cache"
cmp "$SCRATCH/new" "$MNT/a" || fail "the image does not read back what was written"
m2=$(st read_miss_bytes)
hot
[ "$(st read_miss_bytes)" = "$m2" ] || fail "the write stream pushed hot blocks out of the cache"

# bad values change nothing; sizes with suffixes work
expect_fail "a bad cutoff" pc_ctl "$MNT" images/a/sequential_cutoff abc
expect_fail "a cutoff past 1 TiB" pc_ctl "$MNT" images/a/sequential_cutoff 2T
[ "$(cat "$ctl")" = 4194304 ] || fail "a refused value changed the cutoff: $(cat "$ctl")"
pc_ctl "$MNT" images/a/sequential_cutoff 8M || fail "set 8M"
[ "$(cat "$ctl")" = 8388608 ] || fail "8M reads back as $(cat "$ctl")"

# 0: every read is cached, a scan too
pc_ctl "$MNT" images/a/sequential_cutoff 0 || fail "set 0"
dd if="$MNT/a" of=/dev/null bs=1M iflag=direct status=none || fail "second dd failed"
# (a fill may be skipped when the completion thread finds its locks busy: most, not all)
[ "$(st cached_bytes)" -ge $(( 56 << 20 )) ] || fail "cutoff 0: $(st cached_bytes) bytes cached after a full read"

# the mount option sets it for the named images; the value persists without it
pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE" -o "image=a:$SCRATCH/a.raw" -o sequential_cutoff=1M
[ "$(cat "$ctl")" = 1048576 ] || fail "-o sequential_cutoff=1M reads back as $(cat "$ctl")"
pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
[ "$(cat "$ctl")" = 1048576 ] || fail "the cutoff did not persist: $(cat "$ctl")"
pc_umount "$MNT"
PC_SUMS_FILES=("$CACHE" "$SCRATCH/a.raw")
PC_SUMS=$(pc_sums)
pc_must_refuse "a bad -o sequential_cutoff" -o "cache=$CACHE" -o sequential_cutoff=lots "$MNT"
exit 0
