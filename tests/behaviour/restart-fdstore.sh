#!/bin/bash
# Description: as a systemd service with a file descriptor store (-o fdstore), the service
# manager keeps the mount's FUSE connection instead of a keeper. tests/tools/svc_fdstore plays
# systemd (FDSTORE=1, FDSTOREREMOVE=1, LISTEN_FDS on restart, NotifyAccess=main, Restart=).
# The store holds the connection, every worker's clone, the staging memory and the state, and
# no keeper runs. kill -9 while a writearound write stalls in the backing: the manager restarts
# the daemon, which takes the connection from LISTEN_FDS, the write is resent and applied, a file
# opened before the kill keeps working (its file handle too), the dead daemon's clones leave the
# store. An acknowledged, unflushed write survives kill -9. SIGUSR1 (systemctl reload) execs a
# new daemon in the same process with the connection. If the mount went away while no daemon
# ran, the next start mounts anew and empties the store. A clean unmount empties the store.
# Timeout: 150
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq
SVC=$TOOLS/svc_fdstore
[ -x "$SVC" ] || fail "svc_fdstore not built"

pc_shm 256M
MNT=$SCRATCH/mnt
FM=$SCRATCH/flaky
MLOG=$SCRATCH/manager.log
DLOG=$SCRATCH/daemons.log
HOLD=$SCRATCH/hold-restart
export PCACHEFS_RUN_DIR=$SCRATCH/run
mkdir -p "$MNT"
pc_image "$SCRATCH/w.raw" 16M
pc_image "$SCRATCH/b.raw" 16M 2
pc_flaky "$FM" "$SCRATCH/w.raw"
pc_cleanup_add pc_unmount_if "$MNT"

# -o fdstore needs the manager's socket
"$PCACHEFS" -f -o fdstore -o "cache=$CACHE,cache_size=128M" "$MNT" > "$SCRATCH/nosock.out" 2>&1 &&
	fail "-o fdstore started without \$NOTIFY_SOCKET"
grep -q "fdstore needs \$NOTIFY_SOCKET" "$SCRATCH/nosock.out" || { cat "$SCRATCH/nosock.out"; fail "no clear error for -o fdstore without a manager"; }

# ready_count: READY lines the manager logged so far
ready_count() { cat "$MLOG" 2>/dev/null | grep -c '^READY '; }
# wait_ready N: wait for the Nth READY=1; PC_PID = the daemon that sent it
wait_ready() {
	local n=300
	until [ "$(ready_count)" -ge "$1" ]; do
		n=$((n - 1)); [ $n -gt 0 ] || { cat "$MLOG" "$DLOG" >&2; fail "no READY=1 number $1"; }
		kill -0 "$SVC_PID" 2>/dev/null || { cat "$MLOG" "$DLOG" >&2; fail "the manager died"; }
		sleep 0.05
	done
	PC_PID=$(awk '$1 == "READY" { p = $2 } END { print p }' "$MLOG")
	echo "$PC_PID" >> "$SCRATCH/.pids"
}
# store_names: what the store holds now, one name per line
store_names() {
	local before
	before=$(grep -c '^STORE-NAMES' "$MLOG")
	kill -USR2 "$SVC_PID"
	local n=50
	until [ "$(grep -c '^STORE-NAMES' "$MLOG")" -gt "$before" ]; do
		n=$((n - 1)); [ $n -gt 0 ] || fail "the manager did not list its store"
		sleep 0.05
	done
	grep '^STORE-NAMES' "$MLOG" | tail -1 | tr ' ' '\n' | tail -n +2
}
# clones_only_of PID: every clone in the store belongs to daemon PID (and there is one)
clones_only_of() {
	local names
	names=$(store_names)
	echo "$names" | grep -q "^fuse-clone\.$1$" || { echo "$names"; fail "no clone of daemon $1 in the store"; }
	echo "$names" | grep '^fuse-clone\.' | grep -qv "^fuse-clone\.$1$" && { echo "$names"; fail "clones of an earlier daemon stay in the store"; }
	return 0
}
status() { jq -c "$1" "$MNT/.pcache/status.json"; }
# read7 BLOCK / write7 BLOCK FILE: 4 KiB at BLOCK through the open file on fd 7 (pread/pwrite:
# its offset stays where it is); perl-base is part of every Debian system
read7() { perl -e 'sysseek(STDIN, $ARGV[0] * 4096, 0) or die; sysread(STDIN, $b, 4096) == 4096 or die; print $b' "$1" <&7; }
write7() { perl -e 'open(F, "<", $ARGV[1]) or die; read(F, $b, 4096) == 4096 or die; sysseek(STDOUT, $ARGV[0] * 4096, 0) or die; syswrite(STDOUT, $b) == 4096 or die' "$1" "$2" >&7; }

CMD=(-o fdstore -o "cache=$CACHE,cache_size=128M" -o "image=w:$FM/image" -o "image=b:$SCRATCH/b.raw" -o cache_mode=writearound)
start_bg "$DLOG" "$SVC" "$SCRATCH/notify.sock" "$MLOG" 64 on-failure "$HOLD" -- "$PCACHEFS" -f "${CMD[@]}" "$MNT"
SVC_PID=$BG_PID
wait_ready 1
P1=$PC_PID
names=$(store_names)
for n in fuse stage state; do
	echo "$names" | grep -qx "$n" || { echo "$names"; fail "the store holds no $n"; }
done
[ "$(status .daemon.fdstore)" = true ] || fail "status does not say the fd store keeps the connection"
[ "$(status .daemon.keeper_pid)" = 0 ] || fail "a keeper runs beside the fd store"
[ -z "$(ls -A "$PCACHEFS_RUN_DIR" 2>/dev/null)" ] || fail "a keeper socket exists with the fd store"
grep -q "fd store" "$MNT/.pcache/status" || fail "status does not name the fd store"

# a file opened before the kills, used through the same open file (file handle) afterwards
exec 7<>"$MNT/b"
read7 7 > "$SCRATCH/b7.before" || fail "read through the open file"

# ---- kill -9 with a write inside the daemon (stalled in the backing)
pc_stalled_write "$FM" "$MNT/w"
DD=$STALL_PID
kill -9 "$P1"
echo clear > "$FM/.control"
wait_gone "$P1" 20 || fail "the killed daemon did not exit"
wait_ready 2
P2=$PC_PID
[ "$P2" != "$P1" ] || fail "no new daemon after the kill"
grep -q "^START $P2 [1-9][0-9]* fds" "$MLOG" || fail "the restarted daemon got no fds from the store"
pc_stalled_write_done "$MNT/w" "$SCRATCH/w.raw"
[ "$(status '.daemon.taken_over and .daemon.fdstore and .daemon.resent_requests >= 1')" = true ] ||
	{ status .daemon; fail "status: not taken over from the store, or nothing resent"; }
grep -q "taking $MNT over from pid $P1 (the fd store)" "$DLOG" || fail "no take-over from the fd store logged"
clones_only_of "$P2"
cmp "$SCRATCH/b7.before" <(read7 7) || fail "the file opened before the kill reads other data"
note "kill -9: $(status .daemon)"

# ---- an acknowledged, unflushed write through the open file survives kill -9
pc_ctl "$MNT" images/b/cache_mode writeback
head -c 4096 /dev/urandom > "$SCRATCH/small"
write7 9 "$SCRATCH/small" || fail "write through the open file"
kill -9 "$P2"
wait_gone "$P2" 20 || fail "the killed daemon did not exit"
wait_ready 3
P3=$PC_PID
cmp "$SCRATCH/small" <(read7 9) || fail "an acknowledged write was lost with the daemon"
[ "$(status '.daemon.staged_recovered >= 1')" = true ] || { status .daemon; fail "no staged keys were recovered"; }
clones_only_of "$P3"

# ---- SIGUSR1: a new start of the program in the same process takes the connection over
kill -USR1 "$P3"
wait_ready 4
[ "$PC_PID" = "$P3" ] || fail "the hand-over changed the main process ($P3 -> $PC_PID)"
grep -q "handed $MNT over" "$DLOG" || fail "no hand-over logged"
[ "$(grep -c "taking $MNT over from pid $P3 (the fd store)" "$DLOG")" -ge 1 ] || fail "the exec'ed daemon did not take the connection over"
cmp "$SCRATCH/small" <(read7 9) || fail "the open file lost data across the hand-over"
[ "$(status .daemon.taken_over)" = true ] || fail "status: not taken over after the hand-over"
clones_only_of "$P3"
grep -q "^EXIT $P3" "$MLOG" && fail "the manager saw the main process exit during a reload"

# ---- the mount went away while no daemon ran: the next start mounts anew
exec 7<&-
touch "$HOLD"
kill -9 "$P3"
wait_gone "$P3" 20 || fail "the killed daemon did not exit"
umount -l "$MNT" || fail "lazy umount of the orphaned mount"
rm -f "$HOLD"
wait_ready 5
P5=$PC_PID
grep -q "not the mount of .* any more: mounting anew" "$DLOG" || { cat "$DLOG"; fail "the stale connection was not refused"; }
mountpoint -q "$MNT" || fail "not mounted anew"
[ "$(status .daemon.taken_over)" = false ] || fail "a stale connection was taken over"
cmp "$SCRATCH/small" <(dd if="$MNT/b" bs=4k skip=9 count=1 iflag=direct status=none) || fail "data lost across the new mount"
names=$(store_names)
echo "$names" | grep -q "^fuse-clone\.$P3$" && fail "the stale connection's clones stay in the store"
[ "$(echo "$names" | grep -cx fuse)" = 1 ] || { echo "$names"; fail "the store does not hold exactly the new connection"; }

# ---- a clean unmount empties the store; the manager then stops (Restart=on-failure)
umount "$MNT" || fail "umount"
wait_gone "$P5" 30 || fail "pcachefs did not exit after umount"
wait_gone "$SVC_PID" 10 || fail "the manager did not stop after a clean exit"
grep -q "^EXIT $P5 code 0$" "$MLOG" || fail "the daemon did not exit 0 at umount"
grep -q "^END 0$" "$MLOG" || { tail -5 "$MLOG"; fail "the store was not empty after a clean unmount"; }
note "5 starts: 2 kill -9, 1 reload, 1 stale mount, clean stop with an empty store"
exit 0
