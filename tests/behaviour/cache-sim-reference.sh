#!/bin/bash
# Description: tests/tools/cache_sim gives the reference hit ratio of an fio iolog: on a hand-made
# trace LRU and FIFO give the hit ratios worked out by hand (writes allocate, trims remove,
# warm-up excluded, partial blocks counted by bytes), and on a trace fio itself recorded
# (--write_iolog) a cache as large as the file misses only on first touches.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
need_cmd fio
SIM=$TOOLS/cache_sim
[ -x "$SIM" ] || fail "cache_sim not built"

val() { awk -v p="$1" '$1 == p { sub("%", "", $3); print $3 }' "$SCRATCH/out"; }

# A B C A D A B with 3 blocks: LRU hits A, A (2 of 7); FIFO evicts A before its third read (1 of 7)
{
	echo "fio version 2 iolog"
	echo "/f add"
	echo "/f open"
	for b in 0 1 2 0 3 0 1; do echo "/f read $((b * 4096)) 4096"; done
	echo "/f close"
} > "$SCRATCH/t1.log"
"$SIM" --cache 12K "$SCRATCH/t1.log" > "$SCRATCH/out" || fail "cache_sim failed"
cat "$SCRATCH/out"
[ "$(val lru)" = 28.57 ] || fail "LRU hit $(val lru)%, want 28.57%"
[ "$(val fifo)" = 14.29 ] || fail "FIFO hit $(val fifo)%, want 14.29%"

# a write allocates, a trim removes, a read of half a block counts half its bytes, warm-up skipped
{
	echo "fio version 2 iolog"
	echo "/g add"
	echo "/g write 0 8192"        # warm-up (op 1): blocks 0, 1 in
	echo "/g trim 4096 4096"      # op 2: block 1 out
	echo "/g read 0 2048"         # hit 2048
	echo "/g read 4096 4096"      # miss 4096 (trimmed)
	echo "/g read 2048 4096"      # blocks 0 (hit 2048) and 1 (hit 2048 now)
} > "$SCRATCH/t2.log"
"$SIM" --cache 16K --warmup 2 "$SCRATCH/t2.log" > "$SCRATCH/out" || fail "cache_sim failed"
cat "$SCRATCH/out"
[ "$(val lru)" = 60.00 ] || fail "LRU hit $(val lru)% on the write/trim trace, want 60.00% (6144 of 10240)"
grep -q "of 10240 read bytes" "$SCRATCH/out" || fail "read bytes miscounted"

# a trace recorded by fio: 8 MiB file, zipf reads; an 8 MiB cache hits all after one pass
head -c 8M /dev/zero > "$SCRATCH/data"
fio --name=t --filename="$SCRATCH/data" --rw=randread --bs=4k --size=8M --io_size=24M \
	--random_distribution=zipf:1.1 --write_iolog="$SCRATCH/fio.log" --ioengine=psync >/dev/null 2>&1 ||
	fail "fio failed"
"$SIM" --cache 8M --warmup 0 "$SCRATCH/fio.log" > "$SCRATCH/out" || fail "cache_sim failed on fio's iolog"
cat "$SCRATCH/out"
grep -q "6144 ops" "$SCRATCH/out" || fail "not every read of fio's iolog was counted"
# a cache as large as the file misses only on first touches: hit = 1 - distinct blocks / reads
want=$(awk '$3 == "read" { n++; if (!seen[$4]++) d++ } END { printf "%.2f", 100 * (1 - d / n) }' "$SCRATCH/fio.log")
[ "$(val lru)" = "$want" ] || fail "zipf trace, cache of the file's size: LRU $(val lru)%, compulsory misses only would be $want%"
"$SIM" --cache 1M "$SCRATCH/fio.log" > "$SCRATCH/out2"
awk -v big="$(val lru)" '$1 == "lru" { sub("%", "", $3); exit !($3 < big) }' "$SCRATCH/out2" ||
	fail "a smaller cache did not hit less: $(cat "$SCRATCH/out2")"
exit 0
