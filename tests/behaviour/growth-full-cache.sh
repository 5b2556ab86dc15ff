#!/bin/bash
# Description: images grow while the cache is full. A qcow2 created on an image_dir mount over
# a 48 MiB cache takes 192 MiB of writes (1 MiB each, sequential cutoff off, so all through
# the cache) spread over 8 GiB: it grows cluster by cluster while the writers wait for
# the writeback and GC to free space (back-pressure, no error). Every write reads back, the
# qcow2 passes qemu-img check, and after a flush its file equals the image; a raw image grown
# by fio (random writes with verify past its end) does too.
# Timeout: 300
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd qemu-img qemu-io fio cmp

pc_shm 128M
MNT=$SCRATCH/mnt
DIR=$SCRATCH/images
mkdir -p "$DIR"
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=48M,keep_timeout=0,image_dir=$DIR"
qemu-img create -q -f qcow2 "$MNT/q.qcow2" 8G || fail "qemu-img create on the mount"
# qcow2 allocates clusters one after the other: a sequential stream, which would go around the
# cache past the cutoff; here every write goes through it
pc_ctl "$MNT" images/q.qcow2/sequential_cutoff 0 || fail "sequential_cutoff 0"

args=() reads=()
for i in $(seq 0 191); do
	off=$(((i * 2654435761 % 8191) * (1 << 20)))   # spread over 8 GiB, distinct MiBs
	p=$((i % 250 + 1))
	args+=(-c "write -P $p $off 1M")
	reads+=(-c "read -P $p $off 1M")
done
qemu-io -n -t none -f qcow2 "${args[@]}" -c flush "$MNT/q.qcow2" > "$SCRATCH/w.out" 2>&1 ||
	{ tail "$SCRATCH/w.out"; fail "qemu-io writes into a full cache"; }
grep -qi 'error\|fail' "$SCRATCH/w.out" && { grep -i 'error\|fail' "$SCRATCH/w.out" | head; fail "a write failed"; }
size=$(stat -c %s "$MNT/q.qcow2")
[ "$size" -gt $((192 << 20)) ] || fail "the qcow2 is only $size bytes after 192 MiB of writes"
# 192 MiB through a 48 MiB cache: GC must have freed segments for the writes to go on
jq -e '.cache.segs_freed > 0' "$MNT/.pcache/status.json" >/dev/null || fail "GC freed no segment"
qemu-io -n -t none -f qcow2 "${reads[@]}" "$MNT/q.qcow2" > "$SCRATCH/r.out" 2>&1 || fail "qemu-io reads"
grep -q 'Pattern verification failed' "$SCRATCH/r.out" && fail "a write grown into a full cache does not read back"
qemu-img check -q "$MNT/q.qcow2" || fail "qemu-img check after growth under a full cache"

# raw: fio random writes with verify on a file that grows from nothing
truncate -s 0 "$DIR/r.raw"
stat "$MNT/r.raw" >/dev/null || fail "r.raw made in the directory is not served"
pc_ctl "$MNT" images/r.raw/sequential_cutoff 0 || fail "sequential_cutoff 0 for r.raw"
fio --name=g --filename="$MNT/r.raw" --rw=randwrite --bs=64k --size=96M --direct=1 --ioengine=psync \
	--verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=1 > "$SCRATCH/fio.out" 2>&1 ||
	{ tail "$SCRATCH/fio.out"; fail "fio on a growing raw image over a full cache"; }
[ "$(stat -c %s "$MNT/r.raw")" = $((96 << 20)) ] || fail "r.raw is $(stat -c %s "$MNT/r.raw") bytes"

pc_ctl "$MNT" flush 1 || fail "flush"
cmp "$MNT/q.qcow2" "$DIR/q.qcow2" || fail "the qcow2 file differs from the image after flush"
cmp "$MNT/r.raw" "$DIR/r.raw" || fail "the raw file differs from the image after flush"
waits=$(jq -r '.cache.full_waits // 0' "$MNT/.pcache/status.json")
pc_umount "$MNT" || fail "umount"
qemu-img check -q "$DIR/q.qcow2" || fail "qemu-img check of the file"
note "qcow2 grew to $size bytes and a raw image to 96 MiB through a 48 MiB cache ($waits full waits)"
exit 0
