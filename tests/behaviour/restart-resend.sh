#!/bin/bash
# Description: a request the daemon read but never answered is sent again to the next daemon
# (FUSE_NOTIFY_RESEND). A writearound write to a backing that stalls (flakyfs delay) is inside
# the daemon when it is killed with -9; the keeper keeps the mount; a new pcachefs with the same
# command line takes it over, and the write is resent and applied: dd returns success, the
# bytes read back and are on the backing. Then an unflushed writeback write survives kill -9
# (its key was only staged), a second start without -o takeover is refused while a daemon
# serves, status shows the keeper, and a clean unmount ends the keeper.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq

pc_shm 256M
MNT=$SCRATCH/mnt
FM=$SCRATCH/flaky
mkdir -p "$MNT"
pc_image "$SCRATCH/w.raw" 16M
pc_image "$SCRATCH/b.raw" 16M
pc_flaky "$FM" "$SCRATCH/w.raw"
pc_cleanup_add pc_unmount_if "$MNT"

CMD=(-o "cache=$CACHE,cache_size=128M" -o "image=w:$FM/image" -o "image=b:$SCRATCH/b.raw" -o cache_mode=writearound)
pc_start "$SCRATCH/d1.log" "${CMD[@]}"
P1=$PC_PID
KPID=$(jq -r .daemon.keeper_pid "$MNT/.pcache/status.json")
[ "$KPID" -gt 0 ] && kill -0 "$KPID" || fail "no keeper process (status: $KPID)"
grep -q "keeper pid $KPID" "$MNT/.pcache/status" || fail "status does not name the keeper"

# a second daemon on a served mount point is refused unless it asks to take over
"$PCACHEFS" -f "${CMD[@]}" "$MNT" > "$SCRATCH/second.out" 2>&1 && fail "a second daemon started on a served mount"
grep -q "serves this mount (-o takeover" "$SCRATCH/second.out" || { cat "$SCRATCH/second.out"; fail "no clear refusal"; }

# writes to the first MiB of the backing stall for 4 s: the write below sits in the daemon
pc_stalled_write "$FM" "$MNT/w"
DD=$STALL_PID
kill -9 "$P1"
echo clear > "$FM/.control"
wait_gone "$P1" 20 || fail "the killed daemon did not exit"
kill -0 "$DD" 2>/dev/null || { cat "$SCRATCH/dd.out"; fail "the write ended with its daemon: $(cat "$SCRATCH/dd.out")"; }
kill -0 "$KPID" || fail "the keeper died with the daemon"

pc_start "$SCRATCH/d2.log" "${CMD[@]}"
pc_stalled_write_done "$MNT/w" "$SCRATCH/w.raw"
jq -e '.daemon.taken_over == true and .daemon.resent_requests >= 1' "$MNT/.pcache/status.json" >/dev/null ||
	{ jq .daemon "$MNT/.pcache/status.json"; fail "status: not taken over, or nothing resent"; }
note "resent: $(jq -c .daemon "$MNT/.pcache/status.json")"

# an acknowledged writeback write that nobody flushed survives kill -9 of the daemon
pc_ctl "$MNT" images/b/cache_mode writeback
head -c 4096 /dev/urandom > "$SCRATCH/small"
dd if="$SCRATCH/small" of="$MNT/b" bs=4k seek=7 oflag=direct conv=notrunc status=none || fail "write to b"
kill -9 "$PC_PID"
wait_gone "$PC_PID" 20 || fail "the killed daemon did not exit"
pc_start "$SCRATCH/d3.log" "${CMD[@]}"
cmp -n 4096 "$SCRATCH/small" <(dd if="$MNT/b" bs=4k skip=7 count=1 iflag=direct status=none) ||
	fail "an acknowledged write was lost with the daemon"
grep -q "logged [1-9][0-9]* keys a dead process had staged" "$SCRATCH/d3.log" || { cat "$SCRATCH/d3.log"; fail "no staged keys were recovered"; }

umount "$MNT" || fail "umount"
wait_gone "$PC_PID" 30 || fail "pcachefs did not exit after umount"
wait_gone "$KPID" 10 || fail "the keeper outlived a clean unmount"
exit 0
