#!/bin/bash
# Description: (no keeper: -o keep_timeout=0, the connection dies with the daemon) kill -9 of the daemon under load (two fsync writers and fio on a second image,
# writeback and GC running), restart, and every record whose fsync returned before the kill
# reads back; between kill and restart the backing image alone holds only valid records of the
# right slots and never rolls back (several cycles; PCACHE_SOAK=1 runs 200). Finally flush-all:
# the backing holds the same records.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd fio

CYCLES=4
[ -n "${PCACHE_SOAK:-}" ] && CYCLES=200
FW=$TOOLS/fsync_writer
[ -x "$FW" ] || fail "fsync_writer not built"

pc_shm 768M
MNT=$SCRATCH/mnt
LOG=$SCRATCH/fsync.log
pc_image "$SCRATCH/d.raw" 64M   # zero: the backing check knows its original content
pc_image "$SCRATCH/load.raw" 128M
pc_cleanup_add pc_unmount_if "$MNT"
: > "$LOG"

# the cache (160 MiB) is smaller than the images (192 MiB): writeback and GC run all along
pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE,cache_size=160M,segment_size=4M" -o "image=d:$SCRATCH/d.raw" \
	-o "image=load:$SCRATCH/load.raw"
for cycle in $(seq 1 "$CYCLES"); do
	# two writers on disjoint slot ranges (4096 slots of 4 KiB = 16 MiB each), plus fio noise
	"$FW" write "$MNT/d" "$LOG" --slots 4096 --first-slot 0 --gen-base $((cycle * 10000000)) \
		--seed $((cycle * 2 + 1)) >"$SCRATCH/w1.out" 2>&1 &
	w1=$!
	"$FW" write "$MNT/d" "$LOG" --slots 4096 --first-slot 4096 --gen-base $((cycle * 10000000 + 5000000)) \
		--seed $((cycle * 2 + 2)) >"$SCRATCH/w2.out" 2>&1 &
	w2=$!
	fio --name=load --filename="$MNT/load" --direct=1 --rw=randwrite --bs=64k --ioengine=libaio \
		--iodepth=8 --time_based --runtime=60 --rate=100m --size=128M >/dev/null 2>&1 &
	fl=$!
	# kill only once this cycle has logged new fsynced records, at a random moment after that
	before=$(wc -l < "$LOG")
	for i in $(seq 1 300); do
		[ "$(wc -l < "$LOG")" -gt $((before + 2000)) ] && break
		sleep 0.1
	done
	[ "$(wc -l < "$LOG")" -gt "$before" ] || fail "cycle $cycle: the writers made no progress in 30 s"
	sleep "$(awk -v s="$cycle" 'BEGIN { srand(s); printf "%.2f", rand() }')"
	kill -9 "$PC_PID"
	wait "$w1" "$w2" "$fl" 2>/dev/null
	pc_kill9 "$MNT"
	n=$(wc -l < "$LOG")
	"$FW" backing "$SCRATCH/d.raw" "$SCRATCH/backing.state" --slots 8192 >"$SCRATCH/bk.out" 2>&1 ||
		{ cat "$SCRATCH/bk.out"; fail "cycle $cycle: the backing image alone is not consistent"; }
	note "cycle $cycle: killed under load, $n fsynced records logged so far; $(cat "$SCRATCH/bk.out")"
	pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE"
	"$FW" verify "$MNT/d" "$LOG" || { tail -20 "$SCRATCH"/pcachefs.mnt.log; fail "cycle $cycle: fsynced data lost after kill -9"; }
done
[ "$(wc -l < "$LOG")" -gt 100 ] || fail "too few records were written to prove anything ($(wc -l < "$LOG"))"

pc_ctl "$MNT" flush 1 || fail "flush-all failed"
pc_umount "$MNT"
"$FW" verify "$SCRATCH/d.raw" "$LOG" || fail "backing image misses fsynced records after flush-all"
exit 0
