#!/bin/sh
# install-deps.sh -- install the Debian packages pcachefs needs to build, test and benchmark.
#
# Idempotent and quiet when everything is present: it asks dpkg which packages are missing and
# only then runs apt-get (update once, then install). Needs root for the install step.
set -eu

PKGS="build-essential pkg-config libfuse3-dev fuse3 libpmem2-dev liburing-dev libblkid-dev libsystemd-dev check
btrfs-progs lvm2 fdisk clang libclang-rt-14-dev fio qemu-utils qemu-system-common e2fsprogs util-linux
gnuplot-nox procps psmisc kmod jq gcc-aarch64-linux-gnu libc6-dev-arm64-cross"

# Every build runs this first (make deps). Elsewhere than on Debian there is nothing to ask:
# the build's pkg-config queries name whatever is missing.
if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "install-deps: no dpkg here; install the packages of README.md (Dependencies) yourself" >&2
	exit 0
fi

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: must run as root to install packages" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
