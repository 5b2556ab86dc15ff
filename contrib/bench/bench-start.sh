#!/bin/bash
# bench-start.sh -- time from starting pcachefs to a live mount, by cache size: the first start
# (the cache file is created and formatted) and a restart, on a cache file on the disk (the
# file system of /var/tmp), medians of 3 rounds. The mapping is pre-faulted in the background,
# so neither should grow with the cache size. Also the time of a clean unmount right after.
# Writes $BENCH_OUT/start.md.
set -u
: "${PCACHE_BUILD:?}" "${BENCH_OUT:?}"
PCACHEFS=$PCACHE_BUILD/pcachefs
dir=$(mktemp -d /var/tmp/pcache-bench-start.XXXXXX)
mkdir -p "$dir/m"
pid=
cleanup() {
	mountpoint -q "$dir/m" && umount "$dir/m"
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
truncate -s 64M "$dir/a.raw"

now() { date +%s.%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# one_start ARGS...: seconds until the mount is live (pcachefs returns once mounted)
one_start() {
	local t0 t1
	t0=$(now)
	"$PCACHEFS" "$@" "$dir/m" || return 1
	t1=$(now)
	pid=$(pgrep -n -f "cache=$dir/c.img") || true
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}
one_stop() {
	local t0 t1
	t0=$(now)
	umount "$dir/m"
	# until the daemon has exited: gone, or a zombie (its parent, init once it daemonized,
	# reaps it whenever it gets to it: here every ~2 s, which is not the daemon's time)
	while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
		[ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do sleep 0.01; done
	pid=
	t1=$(now)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

{
	echo "## Start time by cache size"
	echo
	echo "Cache file on the disk ($(df --output=fstype /var/tmp | tail -1) under /var/tmp); median of 3 rounds, seconds."
	echo "Command: \`BENCH=start make bench\` (contrib/bench/bench-start.sh)."
	echo
	echo "| cache size | first start (create + format) | restart | unmount |"
	echo "|---|---|---|---|"
} > "$BENCH_OUT/start.md"
for size in ${BENCH_START_SIZES:-1G 8G 16G}; do
	: > "$dir/first"; : > "$dir/again"; : > "$dir/stop"
	for round in 1 2 3; do
		rm -f "$dir/c.img"
		one_start -o "cache=$dir/c.img,cache_size=$size" -o "image=a:$dir/a.raw" >> "$dir/first" || { echo "start failed"; exit 1; }
		one_stop >> "$dir/stop"
		one_start -o "cache=$dir/c.img" >> "$dir/again" || { echo "restart failed"; exit 1; }
		one_stop >> "$dir/stop"
	done
	printf '| %s | %.3f | %.3f | %.3f |\n' "$size" "$(median < "$dir/first")" "$(median < "$dir/again")" \
		"$(median < "$dir/stop")" >> "$BENCH_OUT/start.md"
done
rm -f "$dir/c.img"
cat "$BENCH_OUT/start.md"
