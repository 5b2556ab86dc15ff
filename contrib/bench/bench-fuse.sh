#!/bin/bash
# bench-fuse.sh -- FUSE-level benchmark: pcachefs beside the FUSE ceiling, QEMU's FUSE export and
# the raw backing.
#
# Run by `make bench` (contrib/bench/run-all.sh sets PCACHE_BUILD, BENCH_DIR, BENCH_OUT); also
# runs alone: `contrib/bench/bench-fuse.sh` writes to a temporary BENCH_OUT and prints the section.
# Writes $BENCH_OUT/fuse.md and the charts $BENCH_DIR/bench-fuse-iops.png, bench-fuse-bw.png.
#
# Configurations (each row of the table; the fio jobs are contrib/bench/fio/fuse.fio):
#   pc-hit     pcachefs, cache in /dev/shm, image warmed (read fully) before every round
#   pc-hit-st  the same with the single-threaded session loop (-s), QD16 jobs only
#   pc-miss    pcachefs on a fresh cache for every run (4 KiB random reads only), backing on disk
#   pc-wt      pcachefs with cache_mode=writethrough, 4 GiB backing on disk (rw4k_qd16, sw1m)
#   pc-zipf    pcachefs, 4 GiB backing on disk through a 1 GiB cache (zipf4k_qd16: partial hits)
#   ceiling    build/tools/ceilingfs: RAM-backed FUSE file with pcachefs's session settings
#   qsd        qemu-storage-daemon FUSE export of a raw image on disk, cache.direct=on
#   qsd-shm    the same export of an image in /dev/shm (QEMU's FUSE ceiling)
#   raw        fio on the backing image file on disk, O_DIRECT (pc-miss reads the same file)
#   shm        fio on a /dev/shm file (memory limit, no FUSE)
#
# For the disk-backed configurations (pc-miss, qsd, raw) the 4 KiB random reads are also seen
# from the disk: its counters (/sys/class/block/<dev>/stat) and /proc/stat around each fio run
# give the reads in flight at the disk, its latency and the machine's CPU per read (a table in
# the report), which shows where fio's queue depth goes when a daemon sits in front of the disk.
#
# Rounds are interleaved: round r runs every job on every configuration (configuration order
# rotated per round) before round r+1; the tables show medians over the rounds.
#
# Knobs (environment): BENCH_QUICK=1 (1 round, 2 s runs); FUSE_ROUNDS, FUSE_RUNTIME, FUSE_RAMP;
# FUSE_ZIPF_RAMP (the zipf job's warm-up, default 30 s, 5 s with BENCH_QUICK);
# FUSE_CONFIGS / FUSE_JOBS (space-separated subsets); FUSE_DISK_DIR (default /var/tmp);
# FUSE_SHM_DIR (default /dev/shm); FUSE_CACHE_SIZE (pc-hit cache, default 4g); FUSE_PROFILE
# (space-separated [CONFIG:]JOB to profile with perf after the rounds, CONFIG pc-hit (default),
# pc-hit-st or pc-miss; "auto": every pcachefs job that missed its target); FUSE_SKIP_RSS=1.
#
# Every daemon this script starts is recorded and stopped by PID; every mount is unmounted and
# every temporary file removed on exit, whatever the exit path.
set -u
set -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
PCACHE_BUILD=${PCACHE_BUILD:-$top/build}
BENCH_DIR=${BENCH_DIR:-$top}
standalone=0
if [ -z "${BENCH_OUT:-}" ]; then
	BENCH_OUT=$(mktemp -d /tmp/pcache-bench-out.XXXXXX)
	standalone=1
fi
JOBFILE=$here/fio/fuse.fio
PREPFILE=$here/fio/fuse-prep.fio
PLOT=$here/fuse-plot.gp
PCACHEFS=$PCACHE_BUILD/pcachefs
CEILINGFS=$PCACHE_BUILD/tools/ceilingfs
CACHE_SIM=$PCACHE_BUILD/tools/cache_sim
TRACE_ENGINE=$PCACHE_BUILD/tools/trace_engine

if [ "${BENCH_QUICK:-0}" = 1 ]; then
	ROUNDS=${FUSE_ROUNDS:-1}; RUNTIME=${FUSE_RUNTIME:-2}; RAMP=${FUSE_RAMP:-1}
	ZIPF_RAMP=${FUSE_ZIPF_RAMP:-5}
else
	ROUNDS=${FUSE_ROUNDS:-3}; RUNTIME=${FUSE_RUNTIME:-5}; RAMP=${FUSE_RAMP:-1}
	ZIPF_RAMP=${FUSE_ZIPF_RAMP:-30}
fi
DISK_DIR=${FUSE_DISK_DIR:-/var/tmp}
SHM_DIR=${FUSE_SHM_DIR:-/dev/shm}
IMG_SIZE=1g            # every image and file the jobs run on, except pc-miss/raw
MISS_SIZE=4g           # pc-miss and raw: large enough that a run never reads a block twice
# pc-hit: four times the image, so that a write job (up to a few GiB in one run, the 1 GiB
# image rewritten over and over) is a burst the cache absorbs; the writeback then trickles
# (busy, below dirty_low) or skips data rewritten within the epoch. With 2 GiB the write jobs
# measured the disk's writeback speed, not the cache.
CACHE_SIZE=${FUSE_CACHE_SIZE:-4g}
MISS_CACHE_SIZE=2g
ZIPF_CACHE_SIZE=1g     # pc-zipf: a quarter of its 4 GiB image
RSS_CACHE_SIZE=2g
REPLAY_SAMPLES=5

BASE_JOBS="rr4k_j1 rr4k_j2 rr4k_qd16 rw4k_j1 rw4k_j2 rw4k_qd16 sr1m sw1m"
ALL_JOBS="$BASE_JOBS fs4k_j1 fs4k_j4 zipf4k_qd16"
ALL_CONFIGS="pc-hit pc-hit-st pc-miss pc-wt pc-zipf ceiling qsd qsd-shm raw shm"
JOBS=${FUSE_JOBS:-$ALL_JOBS}
# Reads run before writes within a round, so that no write pushes warmed data out of the cache
# before a read job measures hits.
EXEC_JOBS="$(for j in $JOBS; do case $j in rr*|sr*|zipf*) printf '%s ' "$j" ;; esac; done)"
EXEC_JOBS+="$(for j in $JOBS; do case $j in rr*|sr*|zipf*) ;; *) printf '%s ' "$j" ;; esac; done)"
CONFIGS=${FUSE_CONFIGS:-$ALL_CONFIGS}

# Which jobs each configuration runs (default: all).
declare -A CFG_JOBS=(
	[pc-hit]="$BASE_JOBS fs4k_j1 fs4k_j4"
	[pc-miss]="rr4k_j1 rr4k_qd16"
	[pc-hit-st]="rr4k_qd16 rw4k_qd16"
	[pc-wt]="rw4k_qd16 sw1m"
	[pc-zipf]="zipf4k_qd16"
	[ceiling]="$BASE_JOBS"
	[qsd]="$BASE_JOBS fs4k_j1 fs4k_j4"
	[qsd-shm]="$BASE_JOBS"
	[shm]="$BASE_JOBS"
)

log() { echo "bench-fuse: $*" >&2; }

# ---- bookkeeping and cleanup ---------------------------------------------------------------

WORK_DISK='' WORK_SHM='' WORK_RUN=''
declare -A DAEMON_PID=()     # name -> pid of a daemon we started
declare -A DAEMON_MNT=()     # name -> its mount point (a directory, or a file for qsd)
declare -A DAEMON_BY_SIGNAL=() # name -> 1: stop it with SIGTERM (qsd stays up when unmounted)
declare -A CFG_FILE=()       # config -> the file fio runs on
declare -A CFG_SIZE=()       # config -> fio size
declare -A CFG_NOTE=()       # config -> why it did not run
NOTES=()
fio_failures=0

is_mounted() { awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# wait_exit PID SECONDS: wait for a child we started to exit; 0 if it did.
wait_exit() {
	local pid=$1 n=$(( $2 * 20 ))
	while [ "$n" -gt 0 ]; do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
		sleep 0.05; n=$((n - 1))
	done
	return 1
}

# daemon_stop NAME: unmount its mount point, wait for the daemon to exit, kill it by PID if it
# does not, and drop a mount that is left behind.
daemon_stop() {
	local name=$1 pid=${DAEMON_PID[$1]:-} mnt=${DAEMON_MNT[$1]:-}
	[ -n "$pid" ] || return 0
	if [ -n "${DAEMON_BY_SIGNAL[$name]:-}" ]; then
		kill -TERM "$pid" 2>/dev/null
	elif [ -n "$mnt" ] && is_mounted "$mnt"; then
		umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null
	fi
	if ! wait_exit "$pid" 120; then
		log "$name (pid $pid) did not exit after unmount: SIGTERM"
		kill -TERM "$pid" 2>/dev/null
		if ! wait_exit "$pid" 10; then
			kill -KILL "$pid" 2>/dev/null
			wait_exit "$pid" 5
		fi
	fi
	if [ -n "$mnt" ] && is_mounted "$mnt"; then
		umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
	fi
	unset "DAEMON_PID[$name]" "DAEMON_MNT[$name]" "DAEMON_BY_SIGNAL[$name]"
}

cleanup() {
	local name
	trap - EXIT INT TERM
	for name in "${!DAEMON_PID[@]}"; do daemon_stop "$name"; done
	[ -n "$WORK_DISK" ] && rm -rf "$WORK_DISK"
	[ -n "$WORK_SHM" ] && rm -rf "$WORK_SHM"
	[ -n "$WORK_RUN" ] && rm -rf "$WORK_RUN"
	[ "$standalone" = 1 ] && rm -rf "$BENCH_OUT"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# daemon_start NAME MOUNTPOINT READY_FILE TIMEOUT CMD...: start CMD in the background (its output
# to $WORK_RUN/NAME.log), record it, wait until MOUNTPOINT is mounted and READY_FILE can be
# stat'ed. Sets START_NS to the time that took. 1 if the daemon died or timed out (stopped then).
daemon_start() {
	local name=$1 mnt=$2 ready=$3 secs=$4 t0 n
	shift 4
	t0=$(date +%s%N)
	"$@" >"$WORK_RUN/$name.log" 2>&1 &
	DAEMON_PID[$name]=$!
	DAEMON_MNT[$name]=$mnt
	n=$((secs * 200))
	while [ "$n" -gt 0 ]; do
		if is_mounted "$mnt" && stat "$ready" >/dev/null 2>&1; then
			START_NS=$(( $(date +%s%N) - t0 ))
			return 0
		fi
		if ! kill -0 "${DAEMON_PID[$name]}" 2>/dev/null; then
			log "$name exited before its mount was ready:"; sed 's/^/    /' "$WORK_RUN/$name.log" >&2
			daemon_stop "$name"
			return 1
		fi
		sleep 0.005; n=$((n - 1))
	done
	log "$name: mount not ready after ${secs}s"
	daemon_stop "$name"
	return 1
}

# ---- fio ------------------------------------------------------------------------------------

# fio_run OUT.json FILE SIZE SECTION JOBFILE: one fio run; 0 if fio and every job succeeded.
fio_run() {
	local out=$1 file=$2 size=$3 section=$4 jobfile=$5
	FIO_FILE=$file FIO_SIZE=$size FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP FIO_ZIPF_RAMP=$ZIPF_RAMP \
		timeout -k 10 $((RUNTIME + RAMP + ZIPF_RAMP + 120)) \
		fio --output-format=json --output="$out" --section="$section" "$jobfile" \
		>"$out.err" 2>&1 || return 1
	[ "$(jq '[.jobs[].error] | add' "$out" 2>/dev/null)" = 0 ]
}

# fio_prep FILE SIZE SECTION: a preparation pass (fuse-prep.fio); 0 on success.
fio_prep() {
	local out=$WORK_RUN/prep.json
	if FIO_FILE=$1 FIO_SIZE=$2 timeout -k 10 600 \
		fio --output-format=json --output="$out" --section="$3" "$PREPFILE" >"$out.err" 2>&1 &&
		[ "$(jq '[.jobs[].error] | add' "$out" 2>/dev/null)" = 0 ]; then
		return 0
	fi
	log "prep $3 on $1 failed"; cat "$out.err" >&2
	return 1
}

# metric SECTION JSON: IOPS for the 4 KiB jobs, bytes/s for the 1 MiB jobs (reads plus writes).
metric() {
	case $1 in
	*1m) jq '.jobs[0].read.bw_bytes + .jobs[0].write.bw_bytes' "$2" ;;
	*) jq '.jobs[0].read.iops + .jobs[0].write.iops' "$2" ;;
	esac
}

fio_cmdline() { # the command line of one measured run, as printed in the report
	echo "FIO_FILE=$1 FIO_SIZE=$2 FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP FIO_ZIPF_RAMP=$ZIPF_RAMP fio --output-format=json --section=$3 contrib/bench/fio/fuse.fio"
}

# ---- configurations -------------------------------------------------------------------------

pcachefs_works() { [ -x "$PCACHEFS" ]; }

# pc_cmd CACHEFILE IMAGEPATH MOUNTPOINT [EXTRA...]: set CMD to the pcachefs command line (the
# image is named "img").
pc_cmd() {
	local cache=$1 img=$2 mnt=$3
	shift 3
	CMD=("$PCACHEFS" -f "$@" -o "cache=$cache" -o "image=img:$img" "$mnt")
}

# show_cmd: CMD as printed in the report (build/ paths, no temporary directories).
show_cmd() {
	local s="${CMD[*]}"
	[ -n "$WORK_RUN" ] && s=${s//$WORK_RUN\/bin\//build\/}
	s=${s//$PCACHE_BUILD\//build\/}
	echo "$s"
}

# new_cache PATH SIZE: a fresh (sparse) cache file; the daemon formats it on first use.
new_cache() { rm -f "$1"; truncate -s "$2" "$1"; }

# pc_start NAME CACHEFILE IMAGE [EXTRA...]: mount pcachefs on $WORK_RUN/mnt-NAME, serving "img".
pc_start() {
	local name=$1 cache=$2 img=$3 mnt=$WORK_RUN/mnt-$1
	shift 3
	mkdir -p "$mnt"
	pc_cmd "$cache" "$img" "$mnt" "$@"
	daemon_start "$name" "$mnt" "$mnt/img" 180 "${CMD[@]}"
}

qsd_cmd() { # qsd_cmd IMAGE MOUNTFILE: set CMD to the qemu-storage-daemon command line
	# shellcheck disable=SC2054  # the commas belong to qemu's option syntax
	CMD=(qemu-storage-daemon \
		--blockdev "driver=file,node-name=file,filename=$1,cache.direct=on,aio=native" \
		--blockdev driver=raw,node-name=raw,file=file \
		--export "type=fuse,id=exp,node-name=raw,mountpoint=$2,writable=on")
}

# setup_config CONFIG: create its files and mount it; sets CFG_FILE/CFG_SIZE, or CFG_NOTE and 1.
setup_config() {
	local c=$1 mnt
	case $c in
	pc-hit|pc-hit-st)
		pcachefs_works || { CFG_NOTE[$c]="build/pcachefs not built"; return 1; }
		fio_prep "$WORK_DISK/$c.img" $IMG_SIZE fill || return 1
		new_cache "$WORK_SHM/$c.cache" "$CACHE_SIZE"
		# sequential_cutoff=0: the warm-up pass reads the image sequentially, and every byte
		# of it is to be cached (with the default 4 MiB cutoff only the first 4 MiB would be)
		local extra=(-o sequential_cutoff=0)
		[ "$c" = pc-hit-st ] && extra+=(-s)
		pc_start "$c" "$WORK_SHM/$c.cache" "$WORK_DISK/$c.img" "${extra[@]}" ||
			{ CFG_NOTE[$c]="pcachefs did not mount (see the log above)"; return 1; }
		CFG_FILE[$c]=$WORK_RUN/mnt-$c/img; CFG_SIZE[$c]=$IMG_SIZE
		;;
	pc-miss)
		pcachefs_works || { CFG_NOTE[$c]="build/pcachefs not built"; return 1; }
		[ -f "$WORK_DISK/miss.img" ] || fio_prep "$WORK_DISK/miss.img" $MISS_SIZE fill || return 1
		CFG_FILE[$c]=$WORK_RUN/mnt-$c/img; CFG_SIZE[$c]=$MISS_SIZE   # mounted per run
		;;
	pc-wt|pc-zipf)
		pcachefs_works || { CFG_NOTE[$c]="build/pcachefs not built"; return 1; }
		fio_prep "$WORK_DISK/$c.img" $MISS_SIZE fill || return 1
		local csize=$CACHE_SIZE extra=(-o cache_mode=writethrough)
		[ "$c" = pc-zipf ] && { csize=$ZIPF_CACHE_SIZE; extra=(); }
		new_cache "$WORK_SHM/$c.cache" "$csize"
		pc_start "$c" "$WORK_SHM/$c.cache" "$WORK_DISK/$c.img" "${extra[@]}" ||
			{ CFG_NOTE[$c]="pcachefs did not mount (see the log above)"; return 1; }
		CFG_FILE[$c]=$WORK_RUN/mnt-$c/img; CFG_SIZE[$c]=$MISS_SIZE
		;;
	raw)
		[ -f "$WORK_DISK/miss.img" ] || fio_prep "$WORK_DISK/miss.img" $MISS_SIZE fill || return 1
		CFG_FILE[$c]=$WORK_DISK/miss.img; CFG_SIZE[$c]=$MISS_SIZE
		;;
	shm)
		fio_prep "$WORK_SHM/shm.file" $IMG_SIZE fill || return 1
		CFG_FILE[$c]=$WORK_SHM/shm.file; CFG_SIZE[$c]=$IMG_SIZE
		;;
	ceiling)
		[ -x "$CEILINGFS" ] || { CFG_NOTE[$c]="build/tools/ceilingfs not built"; return 1; }
		mnt=$WORK_RUN/mnt-ceiling; mkdir -p "$mnt"
		daemon_start ceiling "$mnt" "$mnt/ceiling" 60 "$CEILINGFS" -f -o size=1g "$mnt" ||
			{ CFG_NOTE[$c]="ceilingfs did not mount"; return 1; }
		CFG_FILE[$c]=$mnt/ceiling; CFG_SIZE[$c]=$IMG_SIZE
		;;
	qsd|qsd-shm)
		command -v qemu-storage-daemon >/dev/null || { CFG_NOTE[$c]="qemu-storage-daemon not installed"; return 1; }
		local dir=$WORK_DISK
		[ "$c" = qsd-shm ] && dir=$WORK_SHM
		fio_prep "$dir/$c.img" $IMG_SIZE fill || return 1
		mnt=$WORK_RUN/mnt-$c; : > "$mnt"
		qsd_cmd "$dir/$c.img" "$mnt"
		DAEMON_BY_SIGNAL[$c]=1
		daemon_start "$c" "$mnt" "$mnt" 60 "${CMD[@]}" ||
			{ CFG_NOTE[$c]="qemu-storage-daemon did not mount"; return 1; }
		CFG_FILE[$c]=$mnt; CFG_SIZE[$c]=$IMG_SIZE
		;;
	*) CFG_NOTE[$c]="unknown configuration"; return 1 ;;
	esac
}

cfg_runs_job() { # cfg_runs_job CONFIG JOB
	local j
	[ -n "${CFG_JOBS[$1]:-}" ] || return 0
	for j in ${CFG_JOBS[$1]}; do [ "$j" = "$2" ] && return 0; done
	return 1
}

# pc_counters MOUNT: "read_hit_bytes read_miss_bytes full_waits full_wait_ns" of image "img"
# from .pcache/status.json (empty if the daemon does not expose them).
pc_counters() {
	jq -r '[(.images[] | select(.name == "img") | .read_hit_bytes, .read_miss_bytes),
		.cache.full_waits, .cache.full_wait_ns] | map(. // 0) | map(tostring) | join(" ")' \
		"$1/.pcache/status.json" 2>/dev/null
}

# pc_prepare CONFIG: write back everything dirty, then read the whole image into the cache.
pc_prepare() {
	log "draining and warming $1"
	timeout 600 sh -c "echo 1 > '$WORK_RUN/mnt-$1/.pcache/flush'" ||
		log "$1: writing 1 to .pcache/flush failed"
	fio_prep "${CFG_FILE[$1]}" $IMG_SIZE warm
}

# ---- the disk's view of the disk-backed runs ------------------------------------------------

# disk_stat_file: the /sys stat file of the block device under DISK_DIR (empty if none).
disk_stat_file() {
	local src dev
	src=$(findmnt -no SOURCE -T "$DISK_DIR" 2>/dev/null) || return 0
	dev=$(basename "$(readlink -f "$src" 2>/dev/null)")
	[ -n "$dev" ] && [ -r "/sys/class/block/$dev/stat" ] && echo "/sys/class/block/$dev/stat"
	return 0
}

# disk_snap: "ms reads read_ticks_ms time_in_queue_ms cpu_busy cpu_total" (jiffies) right now.
disk_snap() {
	local d
	read -r -a d < "$DISK_STAT"
	echo "$(($(date +%s%N) / 1000000)) ${d[0]} ${d[3]} ${d[10]} $(awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
}

# disk_row ROUND JOB CONFIG BEFORE AFTER JSON: appends to disk.tsv "round job config
# disk_reads avg_in_flight disk_read_latency_us fio_clat_us machine_cpu_% cpu_us_per_disk_read"
# (the whole fio run, ramp included; every read of these jobs is one read at the disk).
disk_row() {
	local clat
	clat=$(jq '.jobs[0].read.clat_ns.mean / 1000' "$6" 2>/dev/null) || clat=0
	echo "$1 $2 $3 $4 $5 $clat $CLK_TCK" | awk '{
		ms = $10 - $4; rd = $11 - $5; tk = $12 - $6; q = $13 - $7; busy = $14 - $8; tot = $15 - $9
		if (ms <= 0 || rd <= 0 || tot <= 0) exit
		printf "%s %s %s %d %.2f %.1f %.1f %.1f %.2f\n", $1, $2, $3, rd, q / ms, 1000 * tk / rd, $16,
			100 * busy / tot, busy * 1e6 / $17 / rd }' >> "$WORK_RUN/disk.tsv"
}

# run_one ROUND JOB CONFIG: one measured run; appends "round job config value" to results.tsv
# and, for pcachefs, the counter deltas of the run to pcstats.tsv.
run_one() {
	local r=$1 j=$2 c=$3 out=$WORK_RUN/json/$1-$2-$3.json v=NA before='' after=''
	if [ "$c" = pc-miss ]; then
		# A cold cache for every run: a fresh cache file, a fresh daemon.
		new_cache "$WORK_SHM/miss.cache" $MISS_CACHE_SIZE
		if ! pc_start pc-miss "$WORK_SHM/miss.cache" "$WORK_DISK/miss.img"; then
			echo "$r $j $c NA" >> "$WORK_RUN/results.tsv"; fio_failures=$((fio_failures + 1)); return
		fi
	fi
	case $c in pc-*) before=$(pc_counters "$WORK_RUN/mnt-$c") ;; esac
	local dbefore='' fpid ok=0
	case $c:$j in pc-miss:*|qsd:rr4k*|raw:rr4k*) [ -n "$DISK_STAT" ] && dbefore=$(disk_snap) ;; esac
	fio_run "$out" "${CFG_FILE[$c]}" "${CFG_SIZE[$c]}" "$j" "$JOBFILE" &
	fpid=$!
	# the zipf job's counters (hit share) cover its measured part only, not its warm-up
	case $c:$j in pc-*:zipf*) sleep "$ZIPF_RAMP"; before=$(pc_counters "$WORK_RUN/mnt-$c") ;; esac
	wait "$fpid" && ok=1
	if [ $ok = 1 ]; then
		v=$(metric "$j" "$out")
		[ -n "$dbefore" ] && disk_row "$r" "$j" "$c" "$dbefore" "$(disk_snap)" "$out"
	else
		log "fio $j on $c failed (round $r):"; sed 's/^/    /' "$out.err" >&2
		fio_failures=$((fio_failures + 1))
	fi
	case $c in pc-*) after=$(pc_counters "$WORK_RUN/mnt-$c") ;; esac
	if [ -n "$before" ] && [ -n "$after" ]; then
		echo "$r $j $c $before $after" | awk '{ print $1, $2, $3, $8 - $4, $9 - $5, $10 - $6, $11 - $7 }' >> "$WORK_RUN/pcstats.tsv"
	fi
	if [ "$c" = pc-miss ]; then
		daemon_stop pc-miss
		rm -f "$WORK_SHM/miss.cache"
	fi
	echo "$r $j $c $v" >> "$WORK_RUN/results.tsv"
	log "round $r $j $c: $v"
}

# ---- results --------------------------------------------------------------------------------

# median JOB CONFIG: median of the rounds' values (empty if none).
median() {
	awk -v j="$1" -v c="$2" '$2 == j && $3 == c && $4 != "NA" { print $4 }' "$WORK_RUN/results.tsv" |
		sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.6f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt() { # fmt JOB VALUE: 38.0k / 4.94 GB/s
	[ -n "$2" ] || { echo "-"; return; }
	case $1 in
	*1m) awk -v v="$2" 'BEGIN { printf "%.2f GB/s", v / 1e9 }' ;;
	*) awk -v v="$2" 'BEGIN { if (v >= 1000) printf "%.1fk", v / 1000; else printf "%.0f", v }' ;;
	esac
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print ""; else printf "%.2f\n", a / b }'; }

# The targets: "label|job|config|reference config|minimum ratio" (0.85 = 85 %, 3 = 3x; info =
# shown without a target). A reference "JOB@CONFIG" compares with another job's median.
TARGETS=()
for j in rr4k_j2 rr4k_qd16 rw4k_j2 rw4k_qd16 sr1m; do TARGETS+=("hits vs ceiling|$j|pc-hit|ceiling|0.85"); done
TARGETS+=("hits vs ceiling|sw1m|pc-hit|ceiling|0.75")
for j in rr4k_j1 rw4k_j1; do TARGETS+=("hits vs ceiling|$j|pc-hit|ceiling|info"); done
for j in rr4k_j1 rr4k_j2 rr4k_qd16 rw4k_j1 rw4k_j2 rw4k_qd16; do TARGETS+=("hits vs qsd|$j|pc-hit|qsd|3"); done
TARGETS+=("hits vs qsd|sr1m|pc-hit|qsd|5" "hits vs qsd|sw1m|pc-hit|qsd|info")
for j in $BASE_JOBS; do TARGETS+=("hits vs qsd-shm|$j|pc-hit|qsd-shm|info"); done
TARGETS+=("misses vs raw backing|rr4k_qd16|pc-miss|raw|0.85" "misses vs raw backing|rr4k_j1|pc-miss|raw|info")
for j in rr4k_qd16 rw4k_qd16; do TARGETS+=("hits single-threaded vs ceiling|$j|pc-hit-st|ceiling|info"); done
TARGETS+=("writethrough vs raw backing|rw4k_qd16|pc-wt|raw|0.8" "writethrough vs raw backing|sw1m|pc-wt|raw|0.9")
TARGETS+=("write + fdatasync vs raw backing|fs4k_j1|pc-hit|raw|info" "write + fdatasync vs raw backing|fs4k_j4|pc-hit|raw|10")
TARGETS+=("write + fdatasync vs qsd|fs4k_j1|pc-hit|qsd|info" "write + fdatasync vs qsd|fs4k_j4|pc-hit|qsd|info")
TARGETS+=("write + fdatasync, 4 jobs vs 1 job|fs4k_j4|pc-hit|fs4k_j1@pc-hit|2")
TARGETS+=("partial hits (zipf 1.1, 4 GiB through 1 GiB) vs raw backing|zipf4k_qd16|pc-zipf|raw|1")

# ref_median JOB REF: the median of the reference (REF = CONFIG, or JOB@CONFIG).
ref_median() {
	case $2 in *@*) median "${2%@*}" "${2#*@}" ;; *) median "$1" "$2" ;; esac
}

# target_missed JOB CFG REF_CFG MIN: 0 if both were measured and the ratio is below MIN.
target_missed() {
	local r
	[ "$4" = info ] && return 1
	r=$(ratio "$(median "$1" "$2")" "$(ref_median "$1" "$3")")
	[ -n "$r" ] && awk -v r="$r" -v m="$4" 'BEGIN { exit !(r < m) }'
}

# target_row LABEL JOB CFG REF_CFG MIN: one line of the targets table.
target_row() {
	local label=$1 j=$2 c=$3 ref=$4 min=$5 a b r verdict
	a=$(median "$j" "$c"); b=$(ref_median "$j" "$ref"); r=$(ratio "$a" "$b")
	if [ -z "$r" ]; then verdict="not measured"
	elif [ "$min" = info ]; then verdict="(no target)"
	elif awk -v r="$r" -v m="$min" 'BEGIN { exit !(r >= m) }'; then verdict="met"
	else verdict="**missed**"
	fi
	local tgt=">= $min"
	case $min in info) tgt="-" ;; 0.*) tgt=">= $(awk -v m="$min" 'BEGIN { printf "%d %%", m * 100 }')" ;; *) tgt=">= ${min}x" ;; esac
	echo "| $label | $j | $(fmt "$j" "$a") | ${ref/@/ on } $(fmt "$j" "$b") | ${r:--} | $tgt | $verdict |"
}

# zipf_target_row: the partial-hit target. At a hit share h (of the bytes read, measured over
# the zipf runs), pcachefs should reach the better of raw and the h-weighted rate of all-hit and
# all-miss reads (1 / (h / hit + (1 - h) / miss), hit = pc-hit and miss = pc-miss rr4k_qd16).
zipf_target_row() {
	local z raw hit miss h want r verdict
	z=$(median zipf4k_qd16 pc-zipf); raw=$(median zipf4k_qd16 raw)
	hit=$(median rr4k_qd16 pc-hit); miss=$(median rr4k_qd16 pc-miss)
	h=$(awk '$2 == "zipf4k_qd16" && $3 == "pc-zipf" { a += $4; b += $5 } END { if (a + b) printf "%.4f", a / (a + b) }' \
		"$WORK_RUN/pcstats.tsv" 2>/dev/null)
	[ -n "$z" ] && [ -n "$raw" ] && [ -n "$hit" ] && [ -n "$miss" ] && [ -n "$h" ] || return 0
	want=$(awk -v h="$h" -v a="$hit" -v b="$miss" -v r="$raw" 'BEGIN { w = 1 / (h / a + (1 - h) / b); printf "%.6f", (w > r ? w : r) }')
	r=$(ratio "$z" "$want")
	if awk -v r="$r" 'BEGIN { exit !(r >= 1) }'; then verdict="met"; else verdict="**missed**"; fi
	echo "| partial hits vs max(raw, hit share $(awk -v h="$h" 'BEGIN { printf "%.1f %%", 100 * h }')-weighted hit/miss rate) | zipf4k_qd16 | $(fmt zipf4k_qd16 "$z") | $(fmt zipf4k_qd16 "$want") (hits $(fmt rr4k_qd16 "$hit"), misses $(fmt rr4k_qd16 "$miss"), raw $(fmt zipf4k_qd16 "$raw")) | $r | >= 1x | $verdict |"
}

status_field() { # status_field MOUNT KEY: a number from .pcache/status.json (searched anywhere)
	local f=$1/.pcache/status.json
	[ -r "$f" ] || return 0
	jq -r --arg k "$2" '[.. | objects | select(has($k)) | .[$k]] | first // empty' "$f" 2>/dev/null
}

proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

# ---- memory and replay ----------------------------------------------------------------------

RSS_MD=
rss_and_replay() {
	local cache=$WORK_SHM/rss.cache img=$WORK_DISK/pc-hit.img mnt=$WORK_RUN/mnt-rss pid i
	local rss0 rss1 anon shmem file idx keys full=() empty=()
	[ -f "$img" ] || fio_prep "$img" $IMG_SIZE fill || return 1
	new_cache "$cache" $RSS_CACHE_SIZE
	pc_start rss "$cache" "$img" || return 1
	pid=${DAEMON_PID[rss]}
	rss0=$(proc_kb "$pid" VmRSS)
	fio_prep "$mnt/img" $IMG_SIZE fill4k || { daemon_stop rss; return 1; }
	sleep 1
	rss1=$(proc_kb "$pid" VmRSS); anon=$(proc_kb "$pid" RssAnon)
	file=$(proc_kb "$pid" RssFile); shmem=$(proc_kb "$pid" RssShmem)
	idx=$(status_field "$mnt" index_bytes); keys=$(status_field "$mnt" keys_indexed)
	# Write everything back first, so that every timed start below replays the same log.
	timeout 600 sh -c "echo 1 > '$mnt/.pcache/flush'" || log "rss: writing 1 to .pcache/flush failed"
	daemon_stop rss
	# Replay: time from starting the daemon to the image file being reachable, on the filled
	# cache and on an empty cache of the same size (formatted by a first, untimed start),
	# alternating between the two so that load changes hit both alike.
	local ecache=$WORK_SHM/rss-empty.cache
	new_cache "$ecache" $RSS_CACHE_SIZE
	pc_start rss "$ecache" "$img" || return 1
	daemon_stop rss
	for i in $(seq 1 $REPLAY_SAMPLES); do
		pc_start rss "$cache" "$img" || return 1
		full+=("$START_NS"); daemon_stop rss
		pc_start rss "$ecache" "$img" || return 1
		empty+=("$START_NS"); daemon_stop rss
	done
	rm -f "$cache" "$ecache"
	local mf me nf ne
	mf=$(printf '%s\n' "${full[@]}" | sort -n | sed -n "$(( (REPLAY_SAMPLES + 1) / 2 ))p")
	me=$(printf '%s\n' "${empty[@]}" | sort -n | sed -n "$(( (REPLAY_SAMPLES + 1) / 2 ))p")
	nf=$(printf '%s\n' "${full[@]}" | sort -n | head -1)
	ne=$(printf '%s\n' "${empty[@]}" | sort -n | head -1)
	RSS_MD=$(
		echo "### Memory and replay with 1 GiB cached in 4 KiB extents"
		echo
		echo "Cache $RSS_CACHE_SIZE in $SHM_DIR, image 1 GiB on disk, filled with \`FIO_FILE=<mnt>/img FIO_SIZE=1g fio --section=fill4k contrib/bench/fio/fuse-prep.fio\` (4 KiB random writes, libaio QD16, every 4 KiB block written once), then written back (\`echo 1 > <mnt>/.pcache/flush\`) so that every timed start replays the same log."
		echo
		echo "| measure | value |"
		echo "|---|---|"
		echo "| VmRSS after mount (empty cache) | $(awk -v k="$rss0" 'BEGIN { printf "%.1f MiB", k / 1024 }') |"
		echo "| VmRSS with 1 GiB in 4 KiB extents | $(awk -v k="$rss1" 'BEGIN { printf "%.1f MiB", k / 1024 }') |"
		echo "| of which RssAnon (daemon heap: index, buffers) | $(awk -v k="$anon" 'BEGIN { printf "%.1f MiB", k / 1024 }') |"
		echo "| of which RssShmem + RssFile (the mapped cache file) | $(awk -v a="$shmem" -v b="$file" 'BEGIN { printf "%.1f MiB", (a + b) / 1024 }') |"
		echo "| engine index_bytes (.pcache/status.json) | ${idx:-not exposed} $( [ -n "$idx" ] && awk -v v="$idx" 'BEGIN { printf "(%.1f MiB)", v / 1048576 }') |"
		echo "| keys_indexed (.pcache/status.json) | ${keys:-not exposed} |"
		echo "| start to ready, that cache (median / min of $REPLAY_SAMPLES) | $(awk -v n="$mf" -v m="$nf" 'BEGIN { printf "%.3f s / %.3f s", n / 1e9, m / 1e9 }') |"
		echo "| start to ready, empty formatted cache (median / min of $REPLAY_SAMPLES) | $(awk -v n="$me" -v m="$ne" 'BEGIN { printf "%.3f s / %.3f s", n / 1e9, m / 1e9 }') |"
		echo "| **replay time** (difference of medians / of minimums) | $(awk -v a="$mf" -v b="$me" -v c="$nf" -v d="$ne" 'BEGIN { printf "%.3f s / %.3f s", (a - b) / 1e9, (c - d) / 1e9 }') |"
		echo
		echo "All samples (ns), filled: ${full[*]}; empty: ${empty[*]}."
		echo
		echo "\"Ready\" = the mount is in /proc/self/mountinfo and \`stat <mnt>/img\` succeeds, polled every 5 ms; daemon command: \`$(pc_cmd '<cache>' '<img>' '<mnt>'; show_cmd)\`."
	)
}

# ---- the zipf job's trace through reference policies ------------------------------------------

# zipf_trace: one more zipf4k_qd16 run on pc-zipf (after the rounds, so that tracing costs the
# measured runs nothing) with fio's --write_iolog; pcachefs's hit share over its measured part
# (counters at the end of the warm-up and at the end), and the hit ratios of LRU and FIFO
# (tests/tools/cache_sim) on the same trace, warm-up excluded (the ops in the first
# ZIPF_RAMP / (ZIPF_RAMP + RUNTIME) of the trace's time span), with the cache's data area
# (segments x segment size) and with gc_percent of it.
ZIPF_MD=
zipf_trace() {
	local c=pc-zipf mnt=$WORK_RUN/mnt-pc-zipf log=$WORK_RUN/zipf.iolog out=$WORK_RUN/zipf-trace.json
	local before after fpid data gcp warm pc sim sim_gc v
	[ -n "${DAEMON_PID[$c]:-}" ] && [ -x "$CACHE_SIM" ] || return 0
	FIO_FILE=${CFG_FILE[$c]} FIO_SIZE=${CFG_SIZE[$c]} FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP \
		FIO_ZIPF_RAMP=$ZIPF_RAMP fio --output-format=json --output="$out" --section=zipf4k_qd16 \
		--write_iolog="$log" "$JOBFILE" >/dev/null 2>&1 &
	fpid=$!
	sleep "$ZIPF_RAMP"
	before=$(pc_counters "$mnt")
	wait "$fpid" || { log "zipf trace run failed"; return 0; }
	after=$(pc_counters "$mnt")
	pc=$(echo "$before $after" | awk '{ h = $5 - $1; m = $6 - $2; if (h + m) printf "%.1f", 100 * h / (h + m) }')
	data=$(jq '.cache.seg_count * .cache.seg_size' "$mnt/.pcache/status.json")
	gcp=$(jq '.cache.gc_percent' "$mnt/.pcache/status.json")
	warm=$(awk -v f="$ZIPF_RAMP" -v r="$RUNTIME" '$3 == "read" || $3 == "write" { n++; t[n] = $1 }
		END { if (!n) { print 0; exit } cut = t[1] + (t[n] - t[1]) * f / (f + r)
		      for (i = 1; i <= n && t[i] < cut; i++) w++; print w + 0 }' "$log")
	sim=$("$CACHE_SIM" --cache "$data" --warmup "$warm" "$log" 2>&1) || { log "cache_sim failed: $sim"; return 0; }
	sim_gc=$("$CACHE_SIM" --cache $(( data * gcp / 100 / 4096 * 4096 )) --warmup "$warm" "$log" 2>&1) ||
		sim_gc=
	v=$(metric zipf4k_qd16 "$out" 2>/dev/null)
	ZIPF_MD=$(
		echo "### Hit ratio of the zipf job beside reference policies on the same trace"
		echo
		echo "One more zipf4k_qd16 run on pc-zipf after the rounds, traced with fio '--write_iolog' ($(fmt zipf4k_qd16 "$v") while traced); the trace replayed through 'build/tools/cache_sim --cache SIZE --warmup $warm' (its first $warm reads, the warm-up, only fill the cache; 4 KiB blocks, read and write allocate). pcachefs: its counters over the same measured part."
		echo
		echo "| policy | cache | hit ratio (bytes read) |"
		echo "|---|---|---|"
		echo "| pcachefs | $(awk -v d="$data" 'BEGIN { printf "%d MiB", d / 1048576 }') data area, gc_percent $gcp | ${pc:-?} % |"
		echo "$sim" | awk -v d="$data" '$2 == "hit" { printf "| %s | %d MiB | %s |\n", toupper($1), d / 1048576, $3 }'
		[ -n "$sim_gc" ] && echo "$sim_gc" | awk -v d="$(( data * gcp / 100 / 4096 * 4096 ))" '$2 == "hit" { printf "| %s | %d MiB (gc_percent of it) | %s |\n", toupper($1), d / 1048576, $3 }'
	)
	rm -f "$log"
}

# ---- scan resistance --------------------------------------------------------------------------

# zipf_hits SECONDS_WARM SECONDS: run the zipf job on pc-zipf with a fixed seed (the same hot
# set every time) for SECONDS_WARM + SECONDS; echo the hit share (%) over the last SECONDS.
zipf_hits() {
	local mnt=$WORK_RUN/mnt-pc-zipf before after fpid
	FIO_FILE=${CFG_FILE[pc-zipf]} FIO_SIZE=${CFG_SIZE[pc-zipf]} FIO_RUNTIME=$2 FIO_RAMP=0 \
		FIO_ZIPF_RAMP=$1 fio --output-format=json --output="$WORK_RUN/scan-zipf.json" \
		--section=zipf4k_qd16 --randrepeat=1 --randseed=4242 "$JOBFILE" >/dev/null 2>&1 &
	fpid=$!
	sleep "$1"
	before=$(pc_counters "$mnt")
	wait "$fpid" || return 1
	after=$(pc_counters "$mnt")
	echo "$before $after" | awk '{ h = $5 - $1; m = $6 - $2; if (h + m) printf "%.1f\n", 100 * h / (h + m) }'
}

# scan_check CUTOFF: the zipf hit share in 3 s of a warm cache, then one sequential read pass
# (1 MiB reads, QD4) over the 2 GiB the zipf job does not favour (the image's second half; the
# hot set is hashed over the whole image), then the hit share of the next 3 s.
SCAN_MD=
scan_check() {
	local cut=$1 mnt=$WORK_RUN/mnt-pc-zipf h0 h1 t0 t1
	echo "$cut" > "$mnt/.pcache/images/img/sequential_cutoff" || return 1
	h0=$(zipf_hits "$ZIPF_RAMP" 3) || return 1
	t0=$(date +%s.%N)
	fio --name=scan --filename="${CFG_FILE[pc-zipf]}" --rw=read --bs=1m --direct=1 \
		--ioengine=libaio --iodepth=4 --offset=2g --size=2g >/dev/null 2>&1 || return 1
	t1=$(date +%s.%N)
	h1=$(zipf_hits 0 3) || return 1
	SCAN_MD+="| $cut | $h0 % | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f s", b - a }') | $h1 % | $(awk -v a="$h0" -v b="$h1" 'BEGIN { printf "%+.1f", b - a }') |"$'\n'
}

# ---- fair shares ------------------------------------------------------------------------------

# share_check SHARE: the zipf job on pc-zipf's image (fixed seed, as zipf_hits) while a second
# image "w" on the same mount takes random 4 KiB writes at full speed (QD16) with max_share
# SHARE (0 = no cap, "alone" = no writer); appends a row with the zipf hit share of the last 3 s.
SHARE_MD=
share_check() {
	local mnt=$WORK_RUN/mnt-pc-zipf share=$1 h wpid=
	if [ "$share" != alone ]; then
		echo "$share" > "$mnt/.pcache/images/w/max_share" || return 1
		fio --name=burst --filename="$mnt/w" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio \
			--iodepth=16 --size="$MISS_SIZE" --time_based --runtime=$((ZIPF_RAMP + 4)) >/dev/null 2>&1 &
		wpid=$!
	fi
	h=$(zipf_hits "$ZIPF_RAMP" 3) || return 1
	[ -z "$wpid" ] || wait "$wpid" || return 1
	[ "$share" = alone ] && SHARE_ALONE=$h
	SHARE_MD+="| $share | $h % | $(awk -v a="$h" -v b="${SHARE_ALONE:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }') |"
	[ "$share" = alone ] || SHARE_MD+=" $(jq -r '.images[] | select(.name == "w") | "\(.dirty_bytes / 1048576 | floor) MiB dirty, \(.cached_bytes / 1048576 | floor) MiB cached, \(.share_bypass_bytes / 1048576 | floor) MiB around the cache"' "$mnt/.pcache/status.json") |"
	SHARE_MD+=$'\n'
	echo 1 > "$mnt/.pcache/images/w/flush" 2>/dev/null || true
}

share_checks() {
	local mnt=$WORK_RUN/mnt-pc-zipf s
	truncate -s "$MISS_SIZE" "$WORK_DISK/w.img" || return 1
	echo "w:$WORK_DISK/w.img" > "$mnt/.pcache/attach" || return 1
	for s in alone 30 0; do share_check "$s" || log "share check ($s) failed"; done
	echo w > "$mnt/.pcache/detach" || log "detaching w failed"
	rm -f "$WORK_DISK/w.img"
}

# ---- hit ratio by workload, on the engine itself ----------------------------------------------

# trace_rows: fio traces (its null engine: the access pattern only) replayed through the engine
# (tests/tools/trace_engine: a 1 GiB cache in /dev/shm, GC and writeback running, copy-forward
# on and off) and through cache_sim's policies at the same data area; the first 4/7 of each trace
# warm the cache.
TRACE_MD=
trace_rows() {
	local spec name size dist extra log ops warm on off data sim
	[ -x "$TRACE_ENGINE" ] && [ -x "$CACHE_SIM" ] || return 0
	log=$WORK_RUN/trace.iolog
	for spec in "zipf:1.1, 4 GiB|4g|zipf:1.1|" "zipf:0.8, 4 GiB|4g|zipf:0.8|" \
		    "uniform, 2 GiB (2:1)|2g||--norandommap"; do
		IFS='|' read -r name size dist extra <<< "$spec"
		rm -f "$log" # fio appends to an existing iolog
		# shellcheck disable=SC2086 # extra is one option or none
		fio --name=t --ioengine=null --size="$size" --io_size=$(( ${size%g} * 6 ))g \
			--filename="$WORK_RUN/trace-file" --rw=randread --bs=4k \
			${dist:+--random_distribution=$dist} $extra --randseed=4242 \
			--write_iolog="$log" --output=/dev/null >/dev/null 2>&1 || { log "trace $name failed"; continue; }
		ops=$(grep -c ' read ' "$log")
		warm=$(( ops * 4 / 7 ))
		on=$("$TRACE_ENGINE" --cache 1g --warmup "$warm" --dir "$SHM_DIR" "$log" 2>&1 | head -1)
		off=$("$TRACE_ENGINE" --cache 1g --warmup "$warm" --dir "$SHM_DIR" --no-copy "$log" 2>&1 | head -1)
		data=$(echo "$on" | sed -n 's/.*data area \([0-9]*\) bytes.*/\1/p')
		[ -n "$data" ] || { log "trace_engine failed: $on"; continue; }
		sim=$("$CACHE_SIM" --cache "$data" --warmup "$warm" "$log" 2>&1)
		TRACE_MD+="| $name | $(echo "$on" | awk '{ print $3 }') | $(echo "$off" | awk '{ print $3 }') | $(echo "$sim" | awk '$1 == "lru" { print $3 }') | $(echo "$sim" | awk '$1 == "fifo" { print $3 }') | $(echo "$sim" | awk '$1 == "clock3" { print $3 }') | $(echo "$on" | sed -n 's/.*: \([0-9.]*\) bytes copied per byte read.*/\1/p') |"$'\n'
	done
	TRACE_DATA=${data:-}
	rm -f "$log" "$WORK_RUN/trace-file"
}

# ---- profile --------------------------------------------------------------------------------

PROFILE_MD=
profile_job() { # profile_job [CONFIG:]JOB: perf record a pcachefs daemon (default pc-hit) during one run of JOB
	local c=pc-hit j=$1 pid out fpid
	case $1 in *:*) c=${1%%:*}; j=${1#*:} ;; esac
	out=$WORK_RUN/perf-$c-$j
	case $c in
	pc-hit|pc-hit-st)
		[ -n "${DAEMON_PID[$c]:-}" ] || return 0
		case $j in rr*|sr*) pc_prepare "$c" ;; esac
		;;
	pc-miss)
		[ -n "${CFG_FILE[$c]:-}" ] || return 0
		new_cache "$WORK_SHM/miss.cache" $MISS_CACHE_SIZE
		pc_start pc-miss "$WORK_SHM/miss.cache" "$WORK_DISK/miss.img" || return 0
		;;
	*) log "cannot profile $c"; return 0 ;;
	esac
	pid=${DAEMON_PID[$c]}
	FIO_FILE=${CFG_FILE[$c]} FIO_SIZE=${CFG_SIZE[$c]} FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP \
		fio --output-format=json --output="$out.json" --section="$j" "$JOBFILE" >/dev/null 2>&1 &
	fpid=$!
	sleep "$RAMP"
	perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$out.data" \
		-- sleep "$((RUNTIME > 1 ? RUNTIME - 1 : 1))" >/dev/null 2>&1
	wait "$fpid"
	if [ "$c" = pc-miss ]; then daemon_stop pc-miss; rm -f "$WORK_SHM/miss.cache"; fi
	PROFILE_MD+=$'\n'"<details><summary>$j on $c ($(fmt "$j" "$(metric "$j" "$out.json" 2>/dev/null)") while profiled)</summary>"$'\n\n```\n'
	PROFILE_MD+="self time, top 20:"$'\n'
	PROFILE_MD+=$(perf report -i "$out.data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null |
		grep -E '^ +[0-9]' | head -20 | sed 's/ *$//')
	PROFILE_MD+=$'\n\n'"including callees, pcachefs and libfuse functions, top 20:"$'\n'
	PROFILE_MD+=$(perf report -i "$out.data" --stdio --children -g none --sort dso,symbol 2>/dev/null |
		grep -E '^ +[0-9].*(pcachefs|libfuse)' | head -20 | sed 's/ *$//')
	PROFILE_MD+=$'\n```\n</details>\n'
	rm -f "$out.data"
}

# ---- main -----------------------------------------------------------------------------------

for t in fio jq awk; do command -v $t >/dev/null || { log "$t not installed"; exit 1; }; done
WORK_DISK=$(mktemp -d "$DISK_DIR/pcache-bench-fuse.XXXXXX") || exit 1
WORK_SHM=$(mktemp -d "$SHM_DIR/pcache-bench-fuse.XXXXXX") || exit 1
WORK_RUN=$(mktemp -d /tmp/pcache-bench-fuse.XXXXXX) || exit 1
mkdir -p "$WORK_RUN/json" "$WORK_RUN/bin"
# Run private copies of the binaries: a rebuild during the bench then changes nothing, and perf
# still finds the symbols of the binary that ran.
for b in PCACHEFS CEILINGFS; do
	if [ -x "${!b}" ]; then cp -p "${!b}" "$WORK_RUN/bin/" && printf -v "$b" '%s' "$WORK_RUN/bin/$(basename "${!b}")"; fi
done
build_rev=$(git -C "$top" rev-parse --short HEAD 2>/dev/null)
: > "$WORK_RUN/results.tsv"
: > "$WORK_RUN/pcstats.tsv"
: > "$WORK_RUN/disk.tsv"
DISK_STAT=$(disk_stat_file)
CLK_TCK=$(getconf CLK_TCK)
t_start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

active=()
for c in $CONFIGS; do
	log "setting up $c"
	if setup_config "$c"; then active+=("$c"); else log "$c skipped: ${CFG_NOTE[$c]:-setup failed}"; fi
done
if [ "${#active[@]}" -eq 0 ]; then
	log "no configuration could run"
	{
		echo "## FUSE level (contrib/bench/bench-fuse.sh)"
		echo
		echo "**Not measured**: no configuration could run."
		for c in $CONFIGS; do echo "- $c: ${CFG_NOTE[$c]:-setup failed}"; done
	} > "$BENCH_OUT/fuse.md"
	exit 1
fi

round_loads=()
for r in $(seq 1 "$ROUNDS"); do
	round_loads+=("$(cut -d' ' -f1 /proc/loadavg)")
	# pc-hit rows measure hits in a steady state: write back what the previous round's writes
	# left dirty (so no writeback runs behind the reads), then re-read the whole image so that
	# whatever those writes pushed out of the cache is cached again.
	for c in pc-hit pc-hit-st; do
		[ -n "${DAEMON_PID[$c]:-}" ] && pc_prepare "$c"
	done
	# Rotate the configuration order every round.
	n=${#active[@]}; order=()
	for i in $(seq 0 $((n - 1))); do order+=("${active[$(( (i + r - 1) % n ))]}"); done
	for j in $EXEC_JOBS; do
		for c in "${order[@]}"; do
			cfg_runs_job "$c" "$j" && run_one "$r" "$j" "$c"
		done
	done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

if [ "${FUSE_PROFILE:-}" = auto ]; then
	# Profile every pcachefs configuration and job that missed a target.
	FUSE_PROFILE=$(for t in "${TARGETS[@]}"; do
		IFS='|' read -r _ j c ref min <<< "$t"
		target_missed "$j" "$c" "$ref" "$min" && echo "$c:$j"
	done | sort -u | tr '\n' ' ')
	[ -n "$FUSE_PROFILE" ] || log "no target missed: nothing to profile"
fi
case " ${active[*]} " in *" pc-zipf "*)
	log "zipf trace"; zipf_trace
	log "scan resistance"
	for cut in 4194304 0; do scan_check "$cut" || log "scan check (cutoff $cut) failed"; done
	log "fair shares"; share_checks || log "share checks failed"
	;;
esac
log "hit ratio by workload (engine replay)"; trace_rows
if [ -n "${FUSE_PROFILE:-}" ] && ! command -v perf >/dev/null; then
	NOTES+=("perf is not installed: no profiles.")
elif [ -n "${FUSE_PROFILE:-}" ]; then
	for j in $FUSE_PROFILE; do log "profiling $j"; profile_job "$j"; done
fi

# Stop the long-running daemons now; the memory test needs the RAM.
for c in pc-hit pc-hit-st pc-wt pc-zipf ceiling qsd qsd-shm; do daemon_stop "$c"; done
rm -f "$WORK_SHM"/*.img "$WORK_SHM"/*.cache "$WORK_SHM/shm.file"

if [ "${FUSE_SKIP_RSS:-0}" != 1 ] && pcachefs_works; then
	log "memory and replay"
	rss_and_replay || NOTES+=("The memory/replay measurement failed (pcachefs did not start or the fill failed).")
fi
t_total=$(( $(date +%s) - t_start ))

# ---- report ---------------------------------------------------------------------------------

md=$BENCH_OUT/fuse.md
shown=()
for c in $ALL_CONFIGS; do
	grep -q " $c " "$WORK_RUN/results.tsv" && shown+=("$c")
done
{
	echo "## FUSE level (contrib/bench/bench-fuse.sh)"
	echo
	echo "fio, O_DIRECT, medians of $ROUNDS interleaved round(s) of ${RUNTIME} s runs after ${RAMP} s ramp; 4 KiB columns in IOPS, 1 MiB columns in GB/s (10^9 B/s). Whole bench: ${t_total} s."
	echo "Load average (1/5/15 min) at the start: $load_start; at the end: $load_end; 1-min load at each round's start: ${round_loads[*]}."
	echo "Other work (builds, tests of other developers) may have been running on this 2-core machine during the run: compare rows of the same run, not runs."
	if [ "$PCACHE_BUILD" -ef "$top/build" ]; then
		echo "Binaries: build/pcachefs and build/tools/ceilingfs of the working tree at commit ${build_rev:-?} (copied at the start of the run)."
	else
		echo "Binaries: pcachefs and tools/ceilingfs from PCACHE_BUILD=$PCACHE_BUILD (this script's tree is at commit ${build_rev:-?}; copied at the start of the run)."
	fi
	echo
	echo "| config | ${JOBS// / | } |"
	echo "|---|$(for j in $JOBS; do printf -- '---|'; done)"
	for c in "${shown[@]}"; do
		printf '| %s |' "$c"
		for j in $JOBS; do printf ' %s |' "$(fmt "$j" "$(median "$j" "$c")")"; done
		echo
	done
	echo
	echo "Rows:"
	pc_cmd "$SHM_DIR/<tmp>/pc-hit.cache" "$DISK_DIR/<tmp>/pc-hit.img" '<mnt>'
	echo "- pc-hit: \`$(show_cmd) -o sequential_cutoff=0\` (so that the warm-up pass, a sequential read, caches the whole image), cache file $CACHE_SIZE in $SHM_DIR (fresh, sparse), 1 GiB image on disk; the image is read fully (\`--section=warm\` of fio/fuse-prep.fio) after mounting and before every round, so reads are cache hits. Writes land in the cache (their writeback to the image runs in the background)."
	echo "- pc-hit-st: the same with \`-s\` (single-threaded session loop), QD16 jobs only."
	echo "- pc-miss: the same command on a fresh $MISS_CACHE_SIZE cache file and a fresh daemon for every run, image = the 4 GiB file of the raw row (O_DIRECT in the backing layer); fio covers all 4 GiB (FIO_SIZE=4g), and fio's random map never reads a block twice in a pass, so every read in the window is a miss."
	echo "- pc-wt: the pc-hit command with \`-o cache_mode=writethrough\`, cache file $CACHE_SIZE in $SHM_DIR, its own 4 GiB image on disk (FIO_SIZE=4g, as raw): every write reaches the image before it is acknowledged."
	echo "- pc-zipf: the pc-hit command on a $ZIPF_CACHE_SIZE cache file and its own 4 GiB image on disk (FIO_SIZE=4g): zipf4k_qd16 runs ${ZIPF_RAMP} s of warm-up, then the ${RUNTIME} s measured, and the read hits below show the share of bytes the cache served."
	echo "- ceiling: \`build/tools/ceilingfs -f -o size=1g <mnt>\` (RAM-backed, the same libfuse session settings as pcachefs: fuse/common_session.c)."
	qsd_cmd "$DISK_DIR/<tmp>/qsd.img" '<mnt-file>'
	echo "- qsd: \`$(show_cmd)\` (qemu-storage-daemon $(qemu-storage-daemon --version 2>/dev/null | head -1 | awk '{ print $3 }')), raw image on disk."
	echo "- qsd-shm: the same export of an image in $SHM_DIR (what QEMU's FUSE export reaches with RAM behind it)."
	echo "- raw: fio straight on the 4 GiB backing file on disk ($DISK_DIR, $(findmnt -no FSTYPE -T "$DISK_DIR" 2>/dev/null)), O_DIRECT, FIO_SIZE=4g."
	echo "- shm: fio on a 1 GiB file in $SHM_DIR (memory speed, no FUSE)."
	echo "- Every image and file is filled with data first (\`--section=fill\`), so no read hits a hole."
	for c in $CONFIGS; do
		[ -n "${CFG_NOTE[$c]:-}" ] && echo "- **$c not measured**: ${CFG_NOTE[$c]}."
	done
	echo
	echo "Jobs (contrib/bench/fio/fuse.fio): rr4k/rw4k = 4 KiB random read/write, _j1 = 1 job psync QD1, _j2 = 2 jobs psync QD1, _qd16 = 1 job libaio QD16; sr1m/sw1m = 1 MiB sequential read/write, 1 job libaio QD4; fs4k = 4 KiB random write each followed by fdatasync (psync), 1 job / 4 jobs on one file (write IOPS); zipf4k_qd16 = 4 KiB random reads, zipf 1.1 popularity, libaio QD16, ${ZIPF_RAMP} s warm-up; every job is O_DIRECT, time based, randrepeat=0. The command of each run (JOB = the column; <run>, <disk>, <shm> = this run's temporary directories under /tmp, $DISK_DIR, $SHM_DIR):"
	echo
	echo '```'
	for c in "${shown[@]}"; do
		printf '%-9s ' "$c:"
		fio_cmdline "${CFG_FILE[$c]}" "${CFG_SIZE[$c]}" JOB | sed "s|$WORK_RUN|<run>|g; s|$WORK_DISK|<disk>|g; s|$WORK_SHM|<shm>|g"
	done
	echo '```'
	echo
	if [ -s "$WORK_RUN/pcstats.tsv" ]; then
		echo "pcachefs counters over the measured runs (from .pcache/status.json, summed over the rounds, ramp included except the zipf job's warm-up): share of the bytes read that were cache hits, and how often and how long writers waited for cache space (back-pressure while GC and writeback free segments):"
		echo
		echo "| config | job | read hits | writer waits | wait time |"
		echo "|---|---|---|---|---|"
		awk '{ k = $3 " " $2; h[k] += $4; m[k] += $5; w[k] += $6; t[k] += $7; if (!(k in o)) { o[k] = ++n; key[n] = k } }
		     END { for (i = 1; i <= n; i++) { k = key[i]; split(k, a, " ")
			rd = h[k] + m[k]; hs = rd ? sprintf("%.1f %%", 100 * h[k] / rd) : "-"
			printf "| %s | %s | %s | %d | %.2f s |\n", a[1], a[2], hs, w[k], t[k] / 1e9 } }' "$WORK_RUN/pcstats.tsv" |
			sort -t'|' -k2,2 -s
		echo
	fi
	if [ -s "$WORK_RUN/disk.tsv" ]; then
		echo "The disk's view of the 4 KiB random reads on disk-backed configurations (medians over the rounds; ${DISK_STAT#/sys/class/block/} counters and /proc/stat around each whole fio run). A read reaches the disk once in each of these configurations, so the disk's throughput is the average number of reads in flight at the disk divided by its latency: what fio's queue depth loses to the time a read spends outside the disk shows up as fewer reads in flight there. CPU per read counts the whole machine (fio, kernel and daemon):"
		echo
		echo "| job | config | reads in flight at the disk | disk read latency | fio completion latency | machine CPU busy | CPU per read |"
		echo "|---|---|---|---|---|---|---|"
		for j in $JOBS; do
			for c in pc-miss qsd raw; do
				awk -v j="$j" -v c="$c" '$2 == j && $3 == c {
						n++; f[n] = $5; l[n] = $6; k[n] = $7; b[n] = $8; u[n] = $9 }
					function med(a, m,   t, i, p, v) { # median of a[1..m], each column on its own
						for (i = 1; i <= m; i++) {
							v = a[i]
							for (p = i - 1; p >= 1 && t[p] > v; p--) t[p + 1] = t[p]
							t[p + 1] = v
						}
						return (m % 2) ? t[(m + 1) / 2] : (t[m / 2] + t[m / 2 + 1]) / 2 }
					END { if (n) printf "| %s | %s | %.1f | %.0f us | %.0f us | %.0f %% | %.1f us |\n", j, c,
						med(f, n), med(l, n), med(k, n), med(b, n), med(u, n) }' "$WORK_RUN/disk.tsv"
			done
		done
		echo
	fi
	echo "### Targets"
	echo
	echo "| target | job | pcachefs | reference | ratio | target | verdict |"
	echo "|---|---|---|---|---|---|---|"
	for t in "${TARGETS[@]}"; do
		IFS='|' read -r label j c ref min <<< "$t"
		target_row "$label" "$j" "$c" "$ref" "$min"
	done
	zipf_target_row
	echo
	echo "The targets against qsd use the qsd row (the same kind of image on the same disk, as a user would run it); the qsd-shm lines show the margin against QEMU's export with RAM behind it."
	echo
	echo "![IOPS per job and configuration](bench-fuse-iops.png)"
	echo "![1 MiB bandwidth per configuration](bench-fuse-bw.png)"
	if [ -n "$ZIPF_MD" ]; then echo; echo "$ZIPF_MD"; fi
	if [ -n "$SCAN_MD" ]; then
		echo
		echo "### Scan resistance: the zipf hit share around one sequential read pass"
		echo
		echo "On pc-zipf (4 GiB image, 1 GiB cache): the zipf job with a fixed seed (the same hot set each time) for ${ZIPF_RAMP} s + 3 s (hit share of the last 3 s), then one sequential pass of 1 MiB reads (QD4) over the image's second 2 GiB, then the zipf job again for 3 s. Target (issue 18): within 3 points with the default sequential_cutoff; 0 (every read cached) shows what the pass did before the cutoff existed."
		echo
		echo "| sequential_cutoff | zipf hits before | the pass | zipf hits after | change (points) |"
		echo "|---|---|---|---|---|"
		printf '%s' "$SCAN_MD"
	fi
	if [ -n "$SHARE_MD" ]; then
		echo
		echo "### Fair shares: the zipf job beside a write burst on another image"
		echo
		echo "On pc-zipf's mount, a second image w (4 GiB file on the same disk) takes random 4 KiB O_DIRECT writes at QD16 for the whole zipf run (${ZIPF_RAMP} s + 3 s, hit share of the last 3 s); w's max_share is set as in the first column (0 = no cap). Target (issue 18): with a 30 % share the zipf image keeps >= 0.90 of its hit share alone."
		echo
		echo "| w's max_share | zipf hit share | of alone | w at the end (around the cache: since its attach) |"
		echo "|---|---|---|---|"
		printf '%s' "$SHARE_MD"
	fi
	if [ -n "$TRACE_MD" ]; then
		echo
		echo "### Hit ratio by workload, on the engine (no FUSE)"
		echo
		echo "fio's null engine writes the trace (4 KiB random reads, seed 4242, 6 passes' worth of I/O); build/tools/trace_engine replays it through the engine with a 1 GiB cache (data area $(awk -v d="${TRACE_DATA:-0}" 'BEGIN { printf "%d MiB", d / 1048576 }'), gc_percent auto, background threads running), build/tools/cache_sim through the reference policies at the same data area; the first 4/7 of the trace only warm the cache. Target (issue 18): pcachefs >= LRU."
		echo
		echo "| trace | pcachefs | pcachefs, no copy-forward | LRU | FIFO | CLOCK, 2-bit count | copied per byte read |"
		echo "|---|---|---|---|---|---|---|"
		printf '%s' "$TRACE_MD"
	fi
	if [ -n "$RSS_MD" ]; then echo; echo "$RSS_MD"; fi
	if [ -n "$PROFILE_MD" ]; then
		echo
		echo "### Profiles (perf record -e cpu-clock -F 499 --call-graph dwarf -p <pcachefs pid> during one run of the job, after its ramp)"
		echo "$PROFILE_MD"
	fi
	if [ "$fio_failures" -gt 0 ]; then echo; echo "**$fio_failures fio run(s) failed**; their values are left out of the medians."; fi
	for n in "${NOTES[@]}"; do echo; echo "$n"; done
	echo
	echo "<details><summary>All samples (round job config value)</summary>"
	echo
	echo '```'
	cat "$WORK_RUN/results.tsv"
	echo '```'
	echo "</details>"
} > "$md"

# ---- charts ---------------------------------------------------------------------------------

chart_data() { # chart_data JOBLIST SCALE > file: the configurations with a value for any job
	local j c cols=()
	for c in "${shown[@]}"; do
		for j in $1; do [ -n "$(median "$j" "$c")" ] && { cols+=("$c"); break; }; done
	done
	printf 'job'; for c in "${cols[@]}"; do printf ' %s' "$c"; done; echo
	for j in $1; do
		printf '%s' "$j"
		for c in "${cols[@]}"; do
			v=$(median "$j" "$c")
			if [ -n "$v" ]; then printf ' %s' "$(awk -v v="$v" -v s="$2" 'BEGIN { printf "%.3f", v / s }')"; else printf ' -'; fi
		done
		echo
	done
}
if command -v gnuplot >/dev/null; then
	j4k=$(for j in $JOBS; do case $j in *1m) ;; *) printf '%s ' "$j" ;; esac; done)
	j1m=$(for j in $JOBS; do case $j in *1m) printf '%s ' "$j" ;; esac; done)
	if [ -n "$j4k" ]; then
		chart_data "$j4k" 1 > "$WORK_RUN/iops.dat"
		gnuplot -e "datafile='$WORK_RUN/iops.dat'; outfile='$BENCH_DIR/bench-fuse-iops.png'; ytitle='IOPS (median, log scale)'; charttitle='4 KiB random I/O, O_DIRECT (bench-fuse.sh)'; logy=1" "$PLOT" ||
			log "gnuplot failed (iops)"
	fi
	if [ -n "$j1m" ]; then
		chart_data "$j1m" 1e9 > "$WORK_RUN/bw.dat"
		gnuplot -e "datafile='$WORK_RUN/bw.dat'; outfile='$BENCH_DIR/bench-fuse-bw.png'; ytitle='GB/s (median)'; charttitle='1 MiB sequential I/O, libaio QD4, O_DIRECT (bench-fuse.sh)'" "$PLOT" ||
			log "gnuplot failed (bw)"
	fi
else
	log "gnuplot not installed: no charts"
fi

log "wrote $md"
[ "$standalone" = 1 ] && cat "$md"
[ "$fio_failures" -eq 0 ]
