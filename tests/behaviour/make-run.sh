#!/bin/bash
# Description: `make run` mounts the demo (twice in a row is fine), the demo image is readable
# through the mount (a clean ext4 with the demo README), `make stop-run` unmounts it and releases
# the cache device; a second stop is harmless. Uses a private demo directory (PCACHE_DEMO_DIR).
# Timeout: 180
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd make flock

REPO=$(cd "$TESTS_DIR/.." && pwd)
export PCACHE_DEMO_DIR=$SCRATCH/demo PCACHE_DEMO_CACHE_SIZE=256M
MNT=$PCACHE_DEMO_DIR/mnt
# the runner's build directory may differ from make's default one
MAKEARGS=(-C "$REPO" --no-print-directory "O=$PCACHE_BUILD")
pc_cleanup_add "$REPO/contrib/demo.sh" stop

make "${MAKEARGS[@]}" run > "$SCRATCH/run1.out" 2>&1 || { cat "$SCRATCH/run1.out"; fail "make run failed"; }
mountpoint -q "$MNT" || fail "make run did not leave $MNT mounted"
grep -q '^pcachefs .* cache ' "$SCRATCH/run1.out" || fail "make run did not print the status"
grep -q ' sample$' "$SCRATCH/run1.out" || fail "make run did not list the sample image"
make "${MAKEARGS[@]}" run > "$SCRATCH/run2.out" 2>&1 || { cat "$SCRATCH/run2.out"; fail "a second make run failed"; }

[ "$(stat -c %s "$MNT/sample")" -eq $((256 << 20)) ] || fail "sample image has the wrong size"
if command -v e2fsck >/dev/null 2>&1 && command -v debugfs >/dev/null 2>&1; then
	e2fsck -fn "$MNT/sample" >/dev/null 2>&1 || fail "the demo image is not a clean ext4 through the mount"
	debugfs -R "cat /README.txt" "$MNT/sample" 2>/dev/null | grep -q pcachefs || fail "README.txt not readable in the demo image"
else
	head -c 1M "$MNT/sample" | cmp - <(head -c 1M "$PCACHE_DEMO_DIR/sample.raw") || fail "demo image unreadable"
fi

make "${MAKEARGS[@]}" stop-run > "$SCRATCH/stop.out" 2>&1 || { cat "$SCRATCH/stop.out"; fail "make stop-run failed"; }
mountpoint -q "$MNT" && fail "still mounted after make stop-run"
flock -n "$PCACHE_DEMO_DIR/cache.img" true || fail "the cache device is still held after make stop-run"
make "${MAKEARGS[@]}" stop-run > "$SCRATCH/stop2.out" 2>&1 || fail "a second make stop-run failed"
exit 0
