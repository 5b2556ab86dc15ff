#!/bin/bash
# Description: bad options, bad image paths and names, a missing/foreign/in-use cache device and a
# resized backing image with dirty data each fail with a one-line error and exit status 1, leave
# the cache device and the backing images byte-for-byte unchanged and mount nothing; bad
# control-file input and non-root control writes are refused with an error, a log line (bad
# input) and no change.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd setpriv md5sum

pc_shm 512M
MNT=$SCRATCH/mnt
MNT2=$SCRATCH/mnt2
mkdir -p "$MNT" "$MNT2"
pc_image "$SCRATCH/a.raw" 32M 1
pc_image "$SCRATCH/b.raw" 32M 1
pc_cleanup_add pc_unmount_if "$MNT"
pc_cleanup_add pc_unmount_if "$MNT2"

# a formatted cache that knows image a, with dirty data of a, cleanly unmounted
pc_mount "$MNT" -o "cache=$CACHE,cache_size=256M" -o "image=a:$SCRATCH/a.raw"
pc_ctl "$MNT" writeback_rate 1 || fail "cannot slow writeback down"   # keep the data dirty
head -c 8M /dev/urandom | dd of="$MNT/a" bs=64k oflag=direct conv=notrunc status=none || fail "write failed"
pc_umount "$MNT"

PC_SUMS_FILES=("$CACHE" "$SCRATCH/a.raw" "$SCRATCH/b.raw")
PC_SUMS=$(pc_sums)
must_refuse() { pc_must_refuse "$@"; }

C="cache=$CACHE"
must_refuse "unknown option" -o "$C,bogus_option" "$MNT"
must_refuse "gc_percent=abc" -o "$C,gc_percent=abc" "$MNT"
must_refuse "gc_percent=200" -o "$C,gc_percent=200" "$MNT"
must_refuse "max_share=101" -o "$C,max_share=101" "$MNT"
must_refuse "bad cache_mode" -o "$C,cache_mode=fast" "$MNT"
must_refuse "bad segment_size" -o "$C,segment_size=3M" "$MNT"
must_refuse "bad cache_size" -o "cache=$SCRATCH/shm/new.img,cache_size=lots" "$MNT"
must_refuse "no cache option" -o "image=b:$SCRATCH/b.raw" "$MNT"
must_refuse "no mount point" -o "$C"
must_refuse "mount point is a file" -o "$C" "$SCRATCH/a.raw"
must_refuse "missing image path" -o "$C" -o "image=b:$SCRATCH/nonexistent.raw" "$MNT"
must_refuse "image path is a directory" -o "$C" -o "image=b:$SCRATCH" "$MNT"
must_refuse "image=NAME without path" -o "$C" -o "image=b" "$MNT"
must_refuse "invalid image name with a slash" -o "$C" -o "image=x/y:$SCRATCH/b.raw" "$MNT"
must_refuse "invalid image name .." -o "$C" -o "image=..:$SCRATCH/b.raw" "$MNT"
must_refuse "duplicate image name" -o "$C" -o "image=b:$SCRATCH/b.raw" -o "image=b:$SCRATCH/a.raw" "$MNT"
must_refuse "the cache device as an image" -o "$C" -o "image=b:$CACHE" "$MNT"
must_refuse "missing cache device" -o "cache=$SCRATCH/shm/missing.img" "$MNT"
[ -e "$SCRATCH/shm/missing.img" ] && fail "a missing cache device was created without cache_size"
head -c 4M /dev/urandom > "$SCRATCH/foreign.img"
truncate -s 256M "$SCRATCH/foreign.img"
fsum=$(md5sum < "$SCRATCH/foreign.img")
must_refuse "foreign cache device" -o "cache=$SCRATCH/foreign.img" "$MNT"
[ "$(md5sum < "$SCRATCH/foreign.img")" = "$fsum" ] || fail "the foreign device was written"

# a backing image resized while the cache holds dirty data of it
truncate -s 48M "$SCRATCH/a.raw"
PC_SUMS=$(pc_sums)
must_refuse "resized backing image with dirty data" -o "$C" "$MNT"
must_refuse "resized backing image named again" -o "$C" -o "image=a:$SCRATCH/a.raw" "$MNT"
truncate -s 32M "$SCRATCH/a.raw"
PC_SUMS=$(pc_sums)

# the cache device in use by a running daemon
pc_mount "$MNT" -o "$C" -o "allow_other"
sum_a=$(md5sum < "$MNT/a")
"$PCACHEFS" -o "$C" "$MNT2" 2>"$SCRATCH/err" && fail "a second pcachefs started on a cache device in use"
grep -qiE 'lock|in use|busy' "$SCRATCH/err" || { cat "$SCRATCH/err"; fail "in-use error does not say so"; }
note "refused (cache in use): $(cat "$SCRATCH/err")"
mountpoint -q "$MNT2" && fail "second mount appeared"
[ "$(md5sum < "$MNT/a")" = "$sum_a" ] || fail "the first mount changed after the refused second start"

# bad control-file input: refused, logged, nothing changes
LOGF=$SCRATCH/pcachefs.mnt.log
gc=$(cat "$MNT/.pcache/gc_percent")
bad_ctl() {
	local file=$1 value=$2 before
	before=$(wc -l < "$LOGF")
	if pc_ctl "$MNT" "$file" "$value" 2>/dev/null; then fail "control write $file='$value' succeeded"; fi
	[ "$(wc -l < "$LOGF")" -gt "$before" ] || fail "control write $file='$value' refused without a log line"
}
bad_ctl gc_percent abc
bad_ctl gc_percent 200
bad_ctl gc_percent -5
bad_ctl gc_percent autox
bad_ctl images/a/max_share 101
bad_ctl images/a/max_share 30%
bad_ctl images/a/growable 2
bad_ctl images/a/growable yes
bad_ctl dirty_high lots
bad_ctl writeback_rate 12abc
bad_ctl flush 2
bad_ctl attach garbage
bad_ctl attach "x:$SCRATCH/nonexistent.raw"
bad_ctl attach "bad/name:$SCRATCH/b.raw"
bad_ctl attach "a:$SCRATCH/b.raw"
bad_ctl detach nosuchimage
bad_ctl images/a/cache_mode fast
[ "$(cat "$MNT/.pcache/gc_percent")" = "$gc" ] || fail "gc_percent changed after bad writes"
[ "$(ls "$MNT")" = "a" ] || fail "the image list changed after bad attach/detach: $(ls "$MNT")"
grep -q '^cache_mode writeback$' "$MNT/.pcache/images/a/stats" || fail "cache_mode changed after a bad write"

# non-root: reads allowed, every control write refused
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
chmod 755 "$SCRATCH"   # mktemp made it 0700: let nobody reach the mount
"${NOBODY[@]}" cat "$MNT/.pcache/status" >/dev/null || fail "non-root cannot read status"
for f in gc_percent writeback_rate dirty_high dirty_low flush attach detach images/a/cache_mode images/a/flush; do
	if "${NOBODY[@]}" sh -c "echo 1 > '$MNT/.pcache/$f'" 2>/dev/null; then
		fail "non-root write to .pcache/$f succeeded"
	fi
done
if "${NOBODY[@]}" sh -c "echo 'b:$SCRATCH/b.raw' > '$MNT/.pcache/attach'" 2>/dev/null; then
	fail "non-root attach succeeded"
fi
[ "$(cat "$MNT/.pcache/gc_percent")" = "$gc" ] || fail "gc_percent changed after non-root writes"
[ "$(ls "$MNT")" = "a" ] || fail "non-root changed the image list"
# image files: the mode bits apply (0644 root: others may read, not write)
"${NOBODY[@]}" dd if="$MNT/a" of=/dev/null bs=64k count=1 status=none || fail "non-root cannot read a 0644 image"
if "${NOBODY[@]}" dd if=/dev/zero of="$MNT/a" bs=512 count=1 conv=notrunc status=none 2>/dev/null; then
	fail "non-root wrote a root-owned 0644 image"
fi
# the same size is fine; with growable 0, shrinking and growing are refused
truncate -s 32M "$MNT/a" || fail "truncate to the same size failed"
pc_ctl "$MNT" images/a/growable 0 || fail "growable 0"
truncate -s 16M "$MNT/a" 2>/dev/null && fail "truncate cut a fixed-size image"
dd if=/dev/zero of="$MNT/a" bs=512 seek=$((64 << 11)) count=1 conv=notrunc status=none 2>/dev/null \
	&& fail "a write past EOF of a fixed-size image succeeded"
[ "$(stat -c %s "$MNT/a")" -eq $((32 << 20)) ] || fail "the fixed-size image grew"
pc_umount "$MNT"
exit 0
