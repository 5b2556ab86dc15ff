#!/bin/bash
# Description: pcachectl formats, shows (info, dump, dump --json), checks and repairs a cache
# device file; bad options, foreign data, blank files and a locked device are refused with
# clear messages and the documented exit status (0 ok, 1 repairable/refused, 2 corrupt, 3 error).
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
need_cmd jq dd
[ -x "$TOOLS/holdlock" ] || skip "build/tools/holdlock missing"

D=$SCRATCH/cache.img
F=$SCRATCH/foreign.img
OUT=$SCRATCH/out
ERR=$SCRATCH/err
HOLD_PID=

cleanup() {
	[ -n "$HOLD_PID" ] && kill "$HOLD_PID" 2>/dev/null
	rm -f "$D" "$F"
}
trap cleanup EXIT

# ctl EXPECTED_STATUS ARGS...: run pcachectl, keep stdout/stderr in $OUT/$ERR, check the status.
ctl() {
	local want=$1 got
	shift
	"$PCACHECTL" "$@" >"$OUT" 2>"$ERR"
	got=$?
	if [ "$got" != "$want" ]; then
		cat "$OUT" "$ERR" >&2
		fail "pcachectl $*: exit $got, expected $want"
	fi
}
# has FILE TEXT: FILE contains TEXT (fixed string).
has() { grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "expected '$2' in $(basename "$1")"; }; }
# corrupt OFFSET: overwrite 4 bytes of the device with 0xff.
corrupt() { printf '\377\377\377\377' | dd of="$D" bs=1 seek="$1" conv=notrunc status=none; }

note "help for every command"
ctl 0 --help
has "$OUT" "usage: pcachectl COMMAND"
for c in format info check dump; do
	ctl 0 "$c" --help
	has "$OUT" "usage: pcachectl $c"
done
ctl 0 --version
ctl 3
ctl 3 frobnicate "$D"
has "$ERR" "unknown command 'frobnicate'"

note "bad format options: clear error, exit 3, nothing created"
ctl 3 format "$D"
has "$ERR" "does not exist; give --size"
ctl 3 format --size=64M --segment-size=3M "$D"
has "$ERR" "not a power of two"
ctl 3 format --size=64M --segment-size=512K "$D"
ctl 3 format --size=lots "$D"
has "$ERR" "--size: 'lots' is not a size"
ctl 3 format --size=64M --gc-percent=95 "$D"
has "$ERR" "--gc-percent"
ctl 3 format --size=64M --bogus "$D"
has "$ERR" "unknown or incomplete option"
ctl 3 format --size=64M
has "$ERR" "no DEVICE given"
ctl 3 format --size=5M "$D"
has "$ERR" "too small"
[ -e "$D" ] && fail "a refused format created $D"

note "format a new file"
ctl 0 format --size=64M --segment-size=2M "$D"
has "$OUT" "31 segments of 2 MiB"
[ "$(stat -c %s "$D")" = 67108864 ] || fail "file not created at 64 MiB"
uuid1=$("$PCACHECTL" dump --json "$D" | jq -r .superblock.uuid)

note "an existing cache is not overwritten without --force"
ctl 1 format --segment-size=2M "$D"
has "$ERR" "holds a pcachefs cache"
has "$ERR" "use --force"
ctl 3 format --size=32M --segment-size=2M "$D"
has "$ERR" "--size only creates"
ctl 0 format --force --segment-size=2M --data-crc --gc-percent=50 "$D"
uuid2=$("$PCACHECTL" dump --json "$D" | jq -r .superblock.uuid)
[ "$uuid1" != "$uuid2" ] || fail "--force did not reformat (same uuid)"

note "info, dump, dump --json, check on a clean device"
ctl 0 info "$D"
has "$OUT" "segments:      31 x 2 MiB"
has "$OUT" "granularity:   page"
has "$OUT" "data crc:      on"
has "$OUT" "gc_percent:    50"
has "$OUT" "key_tail:      segment 0 offset 0 lsn 1"
has "$OUT" "damaged slots: 0"
ctl 0 dump "$D"
has "$OUT" "segment 30 gen 0"
has "$OUT" "slot 0: valid seq 1"
ctl 0 dump --json "$D"
jq -e '.superblock.seg_count == 31 and .superblock.seg_size == 2097152 and
	.superblock.copies == ["valid", "valid"] and .cache_info.data_crc == true and
	.cache_info.gc_percent == 50 and .cache_info.next_image_id == 1 and
	.key_tail.lsn == 1 and .dirty_tail.seg == 0 and (.segments | length) == 31 and
	.images == [] and .damaged == 0 and .findings == []' "$OUT" >/dev/null ||
	{ cat "$OUT" >&2; fail "dump --json values"; }
ctl 0 check "$D"
has "$OUT" "clean"

note "one damaged slot: check says repairable (1), info still works, --repair fixes it"
corrupt $((8192 + 20))          # cache_info slot 0 (the newest after format)
ctl 1 check "$D"
has "$OUT" "cache_info slot 0: bad CRC; using slot 1"
has "$OUT" "repairable"
ctl 0 info "$D"
has "$OUT" "gc_percent:    50"
has "$OUT" "damaged slots: 1"
ctl 0 dump --json "$D"
jq -e '.damaged == 1 and .cache_info.slots[0].state == "bad CRC" and
	(.findings | length) == 1' "$OUT" >/dev/null || { cat "$OUT" >&2; fail "dump --json of a damaged slot"; }
ctl 1 check --repair "$D"
has "$OUT" "repaired"
ctl 0 check "$D"
ctl 0 check --quiet "$D"
[ -s "$OUT" ] && fail "check --quiet printed something"

note "a damaged superblock copy is repairable too"
corrupt $((4096 + 40))
ctl 1 check "$D"
has "$OUT" "superblock copy 1"
ctl 1 check --repair "$D"
ctl 0 check "$D"

note "both superblock copies corrupt: corrupt (2), named"
corrupt 40
corrupt $((4096 + 40))
ctl 2 check "$D"
has "$ERR" "superblock: both copies invalid"
ctl 2 info "$D"
has "$ERR" "superblock"
ctl 2 dump --json "$D"

note "both slots of a segment record corrupt: corrupt (2), named"
ctl 0 format --force --segment-size=2M "$D"
corrupt $((151552 + 5 * 64 + 20))
corrupt $((151552 + 5 * 64 + 32 + 20))
ctl 2 check "$D"
has "$ERR" "segment 5 record: both slots invalid"

note "foreign data and blank files are refused"
head -c $((16 << 20)) /dev/urandom >"$F"
ctl 2 info "$F"
has "$ERR" "superblock: bad magic"
ctl 2 check "$F"
ctl 1 format --segment-size=1M "$F"
has "$ERR" "not a valid pcachefs cache"
ctl 0 format --force --segment-size=1M "$F"
ctl 0 check "$F"
rm -f "$F"
truncate -s 16M "$F"
ctl 2 info "$F"
has "$ERR" "blank"
ctl 0 format --segment-size=1M "$F"   # blank: no --force needed

note "a locked device is refused naming the holder"
ctl 0 format --force --segment-size=2M "$D"
start_bg "$SCRATCH/holdlock.log" "$TOOLS/holdlock" "$D"
HOLD_PID=$BG_PID
for _ in $(seq 50); do grep -q locked "$SCRATCH/holdlock.log" && break; sleep 0.1; done
grep -q "locked $HOLD_PID" "$SCRATCH/holdlock.log" || fail "holdlock did not lock: $(cat "$SCRATCH/holdlock.log")"
ctl 3 info "$D"
has "$ERR" "locked by pid $HOLD_PID (holdlock)"
ctl 3 check "$D"
has "$ERR" "locked by pid $HOLD_PID (holdlock)"
ctl 3 format --force --segment-size=2M "$D"
has "$ERR" "locked by pid $HOLD_PID"
ctl 0 dump --no-lock "$D"
has "$OUT" "segments:      31 x 2 MiB"
kill "$HOLD_PID"
wait_gone "$HOLD_PID" 10 || fail "holdlock did not exit"
HOLD_PID=
ctl 0 info "$D"

note "images: info and dump --json show the table, names escaped"
[ -x "$TOOLS/cachedev_image" ] || fail "build/tools/cachedev_image missing"
ctl 0 format --force --segment-size=2M "$D"
"$TOOLS/cachedev_image" "$D" add vm1 /var/lib/images/vm1.raw $((8 << 30)) >/dev/null || fail "add vm1"
"$TOOLS/cachedev_image" "$D" add 'db "prod" \x' '/dev/disk/by-id/a b' 1048576 >/dev/null || fail "add db"
"$TOOLS/cachedev_image" "$D" add 'bad/name' /x 2>/dev/null && fail "a name with / was accepted"
"$TOOLS/cachedev_image" "$D" add vm1 /y 2>/dev/null && fail "a duplicate name was accepted"
ctl 0 info "$D"
has "$OUT" "images:        2"
has "$OUT" "vm1"
has "$OUT" "/var/lib/images/vm1.raw"
has "$OUT" "next image id: 3"
ctl 0 dump --json "$D"
jq -e '(.images | length) == 2 and .images[0].name == "vm1" and .images[0].size == 8589934592 and
	.images[0].id == 1 and .images[1].name == "db \"prod\" \\x" and
	.images[1].path == "/dev/disk/by-id/a b" and .images[1].state == "attached" and
	.images[0].uuid != .images[1].uuid and .cache_info.next_image_id == 3' "$OUT" >/dev/null ||
	{ cat "$OUT" >&2; fail "dump --json image table"; }
"$TOOLS/cachedev_image" "$D" rename vm1 vm1-old || fail "rename"
"$TOOLS/cachedev_image" "$D" remove 'db "prod" \x' || fail "remove"
ctl 0 dump --json "$D"
jq -e '(.images | length) == 1 and .images[0].name == "vm1-old" and .images[0].id == 1' "$OUT" >/dev/null ||
	{ cat "$OUT" >&2; fail "dump --json after rename and remove"; }
ctl 0 check "$D"

note "pcachectl admin: all checks passed"
exit 0
