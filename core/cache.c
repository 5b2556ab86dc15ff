/*
 * cache.c -- the cache instance's lifecycle: start (open the device, replay, threads), stop,
 * the timer thread, knobs and status. The rest of the engine: cache_replay.c (the log read
 * back), cache_image.c (attach/detach), cache_wbglue.c (what the writeback asks of the engine),
 * cache_req.c (I/O), cache_kset.c (the key log's write side), cache_key.c (the index),
 * segment.c (space), cache_gc.c, cache_writeback.c.
 *
 * The states of a cache instance (c->state; cache_enter() asserts every transition):
 *
 *      pcache_cache_start()
 *             |
 *             v            pcache_cache_start_background()
 *         +--------+  (threads deferred, or none for tests)  +---------+
 *         |  OPEN  | --------------------------------------> | RUNNING |
 *         +--------+                                         +---------+
 *             |   pcache_cache_abort_waits() / _stop()            |
 *             v                                                   v
 *         +-------------------------------------------------------------+
 *         | STOPPING: new I/O refused, space waiters and drains fail,    |
 *         | staging ksets persisted, threads stopped, images detached    |
 *         +-------------------------------------------------------------+
 *             |                                         |
 *             v  everything freed                       v  writeback batch still in flight
 *         (STOPPED: the struct is gone)           ABANDONED: nothing is freed; the caller
 *                                                 exits without using the engine again
 *
 * OPEN: the log is replayed and images may attach, but nothing runs in the background, so a
 * start that is refused later (an image it cannot take) has written nothing. I/O is allowed in
 * OPEN and RUNNING only.
 *
 * Invariants:
 *  1. key_tail <= dirty_tail <= key_head (lsn order), checked at start (cache_replay.c).
 *  2. The background threads run only in RUNNING and STOPPING, and are joined before STOPPED.
 *  3. A stop persists every staging kset before it stops the threads: what was acknowledged
 *     stays in the log (dirty data stays on the cache device).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache_i.h"
#include "cache_writeback.h"
#include "pcache/log.h"

#define ERR(...) snprintf(err, errlen, __VA_ARGS__)

/* Move c to state to; a transition the machine above does not have fails the assert. */
static void cache_enter(struct pcache_cache *c, enum pcache_cache_state to)
{
	int from = atomic_exchange(&c->state, (int)to);

	(void)from;
	assert((from == PCACHE_CS_OPEN && (to == PCACHE_CS_RUNNING || to == PCACHE_CS_STOPPING)) ||
	       (from == PCACHE_CS_RUNNING && to == PCACHE_CS_STOPPING) ||
	       (from == PCACHE_CS_STOPPING && (to == PCACHE_CS_STOPPING ||
					       to == PCACHE_CS_ABANDONED || to == PCACHE_CS_STOPPED)));
}

/* ---- timer thread ------------------------------------------------------------------------- */

static void *timer_main(void *arg)
{
	struct pcache_cache *c = arg;

	uint64_t tick = c->kset_close_ns / 10;

	if (tick > 100 * 1000 * 1000)
		tick = 100 * 1000 * 1000;
	pthread_mutex_lock(&c->bg_lock);
	while (!c->stopping) {
		(void)pcache_cond_wait_ns(&c->timer_cond, &c->bg_lock, tick);
		if (c->stopping)
			break;
		pthread_mutex_unlock(&c->bg_lock);
		/* ksets ~1 s after their first key; busy stages are retried next tick */
		(void)pcache_stages_close_all(c, false, true, true);
		pcache_heads_release(c, false);
		pthread_mutex_lock(&c->bg_lock);
	}
	pthread_mutex_unlock(&c->bg_lock);
	return NULL;
}

/* ---- start / stop ------------------------------------------------------------------------- */

static void cache_free(struct pcache_cache *c)
{
	pcache_log_reader_free(c->log_rd);
	free(c->gc_buf);
	if (!c->stage_shm)
		free(c->stage);
	free(c);
}

/*
 * Pre-fault the mapping in the background, 64 MiB at a time, so that starting a large cache
 * does not wait for it (an 8 GiB file took over 20 s the first time) and stop can interrupt it.
 */
#define PREFAULT_CHUNK (64ull << 20)

static void *prefault_main(void *arg)
{
	struct pcache_cache *c = arg;
	uint64_t size = pcache_cache_dev_map_size(c->cd), off;

	for (off = 0; off < size && !atomic_load(&c->prefault_stop); off += PREFAULT_CHUNK)
		pcache_cache_dev_prefault(c->cd, off, PREFAULT_CHUNK);
	return NULL;
}

int pcache_cache_start(const struct pcache_cache_opts *opts, struct pcache_cache **out,
		       char *err, size_t errlen)
{
	struct pcache_cache_dev_opts dopts;
	struct pcache_cache_info ci;
	struct pcache_wb_opts wo;
	struct pcache_cache *c;
	int ret;

	c = calloc(1, sizeof(*c));
	if (!c) {
		ERR("out of memory");
		return -ENOMEM;
	}
	c->stage = calloc(PCACHE_NSTAGE, sizeof(*c->stage));
	/* without it GC only drops (copy-forward is an optimisation) */
	c->gc_buf = malloc(PCACHE_GC_BUF_SIZE);
	atomic_init(&c->copy_forward, !opts->no_copy_forward);
	atomic_init(&c->gc_reserve, PCACHE_LOG_RESERVE + 1);
	if (!c->stage) {
		ERR("out of memory");
		ret = -ENOMEM;
		goto err_free;
	}
	memset(&dopts, 0, sizeof(dopts));
	dopts.path = opts->path;
	dopts.create_size = opts->create_size;
	dopts.format_if_blank = opts->format_if_blank;
	dopts.format = &opts->format;
	dopts.wrap_pmem = opts->wrap_pmem;
	dopts.wrap_arg = opts->wrap_arg;
	dopts.read_fault = opts->read_fault;
	dopts.read_fault_arg = opts->read_fault_arg;
	dopts.prefault = false; /* in the background below: a start does not wait for it */
	ret = pcache_cache_dev_open(&dopts, &c->cd, err, errlen);
	if (ret)
		goto err_free;
	/* A torn metadata update leaves one damaged slot: rewrite it from the good copy now,
	 * so a second fault cannot hit the only copy left. */
	if (pcache_cache_dev_damaged(c->cd)) {
		unsigned int n = pcache_cache_dev_damaged(c->cd);
		bool failed = pcache_cache_dev_repair(c->cd) != 0;

		pcache_log(failed ? PCACHE_LOG_ERR : PCACHE_LOG_WARNING, "%u damaged metadata slot(s) %s", n,
			   failed ? "could not be repaired" : "repaired from their good copies");
	}
	ret = pcache_ident_fd(pcache_cache_dev_fd(c->cd), &c->dev_ident);
	if (ret) {
		ERR("cache device %s: identity: %s", opts->path, strerror(-ret));
		goto err_dev;
	}
	c->pm = pcache_cache_dev_pmem(c->cd);
	c->seg_count = pcache_cache_dev_seg_count(c->cd);
	c->seg_size = pcache_cache_dev_seg_size(c->cd);
	c->no_background = opts->no_background;
	c->kset_close_ns = opts->kset_close_ns ? opts->kset_close_ns : PCACHE_KSET_CLOSE_NS;
	pcache_cache_dev_get_info(c->cd, &ci);
	c->data_crc = ci.flags & PCACHE_INFO_DATA_CRC;
	if (opts->data_crc && !c->data_crc) {
		ERR("data_crc: the cache device was formatted without data CRCs (format it with data_crc)");
		ret = -EINVAL;
		goto err_dev;
	}
	if (opts->gc_percent >= 0 && (uint32_t)opts->gc_percent != ci.gc_percent) {
		ci.gc_percent = (uint32_t)opts->gc_percent;
		ret = pcache_cache_dev_set_info(c->cd, &ci);
		if (ret) {
			ERR("gc_percent %d: %s", opts->gc_percent, strerror(-ret));
			goto err_dev;
		}
	}
	ret = pcache_log_reader_new(c->cd, &c->log_rd);
	if (!ret)
		ret = pcache_segs_init(c);
	if (ret) {
		ERR("out of memory");
		goto err_dev;
	}
	atomic_store(&c->segs.wait_timeout_ns, (uint64_t)(opts->space_timeout_s < 0 ?
		     PCACHE_DEFAULT_SPACE_TIMEOUT_S : opts->space_timeout_s) * 1000000000ull);
	pcache_log_init(c);
	pthread_mutex_init(&c->img_lock, NULL);
	pthread_mutex_init(&c->gc_lock, NULL);
	pthread_mutex_init(&c->bg_lock, NULL);
	pthread_cond_init(&c->bg_cond, NULL);
	pthread_cond_init(&c->timer_cond, NULL);
	pthread_mutex_init(&c->missreg_lock, NULL);
	pthread_mutex_init(&c->knob_lock, NULL);

	uint64_t t0 = pcache_now_ns();
	ret = pcache_replay_all(c, err, errlen);
	if (ret)
		goto err_segs;
	c->replay_ns = pcache_now_ns() - t0;
	if (opts->stage_shm) {
		ret = pcache_stage_shm_recover(c, opts->stage_shm, err, errlen);
		if (ret)
			goto err_segs;
	}

	memset(&wo, 0, sizeof(wo));
	wo.no_thread = opts->no_background || opts->defer_background;
	wo.quiet = opts->no_background;
	ret = pcache_wb_start(c->cd, &pcache_cache_wb_ops, c, &wo, &c->wb);
	if (ret) {
		ERR("writeback: %s", strerror(-ret));
		goto err_segs;
	}
	c->bg_deferred = !opts->no_background;
	if (!opts->no_background && !opts->defer_background) {
		ret = pcache_cache_start_background(c, err, errlen);
		if (ret)
			goto err_wb;
	}
	if (opts->prefault) {
		/* best effort: a cache without it works, first touches are just slower */
		if (pthread_create(&c->prefault_thread, NULL, prefault_main, c) == 0)
			c->prefault_started = true;
	}
	*out = c;
	return 0;

err_wb:
	pcache_wb_stop(c->wb);
	c->wb = NULL;
err_segs:
	pcache_segs_exit(c);
err_dev:
	pcache_cache_dev_close(c->cd);
err_free:
	cache_free(c);
	return ret;
}

int pcache_cache_start_background(struct pcache_cache *c, char *err, size_t errlen)
{
	int ret;

	if (!c->bg_deferred)
		return 0;
	ret = pcache_wb_start_thread(c->wb);
	if (ret) {
		ERR("writeback thread: %s", strerror(-ret));
		return ret;
	}
	ret = pcache_gc_start(c);
	if (ret) {
		ERR("gc thread: %s", strerror(-ret));
		return ret;
	}
	ret = pthread_create(&c->timer_thread, NULL, timer_main, c);
	if (ret) {
		ERR("timer thread: %s", strerror(ret));
		return -ret;
	}
	c->timer_started = true;
	c->bg_deferred = false;
	cache_enter(c, PCACHE_CS_RUNNING);
	return 0;
}

/* How long a stop waits for a writeback batch in flight before it leaves it running. */
#define PCACHE_STOP_WB_WAIT_NS (5ull * 1000 * 1000 * 1000)

void pcache_cache_abort_waits(struct pcache_cache *c)
{
	if (!c)
		return;
	/* a signal may come again after a stop that left a batch running (ABANDONED) */
	if (atomic_load(&c->state) < PCACHE_CS_STOPPING)
		cache_enter(c, PCACHE_CS_STOPPING);
	atomic_store(&c->stopping_io, true);
	pcache_segs_abort_waits(c);
	if (c->wb)
		pcache_wb_abort_drains(c->wb, true);
}

int pcache_cache_stop(struct pcache_cache *c, bool drain)
{
	struct pcache_image *imgs[PCACHE_MAX_IMAGES];
	uint32_t i, n = 0;
	int ret = 0, r;

	if (!c)
		return 0;
	/* 1. refuse new I/O and wait for what is in flight */
	cache_enter(c, PCACHE_CS_STOPPING);
	atomic_store(&c->stopping_io, true);
	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i])
			imgs[n++] = c->imgs[i];
	pthread_mutex_unlock(&c->img_lock);
	for (i = 0; i < n; i++) {
		uint64_t t0 = pcache_now_ns();

		while (atomic_load(&imgs[i]->inflight)) {
			usleep(1000);
			if (pcache_now_ns() - t0 > 10ull * 1000 * 1000 * 1000) {
				/* writers still waiting for space that does not come: fail them */
				pcache_log(PCACHE_LOG_WARNING, "stop: writers waiting for space get EIO");
				pcache_segs_fail(c);
				t0 = pcache_now_ns();
			}
		}
	}
	/* 2. persist every staging kset */
	r = pcache_cache_flush(c);
	if (r && !ret)
		ret = r;
	/* 3. optional drain (the callers' drains are over: ours may run), then stop the threads */
	if (c->wb)
		pcache_wb_abort_drains(c->wb, false);
	if (drain && c->wb) {
		r = pcache_wb_drain(c->wb, 0);
		if (r && !ret)
			ret = r;
	}
	pthread_mutex_lock(&c->bg_lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->bg_cond);
	pthread_cond_broadcast(&c->timer_cond);
	pthread_mutex_unlock(&c->bg_lock);
	if (c->timer_started)
		pthread_join(c->timer_thread, NULL);
	atomic_store(&c->prefault_stop, true);
	if (c->prefault_started)
		pthread_join(c->prefault_thread, NULL);
	c->prefault_started = false;
	pcache_gc_stop(c);
	if (c->wb && pcache_wb_stop_timed(c->wb, PCACHE_STOP_WB_WAIT_NS) == -ETIMEDOUT) {
		/*
		 * The staging ksets are persisted (step 2) and the keys of the batch in flight stay
		 * dirty until it completes: leaving now is a crash in the middle of a batch, which
		 * replay and the next writeback handle. Nothing is freed (the thread still runs).
		 */
		pcache_log(PCACHE_LOG_WARNING, "stop: writeback to a slow backing still in flight after %u s; "
			   "leaving it (dirty data stays in the cache)",
			   (unsigned int)(PCACHE_STOP_WB_WAIT_NS / 1000000000ull));
		cache_enter(c, PCACHE_CS_ABANDONED);
		return -ETIMEDOUT;
	}
	c->wb = NULL;
	pcache_segs_fail(c);
	/* 4. detach every image (dirty data stays on the cache device) */
	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		struct pcache_image *img = c->imgs[i];

		if (!img)
			continue;
		c->imgs[i] = NULL;
		atomic_store(&img->detaching, true);
		pthread_mutex_unlock(&c->img_lock);
		pcache_image_quiesce(img);
		pcache_image_teardown(c, img);
		pcache_image_put(img);
		pthread_mutex_lock(&c->img_lock);
	}
	pthread_mutex_unlock(&c->img_lock);
	/* 5. data heads, segments, device */
	pcache_heads_release(c, true);
	pcache_segs_exit(c);
	pcache_cache_dev_close(c->cd);
	cache_enter(c, PCACHE_CS_STOPPED);
	cache_free(c);
	return ret;
}

/* ---- knobs -------------------------------------------------------------------------------- */

static void mode_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->cache_mode = *(const uint32_t *)arg;
}

uint64_t pcache_knob_max(enum pcache_knob k)
{
	switch (k) {
	case PCACHE_KNOB_GC_PERCENT: return PCACHE_MAX_GC_PERCENT;
	case PCACHE_KNOB_WRITEBACK_RATE: return UINT64_MAX;
	case PCACHE_KNOB_DIRTY_HIGH: return 100;
	case PCACHE_KNOB_DIRTY_LOW: return 100;
	case PCACHE_KNOB_SPACE_TIMEOUT: return 24ull * 3600;
	default: return 0;
	}
}

int pcache_cache_set(struct pcache_cache *c, enum pcache_knob k, uint64_t v)
{
	struct pcache_cache_info ci;
	int ret = 0;

	if ((unsigned int)k >= PCACHE_KNOB_COUNT ||
	    (k == PCACHE_KNOB_GC_PERCENT ? v > UINT32_MAX || !pcache_gc_percent_valid((uint32_t)v) :
	     v > pcache_knob_max(k)))
		return -EINVAL;
	if (k == PCACHE_KNOB_SPACE_TIMEOUT) {
		/* run time only (not persisted): the daemon's -o space_timeout sets it at start */
		atomic_store(&c->segs.wait_timeout_ns, v * 1000000000ull);
		pthread_cond_broadcast(&c->segs.cond);
		return 0;
	}
	pthread_mutex_lock(&c->knob_lock);
	pcache_cache_dev_get_info(c->cd, &ci);
	switch (k) {
	case PCACHE_KNOB_GC_PERCENT: ci.gc_percent = (uint32_t)v; break;
	case PCACHE_KNOB_WRITEBACK_RATE: ci.wb_rate = v; break;
	case PCACHE_KNOB_DIRTY_HIGH: ci.dirty_high = (uint32_t)v; break;
	case PCACHE_KNOB_DIRTY_LOW: ci.dirty_low = (uint32_t)v; break;
	default: break;
	}
	ret = pcache_cache_dev_set_info(c->cd, &ci);
	if (!ret && c->wb) {
		pcache_wb_set_rate(c->wb, ci.wb_rate);
		(void)pcache_wb_set_watermarks(c->wb, ci.dirty_high, ci.dirty_low);
	}
	pthread_mutex_unlock(&c->knob_lock);
	if (!ret)
		pcache_gc_kick(c);
	return ret;
}

uint64_t pcache_cache_get(struct pcache_cache *c, enum pcache_knob k)
{
	struct pcache_cache_info ci;

	pcache_cache_dev_get_info(c->cd, &ci);
	switch (k) {
	case PCACHE_KNOB_GC_PERCENT: return ci.gc_percent;
	case PCACHE_KNOB_WRITEBACK_RATE: return ci.wb_rate;
	case PCACHE_KNOB_DIRTY_HIGH: return ci.dirty_high;
	case PCACHE_KNOB_DIRTY_LOW: return ci.dirty_low;
	case PCACHE_KNOB_SPACE_TIMEOUT:
		return atomic_load(&c->segs.wait_timeout_ns) / 1000000000ull;
	default: return 0;
	}
}

int pcache_image_set_cache_mode(struct pcache_image *img, uint32_t m)
{
	int ret;

	if (m > PCACHE_MODE_WRITEAROUND)
		return -EINVAL;
	/* Leaving writeback: drain the image's dirty data first, so the backing is current
	 * when writes start going to it directly. */
	if (m != PCACHE_MODE_WRITEBACK && atomic_load(&img->cache_mode) == PCACHE_MODE_WRITEBACK) {
		ret = pcache_image_writeback_all(img);
		if (ret)
			return ret;
	}
	return pcache_image_ent_edit(img, mode_edit_fn, &m);
}

uint32_t pcache_image_cache_mode(const struct pcache_image *img)
{
	return atomic_load(&img->cache_mode);
}

uint64_t pcache_seq_cutoff_bytes(uint32_t field)
{
	if (field == 0)
		return PCACHE_SEQ_CUTOFF_DEFAULT;
	if (field == PCACHE_SEQ_CUTOFF_OFF)
		return 0;
	return (uint64_t)field << 10;
}

uint64_t pcache_share_limit(struct pcache_cache *c, uint32_t max_share)
{
	if (!max_share || max_share >= 100)
		return 0;
	return (uint64_t)c->seg_count * c->seg_size / 100 * max_share;
}

static void share_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->max_share = *(const uint32_t *)arg;
}

int pcache_image_set_max_share(struct pcache_image *img, uint32_t pct)
{
	if (pct > 100)
		return -EINVAL;
	return pcache_image_ent_edit(img, share_edit_fn, &pct);
}

uint32_t pcache_image_max_share(struct pcache_image *img)
{
	uint32_t v;

	pthread_mutex_lock(&img->ent_lock);
	v = img->ent.max_share;
	pthread_mutex_unlock(&img->ent_lock);
	return v;
}

static void seq_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->seq_cutoff = *(const uint32_t *)arg;
}

int pcache_image_set_seq_cutoff(struct pcache_image *img, uint64_t bytes)
{
	uint32_t field;

	if (bytes > PCACHE_SEQ_CUTOFF_MAX)
		return -EINVAL;
	field = bytes ? (uint32_t)((bytes + 1023) >> 10) : PCACHE_SEQ_CUTOFF_OFF;
	return pcache_image_ent_edit(img, seq_edit_fn, &field);
}

uint64_t pcache_image_seq_cutoff(const struct pcache_image *img)
{
	return atomic_load(&img->seq_cutoff);
}

/* ---- status ------------------------------------------------------------------------------- */

void pcache_image_get_stats(struct pcache_image *img, struct pcache_image_stats *st)
{
	struct pcache_wb_image_stats ws;

	memset(st, 0, sizeof(*st));
	st->reads = atomic_load(&img->reads);
	st->writes = atomic_load(&img->writes);
	st->flushes = atomic_load(&img->flushes);
	st->discards = atomic_load(&img->discards);
	st->read_bytes = atomic_load(&img->read_bytes);
	st->write_bytes = atomic_load(&img->write_bytes);
	st->read_hit_bytes = atomic_load(&img->read_hit_bytes);
	st->read_miss_bytes = atomic_load(&img->read_miss_bytes);
	st->read_bypass_bytes = atomic_load(&img->read_bypass_bytes);
	st->write_bypass_bytes = atomic_load(&img->write_bypass_bytes);
	st->seq_cutoff = atomic_load(&img->seq_cutoff);
	st->max_share = pcache_image_max_share(img);
	st->share_bypass_bytes = atomic_load(&img->share_bypass_bytes);
	st->crc_errors = atomic_load(&img->crc_errors);
	st->backing_errors = atomic_load(&img->backing_errors);
	st->cache_mode = atomic_load(&img->cache_mode);
	if (!atomic_load(&img->detaching)) {
		int64_t log_dirty = atomic_load(&img->dirty_bytes);

		pcache_index_totals(&img->ix, &st->cached_bytes, &st->dirty_bytes, NULL, NULL);
		/*
		 * Index keys stay marked dirty after their writeback; the dirty counters (the log
		 * after dirty_tail and after the image's own writeback progress, no walk) count
		 * overlapped keys twice. Both are upper bounds: report the smaller.
		 */
		if (log_dirty < 0)
			log_dirty = 0;
		if ((uint64_t)log_dirty < st->dirty_bytes)
			st->dirty_bytes = (uint64_t)log_dirty;
	}
	if (img->c->wb && pcache_wb_image_stats(img->c->wb, img->id, &ws) == 0) {
		st->wb_lsn = ws.wb_lsn;
		st->wb_time = ws.wb_time;
		st->wb_bytes = ws.bytes_written;
		st->wb_errors = ws.errors;
		st->wb_last_error = ws.last_error;
	} else {
		pthread_mutex_lock(&img->ent_lock);
		st->wb_lsn = img->ent.wb_lsn;
		st->wb_time = img->ent.wb_time;
		pthread_mutex_unlock(&img->ent_lock);
	}
}

void pcache_cache_get_status(struct pcache_cache *c, struct pcache_cache_status *st)
{
	struct pcache_cache_info ci;
	struct pcache_image *imgs[PCACHE_MAX_IMAGES];
	int n, i;

	memset(st, 0, sizeof(*st));
	st->seg_count = c->seg_count;
	st->seg_size = c->seg_size;
	st->segs_used = pcache_segs_used(c, &st->segs_data, &st->segs_log);
	pcache_log_head(c, &st->key_head);
	pcache_cache_dev_get_dirty_tail(c->cd, &st->dirty_tail);
	pcache_cache_dev_get_key_tail(c->cd, &st->key_tail);
	pcache_cache_dev_get_info(c->cd, &ci);
	st->gc_percent = ci.gc_percent;
	st->gc_reserve = atomic_load(&c->gc_reserve);
	if (ci.gc_percent == PCACHE_GC_PERCENT_AUTO) {
		st->gc_auto = true;
		st->gc_percent = c->seg_count > st->gc_reserve ?
				 (uint32_t)((uint64_t)(c->seg_count - st->gc_reserve) * 100 / c->seg_count) : 0;
	}
	st->gc_copied_bytes = atomic_load(&c->gc_copied_bytes);
	st->gc_copied_keys = atomic_load(&c->gc_copied_keys);
	st->gc_dropped_bytes = atomic_load(&c->gc_dropped_bytes);
	st->dirty_high = ci.dirty_high;
	st->dirty_low = ci.dirty_low;
	st->wb_rate = ci.wb_rate;
	st->data_crc = c->data_crc;
	st->granularity = pcache_cache_dev_granularity(c->cd);
	pthread_mutex_lock(&c->segs.lock);
	st->full_waits = c->segs.full_waits;
	st->full_wait_ns = c->segs.full_wait_ns;
	st->space_timeouts = c->segs.space_timeouts;
	st->segs_freed = c->segs.segs_freed;
	pthread_mutex_unlock(&c->segs.lock);
	pthread_mutex_lock(&c->log.lock);
	st->ksets_written = c->log.ksets_written;
	st->flush_commits = atomic_load(&c->flush_begun);
	st->flush_joined = atomic_load(&c->flush_joined);
	pthread_mutex_unlock(&c->log.lock);
	pthread_mutex_lock(&c->bg_lock);
	st->gc_runs = c->gc_runs;
	pthread_mutex_unlock(&c->bg_lock);
	st->wb_errors = atomic_load(&c->wb_errors);
	st->media_errors = atomic_load(&c->media_errors);
	if (c->wb) {
		struct pcache_wb_stats ws;

		pcache_wb_get_stats(c->wb, &ws);
		st->wb_errors += ws.errors;
		st->media_errors += ws.media_errors;
		st->wb_bytes = ws.bytes_written + ws.bytes_zeroed;
		st->wb_superseded = ws.bytes_superseded;
	}
	{
		uint64_t in = atomic_load(&c->dirty_in), out = atomic_load(&c->dirty_out);

		st->dirty_bytes = in > out ? in - out : 0;
		st->dirty_percent = pcache_cache_dirty_percent(c);
	}
	n = pcache_cache_images(c, imgs, PCACHE_MAX_IMAGES);
	st->images = (uint32_t)n;
	for (i = 0; i < n; i++) {
		uint64_t keys = 0, cap = 0;

		if (!atomic_load(&imgs[i]->detaching)) {
			pcache_index_totals(&imgs[i]->ix, NULL, NULL, &keys, &cap);
			st->keys_indexed += keys;
			st->index_bytes += (uint64_t)imgs[i]->ix.nsub * sizeof(struct pcache_subtree) +
					   cap * sizeof(struct pcache_ikey);
		}
		pcache_image_put(imgs[i]);
	}
}
