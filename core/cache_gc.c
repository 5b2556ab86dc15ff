/*
 * cache_gc.c -- garbage collection (FIFO eviction from key_tail) and the stale-key cleaner.
 *
 * The GC thread wakes every second, when kicked (a writer waits for space, dirty_tail moved, a
 * knob changed) and runs GC steps while usage >= gc_percent or someone waits for space. A step
 * reads the kset at key_tail: a LAST record moves key_tail to the next key-log segment and frees
 * the old one; a normal kset drops one segment reference per current key (a data segment
 * reaching zero gets its durable generation bump and is freed, segment.c) and then moves
 * key_tail past it. When writers wait, GC also closes the staging ksets (trylock, no wait),
 * releases every data head and kicks the writeback, so that all data becomes collectable.
 *
 * Invariants:
 *  1. key_tail never passes dirty_tail (lsn order): GC never frees unwritten data.
 *  2. The references of a kset's keys are dropped (generation bumps persisted) before key_tail
 *     moves past the kset; a crash in between leaves keys that replay finds stale.
 *  3. The index is never scanned as a whole per free: stale keys are dropped lazily at lookup,
 *     and by an incremental cleaner that visits a bounded number of subtrees per wake-up and
 *     only while segments were freed since its last full sweep (a full scan per freed segment
 *     would cost O(index) under the subtree locks every time).
 *  4. GC never waits for space and never blocks on a subtree or stage lock (trylock).
 *  5. Copy-forward (CLOCK with a count, policy in docs/architecture.md): before a kset's
 *     references are dropped, each of its data keys whose bytes the index still maps to that
 *     extent, with a non-zero hit count (pcache_ikey_refs()), is copied to a data head and
 *     indexed and staged again as a CLEAN key with one count less, unless the copy would have
 *     to wait for anything. It is CLEAN because key_tail is behind dirty_tail: the backing
 *     holds those bytes durably. Its data is durable before its key is staged, and the old
 *     extent stays referenced (so unchanged) until after the copy: a crash at any point leaves
 *     the old key, the new one, or neither in the log, each with the backing's bytes. The index
 *     is checked again under the subtree lock before the insert, so a write that replaced the
 *     bytes meanwhile wins; same region, same staging kset: log order is index order.
 *  6. Copies are paid for: GC copies at most GC_COPY_RATIO bytes per byte it drops, and none
 *     while writers wait for space or free segments run short, so every pass frees space.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache_i.h"
#include "cache_writeback.h"
#include "pcache/log.h"
#include "pcache/media.h"

#define GC_COPY_CHUNK PCACHE_GC_BUF_SIZE /* copy-forward moves keys up to this size */
#define GC_COPY_RATIO 4             /* bytes copied per byte dropped, at most */
#define GC_COPY_PIECES 8u           /* index pieces of one extent looked at */

/* The images GC may copy forward into (referenced before c->gc_lock, by id). */
struct gc_imgs {
	struct pcache_image *v[PCACHE_MAX_IMAGES];
	uint32_t n;
	bool copy;                  /* copy-forward allowed in this run */
};

void pcache_gc_kick(struct pcache_cache *c)
{
	pthread_mutex_lock(&c->bg_lock);
	c->gc_kick = true;
	pthread_cond_broadcast(&c->bg_cond);
	pthread_mutex_unlock(&c->bg_lock);
}

/*
 * The free segments GC keeps with gc_percent auto: the key log's reserve, one segment for the
 * data heads to move on, and what allocations take in GC_RESERVE_MS at the recent rate (a
 * burst raises it at once, it decays over seconds), at most 30 % of the device. Also sets the
 * allocators' kick threshold for either mode. Called at every GC run. GC is kicked as soon as
 * an allocation goes below the reserve; should it fall behind, miss fills are skipped
 * (fill_skips) and writers wait (full_waits), nothing worse: tests/tools/trace_engine's
 * uniform trace (3.1 million 4 KiB reads) skipped 28 fills with 25 ms, and 100 ms cost 1.4
 * points of hit ratio there.
 */
#define GC_RESERVE_MS 25u
#define GC_RATE_SAMPLE_NS (200u * 1000 * 1000)

static void gc_reserve_update(struct pcache_cache *c)
{
	struct pcache_cache_info ci;
	uint64_t now = pcache_now_ns(), allocs;
	uint32_t r, kick;
	double rate;

	pcache_cache_dev_get_info(c->cd, &ci);
	pthread_mutex_lock(&c->segs.lock);
	allocs = c->segs.allocs;
	pthread_mutex_unlock(&c->segs.lock);
	if (!c->rate_t0_ns) {
		c->rate_t0_ns = now;
		c->rate_allocs0 = allocs;
	} else if (now - c->rate_t0_ns >= GC_RATE_SAMPLE_NS) {
		rate = (double)(allocs - c->rate_allocs0) * 1e9 / (double)(now - c->rate_t0_ns);
		c->alloc_rate = rate > c->alloc_rate ? rate : 0.8 * c->alloc_rate + 0.2 * rate;
		c->rate_t0_ns = now;
		c->rate_allocs0 = allocs;
	}
	r = PCACHE_LOG_RESERVE + 1 + (uint32_t)(c->alloc_rate * GC_RESERVE_MS / 1000.0 + 0.999);
	r = PCACHE_MIN(r, PCACHE_MAX(c->seg_count * 30 / 100, PCACHE_LOG_RESERVE + 1));
	atomic_store(&c->gc_reserve, r);
	if (ci.gc_percent == PCACHE_GC_PERCENT_AUTO)
		kick = r;
	else /* used >= count * pct / 100  <=>  free <= count - that */
		kick = c->seg_count - (uint32_t)(((uint64_t)c->seg_count * ci.gc_percent + 99) / 100) + 1;
	atomic_store(&c->segs.kick_below, kick);
}

static bool gc_needed(struct pcache_cache *c)
{
	struct pcache_cache_info ci;
	uint32_t used, nfree, waiters;

	pcache_cache_dev_get_info(c->cd, &ci);
	pthread_mutex_lock(&c->segs.lock);
	used = c->segs.count - c->segs.nfree;
	nfree = c->segs.nfree;
	waiters = c->segs.waiters;
	pthread_mutex_unlock(&c->segs.lock);
	if (waiters > 0)
		return true;
	if (ci.gc_percent == PCACHE_GC_PERCENT_AUTO)
		return nfree < atomic_load(&c->gc_reserve);
	return (uint64_t)used * 100 >= (uint64_t)c->seg_count * ci.gc_percent;
}

/* May GC copy len more bytes forward now (invariant 6)? gc_lock held. */
static bool gc_copy_ok(struct pcache_cache *c, uint32_t len)
{
	bool ok;

	if (c->gc_credit < (int64_t)len || !atomic_load_explicit(&c->copy_forward, memory_order_relaxed))
		return false;
	pthread_mutex_lock(&c->segs.lock);
	ok = !c->segs.waiters && !c->segs.failed && c->segs.nfree > PCACHE_LOG_RESERVE;
	pthread_mutex_unlock(&c->segs.lock);
	return ok;
}

/*
 * Index the copy a (of the extent seg/gen/seg_off at region offset roff) for the bytes at
 * region offset pos: only if the index still maps all of them to that extent. Never waits
 * (invariant 4). true when keyed (a's reference went to the key).
 */
static bool gc_copy_insert(struct pcache_cache *c, struct pcache_image *img, uint64_t region,
			   uint32_t pos, const struct pcache_alloc *a, const uint8_t *data,
			   const struct pcache_key_om *old)
{
	struct pcache_subtree *sub = &img->ix.sub[region];
	struct pcache_stage *st = &c->stage[pcache_stage_of(img->id, region)];
	uint64_t off = pcache_le64(&old->off);
	uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), i, refs;
	const struct pcache_ikey *e;
	struct pcache_key_om om;
	struct pcache_ikey k;
	bool keyed = false;

	if (!pcache_subtree_trylock_bounded(sub))
		return false;
	i = pcache_subtree_find(sub, pos);
	e = i < sub->n ? &sub->v[i] : NULL;
	if (!e || atomic_load(&img->detaching) || e->off > pos || e->off + e->len < pos + a->len ||
	    !pcache_ikey_same_extent(e, pcache_le32(&old->seg), pcache_le64(&old->seg_gen),
				     pcache_le32(&old->seg_off), roff))
		goto out; /* written, discarded or cut meanwhile: the newer state wins */
	/* read before the reserve below, which may move the keys (and e) */
	refs = pcache_ikey_refs(e);
	e = NULL;
	if (pthread_mutex_trylock(&st->lock) != 0)
		goto out;
	if (pcache_subtree_reserve(sub, 2) == 0 && pcache_stage_room(c, st, false) == 0) {
		memset(&k, 0, sizeof(k));
		k.off = pos;
		k.len = a->len;
		k.seg = a->seg;
		k.seg_off = a->seg_off;
		k.seg_gen = a->gen;
		/* no EPOCH mark: the writeback never skips a dirty key because of this one */
		k.flags = (uint16_t)(PCACHE_KEY_CLEAN | ((refs ? refs - 1 : 0) << PCACHE_IKEY_REF_SHIFT));
		if (c->data_crc) {
			k.data_crc = pcache_crc32c(PCACHE_CRC_SEED, data, a->len);
			k.crc_len = a->len;
		}
		(void)pcache_subtree_insert(sub, &k);
		pcache_key_encode(&om, img->id, (region << PCACHE_REGION_SHIFT) + pos, &k);
		pcache_stage_add(c, st, &om);
		keyed = true;
	}
	pthread_mutex_unlock(&st->lock);
out:
	pthread_mutex_unlock(&sub->lock);
	return keyed;
}

/*
 * Copy forward the parts of key k (at key_tail, still referenced) that the index maps to its
 * extent with a non-zero hit count (invariant 5). Returns the bytes copied and keyed.
 */
static uint32_t gc_copy_key(struct pcache_cache *c, struct gc_imgs *g, const struct pcache_key_om *k)
{
	uint32_t id = pcache_le32(&k->image_id), seg = pcache_le32(&k->seg);
	uint32_t seg_off = pcache_le32(&k->seg_off), len = pcache_le32(&k->len);
	uint64_t off = pcache_le64(&k->off), gen = pcache_le64(&k->seg_gen), region;
	struct { uint32_t off, len; } pc[GC_COPY_PIECES];
	uint32_t roff, np = 0, copied = 0, i, j;
	struct pcache_image *img = NULL;
	struct pcache_subtree *sub;

	for (i = 0; i < g->n; i++) {
		if (g->v[i]->id == id) {
			img = g->v[i];
			break;
		}
	}
	region = off >> PCACHE_REGION_SHIFT;
	roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1));
	/* an image over its max_share shrinks: its data is not copied */
	if (!img || atomic_load(&img->detaching) || pcache_image_over_share(img) ||
	    region >= img->ix.nsub || len > GC_COPY_CHUNK ||
	    seg_off + len > c->seg_size || !gc_copy_ok(c, len))
		return 0;
	sub = &img->ix.sub[region];
	if (!pcache_subtree_trylock_bounded(sub))
		return 0;
	for (i = pcache_subtree_find(sub, roff); i < sub->n && sub->v[i].off < roff + len; i++) {
		const struct pcache_ikey *e = &sub->v[i];
		uint32_t lo, hi;

		if (pcache_ikey_refs(e) && pcache_ikey_same_extent(e, seg, gen, seg_off, roff)) {
			if (np == GC_COPY_PIECES)
				break;
			/* only the part inside this key's extent: gc_buf holds [roff, roff + len),
			 * and a damaged log can hold two keys on one extent that overlap */
			lo = PCACHE_MAX(e->off, roff);
			hi = PCACHE_MIN(e->off + e->len, roff + len);
			if (lo >= hi)
				continue;
			pc[np].off = lo;
			pc[np].len = hi - lo;
			np++;
		}
	}
	pthread_mutex_unlock(&sub->lock);
	if (!np)
		return 0;
	/* the extent as written: a copy never spreads bytes that fail their CRC */
	if (pcache_media_copy(c->gc_buf, pcache_seg_ptr(c, seg, seg_off), len) != 0)
		return 0;
	if (c->data_crc && pcache_le32(&k->data_crc) != pcache_crc32c(PCACHE_CRC_SEED, c->gc_buf, len))
		return 0;
	for (j = 0; j < np; j++) {
		uint32_t pos = pc[j].off, end = pc[j].off + pc[j].len;

		while (pos < end) {
			const uint8_t *src = c->gc_buf + (pos - roff);
			struct pcache_alloc a;

			if (!gc_copy_ok(c, end - pos) || pcache_data_alloc(c, end - pos, false, &a) != 0)
				return copied;
			if (pcache_media_store(c->pm, pcache_seg_ptr(c, a.seg, a.seg_off), src, a.len,
					       PCACHE_PM_NONTEMPORAL | PCACHE_PM_NODRAIN) != 0) {
				pcache_seg_put(c, a.seg);
				return copied;
			}
			/* the copy is durable before its key is indexed and staged */
			c->pm->ops->drain(c->pm->ctx);
			if (!gc_copy_insert(c, img, region, pos, &a, src, k)) {
				pcache_seg_put(c, a.seg);
				return copied;
			}
			c->gc_credit -= a.len;
			copied += a.len;
			atomic_fetch_add_explicit(&c->gc_copied_bytes, a.len, memory_order_relaxed);
			atomic_fetch_add_explicit(&c->gc_copied_keys, 1, memory_order_relaxed);
			pos += a.len;
		}
	}
	return copied;
}

/*
 * One step at key_tail (caller holds c->gc_lock, which also owns c->log_rd): 1 progress,
 * 0 nothing to do, -errno (a corrupt or unreadable log: latched by the caller).
 */
static int gc_step(struct pcache_cache *c, struct gc_imgs *g)
{
	struct pcache_pos kt, dt, next;
	const struct pcache_kset_om *ks;
	uint32_t i, n;
	int ret;

	pcache_cache_dev_get_key_tail(c->cd, &kt);
	pcache_cache_dev_get_dirty_tail(c->cd, &dt);
	if (kt.lsn >= dt.lsn)
		return 0; /* never past dirty_tail */
	ret = pcache_log_read(c->log_rd, &kt, &ks);
	if (ret) {
		if (ret == -EIO)
			atomic_fetch_add(&c->media_errors, 1);
		pcache_log(PCACHE_LOG_ERR, "gc: kset at key_tail %u:%u (lsn %" PRIu64 ") is %s; gc stopped",
			   kt.seg, kt.off, kt.lsn, ret == -EIO ? "unreadable (media error)" : "invalid");
		return ret;
	}
	pcache_log_next(ks, &kt, &next);
	if (pcache_le16(&ks->flags) & PCACHE_KSET_LAST) {
		ret = pcache_cache_dev_set_key_tail(c->cd, &next);
		if (ret)
			return ret;
		/* key_tail left the segment durably: it is no longer part of the log */
		pcache_seg_free(c, kt.seg);
		return 1;
	}
	n = pcache_le16(&ks->key_num);
	for (i = 0; i < n; i++) {
		const struct pcache_key_om *k = &ks->keys[i];
		uint32_t seg = pcache_le32(&k->seg), len = pcache_le32(&k->len), copied = 0;

		if (pcache_le16(&k->flags) & PCACHE_KEY_ZERO)
			continue;
		if (seg >= c->seg_count || pcache_le64(&k->seg_gen) != pcache_cache_dev_seg_gen(c->cd, seg))
			continue; /* stale: holds no reference */
		if (g->copy)
			copied = gc_copy_key(c, g, k);
		/* after the copy: the old extent stays unchanged until then (invariant 5) */
		pcache_seg_put(c, seg);
		if (len > copied) {
			atomic_fetch_add_explicit(&c->gc_dropped_bytes, len - copied, memory_order_relaxed);
			c->gc_credit = PCACHE_MIN(c->gc_credit + (int64_t)(len - copied) * GC_COPY_RATIO,
						  (int64_t)c->seg_size * 2 * GC_COPY_RATIO);
		}
	}
	/* the generation bumps above are durable before key_tail moves past their keys */
	ret = pcache_cache_dev_set_key_tail(c->cd, &next);
	return ret ? ret : 1;
}

void pcache_gc_clean(struct pcache_cache *c, uint32_t budget)
{
	struct pcache_image *imgs[PCACHE_MAX_IMAGES];
	uint64_t total = 0, pending = atomic_load(&c->clean_pending);
	uint32_t n = 0, i, s;

	if (!pending)
		return;
	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		if (c->imgs[i]) {
			imgs[n++] = c->imgs[i];
			atomic_fetch_add(&c->imgs[i]->refs, 1);
		}
	}
	pthread_mutex_unlock(&c->img_lock);
	for (i = 0; i < n; i++)
		total += imgs[i]->ix.nsub;
	while (budget-- && total) {
		uint64_t cur = c->clean_cursor % total, acc = 0;

		for (i = 0; i < n; i++) {
			if (cur < acc + imgs[i]->ix.nsub)
				break;
			acc += imgs[i]->ix.nsub;
		}
		s = (uint32_t)(cur - acc);
		if (i < n && !atomic_load(&imgs[i]->detaching)) {
			struct pcache_subtree *sub = &imgs[i]->ix.sub[s];

			if (pthread_mutex_trylock(&sub->lock) == 0) {
				uint32_t j = 0;

				while (j < sub->n) {
					const struct pcache_ikey *k = &sub->v[j];

					if (!(k->flags & (PCACHE_KEY_ZERO | PCACHE_IKEY_EMPTY)) &&
					    pcache_cache_dev_seg_gen(c->cd, k->seg) != k->seg_gen)
						pcache_subtree_remove(sub, j);
					else
						j++;
				}
				pthread_mutex_unlock(&sub->lock);
			}
		}
		c->clean_cursor = (uint32_t)((cur + 1) % total);
		if (c->clean_cursor == 0) {
			/* a full sweep done: what was pending when it started is cleaned */
			atomic_fetch_sub(&c->clean_pending, pending);
			break;
		}
	}
	for (i = 0; i < n; i++)
		pcache_image_put(imgs[i]);
}

/*
 * Writers wait for space and nothing moves: say why once per episode (5 s without progress).
 * Typical cause: dirty data of an image that is not attached blocks dirty_tail; it frees as soon
 * as the image is attached again, so the writers keep waiting (they are not failed).
 */
static void gc_stall_check(struct pcache_cache *c, int freed)
{
	struct pcache_pos dt;
	uint64_t now = pcache_now_ns();

	pcache_cache_dev_get_dirty_tail(c->cd, &dt);
	if (freed || dt.lsn != c->stall_dirty_lsn || !c->stall_since_ns) {
		c->stall_since_ns = now;
		c->stall_dirty_lsn = dt.lsn;
		c->stall_logged = false;
		return;
	}
	if (c->stall_logged || now - c->stall_since_ns < 5ull * 1000 * 1000 * 1000)
		return;
	c->stall_logged = true;
	pcache_log(PCACHE_LOG_WARNING, "cache full and no progress for 5 s: dirty_tail stays at lsn %llu "
		   "(is an image with dirty data detached, or its backing failing?); writers wait",
		   (unsigned long long)dt.lsn);
}

int pcache_gc_run(struct pcache_cache *c)
{
	struct gc_imgs g;
	uint32_t waiters, i;
	int ret, freed = 0;

	pthread_mutex_lock(&c->segs.lock);
	waiters = c->segs.waiters;
	pthread_mutex_unlock(&c->segs.lock);
	if (waiters) {
		/* make everything collectable: staged keys to the log, head pins dropped */
		(void)pcache_stages_close_all(c, false, true, false);
		pcache_heads_release(c, true);
		pcache_wb_notify_kick(c);
	}
	gc_reserve_update(c);
	/* the images copy-forward may index into: referenced before gc_lock (lock order) */
	g.n = 0;
	g.copy = !waiters && c->gc_buf && atomic_load(&c->copy_forward);
	if (g.copy) {
		pthread_mutex_lock(&c->img_lock);
		for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
			if (c->imgs[i]) {
				g.v[g.n++] = c->imgs[i];
				atomic_fetch_add(&c->imgs[i]->refs, 1);
			}
		}
		pthread_mutex_unlock(&c->img_lock);
	}
	while (gc_needed(c)) {
		pthread_mutex_lock(&c->gc_lock);
		ret = gc_step(c, &g);
		pthread_mutex_unlock(&c->gc_lock);
		if (ret <= 0) {
			if (ret < 0) {
				pcache_log(PCACHE_LOG_ERR, "gc: %s; writers waiting for space fail", strerror(-ret));
				pcache_segs_fail(c);
			}
			break;
		}
		freed++;
	}
	if (c->wb) {
		struct pcache_wb_stats ws;

		pcache_wb_get_stats(c->wb, &ws);
		if (ws.latched && waiters) {
			pcache_log(PCACHE_LOG_ERR, "writeback stopped (%s): no space can be freed; "
				   "writers waiting for space fail with EIO", strerror(-ws.latched));
			pcache_segs_fail(c);
		}
	}
	if (waiters)
		gc_stall_check(c, freed);
	else
		c->stall_since_ns = 0;
	pthread_mutex_lock(&c->bg_lock);
	c->gc_runs++;
	pthread_mutex_unlock(&c->bg_lock);
	for (i = 0; i < g.n; i++)
		pcache_image_put(g.v[i]);
	pcache_gc_clean(c, 64);
	return freed;
}

static void *gc_main(void *arg)
{
	struct pcache_cache *c = arg;

	pthread_mutex_lock(&c->bg_lock);
	while (!c->stopping) {
		if (!c->gc_kick)
			(void)pcache_cond_wait_ns(&c->bg_cond, &c->bg_lock,
						  atomic_load(&c->clean_pending) ? 10 * 1000 * 1000 : 1000000000u);
		if (c->stopping)
			break;
		c->gc_kick = false;
		pthread_mutex_unlock(&c->bg_lock);
		(void)pcache_gc_run(c);
		pthread_mutex_lock(&c->bg_lock);
	}
	pthread_mutex_unlock(&c->bg_lock);
	return NULL;
}

int pcache_gc_start(struct pcache_cache *c)
{
	int ret = pthread_create(&c->gc_thread, NULL, gc_main, c);

	if (ret)
		return -ret;
	c->gc_started = true;
	return 0;
}

void pcache_gc_stop(struct pcache_cache *c)
{
	if (!c->gc_started)
		return;
	pthread_mutex_lock(&c->bg_lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->bg_cond);
	pthread_mutex_unlock(&c->bg_lock);
	pthread_join(c->gc_thread, NULL);
	c->gc_started = false;
}
