#!/bin/bash
# Description: one backing, one owner. The same file under two names (hard link, symlink, at
# start and at run time), the cache device through a hard link or a loop device, an image file
# a second pcachefs already serves, a mounted block device, and a path inside the mount (also
# through a bind mount) are each refused with one line (exit 1, or EINVAL/EBUSY from the
# control file, never a hang), leaving the cache device and every backing byte-for-byte as they
# were.
# Timeout: 240
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd losetup mkfs.ext4 md5sum timeout

pc_shm 512M
MNT=$SCRATCH/mnt
MNT2=$SCRATCH/mnt2
mkdir -p "$MNT" "$MNT2" "$SCRATCH/ext" "$SCRATCH/bind"
pc_image "$SCRATCH/a.raw" 32M 1
pc_image "$SCRATCH/b.raw" 32M 1
pc_image "$SCRATCH/c.raw" 64M
pc_cleanup_add pc_unmount_if "$MNT"
pc_cleanup_add pc_unmount_if "$MNT2"
pc_cleanup_add umount "$SCRATCH/bind"
pc_cleanup_add umount "$SCRATCH/ext"

# a formatted cache that knows image a
pc_mount "$MNT" -o "cache=$CACHE,cache_size=256M" -o "image=a:$SCRATCH/a.raw"
pc_umount "$MNT"
ln "$SCRATCH/a.raw" "$SCRATCH/a-hard"
ln -s "$SCRATCH/a.raw" "$SCRATCH/a-sym"
PC_SUMS_FILES=("$CACHE" "$SCRATCH/a.raw" "$SCRATCH/b.raw")
PC_SUMS=$(pc_sums)
C="cache=$CACHE"

# 1. two names over one file, at start
pc_must_refuse "a hard link of a known image" -o "$C" -o "image=x:$SCRATCH/a-hard" "$MNT"
grep -q "same data as image a" "$SCRATCH/err" || fail "the refusal does not name image a"
pc_must_refuse "a symlink to a known image" -o "$C" -o "image=x:$SCRATCH/a-sym" "$MNT"
pc_must_refuse "one file named twice" -o "$C" -o "image=x:$SCRATCH/b.raw" -o "image=y:$SCRATCH/b.raw" "$MNT"

# 2. the cache device as an image: through a hard link, through a loop device over it
ln "$CACHE" "$SCRATCH/shm/cache-hard"
pc_must_refuse "the cache device through a hard link" -o "$C" -o "image=x:$SCRATCH/shm/cache-hard" "$MNT"
grep -q "is the cache device" "$SCRATCH/err" || fail "the refusal does not say it is the cache device"
LOOPC=$(losetup -f --show "$CACHE") || fail "losetup over the cache file"
pc_cleanup_add losetup -d "$LOOPC"
pc_must_refuse "the cache device through a loop device" -o "$C" -o "image=x:$LOOPC" "$MNT"
grep -q "is the cache device" "$SCRATCH/err" || fail "the loop refusal does not say it is the cache device"
losetup -d "$LOOPC"

# 3. a mounted block device
LOOPE=$(losetup -f --show "$SCRATCH/c.raw") || fail "losetup"
pc_cleanup_add losetup -d "$LOOPE"
mkfs.ext4 -q "$LOOPE" || fail "mkfs.ext4"
mount "$LOOPE" "$SCRATCH/ext" || fail "mount ext4"
PC_SUMS_FILES+=("$SCRATCH/c.raw")
PC_SUMS=$(pc_sums)
pc_must_refuse "a mounted block device" -o "$C" -o "image=x:$LOOPE" "$MNT"
grep -q "busy: mounted on $SCRATCH/ext" "$SCRATCH/err" || fail "the refusal does not name the mount"
umount "$SCRATCH/ext"
PC_SUMS=$(pc_sums)   # the unmount wrote the ext4 superblock

# 4. a path inside the mount point, at start
pc_must_refuse "a path inside the mount point" -o "$C" -o "image=x:$MNT/a" "$MNT"
grep -q "inside the mount point" "$SCRATCH/err" || fail "the refusal does not say why"

# run time: the daemon serves a
pc_mount "$MNT" -o "$C"
sum_a=$(md5sum < "$MNT/a")
ctl_refused() { # DESCRIPTION VALUE [FILE]: the control write fails (not by timeout), nothing attached
	local d=$1 v=$2 f=${3:-attach} rc
	timeout 20 bash -c "printf '%s\n' '$v' > '$MNT/.pcache/$f'" 2>"$SCRATCH/ctl.err"
	rc=$?
	[ $rc -ne 124 ] || fail "$d: the control write hung"
	[ $rc -ne 0 ] || fail "$d: the control write succeeded"
	grep -qE "Invalid argument|Device or resource busy" "$SCRATCH/ctl.err" ||
		{ cat "$SCRATCH/ctl.err"; tail -3 "$SCRATCH/pcachefs.mnt.log"; fail "$d: not EINVAL/EBUSY"; }
	[ "$(ls "$MNT")" = "a" ] || fail "$d: the image list changed: $(ls "$MNT")"
	note "refused at run time ($d): $(cat "$SCRATCH/ctl.err")"
}
ctl_refused "a hard link of an attached image" "x:$SCRATCH/a-hard"
ctl_refused "a symlink to an attached image" "x:$SCRATCH/a-sym"
ctl_refused "the cache device" "x:$SCRATCH/shm/cache-hard"
ctl_refused "a file inside the mount" "x:$MNT/a"
mount --bind "$MNT" "$SCRATCH/bind" || fail "bind mount"
ctl_refused "a file of the mount through a bind mount" "x:$SCRATCH/bind/a"
umount "$SCRATCH/bind"
ctl_refused "a file inside the mount, by rekey" "a:$MNT/a" rekey
grep -q "is inside this" "$SCRATCH/pcachefs.mnt.log" || fail "no log line for the in-mount refusal"

# 5. a second pcachefs (another cache) on the image file this one serves
"$PCACHEFS" -o "cache=$SCRATCH/shm/cache2.img,cache_size=192M" -o "image=a:$SCRATCH/a.raw" "$MNT2" \
	>"$SCRATCH/out" 2>"$SCRATCH/err" </dev/null
rc=$?
[ $rc -eq 1 ] || { cat "$SCRATCH/err"; fail "second pcachefs on a served image: exit $rc"; }
grep -q "in use: locked by pid $PC_PID (pcachefs)" "$SCRATCH/err" ||
	{ cat "$SCRATCH/err"; fail "the refusal does not name the serving pcachefs"; }
note "refused (image served by another pcachefs): $(cat "$SCRATCH/err")"
mountpoint -q "$MNT2" && fail "a second mount appeared"
[ -e "$SCRATCH/shm/cache2.img" ] && fail "the refused start left its new cache file behind"
# the first mount still serves a, and another file still attaches
[ "$(md5sum < "$MNT/a")" = "$sum_a" ] || fail "image a changed"
pc_ctl "$MNT" attach "b:$SCRATCH/b.raw" || fail "attaching a distinct file failed"
[ "$(md5sum < "$MNT/b")" = "$(md5sum < "$SCRATCH/b.raw")" ] || fail "image b does not read as its backing"
pc_umount "$MNT"
exit 0
