#!/bin/bash
# Description: on a machine where the packages appear only once `make deps` has run (a fresh
# install), the README's commands build on the first try: pkg-config is a wrapper that fails
# until the deps step (INSTALL_DEPS, here a script that "installs" by creating a stamp) has run.
# `make run` and `make fuzz-build` really build into scratch directories and their compile and
# link lines carry the real package flags; for check, bench, soak and fuzz the deps step is the
# first command make runs (make -n).
# Timeout: 300
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd make pkg-config flock

REPO=$(cd "$TESTS_DIR/.." && pwd)
REAL_PC=$(command -v pkg-config)
STAMP=$SCRATCH/deps-installed
mkdir -p "$SCRATCH/bin"

cat > "$SCRATCH/bin/pkg-config" <<EOF
#!/bin/sh
# packages "missing" until the deps step has run
[ -e "$STAMP" ] || { echo "pkg-config: Package fuse3 was not found (deps not run yet)" >&2; exit 1; }
exec "$REAL_PC" "\$@"
EOF
cat > "$SCRATCH/bin/install-deps" <<EOF
#!/bin/sh
echo "install-deps ran" >> "$SCRATCH/deps.log"
touch "$STAMP"
EOF
chmod +x "$SCRATCH/bin/pkg-config" "$SCRATCH/bin/install-deps"

want_cflags=$("$REAL_PC" --cflags fuse3) || skip "fuse3 has no pkg-config file"
want_libs=$("$REAL_PC" --libs fuse3)
O=$SCRATCH/build
export PCACHE_DEMO_DIR=$SCRATCH/demo PCACHE_DEMO_CACHE_SIZE=256M
pc_cleanup_add env PCACHE_BUILD="$O" "$REPO/contrib/demo.sh" stop

# mk ARGS...: make in the repository as a user would type it (not as a child of the make that
# runs this test), with the fake package state.
mk() {
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES make -C "$REPO" --no-print-directory -j2 \
		"O=$O" "FUZZ_O=$SCRATCH/fuzz" "PKG_CONFIG=$SCRATCH/bin/pkg-config" \
		"INSTALL_DEPS=$SCRATCH/bin/install-deps" V=1 "$@"
}

# 1. make run, from nothing.
mk run > "$SCRATCH/run.out" 2>&1 || { tail -30 "$SCRATCH/run.out"; fail "make run failed on a fresh machine"; }
[ -e "$STAMP" ] || fail "make run did not run the deps step"
mountpoint -q "$PCACHE_DEMO_DIR/mnt" || fail "make run did not mount the demo"
grep -E '^(cc|gcc|clang) .* -c -o .*/fuse/main\.o' "$SCRATCH/run.out" > "$SCRATCH/cc.lines" \
	|| fail "no compile line for fuse/main.c in the make run output"
for f in $want_cflags; do
	grep -qF -- " $f " "$SCRATCH/cc.lines" || fail "compile line lacks $f: $(cat "$SCRATCH/cc.lines")"
done
grep -E -- "-o $O/pcachefs " "$SCRATCH/run.out" > "$SCRATCH/ld.lines" || fail "no link line for pcachefs"
for f in $want_libs; do
	grep -qF -- " $f" "$SCRATCH/ld.lines" || fail "link line lacks $f: $(cat "$SCRATCH/ld.lines")"
done
env PCACHE_BUILD="$O" "$REPO/contrib/demo.sh" stop >/dev/null || fail "demo stop failed"
note "make run: ok"

# 2. the fuzz targets have their own object tree and compiler: same from nothing.
if command -v clang >/dev/null 2>&1; then
	rm -f "$STAMP"
	mk fuzz-build > "$SCRATCH/fuzz.out" 2>&1 || { tail -30 "$SCRATCH/fuzz.out"; fail "make fuzz-build failed on a fresh machine"; }
	[ -e "$STAMP" ] || fail "make fuzz-build did not run the deps step"
	grep -E '^clang .* -c -o .*/core/cache\.o' "$SCRATCH/fuzz.out" | grep -qF -- " ${want_cflags%% *} " \
		|| fail "fuzz compile lines lack the package flags"
	note "make fuzz-build: ok"
else
	note "no clang: fuzz-build not tried"
fi

# 3. the other entry points run the deps step before anything else.
for t in check bench soak fuzz all unit behaviour; do
	mk -n "$t" > "$SCRATCH/n.$t" 2>&1 || { tail -20 "$SCRATCH/n.$t"; fail "make -n $t failed"; }
	first=$(head -1 "$SCRATCH/n.$t")
	[ "$first" = "$SCRATCH/bin/install-deps" ] || fail "make $t does not start with the deps step (first: $first)"
done
note "every entry point starts with deps"
exit 0
