/*
 * cache_wbglue.c -- what the writeback (cache_writeback.c) asks of the engine, through
 * struct pcache_wb_ops: the log head, backings lent per batch, which bytes of a logged key are
 * still live (the same-epoch "superseded" rule, with its logged-replacement condition), the
 * writethrough ordering count, progress and dirty counters; and the engine's writeback_all.
 *
 * Invariant: a key is skipped as superseded only for bytes that a later key of the same
 * epoch replaces and that key is in the log already (wb_live_logged()), so dirty_tail never
 * passes a key whose bytes the backing did not get while its replacement could still be lost.
 */
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

/* ---- writeback glue ----------------------------------------------------------------------- */

void pcache_wb_notify_kick(struct pcache_cache *c)
{
	if (c->wb)
		pcache_wb_kick(c->wb);
}

void pcache_wb_notify_data(struct pcache_cache *c)
{
	if (c->wb)
		pcache_wb_kick_data(c->wb);
}

static void wbo_key_head(void *ctx, struct pcache_pos *head)
{
	pcache_log_head(ctx, head);
}

struct pcache_image *pcache_image_get_by_id(struct pcache_cache *c, uint32_t id)
{
	struct pcache_image *img = NULL;
	uint32_t i;

	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		if (c->imgs[i] && c->imgs[i]->id == id) {
			img = c->imgs[i];
			atomic_fetch_add(&img->refs, 1);
			break;
		}
	}
	pthread_mutex_unlock(&c->img_lock);
	return img;
}

static struct pcache_backing *wbo_backing_get(void *ctx, uint32_t image_id)
{
	struct pcache_image *img = pcache_image_get_by_id(ctx, image_id);

	if (!img)
		return NULL;
	atomic_fetch_add(&img->wb_refs, 1);
	if (atomic_load(&img->detaching)) {
		atomic_fetch_sub(&img->wb_refs, 1);
		pcache_image_put(img);
		return NULL;
	}
	return img->b;
}

/* The image whose backing b wbo_backing_get() lent (its reference keeps it), or NULL. */
static struct pcache_image *wbo_lent_image(struct pcache_cache *c, uint32_t image_id,
					   struct pcache_backing *b)
{
	struct pcache_image *img = NULL;
	uint32_t i;

	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i] && c->imgs[i]->id == image_id && c->imgs[i]->b == b)
			img = c->imgs[i];
	/* detaching: it left the list but is still waiting for this reference */
	for (i = 0; i < PCACHE_MAX_IMAGES && !img; i++)
		if (c->live[i] && c->live[i]->id == image_id && c->live[i]->b == b)
			img = c->live[i];
	pthread_mutex_unlock(&c->img_lock);
	return img;
}

static void wbo_backing_put(void *ctx, uint32_t image_id, struct pcache_backing *b)
{
	struct pcache_image *img = wbo_lent_image(ctx, image_id, b);

	if (!img)
		return;
	atomic_fetch_sub(&img->wb_refs, 1);
	pcache_image_put(img);
}

static void wbo_image_passed(void *ctx, uint32_t image_id, struct pcache_backing *b,
			     uint64_t keys, uint64_t bytes)
{
	struct pcache_image *img = wbo_lent_image(ctx, image_id, b);

	if (!img)
		return;
	atomic_fetch_sub(&img->dirty_keys, (int64_t)keys);
	atomic_fetch_sub(&img->dirty_bytes, (int64_t)bytes);
}

static uint64_t wbo_through_count(void *ctx, uint32_t image_id, struct pcache_backing *b)
{
	struct pcache_image *img = wbo_lent_image(ctx, image_id, b);

	return img ? atomic_load(&img->through_done) : 0;
}

/* Held only while the writeback issues and waits for the image's requests: see
 * struct pcache_through_gate (cache_i.h). */
static void wbo_through_hold(void *ctx, uint32_t image_id, struct pcache_backing *b, bool hold)
{
	struct pcache_image *img = wbo_lent_image(ctx, image_id, b);

	if (!img)
		return;
	pcache_through_hold(img, hold);
}

static void wbo_tail_moved(void *ctx, const struct pcache_pos *dirty_tail)
{
	(void)dirty_tail;
	pcache_gc_kick(ctx);
}

/*
 * Percent of the cache's data capacity holding data not written back yet: the bytes of dirty
 * data keys logged minus those the writeback put behind dirty_tail. (An earlier estimate
 * scaled the data segments in use by the dirty share of the log's ksets; a kset covers 512 KiB
 * of 4 KiB writes but 128 MiB of 1 MiB reads, so after a warm-up read the estimate was near
 * the data in use and a few random writes looked like dirty_low.)
 */
uint32_t pcache_cache_dirty_percent(void *ctx)
{
	struct pcache_cache *c = ctx;
	uint64_t in = atomic_load(&c->dirty_in), out = atomic_load(&c->dirty_out);
	uint64_t cap = (uint64_t)c->seg_count * c->seg_size, dirty = in > out ? in - out : 0;

	if (!cap)
		return 0;
	return (uint32_t)PCACHE_MIN(dirty * 100u / cap, 100u);
}

static void wbo_dirty_passed(void *ctx, uint64_t bytes)
{
	struct pcache_cache *c = ctx;

	atomic_fetch_add(&c->dirty_out, bytes);
}

static bool wbo_space_wanted(void *ctx)
{
	struct pcache_cache *c = ctx;
	bool v;

	pthread_mutex_lock(&c->segs.lock);
	v = c->segs.waiters > 0;
	pthread_mutex_unlock(&c->segs.lock);
	return v;
}

/* No user I/O for PCACHE_IDLE_MS: the writeback may run continuously below dirty_low. */
bool pcache_cache_idle(struct pcache_cache *c)
{
	return pcache_coarse_ms() - atomic_load_explicit(&c->last_io_ms, memory_order_relaxed) >=
	       PCACHE_IDLE_MS;
}

/* Append [a, b) to ranges, merged with the last one when adjacent; false once past max. */
static bool wb_live_add(uint64_t *ranges, int *n, int max, uint64_t a, uint64_t b)
{
	if (*n > 0 && ranges[2 * *n - 1] == a) {
		ranges[2 * *n - 1] = b;
		return true;
	}
	if (*n >= max) {
		*n = max + 1;
		return false;
	}
	ranges[2 * *n] = a;
	ranges[2 * *n + 1] = b;
	(*n)++;
	return true;
}

/*
 * Are the dirty index keys of image_id over [a, b) of region all in the log? A key that is
 * only staged is lost in a crash; a dirty key skipped for it would then lie behind dirty_tail
 * unwritten, and replay would take it for CLEAN although the backing never got its bytes.
 * Every key of a region is staged in one stage (cache_kset.c), inserted and staged under one
 * hold of the subtree lock (held here), so an index key over [a, b) is only staged when a
 * dirty staged key of the image overlaps [a, b). Such a stage is closed now, without waiting
 * for log space (what the timer does ~1 s after its first key; the kset gets the epoch the
 * staged keys were indexed with, see index_add()). false: not known now (busy stage, no log
 * space): the caller writes the bytes.
 */
static bool wb_live_logged(struct pcache_cache *c, uint32_t image_id, uint64_t region,
			   uint64_t a, uint64_t b)
{
	struct pcache_stage *st = &c->stage[pcache_stage_of(image_id, region)];
	bool staged = false, logged;
	uint32_t i;

	/* never wait: its holder may wait for log space that this writeback frees */
	if (!pcache_mutex_trylock_bounded(&st->lock))
		return false;
	for (i = 0; i < st->n && !staged; i++) {
		const struct pcache_key_om *sk = &st->keys[i];

		staged = sk->image_id == image_id && !(sk->flags & PCACHE_KEY_CLEAN) &&
			 sk->off < b && sk->off + sk->len > a;
	}
	logged = !staged || pcache_stage_close(c, st, false) == 0;
	pthread_mutex_unlock(&st->lock);
	return logged;
}

/*
 * ops.live: the bytes of a dirty log key that are still its own in the index, or that a key
 * of another (later) epoch or of unknown epoch replaced, must be written; bytes that a later
 * key of the same epoch replaced need not be (the later key goes to the backing after this
 * one, and within an epoch any subset of the writes is a valid backing state), nor bytes that
 * a later THROUGH key replaced, whatever its epoch (a writethrough/writearound write put its
 * data on the backing itself: writing this older data would put the backing behind the
 * cache until the later key's own writeback), nor a key's own bytes its writethrough write
 * put on the backing (PCACHE_IKEY_ONBACKING). Index order is log order for overlapping keys,
 * so a replacing key is always later in the log. A ZERO key cannot be told from a later ZERO
 * key in the index, so only data keys replace a ZERO key. A replacing key counts only once
 * it is in the log (wb_live_logged()): dirty_tail may pass the skipped key at the end of this
 * batch, and what replay then takes for CLEAN must be on the backing or replaced in the log.
 */
static int wbo_live(void *ctx, const struct pcache_wb_key *k, uint64_t *ranges, int max)
{
	struct pcache_cache *c = ctx;
	uint64_t region = k->off >> PCACHE_REGION_SHIFT, base = region << PCACHE_REGION_SHIFT;
	uint32_t roff = (uint32_t)(k->off - base), end = roff + k->len, pos = roff, i;
	struct pcache_image *img;
	struct pcache_subtree *sub;
	bool epoch_ok;
	int n = 0, logged = -1; /* wb_live_logged() over the key, asked at the first need */

	/* epoch16 identifies the epoch only while fewer than 2^15 epochs separate the two keys
	 * (the replacing key's epoch lies between k->epoch and now); an epoch with FUA writes
	 * is never skipped in (fua_epoch, remembered for the last PCACHE_FUA_EPOCHS epochs) */
	epoch_ok = atomic_load(&c->log.epoch_now) - k->epoch < PCACHE_FUA_EPOCHS &&
		   !atomic_load(&c->log.epoch_broken) &&
		   atomic_load(&c->log.fua_epoch[k->epoch % PCACHE_FUA_EPOCHS]) != k->epoch;
	img = pcache_image_get_by_id(c, k->image_id);
	if (!img)
		return -1;
	if (region >= img->ix.nsub || (uint64_t)end > PCACHE_REGION_SIZE) {
		pcache_image_put(img);
		return -1;
	}
	sub = &img->ix.sub[region];
	/*
	 * Never wait: a writer may hold it while it waits for log space from this writeback.
	 * Then all of the key is written: the safe answer for epochs, but over a later THROUGH
	 * key it puts the backing behind the cache until that key's own writeback. The bounded
	 * tries make that happen only while a writer waits for log space in this region.
	 */
	if (!pcache_subtree_trylock_bounded(sub)) {
		pcache_image_put(img);
		return -1;
	}
	for (i = pcache_subtree_find(sub, roff); i < sub->n && pos < end; i++) {
		const struct pcache_ikey *e = &sub->v[i];
		uint32_t a = PCACHE_MAX(e->off, roff), b = PCACHE_MIN(e->off + e->len, end);
		bool own, replaced;

		if (a >= end)
			break;
		if (a > pos) { /* a hole: unknown, write */
			if (!wb_live_add(ranges, &n, max, base + pos, base + a))
				break;
		}
		own = !k->flags && pcache_ikey_same_extent(e, k->seg, k->seg_gen, k->seg_off, roff);
		if (own && (e->flags & PCACHE_IKEY_ONBACKING)) {
			pos = b; /* its own writethrough write put these bytes on the backing */
			continue;
		}
		replaced = !own && !(e->flags & (PCACHE_IKEY_EMPTY | PCACHE_KEY_CLEAN)) &&
			   !(k->flags && (e->flags & PCACHE_KEY_ZERO)) &&
			   ((e->flags & PCACHE_IKEY_THROUGH) ||
			    (epoch_ok && (e->flags & PCACHE_IKEY_EPOCH) &&
			     e->epoch16 == (uint16_t)k->epoch));
		if (replaced && logged < 0)
			logged = wb_live_logged(c, img->id, region, k->off, k->off + k->len);
		replaced = replaced && logged;
		if (!replaced && !wb_live_add(ranges, &n, max, base + a, base + b))
			break;
		pos = b;
	}
	if (n <= max && pos < end)
		(void)wb_live_add(ranges, &n, max, base + pos, base + end);
	pthread_mutex_unlock(&sub->lock);
	pcache_image_put(img);
	return n > max ? -1 : n;
}

static bool wbo_idle(void *ctx)
{
	return pcache_cache_idle(ctx);
}

const struct pcache_wb_ops pcache_cache_wb_ops = {
	.idle = wbo_idle,
	.live = wbo_live,
	.space_wanted = wbo_space_wanted,
	.key_head = wbo_key_head,
	.backing_get = wbo_backing_get,
	.backing_put = wbo_backing_put,
	.tail_moved = wbo_tail_moved,
	.dirty_percent = pcache_cache_dirty_percent,
	.dirty_passed = wbo_dirty_passed,
	.through_count = wbo_through_count,
	.through_hold = wbo_through_hold,
	.image_passed = wbo_image_passed,
};

/* ---- writeback ---------------------------------------------------------------------------- */

int pcache_image_writeback_all(struct pcache_image *img)
{
	int ret = pcache_cache_flush(img->c), tries = 0;

	if (ret)
		return ret;
	if (!img->c->wb)
		return -EOPNOTSUPP;
	/*
	 * NOTE: a writeback batch that began before this image attached ends with -ENXIO for it,
	 * and a drain running then reports that; the image is attached now, so drain again.
	 */
	do
		ret = pcache_wb_drain(img->c->wb, img->id);
	while (ret == -ENXIO && !atomic_load(&img->detaching) && ++tries < 5);
	return ret;
}

int pcache_cache_writeback_all(struct pcache_cache *c)
{
	int ret = pcache_cache_flush(c), tries = 0;

	if (ret)
		return ret;
	if (!c->wb)
		return -EOPNOTSUPP;
	/* see pcache_image_writeback_all(): a batch older than an attach may report -ENXIO */
	do
		ret = pcache_wb_drain(c->wb, 0);
	while (ret == -ENXIO && ++tries < 3);
	return ret;
}
