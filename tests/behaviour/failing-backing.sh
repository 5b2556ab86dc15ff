#!/bin/bash
# Description: a backing that keeps failing never makes writers wait forever. Its writeback
# errors pin the dirty data, the cache fills, and a writer that waited space_timeout gets EIO
# (counted in status and metrics, logged); the image is shown as failing with its error; the
# other image still reads. Once the backing works again, writes succeed and flush completes; when
# it fails for good, pcachectl give-up --yes drops its dirty data and the others write back.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd dd jq timeout

pc_shm 512M
MNT=$SCRATCH/mnt
FL=$SCRATCH/fl
mkdir -p "$MNT"
pc_image "$SCRATCH/real" 256M
pc_image "$SCRATCH/b.raw" 16M 4
pc_flaky "$FL" "$SCRATCH/real"
pc_cleanup_add pc_unmount_if "$MNT"   # runs before the flakyfs cleanup

pc_mount "$MNT" -o "cache=$CACHE,cache_size=160M,segment_size=4M,space_timeout=3,sequential_cutoff=0" \
	-o "image=a:$FL/image" -o "image=b:$SCRATCH/b.raw"
[ "$(cat "$MNT/.pcache/space_timeout")" = 3 ] || fail "space_timeout does not read back"
printf 'eio 0 %d w\n' $((256 << 20)) > "$FL/.control" || fail "cannot make the backing fail"

# fill the cache with writes the writeback can never write back
t0=$(date +%s)
timeout 120 dd if=/dev/urandom of="$MNT/a" bs=1M count=256 oflag=direct conv=notrunc status=none 2>"$SCRATCH/dd.err"
rc=$?
t1=$(date +%s)
[ $rc -ne 124 ] || fail "the writer hung (120 s) instead of getting EIO"
[ $rc -ne 0 ] || fail "256 MiB of writes fit in a 160 MiB cache whose writeback fails"
grep -q "Input/output error" "$SCRATCH/dd.err" || { cat "$SCRATCH/dd.err"; fail "the writer did not get EIO"; }
note "the writer got EIO after $((t1 - t0)) s"

pc_status_json "$MNT" > "$SCRATCH/s.json"
[ "$(jq .cache.space_timeouts "$SCRATCH/s.json")" -ge 1 ] || fail "space_timeouts not counted"
[ "$(jq -r '.images[] | select(.name == "a") | .state' "$SCRATCH/s.json")" = failing ] ||
	fail "image a is not shown as failing"
[ "$(jq -r '.images[] | select(.name == "b") | .state' "$SCRATCH/s.json")" = ok ] || fail "image b is shown failing"
grep -q "^  failing: writeback to the backing fails: Input/output error" "$MNT/.pcache/status" ||
	{ cat "$MNT/.pcache/status"; fail "status does not show image a failing"; }
grep -q '^pcachefs_space_timeouts_total{[^}]*} [1-9]' "$MNT/.pcache/metrics" || fail "metrics do not count the timeout"
grep -q "waited 3 s for cache space and gets EIO" "$SCRATCH/pcachefs.mnt.log" || fail "the timeout is not logged"
cmp "$MNT/b" "$SCRATCH/b.raw" || fail "image b does not read as its backing"

# the backing comes back: the writeback drains, writers go on, flush completes
printf 'clear\n' > "$FL/.control"
# (a batch issued before the clear may still fail once: the flush reports it; the next one drains)
ok=0
for try in 1 2 3; do
	timeout 120 bash -c "echo 1 > '$MNT/.pcache/flush'" 2>/dev/null && { ok=1; break; }
	sleep 1
done
[ $ok -eq 1 ] || fail "flush after the backing came back failed 3 times"
dd if=/dev/urandom of="$MNT/a" bs=1M count=8 oflag=direct conv=notrunc status=none || fail "writes fail after recovery"
[ "$(jq -r '.images[] | select(.name == "a") | .state' "$MNT/.pcache/status.json")" = ok ] ||
	fail "image a still shown failing after a successful writeback"

# the backing fails for good: the admin gives up a's dirty data, the rest goes on
printf 'eio 0 %d w\n' $((256 << 20)) > "$FL/.control"
dd if=/dev/urandom of="$MNT/a" bs=1M count=8 oflag=direct conv=notrunc,fsync status=none || fail "write to a failed"
dd if=/dev/urandom of="$MNT/b" bs=1M count=4 oflag=direct conv=notrunc,fsync status=none || fail "write to b failed"
timeout 60 bash -c "echo 1 > '$MNT/.pcache/flush'" 2>/dev/null && fail "flush succeeded although a's backing fails"
"$PCACHECTL" give-up "$MNT" a >/dev/null 2>"$SCRATCH/gu.err" && fail "give-up without --yes succeeded"
grep -q "refusing without --yes" "$SCRATCH/gu.err" || { cat "$SCRATCH/gu.err"; fail "give-up refusal unclear"; }
ls "$MNT" | grep -qx a || fail "a refused give-up removed the image"
"$PCACHECTL" give-up --yes "$MNT" a || fail "give-up failed"
grep -q "gave up .* dirty bytes" "$SCRATCH/pcachefs.mnt.log" || fail "give-up not logged"
ls "$MNT" | grep -qx a && fail "image a still there after give-up"
timeout 60 bash -c "echo 1 > '$MNT/.pcache/flush'" || fail "flush of the other images failed after give-up"
jq -e '.cache.dirty_tail.lsn == .cache.key_head.lsn and ([.images[].dirty_bytes] | add) == 0' \
	"$MNT/.pcache/status.json" >/dev/null || { cat "$MNT/.pcache/status"; fail "dirty data left after give-up and flush"; }
cmp "$MNT/b" "$SCRATCH/b.raw" || fail "image b's backing does not hold its data"
pc_umount "$MNT"
exit 0
