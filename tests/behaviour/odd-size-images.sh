#!/bin/bash
# Description: image files whose size is not a multiple of 512 are served with their exact
# size: a fresh qcow2 (qemu-img create without preallocation), a 1000-byte file cut short and
# one of 1 MiB + 300 bytes. Their bytes read back (also with O_DIRECT across the end), qemu-img
# info and check read the qcow2 through the mount, bytes written into the last partial sector
# (writeback) survive kill -9 once fsynced and reach the backing at flush, and every backing
# file keeps its size (the engine's whole last sector never lands past the end).
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd qemu-img qemu-io cmp

pc_shm 256M
MNT=$SCRATCH/mnt
qemu-img create -q -f qcow2 "$SCRATCH/q.qcow2" 10G || fail "qemu-img create"
head -c 1000 /dev/urandom > "$SCRATCH/short.iso"
head -c $(((1 << 20) + 300)) /dev/urandom > "$SCRATCH/odd.raw"
QSIZE=$(stat -c %s "$SCRATCH/q.qcow2")
[ $((QSIZE % 512)) -ne 0 ] || note "qemu-img made a qcow2 of $QSIZE bytes (a sector multiple this time)"
for f in q.qcow2 short.iso odd.raw; do cp "$SCRATCH/$f" "$SCRATCH/$f.orig"; done
pc_cleanup_add pc_unmount_if "$MNT"

CMD=(-o "cache=$CACHE,cache_size=128M,keep_timeout=0,cache_mode=writeback" -o "image=q:$SCRATCH/q.qcow2"
     -o "image=short:$SCRATCH/short.iso" -o "image=odd:$SCRATCH/odd.raw")
pc_mount "$MNT" "${CMD[@]}"

# exact sizes, exact bytes
for pair in q:q.qcow2 short:short.iso odd:odd.raw; do
	img=${pair%%:*} f=${pair#*:}
	[ "$(stat -c %s "$MNT/$img")" = "$(stat -c %s "$SCRATCH/$f")" ] ||
		fail "$img: size $(stat -c %s "$MNT/$img") on the mount, $(stat -c %s "$SCRATCH/$f") on the backing"
	cmp "$MNT/$img" "$SCRATCH/$f" || fail "$img reads other bytes than its backing"
done
# st_blocks is what the backing occupies (du), not the size
[ "$(stat -c %b "$MNT/short")" = "$(stat -c %b "$SCRATCH/short.iso")" ] ||
	fail "st_blocks of the 1000-byte image is $(stat -c %b "$MNT/short"), its file's $(stat -c %b "$SCRATCH/short.iso")"
# O_DIRECT reads of whole sectors across the end stop at the end
got=$(dd if="$MNT/short" bs=1024 count=1 iflag=direct status=none | wc -c)
[ "$got" = 1000 ] || fail "an O_DIRECT read of 1 KiB at 0 of a 1000-byte image returned $got bytes"
got=$(dd if="$MNT/odd" bs=4096 skip=256 count=1 iflag=direct status=none | wc -c)
[ "$got" = 300 ] || fail "an O_DIRECT read of the last 4 KiB block returned $got bytes, not 300"

# QEMU reads the fresh qcow2 through the mount
qemu-img info -f qcow2 "$MNT/q" > "$SCRATCH/info.out" 2>&1 || { cat "$SCRATCH/info.out"; fail "qemu-img info through the mount"; }
grep -q "virtual size: 10 GiB" "$SCRATCH/info.out" || { cat "$SCRATCH/info.out"; fail "qemu-img info: wrong virtual size"; }
qemu-img check -f qcow2 "$MNT/q" > "$SCRATCH/check.out" 2>&1 || { cat "$SCRATCH/check.out"; fail "qemu-img check through the mount"; }
qemu-io -n -t none -f qcow2 -c "read -P 0 0 1M" "$MNT/q" > "$SCRATCH/qio.out" 2>&1 ||
	{ cat "$SCRATCH/qio.out"; fail "qemu-io read of the fresh qcow2"; }
grep -q 'Pattern verification failed' "$SCRATCH/qio.out" && fail "a fresh qcow2 reads non-zero data"

# bytes written into the last partial sector (read-modify-write of the engine's whole sector)
head -c 10 /dev/urandom > "$SCRATCH/tail10"
dd if="$SCRATCH/tail10" of="$MNT/short" bs=1 seek=990 conv=notrunc,fsync status=none || fail "write into the last sector"
dd if="$SCRATCH/tail10" of="$SCRATCH/short.iso.orig" bs=1 seek=990 conv=notrunc status=none
head -c 4096 /dev/urandom > "$SCRATCH/tail4k"
dd if="$SCRATCH/tail4k" of="$MNT/odd" bs=4096 seek=255 count=1 conv=notrunc,fsync status=none || fail "write before the last sector"
dd if="$SCRATCH/tail4k" of="$SCRATCH/odd.raw.orig" bs=4096 seek=255 count=1 conv=notrunc status=none
printf 'END' | dd of="$MNT/odd" bs=1 seek=$(((1 << 20) + 297)) conv=notrunc,fsync status=none || fail "write of the last 3 bytes"
printf 'END' | dd of="$SCRATCH/odd.raw.orig" bs=1 seek=$(((1 << 20) + 297)) conv=notrunc status=none
cmp "$MNT/short" "$SCRATCH/short.iso.orig" || fail "the last sector's new bytes do not read back"
cmp "$MNT/odd" "$SCRATCH/odd.raw.orig" || fail "the odd image's new bytes do not read back"
# with growable 0 a write that starts at the end is refused (growth: growable-images.sh)
pc_ctl "$MNT" images/short/growable 0 || fail "growable 0"
dd if=/dev/zero of="$MNT/short" bs=1 count=1 seek=1000 conv=notrunc status=none 2>/dev/null && fail "a write past the end succeeded"
[ "$(stat -c %s "$MNT/short")" = 1000 ] || fail "the image grew"

# fsynced bytes of the partial sector survive kill -9 (the log holds the whole sector)
pc_kill9 "$MNT"
pc_mount "$MNT" "${CMD[@]}"
cmp "$MNT/short" "$SCRATCH/short.iso.orig" || fail "fsynced bytes of the last sector lost at kill -9"
cmp "$MNT/odd" "$SCRATCH/odd.raw.orig" || fail "fsynced bytes of the odd image lost at kill -9"

# writeback: the backing gets the bytes, and keeps its size
pc_ctl "$MNT" flush 1 || fail "flush"
for f in q.qcow2 short.iso odd.raw; do
	[ "$(stat -c %s "$SCRATCH/$f")" = "$(stat -c %s "$SCRATCH/$f.orig")" ] ||
		fail "$f changed size at writeback: $(stat -c %s "$SCRATCH/$f")"
	cmp "$SCRATCH/$f" "$SCRATCH/$f.orig" || fail "$f on the backing differs after the flush"
done
pc_umount "$MNT" || fail "umount"
note "qcow2 of $QSIZE bytes, 1000 and $(((1 << 20) + 300)) bytes: exact sizes, tails written back"
exit 0
