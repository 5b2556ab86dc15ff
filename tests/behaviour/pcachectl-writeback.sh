#!/bin/bash
# Description: (no keeper: -o keep_timeout=0, the connection dies with the daemon) dirty data left in the cache by a kill -9 of pcachefs is written back offline by
# `pcachectl writeback`: refused while the device is mounted (locked), afterwards the backing
# image equals everything written, a second run has nothing to do, and a remount is clean.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
[ -x "$PCACHECTL" ] || fail "pcachectl not built"

pc_shm 192M
MNT=$SCRATCH/mnt
IMG=$SCRATCH/d.raw
EXP=$SCRATCH/expected.raw
pc_image "$IMG" 32M 8
cp "$IMG" "$EXP"
pc_cleanup_add pc_unmount_if "$MNT"

pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE,cache_size=160M" -o "image=d:$IMG"
# slow the online writeback to a trickle so the dirty data is still in the cache at the kill
pc_ctl "$MNT" writeback_rate 4096 || fail "cannot set writeback_rate"
head -c $((12 << 20)) /dev/urandom > "$SCRATCH/data"
# three epochs: overlapping ranges, each made durable in the cache by fsync
dd if="$SCRATCH/data" of="$MNT/d" bs=1M seek=4 count=8 conv=notrunc,fsync status=none || fail "write 1"
dd if="$SCRATCH/data" of="$MNT/d" bs=64k skip=128 seek=100 count=40 conv=notrunc,fsync status=none || fail "write 2"
dd if="$SCRATCH/data" of="$MNT/d" bs=4k skip=2900 seek=1030 count=60 conv=notrunc,fsync status=none || fail "write 3"
dd if="$SCRATCH/data" of="$EXP" bs=1M seek=4 count=8 conv=notrunc status=none
dd if="$SCRATCH/data" of="$EXP" bs=64k skip=128 seek=100 count=40 conv=notrunc status=none
dd if="$SCRATCH/data" of="$EXP" bs=4k skip=2900 seek=1030 count=60 conv=notrunc status=none
cmp -s "$MNT/d" "$EXP" || fail "the mount does not read back what was written"

# mounted: the device is locked, pcachectl refuses it (exit 3) and writes nothing
expect_fail "writeback of a device in use" "$PCACHECTL" writeback "$CACHE"
"$PCACHECTL" writeback --quiet "$CACHE"; rc=$?
[ "$rc" -eq 3 ] || fail "writeback of a locked device: exit $rc, expected 3"

kill -9 "$PC_PID"
pc_kill9 "$MNT"
cmp -s "$IMG" "$EXP" && fail "the backing already equals the expected image: nothing left to prove"

# on a terminal (script(1) gives it a pty): the shared progress line, then the summary
if command -v script >/dev/null 2>&1; then
	script -qec "$PCACHECTL writeback $CACHE" /dev/null > "$SCRATCH/wb.out" 2>&1 \
		|| { cat -v "$SCRATCH/wb.out" >&2; fail "pcachectl writeback failed"; }
	grep -aq 'writeback \[####################\] 100%.*ksets' "$SCRATCH/wb.out" \
		|| { cat -v "$SCRATCH/wb.out" >&2; fail "no progress line on a terminal"; }
else
	"$PCACHECTL" writeback "$CACHE" > "$SCRATCH/wb.out" 2> "$SCRATCH/wb.err" \
		|| { cat "$SCRATCH/wb.err" >&2; fail "pcachectl writeback failed"; }
fi
note "$(tr '\r' '\n' < "$SCRATCH/wb.out" | tail -n 1)"
cmp "$IMG" "$EXP" || fail "backing image differs from everything written after pcachectl writeback"
grep -aq "written back" "$SCRATCH/wb.out" || fail "no summary line"

# nothing left: a second run writes no kset
"$PCACHECTL" writeback "$CACHE" > "$SCRATCH/wb2.out" || fail "second writeback failed"
grep -q "written back: 0 ksets" "$SCRATCH/wb2.out" || fail "second run was not empty: $(cat "$SCRATCH/wb2.out")"

# the engine agrees: remount, the image reads the same and the cache holds no dirty data
pc_mount "$MNT" -o keep_timeout=0 -o "cache=$CACHE"
cmp -s "$MNT/d" "$EXP" || fail "remounted image differs"
pc_umount "$MNT"
"$PCACHECTL" check --quiet "$CACHE" || fail "pcachectl check after writeback: exit $?"
exit 0
