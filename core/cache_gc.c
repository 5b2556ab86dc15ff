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
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache_i.h"
#include "cache_writeback.h"
#include "pcache/log.h"

void pcache_gc_kick(struct pcache_cache *c)
{
	pthread_mutex_lock(&c->bg_lock);
	c->gc_kick = true;
	pthread_cond_broadcast(&c->bg_cond);
	pthread_mutex_unlock(&c->bg_lock);
}

static bool gc_needed(struct pcache_cache *c)
{
	struct pcache_cache_info ci;
	uint32_t used, waiters;

	pcache_cache_dev_get_info(c->cd, &ci);
	pthread_mutex_lock(&c->segs.lock);
	used = c->segs.count - c->segs.nfree;
	waiters = c->segs.waiters;
	pthread_mutex_unlock(&c->segs.lock);
	return waiters > 0 || (uint64_t)used * 100 >= (uint64_t)c->seg_count * ci.gc_percent;
}

/*
 * One step at key_tail (caller holds c->gc_lock, which also owns c->log_rd): 1 progress,
 * 0 nothing to do, -errno (a corrupt or unreadable log: latched by the caller).
 */
static int gc_step(struct pcache_cache *c)
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
		uint32_t seg = pcache_le32(&k->seg);

		if (pcache_le16(&k->flags) & PCACHE_KEY_ZERO)
			continue;
		if (seg >= c->seg_count || pcache_le64(&k->seg_gen) != pcache_cache_dev_seg_gen(c->cd, seg))
			continue; /* stale: holds no reference */
		pcache_seg_put(c, seg);
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
	uint32_t waiters;
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
	while (gc_needed(c)) {
		pthread_mutex_lock(&c->gc_lock);
		ret = gc_step(c);
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
