/*
 * cache_req.c -- the request path: the write side (write, discard/zero, flush) and what every
 * request shares (entering an image, range checks, media errors). Reads and shared misses are
 * in cache_read.c, zero-copy reads in cache_pin.c; the invariants of all three are here.
 *
 * Writes copy the data into space from a data head, persist it, then insert the key into the
 * index and stage it under the region's subtree lock. Reads copy hits out of pmem outside the
 * subtree lock (generation re-checked after the copy) and send misses to the backing image as
 * REQ requests with an EMPTY placeholder in the index; the completion thread fills the cache
 * with the data read unless a write raced with it. A read that is all hits can instead be
 * pinned in place (pcache_image_read_pin): the caller gets pmem addresses, no copy.
 *
 * Invariants:
 *  1. Data is durable in pmem (drained) before its key enters the index or a staging kset.
 *  2. A key is inserted into the index and appended to its staging kset under one hold of the
 *     subtree lock, after room in the kset was made (cache_kset.c invariant 5).
 *  3. A hit is copied without the subtree lock; the copy is valid only if the segment's
 *     generation still equals the key's after the copy (a segment is bumped durably before
 *     reuse, segment.c invariant 1). Otherwise the range is read from the backing image (a
 *     stale key is always clean: GC frees a data segment only behind dirty_tail).
 *  4. With data CRCs on, a hit whose CRC does not match is -EIO (counted), never wrong data.
 *  5. A miss fill replaces only its own placeholder: a racing write removed or cut it, and the
 *     fill then caches nothing or only the part still covered.
 *  6. The completion thread never waits: fills use non-blocking allocation and trylock on the
 *     subtree and the staging kset, and are skipped (counted) when one is not available.
 *  7. Concurrent misses on one range share one backing read: a reader meeting another's
 *     placeholder waits for that read (registry by miss id); the owner copies the data to its
 *     waiters before its own done() runs, so its buffer is still valid.
 *  8. Lock usage: subtree locks, then a staging kset's lock; the miss registry lock is a leaf.
 *  9. A zero-copy read (pcache_image_read_pin) hands out pmem addresses only for a range that is
 *     all hits; each data segment is read-pinned (segment.c invariant 5) under the subtree lock
 *     and its generation re-checked after the pin, so the bytes cannot be freed or reused until
 *     the unpin; data CRCs are checked on the pinned bytes. The pin holds the image's I/O count
 *     (detach and stop wait for it). Anything else (a hole, a placeholder, a stale key, too
 *     many pieces) pins nothing and counts nothing: the caller reads with pcache_image_read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_i.h"
#include "pcache/media.h"

void pcache_image_note_media_error(struct pcache_image *img)
{
	atomic_fetch_add(&img->c->media_errors, 1);
	pcache_log(PCACHE_LOG_ERR, "image %s: media error in the cache under a zero-copy reply",
		   img->name);
}

/* A media error in the data area (media.h): counted, logged (rate-limited). */
void pcache_req_media_error(struct pcache_image *img, uint32_t seg, uint32_t off)
{
	atomic_fetch_add(&img->c->media_errors, 1);
	pcache_log(PCACHE_LOG_ERR, "image %s: media error in the cache at segment %u offset %u",
		   img->name, seg, off);
}

/* ---- common ------------------------------------------------------------------------------- */


/*
 * Insert k (region-relative) into the index of img and stage it, under the subtree lock.
 * *stage_idx gets the staging kset used. wait: may wait for log space.
 */
static int index_add(struct pcache_image *img, uint64_t region, const struct pcache_ikey *k,
		     bool wait, uint32_t *stage_idx)
{
	struct pcache_cache *c = img->c;
	struct pcache_subtree *sub = &img->ix.sub[region];
	uint32_t si = pcache_stage_of(img->id, region);
	struct pcache_stage *st = &c->stage[si];
	struct pcache_key_om om;
	struct pcache_ikey ik;
	int ret;

	pthread_mutex_lock(&sub->lock);
	ret = pcache_subtree_reserve(sub, 2);
	if (ret)
		goto out_sub;
	pthread_mutex_lock(&st->lock);
	ret = pcache_stage_room(c, st, wait);
	if (ret)
		goto out_stage;
	ik = *k;
	/*
	 * The epoch this key's kset will carry, read under the stage lock: a flush that starts
	 * now closes this stage (after we let go of it) before it bumps the epoch, so unless a
	 * flush is already between its closes and its bump, the kset gets the epoch read here.
	 * The writeback skips a dirty key only for later keys of the same, certain epoch.
	 */
	if (!atomic_load(&c->log.epoch_unsure) && !atomic_load(&c->log.epoch_broken)) {
		ik.flags |= PCACHE_IKEY_EPOCH;
		ik.epoch16 = (uint16_t)atomic_load(&c->log.epoch_now);
	}
	/* room made and index memory reserved: neither step below can fail */
	(void)pcache_subtree_insert(sub, &ik);
	if (!(k->flags & (PCACHE_KEY_CLEAN | PCACHE_KEY_ZERO)))
		atomic_fetch_add_explicit(&c->dirty_in, k->len, memory_order_relaxed);
	if (!(k->flags & PCACHE_KEY_CLEAN)) {
		atomic_fetch_add_explicit(&img->dirty_keys, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&img->dirty_bytes, k->len, memory_order_relaxed);
	}
	pcache_key_encode(&om, img->id, (region << PCACHE_REGION_SHIFT) + k->off, k);
	pcache_stage_add(c, st, &om);
	if (stage_idx)
		*stage_idx = si;
out_stage:
	pthread_mutex_unlock(&st->lock);
out_sub:
	pthread_mutex_unlock(&sub->lock);
	return ret;
}

static int close_stages(struct pcache_cache *c, uint32_t mask)
{
	uint32_t i;
	int ret, first = 0;

	for (i = 0; i < PCACHE_NSTAGE; i++) {
		if (!(mask & (1u << i)))
			continue;
		pthread_mutex_lock(&c->stage[i].lock);
		ret = pcache_stage_close(c, &c->stage[i], true);
		pthread_mutex_unlock(&c->stage[i].lock);
		if (ret && !first)
			first = ret;
	}
	return first;
}

/* ---- write -------------------------------------------------------------------------------- */

/* Mark the epochs from..to (at most all of them) as holding FUA keys (struct pcache_log). */
static void fua_mark(struct pcache_cache *c, uint64_t from, uint64_t to)
{
	for (uint64_t e = from; e <= to && e - from < PCACHE_FUA_EPOCHS; e++)
		atomic_store(&c->log.fua_epoch[e % PCACHE_FUA_EPOCHS], e);
}

/*
 * The keys a writethrough write staged (region and index key), so that once its backing write
 * is over they can be marked PCACHE_IKEY_ONBACKING; a write of more keys than fit marks none.
 */
#define WT_KEYS_MAX 4
struct wt_keys {
	uint32_t n;
	bool overflow;
	uint64_t region[WT_KEYS_MAX];
	struct pcache_ikey k[WT_KEYS_MAX];
};

/*
 * Write into the cache only (the cache-mode logic is in pcache_image_write); the keys staged
 * are recorded in *tk if not NULL. THROUGH keys are logged (their stages closed) before this
 * returns: a writethrough or writearound write's bytes go to the backing before any flush,
 * and if a crash found an older CLEAN key of those bytes in the log and not this one, the
 * cache would come back serving the old bytes as "equal to the backing" while the backing
 * holds the new ones (reads would change when the old key is evicted). Logged first, the key
 * replays as dirty with the bytes the backing has (or will get again from the writeback).
 */
static int cache_write(struct pcache_image *img, const uint8_t *src, uint64_t off, uint64_t len,
		       unsigned int flags, uint16_t key_flags, struct wt_keys *tk)
{
	struct pcache_cache *c = img->c;
	uint64_t e0 = atomic_load(&c->log.epoch_now);
	uint32_t mask = 0, si;
	int ret = 0;

	/*
	 * FUA: its keys land in a kset of epoch e0 or, staged while a flush is between its
	 * closes and its bump, e0 + 1 (that flush's closes take them). Both are marked before
	 * any key is staged, so the writeback never skips them; the close below may still meet
	 * later flushes: those epochs are marked after it, before the write returns.
	 */
	if (flags & PCACHE_IO_FUA)
		fua_mark(c, e0, e0 + 1);
	while (len) {
		uint64_t region = off >> PCACHE_REGION_SHIFT;
		uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1));
		uint32_t chunk = (uint32_t)PCACHE_MIN(len, (uint64_t)(PCACHE_REGION_SIZE - roff));
		struct pcache_alloc a;
		struct pcache_ikey k;

		ret = pcache_data_alloc(c, chunk, true, &a);
		if (ret)
			break;
		if (pcache_media_store(c->pm, pcache_seg_ptr(c, a.seg, a.seg_off), src, a.len,
				       PCACHE_PM_NONTEMPORAL | PCACHE_PM_NODRAIN) != 0) {
			/* never acknowledged; the space goes back with its segment */
			pcache_req_media_error(img, a.seg, a.seg_off);
			pcache_seg_put(c, a.seg);
			ret = -EIO;
			break;
		}
		memset(&k, 0, sizeof(k));
		k.off = roff;
		k.len = a.len;
		k.seg = a.seg;
		k.seg_off = a.seg_off;
		k.seg_gen = a.gen;
		k.flags = key_flags;
		if (c->data_crc) {
			k.data_crc = pcache_crc32c(PCACHE_CRC_SEED, src, a.len);
			k.crc_len = a.len;
		}
		/* the data copied above is durable before its key is indexed and staged */
		c->pm->ops->drain(c->pm->ctx);
		ret = index_add(img, region, &k, true, &si);
		if (ret) {
			pcache_seg_put(c, a.seg);
			break;
		}
		mask |= 1u << si;
		if (tk && tk->n < WT_KEYS_MAX) {
			tk->region[tk->n] = region;
			tk->k[tk->n++] = k;
		} else if (tk) {
			tk->overflow = true;
		}
		src += a.len;
		off += a.len;
		len -= a.len;
	}
	if (flags & PCACHE_IO_FUA) {
		int r = close_stages(c, mask);

		fua_mark(c, e0, atomic_load(&c->log.epoch_now));
		if (!ret)
			ret = r;
	} else if (key_flags & PCACHE_IKEY_THROUGH) {
		/* in the log before the backing write (see above) */
		int r = close_stages(c, mask);

		if (!ret)
			ret = r;
	}
	return ret;
}

/*
 * Writearound: stage the new data (NULL: zeros) over the cached parts of the range as THROUGH
 * keys, and drop the placeholders of misses in flight over it (their fills could cache data
 * read before the write). Called before the backing write, so that an older dirty key of
 * those bytes is passed over by the writeback instead of landing after the new data (see
 * struct pcache_through_gate); a range with no key is not cached. The caller has registered
 * the range in img->nofill first, so no miss over it caches anything until the backing write
 * is over (a miss that read the old data would otherwise fill it afterwards).
 */
static int writearound_fix(struct pcache_image *img, const uint8_t *src, uint64_t off, uint64_t len,
			   unsigned int flags)
{
	uint64_t end = off + len;
	int ret = 0;

	/* one cached run at a time: [a, b) of the range that the index holds (adjacent keys
	 * merged), found under the subtree lock; the bytes around it are not cached */
	while (off < end && !ret) {
		uint64_t region = off >> PCACHE_REGION_SHIFT, base = region << PCACHE_REGION_SHIFT;
		struct pcache_subtree *sub = &img->ix.sub[region];
		uint32_t roff = (uint32_t)(off - base);
		uint32_t rend = (uint32_t)(PCACHE_MIN(end, base + PCACHE_REGION_SIZE) - base);
		uint32_t i, a = rend, b = rend, si;

		pthread_mutex_lock(&sub->lock);
		i = pcache_subtree_find(sub, roff);
		while (i < sub->n && sub->v[i].off < rend) {
			const struct pcache_ikey *k = &sub->v[i];

			if (k->flags & PCACHE_IKEY_EMPTY) {
				pcache_subtree_remove(sub, i);
				continue;
			}
			if (a == rend) {
				a = PCACHE_MAX(k->off, roff);
			} else if (k->off > b) {
				break; /* a gap: this run ends at b */
			}
			b = PCACHE_MIN(k->off + k->len, rend);
			i++;
		}
		pthread_mutex_unlock(&sub->lock);
		if (a < b && src) {
			ret = cache_write(img, src + (base + a - off), base + a, b - a, flags,
					  PCACHE_IKEY_THROUGH, NULL);
		} else if (a < b) {
			/* a zeroed range: a ZERO key over the cached copies */
			struct pcache_ikey k;

			memset(&k, 0, sizeof(k));
			k.off = a;
			k.len = b - a;
			k.flags = PCACHE_KEY_ZERO | PCACHE_IKEY_THROUGH;
			ret = pcache_space_wait(img->c);
			if (!ret)
				ret = index_add(img, region, &k, true, &si);
			if (!ret) /* logged before the backing zeroing, as cache_write() does */
				ret = close_stages(img->c, 1u << si);
		}
		if (src)
			src += (base + b) - off;
		off = base + b;
	}
	return ret;
}

/* ---- ranges no miss may fill (struct pcache_image, nofill) -------------------------------- */

/* Take e off the list at *head (it is there at most once); true if it was there. */
static bool ent_unlink(struct pcache_through_ent **head, const struct pcache_through_ent *e)
{
	for (struct pcache_through_ent **p = head; *p; p = &(*p)->next) {
		if (*p == e) {
			*p = e->next;
			return true;
		}
	}
	return false;
}

void pcache_nofill_add(struct pcache_image *img, struct pcache_through_ent *e)
{
	pthread_mutex_lock(&img->nofill_lock);
	e->next = img->nofill;
	img->nofill = e;
	atomic_fetch_add(&img->nofill_n, 1);
	pthread_mutex_unlock(&img->nofill_lock);
}

void pcache_nofill_del(struct pcache_image *img, struct pcache_through_ent *e)
{
	pthread_mutex_lock(&img->nofill_lock);
	if (ent_unlink(&img->nofill, e))
		atomic_fetch_sub(&img->nofill_n, 1);
	pthread_mutex_unlock(&img->nofill_lock);
}

bool pcache_nofill_overlaps(struct pcache_image *img, uint64_t off, uint64_t len)
{
	bool hit = false;

	/* seq_cst: a writer adds its range before it takes the subtree lock this reader holds */
	if (!atomic_load(&img->nofill_n))
		return false;
	pthread_mutex_lock(&img->nofill_lock);
	for (const struct pcache_through_ent *e = img->nofill; e && !hit; e = e->next)
		hit = e->off < off + len && off < e->end;
	pthread_mutex_unlock(&img->nofill_lock);
	return hit;
}


/*
 * Common entry of writes and discards: validate the range, refuse read-only images, and enter
 * the image's I/O count. 0 (entered: the caller must io_exit), 1 (empty range, nothing to do,
 * not entered) or -errno.
 */
static int modify_enter(struct pcache_image *img, uint64_t off, uint64_t len)
{
	int ret = pcache_req_check_range(img, off, len);

	if (ret)
		return ret;
	if (img->read_only)
		return -EROFS;
	if (len == 0)
		return 1;
	return pcache_req_enter(img);
}

/* ---- the writethrough gate (struct pcache_through_gate) ------------------------------------ */

void pcache_through_init(struct pcache_through_gate *g)
{
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->cond, NULL);
	g->shared = 0;
	g->ents = NULL;
	g->excl_waiting = 0;
	g->excl = false;
}

void pcache_through_destroy(struct pcache_through_gate *g)
{
	pthread_cond_destroy(&g->cond);
	pthread_mutex_destroy(&g->lock);
}

/* Put e on the gate's list of writes in flight, marking overlaps both ways (g->lock held). */
static void ent_register(struct pcache_through_gate *g, struct pcache_through_ent *e)
{
	e->overlapped = false;
	for (struct pcache_through_ent *o = g->ents; o; o = o->next) {
		if (o->off < e->end && e->off < o->end) {
			o->overlapped = true;
			e->overlapped = true;
		}
	}
	e->next = g->ents;
	g->ents = e;
}

/*
 * A writethrough write is in flight from its key's staging on: registered before it, an older
 * overlapping write whose backing write lands after a newer one's is seen as overlapped by
 * both, so neither is marked on the backing (the writeback settles them in log order).
 */
static void through_register(struct pcache_image *img, struct pcache_through_ent *e)
{
	struct pcache_through_gate *g = &img->through;

	pthread_mutex_lock(&g->lock);
	ent_register(g, e);
	pthread_mutex_unlock(&g->lock);
}

void pcache_through_enter(struct pcache_image *img, struct pcache_through_ent *e)
{
	struct pcache_through_gate *g = &img->through;

	pthread_mutex_lock(&g->lock);
	while (g->excl || g->excl_waiting)
		pthread_cond_wait(&g->cond, &g->lock);
	g->shared++;
	if (e)
		ent_register(g, e);
	pthread_mutex_unlock(&g->lock);
}

void pcache_through_leave(struct pcache_image *img, struct pcache_through_ent *e)
{
	struct pcache_through_gate *g = &img->through;

	pthread_mutex_lock(&g->lock);
	if (e)
		(void)ent_unlink(&g->ents, e);
	/* under the gate: a writeback holding it sees every write whose I/O is over */
	atomic_fetch_add(&img->through_done, 1);
	if (--g->shared == 0 && g->excl_waiting)
		pthread_cond_broadcast(&g->cond);
	pthread_mutex_unlock(&g->lock);
}

void pcache_through_hold(struct pcache_image *img, bool hold)
{
	struct pcache_through_gate *g = &img->through;

	pthread_mutex_lock(&g->lock);
	if (hold) {
		g->excl_waiting++;
		while (g->excl || g->shared)
			pthread_cond_wait(&g->cond, &g->lock);
		g->excl_waiting--;
		g->excl = true;
	} else {
		g->excl = false;
		pthread_cond_broadcast(&g->cond);
	}
	pthread_mutex_unlock(&g->lock);
}

/*
 * After a writethrough write's backing I/O succeeded with no overlapping writethrough write in
 * flight beside it: mark the parts of its keys still in the index (its own data, not replaced)
 * PCACHE_IKEY_ONBACKING, so that the writeback does not write them a second time. The backing
 * got them in the gate, so the writeback flushes them with its batch (every image with a
 * key in a batch is flushed) before dirty_tail passes them.
 */
static void mark_on_backing(struct pcache_image *img, const struct wt_keys *tk, bool may_block)
{
	if (tk->overflow)
		return;
	for (uint32_t j = 0; j < tk->n; j++) {
		const struct pcache_ikey *k = &tk->k[j];
		struct pcache_subtree *sub = &img->ix.sub[tk->region[j]];

		/*
		 * The completion thread never waits for a subtree lock (invariant 6): its holder may
		 * wait for log space that a writeback batch of this image, whose completions run
		 * here, frees. Unmarked, the key is written back once more: the same bytes.
		 */
		if (may_block)
			pthread_mutex_lock(&sub->lock);
		else if (!pcache_subtree_trylock_bounded(sub))
			continue;
		for (uint32_t i = pcache_subtree_find(sub, k->off);
		     i < sub->n && sub->v[i].off < k->off + k->len; i++) {
			struct pcache_ikey *e = &sub->v[i];

			if (!(e->flags & PCACHE_KEY_CLEAN) &&
			    pcache_ikey_same_extent(e, k->seg, k->seg_gen, k->seg_off, k->off))
				e->flags |= PCACHE_IKEY_ONBACKING;
		}
		pthread_mutex_unlock(&sub->lock);
	}
}

/* Take e off the gate's list but stay inside the gate; was it overlapped? */
static bool through_unlink(struct pcache_image *img, struct pcache_through_ent *e)
{
	struct pcache_through_gate *g = &img->through;
	bool overlapped;

	pthread_mutex_lock(&g->lock);
	(void)ent_unlink(&g->ents, e);
	overlapped = e->overlapped;
	pthread_mutex_unlock(&g->lock);
	return overlapped;
}

/*
 * Writethrough and writearound: write (buf) or zero (buf NULL) the backing image, and flush it
 * for FUA, inside the through gate (after the range's THROUGH keys are staged). With tk (a
 * writethrough write's keys, registered as reg before they were staged), they are marked on the
 * backing when that is certain. 0/-errno.
 */
static int through_io(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
		      unsigned int flags, const struct wt_keys *tk, struct pcache_through_ent *reg)
{
	struct pcache_through_ent e = { .off = off, .end = off + len };
	bool overlapped;
	int ret;

	pcache_through_enter(img, reg ? NULL : &e);
	ret = pcache_backing_rw_sync(img->b, buf ? PCACHE_BIO_WRITE : PCACHE_BIO_ZERO, (void *)buf,
				     len, off);
	if (!ret && (flags & PCACHE_IO_FUA))
		ret = pcache_backing_flush_sync(img->b);
	overlapped = through_unlink(img, reg ? reg : &e);
	/* marked after leaving: a blocking mark inside the gate could wait for log space that
	 * the writeback, waiting for the gate, frees (a missed race costs one extra write) */
	pcache_through_leave(img, NULL);
	if (ret)
		atomic_fetch_add(&img->backing_errors, 1);
	else if (tk && !overlapped)
		mark_on_backing(img, tk, true);
	return ret;
}

/*
 * An asynchronous writethrough write between its backing submission and its done(). Its
 * backing writes take the data from its cached copy (one write per key, each data segment
 * read-pinned until the end, so that it cannot be freed and reused meanwhile).
 */
struct through_req {
	struct pcache_image *img;
	pcache_io_done_fn done;
	void *priv;
	bool fua;
	_Atomic uint32_t pending;   /* backing writes not ended yet */
	_Atomic int status;         /* the first error */
	uint32_t pinned;            /* tk.k[0..pinned) hold a read pin */
	struct pcache_through_ent ent;
	struct wt_keys tk;
	/* writearound: the data (a copy: nothing of it may be cached) and its nofill range */
	void *copy;
	struct pcache_through_ent nf;
};

static void through_finish(struct through_req *t, int status)
{
	struct pcache_image *img = t->img;
	bool overlapped = through_unlink(img, &t->ent);

	if (status)
		atomic_fetch_add(&img->backing_errors, 1);
	else if (!overlapped)
		mark_on_backing(img, &t->tk, false);
	/*
	 * Only now out of the gate: a writeback that held it and saw the through count move asks
	 * again which bytes are live, and must find the mark (else it writes the same bytes again).
	 * The mark only tries the subtree lock (bounded), so the gate is not held for long.
	 */
	pcache_through_leave(img, NULL);
	for (uint32_t j = 0; j < t->pinned; j++)
		pcache_seg_read_unpin(img->c, t->tk.k[j].seg);
	if (t->copy) {
		pcache_nofill_del(img, &t->nf);
		free(t->copy);
	}
	t->done(t->priv, status);
	pcache_req_exit(img);
	free(t);
}

/* Backing completion of the FUA flush that follows the writes. */
static void through_flush_end(void *priv, int status)
{
	through_finish(priv, status);
}

/* Backing completion of one of the writes. */
static void through_end(void *priv, int status)
{
	struct through_req *t = priv;
	int expected = 0;

	if (status)
		atomic_compare_exchange_strong(&t->status, &expected, status);
	if (atomic_fetch_sub(&t->pending, 1) != 1)
		return;
	status = atomic_load(&t->status);
	if (!status && t->fua) {
		struct pcache_backing_io io = { .op = PCACHE_BIO_FLUSH, .end = through_flush_end,
						.priv = t };

		status = pcache_backing_submit(t->img->b, &io);
		if (!status)
			return;
	}
	through_finish(t, status);
}

/* A writearound write or zeroing, synchronous: fix the cache, then write the backing. */
static int writearound_io(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
			  unsigned int flags)
{
	struct pcache_through_ent nf = { .off = off, .end = off + len };
	int ret;

	pcache_nofill_add(img, &nf);
	ret = writearound_fix(img, buf, off, len, flags);
	if (!ret)
		ret = through_io(img, buf, off, len, flags, NULL, NULL);
	pcache_nofill_del(img, &nf);
	return ret;
}

/*
 * The mode a write takes: the image's, except that a writeback-mode image over its max_share,
 * or a write in a sequential stream longer than the image's sequential_cutoff, goes around
 * the cache (counted as bypassed). The writearound path orders itself
 * against older dirty keys of the same bytes as it does after a run-time mode switch: their
 * cached copies get THROUGH keys first (writearound_fix()), and the writeback's exclusive
 * hold of the through gate keeps an older key from landing after the write.
 */
static uint32_t write_mode(struct pcache_image *img, uint64_t off, size_t len)
{
	uint32_t mode = atomic_load(&img->cache_mode);

	if (mode != PCACHE_MODE_WRITEBACK)
		return mode;
	if (pcache_image_over_share(img)) {
		atomic_fetch_add_explicit(&img->share_bypass_bytes, len, memory_order_relaxed);
		return PCACHE_MODE_WRITEAROUND;
	}
	if (pcache_seq_bypass(img, true, off, len)) {
		/* a long sequential stream (a restore, a dd): at the backing's sequential speed,
		 * without pushing the working set out */
		atomic_fetch_add_explicit(&img->write_bypass_bytes, len, memory_order_relaxed);
		return PCACHE_MODE_WRITEAROUND;
	}
	return mode;
}

int pcache_image_write(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
		       unsigned int flags)
{
	uint32_t mode;
	int ret;

	ret = modify_enter(img, off, len);
	if (ret)
		return ret < 0 ? ret : 0;
	atomic_fetch_add_explicit(&img->writes, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->write_bytes, len, memory_order_relaxed);
	mode = write_mode(img, off, len);
	if (mode == PCACHE_MODE_WRITEAROUND) {
		ret = writearound_io(img, buf, off, len, flags);
	} else if (mode == PCACHE_MODE_WRITETHROUGH) {
		/*
		 * The cached copy is staged first, as a dirty THROUGH key: the writeback passes
		 * over older dirty keys of these bytes (they never land after this data). Once
		 * the backing write is over the key is marked on the backing, and the writeback
		 * does not write it again, unless an overlapping writethrough write was in flight
		 * beside it: then the backing may hold either one's bytes, and the writeback
		 * writes the keys again in log order, which settles it.
		 */
		struct wt_keys tk = { 0 };
		struct pcache_through_ent e = { .off = off, .end = off + len };

		through_register(img, &e);
		ret = cache_write(img, buf, off, len, flags, PCACHE_IKEY_THROUGH, &tk);
		if (!ret)
			ret = through_io(img, buf, off, len, flags, &tk, &e);
		else
			(void)through_unlink(img, &e);
	} else {
		ret = cache_write(img, buf, off, len, flags, 0, NULL);
	}
	pcache_req_exit(img);
	return ret;
}

/* Set up t for `writes` backing writes; its pending count holds one more for the submitter,
 * dropped (through_end(t, 0)) once every write is submitted. t->ent is the caller's: it may be
 * on the gate's list already, where other writes read it. */
static void through_req_init(struct through_req *t, struct pcache_image *img, unsigned int flags,
			     pcache_io_done_fn done, void *priv, uint32_t writes)
{
	t->img = img;
	t->done = done;
	t->priv = priv;
	t->fua = flags & PCACHE_IO_FUA;
	atomic_init(&t->pending, writes + 1);
}

/*
 * The writearound part of pcache_image_write_async(): the range goes into nofill, the cached
 * parts get THROUGH keys (writearound_fix()), then the backing is written from a copy of the
 * data. PCACHE_IO_PENDING (t belongs to through_finish()), or -errno with t untouched.
 */
static int writearound_async(struct pcache_image *img, struct through_req *t, const void *buf,
			     uint64_t off, size_t len, unsigned int flags, pcache_io_done_fn done,
			     void *priv)
{
	struct pcache_backing_io io = { .op = PCACHE_BIO_WRITE, .off = off, .len = len,
					.end = through_end, .priv = t };
	int ret;

	t->copy = aligned_alloc(4096, PCACHE_ALIGN_UP(len, 4096));
	if (!t->copy)
		return -ENOMEM;
	memcpy(t->copy, buf, len);
	t->nf.off = off;
	t->nf.end = off + len;
	pcache_nofill_add(img, &t->nf);
	ret = writearound_fix(img, buf, off, len, flags);
	if (ret) {
		pcache_nofill_del(img, &t->nf);
		free(t->copy);
		t->copy = NULL;
		return ret;
	}
	through_req_init(t, img, flags, done, priv, 1);
	io.kmem = t->copy;
	t->ent.off = off;
	t->ent.end = off + len;
	pcache_through_enter(img, &t->ent);
	ret = pcache_backing_submit(img->b, &io);
	if (ret)
		through_end(t, ret);
	through_end(t, 0);
	return PCACHE_IO_PENDING;
}

int pcache_image_write_async(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
			     unsigned int flags, pcache_io_done_fn done, void *priv)
{
	struct pcache_cache *c = img->c;
	struct through_req *t;
	uint64_t pos = off;
	uint32_t j;
	int ret;

	uint32_t mode = atomic_load(&img->cache_mode);

	/* a writeback-mode image's writes (and those it sends around the cache: write_mode())
	 * are done in the caller's thread */
	if (mode == PCACHE_MODE_WRITEBACK)
		return pcache_image_write(img, buf, off, len, flags);
	ret = modify_enter(img, off, len);
	if (ret)
		return ret < 0 ? ret : 0;
	t = calloc(1, sizeof(*t));
	if (!t) {
		pcache_req_exit(img);
		return -ENOMEM;
	}
	atomic_fetch_add_explicit(&img->writes, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->write_bytes, len, memory_order_relaxed);
	if (mode == PCACHE_MODE_WRITEAROUND) {
		ret = writearound_async(img, t, buf, off, len, flags, done, priv);
		if (ret == PCACHE_IO_PENDING)
			return ret;
		goto out;
	}
	/* the THROUGH key first, as in pcache_image_write() (registered before it) */
	t->ent.off = off;
	t->ent.end = off + len;
	through_register(img, &t->ent);
	ret = cache_write(img, buf, off, len, flags, PCACHE_IKEY_THROUGH, &t->tk);
	if (ret) {
		(void)through_unlink(img, &t->ent);
		goto out;
	}
	for (j = 0; j < t->tk.n && !t->tk.overflow; j++) {
		if (!pcache_seg_read_pin(c, t->tk.k[j].seg, t->tk.k[j].seg_gen))
			break;
		t->pinned++;
	}
	if (t->tk.overflow || t->pinned < t->tk.n) {
		/* too many pieces (or one freed already): write from the caller's buffer now */
		(void)through_unlink(img, &t->ent);
		ret = through_io(img, buf, off, len, flags, NULL, NULL);
		goto out;
	}
	through_req_init(t, img, flags, done, priv, t->tk.n);
	pcache_through_enter(img, NULL);   /* t->ent is on the list since before its keys */
	pcache_backing_plug(img->b);
	for (j = 0; j < t->tk.n; j++) {
		const struct pcache_ikey *k = &t->tk.k[j];
		struct pcache_backing_io io = {
			.op = PCACHE_BIO_WRITE, .off = pos, .len = k->len,
			.kmem = pcache_seg_ptr(c, k->seg, k->seg_off), .end = through_end, .priv = t,
		};

		ret = pcache_backing_submit(img->b, &io);
		if (ret) {
			through_end(t, ret);    /* counts the error for the writes not submitted */
			atomic_fetch_sub(&t->pending, t->tk.n - j - 1);
			break;
		}
		pos += k->len;
	}
	pcache_backing_unplug(img->b);
	through_end(t, 0);              /* the submission's own count */
	return PCACHE_IO_PENDING;       /* through_finish() leaves the gate, calls done(), exits */
out:
	for (j = 0; j < t->pinned; j++)
		pcache_seg_read_unpin(c, t->tk.k[j].seg);
	free(t);
	pcache_req_exit(img);
	return ret;
}

/* ---- discard / zero ----------------------------------------------------------------------- */

int pcache_image_discard(struct pcache_image *img, uint64_t off, uint64_t len, bool zero)
{
	struct pcache_cache *c = img->c;
	uint64_t off0 = off, len0 = len;
	uint32_t mode, si;
	int ret;

	(void)zero; /* both become a ZERO key: the range reads back as zeros */
	ret = modify_enter(img, off, len);
	if (ret)
		return ret < 0 ? ret : 0;
	atomic_fetch_add_explicit(&img->discards, 1, memory_order_relaxed);
	mode = atomic_load(&img->cache_mode);
	if (mode == PCACHE_MODE_WRITEAROUND) {
		/* the backing range reads as zeros at once; cached copies get ZERO keys */
		ret = writearound_io(img, NULL, off, len, 0);
		goto out;
	}
	/* writethrough: ZERO THROUGH keys first, then the backing (as for writes) */
	while (len) {
		uint64_t region = off >> PCACHE_REGION_SHIFT;
		uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1));
		uint32_t chunk = (uint32_t)PCACHE_MIN(len, (uint64_t)(PCACHE_REGION_SIZE - roff));
		struct pcache_ikey k;

		ret = pcache_space_wait(c);
		if (ret)
			break;
		memset(&k, 0, sizeof(k));
		k.off = roff;
		k.len = chunk;
		k.flags = PCACHE_KEY_ZERO | (mode == PCACHE_MODE_WRITETHROUGH ? PCACHE_IKEY_THROUGH : 0);
		ret = index_add(img, region, &k, true, &si);
		if (!ret && mode == PCACHE_MODE_WRITETHROUGH)
			ret = close_stages(c, 1u << si); /* logged before the backing zeroing */
		if (ret)
			break;
		off += chunk;
		len -= chunk;
	}
	if (!ret && mode == PCACHE_MODE_WRITETHROUGH)
		ret = through_io(img, NULL, off0, len0, 0, NULL, NULL);
out:
	pcache_req_exit(img);
	return ret;
}

/* ---- flush -------------------------------------------------------------------------------- */

/*
 * Group commit: a flush makes durable every write acknowledged before it began, which any
 * commit (close every staging kset, bump the epoch) that began after it arrived also does. So
 * a flush that finds, once it holds flush_lock, that such a commit succeeded meanwhile (it
 * waited for that commit on the lock) returns at once: concurrent fsyncs share one commit.
 */
int pcache_cache_flush(struct pcache_cache *c)
{
	uint64_t arrived = atomic_load(&c->flush_begun), seq;
	int ret;

	pthread_mutex_lock(&c->flush_lock);
	if (atomic_load(&c->flush_ok) > arrived) {
		pthread_mutex_unlock(&c->flush_lock);
		atomic_fetch_add_explicit(&c->flush_joined, 1, memory_order_relaxed);
		return 0;
	}
	seq = atomic_fetch_add(&c->flush_begun, 1) + 1;
	atomic_store(&c->log.epoch_unsure, true);
	ret = pcache_stages_close_all(c, true, false, false);
	/* ksets closed above carry the old epoch; later ones the new (writeback barriers) */
	pcache_log_epoch_bump(c);
	if (ret)
		atomic_store(&c->log.epoch_broken, true); /* keys left staged get the new epoch */
	else
		atomic_store(&c->flush_ok, seq);
	atomic_store(&c->log.epoch_unsure, false);
	pthread_mutex_unlock(&c->flush_lock);
	return ret;
}

int pcache_image_flush(struct pcache_image *img)
{
	int ret = pcache_req_enter(img);

	if (ret)
		return ret;
	atomic_fetch_add_explicit(&img->flushes, 1, memory_order_relaxed);
	ret = pcache_cache_flush(img->c);
	if (!ret && atomic_load(&img->cache_mode) != PCACHE_MODE_WRITEBACK)
		ret = pcache_backing_flush_sync(img->b);
	pcache_req_exit(img);
	return ret;
}
