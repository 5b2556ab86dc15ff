#!/bin/bash
# Description: .pcache/metrics is valid Prometheus text exposition: every line is a "# HELP" or
# "# TYPE" comment or a sample "name{labels} value"; each family's TYPE comes before its samples,
# once, and its samples are contiguous; counters end in _total. After writes and reads (hits and
# misses) on two images, its values match status.json (cache counters and gauges, and per image
# with an image="NAME" label); every sample has a mount="MOUNTPOINT" label. If node_exporter is
# installed, its textfile collector takes the file without error.
# Timeout: 120
. "$TESTS_DIR/behaviour/lib.sh"
. "$TESTS_DIR/behaviour/pcachefs.lib"
need_cmd jq awk

pc_shm 512M
MNT=$SCRATCH/mnt
pc_image "$SCRATCH/a.raw" 64M 4
pc_image "$SCRATCH/b.raw" 32M 1
pc_cleanup_add pc_unmount_if "$MNT"
pc_mount "$MNT" -o "cache=$CACHE,cache_size=384M" -o "image=a:$SCRATCH/a.raw" -o "image=b:$SCRATCH/b.raw"

dd if=/dev/urandom of="$MNT/a" bs=64k count=32 seek=16 oflag=direct conv=notrunc status=none || fail "write a"
dd if="$MNT/a" of=/dev/null bs=64k count=64 iflag=direct status=none || fail "read a"   # hits and misses
dd if=/dev/urandom of="$MNT/b" bs=4k count=10 oflag=direct conv=notrunc status=none || fail "write b"
dd if="$MNT/b" of=/dev/null bs=1M count=2 iflag=direct status=none || fail "read b"

# ---- the format
check_format() {
	awk '
	function bad(why) { printf "line %d: %s: %s\n", NR, why, $0; err = 1; exit 1 }
	/^# HELP / {
		if ($3 !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*$/) bad("bad metric name in HELP")
		if (help[$3]++) bad("second HELP")
		next
	}
	/^# TYPE / {
		if (NF != 4 || ($4 != "counter" && $4 != "gauge")) bad("bad TYPE line")
		if ($3 in type) bad("second TYPE")
		if ($3 in seen) bad("TYPE after samples")
		type[$3] = $4
		if ($4 == "counter" && $3 !~ /_total$/) bad("counter name without _total")
		next
	}
	/^#/ { bad("unknown comment") }
	{
		if ($0 !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*\})? [0-9]+(\.[0-9]+)?$/)
			bad("not name{labels} value")
		name = $0; sub(/[{ ].*/, "", name)
		if (!(name in type)) bad("sample before its TYPE")
		if (name in seen && name != last) bad("samples of a family not contiguous")
		seen[name] = 1; last = name; n++
	}
	END { if (!err && n < 20) { print "only " n " samples"; exit 1 } }
	' "$1"
}
cat "$MNT/.pcache/metrics" > "$SCRATCH/m.txt" || fail "cannot read .pcache/metrics"
check_format "$SCRATCH/m.txt" || fail ".pcache/metrics is not valid text exposition"
[ "$(stat -c %A "$MNT/.pcache/metrics")" = "-r--r--r--" ] || fail "metrics mode $(stat -c %A "$MNT/.pcache/metrics")"
ls "$MNT/.pcache" | grep -qx metrics || fail "readdir of .pcache does not list metrics"

grep -v '^#' "$SCRATCH/m.txt" | grep -v '^[a-z_]*{mount="'"$MNT"'"[,}]' && fail "samples without the mount label first"

# ---- the values: metric sample -> jq expression on status.json
M="mount=\"$MNT\""
while read -r k e; do echo "$k{$M} $e"; done > "$SCRATCH/map" <<'EOF'
pcachefs_cache_size_bytes .cache.size
pcachefs_cache_segments .cache.seg_count
pcachefs_cache_segments_used .cache.segs_used
pcachefs_dirty_bytes .cache.dirty_bytes
pcachefs_dirty_percent .cache.dirty_percent
pcachefs_writeback_bytes_total .cache.wb_bytes
pcachefs_writeback_superseded_bytes_total .cache.wb_superseded
pcachefs_writeback_errors_total .cache.wb_errors
pcachefs_full_waits_total .cache.full_waits
pcachefs_full_wait_seconds_total .cache.full_wait_ns/1e9
pcachefs_ksets_written_total .cache.ksets_written
pcachefs_flush_commits_total .cache.flush_commits
pcachefs_flush_joined_total .cache.flush_joined
pcachefs_keys_indexed .cache.keys_indexed
pcachefs_gc_runs_total .cache.gc_runs
pcachefs_gc_percent .cache.gc_percent
pcachefs_images .images|length
EOF
for img in a b; do
	for k in reads writes flushes discards read_bytes write_bytes read_hit_bytes read_miss_bytes read_bypass_bytes \
		crc_errors backing_errors; do
		echo "pcachefs_image_${k}_total{$M,image=\"$img\"} .images[]|select(.name==\"$img\").$k"
	done
	echo "pcachefs_image_writeback_bytes_total{$M,image=\"$img\"} .images[]|select(.name==\"$img\").wb_bytes"
	echo "pcachefs_image_dirty_bytes{$M,image=\"$img\"} .images[]|select(.name==\"$img\").dirty_bytes"
	echo "pcachefs_image_cached_bytes{$M,image=\"$img\"} .images[]|select(.name==\"$img\").cached_bytes"
	echo "pcachefs_image_size_bytes{$M,image=\"$img\"} .images[]|select(.name==\"$img\").size"
done >> "$SCRATCH/map"

# Writeback runs in the background: compare a status.json read between two equal metrics reads.
stable=0
for try in $(seq 50); do
	cat "$MNT/.pcache/metrics" > "$SCRATCH/m1" && cat "$MNT/.pcache/status.json" > "$SCRATCH/s.json" &&
		cat "$MNT/.pcache/metrics" > "$SCRATCH/m2" || fail "cannot read the control files"
	if cmp -s "$SCRATCH/m1" "$SCRATCH/m2"; then stable=1; break; fi
	sleep 0.2
done
[ $stable -eq 1 ] || fail "metrics never stable across a status.json read"
jq . "$SCRATCH/s.json" >/dev/null || fail "status.json does not parse"
checked=0
while read -r key expr; do
	got=$(awk -v k="$key" '$1 == k { print $2 }' "$SCRATCH/m1")
	[ -n "$got" ] || fail "metrics has no sample $key"
	want=$(jq -r "$expr" "$SCRATCH/s.json")
	awk -v a="$got" -v b="$want" 'BEGIN { exit !(a + 0 == b + 0) }' || fail "$key is $got, status.json says $want ($expr)"
	checked=$((checked + 1))
done < "$SCRATCH/map"
note "$checked values match status.json"
grep -q '^pcachefs_image_info{mount="'"$MNT"'",image="a",path="'"$SCRATCH"'/a.raw",cache_mode="writeback"} 1$' "$SCRATCH/m1" \
	|| fail "no pcachefs_image_info for a"
for k in read_hit_bytes_total read_miss_bytes_total write_bytes_total; do
	v=$(awk -v k="pcachefs_image_${k}{$M,image=\"a\"}" '$1 == k { print $2 }' "$SCRATCH/m1")
	[ "${v:-0}" -gt 0 ] || fail "pcachefs_image_$k of a did not move"
done

# ---- node_exporter's textfile collector (optional)
ne=$(command -v prometheus-node-exporter || command -v node_exporter || true)
if [ -n "$ne" ] && command -v curl >/dev/null 2>&1; then
	mkdir -p "$SCRATCH/textfile"
	cp "$SCRATCH/m1" "$SCRATCH/textfile/pcachefs.prom"
	port=$((20000 + RANDOM % 20000))
	start_bg "$SCRATCH/ne.log" "$ne" --collector.disable-defaults --collector.textfile \
		--collector.textfile.directory="$SCRATCH/textfile" --web.listen-address="127.0.0.1:$port"
	ne_pid=$BG_PID
	ok=0
	for try in $(seq 50); do
		if curl -sf "http://127.0.0.1:$port/metrics" > "$SCRATCH/scrape" 2>/dev/null; then ok=1; break; fi
		sleep 0.2
	done
	kill "$ne_pid" 2>/dev/null
	[ $ok -eq 1 ] || { cat "$SCRATCH/ne.log"; fail "node_exporter did not answer"; }
	grep -q '^node_textfile_scrape_error 0$' "$SCRATCH/scrape" || { cat "$SCRATCH/ne.log"; fail "textfile collector rejected the metrics"; }
	grep -q '^pcachefs_image_read_hit_bytes_total{image="a",mount="'"$MNT"'"} ' "$SCRATCH/scrape" || fail "node_exporter does not export the image metrics"
	note "node_exporter textfile collector: ok"
else
	note "node_exporter not installed: textfile collector not tried"
fi
exit 0
