#!/bin/bash
# bench-engine.sh -- the cache engine without FUSE (build/tools/bench_engine).
#
# Run by `make bench` (contrib/bench/run-all.sh sets PCACHE_BUILD and BENCH_OUT); also runs
# alone: `contrib/bench/bench-engine.sh` writes to a temporary BENCH_OUT and prints the section.
# Writes $BENCH_OUT/engine.md.
#
# Two runs of the same program, cache file in /dev/shm:
#   - as libpmem2 maps a tmpfs file (the granularity it reports is in the table);
#   - with PMEM2_FORCE_GRANULARITY=CACHE_LINE, the code path of real ADR persistent memory
#     (non-temporal stores + sfence, no system call), which is what the targets are about.
# Each row is the median of 3 rounds; memcpy of the same sizes and offsets runs in the same
# process for the ratio column. BENCH_QUICK=1: one round, fewer operations.
set -u
set -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
PCACHE_BUILD=${PCACHE_BUILD:-$top/build}
standalone=0
if [ -z "${BENCH_OUT:-}" ]; then
	BENCH_OUT=$(mktemp -d /tmp/pcache-bench-out.XXXXXX)
	standalone=1
fi
BENCH=$PCACHE_BUILD/tools/bench_engine
quick=""
[ "${BENCH_QUICK:-0}" = 1 ] && quick="--quick"
[ -x "$BENCH" ] || { echo "bench-engine: $BENCH missing (make first)" >&2; exit 1; }

out=$BENCH_OUT/engine.md
tmp1=$(mktemp) tmp2=$(mktemp)
trap 'rm -f "$tmp1" "$tmp2"' EXIT
echo "bench-engine: cache-line granularity run" >&2
PMEM2_FORCE_GRANULARITY=CACHE_LINE "$BENCH" --dir /dev/shm $quick > "$tmp1" || exit 1
echo "bench-engine: page granularity (msync) run" >&2
"$BENCH" --dir /dev/shm $quick > "$tmp2" || exit 1

{
	echo "## Engine (no FUSE)"
	echo
	echo "\`build/tools/bench_engine\`: the engine API called in a loop (core/ without FUSE or"
	echo "the backing layer: every read is a hit, no background threads). 4 KiB operations go to"
	echo "pseudo-random 4 KiB slots of a 512 MiB range, 1 MiB operations to 1 MiB slots; two"
	echo "threads split the range. µs/op is per thread. The last column is µs/op divided by plain"
	echo "memcpy() of the same size and offsets in the same process (writes: into the cache's"
	echo "pmem with persistence; reads: out of it). Targets: 4 KiB read hit <= 2 µs, 4 KiB write"
	echo "<= 4 µs including persist, index <= 96 B per extent, replay >= 1 M keys/s."
	echo
	echo "### Cache-line persistence (the path of real pmem)"
	echo
	echo "Command: \`PMEM2_FORCE_GRANULARITY=CACHE_LINE build/tools/bench_engine --dir /dev/shm $quick\`"
	echo
	cat "$tmp1"
	echo
	echo "### As libpmem2 maps the tmpfs file (granularity in the table)"
	echo
	echo "Command: \`build/tools/bench_engine --dir /dev/shm $quick\`"
	echo
	cat "$tmp2"
} > "$out"
[ $standalone = 1 ] && cat "$out"
exit 0
