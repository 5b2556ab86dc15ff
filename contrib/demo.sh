#!/bin/sh
# demo.sh -- the demo behind `make run` / `make stop-run`.
#
#   contrib/demo.sh          create demo/ (a 1 GiB cache file and a 256 MiB sample image with an
#                            ext4 file system in it), mount pcachefs on demo/mnt in the
#                            background, show what it serves
#   contrib/demo.sh stop     unmount it and wait for the daemon to finish
#
# Idempotent: running it again while mounted only shows the status; after a stop it mounts
# the same cache and image again (the cache device remembers the image).
# Environment: PCACHE_BUILD (the built binaries, set by make), PCACHE_DEMO_DIR (default
# <repo>/demo), PCACHE_DEMO_CACHE_SIZE (default 1G).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${PCACHE_BUILD:-$repo/build}
dir=${PCACHE_DEMO_DIR:-$repo/demo}
cache_size=${PCACHE_DEMO_CACHE_SIZE:-1G}
cache=$dir/cache.img
image=$dir/sample.raw
mnt=$dir/mnt
pcachefs=$build/pcachefs

say() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# Wait until no process holds the cache device (the daemon releases it last when it exits).
wait_released() {
	n=0
	while ! flock -n "$cache" true 2>/dev/null; do
		n=$((n + 1))
		[ $n -gt 300 ] && die "pcachefs still holds $cache after 30 s"
		sleep 0.1
	done
}

stop() {
	if mountpoint -q "$mnt" 2>/dev/null; then
		umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" || die "cannot unmount $mnt (busy? see fuser -m $mnt)"
		say "demo: unmounted $mnt"
	else
		say "demo: $mnt is not mounted"
	fi
	[ -e "$cache" ] && wait_released
	return 0
}

show() {
	say ""
	say "\$ ls -la $mnt"
	ls -la "$mnt"
	say ""
	say "\$ cat $mnt/.pcache/status"
	cat "$mnt/.pcache/status"
	say ""
	say "Try:"
	say "  cat $mnt/.pcache/images/sample/stats"
	say "  mkdir -p /tmp/sample && mount -o loop $mnt/sample /tmp/sample && cat /tmp/sample/README.txt"
	say "  echo 1 > $mnt/.pcache/flush            # write every dirty byte back to $image"
	say "Stop it with: make stop-run   (or: umount $mnt)"
}

make_sample() {
	tmp=$dir/.content
	rm -rf "$tmp"
	mkdir -p "$tmp"
	cat > "$tmp/README.txt" <<'TXT'
This ext4 file system lives in demo/sample.raw and is served through pcachefs:
every read and write of demo/mnt/sample goes through the persistent cache in demo/cache.img.
TXT
	seq 1 100000 > "$tmp/numbers.txt"
	truncate -s 256M "$image.tmp"
	if command -v mkfs.ext4 >/dev/null 2>&1 && mkfs.ext4 -q -F -L pcache-demo -d "$tmp" "$image.tmp" >/dev/null 2>&1; then
		:
	else
		# no mkfs.ext4 with -d: plain text at the start of the image instead
		cat "$tmp/README.txt" "$tmp/numbers.txt" | dd of="$image.tmp" conv=notrunc status=none
	fi
	rm -rf "$tmp"
	mv "$image.tmp" "$image"
}

start() {
	[ -x "$pcachefs" ] || die "$pcachefs not built (run make)"
	mkdir -p "$dir" "$mnt"
	if mountpoint -q "$mnt"; then
		say "demo: pcachefs is already mounted on $mnt"
		show
		return 0
	fi
	[ -e "$image" ] || make_sample
	[ -e "$cache" ] && wait_released
	"$pcachefs" -o "cache=$cache,cache_size=$cache_size" -o "image=sample:$image" "$mnt" \
		|| die "pcachefs failed to start (see the message above)"
	n=0
	until mountpoint -q "$mnt"; do
		n=$((n + 1))
		[ $n -gt 100 ] && die "pcachefs did not mount $mnt"
		sleep 0.1
	done
	say "demo: pcachefs is running in the background (cache $cache, image $image)"
	show
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*) die "usage: $0 [start|stop]" ;;
esac
