/*
 * cache_read.c -- reads: hits copied out of pmem, misses read from the backing image into the
 * caller's buffer and filled into the cache by the completion thread, concurrent misses on one
 * range sharing one backing read (the registry of misses in flight). Invariants 3-8 of
 * cache_req.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_i.h"
#include "pcache/media.h"

/* ---- sequential cutoff -------------------------------------------------------------------- */

bool pcache_seq_bypass(struct pcache_image *img, bool write, uint64_t off, uint64_t len)
{
	uint64_t cutoff = atomic_load_explicit(&img->seq_cutoff, memory_order_relaxed), bytes;
	uint64_t slack = len * PCACHE_SEQ_SLACK;
	struct pcache_seq *q = write ? &img->wseq : &img->seq;
	uint32_t i, lru = 0;

	if (!cutoff)
		return false;
	/* never wait on the read path: a busy tracker counts the read as random (cached) */
	if (pthread_mutex_trylock(&q->lock))
		return false;
	q->tick++;
	for (i = 0; i < PCACHE_SEQ_STREAMS; i++) {
		if (q->s[i].bytes && off + slack >= q->s[i].next && off <= q->s[i].next + slack)
			break;
		if (q->s[i].used < q->s[lru].used)
			lru = i;
	}
	if (i == PCACHE_SEQ_STREAMS) {
		i = lru;
		q->s[i].bytes = 0;
		q->s[i].next = 0;
	}
	q->s[i].bytes += len;
	q->s[i].next = PCACHE_MAX(q->s[i].next, off + len);
	q->s[i].used = q->tick;
	bytes = q->s[i].bytes;
	pthread_mutex_unlock(&q->lock);
	return bytes > cutoff;
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
		pcache_req_media_error(img, a.seg, a.seg_off);
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
	pcache_req_exit(img);
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
 * misses become pieces (with a placeholder in holes, so that they are filled, unless fill is
 * false).
 */
static int scan_region(struct pcache_image *img, uint64_t off, uint32_t len, size_t buf_off,
		       struct hit *hv, uint32_t *nh, uint32_t hcap, struct piece_vec *pv, bool fill)
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
			if (fill && !pcache_nofill_overlaps(img, base + pos, gap_end - pos) &&
			    pcache_subtree_reserve(sub, 1) == 0 && missreg_add(c, id) == 0) {
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
		if (pcache_key_stale(c, k)) {
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

			pcache_ikey_touch(&sub->v[i]);

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
			pcache_req_media_error(img, h->k.seg, h->k.seg_off);
			ret = -EIO;
			continue;
		}
		if (h->k.crc_len) {
			uint32_t start = h->k.seg_off - h->skip - h->k.crc_front, crc;

			if (pcache_media_crc(pcache_seg_ptr(c, h->k.seg, start), h->k.crc_len,
					     &crc) != 0) {
				pcache_req_media_error(img, h->k.seg, start);
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
	uint64_t pos = off, hit_bytes = 0, miss_bytes = 0, bypass_bytes = 0;
	struct miss_req *m;
	int ret, status = 0;
	uint32_t j, nh;
	bool fill, share_bypass = false;

	ret = pcache_req_check_range(img, off, len);
	if (ret)
		return ret;
	if (len == 0)
		return 0;
	ret = pcache_req_enter(img);
	if (ret)
		return ret;
	atomic_fetch_add_explicit(&img->reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->read_bytes, len, memory_order_relaxed);
	fill = !pcache_seq_bypass(img, false, off, len);
	if (fill && pcache_image_over_share(img)) {
		fill = false;
		share_bypass = true;
	}

	while (pos < off + len) {
		uint64_t rend = ((pos >> PCACHE_REGION_SHIFT) + 1) << PCACHE_REGION_SHIFT;
		uint32_t plen = (uint32_t)(PCACHE_MIN(off + len, rend) - pos);
		uint32_t first;
		int done_bytes;

		done_bytes = scan_region(img, pos, plen, (size_t)(pos - off), hv, &nh, HITS_PER_PASS, &pv,
					 fill);
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
		pcache_req_exit(img);
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
		pcache_req_exit(img);
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
		if (!fill && !p->wait_id)
			bypass_bytes += p->len;
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
	/* read_bypass_bytes: the sequential cutoff's; share_bypass_bytes: max_share's */
	atomic_fetch_add_explicit(share_bypass ? &img->share_bypass_bytes : &img->read_bypass_bytes,
				  bypass_bytes, memory_order_relaxed);
	if (atomic_fetch_sub(&m->pending, 1) == 1) {
		/* every piece already ended: complete inline, done() is not called */
		status = atomic_load(&m->status);
		upper_put(&m->up);
		pcache_req_exit(img);
		return status;
	}
	upper_put(&m->up);
	return PCACHE_IO_PENDING;
}
