#!/bin/bash
# Description: a cache much smaller than the data written, in front of a slow backing (flakyfs
# with a per-request delay): every write completes (writers wait for writeback and GC, counted
# in status.json as full_waits), nothing is lost, the data read back and the backing image after
# a flush-all equal what was written.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq cmp

pc_shm 64M
MNT=$SCRATCH/mnt
FMNT=$SCRATCH/flaky
DATA_MIB=48
pc_image "$SCRATCH/slow.raw" 64M
head -c $((DATA_MIB << 20)) /dev/urandom > "$SCRATCH/data" || fail "cannot make the data"

# the slow backing: every request to the image sleeps 2 ms in flakyfs
pc_flaky "$FMNT" "$SCRATCH/slow.raw" delay_us=2000
pc_cleanup_add pc_unmount_if "$MNT"

# 16 MiB cache of 1 MiB segments: the 48 MiB written are three times the cache
pc_mount "$MNT" -o "cache=$CACHE,cache_size=16M,segment_size=1M,sequential_cutoff=0" -o "image=slow:$FMNT/image"
dd if="$SCRATCH/data" of="$MNT/slow" bs=256k oflag=direct conv=notrunc status=none \
	|| fail "a write failed while the cache was full"
waits=$(pc_status_json "$MNT" | jq -r '.cache.full_waits') || fail "status.json"
[ "$waits" -gt 0 ] || fail "writers never waited for space (full_waits=$waits): the cache was not full"
note "full_waits=$waits"
cmp -n $((DATA_MIB << 20)) "$SCRATCH/data" "$MNT/slow" || fail "data read back through the mount differs"
pc_ctl "$MNT" flush 1 || fail "flush-all failed"
cmp -n $((DATA_MIB << 20)) "$SCRATCH/data" "$SCRATCH/slow.raw" || fail "backing differs after flush-all"
pc_umount "$MNT"
exit 0
