#!/bin/bash
# Description: once daemonized, pcachefs sends its own lines and the engine's (here a writeback
# failing on a backing that returns EIO) to syslog: RFC 3164 lines with facility daemon and the
# level of the message, ident pcachefs[PID], the mount point in each line; none of them goes to
# the terminal. The syslog socket is a private one (PCACHEFS_SYSLOG_SOCKET, captured by
# tests/tools/dgram_capture), never the system's /dev/log. In the foreground the same engine
# line goes to stderr.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
CAPTURE=$TOOLS/dgram_capture
FLAKYFS=$TOOLS/flakyfs
[ -x "$CAPTURE" ] || fail "dgram_capture not built"
[ -x "$FLAKYFS" ] || fail "flakyfs not built"

pc_shm 512M
MNT=$SCRATCH/mnt
FMNT=$SCRATCH/fmnt
mkdir -p "$MNT" "$FMNT"
pc_image "$SCRATCH/real" 16M
pc_cleanup_add umount "$FMNT"
pc_cleanup_add pc_unmount_if "$MNT"

start_bg "$SCRATCH/flakyfs.log" "$FLAKYFS" -f -o "backing=$SCRATCH/real,name=image" "$FMNT"
wait_mounted "$FMNT" "$BG_PID" || { cat "$SCRATCH/flakyfs.log"; fail "flakyfs did not mount"; }

LOG=$SCRATCH/syslog
start_bg "$SCRATCH/capture.err" "$CAPTURE" "$SCRATCH/log.sock" "$LOG" "$MNT"
n=50
until grep -q BOUND "$LOG" 2>/dev/null; do
	n=$((n - 1)); [ $n -gt 0 ] || { cat "$SCRATCH/capture.err"; fail "capture helper did not bind"; }
	sleep 0.1
done

# wait_line REGEX: wait until a captured syslog line matches.
wait_line() {
	local n=100
	until grep -qE "$1" "$LOG"; do
		n=$((n - 1)); [ $n -gt 0 ] || { cat "$LOG"; fail "no syslog line matching $1"; }
		sleep 0.1
	done
}

PCACHEFS_SYSLOG_SOCKET=$SCRATCH/log.sock "$PCACHEFS" -o "cache=$CACHE,cache_size=256M" \
	-o "image=a:$FMNT/image" "$MNT" > "$SCRATCH/start.out" 2>&1 || { cat "$SCRATCH/start.out"; fail "daemonized start failed"; }
mountpoint -q "$MNT" || fail "not mounted"
# <30> = daemon.info
wait_line " [0-9]+ 1 <30>[A-Z][a-z][a-z] [ 0-9][0-9] [0-9:]{8} pcachefs\[[0-9]+\]: $MNT: mounted $CACHE on $MNT "
pid=$(sed -n 's/.* pcachefs\[\([0-9]*\)\]: .*: mounted .*/\1/p' "$LOG" | head -1)
echo "$pid" >> "$SCRATCH/.pids"
PC_PID=$pid
[ "$(cat /proc/"$pid"/comm 2>/dev/null)" = pcachefs ] || fail "syslog ident pid $pid is not the daemon"
# the keeper (a process of its own, keeper.c) logs under its own pid, and only as "keeper of"
awk -v p="$pid" '$1 > 0 && $2 != p && !/: keeper of / { exit 1 }' "$LOG" || fail "a syslog line came from another process"
wait_line "keeper of $MNT: holding the connection of pid $pid"

# the backing fails every write: the engine's writeback reports it
printf 'eio 0 16777216 w\n' > "$FMNT/.control" || fail "cannot set the eio rule"
dd if=/dev/urandom of="$MNT/a" bs=64k count=4 oflag=direct conv=notrunc status=none || fail "write to the cache failed"
expect_fail "flush with a failing backing" sh -c "echo 1 > '$MNT/.pcache/images/a/flush'"
# <27> = daemon.err
wait_line " $pid 1 <27>.* pcachefs\[$pid\]: $MNT: writeback: image [0-9]+: Input/output error; its dirty data stays in the cache"
wait_line " $pid 1 <27>.* pcachefs\[$pid\]: $MNT: a: writeback failed: Input/output error$"
grep -q 'writeback' "$SCRATCH/start.out" && fail "an engine line went to the terminal after daemonizing"
note "daemonized: engine and daemon lines in syslog"

printf 'clear\n' > "$FMNT/.control"
echo 1 > "$MNT/.pcache/images/a/flush" || fail "flush after the backing recovered"
pc_umount "$MNT" || fail "umount"
wait_line "pcachefs\[$pid\]: $MNT: unmounting $MNT$"

# foreground: the same engine line on stderr, none to syslog
PCACHEFS_SYSLOG_SOCKET=$SCRATCH/log.sock pc_mount "$MNT" -o "cache=$CACHE" -o "image=a:$FMNT/image"
lines=$(wc -l < "$LOG")
printf 'eio 0 16777216 w\n' > "$FMNT/.control"
dd if=/dev/urandom of="$MNT/a" bs=64k count=4 oflag=direct conv=notrunc status=none || fail "write (foreground)"
expect_fail "flush with a failing backing (foreground)" sh -c "echo 1 > '$MNT/.pcache/images/a/flush'"
FGLOG=$SCRATCH/pcachefs.mnt.log
n=100
until grep -qE '^pcachefs: writeback: image [0-9]+: Input/output error; its dirty data stays' "$FGLOG"; do
	n=$((n - 1)); [ $n -gt 0 ] || { cat "$FGLOG"; fail "the engine line is not on stderr in the foreground"; }
	sleep 0.1
done
[ "$(wc -l < "$LOG")" -eq "$lines" ] || fail "the foreground daemon logged to syslog"
printf 'clear\n' > "$FMNT/.control"
pc_umount "$MNT" || fail "umount (foreground)"
note "foreground: engine line on stderr"
exit 0
