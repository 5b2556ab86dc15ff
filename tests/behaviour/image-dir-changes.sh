#!/bin/bash
# Description: an image directory that changes while it is served. Unlink of an open image and
# rename over an open image work as on a plain directory: the name goes at once (mount and
# DIR), the open file keeps reading and writing its data, a new file of that name is another
# image, and the last close drops the image (its cached data with it); a kill -9 while such an
# image is open leaves a record that the next start drops. Files removed, renamed and replaced
# in DIR behind the running daemon's back are followed at the next listing or lookup: a renamed
# file keeps its cached dirty data under its new name, a removed file's image goes, a replaced
# file is served with its new bytes, a file moved out of DIR is written back and detached. A
# second pcachefs on the same directory serves none of the files the first holds; a file whose
# name cannot be an image's (over 127 bytes) is left out with one log line, a name with a space
# is served; chmod and chown on the mount apply to the file in DIR too; touch -d sets an
# image's mtime and a write moves mtime and ctime to now.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd cmp jq

pc_shm 192M
MNT=$SCRATCH/mnt
DIR=$SCRATCH/images
mkdir -p "$DIR" "$SCRATCH/out"
for f in a b c d e; do pc_image "$DIR/$f.raw" 4M 1; done
pc_cleanup_add pc_unmount_if "$MNT"
CMD=(-o "cache=$CACHE,cache_size=128M,keep_timeout=0,image_dir=$DIR")
pc_mount "$MNT" "${CMD[@]}"
images() { jq -r '[.images[].name] | sort | join(" ")' < "$MNT/.pcache/status.json"; }
records() { jq -r '[.unattached[]?.name] | sort | join(" ")' < "$MNT/.pcache/status.json"; }
list() { ls "$1" | tr '\n' ' '; }
head -c $((1 << 20)) /dev/urandom > "$SCRATCH/blk"
head -c $((1 << 20)) /dev/urandom > "$SCRATCH/blk2"

# ---- unlink of an open image
exec 3<>"$MNT/a.raw"
dd if="$SCRATCH/blk" of="$MNT/a.raw" bs=1M seek=1 conv=notrunc status=none || fail "write a.raw"
rm "$MNT/a.raw" || fail "rm of an open image failed"
[ -e "$MNT/a.raw" ] && fail "the name of an open image stays on the mount after rm"
[ -e "$DIR/a.raw" ] && fail "the file of an open image stays in the directory after rm"
list "$MNT" | grep -q 'a\.raw\|deleted' && fail "the mount lists '$(list "$MNT")' after rm"
# the open file still reads what was written, and takes writes
cmp -n $((1 << 20)) "$SCRATCH/blk" <(dd if=/proc/self/fd/3 bs=1M skip=1 count=1 status=none) ||
	fail "the open file of a removed image lost its data"
dd if="$SCRATCH/blk2" of=/proc/self/fd/3 bs=1M seek=2 conv=notrunc,fsync status=none ||
	fail "write to the open file of a removed image"
# the name is free: a new file of it is another image
echo fresh > "$MNT/a.raw" || fail "create a.raw again while the removed one is open"
[ -f "$DIR/a.raw" ] && [ "$(cat "$MNT/a.raw")" = fresh ] || fail "the new a.raw"
cmp -n $((1 << 20)) "$SCRATCH/blk2" <(dd if=/proc/self/fd/3 bs=1M skip=2 count=1 status=none) ||
	fail "the removed image's open file reads other data once a new file has its name"
n=$(jq '.images | length' < "$MNT/.pcache/status.json")
[ "$n" = 6 ] || fail "$n images while a removed one is open (5 files + the removed one expected)"
exec 3>&-
for i in $(seq 50); do [ "$(jq '.images | length' < "$MNT/.pcache/status.json")" = 5 ] && break; sleep 0.1; done
[ "$(images)" = "a.raw b.raw c.raw d.raw e.raw" ] || fail "after the last close the images are '$(images)'"
[ -z "$(records)" ] || fail "records left after the last close: $(records)"

# ---- rename over an open image: the replaced one lives on in its open file
exec 3<"$MNT/c.raw"
dd if="$SCRATCH/blk" of="$MNT/b.raw" bs=1M seek=1 conv=notrunc status=none || fail "write b.raw"
cp "$DIR/c.raw" "$SCRATCH/c.orig"
mv "$MNT/b.raw" "$MNT/c.raw" || fail "rename over an open image failed"
[ -e "$MNT/b.raw" ] || [ -e "$DIR/b.raw" ] && fail "the old name stays after the rename"
cmp -n $((1 << 20)) "$SCRATCH/blk" <(dd if="$MNT/c.raw" bs=1M skip=1 count=1 status=none) ||
	fail "c.raw is not the renamed image"
cmp "$SCRATCH/c.orig" /proc/self/fd/3 || fail "the open file of the replaced image changed"
exec 3<&-
for i in $(seq 50); do [ "$(jq '.images | length' < "$MNT/.pcache/status.json")" = 4 ] && break; sleep 0.1; done
[ "$(images)" = "a.raw c.raw d.raw e.raw" ] || fail "after the rename over an open image: '$(images)'"

# ---- kill -9 while a removed image is open: the next start drops its record
exec 3<>"$MNT/d.raw"
dd if="$SCRATCH/blk" of=/proc/self/fd/3 bs=1M conv=notrunc,fsync status=none || fail "write d.raw"
rm "$MNT/d.raw" || fail "rm d.raw"
pc_kill9 "$MNT"
exec 3>&-
pc_mount "$MNT" "${CMD[@]}"
[ "$(images)" = "a.raw c.raw e.raw" ] || fail "after kill -9 and a start the images are '$(images)'"
[ -z "$(records)" ] || fail "the removed image's record survived the start: $(records)"
grep -q "removed while open, before a crash" "$SCRATCH"/pcachefs.mnt.log ||
	fail "the start did not say it dropped the removed image"

# ---- behind the daemon's back, while it runs
dd if="$SCRATCH/blk2" of="$MNT/c.raw" bs=1M seek=3 conv=notrunc status=none || fail "write c.raw"
mv "$DIR/c.raw" "$DIR/renamed.raw"                        # renamed: the cached data follows
rm "$DIR/e.raw"                                           # removed: the image goes
echo replaced > "$SCRATCH/new.raw"; mv "$SCRATCH/new.raw" "$DIR/a.raw"   # replaced
pc_image "$SCRATCH/out/x.raw" 4M 1; mv "$SCRATCH/out/x.raw" "$DIR/x.raw"
cat "$MNT/x.raw" > /dev/null
dd if="$SCRATCH/blk" of="$MNT/x.raw" bs=1M seek=2 conv=notrunc status=none || fail "write x.raw"
mv "$DIR/x.raw" "$SCRATCH/out/x.raw"                      # moved out: written back, detached
[ "$(list "$MNT")" = "a.raw renamed.raw " ] || fail "after changes behind the daemon's back the mount lists '$(list "$MNT")'"
[ "$(images)" = "a.raw renamed.raw" ] || fail "after changes behind the daemon's back the images are '$(images)'"
[ "$(cat "$MNT/a.raw")" = replaced ] || fail "a replaced file is served with its old bytes"
cmp -n $((1 << 20)) "$SCRATCH/blk2" <(dd if="$MNT/renamed.raw" bs=1M skip=3 count=1 status=none) ||
	fail "a file renamed behind the daemon's back lost its cached data"
cmp -n $((1 << 20)) "$SCRATCH/blk" <(dd if="$SCRATCH/out/x.raw" bs=1M skip=2 count=1 status=none) ||
	fail "a file moved out of the directory was not written back"
# a file whose name cannot be an image's is left out with one log line
LONG=$(printf 'x%.0s' $(seq 130)).raw
truncate -s 1M "$DIR/$LONG" "$DIR/my disk.raw"
ls "$MNT" > /dev/null; ls "$MNT" > /dev/null
[ -e "$MNT/$LONG" ] && fail "a file with a 134-byte name is served"
[ "$(grep -c "$LONG not served: image names are" "$SCRATCH/pcachefs.mnt.log")" = 1 ] ||
	fail "the file with a long name was not logged once"
[ -f "$MNT/my disk.raw" ] || fail "a file with a space in its name is not served"
rm "$DIR/$LONG" "$MNT/my disk.raw"
# a lookup alone notices a replaced file (no listing in between)
echo second > "$SCRATCH/new.raw"; mv "$SCRATCH/new.raw" "$DIR/a.raw"
sleep 1.2   # the kernel keeps a name for 1 s
[ "$(cat "$MNT/a.raw")" = second ] || fail "a lookup serves a replaced file's old bytes"
# times: touch -d sets mtime, a write moves mtime and ctime to now (backup tools compare them)
touch -m -d "2020-01-02 03:04:05" "$MNT/renamed.raw" || fail "touch -d on the mount"
[ "$(stat -c %Y "$MNT/renamed.raw")" = "$(date -d "2020-01-02 03:04:05" +%s)" ] ||
	fail "touch -d left mtime at $(stat -c %y "$MNT/renamed.raw")"
t0=$(date +%s)
dd if=/dev/zero of="$MNT/renamed.raw" bs=4k count=1 conv=notrunc status=none || fail "write renamed.raw"
sleep 1.2   # the kernel keeps an image's attributes for 1 s
[ "$(stat -c %Y "$MNT/renamed.raw")" -ge "$t0" ] && [ "$(stat -c %Z "$MNT/renamed.raw")" -ge "$t0" ] ||
	fail "a write left mtime/ctime at $(stat -c '%y / %z' "$MNT/renamed.raw")"
# chmod and chown on the mount apply to the file in DIR too
chmod 0600 "$MNT/renamed.raw" && chown 1234:4321 "$MNT/renamed.raw" || fail "chmod/chown on the mount"
[ "$(stat -c '%a %u %g' "$DIR/renamed.raw")" = "600 1234 4321" ] ||
	fail "chmod/chown on the mount left the file at $(stat -c '%a %u %g' "$DIR/renamed.raw")"
[ "$(stat -c '%a %u %g' "$MNT/renamed.raw")" = "600 1234 4321" ] ||
	fail "the mount shows $(stat -c '%a %u %g' "$MNT/renamed.raw") after chmod/chown"
pc_ctl "$MNT" flush 1 || fail "flush"
cmp "$DIR/renamed.raw" "$MNT/renamed.raw" || fail "renamed.raw: the file differs from the image after flush"

# ---- one owner: a second pcachefs on the same directory serves none of the held files
FIRST=$PC_PID
MNT2=$SCRATCH/mnt2
pc_cleanup_add pc_unmount_if "$MNT2"
pc_mount "$MNT2" -o "cache=$SCRATCH/shm/cache2.img,cache_size=48M,keep_timeout=0,image_dir=$DIR"
[ -z "$(list "$MNT2")" ] || fail "a second pcachefs serves '$(list "$MNT2")' of a directory the first holds"
grep -q "not served" "$SCRATCH/pcachefs.mnt2.log" || fail "the second pcachefs did not log the held files"
pc_umount "$MNT2" || fail "umount the second mount"
PC_PID=$FIRST
pc_umount "$MNT" || fail "umount"
note "unlink and rename over open images; kill -9 with a removed open image; rename, removal, replacement and move-out behind the daemon's back"
exit 0
