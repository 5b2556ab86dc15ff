# lib.sh -- helpers for behaviour tests; source it first: . "$TESTS_DIR/behaviour/lib.sh"
#
# The runner sets SCRATCH (private directory), PCACHE_BUILD (built binaries) and TESTS_DIR.
# Conventions: exit 0 pass, 1 fail, 77 skip. Every daemon a test starts goes through
# start_bg / pc_mount so its PID is recorded in $SCRATCH/.pids and the runner can kill exactly
# it. Tests still clean up themselves (trap on EXIT); the runner is the safety net.

set -u
: "${SCRATCH:?run through tests/run-behaviour.sh}"
: "${PCACHE_BUILD:?}"
PCACHEFS=$PCACHE_BUILD/pcachefs
PCACHECTL=$PCACHE_BUILD/pcachectl
TOOLS=$PCACHE_BUILD/tools

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $*"; exit 77; }
note() { echo "# $*"; }
need_cmd() { local c; for c in "$@"; do command -v "$c" >/dev/null 2>&1 || skip "$c not installed"; done; }
need_root() { [ "$(id -u)" -eq 0 ] || skip "needs root"; }
need_fuse() { [ -c /dev/fuse ] || skip "no /dev/fuse"; }

# expect_fail DESCRIPTION CMD...: the command must exit non-zero.
expect_fail() { local d=$1; shift; if "$@"; then fail "$d: command succeeded: $*"; fi; }

# start_bg LOGFILE CMD...: start a background process, record its PID, set BG_PID.
start_bg() {
	local logf=$1; shift
	"$@" >"$logf" 2>&1 &
	BG_PID=$!
	echo "$BG_PID" >> "$SCRATCH/.pids"
}

# wait_mounted DIR PID [SECONDS]: wait until DIR is a mount point; fail if PID dies first.
wait_mounted() {
	local dir=$1 pid=$2 n=$(( ${3:-20} * 10 ))
	while [ $n -gt 0 ]; do
		mountpoint -q "$dir" && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1; n=$((n - 1))
	done
	return 1
}

# wait_gone PID [SECONDS]: wait for a process to exit.
wait_gone() {
	local pid=$1 n=$(( ${2:-20} * 10 ))
	while [ $n -gt 0 ]; do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1; n=$((n - 1))
	done
	return 1
}

# pc_mount MOUNTDIR ARGS...: start pcachefs -f on MOUNTDIR, set PC_PID, wait for the mount.
pc_mount() {
	local mnt=$1; shift
	mkdir -p "$mnt"
	start_bg "$SCRATCH/pcachefs.$(basename "$mnt").log" "$PCACHEFS" -f "$@" "$mnt"
	PC_PID=$BG_PID
	wait_mounted "$mnt" "$PC_PID" || { cat "$SCRATCH/pcachefs.$(basename "$mnt").log" >&2; fail "pcachefs did not mount $mnt"; }
}

# pc_umount MOUNTDIR: clean unmount and wait for the daemon to exit.
pc_umount() {
	local mnt=$1
	umount "$mnt" || fusermount3 -u "$mnt" || return 1
	wait_gone "$PC_PID" 30 || fail "pcachefs $PC_PID did not exit after unmount"
}

# pc_kill9 MOUNTDIR: kill -9 the daemon and drop its dead mount.
pc_kill9() {
	local mnt=$1
	kill -9 "$PC_PID" 2>/dev/null
	wait_gone "$PC_PID" 10
	umount -l "$mnt" 2>/dev/null || true
}
