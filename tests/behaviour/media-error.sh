#!/bin/bash
# Description: a media error under the running daemon's cache mapping is an error, not a crash.
# The cache file (tmpfs) is cut behind its first segment (the key log), so every page of the
# data segments raises SIGBUS on access, as poisoned pmem does. A read of cached data gets EIO
# and the daemon lives on; a read of data not cached returns the backing's bytes; status,
# status.json, metrics and pcachectl status count the media errors; the writeback holds the image
# back (failing: media error) and a flush of it fails with an error instead of hanging.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd dd jq truncate cmp timeout

pc_shm 256M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/d.raw" 16M 16
"$PCACHECTL" format --size=160M "$CACHE" >/dev/null || fail "cannot format the cache"
dump=$("$PCACHECTL" dump --json "$CACHE") || fail "pcachectl dump failed"
seg_base=$(jq -e .superblock.seg_base <<<"$dump") || fail "no seg_base in the dump"
seg_size=$(jq -e .superblock.seg_size <<<"$dump") || fail "no seg_size in the dump"
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,sequential_cutoff=0" -o "image=d:$SCRATCH/d.raw"
pc_ctl "$MNT" writeback_rate 1 || fail "cannot slow the writeback down"

# 8 MiB of dirty data (the writeback's first burst may take one request of it); the key log
# stays in segment 0, the data goes to data segments
head -c 8M /dev/urandom > "$SCRATCH/data"
dd if="$SCRATCH/data" of="$MNT/d" bs=64k oflag=direct conv=notrunc,fsync status=none || fail "write failed"
[ "$(jq '.cache.key_tail.seg' "$MNT/.pcache/status.json")" = 0 ] || fail "key log not in segment 0"
[ "$(jq '.cache.media_errors' "$MNT/.pcache/status.json")" = 0 ] || fail "media errors before the cut"
[ "$(jq '.cache.dirty_bytes' "$MNT/.pcache/status.json")" -gt $((4 << 20)) ] || fail "not enough dirty data"

# cut the cache file under the mapping: every data segment is gone
truncate -s $((seg_base + seg_size)) "$CACHE" || fail "cannot cut the cache file"
pc_cleanup_add truncate -s 160M "$CACHE"

if dd if="$MNT/d" of=/dev/null bs=4k skip=1024 count=1 iflag=direct status=none 2>"$SCRATCH/err"; then
	fail "a read of cut cached data succeeded"
fi
grep -q "Input/output error" "$SCRATCH/err" || fail "the read did not fail with EIO: $(cat "$SCRATCH/err")"
kill -0 "$PC_PID" 2>/dev/null || fail "the daemon died of the media error"
mountpoint -q "$MNT" || fail "the mount is gone"
note "read of cut data: $(cat "$SCRATCH/err")"

# data the cache does not hold comes from the backing (its fill into the cut area is dropped)
dd if="$MNT/d" of="$SCRATCH/got" bs=64k skip=128 count=16 iflag=direct status=none || fail "miss read failed"
dd if="$SCRATCH/d.raw" of="$SCRATCH/want" bs=64k skip=128 count=16 status=none
cmp -s "$SCRATCH/got" "$SCRATCH/want" || fail "a miss returned other bytes than the backing's"
kill -0 "$PC_PID" 2>/dev/null || fail "the daemon died on a miss"

n=$(jq -e '.cache.media_errors' "$MNT/.pcache/status.json") || fail "no media_errors in status.json"
[ "$n" -ge 1 ] || fail "media_errors $n after a media error"
grep -q "media_errors [1-9]" "$MNT/.pcache/status" || fail "status does not count media errors"
grep -q '^pcachefs_media_errors_total{[^}]*} [1-9]' "$MNT/.pcache/metrics" || fail "metrics do not count media errors"
"$PCACHECTL" status "$MNT" > "$SCRATCH/st" || fail "pcachectl status failed"
grep -q "[1-9][0-9]* media errors" "$SCRATCH/st" || { cat "$SCRATCH/st" >&2; fail "pcachectl status does not show media errors"; }

# the writeback cannot read the dirty data: the image is held back and a flush fails, no hang
pc_ctl "$MNT" writeback_rate 0 || fail "cannot unleash the writeback"
if timeout 60 "$PCACHECTL" flush --image d "$MNT" >"$SCRATCH/out" 2>"$SCRATCH/err"; then
	cat "$SCRATCH/out" "$SCRATCH/err" "$MNT/.pcache/status" "$SCRATCH/pcachefs.mnt.log" >&2
	fail "a flush of unreadable dirty data succeeded"
fi
[ $? -ne 124 ] || fail "the flush hung"
note "flush: $(cat "$SCRATCH/err")"
grep -q "failing: .*media error" "$MNT/.pcache/status" || { cat "$MNT/.pcache/status" >&2; fail "status does not show the image failing with a media error"; }
[ "$(jq '.images[] | select(.name == "d") | .dirty_bytes' "$MNT/.pcache/status.json")" -gt 0 ] \
	|| fail "the unreadable data is no longer dirty"
kill -0 "$PC_PID" 2>/dev/null || fail "the daemon died in the writeback"

truncate -s 160M "$CACHE" || fail "cannot restore the cache file"
pc_umount "$MNT"
