#!/bin/bash
# Description: with NOTIFY_SOCKET set, pcachefs speaks systemd's notify protocol (captured by
# tests/tools/dgram_capture): STATUS= while starting, READY=1 only once the mount is live, then
# STATUS= with the dirty level and the images, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on
# unmount. In the foreground with a socket path and a watchdog; daemonized with an abstract
# (@name) socket: READY=1 comes with MAINPID= of the daemon, the watchdog meant for another
# process (WATCHDOG_PID) is not fed, and SIGTERM brings STOPPING=1.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
CAPTURE=$TOOLS/dgram_capture
[ -x "$CAPTURE" ] || fail "dgram_capture not built"

pc_shm 512M
MNT=$SCRATCH/mnt
mkdir -p "$MNT"
pc_image "$SCRATCH/a.raw" 32M 1
pc_image "$SCRATCH/b.raw" 16M
pc_cleanup_add pc_unmount_if "$MNT"

# capture SOCKET LOG: start the capture helper, wait until it is bound.
capture() {
	start_bg "$SCRATCH/capture.err" "$CAPTURE" "$1" "$2" "$MNT"
	CAP_PID=$BG_PID
	local n=50
	until grep -q BOUND "$2" 2>/dev/null; do
		n=$((n - 1)); [ $n -gt 0 ] || { cat "$SCRATCH/capture.err"; fail "capture helper did not bind $1"; }
		kill -0 "$CAP_PID" 2>/dev/null || { cat "$SCRATCH/capture.err"; fail "capture helper died"; }
		sleep 0.1
	done
}
# wait_field LOG REGEX: wait until a field matching REGEX was captured.
wait_field() {
	local n=100
	until awk '{ $1 = $2 = $3 = ""; sub(/^ +/, "") } 1' "$1" | grep -qE "$2"; do
		n=$((n - 1)); [ $n -gt 0 ] || { cat "$1"; fail "no $2 in the notifications"; }
		sleep 0.1
	done
}
# seq_of LOG FIELD-REGEX: datagram number of the first field matching.
seq_of() { awk -v r="$2" '$4 ~ r { print $1; exit }' "$1"; }

# ---- foreground, socket path, watchdog
LOG=$SCRATCH/fg.log
capture "$SCRATCH/notify.sock" "$LOG"
NOTIFY_SOCKET=$SCRATCH/notify.sock WATCHDOG_USEC=200000 \
	pc_mount "$MNT" -o "cache=$CACHE,cache_size=256M" -o "image=a:$SCRATCH/a.raw" -o "image=b:$SCRATCH/b.raw"
wait_field "$LOG" '^READY=1$'
awk '$4 == "READY=1" && $3 != 1 { exit 1 }' "$LOG" || { cat "$LOG"; fail "READY=1 came before the mount was live"; }
awk '$4 ~ /^STATUS=starting/ && $3 != 0 { exit 1 }' "$LOG" || fail "the start-up STATUS= came with the mount already there?"
[ -n "$(seq_of "$LOG" '^STATUS=starting')" ] || fail "no STATUS= while starting"
[ "$(seq_of "$LOG" '^STATUS=starting')" -lt "$(seq_of "$LOG" '^READY=1$')" ] || fail "start-up STATUS= after READY=1"
awk -v p="$PC_PID" '$1 > 0 && $2 != p { exit 1 }' "$LOG" || fail "a notification came from another process than $PC_PID"
grep -qE '^[0-9]+ [0-9]+ 1 STATUS=serving 2 images on .*, cache [0-9]+% dirty \([0-9]+ MiB\)$' "$LOG" \
	|| { cat "$LOG"; fail "no STATUS= with the images and the dirty level after READY=1"; }
grep -q ' MAINPID=' "$LOG" && fail "MAINPID= sent in the foreground"
sleep 1.5
pings=$(grep -c ' WATCHDOG=1$' "$LOG")
[ "$pings" -ge 5 ] || { cat "$LOG"; fail "only $pings watchdog pings in 1.5 s with WATCHDOG_USEC=200000"; }
[ "$pings" -le 25 ] || fail "$pings watchdog pings in 1.5 s: far more than every WATCHDOG_USEC/2"
grep -q 'STOPPING=1' "$LOG" && fail "STOPPING=1 before the stop"
pc_umount "$MNT" || fail "umount"
wait_field "$LOG" '^STOPPING=1$'
[ "$(seq_of "$LOG" '^STOPPING=1$')" -gt "$(seq_of "$LOG" '^READY=1$')" ] || fail "STOPPING=1 before READY=1"
kill "$CAP_PID"
note "foreground: STATUS while starting, READY=1 after the mount, STATUS, $pings watchdog pings, STOPPING=1"

# ---- daemonized, abstract socket, a watchdog meant for another process
LOG=$SCRATCH/bg.log
ABS=@pcachefs-test-$$-$RANDOM
capture "$ABS" "$LOG"
NOTIFY_SOCKET=$ABS WATCHDOG_USEC=100000 WATCHDOG_PID=1 \
	"$PCACHEFS" -o "cache=$CACHE" "$MNT" > "$SCRATCH/bg.out" 2>&1 || { cat "$SCRATCH/bg.out"; fail "daemonized start failed"; }
mountpoint -q "$MNT" || fail "not mounted after the daemonizing parent exited"
wait_field "$LOG" '^READY=1$'
main=$(awk '$4 ~ /^MAINPID=/ { sub(/^MAINPID=/, "", $4); print $4; exit }' "$LOG")
[ -n "$main" ] || { cat "$LOG"; fail "no MAINPID= with READY=1 when daemonized"; }
echo "$main" >> "$SCRATCH/.pids"
PC_PID=$main
[ "$(cat /proc/"$main"/comm 2>/dev/null)" = pcachefs ] || fail "MAINPID=$main is not the pcachefs daemon"
[ "$(seq_of "$LOG" '^MAINPID=')" = "$(seq_of "$LOG" '^READY=1$')" ] || fail "MAINPID= not in the READY=1 message"
awk -v p="$main" '$1 > 0 && $2 != p { exit 1 }' "$LOG" || fail "a notification came from another process than $main"
awk '$4 == "READY=1" && $3 != 1 { exit 1 }' "$LOG" || fail "READY=1 came before the mount was live (daemonized)"
grep -qE ' 1 STATUS=serving 2 images ' "$LOG" || fail "the images known to the device are not in STATUS= (daemonized)"
sleep 0.5
grep -q ' WATCHDOG=1$' "$LOG" && fail "the watchdog of WATCHDOG_PID=1 was fed"
kill -TERM "$main"
wait_gone "$main" 30 || fail "daemon did not exit on SIGTERM"
wait_field "$LOG" '^STOPPING=1$'
mountpoint -q "$MNT" && fail "still mounted after SIGTERM"
kill "$CAP_PID"
note "daemonized: READY=1 with MAINPID=$main after the mount, no foreign watchdog, STOPPING=1 on SIGTERM"
exit 0
