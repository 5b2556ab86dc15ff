#!/bin/bash
# Description: the command-line forms mount.fuse3 and /etc/fstab use work: `mount.fuse3 none MNT
# -t pcachefs -o cache=...,image=...` (with fstab-only options such as noauto, nofail, _netdev,
# defaults), the cache device given as the fstab source, `pcachefs none MNT -o ...`; the mount
# shows up as fuse.pcachefs; -o kernel_cache allows a shared writable mmap of an image file.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd mount.fuse3 findmnt

pc_shm 512M
MNT=$SCRATCH/mnt
mkdir -p "$MNT"
pc_image "$SCRATCH/f.raw" 16M 1
pc_cleanup_add pc_unmount_if "$MNT"
export PATH="$PCACHE_BUILD:$PATH"   # mount.fuse3 runs "pcachefs" through the shell

wait_released() {
	local n=0
	while ! flock -n "$CACHE" true 2>/dev/null; do
		n=$((n + 1)); [ $n -gt 300 ] && fail "the daemon did not release the cache after unmount"; sleep 0.1
	done
}
check_mount() {
	[ "$(findmnt -n -o FSTYPE "$MNT")" = fuse.pcachefs ] || fail "$1: fstype is $(findmnt -n -o FSTYPE "$MNT")"
	[ -f "$MNT/f" ] || fail "$1: image f missing"
	cmp "$MNT/f" "$SCRATCH/f.raw" || fail "$1: image f does not read as its backing"
	umount "$MNT" || fail "$1: umount"
	wait_released
	note "$1: ok"
}

mount.fuse3 none "$MNT" -t pcachefs \
	-o "cache=$CACHE,cache_size=384M,image=f:$SCRATCH/f.raw,noauto,nofail,_netdev,defaults,rw" \
	|| fail "mount.fuse3 with fstab options failed"
check_mount "mount.fuse3, source none"
mount.fuse3 "$CACHE" "$MNT" -t pcachefs -o rw,nodev,nosuid || fail "mount.fuse3 with the cache as source failed"
check_mount "mount.fuse3, cache device as source"
pcachefs none "$MNT" -o "cache=$CACHE" || fail "pcachefs none MNT -o ... failed"
check_mount "pcachefs none MNT"
pcachefs "$MNT" -o "cache=$CACHE" || fail "pcachefs MNT -o ... failed"
check_mount "pcachefs MNT -o"

# kernel_cache: the page cache is used, so a shared writable mmap works
pcachefs -o "cache=$CACHE,kernel_cache" "$MNT" || fail "kernel_cache mount failed"
if command -v python3 >/dev/null 2>&1; then
	python3 - "$MNT/f" <<'PY' || fail "shared mmap of an image with kernel_cache failed"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[4096:4096 + 11] = b"hello mmap!"
m.flush()
m.close()
os.fsync(fd)
os.close(fd)
PY
	[ "$(dd if="$MNT/f" bs=1 skip=4096 count=11 status=none)" = "hello mmap!" ] || fail "mmap write not visible"
fi
umount "$MNT" || fail "umount"
wait_released
pcachefs -o "cache=$CACHE" "$MNT" || fail "remount"
[ "$(dd if="$MNT/f" bs=1 skip=4096 count=11 iflag=direct status=none 2>/dev/null || dd if="$MNT/f" bs=1 skip=4096 count=11 status=none)" = "hello mmap!" ] \
	|| fail "mmap write lost after remount"
umount "$MNT"
wait_released
exit 0
