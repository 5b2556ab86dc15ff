#!/bin/bash
# bench-backing.sh -- the backing layer (backing/) beside fio's own io_uring engine.
#
# Run by `make bench` (contrib/bench/run-all.sh sets PCACHE_BUILD and BENCH_OUT); also runs
# alone: `contrib/bench/bench-backing.sh` writes to a temporary BENCH_OUT and prints the section.
# Writes $BENCH_OUT/backing.md.
#
# Both sides run the same job shape on the same O_DIRECT file on disk (not /dev/shm), one
# thread, same queue depth:
#   rr4k   4 KiB random reads, QD32
#   sw1m   1 MiB sequential writes, QD8
# Rows: fio (ioengine=io_uring), build/tools/bench_backing with --path queue (each end callback
# resubmits through pcache_backing_submit(): the engine's miss-read shape) and with --path
# direct (a thread sleeps until completions free slots, then refills them in one burst
# through pcache_backing_submit_direct() inside pcache_backing_plug()/unplug(): the writeback
# shape).
# Rounds are interleaved (every row of every job in round r before round r+1, row order
# rotated per round); the table shows medians and the ratio to fio's median. Beside the rate,
# the CPU time (user+system) per I/O: fio's job thread from its JSON (usr_cpu, sys_cpu,
# job_runtime), bench_backing's whole process from getrusage. The CPU column is the cost of
# the layer itself and is much less sensitive to other load on the disk than the rate.
#
# Knobs (environment): BACKING_ROUNDS (9), BACKING_RUNTIME (seconds per run, 2),
# BACKING_SIZE_MIB (file size, 1024), BACKING_DIR (/var/tmp), BENCH_QUICK=1 (1 round, 2 s).
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
	ROUNDS=${BACKING_ROUNDS:-1}; RUNTIME=${BACKING_RUNTIME:-2}
else
	ROUNDS=${BACKING_ROUNDS:-9}; RUNTIME=${BACKING_RUNTIME:-2}
fi
SIZE_MIB=${BACKING_SIZE_MIB:-1024}
DIR=${BACKING_DIR:-/var/tmp}
BENCH=$PCACHE_BUILD/tools/bench_backing

log() { echo "bench-backing: $*" >&2; }

for tool in fio jq "$BENCH"; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		log "missing $tool (make, contrib/install-deps.sh)"
		exit 1
	fi
done

work=$(mktemp -d "$DIR/pcache-bench-backing.XXXXXX") || exit 1
cleanup() {
	rm -rf "$work"
	[ "$standalone" = 1 ] && rm -rf "$BENCH_OUT"
}
trap cleanup EXIT
img=$work/img

# Real data blocks everywhere (zeros written with O_DIRECT), so reads reach the disk.
log "writing the ${SIZE_MIB} MiB image $img"
dd if=/dev/zero of="$img" bs=1M count="$SIZE_MIB" oflag=direct status=none || exit 1

JOBS="rr4k sw1m"
ROWS="fio queue direct"
declare -A RW=([rr4k]=randread [sw1m]=write)
declare -A FIORW=([rr4k]=randread [sw1m]=write)
declare -A BS=([rr4k]=4096 [sw1m]=1048576)
declare -A QD=([rr4k]=32 [sw1m]=8)
declare -A IOPS=()   # "job row" -> space-separated IOPS of every round
declare -A CPU=()    # "job row" -> space-separated CPU microseconds per I/O of every round

cmd_of() { # job row -> the exact command line
	local j=$1 r=$2
	case $r in
	fio) echo "fio --name=$j --filename=$img --ioengine=io_uring --direct=1" \
		"--rw=${FIORW[$j]} --bs=${BS[$j]} --iodepth=${QD[$j]} --size=${SIZE_MIB}M" \
		"--runtime=$RUNTIME --time_based --output-format=json" ;;
	*) echo "$BENCH --file $img --rw ${RW[$j]} --bs ${BS[$j]} --qd ${QD[$j]}" \
		"--runtime $RUNTIME --path $r" ;;
	esac
}

run_one() { # job row -> prints "IOPS CPU_US_PER_IO"
	local j=$1 r=$2 out
	if [ "$r" = fio ]; then
		out=$($(cmd_of "$j" "$r") 2>/dev/null) || return 1
		echo "$out" | jq -r '.jobs[0] | (.read.total_ios + .write.total_ios) as $n |
			"\((.read.iops + .write.iops) | floor) \(if $n > 0 then
			((.usr_cpu + .sys_cpu) / 100 * .job_runtime * 1000 / $n * 100 | round) / 100
			else 0 end)"'
	else
		out=$($(cmd_of "$j" "$r")) || return 1
		echo "$out" | sed -n 's/^iops=\([0-9]*\).*cpu_us_per_io=\([0-9.]*\).*/\1 \2/p'
	fi
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print 0}'; }

rc=0
for ((round = 1; round <= ROUNDS; round++)); do
	# rotate the row order per round
	set -- $ROWS
	for ((k = 1; k < round; k++)); do set -- "${@:2}" "$1"; done
	order="$*"
	for j in $JOBS; do
		for r in $order; do
			v=$(run_one "$j" "$r")
			if [ -z "$v" ]; then
				log "round $round $j $r failed"
				rc=1
				continue
			fi
			IOPS["$j $r"]="${IOPS["$j $r"]:-} ${v% *}"
			CPU["$j $r"]="${CPU["$j $r"]:-} ${v#* }"
			log "round $round $j $r: ${v% *} IOPS, ${v#* } us CPU per I/O"
		done
	done
done

{
	echo "## Backing layer vs fio io_uring"
	echo
	echo "Same O_DIRECT ${SIZE_MIB} MiB file on disk ($DIR, $(df -T "$DIR" | awk 'NR==2 {print $2}')), one thread, ${RUNTIME} s per run,"
	echo "$ROUNDS interleaved rounds, medians. *queue*: callbacks resubmit with \`pcache_backing_submit()\`;"
	echo "*direct*: a thread sleeps until completions free slots and refills them with \`pcache_backing_submit_direct()\` between \`pcache_backing_plug()\`/\`unplug()\`."
	echo
	echo "| job | fio io_uring | backing, queue path | ratio | backing, direct path | ratio |"
	echo "|---|---|---|---|---|---|"
	for j in $JOBS; do
		f=$(echo "${IOPS["$j fio"]:-}" | median)
		q=$(echo "${IOPS["$j queue"]:-}" | median)
		d=$(echo "${IOPS["$j direct"]:-}" | median)
		fc=$(echo "${CPU["$j fio"]:-}" | median)
		qc=$(echo "${CPU["$j queue"]:-}" | median)
		dc=$(echo "${CPU["$j direct"]:-}" | median)
		fmt() { awk -v v="$1" -v c="$2" -v bs="${BS[$j]}" 'BEGIN {printf "%d IOPS, %.0f MiB/s, %.2f us CPU/IO", v, v * bs / 1048576, c}'; }
		ratio() { awk -v a="$1" -v b="$f" 'BEGIN {if (b > 0) printf "%.0f %%", 100 * a / b; else print "-"}'; }
		echo "| $j (${BS[$j]} B, QD${QD[$j]}) | $(fmt "$f" "$fc") | $(fmt "$q" "$qc") | $(ratio "$q") | $(fmt "$d" "$dc") | $(ratio "$d") |"
	done
	echo
	echo "Per-round IOPS / CPU microseconds per I/O:"
	echo
	for j in $JOBS; do
		for r in $ROWS; do
			echo "- $j $r: IOPS${IOPS["$j $r"]:-} / CPU${CPU["$j $r"]:-}"
		done
	done
	echo
	echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine disturbs the rates)."
	echo
	echo "Commands (the image was written first with \`dd if=/dev/zero of=IMG bs=1M count=$SIZE_MIB oflag=direct\`):"
	echo
	echo '```'
	for j in $JOBS; do
		for r in $ROWS; do
			cmd_of "$j" "$r" | sed "s|$work|\$WORK|g; s|$top/||g"
		done
	done
	echo '```'
} > "$BENCH_OUT/backing.md"

[ "$standalone" = 1 ] && cat "$BENCH_OUT/backing.md"
exit $rc
