#!/bin/bash
# Description: QEMU's tools on the mount with cache=none (O_DIRECT): a qcow2 backing image
# (preallocation=metadata) written and read with qemu-io patterns, qemu-img check clean, after
# flush-all qemu-img compare finds the backing equal; qemu-img convert -n -t none of a raw image
# into a mounted raw image compares equal, through the mount and on the backing.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd qemu-img qemu-io cmp

pc_shm 768M
MNT=$SCRATCH/mnt
qemu-img create -q -f qcow2 -o preallocation=metadata "$SCRATCH/q.qcow2" 256M || fail "qemu-img create"
pc_image "$SCRATCH/src.raw" 64M 48
pc_image "$SCRATCH/dst.raw" 64M
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=640M" -o "image=q:$SCRATCH/q.qcow2" -o "image=dst:$SCRATCH/dst.raw"

QIO=(qemu-io -n -t none -f qcow2)
"${QIO[@]}" -c "write -P 0xab 0 1M" -c "write -P 0xcd 5M 64k" -c "write -P 0x11 100M 4k" \
	-c "write -P 0x22 200M 512" -c "write -z 8M 2M" -c "aio_write -P 0x33 50M 256k" -c "aio_flush" \
	"$MNT/q" > "$SCRATCH/qio.out" 2>&1 || { cat "$SCRATCH/qio.out"; fail "qemu-io writes failed"; }
grep -qi 'error\|fail' "$SCRATCH/qio.out" && { cat "$SCRATCH/qio.out"; fail "qemu-io reported an error"; }
check_patterns() {
	"${QIO[@]}" -c "read -P 0xab 0 1M" -c "read -P 0xcd 5M 64k" -c "read -P 0x11 100M 4k" \
		-c "read -P 0x22 200M 512" -c "read -P 0 8M 2M" -c "read -P 0x33 50M 256k" -c "read -P 0 150M 1M" \
		"$1" > "$SCRATCH/qio.out" 2>&1 || { cat "$SCRATCH/qio.out"; fail "qemu-io read failed on $1"; }
	grep -q 'Pattern verification failed' "$SCRATCH/qio.out" && { cat "$SCRATCH/qio.out"; fail "pattern mismatch on $1"; }
	return 0
}
check_patterns "$MNT/q"
qemu-img check -f qcow2 "$MNT/q" > "$SCRATCH/check.out" 2>&1 || { cat "$SCRATCH/check.out"; fail "qemu-img check is not clean through the mount"; }
grep -q 'No errors were found' "$SCRATCH/check.out" || { cat "$SCRATCH/check.out"; fail "qemu-img check output"; }

pc_ctl "$MNT" flush 1 || fail "flush-all"
qemu-img compare -q -f qcow2 -F qcow2 "$MNT/q" "$SCRATCH/q.qcow2" || fail "qemu-img compare: mount and backing differ"
cmp "$MNT/q" "$SCRATCH/q.qcow2" || fail "qcow2 bytes differ between mount and backing"

qemu-img convert -n -t none -T none -f raw -O raw "$SCRATCH/src.raw" "$MNT/dst" || fail "qemu-img convert into the mount"
qemu-img compare -q -f raw -F raw "$SCRATCH/src.raw" "$MNT/dst" || fail "converted image differs through the mount"

pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
check_patterns "$MNT/q"
cmp "$SCRATCH/src.raw" "$MNT/dst" || fail "converted image differs after remount"
pc_ctl "$MNT" flush 1 || fail "flush-all"
pc_umount "$MNT"
cmp "$SCRATCH/src.raw" "$SCRATCH/dst.raw" || fail "converted image differs on the backing after flush-all"
qemu-img check -q -f qcow2 "$SCRATCH/q.qcow2" || fail "backing qcow2 not clean"
check_patterns "$SCRATCH/q.qcow2"
exit 0
