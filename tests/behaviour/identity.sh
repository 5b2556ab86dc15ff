#!/bin/bash
# Description: a known image never silently follows its path to other data. Another file of
# the same size under the known name is refused (dirty or clean) with one line naming the
# stored and the found identity, until a clean image is re-keyed on request; a loop device
# that comes back under another number is recognised through a renamed path; a new image shows
# its backing's mode (a 0600 image stays unreadable by others with allow_other); a cache
# device carrying an ext4, btrfs, LVM or GPT signature with its first 8 KiB zeroed is refused;
# a start with one of two known images missing serves the other and lists the missing one.
# Timeout: 300
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd losetup mkfs.ext4 md5sum setpriv jq

pc_shm 768M
MNT=$SCRATCH/mnt
mkdir -p "$MNT"
pc_image "$SCRATCH/a.raw" 32M 2
pc_image "$SCRATCH/b.raw" 32M 2
pc_cleanup_add pc_unmount_if "$MNT"
C="cache=$CACHE"

# 1. a different file of the same size under the known name, while the cache holds dirty data
pc_mount "$MNT" -o "$C,cache_size=256M" -o "image=a:$SCRATCH/a.raw"
pc_ctl "$MNT" writeback_rate 1 || fail "cannot slow writeback down"
head -c 4M /dev/urandom > "$SCRATCH/data"
dd if="$SCRATCH/data" of="$MNT/a" bs=64k oflag=direct conv=notrunc status=none || fail "write failed"
pc_umount "$MNT"
mv "$SCRATCH/a.raw" "$SCRATCH/a.orig"
cp "$SCRATCH/b.raw" "$SCRATCH/a.raw"
PC_SUMS_FILES=("$CACHE" "$SCRATCH/a.raw" "$SCRATCH/a.orig" "$SCRATCH/b.raw")
PC_SUMS=$(pc_sums)
pc_must_refuse "another file under the known name (dirty)" -o "$C" "$MNT"
grep -q "stored file .* found file .*dirty" "$SCRATCH/err" || fail "the refusal does not name both identities"
pc_must_refuse "another file named explicitly (dirty)" -o "$C" -o "image=a:$SCRATCH/a.raw" "$MNT"
# the offline writeback applies the same rule: nothing is written to the other file
"$PCACHECTL" writeback "$CACHE" >"$SCRATCH/wb.out" 2>&1 && { cat "$SCRATCH/wb.out"; fail "pcachectl writeback wrote to another file"; }
grep -q "is not the image's backing: stored file" "$SCRATCH/wb.out" || { cat "$SCRATCH/wb.out"; fail "pcachectl writeback does not name the identities"; }
[ "$(pc_sums)" = "$PC_SUMS" ] || fail "pcachectl writeback changed $(pc_sums_changed "$PC_SUMS")"
pc_must_refuse "rekey with dirty data" -o "$C" -o "image=a:$SCRATCH/a.raw,rekey=a" "$MNT"
grep -q "dirty" "$SCRATCH/err" || fail "the rekey refusal does not name the dirty data"

# the real file back: the dirty data is still there, then written back (clean)
mv "$SCRATCH/a.orig" "$SCRATCH/a.raw"
pc_mount "$MNT" -o "$C"
cmp -n $((4 << 20)) "$MNT/a" "$SCRATCH/data" || fail "the dirty data did not survive the refusals"
pc_ctl "$MNT" writeback_rate 0 && pc_ctl "$MNT" flush 1 || fail "flush failed"
pc_umount "$MNT"
cmp -n $((4 << 20)) "$SCRATCH/a.raw" "$SCRATCH/data" || fail "the backing does not hold the written data"

# 2. the same with a clean image: refused until asked, then re-keyed
mv "$SCRATCH/a.raw" "$SCRATCH/a.orig"
cp "$SCRATCH/b.raw" "$SCRATCH/a.raw"
PC_SUMS=$(pc_sums)
pc_must_refuse "another file under the known name (clean)" -o "$C" "$MNT"
grep -q "rekey" "$SCRATCH/err" || fail "the refusal does not say how to accept it"
pc_mount "$MNT" -o "$C" -o "image=a:$SCRATCH/a.raw,rekey=a"
[ "$(md5sum < "$MNT/a")" = "$(md5sum < "$SCRATCH/b.raw")" ] || fail "the re-keyed image does not read as its new backing"
pc_umount "$MNT"
rm -f "$SCRATCH/a.orig"

# 3. a block device that comes back under another number, reached through a renamed path
pc_image "$SCRATCH/d.raw" 32M 2
pc_image "$SCRATCH/e.raw" 32M 2
LD=$(losetup -f --show "$SCRATCH/d.raw") || fail "losetup"
ln -s "$LD" "$SCRATCH/disk-d"
pc_mount "$MNT" -o "$C" -o "image=d:$SCRATCH/disk-d"
pc_ctl "$MNT" writeback_rate 1
dd if="$SCRATCH/data" of="$MNT/d" bs=64k oflag=direct conv=notrunc status=none || fail "write to d failed"
pc_umount "$MNT"
losetup -d "$LD"
LX=$(losetup -f --show "$SCRATCH/e.raw") || fail "losetup"   # most likely d's old number
LD2=$(losetup -f --show "$SCRATCH/d.raw") || fail "losetup"
[ "$LD2" != "$LD" ] || fail "the loop device number did not change"
ln -sfn "$LX" "$SCRATCH/disk-d"   # the stored name now leads to e's loop device
PC_SUMS_FILES=("$CACHE" "$SCRATCH/d.raw" "$SCRATCH/e.raw")
PC_SUMS=$(pc_sums)
pc_must_refuse "the stored device name now leads to another disk" -o "$C" "$MNT"
grep -q "stored loop .* found loop" "$SCRATCH/err" || fail "the refusal does not name both identities"
ln -sfn "$LD2" "$SCRATCH/disk-d"

pc_mount "$MNT" -o "$C"
cmp -n $((4 << 20)) "$MNT/d" "$SCRATCH/data" || fail "image d lost its dirty data after the renumbering"
pc_ctl "$MNT" writeback_rate 0
pc_umount "$MNT"
losetup -d "$LX"
losetup -d "$LD2"

# 4. permissions: a 0600 backing stays 0600; allow_other does not open it to others
pc_image "$SCRATCH/p.raw" 32M 1
chmod 0600 "$SCRATCH/p.raw"
chown 0:6 "$SCRATCH/p.raw"
chmod 755 "$SCRATCH"
pc_mount "$MNT" -o "$C,allow_other" -o "image=p:$SCRATCH/p.raw"
[ "$(stat -c '%a %u %g' "$MNT/p")" = "600 0 6" ] || fail "image p shows $(stat -c '%a %u %g' "$MNT/p"), not 600 0 6"
setpriv --reuid=65534 --regid=65534 --clear-groups dd if="$MNT/p" of=/dev/null bs=4k count=1 status=none 2>/dev/null &&
	fail "an unprivileged user read a 0600 image"
dd if="$MNT/p" of=/dev/null bs=4k count=1 status=none || fail "root cannot read image p"
pc_umount "$MNT"

# 5. a start with one of two known images missing (its loop device was detached)
LD3=$(losetup -f --show "$SCRATCH/d.raw") || fail "losetup"
ln -sfn "$LD3" "$SCRATCH/disk-d"
pc_mount "$MNT" -o "$C"
pc_ctl "$MNT" writeback_rate 1
head -c 4M /dev/urandom > "$SCRATCH/data"
dd if="$SCRATCH/data" of="$MNT/d" bs=64k oflag=direct conv=notrunc status=none || fail "write to d failed"
pc_umount "$MNT"
losetup -d "$LD3"
pc_mount "$MNT" -o "$C"
ls "$MNT" | grep -qx p || fail "the other image did not come up"
ls "$MNT" | grep -qx d && fail "a missing image appeared"
grep -q "^image d $SCRATCH/disk-d missing dirty [1-9]" "$MNT/.pcache/status" || { cat "$MNT/.pcache/status"; fail "status does not list d as missing with dirty data"; }
[ "$(jq -r '.unattached[] | select(.name == "d") | .state' "$MNT/.pcache/status.json")" = missing ] ||
	fail "status.json does not list d as missing"
LD4=$(losetup -f --show "$SCRATCH/d.raw") || fail "losetup"
pc_ctl "$MNT" attach "d:$LD4" || fail "re-attaching d failed"
cmp -n $((4 << 20)) "$MNT/d" "$SCRATCH/data" || fail "image d lost its dirty data"
pc_ctl "$MNT" writeback_rate 0
pc_umount "$MNT"
losetup -d "$LD4"

# 6. cache devices that are not blank although their first 8 KiB are zero
sig_dev() { # NAME MAKE-COMMAND...
	local f=$SCRATCH/shm/sig-$1.img
	shift
	truncate -s 300M "$f"
	"$@" "$f" >/dev/null 2>&1 || { note "cannot make $f with $*"; return 1; }
	dd if=/dev/zero of="$f" bs=8k count=1 conv=notrunc status=none
	SIG=$f
}
lvm_pv() { # FILE: a PV in a VG whose metadata was rewritten a few times, not left in lvm's files
	local l cfg='devices { use_devicesfile=0 } backup { backup=0 archive=0 }' i
	l=$(losetup -f --show "$1") || return 1
	pvcreate -q --config "$cfg" "$l" && vgcreate -q --config "$cfg" pcachetestvg "$l" &&
		for i in 1 2 3 4 5 6; do vgchange -q --config "$cfg" --addtag "t$i" pcachetestvg || break; done
	i=$?
	vgchange -q --config "$cfg" -an pcachetestvg
	losetup -d "$l"
	return $i
}
gpt() { echo 'label: gpt' | sfdisk -q "$1"; }
checked=0
for kind in ext4 btrfs lvm gpt; do
	case $kind in
	ext4) sig_dev ext4 mkfs.ext4 -q -F || continue ;;
	btrfs) command -v mkfs.btrfs >/dev/null || { note "no mkfs.btrfs"; continue; }; sig_dev btrfs mkfs.btrfs -q || continue ;;
	lvm) command -v pvcreate >/dev/null || { note "no lvm2"; continue; }; sig_dev lvm lvm_pv || continue ;;
	gpt) command -v sfdisk >/dev/null || { note "no sfdisk"; continue; }; sig_dev gpt gpt || continue ;;
	esac
	PC_SUMS_FILES=("$SIG")
	PC_SUMS=$(pc_sums)
	pc_must_refuse "a cache device with a $kind signature and zeroed first 8 KiB" -o "cache=$SIG" "$MNT"
	grep -q "not blank" "$SCRATCH/err" || fail "$kind: the refusal does not say it is not blank"
	"$PCACHECTL" format "$SIG" >/dev/null 2>&1 && fail "$kind: pcachectl format overwrote it without --force"
	[ "$(pc_sums)" = "$PC_SUMS" ] || fail "$kind: pcachectl format changed the device"
	rm -f "$SIG"
	checked=$((checked + 1))
done
[ $checked -ge 2 ] || fail "only $checked signature kinds could be made"
note "$checked signature kinds refused"
exit 0
