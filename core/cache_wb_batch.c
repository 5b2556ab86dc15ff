/*
 * cache_wb_batch.c -- one writeback batch: collect the dirty keys of one epoch from the log,
 * resolve overlaps and merge, issue through the token bucket (holding each image's writethrough
 * writes only while its requests are issued and waited for), flush the images written, then
 * commit: per-image progress and dirty_tail. The steps and invariants are described at the top
 * of cache_writeback.c (invariants 1-7 there).
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
#include "wb_i.h"

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

void pcache_wb_wait_inflight(struct pcache_wb *wb, uint32_t max_n, uint64_t max_bytes)
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
		pcache_wb_wait_inflight(wb, wb->o.max_inflight / 2, wb->o.max_inflight_bytes / 2);
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
			return true; /* writers wait for space: no rate limit (see pcache_wb_urgent_update) */
		pthread_mutex_lock(&wb->lock);
		/* a drain, a stop or the limit turned off while this batch waited ends the wait at
		 * once (at 1 B/s a 1 MiB request would otherwise hold a flush for 12 days) */
		wait = wb->stopping || wb->drains || !wb->rate ? 0 :
		       pcache_wb_bucket_take(&wb->bucket, pcache_wb_now(wb), len);
		if (wait && can_sleep)
			wb->st.rate_waits++;
		pthread_mutex_unlock(&wb->lock);
		if (!wait)
			return true;
		if (!can_sleep)
			return false;
		pcache_wb_sleep(wb, PCACHE_MIN(wait, 100ull * 1000 * 1000));
	}
}

/* What an image's writeback error means, for its log line and pcachectl. */
const char *pcache_wb_err_text(const struct wb_img *im, int err, char *buf, size_t len)
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
		       pcache_wb_err_text(im, err, msg, sizeof(msg)),
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
			pcache_wb_wait_inflight(wb, 0, 0);
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
	pcache_wb_wait_inflight(wb, 0, 0);
	wb_tally(im, v + done, k - done, t);
	wb_unhold(wb, im);
	return go;
}

/*
 * One batch. Returns 1 (progress: the walker moved), 0 (nothing to do now), -ECANCELED
 * (stop_after_reqs reached), -EUCLEAN (corrupt log, latched), -ENOMEM.
 */
/* What one batch collected and did: filled by wb_collect(), used by the steps after it. */
struct wb_batch {
	struct pcache_pos head, cur, start;
	uint64_t max_bytes, max_keys;
	uint64_t seq, bytes, epoch, overridden, nflush;
	uint64_t dirty_keys, clean, stale, unknown, crcerr, superseded, passed;
	struct wb_tally t;
	bool have_epoch;
};

/* The log cannot be read in order from here: stop writing back until restart (-err). */
static int wb_latch(struct pcache_wb *wb, int err)
{
	pthread_mutex_lock(&wb->lock);
	wb->latched = err;
	wb->st.latched = err;
	wb->st.errors++;
	if (err == -EIO)
		wb->st.media_errors++;
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
	return err;
}

/* Collect one dirty key of kset lsn b->cur.lsn (epoch ep) into wb->exts. 0 or -errno. */
static int wb_collect_key(struct pcache_wb *wb, struct wb_batch *b, const struct pcache_key_om *key,
			  uint32_t k, uint64_t ep)
{
	struct wb_ext e;
	struct wb_img *im;
	uint32_t len = pcache_le32(&key->len), kseg;
	uint16_t flags = pcache_le16(&key->flags);
	uint64_t live[2 * WB_LIVE_MAX], span;
	int idx, nlive, r;

	if (pcache_log_key_check(key, wb->seg_count, wb->seg_size, NULL, 0)) {
		wb_latch(wb, -EUCLEAN);
		wb_log(wb, "invalid key %u in kset lsn %" PRIu64 ": writeback stopped", k, b->cur.lsn);
		return -EUCLEAN;
	}
	if (flags & PCACHE_KEY_CLEAN) {
		b->clean++;
		return 0;
	}
	idx = pcache_wb_img_index(wb, pcache_le32(&key->image_id), b->cur.lsn);
	if (idx < 0)
		return idx;
	im = &wb->imgs[idx];
	if (!im->in_table) {
		b->unknown++;
		if (!(flags & PCACHE_KEY_ZERO))
			b->passed += len;
		return 0;
	}
	if (im->done_lsn > b->cur.lsn)
		return 0; /* durable already (written before a rewind) */
	if (im->blocked) {
		pthread_mutex_lock(&wb->lock);
		wb_block_at(wb, &b->cur);
		pthread_mutex_unlock(&wb->lock);
		return 0;
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
		return 0; /* failed at the end of the batch */
	e.off = pcache_le64(&key->off);
	e.end = e.off + len;
	e.seq = b->seq++;
	e.img = (uint32_t)idx;
	e.src = NULL;
	e.seg = kseg = pcache_le32(&key->seg);
	e.seg_off = pcache_le32(&key->seg_off);
	e.seg_gen = pcache_le64(&key->seg_gen);
	if (!(flags & PCACHE_KEY_ZERO) && e.seg_gen < pcache_cache_dev_seg_gen(wb->cd, kseg)) {
		b->stale++; /* its segment was freed: replay drops it too */
		return 0;
	}
	if (!(flags & PCACHE_KEY_ZERO)) {
		b->passed += len;
		e.src = (const uint8_t *)pcache_cache_dev_seg_addr(wb->cd, kseg) + e.seg_off;
	}
	im->batch_keys++;
	im->batch_key_bytes += len;
	/* an image cut since (pcache_image_shrink()): its bytes past the end are gone, as at replay */
	span = pcache_backing_span(im->b);
	if (e.off >= span) {
		b->superseded += len;
		b->bytes += len;
		return 0;
	}
	if (e.end > span)
		e.end = span;
	nlive = wb_live_ext(wb, &e, ep, live);
	if (nlive == 0) {
		b->superseded += len;
		b->bytes += len;
		return 0;
	}
	if (!(flags & PCACHE_KEY_ZERO)) {
		uint32_t crc = 0;

		if (wb->data_crc && pcache_media_crc(e.src, len, &crc) != 0) {
			/* invariant 4: unreadable cache data is never written */
			wb_media_error(im, e.off, len);
			return 0;
		}
		if (wb->data_crc && crc != pcache_le32(&key->data_crc)) {
			/* invariant 4: never write it; the image stops here */
			b->crcerr++;
			im->batch_err = -EBADMSG;
			return 0;
		}
	}
	r = wb_push_live(&wb->exts, &e, live, nlive, &b->superseded);
	if (r)
		return r;
	b->dirty_keys++;
	b->bytes += len;
	return 0;
}

/*
 * Step 1: walk ksets of one epoch from the scan position (invariant 1), up to the batch's
 * size, collecting their dirty keys. 0 or -errno (a corrupt or unreadable first kset latches).
 */
static int wb_collect(struct pcache_wb *wb, struct wb_batch *b)
{
	wb->exts.n = 0;
	while (b->cur.lsn < b->head.lsn) {
		const struct pcache_kset_om *ks;
		struct pcache_pos next;
		uint32_t n;
		uint64_t ep;
		int r;

		r = pcache_log_read(wb->rd, &b->cur, &ks);
		if (r && b->cur.lsn != b->start.lsn)
			break; /* write back what comes before it; the next batch latches */
		if (r) {
			/* before key_head every kset is durable: this one is corrupt or
			 * unreadable, and nothing after it can be written back in order */
			r = wb_latch(wb, r == -EIO ? -EIO : -EUCLEAN);
			wb_log(wb, "%s kset at segment %u offset %u (lsn %" PRIu64
			       ") before key_head: writeback stopped",
			       r == -EIO ? "unreadable (media error)" : "corrupt", b->cur.seg,
			       b->cur.off, b->cur.lsn);
			return r;
		}
		pcache_log_next(ks, &b->cur, &next);
		n = pcache_le16(&ks->key_num);
		if (n == 0) { /* LAST: follow it, belongs to no epoch */
			b->cur = next;
			continue;
		}
		ep = pcache_le64(&ks->epoch);
		if (b->have_epoch && ep != b->epoch)
			break; /* invariant 1: one epoch per batch */
		if (b->seq && (b->bytes >= b->max_bytes || b->seq + n > b->max_keys))
			break;
		b->have_epoch = true;
		b->epoch = ep;
		for (uint32_t k = 0; k < n; k++) {
			r = wb_collect_key(wb, b, &ks->keys[k], k, ep);
			if (r)
				return r;
		}
		b->cur = next;
	}
	return 0;
}

/*
 * Step 2: resolve overlaps, then issue one image at a time (invariant 3: no two requests of
 * the batch overlap on one image; the requests of an image are contiguous). 0, -errno, or
 * -ECANCELED when a stop cut the batch short.
 */
static int wb_issue(struct pcache_wb *wb, struct wb_batch *b, bool limited)
{
	bool canceled = false;
	int r;

	r = wb_resolve(wb, &wb->exts, &wb->reqs, &b->overridden);
	if (r)
		return r;
	memset(&b->t, 0, sizeof(b->t));
	for (size_t i = 0, j; i < wb->reqs.n && !canceled; i = j) {
		uint32_t ii = wb->reqs.v[i].img;

		for (j = i; j < wb->reqs.n && wb->reqs.v[j].img == ii; j++)
			;
		if (!wb->imgs[ii].batch_err)
			canceled = !wb_issue_image(wb, ii, i, j, limited, b->epoch, &b->t);
	}
	b->superseded += b->t.superseded;
	return canceled ? -ECANCELED : 0;
}

/* Step 3 (invariant 2): flush every image written by this batch, all at once. 0 or -ENOMEM. */
static int wb_flush_images(struct pcache_wb *wb, struct wb_batch *b)
{
	struct wb_req *fl = calloc(wb->n_imgs ? wb->n_imgs : 1, sizeof(*fl));

	if (!fl)
		return -ENOMEM;
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (!im->in_batch || im->batch_err || !im->b)
			continue;
		fl[i].wb = wb;
		wb_submit(wb, im->b, &fl[i], PCACHE_BIO_FLUSH);
		b->nflush++;
	}
	pcache_wb_wait_inflight(wb, 0, 0);
	for (uint32_t i = 0; i < wb->n_imgs; i++)
		if (fl[i].wb && fl[i].status && !wb->imgs[i].batch_err)
			wb->imgs[i].batch_err = fl[i].status;
	free(fl);
	return 0;
}

/*
 * Step 4: commit per-image progress, block positions, the walker and the statistics, release
 * the backings, then persist dirty_tail (invariant 2: the flushes made every write before it
 * durable).
 */
static void wb_commit(struct pcache_wb *wb, struct wb_batch *b)
{
	struct pcache_pos newtail;
	uint64_t now, written = b->t.written, zeroed = b->t.zeroed;
	bool moved;
	int r;

	pthread_mutex_lock(&wb->lock);
	now = pcache_wb_now(wb);
	for (uint32_t i = 0; i < wb->n_imgs; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->in_batch && im->batch_err) {
			if (im->batch_err == -EBADMSG || im->batch_err == -EHWPOISON)
				im->latched = true;
			if (im->batch_err == -EHWPOISON)
				wb->st.media_errors++;
			wb_img_fail(wb, im, im->batch_err, now);
			wb_block_at(wb, &b->start);
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
			if (im->done_lsn < b->cur.lsn)
				im->done_lsn = b->cur.lsn; /* invariant 6 */
		}
	}
	wb->scan = b->cur;
	newtail = wb->block_set ? wb->block_pos : b->cur;
	moved = newtail.lsn > wb->dirty_tail.lsn;
	wb->st.bytes_written += written;
	wb->st.bytes_zeroed += zeroed;
	wb->st.requests += b->t.issued;
	wb->st.flushes += b->nflush;
	wb->st.batches++;
	if (!wb->have_epoch || b->epoch != wb->last_epoch)
		wb->st.epochs += b->have_epoch;
	if (b->have_epoch) {
		wb->have_epoch = true;
		wb->last_epoch = b->epoch;
	}
	wb->st.keys_dirty += b->dirty_keys;
	wb->st.keys_clean_skipped += b->clean;
	wb->st.keys_stale += b->stale;
	wb->st.keys_unknown_image += b->unknown;
	wb->st.bytes_overridden += b->overridden;
	wb->st.bytes_superseded += b->superseded;
	wb->st.crc_errors += b->crcerr;
	wb->st.drain_left = wb->st.drain_left > written + zeroed + b->superseded ?
			    wb->st.drain_left - written - zeroed - b->superseded : 0;
	pthread_mutex_unlock(&wb->lock);
	for (uint32_t i = 0; i < wb->n_imgs && wb->ops.image_passed; i++) {
		struct wb_img *im = &wb->imgs[i];

		if (im->batch_done && im->batch_keys)
			wb->ops.image_passed(wb->ctx, im->id, im->b, im->batch_keys,
					     im->batch_key_bytes);
	}
	wb_release_backings(wb);

	if (moved) {
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
			if (wb->ops.dirty_passed && newtail.lsn == b->cur.lsn)
				wb->ops.dirty_passed(wb->ctx, b->passed);
		}
	}
	pthread_mutex_lock(&wb->lock);
	wb->st.scan = wb->scan;
	wb->progress_seq++;
	pthread_cond_broadcast(&wb->done_cond);
	pthread_mutex_unlock(&wb->lock);
	if (!wb->offline &&
	    pcache_now_ns() - __atomic_load_n(&wb->last_persist_ns, __ATOMIC_RELAXED) > WB_PERSIST_NS)
		pcache_wb_persist_images(wb, false);
}

int pcache_wb_batch(struct pcache_wb *wb, bool limited, bool small)
{
	struct wb_batch b;
	int r;

	memset(&b, 0, sizeof(b));
	b.max_bytes = small ? wb->o.batch_bytes / PCACHE_WB_TRICKLE_DIV : wb->o.batch_bytes;
	b.max_keys = small ? wb->o.batch_keys / PCACHE_WB_TRICKLE_DIV : wb->o.batch_keys;
	pthread_mutex_lock(&wb->lock);
	if (wb->latched) {
		pthread_mutex_unlock(&wb->lock);
		return wb->latched;
	}
	wb_retry_due(wb, pcache_wb_now(wb));
	b.cur = b.start = wb->scan;
	pthread_mutex_unlock(&wb->lock);
	wb->ops.key_head(wb->ctx, &b.head);
	if (b.cur.lsn >= b.head.lsn)
		return 0;

	r = wb_collect(wb, &b);
	if (!r)
		r = wb_issue(wb, &b, limited);
	if (!r)
		r = wb_flush_images(wb, &b);
	if (r) {
		wb_release_backings(wb);
		return r;
	}
	wb_commit(wb, &b);
	return 1;
}
