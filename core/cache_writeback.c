/*
 * cache_writeback.c -- log-order, epoch-based writeback of dirty data to the backing images.
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
#include "cache_writeback.h"

#define WB_NS_PER_SEC 1000000000ull
#define WB_POLL_NS (1000ull * 1000 * 1000)      /* key_head poll when nothing to do */
#define WB_PERSIST_NS (30ull * WB_NS_PER_SEC)   /* wb_lsn persisted at least this often */
#define WB_ZERO_MAX_REQ (64ull << 20)
#define WB_OFFLINE_MAX_FAILS 4u
#define WB_ENXIO_KICK_NS (100ull * 1000 * 1000) /* earliest retry of a missing backing on a kick */
#define WB_DRAIN_ENXIO_FAILS 3u                  /* a drain reports -ENXIO after this many */
#define WB_LIVE_MAX 16u                          /* live ranges asked per key */

/* Per-image writeback state (only the worker writes it, under wb->lock). */
struct wb_img {
	uint32_t id;
	bool in_table;          /* present in the image table (else its keys are skipped) */
	bool blocked;           /* failing or not attached: its keys are skipped until retry */
	bool latched;           /* data CRC mismatch or media error: blocked until restart */
	uint64_t bad_off, bad_len; /* the image extent whose cached data could not be read */
	uint64_t done_lsn;      /* all its keys in ksets with lsn < done_lsn are durable */
	uint64_t persisted_lsn; /* wb_lsn last written to the image table */
	uint64_t wb_time;
	uint64_t retry_at, backoff;
	uint64_t bytes_written, errors, fail_seq, fails_in_row;
	int last_error;
	bool written_since_persist;
	/* per batch (worker only) */
	struct pcache_backing *b;
	uint64_t through_seen;  /* ops.through_count() when live() was last asked for its keys */
	bool in_batch;
	bool batch_done;        /* committed: its progress moved past the batch */
	int batch_err;
	uint64_t batch_bytes;
	uint64_t batch_keys, batch_key_bytes; /* its dirty keys in the batch (ops.image_passed) */
};

/* One dirty key range of the batch (input of the sweep). */
struct wb_ext {
	uint64_t off, end;
	uint64_t seq;           /* position in the batch: larger = later in the log */
	const uint8_t *src;     /* pmem data of byte off (NULL for ZERO) */
	uint32_t img;           /* index in wb->imgs */
	uint32_t seg, seg_off;  /* the key's data position of byte off (not for ZERO) ... */
	uint64_t seg_gen;       /* ... and generation: live() is asked again from these */
};

struct wb_extv {
	struct wb_ext *v;
	size_t n, cap;
};

/* One request to a backing (output of the sweep). */
struct wb_req {
	struct pcache_wb *wb;
	uint64_t off, len;
	const uint8_t *src;     /* NULL: ZERO */
	uint32_t img;
	int status;
};

struct wb_reqv {
	struct wb_req *v;
	size_t n, cap;
};

struct pcache_wb {
	struct pcache_cache_dev *cd;
	struct pcache_wb_ops ops;
	void *ctx;
	struct pcache_wb_opts o;
	uint32_t seg_count;
	uint64_t seg_size;
	bool data_crc;
	bool offline;

	/* worker-only scratch */
	struct pcache_log_reader *rd;      /* the key log (core/log.c) */
	struct wb_extv exts;               /* the batch's extents (sorted by wb_resolve()) */
	struct wb_reqv reqs;               /* the batch's requests, grouped by image */
	struct wb_extv rexts;              /* an image's extents asked again (wb_relook()) */
	struct wb_reqv rreqs;              /* and its requests from them */
	uint32_t *heap;
	size_t cap_heap;
	uint64_t reqs_issued;             /* for stop_after_reqs */

	pthread_mutex_t run_lock;         /* no_thread: one worker (drain / run_once) at a time;
					   * taken before persist_lock */
	pthread_mutex_t persist_lock;     /* serialises wb_persist_images(); before lock */
	struct pcache_image_ent *table;   /* image table copy (PCACHE_MAX_IMAGES), persist_lock
					   * or the worker (the worker holds it for lookups) */
	uint64_t last_persist_ns;         /* written under persist_lock, read atomically */

	pthread_mutex_t lock;
	pthread_cond_t cond;              /* worker wake-ups (kick, stop, drain) */
	pthread_cond_t done_cond;         /* progress for drains */
	/* guarded by lock */
	struct wb_img *imgs;
	uint32_t n_imgs, cap_imgs;
	struct pcache_pos dirty_tail;     /* persisted */
	struct pcache_pos scan;           /* committed walker position */
	bool block_set;
	struct pcache_pos block_pos;      /* first kset with a not-durable key of a blocked image */
	uint64_t last_epoch;
	bool have_epoch;
	struct pcache_wb_stats st;
	uint64_t rate;
	uint32_t dirty_high, dirty_low;
	struct pcache_wb_bucket bucket;
	unsigned int drains;              /* drains waiting (full speed while > 0) */
	bool kicked, stopping;
	bool drain_abort;                 /* pcache_wb_abort_drains(): drains end with -ESHUTDOWN */
	bool retry_enxio;                 /* a kick since the last batch: retry missing backings */
	uint32_t forget_ids[8];           /* images removed from the table (given up), applied at */
	uint32_t n_forget;                /* the start of the next batch */
	int latched;                      /* -EUCLEAN: corrupt log, nothing more is done */
	uint64_t progress_seq;            /* bumped after every batch */

	pthread_mutex_t io_lock;
	pthread_cond_t io_cond;
	/* guarded by io_lock */
	uint32_t inflight;
	uint64_t inflight_bytes;
	bool io_waiting;                  /* the issuer sleeps until io_wake_n / io_wake_bytes */
	uint32_t io_wake_n;
	uint64_t io_wake_bytes;

	pthread_t thread;
	bool have_thread;
};

/* An error line of the writeback (a macro: each message keeps its own rate-limit budget). */
#define wb_log(wb, fmt, ...)                                                         \
	do {                                                                          \
		if (!(wb)->o.quiet)                                                   \
			pcache_log(PCACHE_LOG_ERR, "writeback: " fmt, __VA_ARGS__);   \
	} while (0)

/* ---- clock and token bucket --------------------------------------------------------------- */

static uint64_t wb_now(struct pcache_wb *wb)
{
	return wb->o.clock_now ? wb->o.clock_now(wb->o.clock_arg) : pcache_now_ns();
}

static void wb_sleep(struct pcache_wb *wb, uint64_t ns)
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
static int wb_img_index(struct pcache_wb *wb, uint32_t id, uint64_t cur_lsn)
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
static void wb_persist_images(struct pcache_wb *wb, bool force)
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
		skip = !wb->imgs[i].in_table || lsn == wb->imgs[i].persisted_lsn ||
		       (!force && !wb->imgs[i].written_since_persist);
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

/* ---- the batch ---------------------------------------------------------------------------- */

/* Make room for one more element in a batch array (doubling, 1024 at first); 0 or -ENOMEM. */
static int wb_grow(void **v, size_t *cap, size_t n, size_t elem)
{
	size_t ncap;
	void *nv;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 1024;
	nv = realloc(*v, ncap * elem);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = ncap;
	return 0;
}

static int wb_push_ext(struct wb_extv *ev, const struct wb_ext *e)
{
	if (wb_grow((void **)&ev->v, &ev->cap, ev->n, sizeof(*ev->v)))
		return -ENOMEM;
	ev->v[ev->n++] = *e;
	return 0;
}

/* Ask the engine which bytes of a dirty key still need writing (ops.live); -1: all of them. */
static int wb_live_key(struct pcache_wb *wb, const struct pcache_wb_key *k, uint64_t *ranges)
{
	int n;

	if (!wb->ops.live)
		return -1;
	n = wb->ops.live(wb->ctx, k, ranges, WB_LIVE_MAX);
	if (n > (int)WB_LIVE_MAX)
		return -1;
	/* only ranges inside the key, ascending, are believed */
	for (int i = 0; i < n; i++) {
		if (ranges[2 * i] >= ranges[2 * i + 1] || ranges[2 * i] < k->off ||
		    ranges[2 * i + 1] > k->off + k->len || (i && ranges[2 * i] < ranges[2 * i - 1]))
			return -1;
	}
	return n < 0 ? -1 : n;
}

/* The same for an extent of the batch (a key or a part of one) of epoch epoch. */
static int wb_live_ext(struct pcache_wb *wb, const struct wb_ext *e, uint64_t epoch,
		       uint64_t *ranges)
{
	struct pcache_wb_key k;

	memset(&k, 0, sizeof(k));
	k.image_id = wb->imgs[e->img].id;
	k.flags = e->src ? 0 : PCACHE_KEY_ZERO;
	k.epoch = epoch;
	k.off = e->off;
	k.len = (uint32_t)(e->end - e->off);
	k.seg = e->seg;
	k.seg_off = e->seg_off;
	k.seg_gen = e->seg_gen;
	return wb_live_key(wb, &k, ranges);
}

/* Push the live parts (n ranges, or all with n < 0) of the key e; the rest is superseded. */
static int wb_push_live(struct wb_extv *ev, const struct wb_ext *e, const uint64_t *ranges,
			int n, uint64_t *superseded)
{
	uint64_t kept = 0;
	int r;

	if (n < 0)
		return wb_push_ext(ev, e);
	for (int i = 0; i < n; i++) {
		struct wb_ext part = *e;

		part.off = ranges[2 * i];
		part.end = ranges[2 * i + 1];
		if (e->src) {
			part.src = e->src + (part.off - e->off);
			part.seg_off = e->seg_off + (uint32_t)(part.off - e->off);
		}
		r = wb_push_ext(ev, &part);
		if (r)
			return r;
		kept += part.end - part.off;
	}
	*superseded += (e->end - e->off) - kept;
	return 0;
}

static int wb_push_req(struct pcache_wb *wb, struct wb_reqv *rv, uint32_t img, uint64_t off,
		       uint64_t len, const uint8_t *src)
{
	struct wb_req *p = rv->n ? &rv->v[rv->n - 1] : NULL;
	uint64_t cap = src ? wb->o.max_req_bytes : WB_ZERO_MAX_REQ;

	/* merge with the previous request when contiguous on the backing and in pmem */
	if (p && p->img == img && p->off + p->len == off && (p->src == NULL) == (src == NULL) &&
	    (!src || p->src + p->len == src) && p->len + len <= cap) {
		p->len += len;
		return 0;
	}
	if (wb_grow((void **)&rv->v, &rv->cap, rv->n, sizeof(*rv->v)))
		return -ENOMEM;
	p = &rv->v[rv->n++];
	memset(p, 0, sizeof(*p));
	p->wb = wb;
	p->img = img;
	p->off = off;
	p->len = len;
	p->src = src;
	return 0;
}

static int wb_ext_cmp(const void *a, const void *b)
{
	const struct wb_ext *x = a, *y = b;

	if (x->img != y->img)
		return x->img < y->img ? -1 : 1;
	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

/* max-heap of indices into x by seq */
static void wb_heap_push(uint32_t *heap, const struct wb_ext *x, size_t *n, uint32_t v)
{
	size_t i = (*n)++;

	while (i) {
		size_t p = (i - 1) / 2;

		if (x[heap[p]].seq >= x[v].seq)
			break;
		heap[i] = heap[p];
		i = p;
	}
	heap[i] = v;
}

static void wb_heap_pop(uint32_t *heap, const struct wb_ext *x, size_t *n)
{
	uint32_t v = heap[--(*n)];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= *n)
			break;
		if (c + 1 < *n && x[heap[c + 1]].seq > x[heap[c]].seq)
			c++;
		if (x[v].seq >= x[heap[c]].seq)
			break;
		heap[i] = heap[c];
		i = c;
	}
	if (*n)
		heap[i] = v;
}

/*
 * Turn the extents ev into non-overlapping requests rv: for every byte the extent with the
 * largest seq (the latest key) wins (invariant 3). Sweep per image over the sorted starts
 * (ev is left sorted by image, offset and seq).
 */
static int wb_resolve(struct pcache_wb *wb, struct wb_extv *ev, struct wb_reqv *rv,
		      uint64_t *overridden)
{
	const struct wb_ext *x = ev->v;
	size_t i = 0, hn = 0;
	uint64_t in = 0, out = 0;
	int r;

	rv->n = 0;
	*overridden = 0;
	if (!ev->n)
		return 0;
	if (wb->cap_heap < ev->n) {
		uint32_t *h = realloc(wb->heap, ev->n * sizeof(*h));

		if (!h)
			return -ENOMEM;
		wb->heap = h;
		wb->cap_heap = ev->n;
	}
	qsort(ev->v, ev->n, sizeof(*ev->v), wb_ext_cmp);
	for (size_t k = 0; k < ev->n; k++)
		in += x[k].end - x[k].off;

	while (i < ev->n) {
		uint32_t img = x[i].img;
		uint64_t pos = x[i].off;

		hn = 0;
		for (;;) {
			const struct wb_ext *top;
			uint64_t next;

			while (i < ev->n && x[i].img == img && x[i].off <= pos)
				wb_heap_push(wb->heap, x, &hn, (uint32_t)i++);
			while (hn && x[wb->heap[0]].end <= pos)
				wb_heap_pop(wb->heap, x, &hn);
			if (!hn) {
				if (i < ev->n && x[i].img == img) {
					pos = x[i].off;
					continue;
				}
				break;
			}
			top = &x[wb->heap[0]];
			next = top->end;
			if (i < ev->n && x[i].img == img && x[i].off < next)
				next = x[i].off;
			r = wb_push_req(wb, rv, img, pos, next - pos,
					top->src ? top->src + (pos - top->off) : NULL);
			if (r)
				return r;
			out += next - pos;
			pos = next;
		}
	}
	*overridden = in - out;
	return 0;
}

static void wb_io_end(void *priv, int status)
{
	struct wb_req *rq = priv;
	struct pcache_wb *wb = rq->wb;

	rq->status = status;
	pthread_mutex_lock(&wb->io_lock);
	wb->inflight--;
	wb->inflight_bytes -= rq->len;
	/* wake the issuer only once its refill threshold is reached (fewer context switches) */
	if (wb->io_waiting && wb->inflight <= wb->io_wake_n &&
	    (!wb->inflight || wb->inflight_bytes <= wb->io_wake_bytes))
		pthread_cond_signal(&wb->io_cond);
	pthread_mutex_unlock(&wb->io_lock);
}

static void wb_wait_inflight(struct pcache_wb *wb, uint32_t max_n, uint64_t max_bytes)
{
	pthread_mutex_lock(&wb->io_lock);
	while (wb->inflight > max_n || (wb->inflight && wb->inflight_bytes > max_bytes)) {
		wb->io_waiting = true;
		wb->io_wake_n = max_n;
		wb->io_wake_bytes = max_bytes;
		pthread_cond_wait(&wb->io_cond, &wb->io_lock);
	}
	wb->io_waiting = false;
	pthread_mutex_unlock(&wb->io_lock);
}

/* Before issuing len more bytes: when the window is full, wait until it is half empty. */
static void wb_window(struct pcache_wb *wb, uint64_t len)
{
	bool full;

	pthread_mutex_lock(&wb->io_lock);
	full = wb->inflight >= wb->o.max_inflight ||
	       (wb->inflight && wb->inflight_bytes + len > wb->o.max_inflight_bytes);
	pthread_mutex_unlock(&wb->io_lock);
	if (full)
		wb_wait_inflight(wb, wb->o.max_inflight / 2, wb->o.max_inflight_bytes / 2);
}

static int wb_submit(struct pcache_wb *wb, struct pcache_backing *b, struct wb_req *rq,
		     enum pcache_backing_op op)
{
	struct pcache_backing_io io;
	int r;

	memset(&io, 0, sizeof(io));
	io.op = op;
	io.off = rq->off;
	io.len = rq->len;
	io.kmem = (void *)(uintptr_t)rq->src;
	io.end = wb_io_end;
	io.priv = rq;
	pthread_mutex_lock(&wb->io_lock);
	wb->inflight++;
	wb->inflight_bytes += rq->len;
	pthread_mutex_unlock(&wb->io_lock);
	r = pcache_backing_submit_direct(b, &io);
	if (r)
		wb_io_end(rq, r); /* the callback is not called on a submit error: account here */
	return 0;
}

static bool wb_stopping(struct pcache_wb *wb)
{
	bool v;

	pthread_mutex_lock(&wb->lock);
	v = wb->stopping;
	pthread_mutex_unlock(&wb->lock);
	return v;
}

/*
 * Rate limit before issuing len bytes (no limit when urgent or draining): true when len may go
 * now (its tokens are taken). Sleeps until then, or with can_sleep false returns false instead.
 */
static bool wb_throttle(struct pcache_wb *wb, uint64_t len, bool limited, bool can_sleep)
{
	uint64_t wait;

	if (!limited)
		return true;
	for (;;) {
		if (wb->ops.space_wanted && wb->ops.space_wanted(wb->ctx))
			return true; /* writers wait for space: no rate limit (see wb_urgent_update) */
		pthread_mutex_lock(&wb->lock);
		/* a drain, a stop or the limit turned off while this batch waited ends the wait at
		 * once (at 1 B/s a 1 MiB request would otherwise hold a flush for 12 days) */
		wait = wb->stopping || wb->drains || !wb->rate ? 0 :
		       pcache_wb_bucket_take(&wb->bucket, wb_now(wb), len);
		if (wait && can_sleep)
			wb->st.rate_waits++;
		pthread_mutex_unlock(&wb->lock);
		if (!wait)
			return true;
		if (!can_sleep)
			return false;
		wb_sleep(wb, PCACHE_MIN(wait, 100ull * 1000 * 1000));
	}
}

/* What an image's writeback error means, for its log line and pcachectl. */
static const char *wb_err_text(const struct wb_img *im, int err, char *buf, size_t len)
{
	if (err == -EBADMSG)
		return "data CRC mismatch in the cache";
	if (err == -EHWPOISON) {
		snprintf(buf, len, "media error in the cache: the cached data of image bytes %" PRIu64
			 "..%" PRIu64 " cannot be read", im->bad_off, im->bad_off + im->bad_len);
		return buf;
	}
	return strerror(-err);
}

static void wb_img_fail(struct pcache_wb *wb, struct wb_img *im, int err, uint64_t now)
{
	char msg[160];

	/* caller holds wb->lock */
	/*
	 * A missing backing (-ENXIO) is normal for a moment: the writeback starts before the
	 * daemon attaches the images. Say so only if it lasts (the 5th poll in a row).
	 */
	if (err == -ENXIO ? im->last_error == err && im->fails_in_row == 4
			  : !im->fails_in_row || im->last_error != err)
		wb_log(wb, "image %u: %s; its dirty data stays in the cache%s", im->id,
		       wb_err_text(im, err, msg, sizeof(msg)),
		       im->latched ? ", its writeback is stopped until restart" :
		       err == -ENXIO ? " until it is attached" : ", retrying");
	im->blocked = true;
	im->last_error = err;
	im->errors++;
	im->fail_seq++;
	im->fails_in_row++;
	if (err != -ENXIO)
		wb->st.errors++;
	im->backoff = im->backoff ? PCACHE_MIN(im->backoff * 2, PCACHE_WB_RETRY_MAX_NS)
				  : PCACHE_WB_RETRY_MIN_NS;
	if (err == -ENXIO)
		im->backoff = WB_POLL_NS;
	im->retry_at = now + im->backoff;
}

/* Block image im from the kset at pos on (its keys are not durable from there). */
static void wb_block_at(struct pcache_wb *wb, const struct pcache_pos *pos)
{
	if (!wb->block_set || pos->lsn < wb->block_pos.lsn) {
		wb->block_set = true;
		wb->block_pos = *pos;
	}
}

/* Unblock images whose retry is due; the walker rewinds to dirty_tail. Caller holds lock. */
static void wb_retry_due(struct pcache_wb *wb, uint64_t now)
{
	bool any = false;

	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		/* a kick (new data, an attach) retries a missing backing early, at most every
		 * WB_ENXIO_KICK_NS: the rewind rescans the log from dirty_tail */
		bool kicked = wb->retry_enxio && im->last_error == -ENXIO &&
			      now >= im->retry_at - im->backoff + WB_ENXIO_KICK_NS;

		if (im->blocked && !im->latched && (now >= im->retry_at || kicked)) {
			im->blocked = false;
			wb->st.retries++;
			any = true;
		}
	}
	wb->retry_enxio = false;
	for (uint32_t f = 0; f < wb->n_forget; f++) {
		for (uint32_t i = 0; i < wb->n_imgs; i++) {
			struct wb_img *im = &wb->imgs[i];

			if (im->id != wb->forget_ids[f])
				continue;
			/* its keys are skipped from now on, like those of any image not in the table */
			im->in_table = false;
			im->blocked = false;
			im->latched = false;
			any = true;
		}
	}
	wb->n_forget = 0;
	if (any) {
		wb->scan = wb->dirty_tail;
		wb->block_set = false;
		/* still-blocked images re-block at their first key met by the rescan */
	}
}

static void wb_release_backings(struct pcache_wb *wb)
{
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->b && wb->ops.backing_put)
			wb->ops.backing_put(wb->ctx, im->id, im->b);
		im->b = NULL;
		im->in_batch = false;
		im->batch_done = false;
		im->batch_err = 0;
		im->batch_bytes = 0;
		im->batch_keys = 0;
		im->batch_key_bytes = 0;
	}
}

/* The cached data of [off, off + len) of image im cannot be read: the image stops there. */
static void wb_media_error(struct wb_img *im, uint64_t off, uint64_t len)
{
	if (im->batch_err == -EHWPOISON)
		return;
	im->batch_err = -EHWPOISON;
	im->bad_off = off;
	im->bad_len = len;
}

/* Requests issued by a batch and what they did (wb_tally()). */
struct wb_tally {
	uint64_t issued, written, zeroed, superseded;
};

/* Count the completed requests v[0..n) of image im: bytes written, the first error. */
static void wb_tally(struct wb_img *im, const struct wb_req *v, size_t n, struct wb_tally *t)
{
	for (size_t i = 0; i < n; i++) {
		/* the kernel could not read the cache data it was to write: a media error */
		if (v[i].status == -EFAULT && v[i].src && im->batch_err != -EHWPOISON)
			wb_media_error(im, v[i].off, v[i].len);
		if (v[i].status && !im->batch_err)
			im->batch_err = v[i].status;
		if (v[i].status)
			continue;
		if (v[i].src)
			t->written += v[i].len;
		else
			t->zeroed += v[i].len;
		im->batch_bytes += v[i].len;
	}
}

/* Ask live() again for image ii's extents from byte from on; sweep them into wb->rreqs. */
static int wb_relook(struct pcache_wb *wb, uint32_t ii, uint64_t from, uint64_t epoch)
{
	uint64_t live[2 * WB_LIVE_MAX], unused = 0;
	int r;

	wb->rexts.n = 0;
	for (size_t i = 0; i < wb->exts.n; i++) {
		struct wb_ext e = wb->exts.v[i];

		if (e.img != ii || e.end <= from)
			continue;
		if (e.off < from) {
			if (e.src) {
				e.src += from - e.off;
				e.seg_off += (uint32_t)(from - e.off);
			}
			e.off = from;
		}
		r = wb_push_live(&wb->rexts, &e, live, wb_live_ext(wb, &e, epoch, live), &unused);
		if (r)
			return r;
	}
	return wb_resolve(wb, &wb->rexts, &wb->rreqs, &unused);
}

/*
 * Hold image ii's writethrough writes (ops.through_hold) before issuing request *k of *v.
 * When one completed since live() was asked for the image's keys, its THROUGH key (staged
 * before its backing write) may replace bytes not issued yet: live() is asked again for them
 * and *v, *n, *k move to the new requests (wb->rreqs). Invariant 7.
 */
static void wb_hold(struct pcache_wb *wb, uint32_t ii, struct wb_req **v, size_t *n, size_t *k,
		    uint64_t epoch, struct wb_tally *t)
{
	struct wb_img *im = &wb->imgs[ii];
	uint64_t cnt, before = 0, after = 0;
	int r;

	if (!wb->ops.through_hold)
		return;
	wb->ops.through_hold(wb->ctx, im->id, im->b, true);
	cnt = wb->ops.through_count(wb->ctx, im->id, im->b);
	if (cnt == im->through_seen)
		return;
	im->through_seen = cnt;
	if (*k == *n)
		return;
	for (size_t i = *k; i < *n; i++)
		before += (*v)[i].len;
	r = wb_relook(wb, ii, (*v)[*k].off, epoch);
	if (r) {
		im->batch_err = r; /* nothing more of it is issued: it fails this batch */
		return;
	}
	for (size_t i = 0; i < wb->rreqs.n; i++)
		after += wb->rreqs.v[i].len;
	if (before > after)
		t->superseded += before - after;
	*v = wb->rreqs.v;
	*n = wb->rreqs.n;
	*k = 0;
}

static void wb_unhold(struct pcache_wb *wb, struct wb_img *im)
{
	if (wb->ops.through_hold)
		wb->ops.through_hold(wb->ctx, im->id, im->b, false);
}

/*
 * Issue the requests wb->reqs.v[lo..hi) of image ii and wait for them, with its writethrough
 * writes held, but never across a rate-limit sleep: before one, the requests in flight are
 * waited for and the hold is let go (invariant 7). false when the batch is to stop
 * (stop_after_reqs, pcache_wb_stop(): the rest stays dirty, a subset of the epoch).
 */
static bool wb_issue_image(struct pcache_wb *wb, uint32_t ii, size_t lo, size_t hi, bool limited,
			   uint64_t epoch, struct wb_tally *t)
{
	struct wb_img *im = &wb->imgs[ii];
	struct wb_req *v = wb->reqs.v + lo;
	size_t n = hi - lo, k = 0, done = 0;
	bool go = true, paid = false;

	wb_hold(wb, ii, &v, &n, &k, epoch, t);
	while (k < n && !im->batch_err) {
		struct wb_req *rq = &v[k];

		if ((wb->o.stop_after_reqs && wb->reqs_issued >= wb->o.stop_after_reqs) ||
		    wb_stopping(wb)) {
			go = false;
			break;
		}
		if (!paid && !wb_throttle(wb, rq->len, limited, false)) {
			wb_wait_inflight(wb, 0, 0);
			wb_tally(im, v + done, k - done, t);
			wb_unhold(wb, im);
			paid = wb_throttle(wb, rq->len, limited, true);
			wb_hold(wb, ii, &v, &n, &k, epoch, t);
			done = k;
			continue;
		}
		paid = false;
		wb_window(wb, rq->len);
		wb->reqs_issued++;
		t->issued++;
		wb_submit(wb, im->b, rq, rq->src ? PCACHE_BIO_WRITE : PCACHE_BIO_ZERO);
		k++;
	}
	wb_wait_inflight(wb, 0, 0);
	wb_tally(im, v + done, k - done, t);
	wb_unhold(wb, im);
	return go;
}

/*
 * One batch. Returns 1 (progress: the walker moved), 0 (nothing to do now), -ECANCELED
 * (stop_after_reqs reached), -EUCLEAN (corrupt log, latched), -ENOMEM.
 */
static int wb_batch(struct pcache_wb *wb, bool limited, bool small)
{
	uint64_t max_bytes = small ? wb->o.batch_bytes / PCACHE_WB_TRICKLE_DIV : wb->o.batch_bytes;
	uint64_t max_keys = small ? wb->o.batch_keys / PCACHE_WB_TRICKLE_DIV : wb->o.batch_keys;

	struct pcache_pos head, cur, start, newtail;
	uint64_t now = wb_now(wb), seq = 0, bytes = 0, batch_epoch = 0, overridden = 0;
	uint64_t written = 0, zeroed = 0, nflush = 0, dirty_keys = 0, clean = 0, stale = 0, unknown = 0;
	uint64_t crcerr = 0, superseded = 0, passed = 0;
	uint64_t live[2 * WB_LIVE_MAX];
	struct wb_tally t;
	bool have_epoch = false, canceled = false, moved;
	int r = 0, nlive;

	pthread_mutex_lock(&wb->lock);
	if (wb->latched) {
		pthread_mutex_unlock(&wb->lock);
		return wb->latched;
	}
	wb_retry_due(wb, now);
	cur = start = wb->scan;
	pthread_mutex_unlock(&wb->lock);
	wb->ops.key_head(wb->ctx, &head);
	if (cur.lsn >= head.lsn)
		return 0;

	wb->exts.n = 0;
	while (cur.lsn < head.lsn) {
		const struct pcache_kset_om *ks;
		struct pcache_pos next;
		uint32_t n;
		uint64_t ep;

		r = pcache_log_read(wb->rd, &cur, &ks);
		if (r && cur.lsn != start.lsn) {
			r = 0;
			break; /* write back what comes before it; the next batch latches */
		}
		if (r) {
			/* before key_head every kset is durable: this one is corrupt or
			 * unreadable, and nothing after it can be written back in order */
			pthread_mutex_lock(&wb->lock);
			wb->latched = r == -EIO ? -EIO : -EUCLEAN;
			wb->st.latched = wb->latched;
			wb->st.errors++;
			if (r == -EIO)
				wb->st.media_errors++;
			pthread_cond_broadcast(&wb->done_cond);
			pthread_mutex_unlock(&wb->lock);
			wb_log(wb, "%s kset at segment %u offset %u (lsn %" PRIu64
			       ") before key_head: writeback stopped",
			       r == -EIO ? "unreadable (media error)" : "corrupt", cur.seg, cur.off,
			       cur.lsn);
			wb_release_backings(wb);
			return r == -EIO ? -EIO : -EUCLEAN;
		}
		pcache_log_next(ks, &cur, &next);
		n = pcache_le16(&ks->key_num);
		if (n == 0) { /* LAST: follow it, belongs to no epoch */
			cur = next;
			continue;
		}
		ep = pcache_le64(&ks->epoch);
		if (have_epoch && ep != batch_epoch)
			break; /* invariant 1: one epoch per batch */
		if (seq && (bytes >= max_bytes || seq + n > max_keys))
			break;
		have_epoch = true;
		batch_epoch = ep;
		for (uint32_t k = 0; k < n; k++) {
			const struct pcache_key_om *key = &ks->keys[k];
			struct wb_ext e;
			struct wb_img *im;
			uint32_t len = pcache_le32(&key->len), kseg;
			uint16_t flags = pcache_le16(&key->flags);
			int idx;

			if (pcache_log_key_check(key, wb->seg_count, wb->seg_size, NULL, 0)) {
				pthread_mutex_lock(&wb->lock);
				wb->latched = -EUCLEAN;
				wb->st.latched = -EUCLEAN;
				wb->st.errors++;
				pthread_cond_broadcast(&wb->done_cond);
				pthread_mutex_unlock(&wb->lock);
				wb_log(wb, "invalid key %u in kset lsn %" PRIu64 ": writeback stopped",
				       k, cur.lsn);
				wb_release_backings(wb);
				return -EUCLEAN;
			}
			if (flags & PCACHE_KEY_CLEAN) {
				clean++;
				continue;
			}
			idx = wb_img_index(wb, pcache_le32(&key->image_id), cur.lsn);
			if (idx < 0) {
				wb_release_backings(wb);
				return idx;
			}
			im = &wb->imgs[idx];
			if (!im->in_table) {
				unknown++;
				if (!(flags & PCACHE_KEY_ZERO))
					passed += len;
				continue;
			}
			if (im->done_lsn > cur.lsn)
				continue; /* durable already (written before a rewind) */
			if (im->blocked) {
				pthread_mutex_lock(&wb->lock);
				wb_block_at(wb, &cur);
				pthread_mutex_unlock(&wb->lock);
				continue;
			}
			if (!im->in_batch) {
				im->in_batch = true;
				im->batch_err = 0;
				im->b = wb->ops.backing_get(wb->ctx, im->id);
				if (!im->b)
					im->batch_err = -ENXIO;
				else if (wb->ops.through_count) /* before live() is asked (inv. 7) */
					im->through_seen = wb->ops.through_count(wb->ctx, im->id, im->b);
			}
			if (im->batch_err)
				continue; /* failed below at the end of the batch */
			e.off = pcache_le64(&key->off);
			e.end = e.off + len;
			e.seq = seq++;
			e.img = (uint32_t)idx;
			e.src = NULL;
			e.seg = kseg = pcache_le32(&key->seg);
			e.seg_off = pcache_le32(&key->seg_off);
			e.seg_gen = pcache_le64(&key->seg_gen);
			if (!(flags & PCACHE_KEY_ZERO) &&
			    e.seg_gen < pcache_cache_dev_seg_gen(wb->cd, kseg)) {
				stale++; /* its segment was freed: replay drops it too */
				continue;
			}
			if (!(flags & PCACHE_KEY_ZERO)) {
				passed += len;
				e.src = (const uint8_t *)pcache_cache_dev_seg_addr(wb->cd, kseg) +
					e.seg_off;
			}
			im->batch_keys++;
			im->batch_key_bytes += len;
			nlive = wb_live_ext(wb, &e, ep, live);
			if (nlive == 0) {
				superseded += len;
				bytes += len;
				continue;
			}
			if (!(flags & PCACHE_KEY_ZERO)) {
				uint32_t crc = 0;

				if (wb->data_crc && pcache_media_crc(e.src, len, &crc) != 0) {
					/* invariant 4: unreadable cache data is never written */
					wb_media_error(im, e.off, len);
					continue;
				}
				if (wb->data_crc && crc != pcache_le32(&key->data_crc)) {
					/* invariant 4: never write it; the image stops here */
					crcerr++;
					im->batch_err = -EBADMSG;
					continue;
				}
			}
			if (e.end > pcache_backing_size(im->b)) {
				im->batch_err = -ERANGE;
				continue;
			}
			r = wb_push_live(&wb->exts, &e, live, nlive, &superseded);
			if (r) {
				wb_release_backings(wb);
				return r;
			}
			dirty_keys++;
			bytes += len;
		}
		cur = next;
	}

	r = wb_resolve(wb, &wb->exts, &wb->reqs, &overridden);
	if (r) {
		wb_release_backings(wb);
		return r;
	}

	/* issue, one image at a time (invariant 3: no two requests of the batch overlap on one
	 * image; the requests of an image are contiguous) */
	memset(&t, 0, sizeof(t));
	for (size_t i = 0, j; i < wb->reqs.n && !canceled; i = j) {
		uint32_t ii = wb->reqs.v[i].img;

		for (j = i; j < wb->reqs.n && wb->reqs.v[j].img == ii; j++)
			;
		if (!wb->imgs[ii].batch_err)
			canceled = !wb_issue_image(wb, ii, i, j, limited, batch_epoch, &t);
	}
	written = t.written;
	zeroed = t.zeroed;
	superseded += t.superseded;
	if (canceled) {
		wb_release_backings(wb);
		return -ECANCELED;
	}

	/* invariant 2: flush every image written by this batch, all at once, before the tail */
	{
		struct wb_req *fl = calloc(wb->n_imgs ? wb->n_imgs : 1, sizeof(*fl));

		if (!fl) {
			wb_release_backings(wb);
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < wb->n_imgs; i++) {
			struct wb_img *im = &wb->imgs[i];

			if (!im->in_batch || im->batch_err || !im->b)
				continue;
			fl[i].wb = wb;
			wb_submit(wb, im->b, &fl[i], PCACHE_BIO_FLUSH);
			nflush++;
		}
		wb_wait_inflight(wb, 0, 0);
		for (uint32_t i = 0; i < wb->n_imgs; i++)
			if (fl[i].wb && fl[i].status && !wb->imgs[i].batch_err)
				wb->imgs[i].batch_err = fl[i].status;
		free(fl);
	}

	/* commit: per-image progress, block position, the walker, dirty_tail */
	pthread_mutex_lock(&wb->lock);
	now = wb_now(wb);
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->in_batch && im->batch_err) {
			if (im->batch_err == -EBADMSG || im->batch_err == -EHWPOISON)
				im->latched = true;
			if (im->batch_err == -EHWPOISON)
				wb->st.media_errors++;
			wb_img_fail(wb, im, im->batch_err, now);
			wb_block_at(wb, &start);
		} else if (!im->blocked) {
			if (im->in_batch) {
				im->batch_done = true;
				im->bytes_written += im->batch_bytes;
				im->fails_in_row = 0;
				im->backoff = 0;
				im->last_error = 0;
				im->written_since_persist = true;
				im->wb_time = (uint64_t)time(NULL);
			}
			if (im->done_lsn < cur.lsn)
				im->done_lsn = cur.lsn; /* invariant 6 */
		}
	}
	wb->scan = cur;
	newtail = wb->block_set ? wb->block_pos : cur;
	moved = newtail.lsn > wb->dirty_tail.lsn;
	wb->st.bytes_written += written;
	wb->st.bytes_zeroed += zeroed;
	wb->st.requests += t.issued;
	wb->st.flushes += nflush;
	wb->st.batches++;
	if (!wb->have_epoch || batch_epoch != wb->last_epoch)
		wb->st.epochs += have_epoch;
	if (have_epoch) {
		wb->have_epoch = true;
		wb->last_epoch = batch_epoch;
	}
	wb->st.keys_dirty += dirty_keys;
	wb->st.keys_clean_skipped += clean;
	wb->st.keys_stale += stale;
	wb->st.keys_unknown_image += unknown;
	wb->st.bytes_overridden += overridden;
	wb->st.bytes_superseded += superseded;
	wb->st.crc_errors += crcerr;
	wb->st.drain_left = wb->st.drain_left > written + zeroed + superseded ?
			    wb->st.drain_left - written - zeroed - superseded : 0;
	pthread_mutex_unlock(&wb->lock);
	for (uint32_t i = 0; i < wb->n_imgs && wb->ops.image_passed; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->batch_done && im->batch_keys)
			wb->ops.image_passed(wb->ctx, im->id, im->b, im->batch_keys,
					     im->batch_key_bytes);
	}
	wb_release_backings(wb);

	if (moved) {
		/* invariant 2: the flushes above made every write before newtail durable */
		r = pcache_cache_dev_set_dirty_tail(wb->cd, &newtail);
		if (r) {
			wb_log(wb, "persisting dirty_tail failed: %s", strerror(-r));
		} else {
			pthread_mutex_lock(&wb->lock);
			wb->dirty_tail = newtail;
			wb->st.dirty_tail = newtail;
			pthread_mutex_unlock(&wb->lock);
			if (wb->ops.tail_moved)
				wb->ops.tail_moved(wb->ctx, &newtail);
			/* only a tail moved to the batch's end put all its keys behind it */
			if (wb->ops.dirty_passed && newtail.lsn == cur.lsn)
				wb->ops.dirty_passed(wb->ctx, passed);
		}
	}
	pthread_mutex_lock(&wb->lock);
	wb->st.scan = wb->scan;
	wb->progress_seq++;
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
	if (!wb->offline &&
	    pcache_now_ns() - __atomic_load_n(&wb->last_persist_ns, __ATOMIC_RELAXED) > WB_PERSIST_NS)
		wb_persist_images(wb, false);
	return 1;
}

static uint32_t wb_urgent_update(struct pcache_wb *wb, bool *urgent);

int pcache_wb_run_once(struct pcache_wb *wb)
{
	bool limited, urgent;
	int r;

	if (wb->have_thread)
		return -EINVAL; /* the thread is the worker */
	pthread_mutex_lock(&wb->run_lock);
	(void)wb_urgent_update(wb, &urgent);
	pthread_mutex_lock(&wb->lock);
	limited = wb->rate && !urgent && !wb->drains;
	pthread_mutex_unlock(&wb->lock);
	r = wb_batch(wb, limited, false);
	pthread_mutex_unlock(&wb->run_lock);
	return r;
}

/* ---- the thread --------------------------------------------------------------------------- */

/* Hysteresis: urgent from dirty_high until below dirty_low. Returns the dirty percent. */
static uint32_t wb_urgent_update(struct pcache_wb *wb, bool *urgent)
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
	while (!wb->kicked && !wb->stopping)
		if (pcache_cond_wait_until(&wb->cond, &wb->lock, deadline) == ETIMEDOUT)
			break;
	wb->kicked = false;
	pthread_mutex_unlock(&wb->lock);
}

/*
 * The busy writeback's pause: kicks for new dirty data (every kset close) do not end it, or
 * it would run as often as ksets close; a drain, stop, writers waiting for space, idle, or
 * dirty data reaching dirty_high do.
 */
static void wb_busy_wait(struct pcache_wb *wb, uint64_t ns)
{
	uint64_t end = pcache_now_ns() + ns, now;

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
			return;
	}
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

static uint64_t wb_next_retry_ns(struct pcache_wb *wb)
{
	uint64_t now = wb_now(wb), best = WB_POLL_NS;

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
		pct = wb_urgent_update(wb, &urgent);
		idle = wb->ops.idle ? wb->ops.idle(wb->ctx) : true;
		busy = wb->ops.dirty_percent && !urgent && !drain && !idle &&
		       !(wb->ops.space_wanted && wb->ops.space_wanted(wb->ctx));
		r = wb_batch(wb, rate && !urgent && !drain, busy);
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
		wb_wait(wb, r < 0 ? WB_POLL_NS : wb_next_retry_ns(wb));
	}
	return NULL;
}

/* ---- start, stop, controls ---------------------------------------------------------------- */

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
			      wb_now(wb));
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
	pthread_cond_destroy(&wb->io_cond);
	pthread_mutex_destroy(&wb->io_lock);
	pthread_cond_destroy(&wb->done_cond);
	pthread_cond_destroy(&wb->cond);
	pthread_mutex_destroy(&wb->lock);
	pthread_mutex_destroy(&wb->persist_lock);
	pthread_mutex_destroy(&wb->run_lock);
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
	wb_wait_inflight(wb, 0, 0);
	wb_persist_images(wb, true);
	pthread_cond_destroy(&wb->io_cond);
	pthread_mutex_destroy(&wb->io_lock);
	pthread_cond_destroy(&wb->done_cond);
	pthread_cond_destroy(&wb->cond);
	pthread_mutex_destroy(&wb->lock);
	pthread_mutex_destroy(&wb->persist_lock);
	pthread_mutex_destroy(&wb->run_lock);
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

void pcache_wb_set_rate(struct pcache_wb *wb, uint64_t bytes_per_sec)
{
	pthread_mutex_lock(&wb->lock);
	wb->rate = bytes_per_sec;
	pcache_wb_bucket_init(&wb->bucket, bytes_per_sec,
			      PCACHE_MAX(bytes_per_sec / 10, wb->o.max_req_bytes), wb_now(wb));
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

/* ---- drain -------------------------------------------------------------------------------- */

/* Dirty bytes between from and head (an estimate for progress: before override). */
static uint64_t wb_scan_dirty(struct pcache_wb *wb, struct pcache_pos from,
			      const struct pcache_pos *head, uint32_t image_id, uint64_t *ksets,
			      struct pcache_pos *end)
{
	uint64_t total = 0, n = 0;

	while (!head || from.lsn < head->lsn) {
		const struct pcache_kset_om *ks;
		struct pcache_pos next;

		if (pcache_log_read(wb->rd, &from, &ks))
			break;
		for (uint32_t k = 0; k < pcache_le16(&ks->key_num); k++) {
			const struct pcache_key_om *key = &ks->keys[k];

			if (!(pcache_le16(&key->flags) & PCACHE_KEY_CLEAN) &&
			    (!image_id || pcache_le32(&key->image_id) == image_id))
				total += pcache_le32(&key->len);
		}
		pcache_log_next(ks, &from, &next);
		from = next;
		n++;
	}
	if (ksets)
		*ksets = n;
	if (end)
		*end = from;
	return total;
}

/* Caller holds wb->lock. 1 = done, 0 = not yet, -errno = failed since fail_seq snapshot. */
static int wb_drain_state(struct pcache_wb *wb, uint32_t image_id, uint64_t target,
			  const uint64_t *snap)
{
	bool done = true;

	if (wb->latched)
		return wb->latched;
	if (!image_id)
		done = wb->dirty_tail.lsn >= target;
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (image_id && im->id != image_id)
			continue;
		if (!im->in_table)
			continue;
		if (im->blocked) {
			uint64_t fails = im->fail_seq - (i < PCACHE_MAX_IMAGES * 4 ? snap[i] : 0);

			/* a missing backing may be an attach in progress: give it a few polls */
			if (im->latched || (fails && im->last_error != -ENXIO) ||
			    fails >= WB_DRAIN_ENXIO_FAILS)
				return im->last_error ? im->last_error : -EIO;
		}
		if (image_id)
			return !im->blocked && im->done_lsn >= target;
	}
	if (image_id) /* never met: done when the walker passed target */
		return wb->scan.lsn >= target;
	return done;
}

int pcache_wb_drain(struct pcache_wb *wb, uint32_t image_id)
{
	struct pcache_pos head;
	uint64_t snap[PCACHE_MAX_IMAGES * 4] = { 0 };
	uint64_t total;
	int r;

	wb->ops.key_head(wb->ctx, &head);
	pthread_mutex_lock(&wb->lock);
	if (head.lsn > wb->st.drain_target_lsn)
		wb->st.drain_target_lsn = head.lsn;
	for (uint32_t i = 0; i < wb->n_imgs && i < PCACHE_ARRAY_SIZE(snap); i++)
		snap[i] = wb->imgs[i].fail_seq;
	pthread_mutex_unlock(&wb->lock);
	if (!wb->have_thread) {
		pthread_mutex_lock(&wb->run_lock); /* one worker at a time without the thread */
		total = wb_scan_dirty(wb, wb->dirty_tail, &head, image_id, NULL, NULL);
		pthread_mutex_lock(&wb->lock);
		wb->st.drain_total = wb->st.drain_left = total;
		wb->drains++;
		pthread_mutex_unlock(&wb->lock);
		for (;;) {
			pthread_mutex_lock(&wb->lock);
			r = wb_drain_state(wb, image_id, head.lsn, snap);
			if (!r && wb->drain_abort)
				r = -ESHUTDOWN;
			pthread_mutex_unlock(&wb->lock);
			if (r)
				break;
			r = wb_batch(wb, false, false);
			if (r < 0 && r != -ECANCELED)
				continue; /* latched: wb_drain_state reports it */
			if (r < 0)
				break;
			if (r == 0)
				wb_sleep(wb, wb_next_retry_ns(wb));
		}
		pthread_mutex_unlock(&wb->run_lock);
	} else {
		/* no byte estimate here: reading the log outside the worker could race with GC
		 * reusing segments; drain_target_lsn - dirty_tail.lsn tells the ksets left */
		pthread_mutex_lock(&wb->lock);
		wb->st.drain_total = wb->st.drain_left = 0;
		wb->drains++;
		wb->kicked = true;
		pthread_cond_signal(&wb->cond);
		for (;;) {
			r = wb_drain_state(wb, image_id, head.lsn, snap);
			if (r || wb->stopping || wb->drain_abort)
				break;
			pthread_cond_wait(&wb->done_cond, &wb->lock);
		}
		if (!r && (wb->stopping || wb->drain_abort))
			r = -ESHUTDOWN;
		pthread_mutex_unlock(&wb->lock);
	}
	pthread_mutex_lock(&wb->lock);
	wb->drains--;
	wb->st.drain_left = 0;
	pthread_mutex_unlock(&wb->lock);
	if (r == 1)
		r = 0;
	if (!wb->have_thread || r == 0)
		wb_persist_images(wb, true);
	return r;
}

void pcache_wb_abort_drains(struct pcache_wb *wb, bool abort)
{
	pthread_mutex_lock(&wb->lock);
	wb->drain_abort = abort;
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
}

/* ---- offline ------------------------------------------------------------------------------ */

struct wb_offline {
	struct pcache_cache_dev *cd;
	struct pcache_pos end;
	struct pcache_backing_opts bo;
	struct {
		uint32_t id;
		struct pcache_backing *b;
		int err;
		char msg[1800];
	} img[PCACHE_MAX_IMAGES];
	uint32_t n;
};

static void wb_off_head(void *ctx, struct pcache_pos *head)
{
	struct wb_offline *w = ctx;

	*head = w->end;
}

static struct pcache_backing *wb_off_backing(void *ctx, uint32_t id)
{
	struct wb_offline *w = ctx;
	struct pcache_image_ent *ents;
	int n, slot = -1;

	for (uint32_t i = 0; i < w->n; i++)
		if (w->img[i].id == id)
			return w->img[i].b;
	if (w->n == PCACHE_MAX_IMAGES)
		return NULL;
	slot = (int)w->n++;
	w->img[slot].id = id;
	ents = calloc(PCACHE_MAX_IMAGES, sizeof(*ents));
	if (!ents) {
		w->img[slot].err = -ENOMEM;
		return NULL;
	}
	n = pcache_cache_dev_images(w->cd, ents, (int)PCACHE_MAX_IMAGES);
	for (int i = 0; i < n; i++) {
		char err[200] = "";
		int r;

		if (ents[i].id != id)
			continue;
		r = pcache_backing_open(ents[i].path, &w->bo, &w->img[slot].b, err, sizeof(err));
		if (r) {
			w->img[slot].err = r;
			snprintf(w->img[slot].msg, sizeof(w->img[slot].msg), "image %s: %s: %s",
				 ents[i].name, ents[i].path, err[0] ? err : strerror(-r));
		} else if (pcache_backing_size(w->img[slot].b) != ents[i].size ||
			   pcache_backing_lbs(w->img[slot].b) != ents[i].lbs ||
			   (ents[i].ident[0] &&
			    strcmp(ents[i].ident, pcache_backing_ident(w->img[slot].b)->text))) {
			/* the same identity rule as attach: never write to another disk under the name */
			w->img[slot].err = -EINVAL;
			snprintf(w->img[slot].msg, sizeof(w->img[slot].msg),
				 "image %s: %s is not the image's backing: stored %s (%" PRIu64 " bytes), "
				 "found %s (%" PRIu64 " bytes): not written", ents[i].name, ents[i].path,
				 ents[i].ident[0] ? ents[i].ident : "(no identity)", ents[i].size,
				 pcache_backing_ident(w->img[slot].b)->text,
				 pcache_backing_size(w->img[slot].b));
			pcache_backing_close(w->img[slot].b);
			w->img[slot].b = NULL;
		}
		break;
	}
	free(ents);
	return w->img[slot].b;
}

int pcache_wb_offline(struct pcache_cache_dev *cd, const struct pcache_wb_offline_opts *oo,
		      char *err, size_t errlen)
{
	struct pcache_wb_offline_opts defo;
	struct pcache_wb_opts wo;
	struct pcache_wb_ops ops = { .key_head = wb_off_head, .backing_get = wb_off_backing };
	struct pcache_wb_progress pg;
	struct pcache_wb_stats st;
	struct wb_offline *w;
	struct pcache_wb *wb;
	int r, res = 0;

	if (err && errlen)
		err[0] = 0;
	if (!oo) {
		memset(&defo, 0, sizeof(defo));
		oo = &defo;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cd = cd;
	w->bo = oo->backing;
	if (oo->wb)
		wo = *oo->wb;
	else
		memset(&wo, 0, sizeof(wo));
	wo.no_thread = true;
	r = pcache_wb_start(cd, &ops, w, &wo, &wb);
	if (r) {
		free(w);
		if (err)
			snprintf(err, errlen, "writeback start: %s", strerror(-r));
		return r;
	}
	wb->offline = true;
	pcache_wb_set_rate(wb, oo->rate);
	memset(&pg, 0, sizeof(pg));
	pg.total_bytes = wb_scan_dirty(wb, wb->dirty_tail, NULL, 0, &pg.total_ksets, &w->end);

	for (;;) {
		bool pending_retry = false, failed = false;

		r = wb_batch(wb, oo->rate != 0, false);
		pcache_wb_get_stats(wb, &st);
		pg.done_bytes = st.bytes_written + st.bytes_zeroed + st.bytes_overridden;
		pg.done_ksets = st.dirty_tail.lsn - (w->end.lsn - pg.total_ksets);
		if (oo->progress)
			oo->progress(oo->progress_arg, &pg);
		if (r < 0) {
			res = r;
			if (err)
				snprintf(err, errlen, r == -EUCLEAN ? "corrupt log at lsn %" PRIu64
					 " (see pcachectl check): written back up to there" :
					 "writeback stopped at lsn %" PRIu64 ": %s",
					 st.scan.lsn, strerror(-r));
			break;
		}
		if (r > 0)
			continue;
		/* at the end of the log: retry blocked images a few times, then give up */
		for (uint32_t i = 0; i < wb->n_imgs; i++) {
			struct wb_img *im = &wb->imgs[i];

			if (!im->blocked)
				continue;
			if (im->latched || im->fails_in_row >= WB_OFFLINE_MAX_FAILS ||
			    im->last_error == -ENXIO || im->last_error == -ERANGE) {
				failed = true;
				if (!res) {
					res = im->last_error ? im->last_error : -EIO;
					if (err) {
						const char *m = NULL;
						char txt[160];

						for (uint32_t j = 0; j < w->n; j++)
							if (w->img[j].id == im->id && w->img[j].msg[0])
								m = w->img[j].msg;
						if (m)
							snprintf(err, errlen, "%s", m);
						else
							snprintf(err, errlen, "image id %u: %s (its dirty data stays in the cache)",
								 im->id, wb_err_text(im, res, txt, sizeof(txt)));
					}
				}
			} else {
				pending_retry = true;
			}
		}
		if (!pending_retry)
			break;
		(void)failed;
		wb_sleep(wb, wb_next_retry_ns(wb));
	}
	pcache_wb_stop(wb); /* persists every image's wb_lsn */
	for (uint32_t i = 0; i < w->n; i++)
		pcache_backing_close(w->img[i].b);
	free(w);
	return res;
}
