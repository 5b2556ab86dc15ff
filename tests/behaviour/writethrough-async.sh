#!/bin/bash
# Description: writethrough writes reply from their backing write (not from a worker that waits
# for it): fio with verify at queue depth 16 on a writethrough image leaves the backing equal to
# the mount without a flush; each write reaches the backing once (a flush-all writes nothing
# more: the writeback skips what writethrough put there); an O_DSYNC write flushes the backing;
# a failing backing write or flush is EIO to the writer, counted, and later writes go on.
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd fio dd cmp jq

pc_shm 512M
MNT=$SCRATCH/mnt
FL=$SCRATCH/fl
mkdir -p "$MNT"
pc_image "$SCRATCH/real" 64M 4
pc_flaky "$FL" "$SCRATCH/real"
pc_cleanup_add pc_unmount_if "$MNT"   # runs before the flakyfs cleanup

pc_mount "$MNT" -o "cache=$CACHE,cache_size=256M,cache_mode=writethrough" -o "image=a:$FL/image"
[ "$(cat "$MNT/.pcache/images/a/cache_mode")" = writethrough ] || fail "image a is not writethrough"

flaky_count() { awk -v k="$1" '$1 == k { print $2 }' "$FL/.control"; }

# 1. verify at queue depth 16 (libaio) and with 4 psync jobs; the backing is equal at once
fio --output-format=terse --minimal --direct=1 --ioengine=libaio --iodepth=16 --bs=4k \
	--rw=randwrite --size=16M --numjobs=2 --offset_increment=16M --verify=crc32c \
	--verify_fatal=1 --do_verify=1 --randrepeat=0 --group_reporting --name=a \
	--filename="$MNT/a" >"$SCRATCH/fio.out" 2>&1 || { cat "$SCRATCH/fio.out"; fail "fio QD16 verify failed"; }
fio --output-format=terse --minimal --direct=1 --ioengine=psync --bs=64k --rw=write \
	--size=8M --numjobs=4 --offset_increment=8M --offset=32M --verify=crc32c --verify_fatal=1 \
	--do_verify=1 --group_reporting --name=b --filename="$MNT/a" >"$SCRATCH/fio.out" 2>&1 ||
	{ cat "$SCRATCH/fio.out"; fail "fio psync verify failed"; }
cmp "$MNT/a" "$SCRATCH/real" || fail "backing behind the mount without a flush"
note "fio verify QD16 and 4 jobs: verified, backing equal without a flush"

# 2. each write reaches the backing once: a flush-all after them writes nothing more. First the
# writeback passes the keys of part 1: a writethrough key whose "on the backing" mark was missed
# (the completion thread only tries the index lock) is written once more by design, and must not
# be counted as one of the writes below.
pc_ctl "$MNT" flush 1 || fail "flush-all before the count failed"
printf 'reset\n' > "$FL/.control"
dd if=/dev/urandom of="$MNT/a" bs=4k count=256 seek=100 oflag=direct conv=notrunc status=none ||
	fail "writes failed"
w1=$(flaky_count writes)
[ "$w1" -ge 256 ] || fail "only $w1 backing writes for 256 writethrough writes"
pc_ctl "$MNT" flush 1 || fail "flush-all failed"
w2=$(flaky_count writes)
[ "$w2" = "$w1" ] || fail "the writeback wrote the writethrough data again ($w1 -> $w2 backing writes)"
cmp "$MNT/a" "$SCRATCH/real" || fail "backing differs after flush-all"
note "256 writes: $w1 backing writes, none more at flush-all"

# 3. O_DSYNC: the backing is flushed before the write returns
f1=$(flaky_count fsyncs)
dd if=/dev/urandom of="$MNT/a" bs=4k count=4 seek=300 oflag=direct,dsync conv=notrunc status=none ||
	fail "O_DSYNC writes failed"
f2=$(flaky_count fsyncs)
[ "$f2" -ge $((f1 + 4)) ] || fail "4 O_DSYNC writes flushed the backing $((f2 - f1)) times"

# 4. failing backing: the write is EIO to the writer, counted; the rest goes on
printf 'eio %d 65536 w\n' $((8 << 20)) > "$FL/.control"
expect_fail "a write into the failing range" \
	dd if=/dev/urandom of="$MNT/a" bs=4k count=1 seek=2048 oflag=direct conv=notrunc status=none
errs=$(jq '.images[] | select(.name == "a") | .backing_errors' "$MNT/.pcache/status.json")
[ "$errs" -ge 1 ] || fail "backing error not counted ($errs)"
dd if=/dev/urandom of="$MNT/a" bs=4k count=1 seek=4096 oflag=direct conv=notrunc status=none ||
	fail "a write outside the failing range failed"
printf 'clear\nfsync_eio 1\n' > "$FL/.control"
expect_fail "an O_DSYNC write whose backing flush fails" \
	dd if=/dev/urandom of="$MNT/a" bs=4k count=1 seek=400 oflag=direct,dsync conv=notrunc status=none
printf 'clear\n' > "$FL/.control"
dd if=/dev/urandom of="$MNT/a" bs=4k count=16 seek=2048 oflag=direct conv=notrunc status=none ||
	fail "writes fail after the backing came back"
# the failed write left its bytes dirty in the cache: the writeback puts the cache's bytes there
ok=0
for try in 1 2 3; do
	pc_ctl "$MNT" flush 1 && { ok=1; break; }
	sleep 1
done
[ $ok = 1 ] || fail "flush-all fails after the backing came back"
cmp "$MNT/a" "$SCRATCH/real" || fail "backing differs from the mount after recovery and flush-all"
pc_umount "$MNT"
exit 0
