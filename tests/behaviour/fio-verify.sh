#!/bin/bash
# Description: fio with crc32c verify on two images at once (512 B to 1 MiB blocks, random and
# sequential, 4 jobs, psync and libaio), then flush-all through .pcache/flush: the image files in
# the mount equal the backing files, and still do after a remount. Then the same with the images
# in writethrough / writearound mode: the backing is equal without a flush.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd fio cmp

pc_shm 768M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/a.raw" 128M 8
pc_image "$SCRATCH/b.raw" 128M 8
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=640M" -o "image=a:$SCRATCH/a.raw" -o "image=b:$SCRATCH/b.raw"
[ -f "$MNT/a" ] && [ -f "$MNT/b" ] || fail "images not listed"
cmp "$MNT/a" "$SCRATCH/a.raw" || fail "image a differs from its backing before any write"

# One fio run per block size; 2 jobs per image (4 jobs), each job on its own 16-32 MiB region.
run_fio() {
	local bs=$1 rw=$2 engine=$3 size=$4 depth=${5:-1}
	fio --output-format=terse --minimal --direct=1 --ioengine="$engine" --iodepth="$depth" \
		--bs="$bs" --rw="$rw" --size="$size" --numjobs=2 --offset_increment="$size" \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 --group_reporting \
		--name=a --filename="$MNT/a" --name=b --filename="$MNT/b" >"$SCRATCH/fio.out" 2>&1 \
		|| { cat "$SCRATCH/fio.out"; fail "fio verify failed: bs=$bs rw=$rw engine=$engine"; }
	note "fio bs=$bs rw=$rw engine=$engine depth=$depth: verified"
}

run_fio 512 randwrite psync 4M
run_fio 4k randwrite psync 16M
run_fio 4k write libaio 16M 16
run_fio 64k randwrite libaio 32M 8
run_fio 1m write psync 32M
run_fio 1m randwrite libaio 32M 4
# overwrite what the earlier runs left, across the 512 B..1 MiB mix, random and sequential
run_fio 512 write psync 2M
run_fio 64k write psync 32M
run_fio 4k randwrite libaio 16M 16

pc_ctl "$MNT" flush 1 || fail "write to .pcache/flush failed"
cmp "$MNT/a" "$SCRATCH/a.raw" || fail "image a: mount and backing differ after flush-all"
cmp "$MNT/b" "$SCRATCH/b.raw" || fail "image b: mount and backing differ after flush-all"

# write-through and write-around: the backing is up to date as soon as the writes return
pc_ctl "$MNT" images/a/cache_mode writethrough || fail "set writethrough"
pc_ctl "$MNT" images/b/cache_mode writearound || fail "set writearound"
[ "$(cat "$MNT/.pcache/images/a/cache_mode")" = writethrough ] || fail "cache_mode of a: $(cat "$MNT/.pcache/images/a/cache_mode")"
run_fio 4k randwrite psync 8M
run_fio 64k write libaio 8M 8
cmp "$MNT/a" "$SCRATCH/a.raw" || fail "writethrough image a: backing behind the mount without a flush"
cmp "$MNT/b" "$SCRATCH/b.raw" || fail "writearound image b: backing behind the mount without a flush"

sum_a=$(md5sum < "$MNT/a")
pc_umount "$MNT"
[ "$(md5sum < "$SCRATCH/a.raw")" = "$sum_a" ] || fail "backing of a changed at unmount"
pc_mount "$MNT" -o "cache=$CACHE"
[ -f "$MNT/b" ] || fail "image b did not come back on remount with only -o cache"
[ "$(md5sum < "$MNT/a")" = "$sum_a" ] || fail "image a reads differently after remount"
cmp "$MNT/b" "$SCRATCH/b.raw" || fail "image b differs from its backing after remount"
pc_umount "$MNT"
exit 0
