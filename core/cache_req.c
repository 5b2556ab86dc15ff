/*
 * cache_req.c -- the request path: write, read (hits and misses), flush, discard/zero.
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
static void media_error(struct pcache_image *img, uint32_t seg, uint32_t off)
{
	atomic_fetch_add(&img->c->media_errors, 1);
	pcache_log(PCACHE_LOG_ERR, "image %s: media error in the cache at segment %u offset %u",
		   img->name, seg, off);
}

/* ---- common ------------------------------------------------------------------------------- */

static int io_enter(struct pcache_image *img)
{
	struct pcache_cache *c = img->c;
	uint64_t ms = pcache_coarse_ms();

	/* user I/O time for the writeback's idle test, stored only when it changed, so that
	 * I/O threads rarely write the shared line */
	if (atomic_load_explicit(&c->last_io_ms, memory_order_relaxed) != ms)
		atomic_store_explicit(&c->last_io_ms, ms, memory_order_relaxed);
	atomic_fetch_add(&img->inflight, 1);
	if (atomic_load(&img->detaching) || atomic_load(&img->c->stopping_io)) {
		atomic_fetch_sub(&img->inflight, 1);
		return -ENODEV;
	}
	return 0;
}

static void io_exit(struct pcache_image *img)
{
	atomic_fetch_sub(&img->inflight, 1);
}

static int check_range(const struct pcache_image *img, uint64_t off, uint64_t len)
{
	if (off % img->lbs || len % img->lbs)
		return -EINVAL;
	if (off > img->size || len > img->size - off)
		return -EINVAL;
	return 0;
}

static inline bool key_stale(struct pcache_cache *c, const struct pcache_ikey *k)
{
	if (k->flags & (PCACHE_KEY_ZERO | PCACHE_IKEY_EMPTY))
		return false;
	return pcache_cache_dev_seg_gen(c->cd, k->seg) != k->seg_gen;
}

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

/* Write into the cache only (the cache-mode logic is in pcache_image_write). */
static int cache_write(struct pcache_image *img, const uint8_t *src, uint64_t off, uint64_t len,
		       unsigned int flags, uint16_t key_flags)
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
			media_error(img, a.seg, a.seg_off);
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
		src += a.len;
		off += a.len;
		len -= a.len;
	}
	if (flags & PCACHE_IO_FUA) {
		int r = close_stages(c, mask);

		fua_mark(c, e0, atomic_load(&c->log.epoch_now));
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
 * through_lock), and again after it for what became cached meanwhile (a fill that read the
 * old data); a range with no key is not cached. Chunk i (one per 4 MiB region) is left
 * unstaged when bit i of skip is set; bit i of *staged (if not NULL) says it was staged.
 */
static int writearound_fix(struct pcache_image *img, const uint8_t *src, uint64_t off, uint64_t len,
			   unsigned int flags, uint32_t skip, uint32_t *staged)
{
	uint32_t chunk_i = 0;
	int ret = 0;

	if (staged)
		*staged = 0;
	while (len && !ret) {
		uint64_t region = off >> PCACHE_REGION_SHIFT;
		struct pcache_subtree *sub = &img->ix.sub[region];
		uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1));
		uint32_t chunk = (uint32_t)PCACHE_MIN(len, (uint64_t)(PCACHE_REGION_SIZE - roff));
		bool cached = false, skipped = chunk_i < 32 && (skip & (1u << chunk_i));
		uint32_t i;

		pthread_mutex_lock(&sub->lock);
		i = pcache_subtree_find(sub, roff);
		while (i < sub->n && sub->v[i].off < roff + chunk) {
			if (sub->v[i].flags & PCACHE_IKEY_EMPTY) {
				pcache_subtree_remove(sub, i);
				continue;
			}
			cached = true;
			i++;
		}
		pthread_mutex_unlock(&sub->lock);
		if (cached && !skipped && src) {
			ret = cache_write(img, src, off, chunk, flags, PCACHE_IKEY_THROUGH);
		} else if (cached && !skipped) {
			/* a zeroed range: a ZERO key over the cached copies */
			struct pcache_ikey k;

			memset(&k, 0, sizeof(k));
			k.off = roff;
			k.len = chunk;
			k.flags = PCACHE_KEY_ZERO | PCACHE_IKEY_THROUGH;
			ret = pcache_space_wait(img->c);
			if (!ret)
				ret = index_add(img, region, &k, true, NULL);
		}
		if (!ret && cached && !skipped && staged && chunk_i < 32)
			*staged |= 1u << chunk_i;
		if (src)
			src += chunk;
		off += chunk;
		len -= chunk;
		chunk_i++;
	}
	return ret;
}

/*
 * Common entry of writes and discards: validate the range, refuse read-only images, and enter
 * the image's I/O count. 0 (entered: the caller must io_exit), 1 (empty range, nothing to do,
 * not entered) or -errno.
 */
static int modify_enter(struct pcache_image *img, uint64_t off, uint64_t len)
{
	int ret = check_range(img, off, len);

	if (ret)
		return ret;
	if (img->read_only)
		return -EROFS;
	if (len == 0)
		return 1;
	return io_enter(img);
}

/*
 * Writethrough and writearound: write (buf) or zero (buf NULL) the backing image, and flush it
 * for FUA, holding through_lock shared (after the range's THROUGH keys are staged). 0/-errno.
 */
static int through_io(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
		      unsigned int flags)
{
	int ret;

	pthread_rwlock_rdlock(&img->through_lock);
	ret = pcache_backing_rw_sync(img->b, buf ? PCACHE_BIO_WRITE : PCACHE_BIO_ZERO, (void *)buf,
				     len, off);
	if (!ret && (flags & PCACHE_IO_FUA))
		ret = pcache_backing_flush_sync(img->b);
	/* under the lock: a writeback holding it sees every write whose I/O is over */
	atomic_fetch_add(&img->through_done, 1);
	pthread_rwlock_unlock(&img->through_lock);
	if (ret)
		atomic_fetch_add(&img->backing_errors, 1);
	return ret;
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
	mode = atomic_load(&img->cache_mode);
	if (mode == PCACHE_MODE_WRITEAROUND) {
		uint32_t staged;

		ret = writearound_fix(img, buf, off, len, flags, 0, &staged);
		if (!ret)
			ret = through_io(img, buf, off, len, flags);
		if (!ret)
			ret = writearound_fix(img, buf, off, len, flags, staged, NULL);
	} else if (mode == PCACHE_MODE_WRITETHROUGH) {
		/*
		 * The cached copy is staged first, as a dirty THROUGH key: the writeback passes
		 * over older dirty keys of these bytes (they never land after this data), and
		 * writes this one again later in log order, which also settles two overlapping
		 * writes in flight together whose backing writes ended in the other order.
		 */
		ret = cache_write(img, buf, off, len, flags, PCACHE_IKEY_THROUGH);
		if (!ret)
			ret = through_io(img, buf, off, len, flags);
	} else {
		ret = cache_write(img, buf, off, len, flags, 0);
	}
	io_exit(img);
	return ret;
}

/* ---- discard / zero ----------------------------------------------------------------------- */

int pcache_image_discard(struct pcache_image *img, uint64_t off, uint64_t len, bool zero)
{
	struct pcache_cache *c = img->c;
	uint64_t off0 = off, len0 = len;
	uint32_t mode;
	int ret;

	(void)zero; /* both become a ZERO key: the range reads back as zeros */
	ret = modify_enter(img, off, len);
	if (ret)
		return ret < 0 ? ret : 0;
	atomic_fetch_add_explicit(&img->discards, 1, memory_order_relaxed);
	mode = atomic_load(&img->cache_mode);
	if (mode == PCACHE_MODE_WRITEAROUND) {
		/* the backing range reads as zeros at once; cached copies get ZERO keys */
		uint32_t staged;

		ret = writearound_fix(img, NULL, off, len, 0, 0, &staged);
		if (!ret)
			ret = through_io(img, NULL, off, len, 0);
		if (!ret)
			ret = writearound_fix(img, NULL, off, len, 0, staged, NULL);
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
		ret = index_add(img, region, &k, true, NULL);
		if (ret)
			break;
		off += chunk;
		len -= chunk;
	}
	if (!ret && mode == PCACHE_MODE_WRITETHROUGH)
		ret = through_io(img, NULL, off0, len0, 0);
out:
	io_exit(img);
	return ret;
}

/* ---- flush -------------------------------------------------------------------------------- */

int pcache_cache_flush(struct pcache_cache *c)
{
	int ret;

	pthread_mutex_lock(&c->flush_lock);
	atomic_store(&c->log.epoch_unsure, true);
	ret = pcache_stages_close_all(c, true, false, false);
	/* ksets closed above carry the old epoch; later ones the new (writeback barriers) */
	pcache_log_epoch_bump(c);
	if (ret)
		atomic_store(&c->log.epoch_broken, true); /* keys left staged get the new epoch */
	atomic_store(&c->log.epoch_unsure, false);
	pthread_mutex_unlock(&c->flush_lock);
	return ret;
}

int pcache_image_flush(struct pcache_image *img)
{
	int ret = io_enter(img);

	if (ret)
		return ret;
	atomic_fetch_add_explicit(&img->flushes, 1, memory_order_relaxed);
	ret = pcache_cache_flush(img->c);
	if (!ret && atomic_load(&img->cache_mode) != PCACHE_MODE_WRITEBACK)
		ret = pcache_backing_flush_sync(img->b);
	io_exit(img);
	return ret;
}

/* ---- read --------------------------------------------------------------------------------- */

struct miss_piece {
	struct miss_req *m;
	uint64_t off;        /* image offset */
	uint32_t len;
	uint32_t id;         /* placeholder id, 0 = none (no fill) */
	uint32_t wait_id;    /* another reader's miss over this range (share it), 0 = none */
	size_t buf_off;      /* offset in the caller's buffer */
};

struct miss_req {
	struct pcache_upper_req up;
	_Atomic int refs;     /* upper-request references (backing + submitter) */
	_Atomic int pending;  /* pieces not ended + 1 for the submitter */
	_Atomic int status;
	struct pcache_image *img;
	pcache_io_done_fn done;
	void *priv;
	uint32_t n;
	struct miss_piece p[];
};

struct piece_vec {
	struct miss_piece *v;
	uint32_t n, cap;
};

static int vec_push(struct piece_vec *pv, uint64_t off, uint32_t len, uint32_t id, size_t buf_off)
{
	if (pv->n == pv->cap) {
		uint32_t cap = pv->cap ? pv->cap * 2 : 8;
		struct miss_piece *v = realloc(pv->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		pv->v = v;
		pv->cap = cap;
	}
	pv->v[pv->n++] = (struct miss_piece){ .off = off, .len = len, .id = id, .buf_off = buf_off };
	return 0;
}

/* ---- shared misses ------------------------------------------------------------------------ */

/*
 * Every placeholder has a registry entry (by miss id) from its insertion until its owner's
 * backing read ended. A reader that finds someone else's placeholder over part of its range
 * registers as a waiter instead of reading the backing image itself; the owner copies the
 * data to the waiters (before its own done() runs) and completes their pieces. A waiter whose
 * entry is gone (the owner finished) reads the backing image itself.
 */
struct miss_waiter {
	struct miss_waiter *next;
	struct miss_piece *p;  /* its miss_req holds an upper reference for the registry */
};

struct pcache_miss_ent {
	struct pcache_miss_ent *next;
	uint32_t id;
	struct miss_waiter *waiters;
};

static int missreg_add(struct pcache_cache *c, uint32_t id)
{
	struct pcache_miss_ent *e = malloc(sizeof(*e)), **b = &c->missreg[id % PCACHE_MISSREG_BUCKETS];

	if (!e)
		return -ENOMEM;
	e->id = id;
	e->waiters = NULL;
	pthread_mutex_lock(&c->missreg_lock);
	e->next = *b;
	*b = e;
	pthread_mutex_unlock(&c->missreg_lock);
	return 0;
}

/* Queue w behind miss id; false when that miss already ended (w is not queued). */
static bool missreg_wait(struct pcache_cache *c, uint32_t id, struct miss_waiter *w)
{
	struct pcache_miss_ent *e;
	bool found = false;

	pthread_mutex_lock(&c->missreg_lock);
	for (e = c->missreg[id % PCACHE_MISSREG_BUCKETS]; e; e = e->next) {
		if (e->id == id) {
			w->next = e->waiters;
			e->waiters = w;
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&c->missreg_lock);
	return found;
}

/* The owner of miss id ended: remove the entry, return its waiters. */
static struct miss_waiter *missreg_take(struct pcache_cache *c, uint32_t id)
{
	struct pcache_miss_ent **pp, *e;
	struct miss_waiter *w = NULL;

	pthread_mutex_lock(&c->missreg_lock);
	for (pp = &c->missreg[id % PCACHE_MISSREG_BUCKETS]; (e = *pp); pp = &e->next) {
		if (e->id == id) {
			*pp = e->next;
			w = e->waiters;
			free(e);
			break;
		}
	}
	pthread_mutex_unlock(&c->missreg_lock);
	return w;
}

static void upper_get(struct pcache_upper_req *u)
{
	struct miss_req *m = pcache_container_of(u, struct miss_req, up);

	atomic_fetch_add(&m->refs, 1);
}

static void upper_put(struct pcache_upper_req *u)
{
	struct miss_req *m = pcache_container_of(u, struct miss_req, up);

	if (atomic_fetch_sub(&m->refs, 1) == 1)
		free(m);
}

/*
 * Remove the placeholder id at image offset off (if still there). From the completion thread
 * (may_block false) a busy subtree is left alone: a writer holding it may be waiting for log
 * space that only this thread's completions can free. A leftover placeholder is harmless: reads
 * of its range go to the backing image until a write replaces it.
 */
static void drop_placeholder(struct pcache_image *img, uint64_t off, uint32_t id, bool may_block)
{
	struct pcache_subtree *sub = &img->ix.sub[off >> PCACHE_REGION_SHIFT];
	uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), i;

	if (!may_block) {
		if (!pcache_subtree_trylock_bounded(sub))
			return;
	} else {
		pthread_mutex_lock(&sub->lock);
	}
	i = pcache_subtree_find(sub, roff);
	if (i < sub->n && sub->v[i].off == roff && (sub->v[i].flags & PCACHE_IKEY_EMPTY) &&
	    sub->v[i].seg == id)
		pcache_subtree_remove(sub, i);
	pthread_mutex_unlock(&sub->lock);
}

/* Completion thread: cache the data of a finished miss in place of its placeholder. */
static void miss_fill(struct miss_req *m, const struct miss_piece *p)
{
	struct pcache_image *img = m->img;
	struct pcache_cache *c = img->c;
	uint64_t region = p->off >> PCACHE_REGION_SHIFT;
	struct pcache_subtree *sub = &img->ix.sub[region];
	uint32_t roff = (uint32_t)(p->off & (PCACHE_REGION_SIZE - 1)), i, flen;
	uint32_t si = pcache_stage_of(img->id, region);
	struct pcache_stage *st = &c->stage[si];
	const uint8_t *src = (const uint8_t *)m->up.buf + p->buf_off;
	struct pcache_key_om om;
	struct pcache_alloc a;
	struct pcache_ikey k;
	bool keyed = false;

	if (pcache_data_alloc(c, p->len, false, &a) != 0) {
		atomic_fetch_add(&c->fill_skips, 1);
		drop_placeholder(img, p->off, p->id, false);
		return;
	}
	if (pcache_media_store(c->pm, pcache_seg_ptr(c, a.seg, a.seg_off), src, a.len,
			       PCACHE_PM_NONTEMPORAL | PCACHE_PM_NODRAIN) != 0) {
		/* the read is served from the backing data already read: only the fill is lost */
		media_error(img, a.seg, a.seg_off);
		atomic_fetch_add(&c->fill_skips, 1);
		pcache_seg_put(c, a.seg);
		drop_placeholder(img, p->off, p->id, false);
		return;
	}
	/* the filled data is durable before its key is indexed and staged */
	c->pm->ops->drain(c->pm->ctx);

	/* never block the completion thread on a subtree (see drop_placeholder()) */
	if (!pcache_subtree_trylock_bounded(sub)) {
		atomic_fetch_add(&c->fill_skips, 1);
		pcache_seg_put(c, a.seg);
		return;
	}
	i = pcache_subtree_find(sub, roff);
	if (!(i < sub->n && sub->v[i].off == roff && (sub->v[i].flags & PCACHE_IKEY_EMPTY) &&
	      sub->v[i].seg == p->id))
		goto out_unlock; /* a write replaced the whole placeholder */
	flen = PCACHE_MIN(sub->v[i].len, a.len);
	if (pthread_mutex_trylock(&st->lock) != 0) {
		pcache_subtree_remove(sub, i);
		goto out_skip;
	}
	if (pcache_subtree_reserve(sub, 2) != 0 || pcache_stage_room(c, st, false) != 0) {
		pthread_mutex_unlock(&st->lock);
		pcache_subtree_remove(sub, i);
		goto out_skip;
	}
	memset(&k, 0, sizeof(k));
	k.off = roff;
	k.len = flen;
	k.seg = a.seg;
	k.seg_off = a.seg_off;
	k.seg_gen = a.gen;
	k.flags = PCACHE_KEY_CLEAN;
	if (c->data_crc) {
		k.data_crc = pcache_crc32c(PCACHE_CRC_SEED, src, flen);
		k.crc_len = flen;
	}
	/* a non-EMPTY key over the placeholder's front removes the whole placeholder (fixup) */
	(void)pcache_subtree_insert(sub, &k);
	pcache_key_encode(&om, img->id, p->off, &k);
	pcache_stage_add(c, st, &om);
	pthread_mutex_unlock(&st->lock);
	keyed = true;
	goto out_unlock;
out_skip:
	atomic_fetch_add(&c->fill_skips, 1);
out_unlock:
	pthread_mutex_unlock(&sub->lock);
	if (!keyed)
		pcache_seg_put(c, a.seg);
}

static void miss_finish(struct miss_req *m)
{
	struct pcache_image *img = m->img;
	int status = atomic_load(&m->status);

	m->done(m->priv, status);
	io_exit(img);
}

/* A piece of m ended without a backing request of its own (a shared miss): status. */
static void piece_done(struct miss_piece *p, int status)
{
	struct miss_req *m = p->m;

	if (status) {
		int expect = 0;

		atomic_compare_exchange_strong(&m->status, &expect, status);
	}
	if (atomic_fetch_sub(&m->pending, 1) == 1)
		miss_finish(m);
}

/* The owner's data (at src, image offset off, len bytes) goes to every waiter of its miss. */
static void waiters_serve(struct miss_waiter *w, const uint8_t *src, uint64_t off, uint32_t len,
			  int status)
{
	while (w) {
		struct miss_waiter *next = w->next;
		struct miss_piece *wp = w->p;
		struct miss_req *wm = wp->m;
		int st = status;

		if (!st && wp->off >= off && wp->off + wp->len <= off + len)
			memcpy((uint8_t *)wm->up.buf + wp->buf_off, src + (wp->off - off), wp->len);
		else if (!st)
			st = -EIO; /* cannot happen: a placeholder is only ever cut at its back */
		piece_done(wp, st);
		upper_put(&wm->up); /* the registry's reference */
		free(w);
		w = next;
	}
}

static void piece_end(void *priv, int status)
{
	struct miss_piece *p = priv;
	struct miss_req *m = p->m;

	if (status) {
		atomic_fetch_add(&m->img->backing_errors, 1);
		if (p->id)
			drop_placeholder(m->img, p->off, p->id, false);
	} else if (p->id) {
		miss_fill(m, p);
	}
	/* waiters get the data before this request's done() may release the buffer */
	if (p->id)
		waiters_serve(missreg_take(m->img->c, p->id), (const uint8_t *)m->up.buf + p->buf_off,
			      p->off, p->len, status);
	piece_done(p, status);
}

struct hit {
	size_t buf_off;
	uint32_t len;
	struct pcache_ikey k;  /* seg_off already advanced to the hit's start */
	uint32_t skip;         /* bytes of k's data before the hit (CRC range) */
};

/*
 * Scan one region piece under its lock: hits are collected in hv (copied by the caller),
 * misses become pieces (with a placeholder in holes).
 */
static int scan_region(struct pcache_image *img, uint64_t off, uint32_t len, size_t buf_off,
		       struct hit *hv, uint32_t *nh, uint32_t hcap, struct piece_vec *pv)
{
	struct pcache_cache *c = img->c;
	uint64_t region = off >> PCACHE_REGION_SHIFT;
	struct pcache_subtree *sub = &img->ix.sub[region];
	uint32_t pos = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), end = pos + len, i;
	uint64_t base = region << PCACHE_REGION_SHIFT;
	int ret = 0;

	*nh = 0;
	pthread_mutex_lock(&sub->lock);
	i = pcache_subtree_find(sub, pos);
	while (pos < end && !ret) {
		const struct pcache_ikey *k = i < sub->n ? &sub->v[i] : NULL;
		uint32_t gap_end, part_end;

		if (!k || k->off >= end || k->off > pos) {
			struct pcache_ikey ph;
			uint32_t id;

			gap_end = (!k || k->off >= end) ? end : k->off;
			memset(&ph, 0, sizeof(ph));
			ph.off = pos;
			ph.len = gap_end - pos;
			ph.flags = PCACHE_IKEY_EMPTY;
			do {
				id = atomic_fetch_add(&c->miss_id, 1) + 1;
			} while (id == 0);
			ph.seg = id;
			if (pcache_subtree_reserve(sub, 1) == 0 && missreg_add(c, id) == 0) {
				(void)pcache_subtree_insert(sub, &ph);
				i++;
			} else {
				id = 0;
			}
			ret = vec_push(pv, base + pos, gap_end - pos, id, buf_off + (pos - (uint32_t)(off - base)));
			if (ret && id) {
				/* nobody saw it yet (the subtree lock is held): no waiters */
				pcache_subtree_remove(sub, --i);
				(void)missreg_take(c, id);
			}
			pos = gap_end;
			continue;
		}
		if (key_stale(c, k)) {
			/* lazy drop: the segment was freed and maybe reused (always a clean key) */
			pcache_subtree_remove(sub, i);
			continue;
		}
		part_end = PCACHE_MIN(end, k->off + k->len);
		if (k->flags & PCACHE_IKEY_EMPTY) {
			/* someone else's miss is in flight: share it (or read the backing too) */
			ret = vec_push(pv, base + pos, part_end - pos, 0, buf_off + (pos - (uint32_t)(off - base)));
			if (!ret)
				pv->v[pv->n - 1].wait_id = k->seg;
		} else if (*nh < hcap) {
			struct hit *h = &hv[(*nh)++];

			h->buf_off = buf_off + (pos - (uint32_t)(off - base));
			h->len = part_end - pos;
			h->k = *k;
			h->skip = pos - k->off;
			h->k.seg_off += h->skip;
		} else {
			/* too many hits for one pass: stop here, the caller scans the rest again */
			break;
		}
		pos = part_end;
		i++;
	}
	pthread_mutex_unlock(&sub->lock);
	return ret ? ret : (int)(pos - (uint32_t)(off - base));
}

/* Copy hits out of pmem; stale ones become misses without placeholder. */
static int copy_hits(struct pcache_image *img, uint8_t *buf, struct hit *hv, uint32_t nh,
		     struct piece_vec *pv, uint64_t *hit_bytes)
{
	struct pcache_cache *c = img->c;
	uint32_t j;
	int ret = 0;

	for (j = 0; j < nh; j++) {
		struct hit *h = &hv[j];
		bool crc_bad = false;

		if (h->k.flags & PCACHE_KEY_ZERO) {
			memset(buf + h->buf_off, 0, h->len);
			*hit_bytes += h->len;
			continue;
		}
		if (pcache_media_copy(buf + h->buf_off, pcache_seg_ptr(c, h->k.seg, h->k.seg_off),
				      h->len) != 0) {
			media_error(img, h->k.seg, h->k.seg_off);
			ret = -EIO;
			continue;
		}
		if (h->k.crc_len) {
			uint32_t start = h->k.seg_off - h->skip - h->k.crc_front, crc;

			if (pcache_media_crc(pcache_seg_ptr(c, h->k.seg, start), h->k.crc_len,
					     &crc) != 0) {
				media_error(img, h->k.seg, start);
				ret = -EIO;
				continue;
			}
			crc_bad = crc != h->k.data_crc;
		}
		/*
		 * Reader half of a seqlock-style check: the copy's and the CRC's loads from the
		 * segment are ordered before the generation is re-read, so a copy that saw any byte
		 * of a later use of the segment also sees its new generation and is dropped. Pairs
		 * with the release fence in pcache_seg_alloc() (segment.c), which orders the bump
		 * before any store of the next use. NOTE: the acquire load in
		 * pcache_cache_dev_seg_gen() is not enough on its own: it orders the loads after it,
		 * not the copy before it. Free on x86-64 (loads are not reordered with loads), a
		 * dmb ishld on arm64, where a compiler barrier would let the copy read late.
		 */
		pcache_fence_acquire();
		if (pcache_cache_dev_seg_gen(c->cd, h->k.seg) != h->k.seg_gen) {
			/* freed (and maybe reused) during the copy: read the backing instead */
			if (vec_push(pv, 0, h->len, 0, h->buf_off) != 0)
				return -ENOMEM;
			pv->v[pv->n - 1].off = UINT64_MAX; /* filled in by the caller */
			continue;
		}
		if (crc_bad) {
			atomic_fetch_add(&img->crc_errors, 1);
			pcache_log(PCACHE_LOG_ERR, "image %s: data CRC mismatch in segment %u at %u",
				   img->name, h->k.seg, h->k.seg_off);
			ret = -EIO;
			continue;
		}
		*hit_bytes += h->len;
	}
	return ret;
}

#define HITS_PER_PASS 64u

int pcache_image_read(struct pcache_image *img, void *buf, uint64_t off, size_t len,
		      pcache_io_done_fn done, void *priv)
{
	struct hit hv[HITS_PER_PASS];
	struct piece_vec pv = { 0 };
	uint64_t pos = off, hit_bytes = 0, miss_bytes = 0;
	struct miss_req *m;
	int ret, status = 0;
	uint32_t j, nh;

	ret = check_range(img, off, len);
	if (ret)
		return ret;
	if (len == 0)
		return 0;
	ret = io_enter(img);
	if (ret)
		return ret;
	atomic_fetch_add_explicit(&img->reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->read_bytes, len, memory_order_relaxed);

	while (pos < off + len) {
		uint64_t rend = ((pos >> PCACHE_REGION_SHIFT) + 1) << PCACHE_REGION_SHIFT;
		uint32_t plen = (uint32_t)(PCACHE_MIN(off + len, rend) - pos);
		uint32_t first;
		int done_bytes;

		done_bytes = scan_region(img, pos, plen, (size_t)(pos - off), hv, &nh, HITS_PER_PASS, &pv);
		if (done_bytes < 0) {
			status = done_bytes;
			break;
		}
		first = pv.n;
		ret = copy_hits(img, buf, hv, nh, &pv, &hit_bytes);
		for (j = first; j < pv.n; j++)
			if (pv.v[j].off == UINT64_MAX)
				pv.v[j].off = off + pv.v[j].buf_off;
		if (ret && !status)
			status = ret;
		pos += (uint32_t)done_bytes;
	}
	atomic_fetch_add_explicit(&img->read_hit_bytes, hit_bytes, memory_order_relaxed);

	if (pv.n == 0) {
		free(pv.v);
		io_exit(img);
		return status;
	}
	m = malloc(sizeof(*m) + pv.n * sizeof(m->p[0]));
	if (!m) {
		for (j = 0; j < pv.n; j++) {
			if (pv.v[j].id) {
				drop_placeholder(img, pv.v[j].off, pv.v[j].id, true);
				waiters_serve(missreg_take(img->c, pv.v[j].id), NULL, 0, 0, -ENOMEM);
			}
		}
		free(pv.v);
		io_exit(img);
		return -ENOMEM;
	}
	m->up.buf = buf;
	m->up.len = len;
	m->up.get = upper_get;
	m->up.put = upper_put;
	atomic_init(&m->refs, 1);
	atomic_init(&m->pending, (int)pv.n + 1);
	atomic_init(&m->status, status);
	m->img = img;
	m->done = done;
	m->priv = priv;
	m->n = pv.n;
	memcpy(m->p, pv.v, pv.n * sizeof(pv.v[0]));
	free(pv.v);
	for (j = 0; j < m->n; j++) {
		struct miss_piece *p = &m->p[j];
		struct pcache_backing_io io = {
			.op = PCACHE_BIO_READ,
			.off = p->off,
			.len = p->len,
			.upper = &m->up,
			.upper_off = p->buf_off,
			.end = piece_end,
			.priv = p,
		};

		p->m = m;
		miss_bytes += p->len;
		if (p->wait_id && done) {
			struct miss_waiter *w = malloc(sizeof(*w));

			if (w) {
				w->p = p;
				upper_get(&m->up); /* held by the registry until the owner serves it */
				if (missreg_wait(img->c, p->wait_id, w)) {
					atomic_fetch_add(&img->c->shared_misses, 1);
					continue;
				}
				upper_put(&m->up);
				free(w);
			}
		}
		ret = done ? pcache_backing_submit(img->b, &io) : -EINVAL;
		if (ret) {
			if (!done) {
				/* no callback: read synchronously (tests and tools) */
				ret = pcache_backing_rw_sync(img->b, PCACHE_BIO_READ,
							     (uint8_t *)buf + p->buf_off, p->len, p->off);
			}
			piece_end(p, ret);
		}
	}
	atomic_fetch_add_explicit(&img->read_miss_bytes, miss_bytes, memory_order_relaxed);
	if (atomic_fetch_sub(&m->pending, 1) == 1) {
		/* every piece already ended: complete inline, done() is not called */
		status = atomic_load(&m->status);
		upper_put(&m->up);
		io_exit(img);
		return status;
	}
	upper_put(&m->up);
	return PCACHE_IO_PENDING;
}

/* ---- zero-copy read (pinned hits) --------------------------------------------------------- */

/*
 * ZERO keys point here. Never written: in .bss it maps the kernel's shared zero page, so its
 * size costs no memory. 256 KiB: a 1 MiB zeroed read is four pieces.
 */
#define PIN_ZERO_SIZE (256u << 10)
static uint8_t pin_zeros[PIN_ZERO_SIZE];

/* An extent whose data CRC is checked once its segment is pinned. */
struct pin_crc {
	uint32_t seg, start, len, crc;
};

#define PIN_MAX_CRC 256u   /* extents checked per pin: 4 KiB keys merged into 64 pieces fit */

struct pin_ctx {
	struct pcache_read_pin *pin;
	struct pin_crc crc[PIN_MAX_CRC];
	uint32_t ncrc;
	uint32_t last_seg;   /* the segment pinned last, at last_gen (UINT32_MAX: none) */
	uint64_t last_gen;
};

/* Append [base, base+len) to the iovecs, merged with the last one when contiguous. */
static bool pin_iov_add(struct pcache_read_pin *pin, uint8_t *base, size_t len)
{
	struct iovec *last = pin->niov ? &pin->iov[pin->niov - 1] : NULL;

	if (last && last->iov_base != pin_zeros && (uint8_t *)last->iov_base + last->iov_len == base) {
		last->iov_len += len;
		return true;
	}
	if (pin->niov == PCACHE_PIN_MAX_IOV)
		return false;
	pin->iov[pin->niov++] = (struct iovec){ .iov_base = base, .iov_len = len };
	return true;
}

static bool pin_zero_add(struct pcache_read_pin *pin, size_t len)
{
	while (len) {
		struct iovec *last = pin->niov ? &pin->iov[pin->niov - 1] : NULL;
		size_t n;

		if (last && last->iov_base == pin_zeros && last->iov_len < PIN_ZERO_SIZE) {
			n = PCACHE_MIN(len, PIN_ZERO_SIZE - last->iov_len);
			last->iov_len += n;
		} else {
			n = PCACHE_MIN(len, (size_t)PIN_ZERO_SIZE);
			if (pin->niov == PCACHE_PIN_MAX_IOV)
				return false;
			pin->iov[pin->niov++] = (struct iovec){ .iov_base = pin_zeros, .iov_len = n };
		}
		len -= n;
	}
	return true;
}

/* Add one hit (key k, bytes [pos, part_end) of the region) under the subtree lock. */
static bool pin_hit(struct pcache_cache *c, struct pin_ctx *x, const struct pcache_ikey *k,
		    uint32_t pos, uint32_t part_end)
{
	struct pcache_read_pin *pin = x->pin;
	uint32_t seg_off = k->seg_off + (pos - k->off);

	if (k->flags & PCACHE_KEY_ZERO)
		return pin_zero_add(pin, part_end - pos);
	if (k->seg != x->last_seg || k->seg_gen != x->last_gen) {
		if (pin->nseg == PCACHE_PIN_MAX_IOV)
			return false;
		if (!pcache_seg_read_pin(c, k->seg, k->seg_gen))
			return false; /* freed since: a stale key, the copying read drops it */
		pin->seg[pin->nseg++] = k->seg;
		x->last_seg = k->seg;
		x->last_gen = k->seg_gen;
	}
	if (k->crc_len) {
		struct pin_crc pc = { .seg = k->seg, .start = k->seg_off - k->crc_front,
				      .len = k->crc_len, .crc = k->data_crc };

		/* one extent twice in a row (pieces of a cut key): check it once */
		if (!x->ncrc || memcmp(&x->crc[x->ncrc - 1], &pc, sizeof(pc)) != 0) {
			if (x->ncrc == PIN_MAX_CRC)
				return false;
			x->crc[x->ncrc++] = pc;
		}
	}
	return pin_iov_add(pin, pcache_seg_ptr(c, k->seg, seg_off), part_end - pos);
}

/* Pin the hits of one region piece; false when any byte is not a usable hit. */
static bool pin_region(struct pcache_image *img, struct pin_ctx *x, uint64_t off, uint32_t len)
{
	struct pcache_subtree *sub = &img->ix.sub[off >> PCACHE_REGION_SHIFT];
	uint32_t pos = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), end = pos + len, i;
	bool ok = true;

	pthread_mutex_lock(&sub->lock);
	i = pcache_subtree_find(sub, pos);
	while (pos < end) {
		const struct pcache_ikey *k = i < sub->n ? &sub->v[i] : NULL;
		uint32_t part_end;

		if (!k || k->off > pos || (k->flags & PCACHE_IKEY_EMPTY)) {
			ok = false; /* a hole or a miss in flight */
			break;
		}
		part_end = PCACHE_MIN(end, k->off + k->len);
		if (!pin_hit(img->c, x, k, pos, part_end)) {
			ok = false;
			break;
		}
		pos = part_end;
		i++;
	}
	pthread_mutex_unlock(&sub->lock);
	return ok;
}

static void pin_release(struct pcache_read_pin *pin)
{
	uint32_t i;

	for (i = 0; i < pin->nseg; i++)
		pcache_seg_read_unpin(pin->img->c, pin->seg[i]);
	pin->nseg = 0;
	pin->niov = 0;
	io_exit(pin->img);
	pin->img = NULL;
}

int pcache_image_read_pin(struct pcache_image *img, uint64_t off, size_t len,
			  struct pcache_read_pin *pin)
{
	struct pcache_cache *c = img->c;
	struct pin_ctx x;
	uint64_t pos = off;
	uint32_t j;
	int ret;

	pin->niov = 0;
	pin->nseg = 0;
	pin->img = NULL;
	ret = check_range(img, off, len);
	if (ret || len == 0)
		return ret;
	ret = io_enter(img);
	if (ret)
		return ret;
	pin->img = img;
	x.pin = pin;
	x.ncrc = 0;
	x.last_seg = UINT32_MAX;
	x.last_gen = 0;
	while (pos < off + len) {
		uint64_t rend = ((pos >> PCACHE_REGION_SHIFT) + 1) << PCACHE_REGION_SHIFT;
		uint32_t plen = (uint32_t)(PCACHE_MIN(off + len, rend) - pos);

		if (!pin_region(img, &x, pos, plen)) {
			pin_release(pin);
			return PCACHE_PIN_FALLBACK;
		}
		pos += plen;
	}
	/* the segments are pinned: the bytes checked here are the bytes the caller gets */
	for (j = 0; j < x.ncrc; j++) {
		const struct pin_crc *pc = &x.crc[j];
		uint32_t crc;

		if (pcache_media_crc(pcache_seg_ptr(c, pc->seg, pc->start), pc->len, &crc) != 0) {
			media_error(img, pc->seg, pc->start);
			ret = -EIO;
			continue;
		}
		if (crc == pc->crc)
			continue;
		atomic_fetch_add(&img->crc_errors, 1);
		pcache_log(PCACHE_LOG_ERR, "image %s: data CRC mismatch in segment %u at %u",
			   img->name, pc->seg, pc->start);
		ret = -EIO;
	}
	atomic_fetch_add_explicit(&img->reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->read_bytes, len, memory_order_relaxed);
	if (ret) {
		pin_release(pin);
		return ret;
	}
	atomic_fetch_add_explicit(&img->read_hit_bytes, len, memory_order_relaxed);
	return 0;
}

void pcache_read_unpin(struct pcache_read_pin *pin)
{
	if (pin->img)
		pin_release(pin);
}
