#!/bin/bash
# Description: flakyfs (the fault-injecting test filesystem) serves its backing file and obeys
# its command-line rules and the .control file: eio, enospc, short, delay, fsync_eio, clear,
# counters; SIGTERM unmounts it. Shows the interface the engine and daemon error tests use.
# Timeout: 60
. "$TESTS_DIR/behaviour/lib.sh"
need_fuse
need_cmd dd cmp mountpoint
FLAKYFS=$TOOLS/flakyfs
[ -x "$FLAKYFS" ] || skip "no $FLAKYFS"

real=$SCRATCH/real
mnt=$SCRATCH/mnt
mkdir -p "$mnt"
head -c $((4 << 20)) /dev/urandom > "$real" || fail "cannot make $real"
cleanup() { umount "$mnt" 2>/dev/null; [ -n "${FL_PID:-}" ] && kill "$FL_PID" 2>/dev/null; }
trap cleanup EXIT

start_bg "$SCRATCH/flakyfs.log" "$FLAKYFS" -f -o "backing=$real,eio=8192:512:r,delay=1048576:4096:rw:300000" "$mnt"
FL_PID=$BG_PID
wait_mounted "$mnt" "$FL_PID" || { cat "$SCRATCH/flakyfs.log" >&2; fail "flakyfs did not mount"; }
img=$mnt/image
ctl=$mnt/.control

[ "$(stat -c %s "$img")" = $((4 << 20)) ] || fail "image size differs from the backing file"
# reads pass through, except the rule's range
dd if="$img" of="$SCRATCH/b0" bs=4096 count=1 iflag=direct status=none || fail "read of block 0 failed"
cmp -n 4096 "$SCRATCH/b0" "$real" || fail "block 0 differs"
expect_fail "read of the eio range" dd if="$img" of=/dev/null bs=4096 skip=2 count=1 iflag=direct status=none
# reads only: a write to the range works
dd if="$SCRATCH/b0" of="$img" bs=4096 seek=2 count=1 oflag=direct conv=notrunc status=none ||
	fail "write to a read-only eio rule failed"
cmp -n 4096 "$SCRATCH/b0" <(dd if="$real" bs=4096 skip=2 count=1 status=none) || fail "write did not land"

# the delay rule from the command line
t0=$(date +%s%N)
dd if="$img" of=/dev/null bs=4096 skip=256 count=1 iflag=direct status=none || fail "delayed read failed"
t1=$(date +%s%N)
[ $(( (t1 - t0) / 1000000 )) -ge 250 ] || fail "delay rule did not delay ($(( (t1 - t0) / 1000000 )) ms)"

# run-time rules through .control
printf 'clear\nenospc 0 4096 w\n' > "$ctl" || fail "control write failed"
expect_fail "write under enospc" dd if="$SCRATCH/b0" of="$img" bs=4096 count=1 oflag=direct conv=notrunc status=none
dd if="$img" of=/dev/null bs=4096 skip=2 count=1 iflag=direct status=none || fail "clear did not drop the eio rule"
printf 'clear\neio 0 4096 rw 2\n' > "$ctl"
expect_fail "1st read under a 2-shot rule" dd if="$img" of=/dev/null bs=4096 count=1 iflag=direct status=none
expect_fail "2nd read under a 2-shot rule" dd if="$img" of=/dev/null bs=4096 count=1 iflag=direct status=none
dd if="$img" of=/dev/null bs=4096 count=1 iflag=direct status=none || fail "a 2-shot rule fired a 3rd time"
# short: a read returns at most ARG bytes per request (dd reports a partial record)
printf 'short 0 65536 r 1000\n' > "$ctl"
out=$(dd if="$img" of=/dev/null bs=4096 count=1 iflag=direct 2>&1) || fail "short read failed"
echo "$out" | grep -q '^0+1 records in' || fail "short rule: $out"
expect_fail "bad control line" sh -c "printf 'bogus 1 2\n' > '$ctl'"
# fsync errors
printf 'clear\nfsync_eio 1\n' > "$ctl"
expect_fail "fsync under fsync_eio" dd if="$SCRATCH/b0" of="$img" bs=4096 count=1 conv=notrunc,fsync status=none
dd if="$SCRATCH/b0" of="$img" bs=4096 count=1 conv=notrunc,fsync status=none || fail "fsync_eio 1 fired twice"

status=$(cat "$ctl")
for key in reads writes errors shorts delayed fsyncs fsync_errors delay_us fsync_eio; do
	echo "$status" | grep -q "^$key [0-9-]*$" || fail "status lacks '$key': $status"
done
echo "$status" | grep -q '^fsync_errors 1$' || fail "fsync_errors: $status"
printf 'reset\ndelay 0 4096 r 1\n' > "$ctl"
cat "$ctl" | grep -q '^reads 0$' || fail "reset did not zero the counters"
cat "$ctl" | grep -q '^rule delay 0 4096 r 1$' || fail "rule line missing: $(cat "$ctl")"

kill -TERM "$FL_PID"
wait_gone "$FL_PID" 10 || fail "flakyfs did not exit on SIGTERM"
mountpoint -q "$mnt" && fail "flakyfs left its mount behind"
FL_PID=
exit 0
