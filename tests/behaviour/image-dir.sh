#!/bin/bash
# Description: -o image_dir=DIR serves a directory of image files. Every regular file of DIR is
# an image (a subdirectory is not); qemu-img create (raw and qcow2, with and without
# preallocation), qemu-img convert -O qcow2 into the mount, cp --sparse=always, rename (the
# cached data stays with the image, also across kill -9), rename over another image, unlink
# (the file goes, the image with it) work as on a plain directory, with DIR checked after each;
# mkdir is refused. Files made in DIR behind the daemon's back appear at lookup and listing; a
# file renamed in DIR while the daemon was down keeps its cached dirty data (matched by
# identity); a second name of an attached file (hard link) is refused. du follows the backing's
# allocation. More than 64 images (a 512-entry table) come back after a restart; an image
# attached with -o image is never unlinked through the mount.
# Timeout: 300
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd qemu-img qemu-io cmp truncate du

pc_shm 600M
MNT=$SCRATCH/mnt
DIR=$SCRATCH/images
mkdir -p "$DIR/sub"
pc_image "$DIR/a.raw" 4M 4
qemu-img create -q -f qcow2 "$DIR/b.qcow2" 1G || fail "qemu-img create"
pc_image "$SCRATCH/other.raw" 1M 1
pc_cleanup_add pc_unmount_if "$MNT"
CMD=(-o "cache=$CACHE,cache_size=512M,keep_timeout=0,image_dir=$DIR" -o "image=other:$SCRATCH/other.raw")
pc_mount "$MNT" "${CMD[@]}"
list() { ls "$1" | tr '\n' ' '; }
[ "$(list "$MNT")" = "a.raw b.qcow2 other " ] || fail "the mount lists '$(list "$MNT")'"
cmp "$MNT/a.raw" "$DIR/a.raw" || fail "a.raw reads other bytes than its file"
[ "$(jq -r '.images | length' < "$MNT/.pcache/status.json")" = 3 ] || fail "status.json does not count 3 images"

# create: qemu-img create raw and qcow2, with and without preallocation
QI=(qemu-img create -q)
"${QI[@]}" -f raw "$MNT/new.raw" 8M || fail "qemu-img create -f raw on the mount"
"${QI[@]}" -f raw -o preallocation=falloc "$MNT/pre.raw" 4M || fail "qemu-img create -f raw preallocation=falloc"
"${QI[@]}" -f qcow2 "$MNT/vm.qcow2" 2G || fail "qemu-img create -f qcow2 on the mount"
"${QI[@]}" -f qcow2 -o preallocation=metadata "$MNT/meta.qcow2" 64M || fail "qemu-img create -f qcow2 preallocation=metadata"
for f in new.raw pre.raw vm.qcow2 meta.qcow2; do
	[ -f "$DIR/$f" ] || fail "$f created on the mount is not in the directory"
	[ "$(stat -c %s "$MNT/$f")" = "$(stat -c %s "$DIR/$f")" ] || fail "$f: size differs between mount and directory"
done
[ "$(stat -c %s "$MNT/new.raw")" = $((8 << 20)) ] || fail "new.raw is not 8 MiB"
qemu-img check -q "$MNT/vm.qcow2" || fail "qemu-img check of a qcow2 created on the mount"
qemu-img check -q "$MNT/meta.qcow2" || fail "qemu-img check of a preallocated qcow2"
qemu-io -n -t none -f qcow2 -c "write -P 0x5a 0 1M" -c "write -P 0x6b 1G 1M" "$MNT/vm.qcow2" >/dev/null ||
	fail "qemu-io writes to the new qcow2"
touch "$MNT/empty" || fail "touch a new file"
[ -f "$DIR/empty" ] && [ "$(stat -c %s "$MNT/empty")" = 0 ] || fail "an empty file made on the mount"
mkdir "$MNT/d" 2>/dev/null && fail "mkdir on the mount succeeded"
[ -e "$DIR/d" ] && fail "mkdir on the mount made a directory"

# convert into the mount, cp --sparse=always, du follows the backing's allocation
qemu-img convert -O qcow2 -f raw "$MNT/a.raw" "$MNT/conv.qcow2" || fail "qemu-img convert -O qcow2 into the mount"
qemu-img compare -q -f raw -F qcow2 "$MNT/a.raw" "$MNT/conv.qcow2" || fail "the converted image differs"
truncate -s 64M "$SCRATCH/sparse.raw"
printf 'x' | dd of="$SCRATCH/sparse.raw" bs=1 seek=$((32 << 20)) conv=notrunc status=none
cp --sparse=always "$SCRATCH/sparse.raw" "$MNT/sparse.raw" || fail "cp --sparse=always into the mount"
cmp "$SCRATCH/sparse.raw" "$MNT/sparse.raw" || fail "the sparse copy differs"
pc_ctl "$MNT" flush 1 || fail "flush"
sleep 1.2   # the kernel keeps an image's attributes for 1 s
[ "$(stat -c %b "$MNT/sparse.raw")" = "$(stat -c %b "$DIR/sparse.raw")" ] ||
	fail "st_blocks $(stat -c %b "$MNT/sparse.raw") on the mount, $(stat -c %b "$DIR/sparse.raw") for the file"
[ "$(du -k "$MNT/sparse.raw" | cut -f1)" -lt 1024 ] || fail "du of a 64 MiB sparse image is $(du -k "$MNT/sparse.raw")"

# rename keeps the cached data (dirty too), across kill -9
head -c $((1 << 20)) /dev/urandom > "$SCRATCH/blk"
dd if="$SCRATCH/blk" of="$MNT/new.raw" bs=1M seek=2 conv=notrunc,fsync status=none || fail "write new.raw"
mv "$MNT/new.raw" "$MNT/renamed.raw" || fail "rename on the mount"
[ -e "$DIR/new.raw" ] && fail "the old name stays in the directory"
[ -f "$DIR/renamed.raw" ] || fail "the new name is not in the directory"
[ -e "$MNT/new.raw" ] && fail "the old name stays on the mount"
cmp -n $((1 << 20)) "$SCRATCH/blk" <(dd if="$MNT/renamed.raw" bs=1M skip=2 count=1 status=none) || fail "renamed.raw lost the data"
pc_kill9 "$MNT"
pc_mount "$MNT" "${CMD[@]}"
cmp -n $((1 << 20)) "$SCRATCH/blk" <(dd if="$MNT/renamed.raw" bs=1M skip=2 count=1 status=none) ||
	fail "renamed.raw lost the data across kill -9"
[ -e "$MNT/new.raw" ] && fail "the old name came back after kill -9"
# rename over another image replaces it
mv -f "$MNT/pre.raw" "$MNT/empty" || fail "rename over another image"
[ "$(stat -c %s "$MNT/empty")" = $((4 << 20)) ] && [ ! -e "$MNT/pre.raw" ] && [ ! -e "$DIR/pre.raw" ] ||
	fail "rename over another image did not replace it"
mv -n "$MNT/meta.qcow2" "$MNT/empty"
[ -e "$MNT/meta.qcow2" ] || fail "mv -n replaced an image"

# unlink removes the file and the image
rm "$MNT/vm.qcow2" || fail "rm on the mount"
[ -e "$DIR/vm.qcow2" ] && fail "rm left the file in the directory"
[ -e "$MNT/vm.qcow2" ] && fail "rm left the image on the mount"
rm "$MNT/other" 2>/dev/null && fail "an image attached with -o image was unlinked through the mount"
[ -f "$SCRATCH/other.raw" ] || fail "the -o image file is gone"

# behind the daemon's back: a new file appears at lookup and at listing; a hard link of an
# attached file is a second name for its data and is refused
pc_image "$DIR/late.raw" 1M 1
cmp "$MNT/late.raw" "$DIR/late.raw" || fail "a file made in the directory is not served at lookup"
pc_image "$DIR/later.raw" 1M 1
list "$MNT" | grep -qw later.raw || fail "a file made in the directory is not listed"
ln "$DIR/late.raw" "$DIR/hard.raw"
list "$MNT" | grep -qw hard.raw && fail "a hard link of an attached file was served as a second image"
rm "$DIR/hard.raw"

# a file renamed while the daemon was down keeps its cached dirty data (matched by identity)
head -c $((1 << 20)) /dev/urandom > "$SCRATCH/blk2"
dd if="$SCRATCH/blk2" of="$MNT/a.raw" bs=1M seek=1 conv=notrunc,fsync status=none || fail "write a.raw"
pc_kill9 "$MNT"
cmp -s -n $((1 << 20)) "$SCRATCH/blk2" <(dd if="$DIR/a.raw" bs=1M skip=1 count=1 status=none) &&
	note "(the writeback was quick: a.raw's data is on the file already)"
mv "$DIR/a.raw" "$DIR/moved.raw"
pc_mount "$MNT" "${CMD[@]}"
cmp -n $((1 << 20)) "$SCRATCH/blk2" <(dd if="$MNT/moved.raw" bs=1M skip=1 count=1 status=none) ||
	fail "a file renamed while the daemon was down lost its cached data"
[ -e "$MNT/a.raw" ] && fail "the old name of a file renamed behind the daemon's back is served"

# more than 64 images in one cache, back after a restart
for i in $(seq 1 70); do truncate -s 1M "$DIR/many$i.raw"; done
n=$(ls "$MNT" | grep -c '^many')
[ "$n" = 70 ] || fail "$n of 70 new files are served"
echo hello | dd of="$MNT/many70.raw" conv=notrunc,fsync status=none || fail "write many70.raw"
total=$(ls "$MNT" | wc -l)
pc_umount "$MNT" || fail "umount"
pc_mount "$MNT" "${CMD[@]}"
[ "$(ls "$MNT" | wc -l)" = "$total" ] || fail "$(ls "$MNT" | wc -l) images after a restart, $total before"
[ "$(jq -r '.images | length' < "$MNT/.pcache/status.json")" = $((total)) ] || fail "status.json does not count $total images"
[ "$(head -c 5 "$MNT/many70.raw")" = hello ] || fail "many70.raw lost its data"

# after a flush every file equals its image
pc_ctl "$MNT" flush 1 || fail "flush"
for f in "$DIR"/*; do
	[ -f "$f" ] || continue
	cmp "$f" "$MNT/$(basename "$f")" || fail "$(basename "$f"): the file differs from the image after flush"
done
pc_umount "$MNT" || fail "umount"
qemu-img check -q "$DIR/conv.qcow2" || fail "qemu-img check of the converted file"
note "$total images served from $DIR: create, convert, rename, unlink, behind-the-back files"
exit 0
