#!/bin/bash
# run-behaviour.sh -- run the behaviour tests (tests/behaviour/*.sh), each in isolation.
#
# Usage: tests/run-behaviour.sh [NAME...]     (PCACHE_BUILD=dir of the built binaries)
#
# Every test runs in its own session (setsid) with a private scratch directory ($SCRATCH), a
# per-test timeout (a "# Timeout: SECONDS" line in the test, default 300) and its output in a
# log. Exit status 0 = pass, 77 = skip, anything else = fail. Whatever the outcome, the runner
# then cleans up what the test may have left: mounts under $SCRATCH (deepest first), loop
# devices backed by files under $SCRATCH, and the processes of the test's session or listed in
# $SCRATCH/.pids (only those: never by name). Logs of failed tests are kept in
# $PCACHE_BUILD/test-logs/ (of every test with PCACHE_KEEP_LOGS=1, e.g. for the figures a soak
# notes). The last line is "N passed, N failed, N skipped".
set -u

here=$(cd "$(dirname "$0")" && pwd)
build=${PCACHE_BUILD:-$here/../build}
logdir=$build/test-logs
mkdir -p "$logdir"

if [ $# -gt 0 ]; then
	tests=()
	for n in "$@"; do tests+=("$here/behaviour/${n%.sh}.sh"); done
else
	tests=()
	for t in "$here"/behaviour/[0-9a-z]*.sh; do
		[ "$(basename "$t")" = lib.sh ] || tests+=("$t")   # lib.sh is the helpers, not a test
	done
fi

pass=0 fail=0 skip=0 failed_names=""

cleanup_scratch() {
	local scratch=$1 sid=$2 m l p i
	# 1. non-FUSE mounts under scratch, deepest first (ext4 on a loop on the FUSE mount).
	for m in $(findmnt -rn -o TARGET,FSTYPE | awk -v s="$scratch" 'index($1, s) == 1 && $2 !~ /^fuse/ {print $1}' | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	# 2. loop devices whose backing file lies under scratch.
	for l in $(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v s="$scratch" 'index($2, s) == 1 {print $1}'); do
		losetup -d "$l" 2>/dev/null
	done
	# 3. the test's processes: its session, and the PIDs it recorded.
	pkill -TERM -s "$sid" 2>/dev/null
	if [ -f "$scratch/.pids" ]; then
		while read -r p; do kill -TERM "$p" 2>/dev/null; done < "$scratch/.pids"
	fi
	for i in 1 2 3 4 5 6 7 8 9 10; do
		pgrep -s "$sid" >/dev/null 2>&1 || break
		sleep 0.2
	done
	pkill -KILL -s "$sid" 2>/dev/null
	if [ -f "$scratch/.pids" ]; then
		while read -r p; do kill -KILL "$p" 2>/dev/null; done < "$scratch/.pids"
	fi
	# 4. whatever is still mounted (a killed FUSE daemon leaves its mount behind).
	for m in $(findmnt -rn -o TARGET | awk -v s="$scratch" 'index($1, s) == 1' | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
}

for t in "${tests[@]}"; do
	name=$(basename "$t" .sh)
	if [ ! -f "$t" ]; then
		echo "FAIL $name (no such test)"; fail=$((fail + 1)); failed_names="$failed_names $name"; continue
	fi
	tmo=$(sed -n 's/^# Timeout: *\([0-9]*\).*/\1/p' "$t" | head -1)
	[ -n "$tmo" ] || tmo=300
	[ -n "${PCACHE_SOAK:-}" ] && tmo=$((tmo * 10))
	scratch=$(mktemp -d /tmp/pcache-bt."$name".XXXXXX)
	log=$scratch/log
	start=$(date +%s)
	# The test runs inside its scratch directory, so tools that drop files in the working
	# directory (fio's verify state, cores) never touch the source tree.
	setsid bash -c 'echo $$ > "$1/.sid"; cd "$1" || exit 1; exec timeout -k 10 "$2" env SCRATCH="$1" PCACHE_BUILD="$3" TESTS_DIR="$4" bash "$5"' \
		_ "$scratch" "$tmo" "$build" "$here" "$t" >"$log" 2>&1 </dev/null
	rc=$?
	sid=$(cat "$scratch/.sid" 2>/dev/null || echo 0)
	cleanup_scratch "$scratch" "$sid"
	secs=$(( $(date +%s) - start ))
	case $rc in
	0) echo "PASS $name (${secs}s)"; pass=$((pass + 1))
		[ -n "${PCACHE_KEEP_LOGS:-}" ] && cp "$log" "$logdir/$name.log" ;;
	77) echo "SKIP $name: $(tail -1 "$log")"; skip=$((skip + 1)) ;;
	*)
		[ $rc -eq 124 ] && echo "  (timed out after ${tmo}s)" >> "$log"
		echo "FAIL $name (exit $rc, ${secs}s), log kept in $logdir/$name.log:"
		tail -30 "$log" | sed 's/^/    /'
		cp "$log" "$logdir/$name.log"
		fail=$((fail + 1)); failed_names="$failed_names $name" ;;
	esac
	rm -rf "$scratch" 2>/dev/null || echo "  warning: could not remove $scratch"
done

[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "behaviour: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
