#!/bin/bash
# bench-writeback.sh -- the writeback (core/cache_writeback.c) beside fio writing the same
# pattern to the same backing file.
#
# Run by `make bench` (contrib/bench/run-all.sh sets PCACHE_BUILD and BENCH_OUT); also runs
# alone (prints the section). Writes $BENCH_OUT/writeback.md.
#
# Jobs (dirty data in the cache log -> a preallocated file on disk, O_DIRECT):
#   seq64k   1 GiB of 64 KiB keys in sequential order, an upper-layer flush every 64 MiB
#   rand4k   256 MiB of 4 KiB keys at random offsets of a 1 GiB image, a flush every 16 MiB
# Rows: build/tools/bench_writeback (builds the log on a cache file in /dev/shm standing in for
# pmem, then times pcache_wb_offline(): scan, writes, one backing flush per epoch, dirty_tail)
# and fio (ioengine=io_uring, direct, the same write size, QD32, fdatasync at the same epoch
# boundaries, end_fsync; timed by fio's own job_runtime, which leaves out its start-up and file
# layout -- generous to fio). Rounds are interleaved with the row order rotated; medians are shown.
#
# Knobs: WB_ROUNDS (3), WB_DIR (/var/tmp), WB_SEQ_MIB (1024), WB_RAND_MIB (256),
# BENCH_QUICK=1 (1 round, 256/64 MiB).
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
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	ROUNDS=${WB_ROUNDS:-1}; SEQ_MIB=${WB_SEQ_MIB:-256}; RAND_MIB=${WB_RAND_MIB:-64}
else
	ROUNDS=${WB_ROUNDS:-3}; SEQ_MIB=${WB_SEQ_MIB:-1024}; RAND_MIB=${WB_RAND_MIB:-256}
fi
DIR=${WB_DIR:-/var/tmp}
IMG_MIB=$SEQ_MIB
[ "$IMG_MIB" -lt 1024 ] && IMG_MIB=1024
BENCH=$PCACHE_BUILD/tools/bench_writeback

log() { echo "bench-writeback: $*" >&2; }

for tool in fio jq "$BENCH"; do
	command -v "$tool" >/dev/null 2>&1 || { log "missing $tool (make, contrib/install-deps.sh)"; exit 1; }
done

work=$(mktemp -d "$DIR/pcache-bench-wb.XXXXXX") || exit 1
shmdir=$(mktemp -d /dev/shm/pcache-bench-wb.XXXXXX) || exit 1
cleanup() {
	rm -rf "$work" "$shmdir"
	[ "$standalone" = 1 ] && rm -rf "$BENCH_OUT"
}
trap cleanup EXIT
img=$work/img
log "writing the ${IMG_MIB} MiB backing file $img"
dd if=/dev/zero of="$img" bs=1M count="$IMG_MIB" oflag=direct status=none || exit 1

JOBS="seq64k rand4k"
ROWS="pcache fio"
declare -A MIB=([seq64k]=$SEQ_MIB [rand4k]=$RAND_MIB)
declare -A KEY=([seq64k]=64 [rand4k]=4)
declare -A PAT=([seq64k]=seq [rand4k]=rand)
declare -A EPOCH=([seq64k]=64 [rand4k]=16)
declare -A RES=()

cmd_of() { # job row -> command line
	local j=$1 r=$2 n
	case $r in
	pcache) echo "$BENCH --cache $shmdir/cache --backing $img --size-mib ${MIB[$j]}" \
		"--image-mib $IMG_MIB --key-kib ${KEY[$j]} --pattern ${PAT[$j]} --epoch-mib ${EPOCH[$j]}" ;;
	fio)
		n=$(( EPOCH[$j] * 1024 / KEY[$j] ))
		if [ "${PAT[$j]}" = seq ]; then
			echo "fio --name=$j --filename=$img --ioengine=io_uring --direct=1 --rw=write" \
				"--bs=${KEY[$j]}k --iodepth=32 --size=${MIB[$j]}M --fdatasync=$n --end_fsync=1"
		else
			echo "fio --name=$j --filename=$img --ioengine=io_uring --direct=1 --rw=randwrite" \
				"--bs=${KEY[$j]}k --iodepth=32 --size=${IMG_MIB}M --io_size=${MIB[$j]}M" \
				"--norandommap --randrepeat=0 --fdatasync=$n --end_fsync=1"
		fi ;;
	esac
}

run_one() { # job row -> prints MiB/s
	local j=$1 r=$2 out t0 t1
	case $r in
	pcache)
		out=$($(cmd_of "$j" "$r")) || { log "$j $r failed"; echo 0; return; }
		echo "$out" | sed -n 's/.*mib_s=\([0-9.]*\).*/\1/p' ;;
	fio)
		# fio's own job_runtime (ms): excludes its start-up and file layout (generous to fio)
		out=$($(cmd_of "$j" "$r") --output-format=json 2>/dev/null) || { log "$j $r failed"; echo 0; return; }
		ms=$(echo "$out" | jq '.jobs[0].job_runtime')
		awk -v m="${MIB[$j]}" -v ms="$ms" 'BEGIN { if (ms > 0) printf "%.1f", m / (ms / 1e3); else print 0 }' ;;
	esac
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

for round in $(seq 1 "$ROUNDS"); do
	for j in $JOBS; do
		rows=$ROWS
		[ $((round % 2)) = 0 ] && rows="fio pcache"
		for r in $rows; do
			v=$(run_one "$j" "$r")
			log "round $round $j $r: $v MiB/s"
			RES["$j $r"]="${RES["$j $r"]:-} $v"
		done
	done
done

{
	echo "## Writeback: dirty data from the cache log to a backing file, beside fio"
	echo
	echo "Drain of dirty data to a preallocated ${IMG_MIB} MiB file in $DIR (O_DIRECT), against fio"
	echo "writing the same sizes, order and flush points to the same file. $ROUNDS interleaved rounds, medians."
	echo "Target: the writeback at >= 80 % of fio's rate."
	echo
	echo "| job | data | pcache writeback MiB/s | fio MiB/s | ratio | all rounds (pcache / fio) |"
	echo "|---|---|---:|---:|---:|---|"
	for j in $JOBS; do
		p=$(echo "${RES["$j pcache"]}" | median)
		f=$(echo "${RES["$j fio"]}" | median)
		ratio=$(awk -v a="$p" -v b="$f" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
		echo "| $j | ${MIB[$j]} MiB, ${KEY[$j]} KiB ${PAT[$j]}, flush every ${EPOCH[$j]} MiB | $p | $f | $ratio |${RES["$j pcache"]} /${RES["$j fio"]} |"
	done
	echo
	echo "Commands (per round):"
	echo
	echo '```'
	for j in $JOBS; do for r in $ROWS; do cmd_of "$j" "$r"; done; done
	echo '```'
	echo
	echo "The writeback merges keys adjacent on the backing and in pmem (up to 1 MiB requests), keeps up"
	echo "to 64 requests / 64 MiB in flight, and sorts each batch by offset; fio issues every write as"
	echo "given. Both flush the file at every epoch boundary and at the end. The writeback time covers"
	echo "the log scan, the writes, the flushes and the dirty_tail persists; fio is timed by its own"
	echo "job_runtime (start-up and file layout left out)."

} > "$BENCH_OUT/writeback.md"
[ "$standalone" = 1 ] && cat "$BENCH_OUT/writeback.md"
exit 0
