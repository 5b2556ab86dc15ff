/*
 * cache_writeback.c -- log-order, epoch-based writeback of dirty data to the backing images:
 * the thread and its pacing, start/stop and controls, the per-image table. One batch is in
 * cache_wb_batch.c, drains and the offline writeback in cache_wb_drain.c, the shared
 * structures in wb_i.h.
 *
 * The writeback walks the on-media log from dirty_tail up to key_head (supplied by the engine,
 * or the end of the log found by scanning when offline), validating each kset like replay. The
 * ksets are cut into batches: a batch holds ksets of ONE epoch (an epoch is everything between
 * two upper-layer flushes), up to batch_bytes / batch_keys. For a batch:
 *   1. collect the dirty keys (CLEAN skipped, stale and unknown-image keys skipped and counted,
 *      data CRC verified when the cache has data_crc); bytes the engine says a later key of
 *      the same epoch replaced (ops.live) are skipped too: only the newest copy is written;
 *   2. resolve overlaps per image with a sweep, the latest key of the batch winning for each
 *      byte, and merge ranges adjacent on the backing and in pmem into one request;
 *   3. issue the requests (KMEM writes straight from pmem, ZERO for ZERO keys) with up to
 *      max_inflight requests / max_inflight_bytes in flight, through the token bucket;
 *   4. wait for all of them, then FLUSH every image written, then persist dirty_tail.
 * Dirty_tail is persisted at most once per batch, and the backing flush is the only barrier.
 *
 * Invariants:
 *  1. The backing image equals all writes of all epochs before dirty_tail plus a subset of the
 *     next epoch's writes: a batch never spans two epochs, and the requests of a batch are
 *     issued only after the previous batch's requests completed and its flush returned.
 *  2. dirty_tail is persisted only after a successful FLUSH of every image whose keys lie
 *     before it (no flush is needed for a batch that wrote nothing).
 *  3. Within a batch no two requests overlap on one image (the sweep gives each byte to the
 *     latest key), so completion order does not matter.
 *  4. Nothing is written from a key whose data CRC does not match (when data_crc), from a key
 *     of a stale segment generation, or from a kset that failed validation.
 *  5. A failing image never loses data: its done_lsn does not move past the failed batch, its
 *     later keys are skipped (never written out of order), and dirty_tail stays at or before
 *     the first kset holding one of its not-yet-durable keys (block_pos). Other images go on;
 *     on retry the walker rewinds to dirty_tail and skips keys below each image's done_lsn.
 *  6. For every image that is not blocked, done_lsn >= the committed scan position; a blocked
 *     image's done_lsn is at most the lsn of its first not-durable key.
 *  7. Older data never lands on a backing after a writethrough write's data: an image's
 *     writethrough writes are held (ops.through_hold) while its requests are issued and until
 *     they completed, never across a rate-limit sleep. If one completed since live() was asked
 *     for the image's keys (ops.through_count() moved: read before the first live() of the
 *     image), live() is asked again under the hold for the bytes not issued yet; the THROUGH
 *     key of such a write is in the index before its backing write, so the answer sees it.
 *
 * Threads and locks: one worker (the writeback thread, or the caller with no_thread / offline,
 * serialised by run_lock) runs batches. wb->lock guards the fields marked below (read by
 * stats/drain from any thread); wb->io_lock guards the in-flight counters updated by backing
 * completions. Order: run_lock, persist_lock, lock, io_lock; lock and io_lock are never held
 * across a backing submit that may block, nor across engine callbacks.
 */
#include <errno.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pcache/log.h"
#include "pcache/media.h"
#include "pcache/util.h"
#include "wb_i.h"

/* ---- clock and token bucket --------------------------------------------------------------- */

uint64_t pcache_wb_now(struct pcache_wb *wb)
{
	return wb->o.clock_now ? wb->o.clock_now(wb->o.clock_arg) : pcache_now_ns();
}

void pcache_wb_sleep(struct pcache_wb *wb, uint64_t ns)
{
	struct timespec ts;

	if (wb->o.clock_sleep) {
		wb->o.clock_sleep(wb->o.clock_arg, ns);
		return;
	}
	ts.tv_sec = (time_t)(ns / WB_NS_PER_SEC);
	ts.tv_nsec = (long)(ns % WB_NS_PER_SEC);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void pcache_wb_bucket_init(struct pcache_wb_bucket *b, uint64_t rate, uint64_t burst, uint64_t now)
{
	b->rate = rate;
	b->burst = burst;
	b->tokens = (int64_t)burst;
	b->last = now;
}

uint64_t pcache_wb_bucket_take(struct pcache_wb_bucket *b, uint64_t now, uint64_t len)
{
	uint64_t dt, add;

	if (!b->rate)
		return 0;
	if (now > b->last) {
		dt = now - b->last;
		/* refill: rate * dt / 1e9 without overflow for dt up to hours */
		add = (dt / WB_NS_PER_SEC) * b->rate + (dt % WB_NS_PER_SEC) * b->rate / WB_NS_PER_SEC;
		b->last = now;
		if (add > b->burst || b->tokens + (int64_t)add > (int64_t)b->burst)
			b->tokens = (int64_t)b->burst;
		else
			b->tokens += (int64_t)add;
	}
	if (b->tokens < 0)
		return ((uint64_t)-b->tokens * WB_NS_PER_SEC + b->rate - 1) / b->rate;
	/* NOTE: a request may drive the bucket into debt by at most its length; the next one
	 * waits for the debt. So bytes issued by time T <= burst + rate * T + one request. */
	b->tokens -= (int64_t)len;
	return 0;
}

/* ---- images ------------------------------------------------------------------------------- */

static int wb_table_find(struct pcache_wb *wb, uint32_t id, struct pcache_image_ent *out)
{
	int n = pcache_cache_dev_images(wb->cd, wb->table, (int)PCACHE_MAX_IMAGES);

	for (int i = 0; i < n; i++) {
		if (wb->table[i].id == id) {
			if (out)
				*out = wb->table[i];
			return 0;
		}
	}
	return -ENOENT;
}

/* Index of image id, created (done_lsn = the walker position) on first sight; -ENOMEM. */
int pcache_wb_img_index(struct pcache_wb *wb, uint32_t id, uint64_t cur_lsn)
{
	struct wb_img *v, *im;
	struct pcache_image_ent e;
	bool found;

	for (uint32_t i = 0; i < wb->n_imgs; i++)
		if (wb->imgs[i].id == id)
			return (int)i;
	if (wb->n_imgs == wb->cap_imgs) {
		uint32_t cap = wb->cap_imgs ? wb->cap_imgs * 2 : 8;

		pthread_mutex_lock(&wb->lock);
		v = realloc(wb->imgs, cap * sizeof(*v));
		if (v) {
			wb->imgs = v;
			wb->cap_imgs = cap;
		}
		pthread_mutex_unlock(&wb->lock);
		if (!v)
			return -ENOMEM;
	}
	memset(&e, 0, sizeof(e));
	pthread_mutex_lock(&wb->persist_lock);
	found = wb_table_find(wb, id, &e) == 0;
	pthread_mutex_unlock(&wb->persist_lock);
	pthread_mutex_lock(&wb->lock);
	im = &wb->imgs[wb->n_imgs];
	memset(im, 0, sizeof(*im));
	im->id = id;
	im->in_table = found;
	im->done_lsn = cur_lsn;
	im->persisted_lsn = e.wb_lsn;
	im->wb_time = e.wb_time;
	wb->n_imgs++;
	pthread_mutex_unlock(&wb->lock);
	return (int)(wb->n_imgs - 1);
}

/* Persist wb_lsn/wb_time of images written since the last persist (all when force). */
void pcache_wb_persist_images(struct pcache_wb *wb, bool force)
{
	struct pcache_image_ent e;
	uint64_t lsn, t;
	uint32_t id, n;
	bool skip;

	pthread_mutex_lock(&wb->persist_lock);
	pthread_mutex_lock(&wb->lock);
	n = wb->n_imgs;
	pthread_mutex_unlock(&wb->lock);
	for (uint32_t i = 0; i < n; i++) {
		pthread_mutex_lock(&wb->lock);
		id = wb->imgs[i].id;
		lsn = wb->imgs[i].done_lsn;
		t = wb->imgs[i].wb_time;
		/* a blocked image (its backing refused or failing) wrote nothing new: its stored
		 * progress stays, even at a forced persist (an offline writeback that refuses an
		 * image leaves the cache device as it was) */
		skip = !wb->imgs[i].in_table || lsn == wb->imgs[i].persisted_lsn ||
		       ((!force || wb->imgs[i].blocked) && !wb->imgs[i].written_since_persist);
		pthread_mutex_unlock(&wb->lock);
		if (skip)
			continue;
		if (wb->ops.image_progress) {
			if (wb->ops.image_progress(wb->ctx, id, lsn, t) != 0)
				continue;
		} else {
			/* set_wb rewrites only the two progress fields under the table lock, so
			 * a concurrent rename or attribute change by the engine is kept */
			if (wb_table_find(wb, id, &e) != 0)
				continue;
			if (pcache_cache_dev_image_set_wb(wb->cd, e.slot, id, lsn, t) != 0)
				continue;
		}
		pthread_mutex_lock(&wb->lock);
		wb->imgs[i].persisted_lsn = lsn;
		wb->imgs[i].written_since_persist = false;
		pthread_mutex_unlock(&wb->lock);
	}
	__atomic_store_n(&wb->last_persist_ns, pcache_now_ns(), __ATOMIC_RELAXED);
	pthread_mutex_unlock(&wb->persist_lock);
}

/* ---- the thread --------------------------------------------------------------------------- */

/* Hysteresis: urgent from dirty_high until below dirty_low. Returns the dirty percent. */
uint32_t pcache_wb_urgent_update(struct pcache_wb *wb, bool *urgent)
{
	uint32_t pct;

	pthread_mutex_lock(&wb->lock);
	pct = wb->dirty_low; /* no dirty_percent op: rate limited, continuous */
	pthread_mutex_unlock(&wb->lock);
	if (wb->ops.dirty_percent)
		pct = wb->ops.dirty_percent(wb->ctx);
	pthread_mutex_lock(&wb->lock);
	if (pct >= wb->dirty_high)
		wb->st.urgent = true;
	else if (pct < wb->dirty_low)
		wb->st.urgent = false;
	*urgent = wb->st.urgent;
	pthread_mutex_unlock(&wb->lock);
	/* the rate limit is a background preference: it never keeps waiting writers waiting */
	if (wb->ops.space_wanted && wb->ops.space_wanted(wb->ctx))
		*urgent = true;
	return pct;
}

static void wb_wait(struct pcache_wb *wb, uint64_t ns)
{
	uint64_t deadline = pcache_now_ns() + ns;

	pthread_mutex_lock(&wb->lock);
	while (!wb->kicked && !wb->stopping) {
		if (pcache_cond_wait_until(&wb->cond, &wb->lock, deadline) == ETIMEDOUT)
			break;
		wb->st.wakes++;
	}
	wb->kicked = false;
	pthread_mutex_unlock(&wb->lock);
}

/*
 * The busy writeback's pause: kicks for new dirty data (every kset close) do not end it, or
 * it would run as often as ksets close, and do not even wake it (pcache_wb_kick_data()) unless
 * dirty data reached dirty_high; a drain, stop, writers waiting for space (their GC kicks with
 * pcache_wb_kick()), idle, or dirty data reaching dirty_high end it.
 */
static void wb_busy_wait(struct pcache_wb *wb, uint64_t ns)
{
	uint64_t end = pcache_now_ns() + ns, now;

	pthread_mutex_lock(&wb->lock);
	wb->busy_pause = true;
	pthread_mutex_unlock(&wb->lock);
	while ((now = pcache_now_ns()) < end) {
		bool leave;
		uint32_t high;

		wb_wait(wb, end - now);
		pthread_mutex_lock(&wb->lock);
		leave = wb->drains > 0 || wb->stopping;
		high = wb->dirty_high;
		pthread_mutex_unlock(&wb->lock);
		if (leave || (wb->ops.space_wanted && wb->ops.space_wanted(wb->ctx)) ||
		    (wb->ops.idle && wb->ops.idle(wb->ctx)) ||
		    (wb->ops.dirty_percent && wb->ops.dirty_percent(wb->ctx) >= high))
			break;
	}
	pthread_mutex_lock(&wb->lock);
	wb->busy_pause = false;
	pthread_mutex_unlock(&wb->lock);
}

/* The pause after a busy batch: the whole interval below dirty_low, shrinking linearly to
 * none at dirty_high. */
uint64_t pcache_wb_busy_pause_ns(uint32_t pct, uint32_t low, uint32_t high, uint32_t interval_ms)
{
	uint64_t full = (uint64_t)interval_ms * 1000000ull;

	if (pct < low || high <= low)
		return full;
	if (pct >= high)
		return 0;
	return full * (high - pct) / (high - low);
}

uint64_t pcache_wb_next_retry_ns(struct pcache_wb *wb)
{
	uint64_t now = pcache_wb_now(wb), best = WB_POLL_NS;

	pthread_mutex_lock(&wb->lock);
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->blocked && !im->latched)
			best = PCACHE_MIN(best, im->retry_at > now ? im->retry_at - now : 0);
	}
	pthread_mutex_unlock(&wb->lock);
	return best;
}

/*
 * The writeback thread. Speed by state: a drain waiting, writers waiting for space, or above
 * dirty_high (until below dirty_low): full speed, no rate limit; idle (no user I/O): continuous
 * at the rate limit; busy (user I/O going on) and not urgent: small batches (1/
 * PCACHE_WB_TRICKLE_DIV of a full one), each followed by a pause of idle_interval_ms below
 * dirty_low, shrinking linearly to none at dirty_high (pcache_wb_busy_pause_ns()). Writing
 * back while the user writes takes CPU and backing bandwidth from them, and data left dirty
 * longer is more often rewritten within its epoch and then never written at all (measured:
 * continuous writeback above dirty_low cost 4 KiB random writers 20-25 % of their IOPS).
 * Without a dirty_percent op there are no watermarks: continuous at the rate limit.
 */
static void *wb_thread(void *arg)
{
	struct pcache_wb *wb = arg;

	for (;;) {
		bool urgent, drain, idle, stop, busy;
		uint64_t rate;
		uint32_t pct, low, high;
		int r;

		pthread_mutex_lock(&wb->lock);
		stop = wb->stopping;
		drain = wb->drains > 0;
		rate = wb->rate;
		low = wb->dirty_low;
		high = wb->dirty_high;
		pthread_mutex_unlock(&wb->lock);
		if (stop)
			break;
		pct = pcache_wb_urgent_update(wb, &urgent);
		idle = wb->ops.idle ? wb->ops.idle(wb->ctx) : true;
		busy = wb->ops.dirty_percent && !urgent && !drain && !idle &&
		       !(wb->ops.space_wanted && wb->ops.space_wanted(wb->ctx));
		r = pcache_wb_batch(wb, rate && !urgent && !drain, busy);
		if (r > 0) {
			uint64_t pause = busy ? pcache_wb_busy_pause_ns(pct, low, high,
								       wb->o.idle_interval_ms) : 0;

			if (pause)
				wb_busy_wait(wb, pause);
			continue;
		}
		if (r == -ENOMEM) {
			wb_wait(wb, 100ull * 1000 * 1000);
			continue;
		}
		wb_wait(wb, r < 0 ? WB_POLL_NS : pcache_wb_next_retry_ns(wb));
	}
	return NULL;
}

int pcache_wb_run_once(struct pcache_wb *wb)
{
	bool limited, urgent;
	int r;

	if (wb->have_thread)
		return -EINVAL; /* the thread is the worker */
	pthread_mutex_lock(&wb->run_lock);
	(void)pcache_wb_urgent_update(wb, &urgent);
	pthread_mutex_lock(&wb->lock);
	limited = wb->rate && !urgent && !wb->drains;
	pthread_mutex_unlock(&wb->lock);
	r = pcache_wb_batch(wb, limited, false);
	pthread_mutex_unlock(&wb->run_lock);
	return r;
}

/* ---- start, stop, controls ---------------------------------------------------------------- */

/* The locks and condition variables of wb (no thread uses them any more). */
static void wb_destroy_sync(struct pcache_wb *wb)
{
	pthread_cond_destroy(&wb->io_cond);
	pthread_mutex_destroy(&wb->io_lock);
	pthread_cond_destroy(&wb->done_cond);
	pthread_cond_destroy(&wb->cond);
	pthread_mutex_destroy(&wb->lock);
	pthread_mutex_destroy(&wb->persist_lock);
	pthread_mutex_destroy(&wb->run_lock);
}

int pcache_wb_start(struct pcache_cache_dev *cd, const struct pcache_wb_ops *ops, void *ctx,
		    const struct pcache_wb_opts *opts, struct pcache_wb **out)
{
	struct pcache_cache_info ci;
	struct pcache_wb *wb;
	int r;

	if (!ops || !ops->key_head || !ops->backing_get)
		return -EINVAL;
	wb = calloc(1, sizeof(*wb));
	if (!wb)
		return -ENOMEM;
	wb->table = calloc(PCACHE_MAX_IMAGES, sizeof(*wb->table));
	if (!wb->table) {
		r = -ENOMEM;
		goto err_free;
	}
	wb->cd = cd;
	wb->ops = *ops;
	wb->ctx = ctx;
	if (opts)
		wb->o = *opts;
	if (!wb->o.max_inflight)
		wb->o.max_inflight = PCACHE_WB_DEFAULT_MAX_INFLIGHT;
	if (!wb->o.max_inflight_bytes)
		wb->o.max_inflight_bytes = PCACHE_WB_DEFAULT_MAX_INFLIGHT_BYTES;
	if (!wb->o.max_req_bytes)
		wb->o.max_req_bytes = PCACHE_WB_DEFAULT_MAX_REQ_BYTES;
	if (!wb->o.batch_bytes)
		wb->o.batch_bytes = PCACHE_WB_DEFAULT_BATCH_BYTES;
	if (!wb->o.batch_keys)
		wb->o.batch_keys = PCACHE_WB_DEFAULT_BATCH_KEYS;
	if (!wb->o.idle_interval_ms)
		wb->o.idle_interval_ms = 1000;
	wb->seg_count = pcache_cache_dev_seg_count(cd);
	wb->seg_size = pcache_cache_dev_seg_size(cd);
	r = pcache_log_reader_new(cd, &wb->rd);
	if (r)
		goto err_free;
	pcache_cache_dev_get_info(cd, &ci);
	wb->data_crc = (ci.flags & PCACHE_INFO_DATA_CRC) != 0;
	wb->rate = ci.wb_rate;
	wb->dirty_high = ci.dirty_high;
	wb->dirty_low = ci.dirty_low;
	pcache_wb_bucket_init(&wb->bucket, wb->rate, PCACHE_MAX(wb->rate / 10, wb->o.max_req_bytes),
			      pcache_wb_now(wb));
	pcache_cache_dev_get_dirty_tail(cd, &wb->dirty_tail);
	wb->scan = wb->dirty_tail;
	wb->st.dirty_tail = wb->dirty_tail;
	wb->st.scan = wb->scan;
	wb->last_persist_ns = pcache_now_ns();
	pthread_mutex_init(&wb->run_lock, NULL);
	pthread_mutex_init(&wb->persist_lock, NULL);
	pthread_mutex_init(&wb->lock, NULL);
	pthread_cond_init(&wb->cond, NULL);
	pthread_cond_init(&wb->done_cond, NULL);
	pthread_mutex_init(&wb->io_lock, NULL);
	pthread_cond_init(&wb->io_cond, NULL);
	if (!wb->o.no_thread) {
		r = -pthread_create(&wb->thread, NULL, wb_thread, wb);
		if (r)
			goto err_sync;
		wb->have_thread = true;
	}
	*out = wb;
	return 0;

err_sync:
	wb_destroy_sync(wb);
err_free:
	pcache_log_reader_free(wb->rd);
	free(wb->table);
	free(wb);
	return r;
}

void pcache_wb_image_forget(struct pcache_wb *wb, uint32_t image_id)
{
	pthread_mutex_lock(&wb->lock);
	if (wb->n_forget < sizeof(wb->forget_ids) / sizeof(wb->forget_ids[0]))
		wb->forget_ids[wb->n_forget++] = image_id;
	pthread_mutex_unlock(&wb->lock);
	pcache_wb_kick(wb);
}

int pcache_wb_start_thread(struct pcache_wb *wb)
{
	int r;

	if (wb->have_thread)
		return 0;
	wb->o.no_thread = false;
	r = -pthread_create(&wb->thread, NULL, wb_thread, wb);
	if (r) {
		wb->o.no_thread = true;
		return r;
	}
	wb->have_thread = true;
	return 0;
}

int pcache_wb_stop_timed(struct pcache_wb *wb, uint64_t wait_ns)
{
	if (!wb)
		return 0;
	pthread_mutex_lock(&wb->lock);
	wb->stopping = true;
	pthread_cond_broadcast(&wb->cond);
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
	if (wb->have_thread && wait_ns) {
		/* the thread still owns its requests in flight: leave everything as it is */
		if (pcache_join_until(wb->thread, pcache_now_ns() + wait_ns) != 0)
			return -ETIMEDOUT;
	} else if (wb->have_thread) {
		pthread_join(wb->thread, NULL);
	}
	pcache_wb_wait_inflight(wb, 0, 0);
	pcache_wb_persist_images(wb, true);
	wb_destroy_sync(wb);
	free(wb->imgs);
	free(wb->exts.v);
	free(wb->reqs.v);
	free(wb->rexts.v);
	free(wb->rreqs.v);
	free(wb->heap);
	free(wb->table);
	pcache_log_reader_free(wb->rd);
	free(wb);
	return 0;
}

void pcache_wb_stop(struct pcache_wb *wb)
{
	pcache_wb_stop_timed(wb, 0);
}

void pcache_wb_kick(struct pcache_wb *wb)
{
	pthread_mutex_lock(&wb->lock);
	wb->kicked = true;
	wb->retry_enxio = true;
	pthread_cond_signal(&wb->cond);
	pthread_mutex_unlock(&wb->lock);
}

void pcache_wb_kick_data(struct pcache_wb *wb)
{
	uint32_t pct = wb->ops.dirty_percent ? wb->ops.dirty_percent(wb->ctx) : 0;

	pthread_mutex_lock(&wb->lock);
	wb->kicked = true;
	wb->retry_enxio = true;
	if (!wb->busy_pause || pct >= wb->dirty_high)
		pthread_cond_signal(&wb->cond);
	pthread_mutex_unlock(&wb->lock);
}

void pcache_wb_set_rate(struct pcache_wb *wb, uint64_t bytes_per_sec)
{
	pthread_mutex_lock(&wb->lock);
	wb->rate = bytes_per_sec;
	pcache_wb_bucket_init(&wb->bucket, bytes_per_sec,
			      PCACHE_MAX(bytes_per_sec / 10, wb->o.max_req_bytes), pcache_wb_now(wb));
	pthread_mutex_unlock(&wb->lock);
}

int pcache_wb_set_watermarks(struct pcache_wb *wb, uint32_t dirty_high, uint32_t dirty_low)
{
	if (dirty_high > 100 || dirty_low >= dirty_high)
		return -EINVAL;
	pthread_mutex_lock(&wb->lock);
	wb->dirty_high = dirty_high;
	wb->dirty_low = dirty_low;
	pthread_cond_signal(&wb->cond);
	pthread_mutex_unlock(&wb->lock);
	return 0;
}

void pcache_wb_get_stats(struct pcache_wb *wb, struct pcache_wb_stats *st)
{
	pthread_mutex_lock(&wb->lock);
	*st = wb->st;
	pthread_mutex_unlock(&wb->lock);
}

int pcache_wb_image_stats(struct pcache_wb *wb, uint32_t image_id, struct pcache_wb_image_stats *st)
{
	int r = -ENOENT;

	pthread_mutex_lock(&wb->lock);
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->id != image_id)
			continue;
		st->wb_lsn = im->done_lsn;
		st->wb_time = im->wb_time;
		st->bytes_written = im->bytes_written;
		st->errors = im->errors;
		st->last_error = im->last_error;
		st->blocked = im->blocked;
		r = 0;
	}
	pthread_mutex_unlock(&wb->lock);
	return r;
}
