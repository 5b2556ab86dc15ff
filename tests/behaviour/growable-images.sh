#!/bin/bash
# Description: file images grow like files. A fresh qcow2 (qemu-img create, no preallocation)
# attached through -o image grows through qemu-io writes to many times its size, passes
# qemu-img check, keeps every fsynced cluster across kill -9, and after a flush its backing file
# equals the image byte for byte. A raw image grows by a write past its end, truncate -s,
# fallocate -l and qemu-img resize; the new bytes read as zeros. It shrinks by truncate and
# qemu-img resize --shrink: the file is cut, the bytes past the end are gone (zeros after a
# growth), the new size survives kill -9. growable=0 (persisted) stops growth and cuts: a write
# at the end gets ENOSPC, truncate EPERM. A block device never grows.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd qemu-img qemu-io cmp fallocate truncate

pc_shm 512M
MNT=$SCRATCH/mnt
qemu-img create -q -f qcow2 "$SCRATCH/q.qcow2" 4G || fail "qemu-img create"
pc_image "$SCRATCH/r.raw" 1M 1
Q0=$(stat -c %s "$SCRATCH/q.qcow2")
pc_cleanup_add pc_unmount_if "$MNT"
CMD=(-o "cache=$CACHE,cache_size=384M,keep_timeout=0" -o "image=q:$SCRATCH/q.qcow2" -o "image=r:$SCRATCH/r.raw")
pc_mount "$MNT" "${CMD[@]}"
[ "$(cat "$MNT/.pcache/images/q/growable")" = 1 ] || fail "a file image is not growable by default"

QIO=(qemu-io -n -t none -f qcow2)
"${QIO[@]}" -c "write -P 0xa1 0 1M" -c "write -P 0xb2 512M 2M" -c "write -P 0xc3 3G 64k" \
	-c "aio_write -P 0xd4 1G 1M" -c "aio_flush" -c "write -z 2G 1M" -c flush \
	"$MNT/q" > "$SCRATCH/qio.out" 2>&1 || { cat "$SCRATCH/qio.out"; fail "qemu-io writes on a growing qcow2"; }
grep -qi 'error\|fail' "$SCRATCH/qio.out" && { cat "$SCRATCH/qio.out"; fail "qemu-io reported an error"; }
Q1=$(stat -c %s "$MNT/q")
[ "$Q1" -ge $((Q0 * 4)) ] || fail "the qcow2 grew from $Q0 to only $Q1 bytes"
check_q() {
	"${QIO[@]}" -c "read -P 0xa1 0 1M" -c "read -P 0xb2 512M 2M" -c "read -P 0xc3 3G 64k" \
		-c "read -P 0xd4 1G 1M" -c "read -P 0 2G 1M" -c "read -P 0 100M 1M" "$1" > "$SCRATCH/qio.out" 2>&1 ||
		{ cat "$SCRATCH/qio.out"; fail "qemu-io read of $1"; }
	grep -q 'Pattern verification failed' "$SCRATCH/qio.out" && { cat "$SCRATCH/qio.out"; fail "pattern mismatch on $1 ($2)"; }
	qemu-img check -f qcow2 "$1" > "$SCRATCH/check.out" 2>&1 || { cat "$SCRATCH/check.out"; fail "qemu-img check of $1 ($2)"; }
	return 0
}
check_q "$MNT/q" "grown"

# every fsynced cluster survives kill -9 (the growth is in the image table before the ack)
pc_kill9 "$MNT"
pc_mount "$MNT" "${CMD[@]}"
[ "$(stat -c %s "$MNT/q")" = "$Q1" ] || fail "size after kill -9: $(stat -c %s "$MNT/q"), was $Q1"
check_q "$MNT/q" "after kill -9"

# raw: a write past the end, truncate, fallocate, qemu-img resize
head -c 4096 /dev/urandom > "$SCRATCH/blk"
dd if="$SCRATCH/blk" of="$MNT/r" bs=4096 seek=1000 conv=notrunc,fsync status=none || fail "write past the end of r"
[ "$(stat -c %s "$MNT/r")" = $((1001 * 4096)) ] || fail "r is $(stat -c %s "$MNT/r") bytes after a write at 4000 KiB"
cmp <(head -c $((999 * 4096 - (1 << 20))) /dev/zero) <(dd if="$MNT/r" bs=1M skip=$((1 << 20)) iflag=skip_bytes,count_bytes count=$((999 * 4096 - (1 << 20))) status=none) ||
	fail "the gap a growing write left does not read as zeros"
cmp -n 4096 "$SCRATCH/blk" <(dd if="$MNT/r" bs=4096 skip=1000 count=1 status=none) || fail "the growing write does not read back"
truncate -s 8M "$MNT/r" || fail "truncate -s 8M"
[ "$(stat -c %s "$MNT/r")" = $((8 << 20)) ] || fail "truncate did not grow r"
fallocate -l 12M "$MNT/r" || fail "fallocate -l 12M"
[ "$(stat -c %s "$MNT/r")" = $((12 << 20)) ] || fail "fallocate did not grow r"
qemu-img resize -q -f raw "$MNT/r" 16M || fail "qemu-img resize"
[ "$(stat -c %s "$MNT/r")" = $((16 << 20)) ] || fail "qemu-img resize did not grow r"

# shrinking: the bytes past the new end are gone (dirty ones too), a growth reads zeros there,
# the new size survives kill -9 and the file is cut
head -c $((4 << 20)) /dev/urandom > "$SCRATCH/tail"
dd if="$SCRATCH/tail" of="$MNT/r" bs=1M seek=12 conv=notrunc,fsync status=none || fail "write the tail of r"
cut=$(((12 << 20) + 1000))
truncate -s $cut "$MNT/r" || fail "truncate -s down"
[ "$(stat -c %s "$MNT/r")" = $cut ] || fail "r is $(stat -c %s "$MNT/r") bytes after a cut to $cut"
[ "$(stat -c %s "$SCRATCH/r.raw")" = $cut ] || fail "the backing is $(stat -c %s "$SCRATCH/r.raw") bytes after a cut to $cut"
cmp -n 1000 "$SCRATCH/tail" <(dd if="$MNT/r" bs=1M skip=12 status=none) || fail "the bytes before the new end changed"
pc_kill9 "$MNT"
pc_mount "$MNT" "${CMD[@]}"
[ "$(stat -c %s "$MNT/r")" = $cut ] || fail "r is $(stat -c %s "$MNT/r") bytes after kill -9, cut to $cut"
cmp -n 1000 "$SCRATCH/tail" <(dd if="$MNT/r" bs=1M skip=12 status=none) || fail "the bytes before the new end changed across kill -9"
qemu-img resize -q -f raw "$MNT/r" 16M || fail "qemu-img resize up again"
cmp <(head -c $(((4 << 20) - 1000)) /dev/zero) <(dd if="$MNT/r" bs=1M skip=$cut iflag=skip_bytes status=none) ||
	fail "the bytes past a cut do not read as zeros after a growth"
qemu-img resize -q -f raw --shrink "$MNT/r" 14M || fail "qemu-img resize --shrink"
[ "$(stat -c %s "$MNT/r")" = $((14 << 20)) ] || fail "qemu-img resize --shrink did not cut r"
qemu-img resize -q -f raw "$MNT/r" 16M || fail "qemu-img resize up to 16M"

# growable=0 stops growth, and is kept across a restart
pc_ctl "$MNT" images/r/growable 0
pc_umount "$MNT" || fail "umount"
pc_mount "$MNT" "${CMD[@]}"
[ "$(cat "$MNT/.pcache/images/r/growable")" = 0 ] || fail "growable=0 was not kept"
dd if="$SCRATCH/blk" of="$MNT/r" bs=4096 seek=$((4 << 10)) conv=notrunc status=none 2>"$SCRATCH/dd.err" && fail "a write past the end of a fixed image succeeded"
grep -q "No space left" "$SCRATCH/dd.err" || { cat "$SCRATCH/dd.err"; fail "no ENOSPC for a write past the end of a fixed image"; }
truncate -s 20M "$MNT/r" 2>/dev/null && fail "truncate grew a fixed image"
truncate -s 1M "$MNT/r" 2>/dev/null && fail "truncate cut a fixed image"
pc_ctl "$MNT" images/r/growable 1
truncate -s 20M "$MNT/r" || fail "truncate after growable=1"

# a block device never grows
need_cmd losetup
pc_image "$SCRATCH/dev.raw" 4M
LOOP=$(losetup -f --show "$SCRATCH/dev.raw") || fail "losetup"
pc_cleanup_add "losetup -d $LOOP"
pc_ctl "$MNT" attach "blk:$LOOP" || fail "attach a block device"
[ "$(cat "$MNT/.pcache/images/blk/growable")" = 0 ] || fail "a block device image says it grows"
pc_ctl "$MNT" images/blk/growable 1 2>/dev/null && fail "a block device was made growable"
dd if="$SCRATCH/blk" of="$MNT/blk" bs=4096 seek=1024 conv=notrunc status=none 2>/dev/null && fail "a block device image grew"
pc_ctl "$MNT" detach blk || fail "detach the block device"

# writeback: the backing files equal the images, sizes included
pc_ctl "$MNT" flush 1 || fail "flush"
cmp "$MNT/q" "$SCRATCH/q.qcow2" || fail "the qcow2 backing differs from the image after the flush"
cmp "$MNT/r" "$SCRATCH/r.raw" || fail "the raw backing differs from the image after the flush"
pc_umount "$MNT" || fail "umount"
check_q "$SCRATCH/q.qcow2" "backing file"
note "qcow2 grew from $Q0 to $Q1 bytes; raw grew to 20 MiB by write, truncate, fallocate, qemu-img resize"
exit 0
