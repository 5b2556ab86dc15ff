#!/bin/bash
# Description: (no keeper: -o keep_timeout=0, the connection dies with the daemon) writes on a file opened O_SYNC or O_DSYNC (no fsync) are durable when they return:
# kill -9 of the daemon while such writers run, restart, and every returned write reads back.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"

CYCLES=3
[ -n "${PCACHE_SOAK:-}" ] && CYCLES=30
FW=$TOOLS/fsync_writer
[ -x "$FW" ] || fail "fsync_writer not built"

pc_shm 512M
MNT=$SCRATCH/mnt
LOG=$SCRATCH/sync.log
pc_image "$SCRATCH/s.raw" 64M 2
pc_cleanup_add pc_unmount_if "$MNT"
: > "$LOG"

pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE,cache_size=448M" -o "image=s:$SCRATCH/s.raw"
for cycle in $(seq 1 "$CYCLES"); do
	"$FW" write "$MNT/s" "$LOG" --mode osync --slots 2048 --first-slot 0 \
		--gen-base $((cycle * 10000000)) --seed $((cycle * 2 + 1)) >"$SCRATCH/w1.out" 2>&1 &
	w1=$!
	"$FW" write "$MNT/s" "$LOG" --mode odsync --slots 2048 --first-slot 2048 \
		--gen-base $((cycle * 10000000 + 5000000)) --seed $((cycle * 2 + 2)) >"$SCRATCH/w2.out" 2>&1 &
	w2=$!
	before=$(wc -l < "$LOG")
	for i in $(seq 1 300); do
		[ "$(wc -l < "$LOG")" -gt $((before + 1000)) ] && break
		sleep 0.1
	done
	[ "$(wc -l < "$LOG")" -gt "$before" ] || fail "cycle $cycle: the writers made no progress in 30 s"
	sleep "$(awk -v s="$cycle" 'BEGIN { srand(s); printf "%.2f", rand() }')"
	kill -9 "$PC_PID"
	wait "$w1" "$w2" 2>/dev/null
	pc_kill9 "$MNT"
	note "cycle $cycle: killed, $(wc -l < "$LOG") O_SYNC/O_DSYNC records returned so far"
	pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE"
	"$FW" verify "$MNT/s" "$LOG" || fail "cycle $cycle: a returned O_SYNC/O_DSYNC write was lost after kill -9"
done
pc_umount "$MNT"
exit 0
