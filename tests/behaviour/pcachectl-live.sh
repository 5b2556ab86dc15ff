#!/bin/bash
# Description: pcachectl on a live mount: `status MNT` summarises .pcache/status.json and
# `status --json MNT` prints it (same document as the file), `flush MNT` (and --image) writes
# every dirty byte back and returns with dirty_bytes 0, drawing a progress line on a terminal
# (run under script(1)) and printing nothing on stderr otherwise; a directory that is not a
# pcachefs mount, a missing image and a plain file are refused with exit 1 and one line.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq script
[ -x "$PCACHECTL" ] || fail "pcachectl not built"

pc_shm 192M
MNT=$SCRATCH/mnt
OUT=$SCRATCH/out
ERR=$SCRATCH/err
pc_image "$SCRATCH/d.raw" 32M 4
pc_image "$SCRATCH/e.raw" 16M
# image d lies behind flakyfs, every request delayed 200 ms: a flush of d lasts long enough for
# the progress line to show a rate and an ETA
FMNT=$SCRATCH/flaky
pc_flaky "$FMNT" "$SCRATCH/d.raw" delay_us=200000
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=160M,sequential_cutoff=0" -o "image=d:$FMNT/image" -o "image=e:$SCRATCH/e.raw"

# ctl_refused DESC ARGS...: pcachectl ARGS must exit 1 with exactly one line on stderr.
ctl_refused() {
	local d=$1 rc
	shift
	"$PCACHECTL" "$@" >"$OUT" 2>"$ERR"
	rc=$?
	[ $rc -eq 1 ] || { cat "$OUT" "$ERR" >&2; fail "$d: exit $rc, expected 1"; }
	[ "$(wc -l < "$ERR")" -eq 1 ] || { cat "$ERR" >&2; fail "$d: expected one line on stderr"; }
	grep -q '^pcachectl ' "$ERR" || fail "$d: the line does not name pcachectl: $(cat "$ERR")"
	note "refused ($d): $(cat "$ERR")"
}

cache_dirty() { jq -e '.cache.dirty_bytes' "$MNT/.pcache/status.json"; }

# make_dirty MIB: writeback_rate 1 byte/s keeps what is written dirty in the cache. d gets six
# flush epochs of 1 MiB from MIB on (writeback takes one epoch per batch, so a flush of d shows
# progress batch by batch), e one of 1 MiB.
make_dirty() {
	local i
	pc_ctl "$MNT" writeback_rate 1 || fail "cannot set writeback_rate"
	head -c $((6 << 20)) /dev/urandom > "$SCRATCH/data"
	for i in 0 1 2 3 4 5; do
		dd if="$SCRATCH/data" of="$MNT/d" bs=1M skip=$i seek=$(($1 + i)) count=1 conv=notrunc,fsync \
			status=none || fail "write d"
	done
	dd if="$SCRATCH/data" of="$MNT/e" bs=64k count=16 conv=notrunc,fsync status=none || fail "write e"
	[ "$(cache_dirty)" -gt $((4 << 20)) ] || fail "no dirty data after writing: $(cache_dirty)"
}

make_dirty 2

# status: a readable summary naming the cache, the dirty data and both images
"$PCACHECTL" status "$MNT" >"$OUT" 2>"$ERR" || { cat "$ERR" >&2; fail "status failed"; }
[ -s "$ERR" ] && fail "status wrote to stderr: $(cat "$ERR")"
grep -q "^cache .*$CACHE" "$OUT" || { cat "$OUT" >&2; fail "status: no cache line"; }
grep -q '^dirty .*MiB' "$OUT" || { cat "$OUT" >&2; fail "status: no dirty line in MiB"; }
grep -q '^knobs .*writeback_rate 1 B/s' "$OUT" || { cat "$OUT" >&2; fail "status: knobs line"; }
grep -q '^image  *d: writeback, 32 MiB, dirty [0-9.]* MiB' "$OUT" || { cat "$OUT" >&2; fail "status: image d"; }
grep -q '^image  *e: ' "$OUT" || { cat "$OUT" >&2; fail "status: image e"; }
note "status: $(tr '\n' '|' < "$OUT")"

# status --json: the same document as the file (numbers may move between two reads: compare
# the shape with numbers blanked, and the dirty bytes between a read of the file before and one
# after: writeback_rate 1 keeps them nearly still, but its burst may write one request back in
# between, so dirty bytes may only fall)
before=$(cache_dirty)
"$PCACHECTL" status --json "$MNT" >"$OUT" || fail "status --json failed"
after=$(cache_dirty)
jq -e . "$OUT" >/dev/null || fail "status --json is not JSON"
blank='walk(if type == "number" then 0 else . end)'
[ "$(jq -S "$blank" "$OUT")" = "$(jq -S "$blank" "$MNT/.pcache/status.json")" ] \
	|| fail "status --json differs from .pcache/status.json"
got=$(jq -e .cache.dirty_bytes "$OUT") || fail "status --json: no dirty_bytes"
[ "$got" -le "$before" ] && [ "$got" -ge "$after" ] && [ "$got" -gt 0 ] \
	|| fail "status --json: dirty_bytes $got, the file said $before before and $after after"
[ "$(jq '.images | map(.name) | join(",")' "$OUT")" = '"d,e"' ] || fail "status --json: images"

# errors: not a pcachefs mount, a plain file, no such image; nothing is written
mkdir -p "$SCRATCH/plain"
ctl_refused "status of a plain directory" status "$SCRATCH/plain"
ctl_refused "flush of a plain directory" flush "$SCRATCH/plain"
ctl_refused "status of a file" status "$SCRATCH/d.raw"
ctl_refused "flush of a missing image" flush --image nosuch "$MNT"
[ "$(cache_dirty)" -gt 0 ] || fail "a refused flush wrote something back"

# flush one image, then the whole cache, off a terminal: nothing on stderr
pc_ctl "$MNT" writeback_rate 0 || fail "cannot reset writeback_rate"
"$PCACHECTL" flush --image e "$MNT" >"$OUT" 2>"$ERR" || { cat "$ERR" >&2; fail "flush --image e failed"; }
[ "$(jq '.images[] | select(.name == "e") | .dirty_bytes' "$MNT/.pcache/status.json")" = 0 ] \
	|| fail "image e still dirty after flush --image e"
[ -s "$ERR" ] && fail "flush --image off a terminal wrote to stderr: $(cat "$ERR")"
"$PCACHECTL" flush "$MNT" >"$OUT" 2>"$ERR" || { cat "$ERR" >&2; fail "flush failed"; }
[ "$(cache_dirty)" = 0 ] || fail "dirty_bytes $(cache_dirty) after flush, expected 0"
[ -s "$ERR" ] && fail "flush off a terminal wrote to stderr: $(cat "$ERR")"
[ -s "$OUT" ] && fail "flush printed on stdout: $(cat "$OUT")"
cmp -s <(head -c $((6 << 20)) "$SCRATCH/d.raw" | tail -c $((4 << 20))) <(head -c $((4 << 20)) "$SCRATCH/data") \
	|| fail "backing image d does not hold the flushed data"

# on a terminal (script gives the command a pty): a progress line with the bar, rate and ETA
# (the slow backing of d makes the flush last more than a second), ending at 100%
make_dirty 10
pc_ctl "$MNT" writeback_rate 0 || fail "cannot reset writeback_rate"
script -qec "$PCACHECTL flush $MNT" /dev/null >"$OUT" 2>&1 || { cat "$OUT" >&2; fail "flush under script failed"; }
grep -aq 'flush \[[#.]*\] .*left' "$OUT" || { cat -v "$OUT" >&2; fail "no progress line on a terminal"; }
grep -aq '\[####################\] 100%' "$OUT" || { cat -v "$OUT" >&2; fail "progress did not end at 100%"; }
grep -aq 'left, [0-9.]* [KM]iB/s, ETA [0-9]*:[0-9][0-9]' "$OUT" || { cat -v "$OUT" >&2; fail "no rate and ETA"; }
note "progress: $(tr '\r' '\n' < "$OUT" | tail -n 2 | head -n 1 | cat -v)"
[ "$(cache_dirty)" = 0 ] || fail "dirty_bytes $(cache_dirty) after flush on a terminal"
exit 0
