#!/bin/bash
# Description: the .pcache/ control tree and the image files' metadata: status and status.json
# content (jq parses it), knobs and cache_mode persist across remounts, per-image stats counters
# move, per-image flush writes back, attach/detach at run time (detach refused while open),
# chmod/chown persist, statfs reports the cache, fallocate punch/zero read back as zeros, data
# rewritten within one flush epoch is written back once (wb_superseded).
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq fallocate cmp

pc_shm 512M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/a.raw" 64M 4
pc_image "$SCRATCH/b.raw" 32M 2
cp "$SCRATCH/b.raw" "$SCRATCH/b.orig"
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=384M" -o "image=a:$SCRATCH/a.raw"

# ---- layout and status
for f in status status.json gc_percent writeback_rate dirty_high dirty_low flush attach detach images; do
	[ -e "$MNT/.pcache/$f" ] || fail ".pcache/$f missing"
done
[ "$(ls "$MNT/.pcache/images")" = "a" ] || fail ".pcache/images lists $(ls "$MNT/.pcache/images")"
for f in stats cache_mode flush; do [ -e "$MNT/.pcache/images/a/$f" ] || fail ".pcache/images/a/$f missing"; done
grep -q "^pcachefs .* cache $CACHE" "$MNT/.pcache/status" || fail "status has no header line naming the cache"
grep -q "^image a $SCRATCH/a.raw size 67108864 " "$MNT/.pcache/status" || fail "status does not describe image a"
pc_status_json "$MNT" > "$SCRATCH/s.json"
[ "$(jq -r '.cache.path' "$SCRATCH/s.json")" = "$CACHE" ] || fail "status.json cache.path"
[ "$(jq -r '.cache.seg_count > 0 and .cache.size > 0' "$SCRATCH/s.json")" = true ] || fail "status.json geometry"
[ "$(jq -r '.images | length' "$SCRATCH/s.json")" = 1 ] || fail "status.json image count"
[ "$(jq -r '.images[0].name + " " + (.images[0].size|tostring) + " " + .images[0].cache_mode' "$SCRATCH/s.json")" \
	= "a 67108864 writeback" ] || fail "status.json image entry: $(jq -c '.images[0]' "$SCRATCH/s.json")"

# statfs: the cache's size
blocks=$(stat -f -c '%b' "$MNT") bsize=$(stat -f -c '%S' "$MNT")
total=$(jq -r '.cache.size' "$SCRATCH/s.json")
[ $((blocks * bsize)) -eq "$total" ] || fail "statfs size $((blocks * bsize)) != cache size $total"

# ---- per-image counters move
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$MNT/.pcache/images/$1/stats"; }
w0=$(stat_of a writes) wb0=$(stat_of a write_bytes) r0=$(stat_of a reads)
dd if=/dev/urandom of="$MNT/a" bs=4k count=64 seek=100 oflag=direct conv=notrunc status=none || fail "write"
dd if="$MNT/a" of=/dev/null bs=4k count=64 skip=1000 iflag=direct status=none || fail "read"
[ "$(stat_of a writes)" -ge $((w0 + 64)) ] || fail "writes counter did not move ($w0 -> $(stat_of a writes))"
[ "$(stat_of a write_bytes)" -ge $((wb0 + 262144)) ] || fail "write_bytes did not move"
[ "$(stat_of a reads)" -gt "$r0" ] || fail "reads counter did not move"
f0=$(stat_of a flushes)
sync "$MNT/a" 2>/dev/null || python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)' "$MNT/a"
[ "$(stat_of a flushes)" -gt "$f0" ] || fail "fsync did not count as a flush"

# per-image flush writes back
echo 1 > "$MNT/.pcache/images/a/flush" || fail "per-image flush failed"
cmp "$MNT/a" "$SCRATCH/a.raw" || fail "backing of a differs after .pcache/images/a/flush"

# data rewritten within one flush epoch reaches the backing once, as its newest copy
s0=$(pc_status_json "$MNT" | jq -r '.cache.wb_superseded') || fail "status.json wb_superseded"
dd if=/dev/urandom of="$SCRATCH/r1" bs=1M count=1 status=none
dd if=/dev/urandom of="$SCRATCH/r2" bs=1M count=1 status=none
dd if="$SCRATCH/r1" of="$MNT/a" bs=1M seek=8 oflag=direct conv=notrunc status=none || fail "write r1"
dd if="$SCRATCH/r2" of="$MNT/a" bs=1M seek=8 oflag=direct conv=notrunc status=none || fail "write r2"
echo 1 > "$MNT/.pcache/images/a/flush" || fail "per-image flush failed"
s1=$(pc_status_json "$MNT" | jq -r '.cache.wb_superseded')
[ $((s1 - s0)) -ge 1048576 ] || fail "the first copy was written back too (superseded $s0 -> $s1)"
cmp <(dd if="$SCRATCH/a.raw" bs=1M skip=8 count=1 status=none) "$SCRATCH/r2" ||
	fail "backing of a does not hold the newest copy"
grep -q "^  dirty .*; writeback: .* superseded" "$MNT/.pcache/status" || fail "status has no dirty/writeback line"

# ---- gc_percent: auto is the default of a new cache, shown with its reserve
[ "$(cat "$MNT/.pcache/gc_percent")" = auto ] || fail "a new cache's gc_percent reads $(cat "$MNT/.pcache/gc_percent")"
grep -q 'gc_percent auto ([0-9]* free segments kept' "$MNT/.pcache/status" || fail "status does not show gc_percent auto"
[ "$(jq '.cache.gc_auto' "$MNT/.pcache/status.json")" = true ] || fail "status.json gc_auto is not true"
grep -q '^  gc copy-forward: ' "$MNT/.pcache/status" || fail "status has no copy-forward line"

# ---- knobs persist across a remount
pc_ctl "$MNT" gc_percent 55 || fail "set gc_percent"
pc_ctl "$MNT" writeback_rate 4194304 || fail "set writeback_rate"
pc_ctl "$MNT" dirty_high 70 || fail "set dirty_high"
pc_ctl "$MNT" dirty_low 20 || fail "set dirty_low"
pc_ctl "$MNT" images/a/cache_mode writethrough || fail "set cache_mode"
[ "$(cat "$MNT/.pcache/images/a/max_share")" = 0 ] || fail "max_share is not 0 (no cap) by default"
pc_ctl "$MNT" images/a/max_share 30 || fail "set max_share"
[ "$(cat "$MNT/.pcache/gc_percent")" = 55 ] || fail "gc_percent reads $(cat "$MNT/.pcache/gc_percent")"
grep -q 'gc_percent 55, dirty_high 70, dirty_low 20' "$MNT/.pcache/status" || fail "status does not show the new knobs"
chmod 640 "$MNT/a" || fail "chmod"
chown 1234:5678 "$MNT/a" || fail "chown"
pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
[ "$(cat "$MNT/.pcache/gc_percent")" = 55 ] || fail "gc_percent not persisted"
[ "$(cat "$MNT/.pcache/writeback_rate")" = 4194304 ] || fail "writeback_rate not persisted: $(cat "$MNT/.pcache/writeback_rate")"
[ "$(cat "$MNT/.pcache/dirty_high")" = 70 ] || fail "dirty_high not persisted"
[ "$(cat "$MNT/.pcache/dirty_low")" = 20 ] || fail "dirty_low not persisted"
[ "$(cat "$MNT/.pcache/images/a/cache_mode")" = writethrough ] || fail "cache_mode not persisted"
[ "$(cat "$MNT/.pcache/images/a/max_share")" = 30 ] || fail "max_share not persisted"
grep -q '^max_share 30$' "$MNT/.pcache/images/a/stats" || fail "stats do not show max_share"
[ "$(jq '.images[] | select(.name == "a") | .max_share' "$MNT/.pcache/status.json")" = 30 ] || fail "status.json max_share"
pc_ctl "$MNT" images/a/max_share 0 || fail "set max_share 0"
cmp -s <(printf 'writethrough\n') "$MNT/.pcache/images/a/cache_mode" || fail "cache_mode is not one line"
cmp -s <(printf '55\n') "$MNT/.pcache/gc_percent" || fail "gc_percent is not one line"
pc_ctl "$MNT" gc_percent auto || fail "set gc_percent auto"
[ "$(cat "$MNT/.pcache/gc_percent")" = auto ] || fail "gc_percent does not read auto after setting it"
[ "$(stat -c '%a %u %g' "$MNT/a")" = "640 1234 5678" ] || fail "mode/owner not persisted: $(stat -c '%a %u %g' "$MNT/a")"
pc_ctl "$MNT" images/a/cache_mode writeback || fail "set cache_mode back"
pc_ctl "$MNT" writeback_rate 0 || fail "set writeback_rate 0"

# ---- attach and detach at run time
pc_ctl "$MNT" attach "b:$SCRATCH/b.raw" || fail "attach b failed"
[ "$(ls "$MNT")" = "$(printf 'a\nb')" ] || fail "after attach the root lists: $(ls "$MNT" | tr '\n' ' ')"
cmp "$MNT/b" "$SCRATCH/b.orig" || fail "attached image b does not read as its backing"
[ "$(jq -r '.images | length' "$MNT/.pcache/status.json")" = 2 ] || fail "status.json does not list b"
dd if=/dev/urandom of="$SCRATCH/patch" bs=64k count=16 status=none
dd if="$SCRATCH/patch" of="$MNT/b" bs=64k seek=3 oflag=direct conv=notrunc status=none || fail "write to b"
dd if="$SCRATCH/patch" of="$SCRATCH/b.orig" bs=64k seek=3 conv=notrunc status=none
exec 7<"$MNT/b"
pc_ctl "$MNT" detach b 2>/dev/null && fail "detach of an open image succeeded"
exec 7<&-
pc_ctl "$MNT" detach b || fail "detach b failed"
[ "$(ls "$MNT")" = a ] || fail "after detach the root lists: $(ls "$MNT" | tr '\n' ' ')"
[ -e "$MNT/.pcache/images/b" ] && fail ".pcache/images/b still there after detach"
cmp "$SCRATCH/b.raw" "$SCRATCH/b.orig" || fail "detach did not write b's data back to its backing"
pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
[ "$(ls "$MNT")" = a ] || fail "a detached image came back on remount: $(ls "$MNT" | tr '\n' ' ')"

# ---- fallocate: punch hole and zero range (unaligned edges) read back as zeros
fallocate -p -o 4096 -l 65536 "$MNT/a" || fail "punch hole failed"
fallocate -z -o 200000 -l 70001 "$MNT/a" || fail "zero range failed"
cmp -n 65536 <(dd if="$MNT/a" bs=4096 skip=1 count=16 status=none) /dev/zero || fail "punched range is not zero"
cmp -n 70001 <(tail -c +200001 "$MNT/a" | head -c 70001) /dev/zero || fail "zeroed range is not zero"
cmp -n 1 <(tail -c +270002 "$MNT/a") <(tail -c +270002 "$SCRATCH/a.raw") || fail "byte after the zeroed range changed"
fallocate -o 0 -l 4096 "$MNT/a" || fail "fallocate mode 0 inside the image refused"
pc_ctl "$MNT" flush 1 || fail "flush"
cmp "$MNT/a" "$SCRATCH/a.raw" || fail "backing differs after punch/zero and flush"

# short read at EOF
[ "$(dd if="$MNT/a" bs=4096 skip=$(((64 << 20) / 4096 - 1)) count=4 status=none | wc -c)" -eq 4096 ] \
	|| fail "read across EOF is not short"
pc_umount "$MNT"
exit 0
