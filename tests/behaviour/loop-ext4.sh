#!/bin/bash
# Description: a loop device on an image file in the mount carries ext4: mkfs, mount, a tree of
# files written, unmount, e2fsck -fn clean; after pcachefs is unmounted and mounted again the
# file checksums are equal; after flush-all the backing file alone is a clean ext4 with the same
# files.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd losetup mkfs.ext4 e2fsck sha256sum

pc_shm 768M
MNT=$SCRATCH/mnt
EXT=$SCRATCH/ext
mkdir -p "$EXT"
pc_image "$SCRATCH/fs.raw" 256M
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=640M" -o "image=fs:$SCRATCH/fs.raw"

LOOP=
loop_attach() {
	LOOP=$(losetup --direct-io=on -f --show "$1" 2>/dev/null) || LOOP=$(losetup -f --show "$1") \
		|| fail "losetup $1 failed"
}
loop_detach() { [ -n "$LOOP" ] && losetup -d "$LOOP"; LOOP=; }
pc_cleanup_add 'umount "$EXT"; loop_detach'

loop_attach "$MNT/fs"
note "loop device $LOOP (direct-io: $(cat /sys/block/"$(basename "$LOOP")"/loop/dio 2>/dev/null))"
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 on the loop device failed"
mount "$LOOP" "$EXT" || fail "mount ext4 failed"
# a tree of files: many small, some large, nested directories, a few hard links and symlinks
for d in $(seq 1 20); do
	mkdir -p "$EXT/d$d/sub"
	for f in $(seq 1 20); do
		head -c $(( (d * 7919 + f * 104729) % 70000 + 1 )) /dev/urandom > "$EXT/d$d/f$f"
	done
	head -c $((d * 300000)) /dev/urandom > "$EXT/d$d/sub/big"
	ln "$EXT/d$d/f1" "$EXT/d$d/hard"
	ln -s "f2" "$EXT/d$d/soft"
done
cp -a /usr/include/linux "$EXT/include" 2>/dev/null || true
(cd "$EXT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$SCRATCH/sums"
nfiles=$(wc -l < "$SCRATCH/sums")
umount "$EXT" || fail "umount ext4 failed"
loop_detach
e2fsck -fn "$MNT/fs" > "$SCRATCH/fsck.out" 2>&1 || { cat "$SCRATCH/fsck.out"; fail "e2fsck -fn through the mount is not clean"; }
note "ext4 with $nfiles files written and clean"

pc_umount "$MNT"
pc_mount "$MNT" -o "cache=$CACHE"
loop_attach "$MNT/fs"
mount -o ro "$LOOP" "$EXT" || fail "mount ext4 after the remount failed"
(cd "$EXT" && sha256sum --quiet -c "$SCRATCH/sums") || fail "file checksums differ after unmount/remount of pcachefs"
umount "$EXT"
loop_detach

pc_ctl "$MNT" flush 1 || fail "flush-all"
pc_umount "$MNT"
e2fsck -fn "$SCRATCH/fs.raw" > "$SCRATCH/fsck2.out" 2>&1 || { cat "$SCRATCH/fsck2.out"; fail "the backing file is not a clean ext4 after flush-all"; }
loop_attach "$SCRATCH/fs.raw"
mount -o ro "$LOOP" "$EXT" || fail "mount the backing ext4 failed"
(cd "$EXT" && sha256sum --quiet -c "$SCRATCH/sums") || fail "the backing's files differ after flush-all"
umount "$EXT"
loop_detach
exit 0
