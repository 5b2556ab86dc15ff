#!/bin/bash
# Description: SIGTERM and SIGINT stop the daemon cleanly (exit status 0, mount gone, cache device
# released); dirty data stays on the cache device and reads back after a restart; with
# -o drain_on_exit the backing image is complete when the daemon has exited (multi- and
# single-threaded loop).
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd flock cmp

pc_shm 512M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/s.raw" 64M 2
cp "$SCRATCH/s.raw" "$SCRATCH/s.orig"
pc_cleanup_add pc_unmount_if "$MNT"
head -c 16M /dev/urandom > "$SCRATCH/data"

# stop_with SIG: signal the daemon, expect exit 0, no mount, released cache device
stop_with() {
	local rc
	kill -"$1" "$PC_PID"
	wait "$PC_PID"
	rc=$?
	[ $rc -eq 0 ] || { tail "$SCRATCH/pcachefs.mnt.log"; fail "SIG$1: exit status $rc"; }
	mountpoint -q "$MNT" && fail "SIG$1: still mounted after the daemon exited"
	flock -n "$CACHE" true || fail "SIG$1: cache device still locked"
	note "SIG$1: clean stop"
}

pc_mount "$MNT" -o "cache=$CACHE,cache_size=384M" -o "image=s:$SCRATCH/s.raw"
pc_ctl "$MNT" writeback_rate 1 || fail "slow writeback down"
dd if="$SCRATCH/data" of="$MNT/s" bs=1M seek=8 oflag=direct conv=notrunc status=none || fail "write"
stop_with TERM
# writeback_rate 1 keeps most of the data dirty (the engine's token bucket lets a burst through)
if cmp -s -n $((16 << 20)) -i 0:$((8 << 20)) "$SCRATCH/data" "$SCRATCH/s.raw"; then
	note "all data was written back before the stop: the restart check below is weaker this time"
fi

pc_mount "$MNT" -o "cache=$CACHE"
cmp -n $((16 << 20)) -i 0:$((8 << 20)) "$SCRATCH/data" "$MNT/s" || fail "dirty data lost across SIGTERM and restart"
dd if="$SCRATCH/data" of="$MNT/s" bs=1M seek=30 count=4 oflag=direct conv=notrunc status=none || fail "write"
stop_with INT
drained=yes
cmp -s -n $((4 << 20)) -i 0:$((30 << 20)) "$SCRATCH/data" "$SCRATCH/s.raw" || drained=no
note "before the drain_on_exit run the backing was complete: $drained"
pc_mount "$MNT" -s -o "cache=$CACHE,drain_on_exit"   # -s: the single-threaded loop stops too
cmp -n $((4 << 20)) -i 0:$((30 << 20)) "$SCRATCH/data" "$MNT/s" || fail "dirty data lost across SIGINT and restart"
# The rate limit stays at 1 B/s (persisted): drain_on_exit must not wait for it.
[ "$(cat "$MNT/.pcache/writeback_rate")" = 1 ] || fail "writeback_rate did not persist"
stop_with TERM
cmp -n $((16 << 20)) -i 0:$((8 << 20)) "$SCRATCH/data" "$SCRATCH/s.raw" || fail "drain_on_exit: backing incomplete"
cmp -n $((4 << 20)) -i 0:$((30 << 20)) "$SCRATCH/data" "$SCRATCH/s.raw" || fail "drain_on_exit: backing incomplete"
exit 0
