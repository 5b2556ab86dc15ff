/*
 * ctl.c -- the content of the .pcache/ control tree: status (human-readable), status.json,
 * metrics (Prometheus text format), the cache knobs (gc_percent, writeback_rate, dirty_high,
 * dirty_low), flush, attach, detach, and per image .pcache/images/<name>/{stats,cache_mode,flush}.
 *
 * Invariants:
 *  1. Reads are generated from the engine's state at the time of the read (control files are
 *     direct-io, so a reader always sees fresh content).
 *  2. A write applies completely or not at all: bad input is -EINVAL plus one log line, and
 *     nothing changes (the engine validates knob values before persisting them; attach parses
 *     and checks its argument before calling the engine).
 *  3. Permission (root only) is checked by ops.c before any write reaches this file.
 */
#include "daemon_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

void pfs_text_printf(struct pfs_text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = t->cap - t->len;

		va_start(ap, fmt);
		n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? room : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (t->buf && (size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap ? t->cap * 2 : 4096;
		char *nb;

		while (cap - t->len <= (size_t)n)
			cap *= 2;
		nb = realloc(t->buf, cap);
		if (!nb)
			return;
		t->buf = nb;
		t->cap = cap;
	}
}

void pfs_text_free(struct pfs_text *t)
{
	free(t->buf);
	t->buf = NULL;
	t->len = t->cap = 0;
}

bool pfs_ctl_writable(uint64_t fixed_ino, enum pfs_img_kind k)
{
	switch (fixed_ino) {
	case PFS_INO_GC_PERCENT:
	case PFS_INO_WB_RATE:
	case PFS_INO_DIRTY_HIGH:
	case PFS_INO_DIRTY_LOW:
	case PFS_INO_SPACE_TIMEOUT:
	case PFS_INO_FLUSH:
	case PFS_INO_ATTACH:
	case PFS_INO_DETACH:
	case PFS_INO_REKEY:
	case PFS_INO_GIVE_UP:
		return true;
	case 0:
		return k == PFS_IK_MODE || k == PFS_IK_FLUSH || k == PFS_IK_SEQ || k == PFS_IK_SHARE ||
		       k == PFS_IK_GROW;
	default:
		return false;
	}
}

static const char *knob_name(uint64_t ino)
{
	switch (ino) {
	case PFS_INO_GC_PERCENT: return pfs_knob_name(PCACHE_KNOB_GC_PERCENT);
	case PFS_INO_WB_RATE: return pfs_knob_name(PCACHE_KNOB_WRITEBACK_RATE);
	case PFS_INO_DIRTY_HIGH: return pfs_knob_name(PCACHE_KNOB_DIRTY_HIGH);
	case PFS_INO_DIRTY_LOW: return pfs_knob_name(PCACHE_KNOB_DIRTY_LOW);
	case PFS_INO_SPACE_TIMEOUT: return pfs_knob_name(PCACHE_KNOB_SPACE_TIMEOUT);
	default: return NULL;
	}
}


/* Snapshot of the attached images: referenced slots' images and names (pfs.lock taken here). */
struct img_snap {
	int n;
	struct pcache_image *img[PFS_MAX_SLOTS];
	char name[PFS_MAX_SLOTS][PCACHE_NAME_MAX + 1];
};

static void images_snapshot(struct img_snap *is)
{
	is->n = pcache_cache_images(pfs.cache, is->img, PFS_MAX_SLOTS);
	if (is->n < 0)
		is->n = 0;
	for (int i = 0; i < is->n; i++)
		snprintf(is->name[i], sizeof(is->name[i]), "%s", pcache_image_name(is->img[i]));
}

static void images_release(struct img_snap *is)
{
	for (int i = 0; i < is->n; i++)
		pcache_image_put(is->img[i]);
	is->n = 0;
}

static void image_path(const char *name, char *buf, size_t len)
{
	struct pcache_image_ent *e = malloc(sizeof(*e));

	snprintf(buf, len, "?");
	if (!e)
		return;
	if (pcache_cache_known_image(pfs.cache, name, e) == 0)
		snprintf(buf, len, "%s", e->path);
	free(e);
}

/* Known images that are not attached (missing backing or detached), for status. */
struct unattached_list {
	int n;
	struct pcache_unattached v[PFS_MAX_SLOTS];
};

static struct unattached_list *unattached_get(void)
{
	struct unattached_list *u = calloc(1, sizeof(*u));

	if (u) {
		u->n = pcache_cache_unattached(pfs.cache, u->v, PFS_MAX_SLOTS);
		if (u->n < 0)
			u->n = 0;
	}
	return u;
}

static void unattached_text(struct pfs_text *t)
{
	struct unattached_list *u = unattached_get();

	if (!u)
		return;
	for (int i = 0; i < u->n; i++)
		pfs_text_printf(t, "image %s %s %s dirty %" PRIu64 "\n", u->v[i].name, u->v[i].path,
				u->v[i].missing ? "missing" : "detached", u->v[i].dirty_bytes);
	free(u);
}

static void status_text(struct pfs_text *t)
{
	struct pcache_cache_status cs;
	struct img_snap is;
	char h1[32], h2[32], h3[32], path[PCACHE_PATH_MAX + 1];

	memset(&cs, 0, sizeof(cs));
	pcache_cache_get_status(pfs.cache, &cs);
	pfs_text_printf(t, "pcachefs %s cache %s\n", PFS_VERSION, pfs.opts->cache_path);
	pfs_text_printf(t, "  size %s, %u segments of %s, used %u (data %u, log %u), %s granularity, data_crc %s\n",
			pcache_fmt_size((uint64_t)cs.seg_count * cs.seg_size, h1, sizeof(h1)), cs.seg_count,
			pcache_fmt_size(cs.seg_size, h2, sizeof(h2)), cs.segs_used, cs.segs_data, cs.segs_log,
			cs.granularity ? cs.granularity : "?", cs.data_crc ? "on" : "off");
	pfs_text_printf(t, "  key_head %u:%u lsn %" PRIu64 ", dirty_tail %u:%u lsn %" PRIu64
			", key_tail %u:%u lsn %" PRIu64 "\n",
			cs.key_head.seg, cs.key_head.off, cs.key_head.lsn, cs.dirty_tail.seg, cs.dirty_tail.off,
			cs.dirty_tail.lsn, cs.key_tail.seg, cs.key_tail.off, cs.key_tail.lsn);
	if (cs.gc_auto)
		pfs_text_printf(t, "  gc_percent auto (%u free segments kept, %u %%)", cs.gc_reserve, cs.gc_percent);
	else
		pfs_text_printf(t, "  gc_percent %u", cs.gc_percent);
	pfs_text_printf(t, ", dirty_high %u, dirty_low %u, writeback_rate %" PRIu64 "%s\n",
			cs.dirty_high, cs.dirty_low, cs.wb_rate, cs.wb_rate ? " B/s" : " (unlimited)");
	pfs_text_printf(t, "  gc copy-forward: %s copied in %" PRIu64 " keys, %s dropped\n",
			pcache_fmt_size(cs.gc_copied_bytes, h1, sizeof(h1)), cs.gc_copied_keys,
			pcache_fmt_size(cs.gc_dropped_bytes, h2, sizeof(h2)));
	pfs_text_printf(t, "  full_waits %" PRIu64 " (%" PRIu64 " ms, %" PRIu64 " timed out), ksets_written %" PRIu64
			", keys_indexed %" PRIu64 ", index_bytes %" PRIu64 ", wb_errors %" PRIu64 ", gc_runs %" PRIu64
			", segs_freed %" PRIu64 ", media_errors %" PRIu64 "\n",
			cs.full_waits, cs.full_wait_ns / 1000000, cs.space_timeouts, cs.ksets_written, cs.keys_indexed,
			cs.index_bytes, cs.wb_errors, cs.gc_runs, cs.segs_freed, cs.media_errors);
	pfs_text_printf(t, "  flushes: %" PRIu64 " log commits, %" PRIu64 " joined a commit in progress\n",
			cs.flush_commits, cs.flush_joined);
	pfs_text_printf(t, "  dirty %s (%u%%); writeback: %s written, %s superseded (replaced in the "
			"same epoch, or on the backing by writethrough)\n", pcache_fmt_size(cs.dirty_bytes, h3, sizeof(h3)), cs.dirty_percent,
			pcache_fmt_size(cs.wb_bytes, h1, sizeof(h1)), pcache_fmt_size(cs.wb_superseded, h2, sizeof(h2)));
	if (pfs_keeper_pid() || pfs_fdstore_on()) {
		char who[64];

		if (pfs_fdstore_on())
			snprintf(who, sizeof(who), "connection kept in the service manager's fd store");
		else
			snprintf(who, sizeof(who), "keeper pid %d (keep_timeout %u s)", (int)pfs_keeper_pid(),
				 pfs.opts->keep_timeout);
		pfs_text_printf(t, "  %s%s; %" PRIu64 " requests resent, %" PRIu64 " staged keys recovered "
				"at start\n", who, pfs.taken_over ? ", taken over from an earlier daemon" : "",
				pcache_fuse_session_resent_count(), pcache_cache_staged_recovered(pfs.cache));
	} else
		pfs_text_printf(t, "  no keeper: a crash of the daemon ends the mount\n");
	images_snapshot(&is);
	pfs_text_printf(t, "  images %d\n", is.n);
	for (int i = 0; i < is.n; i++) {
		struct pcache_image_stats st;

		memset(&st, 0, sizeof(st));
		pcache_image_get_stats(is.img[i], &st);
		image_path(is.name[i], path, sizeof(path));
		pfs_text_printf(t, "image %s %s size %" PRIu64 " lbs %u mode %s\n", is.name[i], path,
				pcache_image_size(is.img[i]), pcache_image_lbs(is.img[i]),
				pcache_mode_name(st.cache_mode));
		pfs_text_printf(t, "  reads %" PRIu64 " (%" PRIu64 " bytes, hit %" PRIu64 ", miss %" PRIu64
				", not cached %" PRIu64 ") writes %" PRIu64 " (%" PRIu64 " bytes, around the cache %"
				PRIu64 ") flushes %" PRIu64 " discards %" PRIu64 "\n",
				st.reads, st.read_bytes, st.read_hit_bytes, st.read_miss_bytes,
				st.read_bypass_bytes + st.share_bypass_bytes, st.writes, st.write_bytes,
				st.write_bypass_bytes, st.flushes, st.discards);
		pfs_text_printf(t, "  dirty %" PRIu64 " cached %" PRIu64 " crc_errors %" PRIu64 " backing_errors %" PRIu64
				" wb_lsn %" PRIu64 " wb_time %" PRIu64 " wb_bytes %" PRIu64 "\n",
				st.dirty_bytes, st.cached_bytes, st.crc_errors, st.backing_errors, st.wb_lsn,
				st.wb_time, st.wb_bytes);
		if (st.wb_last_error == -EHWPOISON || st.wb_last_error == -EBADMSG)
			pfs_text_printf(t, "  failing: %s: its dirty data cannot be read, its writeback is "
					"stopped until restart (%" PRIu64 " errors)\n",
					st.wb_last_error == -EHWPOISON ? "media error in the cache" :
					"data CRC mismatch in the cache", st.wb_errors);
		else if (st.wb_last_error)
			pfs_text_printf(t, "  failing: writeback to the backing fails: %s (%" PRIu64 " errors)\n",
					strerror(-st.wb_last_error), st.wb_errors);
	}
	images_release(&is);
	unattached_text(t);
}

static void text_put(void *arg, const char *p, size_t n)
{
	pfs_text_printf(arg, "%.*s", (int)n, p);
}

static void json_str(struct pfs_text *t, const char *s)
{
	pcache_json_string(s, text_put, t);
}

static void json_pos(struct pfs_text *t, const char *name, const struct pcache_pos *p)
{
	pfs_text_printf(t, "\"%s\": {\"seg\": %u, \"off\": %u, \"lsn\": %" PRIu64 "}", name, p->seg, p->off, p->lsn);
}

static void image_stats_json(struct pfs_text *t, const struct pcache_image_stats *st)
{
	pfs_text_printf(t, "\"cache_mode\": \"%s\", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
			", \"flushes\": %" PRIu64 ", \"discards\": %" PRIu64 ", \"read_bytes\": %" PRIu64
			", \"write_bytes\": %" PRIu64 ", \"read_hit_bytes\": %" PRIu64 ", \"read_miss_bytes\": %" PRIu64
			", \"dirty_bytes\": %" PRIu64 ", \"cached_bytes\": %" PRIu64 ", \"crc_errors\": %" PRIu64
			", \"backing_errors\": %" PRIu64 ", \"wb_lsn\": %" PRIu64 ", \"wb_time\": %" PRIu64
			", \"wb_bytes\": %" PRIu64 ", \"wb_errors\": %" PRIu64 ", \"state\": \"%s\", \"error\": \"%s\""
			", \"read_bypass_bytes\": %" PRIu64 ", \"sequential_cutoff\": %" PRIu64
			", \"max_share\": %u, \"share_bypass_bytes\": %" PRIu64 ", \"write_bypass_bytes\": %" PRIu64,
			pcache_mode_name(st->cache_mode), st->reads, st->writes, st->flushes, st->discards,
			st->read_bytes, st->write_bytes, st->read_hit_bytes, st->read_miss_bytes, st->dirty_bytes,
			st->cached_bytes, st->crc_errors, st->backing_errors, st->wb_lsn, st->wb_time, st->wb_bytes,
			st->wb_errors, st->wb_last_error ? "failing" : "ok",
			st->wb_last_error ? strerror(-st->wb_last_error) : "", st->read_bypass_bytes,
			st->seq_cutoff, st->max_share, st->share_bypass_bytes, st->write_bypass_bytes);
}

static void unattached_json(struct pfs_text *t)
{
	struct unattached_list *u = unattached_get();

	if (!u)
		return;
	for (int i = 0; i < u->n; i++) {
		pfs_text_printf(t, "%s{\"name\": ", i ? ", " : "");
		json_str(t, u->v[i].name);
		pfs_text_printf(t, ", \"path\": ");
		json_str(t, u->v[i].path);
		pfs_text_printf(t, ", \"state\": \"%s\", \"dirty_bytes\": %" PRIu64 "}",
				u->v[i].missing ? "missing" : "detached", u->v[i].dirty_bytes);
	}
	free(u);
}

static void status_json(struct pfs_text *t)
{
	struct pcache_cache_status cs;
	struct img_snap is;
	char path[PCACHE_PATH_MAX + 1];

	memset(&cs, 0, sizeof(cs));
	pcache_cache_get_status(pfs.cache, &cs);
	pfs_text_printf(t, "{\"version\": \"%s\", \"cache\": {\"path\": ", PFS_VERSION);
	json_str(t, pfs.opts->cache_path);
	pfs_text_printf(t, ", \"size\": %" PRIu64 ", \"seg_size\": %" PRIu64 ", \"seg_count\": %u, \"segs_used\": %u"
			", \"segs_data\": %u, \"segs_log\": %u, \"granularity\": ",
			(uint64_t)cs.seg_count * cs.seg_size, cs.seg_size, cs.seg_count, cs.segs_used, cs.segs_data,
			cs.segs_log);
	json_str(t, cs.granularity ? cs.granularity : "");
	pfs_text_printf(t, ", \"data_crc\": %s, ", cs.data_crc ? "true" : "false");
	json_pos(t, "key_head", &cs.key_head);
	pfs_text_printf(t, ", ");
	json_pos(t, "dirty_tail", &cs.dirty_tail);
	pfs_text_printf(t, ", ");
	json_pos(t, "key_tail", &cs.key_tail);
	pfs_text_printf(t, ", \"gc_auto\": %s, \"gc_reserve_segs\": %u, \"gc_copied_bytes\": %" PRIu64
			", \"gc_copied_keys\": %" PRIu64 ", \"gc_dropped_bytes\": %" PRIu64,
			cs.gc_auto ? "true" : "false", cs.gc_reserve, cs.gc_copied_bytes, cs.gc_copied_keys,
			cs.gc_dropped_bytes);
	pfs_text_printf(t, ", \"gc_percent\": %u, \"dirty_high\": %u, \"dirty_low\": %u, \"writeback_rate\": %" PRIu64
			", \"full_waits\": %" PRIu64 ", \"full_wait_ns\": %" PRIu64 ", \"space_timeouts\": %" PRIu64
			", \"ksets_written\": %" PRIu64
			", \"flush_commits\": %" PRIu64 ", \"flush_joined\": %" PRIu64
			", \"keys_indexed\": %" PRIu64 ", \"index_bytes\": %" PRIu64 ", \"wb_errors\": %" PRIu64
			", \"gc_runs\": %" PRIu64 ", \"segs_freed\": %" PRIu64 ", \"media_errors\": %" PRIu64
			", \"parallel_write_opens\": %" PRIu64
			", \"wb_bytes\": %" PRIu64 ", \"wb_superseded\": %" PRIu64
			", \"dirty_bytes\": %" PRIu64 ", \"dirty_percent\": %u}",
			cs.gc_percent, cs.dirty_high, cs.dirty_low, cs.wb_rate, cs.full_waits, cs.full_wait_ns,
			cs.space_timeouts, cs.ksets_written, cs.flush_commits, cs.flush_joined, cs.keys_indexed,
			cs.index_bytes, cs.wb_errors, cs.gc_runs, cs.segs_freed,
			cs.media_errors, pcache_fuse_session_pdw_count(), cs.wb_bytes, cs.wb_superseded, cs.dirty_bytes,
			cs.dirty_percent);
	pfs_text_printf(t, ", \"daemon\": {\"pid\": %d, \"keeper_pid\": %d, \"fdstore\": %s, \"taken_over\": %s, "
			"\"resent_requests\": %" PRIu64 ", \"staged_recovered\": %" PRIu64 "}",
			(int)getpid(), (int)pfs_keeper_pid(), pfs_fdstore_on() ? "true" : "false",
			pfs.taken_over ? "true" : "false",
			pcache_fuse_session_resent_count(), pcache_cache_staged_recovered(pfs.cache));
	images_snapshot(&is);
	pfs_text_printf(t, ", \"images\": [");
	for (int i = 0; i < is.n; i++) {
		struct pcache_image_stats st;

		memset(&st, 0, sizeof(st));
		pcache_image_get_stats(is.img[i], &st);
		image_path(is.name[i], path, sizeof(path));
		pfs_text_printf(t, "%s{\"name\": ", i ? ", " : "");
		json_str(t, is.name[i]);
		pfs_text_printf(t, ", \"path\": ");
		json_str(t, path);
		pfs_text_printf(t, ", \"size\": %" PRIu64 ", \"lbs\": %u, \"growable\": %s, ",
				pcache_image_size(is.img[i]), pcache_image_lbs(is.img[i]),
				pcache_image_growable(is.img[i]) ? "true" : "false");
		image_stats_json(t, &st);
		pfs_text_printf(t, "}");
	}
	pfs_text_printf(t, "], \"unattached\": [");
	images_release(&is);
	unattached_json(t);
	pfs_text_printf(t, "]}\n");
}

/*
 * .pcache/metrics: the counters and gauges of status.json in the Prometheus text exposition
 * format (version 0.0.4), as node_exporter's textfile collector reads it. Each family is one
 * "# HELP", one "# TYPE" and then all its samples (the collector wants them contiguous). Every
 * sample has a mount="MOUNTPOINT" label (several mounts on one host stay distinct series), and
 * per-image samples an image="NAME" label. Names follow the Prometheus conventions: a pcachefs_
 * prefix, base units (bytes, seconds) and _total on counters.
 */
struct prom_family {
	const char *name;
	bool counter;
	const char *help;
	size_t off;        /* of the uint64_t field in struct pcache_image_stats (image families) */
};

#define PROM_IMG(n, c, f, h) { "pcachefs_image_" n, c, h, offsetof(struct pcache_image_stats, f) }
static const struct prom_family prom_image_families[] = {
	PROM_IMG("reads_total", true, reads, "Read requests served."),
	PROM_IMG("writes_total", true, writes, "Write requests served."),
	PROM_IMG("flushes_total", true, flushes, "Flushes (fsync) served."),
	PROM_IMG("discards_total", true, discards, "Discards (punch hole, zero range) served."),
	PROM_IMG("read_bytes_total", true, read_bytes, "Bytes read."),
	PROM_IMG("write_bytes_total", true, write_bytes, "Bytes written."),
	PROM_IMG("read_hit_bytes_total", true, read_hit_bytes, "Bytes read from the cache (hits)."),
	PROM_IMG("read_miss_bytes_total", true, read_miss_bytes, "Bytes read from the backing image (misses)."),
	PROM_IMG("read_bypass_bytes_total", true, read_bypass_bytes,
		 "Missed bytes not cached: reads of a sequential stream past the sequential cutoff."),
	PROM_IMG("write_bypass_bytes_total", true, write_bypass_bytes,
		 "Writeback-mode writes of a sequential stream past the cutoff, sent around the cache."),
	PROM_IMG("share_bypass_bytes_total", true, share_bypass_bytes,
		 "Read and write bytes not cached because the image was over its max_share."),
	PROM_IMG("crc_errors_total", true, crc_errors, "Cached data that failed its CRC check."),
	PROM_IMG("backing_errors_total", true, backing_errors, "Failed I/O on the backing image."),
	PROM_IMG("writeback_bytes_total", true, wb_bytes, "Bytes written back to the backing image."),
	PROM_IMG("dirty_bytes", false, dirty_bytes, "Cached data not written back yet."),
	PROM_IMG("cached_bytes", false, cached_bytes, "Data of this image held in the cache."),
	PROM_IMG("writeback_lsn", false, wb_lsn, "Log sequence number written back up to."),
	PROM_IMG("writeback_time_seconds", false, wb_time, "Unix time of the last writeback."),
};

static void prom_head(struct pfs_text *t, const char *name, bool counter, const char *help)
{
	pfs_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, counter ? "counter" : "gauge");
}

/* A label value: backslash, double quote and newline are escaped. */
static void prom_label(struct pfs_text *t, const char *key, const char *v, bool first)
{
	pfs_text_printf(t, "%s%s=\"", first ? "" : ",", key);
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			pfs_text_printf(t, "\\%c", *v);
		else if (*v == '\n')
			pfs_text_printf(t, "\\n");
		else
			pfs_text_printf(t, "%c", *v);
	}
	pfs_text_printf(t, "\"");
}

/* Start a sample: its name and the mount label; the caller adds labels and "} value". */
static void prom_sample(struct pfs_text *t, const char *name)
{
	pfs_text_printf(t, "%s{", name);
	prom_label(t, "mount", pfs.opts->mountpoint, true);
}

static void prom_u64(struct pfs_text *t, const char *name, bool counter, const char *help, uint64_t v)
{
	prom_head(t, name, counter, help);
	prom_sample(t, name);
	pfs_text_printf(t, "} %" PRIu64 "\n", v);
}

static void metrics_cache(struct pfs_text *t, const struct pcache_cache_status *cs)
{
	const struct {
		const char *name;
		bool counter;
		const char *help;
		uint64_t v;
	} fam[] = {
		{ "pcachefs_cache_size_bytes", false, "Capacity of the cache device (all segments).",
		  (uint64_t)cs->seg_count * cs->seg_size },
		{ "pcachefs_cache_segment_size_bytes", false, "Size of one cache segment.", cs->seg_size },
		{ "pcachefs_cache_segments", false, "Segments of the cache device.", cs->seg_count },
		{ "pcachefs_cache_segments_used", false, "Segments in use (data and log).", cs->segs_used },
		{ "pcachefs_cache_segments_data", false, "Segments holding cached data.", cs->segs_data },
		{ "pcachefs_cache_segments_log", false, "Segments holding the key log.", cs->segs_log },
		{ "pcachefs_dirty_bytes", false, "Cached data not written back yet.", cs->dirty_bytes },
		{ "pcachefs_dirty_percent", false, "Dirty data in percent of the cache's capacity.",
		  cs->dirty_percent },
		{ "pcachefs_writeback_bytes_total", true,
		  "Bytes written back to the backing images (data and zeroed ranges).", cs->wb_bytes },
		{ "pcachefs_writeback_superseded_bytes_total", true,
		  "Dirty bytes not written back: a later write of the same flush epoch replaced them, or their writethrough write put them on the backing.",
		  cs->wb_superseded },
		{ "pcachefs_writeback_errors_total", true, "Failed writebacks (retried later).", cs->wb_errors },
		{ "pcachefs_media_errors_total", true,
		  "Accesses to the cache device that met a media error (poison, a page gone).", cs->media_errors },
		{ "pcachefs_full_waits_total", true, "Writers that waited for free cache space.", cs->full_waits },
		{ "pcachefs_space_timeouts_total", true,
		  "Writers that waited space_timeout for cache space and got EIO.", cs->space_timeouts },
		{ "pcachefs_ksets_written_total", true, "Key sets written to the key log.", cs->ksets_written },
		{ "pcachefs_flush_commits_total", true, "Flushes that committed the key log.", cs->flush_commits },
		{ "pcachefs_flush_joined_total", true,
		  "Flushes covered by a log commit that began after them (group commit).", cs->flush_joined },
		{ "pcachefs_keys_indexed", false, "Keys in the in-memory index.", cs->keys_indexed },
		{ "pcachefs_index_bytes", false, "Memory used by the in-memory index.", cs->index_bytes },
		{ "pcachefs_gc_runs_total", true, "Garbage collection runs.", cs->gc_runs },
		{ "pcachefs_gc_segments_freed_total", true, "Segments freed by garbage collection.", cs->segs_freed },
		{ "pcachefs_gc_percent", false, "Knob gc_percent (auto: the usage its free reserve leaves).",
		  cs->gc_percent },
		{ "pcachefs_gc_reserve_segments", false, "Free segments GC keeps (gc_percent auto).",
		  cs->gc_reserve },
		{ "pcachefs_gc_copied_bytes_total", true, "Hot clean bytes GC copied forward instead of dropping.",
		  cs->gc_copied_bytes },
		{ "pcachefs_gc_dropped_bytes_total", true, "Cached bytes GC dropped.", cs->gc_dropped_bytes },
		{ "pcachefs_dirty_high_percent", false, "Knob dirty_high.", cs->dirty_high },
		{ "pcachefs_dirty_low_percent", false, "Knob dirty_low.", cs->dirty_low },
		{ "pcachefs_writeback_rate_bytes_per_second", false, "Knob writeback_rate (0 = unlimited).",
		  cs->wb_rate },
		{ "pcachefs_start_time_seconds", false, "Unix time the daemon started.", (uint64_t)pfs.start_time },
	};

	prom_head(t, "pcachefs_info", false, "The daemon's version and cache device (always 1).");
	prom_sample(t, "pcachefs_info");
	prom_label(t, "version", PFS_VERSION, false);
	prom_label(t, "cache", pfs.opts->cache_path, false);
	pfs_text_printf(t, "} 1\n");
	for (size_t i = 0; i < PCACHE_ARRAY_SIZE(fam); i++)
		prom_u64(t, fam[i].name, fam[i].counter, fam[i].help, fam[i].v);
	prom_head(t, "pcachefs_full_wait_seconds_total", true, "Time writers spent waiting for free cache space.");
	prom_sample(t, "pcachefs_full_wait_seconds_total");
	pfs_text_printf(t, "} %" PRIu64 ".%09" PRIu64 "\n",
			cs->full_wait_ns / 1000000000u, cs->full_wait_ns % 1000000000u);
}

static void metrics_text(struct pfs_text *t)
{
	struct pcache_cache_status cs;
	struct pcache_image_stats *st;
	struct img_snap is;
	char path[PCACHE_PATH_MAX + 1];

	memset(&cs, 0, sizeof(cs));
	pcache_cache_get_status(pfs.cache, &cs);
	metrics_cache(t, &cs);
	images_snapshot(&is);
	prom_u64(t, "pcachefs_images", false, "Images attached.", (uint64_t)is.n);
	st = calloc((size_t)(is.n ? is.n : 1), sizeof(*st));
	if (!st) {
		pfs_text_free(t);
		images_release(&is);
		return;
	}
	for (int i = 0; i < is.n; i++)
		pcache_image_get_stats(is.img[i], &st[i]);
	if (is.n) {
		prom_head(t, "pcachefs_image_info", false, "An attached image: backing path and cache mode (always 1).");
		for (int i = 0; i < is.n; i++) {
			image_path(is.name[i], path, sizeof(path));
			prom_sample(t, "pcachefs_image_info");
			prom_label(t, "image", is.name[i], false);
			prom_label(t, "path", path, false);
			prom_label(t, "cache_mode", pcache_mode_name(st[i].cache_mode), false);
			pfs_text_printf(t, "} 1\n");
		}
		prom_head(t, "pcachefs_image_size_bytes", false, "Size of the image.");
		for (int i = 0; i < is.n; i++) {
			prom_sample(t, "pcachefs_image_size_bytes");
			prom_label(t, "image", is.name[i], false);
			pfs_text_printf(t, "} %" PRIu64 "\n", pcache_image_size(is.img[i]));
		}
	}
	for (size_t f = 0; is.n && f < PCACHE_ARRAY_SIZE(prom_image_families); f++) {
		const struct prom_family *pf = &prom_image_families[f];

		prom_head(t, pf->name, pf->counter, pf->help);
		for (int i = 0; i < is.n; i++) {
			uint64_t v;

			memcpy(&v, (const char *)&st[i] + pf->off, sizeof(v));
			prom_sample(t, pf->name);
			prom_label(t, "image", is.name[i], false);
			pfs_text_printf(t, "} %" PRIu64 "\n", v);
		}
	}
	free(st);
	images_release(&is);
}

static void image_stats_text(struct pfs_text *t, struct pcache_image *img)
{
	struct pcache_image_stats st;

	memset(&st, 0, sizeof(st));
	pcache_image_get_stats(img, &st);
	pfs_text_printf(t, "cache_mode %s\nreads %" PRIu64 "\nwrites %" PRIu64 "\nflushes %" PRIu64 "\ndiscards %" PRIu64
			"\nread_bytes %" PRIu64 "\nwrite_bytes %" PRIu64 "\nread_hit_bytes %" PRIu64
			"\nread_miss_bytes %" PRIu64 "\ndirty_bytes %" PRIu64 "\ncached_bytes %" PRIu64
			"\ncrc_errors %" PRIu64 "\nbacking_errors %" PRIu64 "\nwb_lsn %" PRIu64 "\nwb_time %" PRIu64
			"\nwb_bytes %" PRIu64 "\nread_bypass_bytes %" PRIu64 "\nmax_share %u\nshare_bypass_bytes %" PRIu64
			"\nwrite_bypass_bytes %" PRIu64 "\n",
			pcache_mode_name(st.cache_mode), st.reads, st.writes, st.flushes, st.discards, st.read_bytes,
			st.write_bytes, st.read_hit_bytes, st.read_miss_bytes, st.dirty_bytes, st.cached_bytes,
			st.crc_errors, st.backing_errors, st.wb_lsn, st.wb_time, st.wb_bytes,
			st.read_bypass_bytes, st.max_share, st.share_bypass_bytes, st.write_bypass_bytes);
}

/* Drop trailing whitespace (the engine may end a value with a newline). */
static char *rtrim(char *s)
{
	size_t n = strlen(s);

	while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

int pfs_ctl_read(uint64_t fixed_ino, struct pfs_slot *s, enum pfs_img_kind k, struct pfs_text *out)
{
	char buf[128];
	const char *kn;
	int ret;

	if (fixed_ino) {
		switch (fixed_ino) {
		case PFS_INO_STATUS:
			status_text(out);
			break;
		case PFS_INO_STATUS_JSON:
			status_json(out);
			break;
		case PFS_INO_METRICS:
			metrics_text(out);
			break;
		case PFS_INO_FLUSH:
		case PFS_INO_ATTACH:
		case PFS_INO_DETACH:
		case PFS_INO_REKEY:
		case PFS_INO_GIVE_UP:
			return -EACCES;
		default:
			kn = knob_name(fixed_ino);
			if (!kn)
				return -EINVAL;
			ret = pfs_knob_get(pfs.cache, kn, buf, sizeof(buf));
			if (ret)
				return ret;
			pfs_text_printf(out, "%s\n", rtrim(buf));
		}
		return out->buf ? 0 : -ENOMEM;
	}
	switch (k) {
	case PFS_IK_STATS:
		image_stats_text(out, s->img);
		break;
	case PFS_IK_MODE:
		pfs_text_printf(out, "%s\n", pcache_mode_name(pcache_image_cache_mode(s->img)));
		break;
	case PFS_IK_SEQ:
		pfs_text_printf(out, "%" PRIu64 "\n", pcache_image_seq_cutoff(s->img));
		break;
	case PFS_IK_SHARE:
		pfs_text_printf(out, "%u\n", pcache_image_max_share(s->img));
		break;
	case PFS_IK_GROW:
		pfs_text_printf(out, "%d\n", pcache_image_growable(s->img) ? 1 : 0);
		break;
	default:
		return -EACCES;
	}
	return out->buf ? 0 : -ENOMEM;
}

/* Log the outcome ret of setting an image's knob what (hint: what a good value looks like). */
static int logged_set(const char *name, const char *what, const char *hint, const char *value, int ret)
{
	if (ret)
		pfs_log(LOG_WARNING, "%s %s: bad value '%s' (%s): %s", name, what, value, hint, strerror(-ret));
	else
		pfs_log(LOG_INFO, "%s %s set to %s", name, what, value);
	return ret;
}

static int write_flush(const char *what, const char *value, struct pcache_image *img)
{
	int ret;

	if (strcmp(value, "1") != 0) {
		pfs_log(LOG_WARNING, "%s: bad value '%s' (write 1 to write back all dirty data)", what, value);
		return -EINVAL;
	}
	ret = img ? pcache_image_writeback_all(img) : pcache_cache_writeback_all(pfs.cache);
	if (ret)
		pfs_log(LOG_ERR, "%s: writeback failed: %s", what, strerror(-ret));
	return ret;
}

/* attach: "NAME:PATH"; rekey: the same, accepting a different backing for a clean image. */
static int write_attach(const char *value, bool rekey)
{
	const char *colon = strchr(value, ':'), *what = rekey ? "rekey" : "attach";
	char name[PCACHE_NAME_MAX + 1], err[1024], *abs;
	int ret;

	if (!colon || colon == value || !colon[1] || (size_t)(colon - value) > PCACHE_NAME_MAX) {
		pfs_log(LOG_WARNING, "%s: bad input '%s' (expected NAME:PATH)", what, value);
		return -EINVAL;
	}
	memcpy(name, value, (size_t)(colon - value));
	name[colon - value] = '\0';
	if (!pcache_name_valid(name)) {
		pfs_log(LOG_WARNING, "%s: invalid image name '%s'", what, name);
		return -EINVAL;
	}
	/* stored as given (absolute, symlinks kept); the engine checks what it reaches */
	abs = pfs_path_absolute(colon + 1);
	if (!abs)
		return -ENOMEM;
	if (strlen(abs) > PCACHE_PATH_MAX) {
		pfs_log(LOG_WARNING, "%s %s: image path '%s' is too long", what, name, abs);
		free(abs);
		return -EINVAL;
	}
	if (pfs_path_under(abs, pfs.opts->mountpoint)) {
		/* refused before it is touched: opening it would call back into this daemon */
		pfs_log(LOG_WARNING, "%s %s: '%s' is inside this mount", what, name, abs);
		free(abs);
		return -EINVAL;
	}
	ret = pfs_image_attach(name, abs, -1, rekey, err, sizeof(err));
	if (ret)
		pfs_log(LOG_WARNING, "%s %s:%s: %s", what, name, abs, err);
	else
		pfs_log(LOG_INFO, "%s image %s (%s)", rekey ? "re-keyed" : "attached", name, abs);
	free(abs);
	/* control writes report EINVAL (bad input) or EBUSY (in use) */
	return ret == -EBUSY || ret == -EEXIST ? -EBUSY : ret ? -EINVAL : 0;
}

/* give_up: "NAME confirm" -- drop the image's dirty data (its backing failed for good). */
static int write_give_up(const char *value)
{
	char name[PCACHE_NAME_MAX + 1], err[512];
	const char *sp = strchr(value, ' ');
	uint64_t lost = 0;
	int ret;

	if (!sp || sp == value || strcmp(sp + 1, "confirm") || (size_t)(sp - value) > PCACHE_NAME_MAX) {
		pfs_log(LOG_WARNING, "give_up: bad input '%s' (expected 'NAME confirm': the image's dirty "
			"data is lost)", value);
		return -EINVAL;
	}
	memcpy(name, value, (size_t)(sp - value));
	name[sp - value] = '\0';
	if (!pcache_name_valid(name)) {
		pfs_log(LOG_WARNING, "give_up: invalid image name '%s'", name);
		return -EINVAL;
	}
	ret = pfs_image_give_up(name, &lost, err, sizeof(err));
	if (ret) {
		pfs_log(LOG_WARNING, "give_up %s: %s", name, err);
		return ret == -ENOENT ? -EINVAL : ret;
	}
	pfs_log(LOG_WARNING, "gave up image %s: %" PRIu64 " dirty bytes dropped", name, lost);
	return 0;
}

static int write_detach(const char *value)
{
	char err[512];
	int ret;

	if (!pcache_name_valid(value)) {
		pfs_log(LOG_WARNING, "detach: invalid image name '%s'", value);
		return -EINVAL;
	}
	ret = pfs_image_detach(value, err, sizeof(err));
	if (ret) {
		pfs_log(LOG_WARNING, "detach %s: %s", value, err);
		return ret == -ENOENT ? -EINVAL : ret;
	}
	pfs_log(LOG_INFO, "detached image %s", value);
	return 0;
}

int pfs_ctl_write(uint64_t fixed_ino, struct pfs_slot *s, enum pfs_img_kind k, const char *value)
{
	const char *kn;
	int ret;

	if (fixed_ino) {
		switch (fixed_ino) {
		case PFS_INO_FLUSH:
			return write_flush("flush", value, NULL);
		case PFS_INO_ATTACH:
			return write_attach(value, false);
		case PFS_INO_REKEY:
			return write_attach(value, true);
		case PFS_INO_DETACH:
			return write_detach(value);
		case PFS_INO_GIVE_UP:
			return write_give_up(value);
		default:
			kn = knob_name(fixed_ino);
			if (!kn)
				return -EACCES;
			ret = pfs_knob_set(pfs.cache, kn, value);
			if (ret)
				pfs_log(LOG_WARNING, "%s: bad value '%s': %s", kn, value, strerror(-ret));
			else
				pfs_log(LOG_INFO, "%s set to %s", kn, value);
			return ret;
		}
	}
	switch (k) {
	case PFS_IK_MODE:
		if (pcache_mode_parse(value) < 0) {
			pfs_log(LOG_WARNING, "%s cache_mode: bad value '%s' (writeback, writethrough or writearound)",
				s->name, value);
			return -EINVAL;
		}
		ret = pfs_mode_set(s->img, value);
		if (ret)
			pfs_log(LOG_WARNING, "%s cache_mode: cannot set '%s': %s", s->name, value, strerror(-ret));
		return ret;
	case PFS_IK_FLUSH:
		return write_flush(s->name, value, s->img);
	case PFS_IK_SHARE:
		return logged_set(s->name, "max_share", "a percent 0-100, 0 = no cap", value,
				  pfs_max_share_set(s->img, value));
	case PFS_IK_SEQ:
		return logged_set(s->name, "sequential_cutoff", "a size such as 4M, 0 = none", value,
				  pfs_seq_cutoff_set(s->img, value));
	case PFS_IK_GROW:
		return logged_set(s->name, "growable", "1 or 0; block devices never grow", value,
				  pfs_growable_set(s->img, value));
	default:
		return -EACCES;
	}
}
