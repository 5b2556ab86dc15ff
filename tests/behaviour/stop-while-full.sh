#!/bin/bash
# Description: stopping never hangs. With the cache full in front of a backing whose writes
# fail (flakyfs eio rule), writers wait for cache space; then SIGTERM (round 1) or umount -f
# (round 2) must end the daemon within 10 s and the waiting writers fail. Round 3: a
# .pcache/flush drain behind a slow backing (1 s per request) and SIGTERM, same limit. Each
# restart replays the log: every fsynced byte reads back.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq cmp
[ -x "$TOOLS/flakyfs" ] || fail "flakyfs not built"

pc_shm 64M
MNT=$SCRATCH/mnt
FMNT=$SCRATCH/flaky
pc_image "$SCRATCH/slow.raw" 96M
head -c $((4 << 20)) /dev/urandom > "$SCRATCH/synced" || fail "cannot make the data"
head -c $((48 << 20)) /dev/urandom > "$SCRATCH/bulk" || fail "cannot make the data"

mkdir -p "$FMNT"
start_bg "$SCRATCH/flakyfs.log" "$TOOLS/flakyfs" -f -o "backing=$SCRATCH/slow.raw,name=image" "$FMNT"
FLAKY_PID=$BG_PID
wait_mounted "$FMNT" "$FLAKY_PID" || { cat "$SCRATCH/flakyfs.log" >&2; fail "flakyfs did not mount"; }
pc_cleanup_add "umount $FMNT; kill $FLAKY_PID"
pc_cleanup_add pc_unmount_if "$MNT"
pc_cleanup_add 'kill $WRITER_PID $DRAIN_PID'

# fill ROUND: write the fsynced range at SYNC_OFF MiB, slow the backing to a crawl, then start
# a writer three times the cache behind it and a flush-all drain; wait until writers wait.
fill() {
	local sync_off=$1 waits n=0
	dd if="$SCRATCH/synced" of="$MNT/slow" bs=1M seek="$sync_off" oflag=direct conv=notrunc,fsync \
		status=none || fail "round $2: fsynced write failed"
	# every write to the backing fails: writeback retries, no space is ever freed
	printf 'eio 0 0x6000000 w 0\n' > "$FMNT/.control" || fail "cannot break the backing"
	dd if="$SCRATCH/bulk" of="$MNT/slow" bs=256k seek=$((48 * 4)) oflag=direct conv=notrunc \
		status=none 2> "$SCRATCH/writer.err" &
	WRITER_PID=$!
	sh -c "printf '1\n' > '$MNT/.pcache/flush'" 2> "$SCRATCH/drain.err" &
	DRAIN_PID=$!
	while :; do
		# a read racing with a change may see a torn document: just look again
		waits=$(jq -r '.cache.full_waits' "$MNT/.pcache/status.json" 2>/dev/null) || waits=0
		[ "$waits" -gt 0 ] && break
		n=$((n + 1))
		[ $n -lt 300 ] || fail "round $2: writers never waited for space"
		sleep 0.1
	done
	sleep 1   # let the waits settle: writers queued on space, the drain on the backing
	kill -0 "$DRAIN_PID" 2>/dev/null || note "round $2: the drain ended before the stop: $(cat "$SCRATCH/drain.err")"
}

# stopped ROUND T0: the daemon must be gone within 10 s of T0; the writer must have failed.
stopped() {
	local t0=$2 ms rc
	wait_gone "$PC_PID" 30 || fail "round $1: pcachefs still running 30 s after the stop"
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	note "round $1: daemon exited after $ms ms"
	[ $ms -le 10000 ] || { tail -5 "$SCRATCH/pcachefs.mnt.log" >&2; fail "round $1: stop took $ms ms (> 10 s)"; }
	wait "$WRITER_PID"; rc=$?
	[ $rc -ne 0 ] || fail "round $1: the waiting writer succeeded although the daemon stopped"
	note "round $1: writer: $(tail -1 "$SCRATCH/writer.err")"
	wait "$DRAIN_PID"
	printf 'clear\n' > "$FMNT/.control" || fail "cannot repair the backing"
	umount -l "$MNT" 2>/dev/null
	mountpoint -q "$MNT" && fail "round $1: still mounted"
	return 0
}

# round 1: SIGTERM
pc_mount "$MNT" -o "cache=$CACHE,cache_size=16M,segment_size=1M,sequential_cutoff=0" -o "image=slow:$FMNT/image"
fill 0 1
t0=$(date +%s%N)
kill -TERM "$PC_PID"
stopped 1 "$t0"

# round 2: restart (replay), the round-1 data is there; then the same with umount -f
pc_mount "$MNT" -o "cache=$CACHE"
cmp -n $((4 << 20)) "$SCRATCH/synced" "$MNT/slow" || fail "fsynced data lost across the SIGTERM stop"
fill 8 2
t0=$(date +%s%N)
umount -f "$MNT" 2>/dev/null
stopped 2 "$t0"

pc_mount "$MNT" -o "cache=$CACHE"
cmp -n $((4 << 20)) "$SCRATCH/synced" "$MNT/slow" || fail "round-1 data lost across the umount stop"
cmp -n $((4 << 20)) -i 0:$((8 << 20)) "$SCRATCH/synced" "$MNT/slow" || fail "fsynced data lost across the umount stop"

# round 3: a flush-all drain behind a slow backing (1 s per request), no writer waiting.
# NOTE: this drain is short enough to finish within 10 s even without the abort; the round
# checks that a stop ends a running drain with an error, not that it would have hung.
pc_ctl "$MNT" writeback_rate 1 || fail "cannot slow the writeback down"
dd if="$SCRATCH/bulk" of="$MNT/slow" bs=1M seek=16 count=12 oflag=direct conv=notrunc,fsync status=none \
	|| fail "round 3: write failed"
printf 'delay_us 1000000\n' > "$FMNT/.control" || fail "cannot slow the backing"
pc_ctl "$MNT" writeback_rate 0 || fail "cannot lift the writeback rate"
sh -c "printf '1\n' > '$MNT/.pcache/flush'" 2> "$SCRATCH/drain.err" &
DRAIN_PID=$!
sleep 2
kill -0 "$DRAIN_PID" 2>/dev/null || fail "round 3: the drain ended at once: $(cat "$SCRATCH/drain.err")"
t0=$(date +%s%N)
kill -TERM "$PC_PID"
wait_gone "$PC_PID" 60 || fail "round 3: pcachefs still running 60 s after SIGTERM"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
note "round 3: daemon exited after $ms ms; drain: $(cat "$SCRATCH/drain.err")"
[ $ms -le 10000 ] || { tail -5 "$SCRATCH/pcachefs.mnt.log" >&2; fail "round 3: stop took $ms ms (> 10 s)"; }
wait "$DRAIN_PID" && fail "round 3: the drain reported success although the daemon stopped"
printf 'delay_us 0\n' > "$FMNT/.control" || fail "cannot speed the backing up"
umount -l "$MNT" 2>/dev/null
pc_mount "$MNT" -o "cache=$CACHE"
cmp -n $((12 << 20)) -i 0:$((16 << 20)) "$SCRATCH/bulk" "$MNT/slow" \
	|| fail "round 3: fsynced data lost across the stop"
cmp -n $((4 << 20)) "$SCRATCH/synced" "$MNT/slow" || fail "round-1 data lost"
pc_umount "$MNT"
exit 0
