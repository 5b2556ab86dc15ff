/*
 * cache.c -- the engine's lifecycle: start (open, replay), stop, images (attach/detach with
 * identity checks, per-image replay), knobs, status, and the glue to the writeback.
 *
 * Replay walks the key log from key_tail and accepts a kset only if magic, CRC and lsn continue
 * the log and it lies within its segment; LAST records are followed. The global walk at start
 * rebuilds the segment bitmap and refs and finds key_head; each image's index is rebuilt by a
 * second walk when the image attaches (keys of images not attached stay in the log untouched).
 *
 * Invariants:
 *  1. Everything read from media is bounds-checked; a CRC-valid kset with a bad key refuses the
 *     start with a message naming it, never a crash.
 *  2. A key whose seg_gen is not its segment's current generation is stale: dropped at replay,
 *     takes no segment ref (GC drops refs only for current keys: refs stay consistent). Its
 *     bytes still replace those of older keys in the index: GC frees a segment only behind
 *     dirty_tail, so the backing holds them (or newer ones). A crash inside a GC step leaves the
 *     kset at key_tail with some keys stale; an older key of that kset that is not (a ZERO
 *     key, or data in another segment) must not come back as CLEAN over the backing's bytes.
 *  3. key_tail <= dirty_tail <= key_head (lsn order), checked at start.
 *  4. An image's I/O is quiesced (inflight == 0, no writeback reference) before its backing is
 *     closed or its index freed.
 *
 * Lifecycle of the cache: start -> running -> stop. Threads: timer (closes ksets ~1 s after
 * their first key, releases idle data heads), GC (cache_gc.c), writeback (cache_writeback.c).
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

#define ERR(...) snprintf(err, errlen, __VA_ARGS__)

/* ---- replay (every walk goes through the log reader, core/log.c) ------------------------ */

/*
 * Walk c's log from start to stop_lsn with c->log_rd, for holders of c->gc_lock (image
 * replay, the dirty walk). A media error ends the walk like the end of the log: replay at
 * start has already met (and counted) any in the stretch before key_head, or GC stopped at it.
 */
static int log_walk(struct pcache_cache *c, const struct pcache_pos *start, uint64_t stop_lsn,
		    pcache_log_fn fn, void *arg, struct pcache_pos *end)
{
	return pcache_log_walk(c->log_rd, start, stop_lsn, fn, arg, end, NULL, NULL);
}

struct replay_all {
	struct pcache_cache *c;
	char *err;
	size_t errlen;
	uint64_t keys;
	uint64_t epoch;    /* the last kset's epoch */
	struct pcache_pos dirty_tail;
	bool saw_dirty_tail;
};

static int replay_all_kset(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct replay_all *r = arg;
	struct pcache_cache *c = r->c;
	uint32_t i;
	int ret;

	if (pos->lsn == r->dirty_tail.lsn) {
		if (pos->seg != r->dirty_tail.seg || pos->off != r->dirty_tail.off) {
			snprintf(r->err, r->errlen,
				 "dirty_tail: %u:%u lsn %" PRIu64 " is not the kset at that lsn (%u:%u)",
				 r->dirty_tail.seg, r->dirty_tail.off, r->dirty_tail.lsn, pos->seg, pos->off);
			return -EUCLEAN;
		}
		r->saw_dirty_tail = true;
	}
	if (ks->epoch > r->epoch)
		r->epoch = ks->epoch;
	if (c->segs.kind[pos->seg] == PCACHE_SEG_DATA) {
		snprintf(r->err, r->errlen, "key log: segment %u holds both ksets and live data", pos->seg);
		return -EUCLEAN;
	}
	pcache_seg_mark_used(c, pos->seg, PCACHE_SEG_LOG);
	if (ks->flags & PCACHE_KSET_LAST) {
		if (c->segs.kind[ks->next_seg] == PCACHE_SEG_DATA) {
			snprintf(r->err, r->errlen, "key log: segment %u holds both ksets and live data",
				 ks->next_seg);
			return -EUCLEAN;
		}
		pcache_seg_mark_used(c, ks->next_seg, PCACHE_SEG_LOG);
		return 0;
	}
	for (i = 0; i < ks->key_num; i++) {
		const struct pcache_key_om *k = &ks->keys[i];
		uint64_t gen;

		ret = pcache_log_key_check(k, c->seg_count, c->seg_size, r->err, r->errlen);
		if (ret)
			return ret;
		r->keys++;
		if (k->flags & PCACHE_KEY_ZERO)
			continue;
		gen = pcache_cache_dev_seg_gen(c->cd, k->seg);
		if (k->seg_gen > gen) {
			snprintf(r->err, r->errlen,
				 "key log: key (image %u, off %" PRIu64 ") has generation %" PRIu64
				 " newer than segment %u's %" PRIu64, k->image_id, k->off, k->seg_gen,
				 k->seg, gen);
			return -EUCLEAN;
		}
		if (k->seg_gen < gen)
			continue; /* stale: the segment was freed after this key */
		if (!(k->flags & PCACHE_KEY_CLEAN) && pos->lsn >= r->dirty_tail.lsn)
			atomic_fetch_add(&c->dirty_in, k->len); /* not written back yet */
		if (c->segs.kind[k->seg] == PCACHE_SEG_LOG) {
			snprintf(r->err, r->errlen,
				 "key log: key (image %u, off %" PRIu64 ") points into key-log segment %u",
				 k->image_id, k->off, k->seg);
			return -EUCLEAN;
		}
		pcache_seg_mark_used(c, k->seg, PCACHE_SEG_DATA);
		pcache_seg_get(c, k->seg);
	}
	return 0;
}

static int replay(struct pcache_cache *c, char *err, size_t errlen)
{
	struct replay_all r = { .c = c, .err = err, .errlen = errlen };
	struct pcache_pos kt, end;
	int ret;

	pcache_cache_dev_get_key_tail(c->cd, &kt);
	pcache_cache_dev_get_dirty_tail(c->cd, &r.dirty_tail);
	if (kt.seg >= c->seg_count || kt.off >= c->seg_size ||
	    r.dirty_tail.seg >= c->seg_count || r.dirty_tail.off >= c->seg_size) {
		ERR("tails: key_tail %u:%u or dirty_tail %u:%u outside the segments", kt.seg, kt.off,
		    r.dirty_tail.seg, r.dirty_tail.off);
		return -EUCLEAN;
	}
	if (r.dirty_tail.lsn < kt.lsn) {
		ERR("tails: dirty_tail lsn %" PRIu64 " before key_tail lsn %" PRIu64, r.dirty_tail.lsn,
		    kt.lsn);
		return -EUCLEAN;
	}
	for (;;) {
		int why;

		pcache_seg_mark_used(c, kt.seg, PCACHE_SEG_LOG);
		ret = pcache_log_walk(c->log_rd, &kt, 0, replay_all_kset, &r, &end, &why, NULL);
		if (ret)
			return ret;
		if (why != -EIO)
			break;
		atomic_fetch_add(&c->media_errors, 1);
		if (end.lsn >= r.dirty_tail.lsn) {
			/* like a torn kset: what was logged from here on is lost */
			pcache_log(PCACHE_LOG_ERR, "replay: media error reading the kset at %u:%u (lsn %"
				   PRIu64 "): the key log ends there", end.seg, end.off, end.lsn);
			break;
		}
		/*
		 * Before dirty_tail: every key from key_tail to dirty_tail is on its backing, so
		 * nothing is lost if the log starts at dirty_tail instead. Move key_tail there
		 * (persisted) and replay again from it with the segments counted afresh: the
		 * keys already counted in the unreadable stretch held references.
		 */
		pcache_log(PCACHE_LOG_ERR, "replay: media error reading the kset at %u:%u (lsn %" PRIu64
			   "), before dirty_tail (lsn %" PRIu64 "): the key log now starts at "
			   "dirty_tail; only written-back keys are dropped", end.seg, end.off, end.lsn,
			   r.dirty_tail.lsn);
		ret = pcache_cache_dev_set_key_tail(c->cd, &r.dirty_tail);
		if (ret) {
			ERR("key_tail: cannot move it past an unreadable kset: %s", strerror(-ret));
			return ret;
		}
		kt = r.dirty_tail;
		pcache_segs_exit(c);
		ret = pcache_segs_init(c);
		if (ret) {
			ERR("out of memory");
			return ret;
		}
		atomic_store(&c->dirty_in, 0);
		r.keys = 0;
		r.saw_dirty_tail = false;
	}
	if (r.dirty_tail.lsn > end.lsn ||
	    (r.dirty_tail.lsn == end.lsn &&
	     (r.dirty_tail.seg != end.seg || r.dirty_tail.off != end.off)) ||
	    (r.dirty_tail.lsn < end.lsn && !r.saw_dirty_tail)) {
		ERR("dirty_tail: %u:%u lsn %" PRIu64 " is not inside the log (key_tail lsn %" PRIu64
		    ", key_head %u:%u lsn %" PRIu64 ")", r.dirty_tail.seg, r.dirty_tail.off,
		    r.dirty_tail.lsn, kt.lsn, end.seg, end.off, end.lsn);
		return -EUCLEAN;
	}
	c->log.head = end;
	/* epochs never decrease along the log: continue after the last one (a restart is a barrier) */
	c->log.epoch = r.epoch + 1;
	atomic_store(&c->log.epoch_now, c->log.epoch);
	atomic_store(&c->log.head_lsn, end.lsn);
	c->replay_keys = r.keys;
	return 0;
}

struct replay_img {
	struct pcache_cache *c;
	struct pcache_image *img;
	uint64_t dirty_lsn;
	uint64_t count_lsn;         /* dirty keys from here on are counted (not on the backing) */
	int64_t dirty_keys, dirty_bytes;
	int ret;
};

static int replay_img_kset(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct replay_img *r = arg;
	struct pcache_image *img = r->img;
	uint32_t i;

	if (ks->flags & PCACHE_KSET_LAST)
		return 0;
	for (i = 0; i < ks->key_num; i++) {
		const struct pcache_key_om *k = &ks->keys[i];
		struct pcache_ikey ik;
		struct pcache_subtree *sub;
		uint64_t region;
		int ret;

		if (k->image_id != img->id)
			continue;
		if (k->off >= img->size || k->len > img->size - k->off)
			continue; /* beyond the image (identity is checked at attach) */
		region = k->off >> PCACHE_REGION_SHIFT;
		if (!(k->flags & PCACHE_KEY_ZERO) &&
		    k->seg_gen != pcache_cache_dev_seg_gen(r->c->cd, k->seg)) {
			/* stale (invariant 2): its bytes, or newer ones, are on the backing */
			sub = &img->ix.sub[region];
			pthread_mutex_lock(&sub->lock);
			ret = pcache_subtree_punch(sub, (uint32_t)(k->off & (PCACHE_REGION_SIZE - 1)),
						   k->len);
			pthread_mutex_unlock(&sub->lock);
			if (ret)
				return ret;
			continue;
		}
		memset(&ik, 0, sizeof(ik));
		ik.off = (uint32_t)(k->off & (PCACHE_REGION_SIZE - 1));
		ik.len = k->len;
		ik.flags = k->flags;
		if (pos->lsn < r->dirty_lsn)
			ik.flags |= PCACHE_KEY_CLEAN; /* written back already */
		if (!(ik.flags & PCACHE_KEY_CLEAN) && pos->lsn >= r->count_lsn) {
			r->dirty_keys++;
			r->dirty_bytes += k->len;
		}
		ik.flags |= PCACHE_IKEY_EPOCH; /* the kset says which epoch the key belongs to */
		ik.epoch16 = (uint16_t)ks->epoch;
		if (!(k->flags & PCACHE_KEY_ZERO)) {
			ik.seg = k->seg;
			ik.seg_off = k->seg_off;
			ik.seg_gen = k->seg_gen;
			if (r->c->data_crc) {
				ik.data_crc = k->data_crc;
				ik.crc_len = k->len;
			}
		}
		sub = &img->ix.sub[region];
		pthread_mutex_lock(&sub->lock);
		ret = pcache_subtree_insert(sub, &ik);
		pthread_mutex_unlock(&sub->lock);
		if (ret)
			return ret;
	}
	return 0;
}

/* The writeback's progress for image id: its keys in ksets before this lsn are on the
 * backing (0 when the writeback has not met the image). */
static uint64_t image_wb_lsn(struct pcache_cache *c, uint32_t id)
{
	struct pcache_wb_image_stats ws;

	if (c->wb && pcache_wb_image_stats(c->wb, id, &ws) == 0)
		return ws.wb_lsn;
	return 0;
}

int pcache_replay_image(struct pcache_cache *c, struct pcache_image *img, char *err, size_t errlen)
{
	struct replay_img r = { .c = c, .img = img };
	struct pcache_pos kt, dt, head, end;
	int ret;

	/* the writeback may be further for this image (another image holds dirty_tail back);
	 * it cannot move for it now: the image is not attached, its backing not lent */
	uint64_t wb_lsn = image_wb_lsn(c, img->id);

	/* GC may not move key_tail (and free log segments) under the walk */
	pthread_mutex_lock(&c->gc_lock);
	pcache_cache_dev_get_key_tail(c->cd, &kt);
	pcache_cache_dev_get_dirty_tail(c->cd, &dt);
	pcache_log_head(c, &head);
	r.dirty_lsn = dt.lsn;
	r.count_lsn = PCACHE_MAX(dt.lsn, wb_lsn);
	ret = log_walk(c, &kt, head.lsn, replay_img_kset, &r, &end);
	pthread_mutex_unlock(&c->gc_lock);
	atomic_store(&img->dirty_keys, r.dirty_keys);
	atomic_store(&img->dirty_bytes, r.dirty_bytes);
	if (ret == -ENOMEM)
		ERR("image %s: out of memory rebuilding the index", img->name);
	return ret;
}

/* The dirty keys of image id in the log (after dirty_tail) and the staging ksets. */
struct dirty_scan {
	uint32_t id;
	uint64_t wb_lsn;   /* keys of the image in ksets before it are written back */
	uint64_t keys;
	uint64_t bytes;    /* dirty key bytes (overlaps counted twice: an upper bound) */
};

static int dirty_scan_kset(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct dirty_scan *d = arg;
	uint32_t i;

	if ((ks->flags & PCACHE_KSET_LAST) || pos->lsn < d->wb_lsn)
		return 0;
	for (i = 0; i < ks->key_num; i++) {
		if (ks->keys[i].image_id == d->id && !(ks->keys[i].flags & PCACHE_KEY_CLEAN)) {
			d->keys++;
			d->bytes += ks->keys[i].len;
		}
	}
	return 0;
}

void pcache_image_dirty_walk(struct pcache_cache *c, uint32_t id, uint64_t *keys, uint64_t *bytes)
{
	struct dirty_scan d = { .id = id };
	struct pcache_pos dt, head, end;
	uint32_t i, k;

	d.wb_lsn = image_wb_lsn(c, id);
	pthread_mutex_lock(&c->gc_lock);
	pcache_cache_dev_get_dirty_tail(c->cd, &dt);
	pcache_log_head(c, &head);
	(void)log_walk(c, &dt, head.lsn, dirty_scan_kset, &d, &end);
	pthread_mutex_unlock(&c->gc_lock);
	/* plus the keys still staged (not in the log yet) */
	for (i = 0; i < PCACHE_NSTAGE; i++) {
		struct pcache_stage *st = &c->stage[i];

		pthread_mutex_lock(&st->lock);
		for (k = 0; k < st->n; k++) {
			if (st->keys[k].image_id == id && !(st->keys[k].flags & PCACHE_KEY_CLEAN)) {
				d.keys++;
				d.bytes += st->keys[k].len;
			}
		}
		pthread_mutex_unlock(&st->lock);
	}
	*keys = d.keys;
	*bytes = d.bytes;
}

/* Does the cache hold dirty keys of image id? A log walk (attach and detach decisions). */
static bool image_has_dirty(struct pcache_cache *c, uint32_t id)
{
	uint64_t keys, bytes;

	pcache_image_dirty_walk(c, id, &keys, &bytes);
	return keys > 0;
}

/* ---- writeback glue ----------------------------------------------------------------------- */

void pcache_wb_notify_kick(struct pcache_cache *c)
{
	if (c->wb)
		pcache_wb_kick(c->wb);
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
 * through_lock (cache_i.h). */
static void wbo_through_hold(void *ctx, uint32_t image_id, struct pcache_backing *b, bool hold)
{
	struct pcache_image *img = wbo_lent_image(ctx, image_id, b);

	if (!img)
		return;
	if (hold)
		pthread_rwlock_wrlock(&img->through_lock);
	else
		pthread_rwlock_unlock(&img->through_lock);
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
static uint32_t wbo_dirty_percent(void *ctx)
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
 * cache until the later key's own writeback). Index order is log order for overlapping keys,
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
		own = !(e->flags & (PCACHE_KEY_ZERO | PCACHE_IKEY_EMPTY)) && !k->flags &&
		      e->seg == k->seg && e->seg_gen == k->seg_gen &&
		      e->seg_off - e->off == k->seg_off - roff;
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

static const struct pcache_wb_ops wb_ops = {
	.idle = wbo_idle,
	.live = wbo_live,
	.space_wanted = wbo_space_wanted,
	.key_head = wbo_key_head,
	.backing_get = wbo_backing_get,
	.backing_put = wbo_backing_put,
	.tail_moved = wbo_tail_moved,
	.dirty_percent = wbo_dirty_percent,
	.dirty_passed = wbo_dirty_passed,
	.through_count = wbo_through_count,
	.through_hold = wbo_through_hold,
	.image_passed = wbo_image_passed,
};

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
	ret = replay(c, err, errlen);
	if (ret)
		goto err_segs;
	c->replay_ns = pcache_now_ns() - t0;

	memset(&wo, 0, sizeof(wo));
	wo.no_thread = opts->no_background || opts->defer_background;
	wo.quiet = opts->no_background;
	ret = pcache_wb_start(c->cd, &wb_ops, c, &wo, &c->wb);
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
	return 0;
}

static void image_free(struct pcache_image *img)
{
	pcache_index_exit(&img->ix);
	pthread_rwlock_destroy(&img->through_lock);
	pthread_mutex_destroy(&img->ent_lock);
	free(img);
}

void pcache_image_put(struct pcache_image *img)
{
	if (img && atomic_fetch_sub(&img->refs, 1) == 1)
		image_free(img);
}

/* Wait until no I/O and no writeback reference is on img (detaching already set). */
static void image_quiesce(struct pcache_image *img)
{
	while (atomic_load(&img->inflight) || atomic_load(&img->wb_refs))
		usleep(1000);
}

/* Close the image's backing and free its index; it is out of the list, quiesced. */
static void image_teardown(struct pcache_cache *c, struct pcache_image *img)
{
	uint32_t i;

	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->live[i] == img)
			c->live[i] = NULL;
	pthread_mutex_unlock(&c->img_lock);
	pcache_backing_close(img->b);
	img->b = NULL;
	/* the index is freed with the last reference (stats readers may still look at it) */
}

/* How long a stop waits for a writeback batch in flight before it leaves it running. */
#define PCACHE_STOP_WB_WAIT_NS (5ull * 1000 * 1000 * 1000)

void pcache_cache_abort_waits(struct pcache_cache *c)
{
	if (!c)
		return;
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
		image_quiesce(img);
		image_teardown(c, img);
		pcache_image_put(img);
		pthread_mutex_lock(&c->img_lock);
	}
	pthread_mutex_unlock(&c->img_lock);
	/* 5. data heads, segments, device */
	pcache_heads_release(c, true);
	pcache_segs_exit(c);
	pcache_cache_dev_close(c->cd);
	cache_free(c);
	return ret;
}

struct pcache_cache_dev *pcache_cache_device(struct pcache_cache *c)
{
	return c->cd;
}

/* ---- images ------------------------------------------------------------------------------- */

static struct pcache_image *find_attached(struct pcache_cache *c, const char *name)
{
	uint32_t i;

	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i] && !strcmp(c->imgs[i]->name, name))
			return c->imgs[i];
	return NULL;
}

/*
 * Does backing b (identity id) reach bytes the cache already owns: the cache device, or the
 * backing of another live image? 0, or -EINVAL/-EBUSY with the reason. img_lock held.
 */
static int attach_check_overlap(struct pcache_cache *c, const char *name, const char *path,
				const struct pcache_ident *id, char *err, size_t errlen)
{
	uint32_t i;

	if (pcache_ident_overlap(id, &c->dev_ident)) {
		ERR("image %s: %s is the cache device (%s)", name, path, id->text);
		return -EINVAL;
	}
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		struct pcache_image *o = c->live[i];

		if (o && pcache_ident_overlap(id, pcache_backing_ident(o->b))) {
			ERR("image %s: %s reaches the same data as image %s (%s)", name, path, o->name,
			    id->text);
			return -EBUSY;
		}
	}
	return 0;
}

/*
 * The backing is held by someone: if that someone is this cache (another image, the cache
 * device), say so instead of naming our own process as the lock holder.
 */
static int attach_explain_busy(struct pcache_cache *c, const char *name, const char *path,
			       char *err, size_t errlen)
{
	struct pcache_ident id;
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret = -EBUSY;

	if (fd < 0)
		return ret;
	if (pcache_ident_fd(fd, &id) == 0) {
		pthread_mutex_lock(&c->img_lock);
		ret = attach_check_overlap(c, name, path, &id, err, errlen);
		pthread_mutex_unlock(&c->img_lock);
	}
	close(fd);
	return ret ? ret : -EBUSY;
}

int pcache_backings_distinct(const char *const *names, const char *const *paths, int n,
			     char *err, size_t errlen)
{
	struct pcache_ident *id;
	int i, j, fd, ret = 0;

	id = calloc((size_t)n + 1, sizeof(*id));
	if (!id)
		return -ENOMEM;
	for (i = 0; i < n && !ret; i++) {
		fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* the attach itself reports it */
		if (pcache_ident_fd(fd, &id[i]) == 0) {
			for (j = 0; j < i; j++) {
				if (paths[j] && pcache_ident_overlap(&id[i], &id[j])) {
					ERR("image %s: %s reaches the same data as image %s (%s)", names[i],
					    paths[i], names[j], id[i].text);
					ret = -EBUSY;
					break;
				}
			}
		}
		close(fd);
	}
	free(id);
	return ret;
}

int pcache_image_attach(struct pcache_cache *c, const struct pcache_attach_opts *ao,
			struct pcache_image **out, char *err, size_t errlen)
{
	struct pcache_backing_opts bo = { .read_only = ao->read_only };
	struct pcache_backing *b = NULL;
	const struct pcache_ident *id;
	struct pcache_image_ent e;
	struct pcache_image *img;
	bool known, rekey = false;
	char pathbuf[PCACHE_PATH_MAX + 1];
	const char *path;
	uint32_t i, mode;
	int ret;

	if (!ao->name || !pcache_image_name_valid(ao->name)) {
		ERR("image name '%s' is not valid", ao->name ? ao->name : "");
		return -EINVAL;
	}
	if (ao->cache_mode > (int)PCACHE_MODE_WRITEAROUND || ao->cache_mode < -1) {
		ERR("image %s: bad cache mode %d", ao->name, ao->cache_mode);
		return -EINVAL;
	}
	if (ao->path && strlen(ao->path) > PCACHE_PATH_MAX) {
		ERR("image %s: backing path longer than %u bytes", ao->name, PCACHE_PATH_MAX);
		return -ENAMETOOLONG;
	}
	known = pcache_cache_dev_image_find(c->cd, ao->name, &e) == 0;
	snprintf(pathbuf, sizeof(pathbuf), "%s", ao->path ? ao->path : (known ? e.path : ""));
	path = pathbuf;
	if (!*path) {
		ERR("image %s: no backing path given and none stored", ao->name);
		return -EINVAL;
	}
	/*
	 * Open before taking any lock: the path may lead into a FUSE mount whose requests need
	 * those locks (the caller's own mount: refused just below, instead of deadlocking).
	 */
	ret = pcache_backing_open(path, &bo, &b, err, errlen);
	if (ret == -EBUSY)
		ret = attach_explain_busy(c, ao->name, path, err, errlen);
	if (ret)
		return ret;
	id = pcache_backing_ident(b);
	if (ao->own_dev && !id->blockdev && id->dev == ao->own_dev) {
		ERR("image %s: %s is inside this pcachefs mount", ao->name, path);
		ret = -EINVAL;
		goto out_close;
	}
	pthread_mutex_lock(&c->img_lock);
	if (atomic_load(&c->stopping_io)) {
		ret = -ESHUTDOWN;
		ERR("cache is stopping");
		goto out_unlock;
	}
	if (find_attached(c, ao->name)) {
		ERR("image %s is already attached", ao->name);
		ret = -EBUSY;
		goto out_unlock;
	}
	ret = attach_check_overlap(c, ao->name, path, id, err, errlen);
	if (ret)
		goto out_unlock;
	/* again under the lock: the entry may have changed while the backing was opened */
	known = pcache_cache_dev_image_find(c->cd, ao->name, &e) == 0;
	if (known) {
		bool same_id = e.size == pcache_backing_size(b) && e.lbs == pcache_backing_lbs(b) &&
			       (!e.ident[0] || !strcmp(e.ident, id->text));
		bool same_path = !strcmp(e.path, path);

		if (!same_path && !ao->allow_path_change) {
			ERR("image %s: backing path %s differs from the stored %s (use allow_path_change)",
			    ao->name, path, e.path);
			ret = -EEXIST;
			goto out_unlock;
		}
		if (!same_id) {
			bool dirty = image_has_dirty(c, e.id);

			if (dirty || !ao->rekey) {
				ERR("image %s: %s is not the image's backing: stored %s (%" PRIu64 " bytes, lbs %u), "
				    "found %s (%" PRIu64 " bytes, lbs %u): %s", ao->name, path,
				    e.ident[0] ? e.ident : "(no identity)", e.size, e.lbs, id->text,
				    pcache_backing_size(b), pcache_backing_lbs(b),
				    dirty ? "refused, the cache holds dirty data of the stored one" :
				    "refused (rekey accepts it and drops the cached data)");
				ret = -EEXIST;
				goto out_unlock;
			}
			/* asked for, and clean: forget the old identity (its keys stay unused in the log) */
			pcache_log(PCACHE_LOG_NOTICE, "image %s: re-keyed to %s (%s), cached data dropped",
				   ao->name, path, id->text);
			rekey = true;
		}
	}
	if (rekey) {
		struct pcache_image_ent old = e;

		ret = pcache_cache_dev_image_remove(c->cd, old.slot);
		if (ret) {
			ERR("image %s: image table: %s", ao->name, strerror(-ret));
			goto out_unlock;
		}
		known = false;
		memset(&e, 0, sizeof(e));
		e.cache_mode = old.cache_mode;
		e.file_mode = old.file_mode;
		e.uid = old.uid;
		e.gid = old.gid;
	} else if (!known) {
		/* a new image shows its backing's permissions and owner */
		memset(&e, 0, sizeof(e));
		e.cache_mode = PCACHE_MODE_WRITEBACK;
		e.file_mode = id->mode & 07777u;
		e.uid = id->uid;
		e.gid = id->gid;
	}
	mode = ao->cache_mode >= 0 ? (uint32_t)ao->cache_mode : e.cache_mode;
	if (!known) {
		snprintf(e.name, sizeof(e.name), "%s", ao->name);
		snprintf(e.path, sizeof(e.path), "%s", path);
		snprintf(e.ident, sizeof(e.ident), "%s", id->text);
		e.size = pcache_backing_size(b);
		e.lbs = pcache_backing_lbs(b);
		e.state = PCACHE_IMAGE_ATTACHED;
		e.cache_mode = mode;
		ret = pcache_cache_dev_image_add(c->cd, &e);
		if (ret) {
			ERR("image %s: image table: %s", ao->name, ret == -ENOSPC ? "full" : strerror(-ret));
			goto out_unlock;
		}
	} else if (strcmp(e.path, path) || e.state != PCACHE_IMAGE_ATTACHED || e.cache_mode != mode ||
		   strcmp(e.ident, id->text)) {
		snprintf(e.path, sizeof(e.path), "%s", path);
		snprintf(e.ident, sizeof(e.ident), "%s", id->text); /* recorded on first attach */
		e.state = PCACHE_IMAGE_ATTACHED;
		e.cache_mode = mode;
		ret = pcache_cache_dev_image_update(c->cd, &e);
		if (ret) {
			ERR("image %s: image table: %s", ao->name, strerror(-ret));
			goto out_unlock;
		}
	}
	img = calloc(1, sizeof(*img));
	if (!img) {
		ret = -ENOMEM;
		ERR("out of memory");
		goto out_unlock;
	}
	img->c = c;
	atomic_init(&img->refs, 1);
	img->id = e.id;
	img->slot = e.slot;
	snprintf(img->name, sizeof(img->name), "%s", e.name);
	img->b = b;
	img->size = e.size;
	img->lbs = PCACHE_MAX(e.lbs, PCACHE_SECTOR);
	img->read_only = ao->read_only;
	atomic_init(&img->cache_mode, mode);
	{
		pthread_rwlockattr_t ra;

		/* the writeback must not starve behind a stream of writethrough writes */
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&img->through_lock, &ra);
		pthread_rwlockattr_destroy(&ra);
	}
	pthread_mutex_init(&img->ent_lock, NULL);
	img->ent = e;
	ret = pcache_index_init(&img->ix, img->size);
	if (ret) {
		ERR("out of memory");
		goto out_img;
	}
	ret = pcache_replay_image(c, img, err, errlen);
	if (ret)
		goto out_img;
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (!c->imgs[i])
			break;
	c->imgs[i] = img; /* at most PCACHE_MAX_IMAGES entries exist in the table */
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (!c->live[i])
			break;
	if (i < PCACHE_MAX_IMAGES)
		c->live[i] = img;
	if (out) {
		atomic_fetch_add(&img->refs, 1);
		*out = img;
	}
	pthread_mutex_unlock(&c->img_lock);
	pcache_wb_notify_kick(c); /* its keys may have been blocking the writeback */
	return 0;

out_img:
	image_free(img);
out_unlock:
	pthread_mutex_unlock(&c->img_lock);
out_close:
	pcache_backing_close(b);
	return ret;
}

/* The image table's entries that are not attached now, in *ents (free it): count or -ENOMEM. */
static int unattached_ents(struct pcache_cache *c, struct pcache_image_ent **ents)
{
	int n, i, k = 0;

	*ents = calloc(PCACHE_MAX_IMAGES, sizeof(**ents));
	if (!*ents)
		return -ENOMEM;
	n = pcache_cache_dev_images(c->cd, *ents, PCACHE_MAX_IMAGES);
	pthread_mutex_lock(&c->img_lock);
	for (i = 0; i < n; i++)
		if (!find_attached(c, (*ents)[i].name))
			(*ents)[k++] = (*ents)[i];
	pthread_mutex_unlock(&c->img_lock);
	return k;
}

/* A backing that is not there (yet): the image waits, the others come up. */
static bool backing_missing(int ret)
{
	return ret == -ENOENT || ret == -ENXIO || ret == -ENODEV || ret == -ENOTDIR;
}

int pcache_cache_attach_known(struct pcache_cache *c, char *err, size_t errlen)
{
	return pcache_cache_attach_known_except(c, NULL, 0, err, errlen);
}

int pcache_cache_attach_known_except(struct pcache_cache *c, const char *const *skip, int n_skip,
				     char *err, size_t errlen)
{
	struct pcache_image_ent *ents;
	char why[1024];
	int n, i, j, ret = 0, r;

	n = unattached_ents(c, &ents);
	if (n < 0)
		return n;
	for (i = 0; i < n; i++) {
		struct pcache_attach_opts ao = { .name = ents[i].name, .cache_mode = -1 };

		for (j = 0; j < n_skip && strcmp(skip[j], ents[i].name); j++)
			;
		if (j < n_skip)
			continue;
		why[0] = '\0';
		r = pcache_image_attach(c, &ao, NULL, why, sizeof(why));
		if (r && backing_missing(r)) {
			pcache_log(PCACHE_LOG_WARNING, "image %s: backing %s is missing (%s): not attached; "
				   "its cached data waits for it", ents[i].name, ents[i].path, strerror(-r));
			continue;
		}
		if (r && !ret) {
			ret = r;
			snprintf(err, errlen, "%s", why);
		}
	}
	free(ents);
	return ret;
}

int pcache_cache_unattached(struct pcache_cache *c, struct pcache_unattached *v, int max)
{
	struct pcache_image_ent *ents;
	int n, i, k = 0;

	n = unattached_ents(c, &ents);
	if (n < 0)
		return n;
	for (i = 0; i < n && k < max; i++) {
		memset(&v[k], 0, sizeof(v[k]));
		snprintf(v[k].name, sizeof(v[k].name), "%s", ents[i].name);
		snprintf(v[k].path, sizeof(v[k].path), "%s", ents[i].path);
		v[k].missing = ents[i].state == PCACHE_IMAGE_ATTACHED;
		{
			uint64_t keys;

			/* a log walk: an unattached image has no counters (rare: missing backings) */
			pcache_image_dirty_walk(c, ents[i].id, &keys, &v[k].dirty_bytes);
		}
		k++;
	}
	free(ents);
	return k;
}

enum detach_how { DETACH_KEEP, DETACH_FORGET_CLEAN, DETACH_GIVE_UP };

static int image_detach(struct pcache_cache *c, const char *name, enum detach_how how);

int pcache_image_detach(struct pcache_cache *c, const char *name, bool forget)
{
	return image_detach(c, name, forget ? DETACH_FORGET_CLEAN : DETACH_KEEP);
}

int pcache_image_give_up(struct pcache_cache *c, const char *name, uint64_t *lost_bytes)
{
	struct pcache_image_ent e;
	uint64_t keys = 0, bytes = 0;
	int ret;

	if (pcache_cache_dev_image_find(c->cd, name, &e) != 0)
		return -ENOENT;
	pcache_image_dirty_walk(c, e.id, &keys, &bytes);
	ret = image_detach(c, name, DETACH_GIVE_UP);
	if (ret == -ENOENT) /* not attached (a missing backing): only the table entry goes */
		ret = pcache_cache_dev_image_remove(c->cd, e.slot);
	if (ret)
		return ret;
	/* its keys now belong to no image: the writeback passes them, replay and reads ignore them */
	if (c->wb)
		pcache_wb_image_forget(c->wb, e.id);
	pcache_log(PCACHE_LOG_WARNING, "image %s: gave up %" PRIu64 " dirty bytes (%" PRIu64 " keys) never "
		   "written to %s; the image is detached and forgotten, the other images' writeback goes on",
		   name, bytes, keys, e.path);
	if (lost_bytes)
		*lost_bytes = bytes;
	return 0;
}

static int image_detach(struct pcache_cache *c, const char *name, enum detach_how how)
{
	bool forget = how != DETACH_KEEP;
	struct pcache_image *img;
	struct pcache_image_ent e;
	uint32_t i;
	int ret;

	pthread_mutex_lock(&c->img_lock);
	img = find_attached(c, name);
	if (!img) {
		pthread_mutex_unlock(&c->img_lock);
		return -ENOENT;
	}
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (c->imgs[i] == img)
			c->imgs[i] = NULL;
	atomic_store(&img->detaching, true);
	pthread_mutex_unlock(&c->img_lock);

	image_quiesce(img);
	ret = pcache_cache_flush(c);
	if (how == DETACH_GIVE_UP)
		ret = 0; /* a failing flush does not matter: its data is given up */
	if (!ret && how == DETACH_FORGET_CLEAN && image_has_dirty(c, img->id)) {
		/* not clean: put it back */
		atomic_store(&img->detaching, false);
		pthread_mutex_lock(&c->img_lock);
		for (i = 0; i < PCACHE_MAX_IMAGES; i++)
			if (!c->imgs[i])
				break;
		c->imgs[i] = img;
		pthread_mutex_unlock(&c->img_lock);
		return -EBUSY;
	}
	pthread_mutex_lock(&img->ent_lock);
	e = img->ent;
	pthread_mutex_unlock(&img->ent_lock);
	if (forget) {
		ret = pcache_cache_dev_image_remove(c->cd, e.slot);
	} else {
		e.state = PCACHE_IMAGE_DETACHED;
		ret = pcache_cache_dev_image_update(c->cd, &e);
	}
	image_teardown(c, img);
	pcache_image_put(img);
	return ret;
}

struct pcache_image *pcache_image_get(struct pcache_cache *c, const char *name)
{
	struct pcache_image *img;

	pthread_mutex_lock(&c->img_lock);
	img = find_attached(c, name);
	if (img)
		atomic_fetch_add(&img->refs, 1);
	pthread_mutex_unlock(&c->img_lock);
	return img;
}

static int img_cmp(const void *a, const void *b)
{
	return strcmp((*(struct pcache_image *const *)a)->name, (*(struct pcache_image *const *)b)->name);
}

int pcache_cache_images(struct pcache_cache *c, struct pcache_image **v, int max)
{
	struct pcache_image *all[PCACHE_MAX_IMAGES];
	int n = 0, i;
	uint32_t s;

	pthread_mutex_lock(&c->img_lock);
	for (s = 0; s < PCACHE_MAX_IMAGES; s++)
		if (c->imgs[s])
			all[n++] = c->imgs[s];
	qsort(all, (size_t)n, sizeof(all[0]), img_cmp);
	if (n > max)
		n = max;
	for (i = 0; i < n; i++) {
		atomic_fetch_add(&all[i]->refs, 1);
		v[i] = all[i];
	}
	pthread_mutex_unlock(&c->img_lock);
	return n;
}

const char *pcache_image_name(const struct pcache_image *img)
{
	return img->name;
}

uint64_t pcache_image_size(const struct pcache_image *img)
{
	return img->size;
}

uint32_t pcache_image_lbs(const struct pcache_image *img)
{
	return img->lbs;
}

void pcache_image_attr(const struct pcache_image *img, uint32_t *mode, uint32_t *uid, uint32_t *gid)
{
	struct pcache_image *m = (struct pcache_image *)img;

	pthread_mutex_lock(&m->ent_lock);
	if (mode)
		*mode = m->ent.file_mode;
	if (uid)
		*uid = m->ent.uid;
	if (gid)
		*gid = m->ent.gid;
	pthread_mutex_unlock(&m->ent_lock);
}

struct attr_edit {
	uint32_t mode, uid, gid;
};

static void attr_edit_fn(struct pcache_image_ent *e, void *arg)
{
	const struct attr_edit *a = arg;

	e->file_mode = a->mode;
	e->uid = a->uid;
	e->gid = a->gid;
}

/*
 * Field updates go through pcache_cache_dev_image_modify() (read-modify-write under the table
 * lock), never a whole-entry rewrite from img->ent: the writeback persists wb_lsn/wb_time of
 * the same entry concurrently, and a stale copy would undo it (or it would undo ours).
 */
int pcache_image_set_attr(struct pcache_image *img, uint32_t mode, uint32_t uid, uint32_t gid)
{
	struct attr_edit a = { mode, uid, gid };
	struct pcache_image_ent e;
	int ret;

	if (mode > 07777)
		return -EINVAL;
	pthread_mutex_lock(&img->ent_lock);
	ret = pcache_cache_dev_image_modify(img->c->cd, img->ent.slot, img->ent.id, attr_edit_fn,
					    &a, &e);
	if (!ret)
		img->ent = e;
	pthread_mutex_unlock(&img->ent_lock);
	return ret;
}

static void mode_edit_fn(struct pcache_image_ent *e, void *arg)
{
	e->cache_mode = *(const uint32_t *)arg;
}

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

/* ---- knobs -------------------------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t max, uint64_t *v)
{
	char *end;
	unsigned long long x;

	while (*s == ' ')
		s++;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	while (*end == ' ' || *end == '\n')
		end++;
	if (*end || x > max)
		return -EINVAL;
	*v = x;
	return 0;
}

int pcache_cache_set_knob(struct pcache_cache *c, const char *name, const char *value)
{
	struct pcache_cache_info ci;
	uint64_t v;
	int ret;

	pthread_mutex_lock(&c->knob_lock);
	pcache_cache_dev_get_info(c->cd, &ci);
	if (!strcmp(name, "gc_percent")) {
		ret = parse_u64(value, PCACHE_MAX_GC_PERCENT, &v);
		ci.gc_percent = (uint32_t)v;
	} else if (!strcmp(name, "writeback_rate")) {
		ret = parse_u64(value, UINT64_MAX, &v);
		ci.wb_rate = v;
	} else if (!strcmp(name, "dirty_high")) {
		ret = parse_u64(value, 100, &v);
		ci.dirty_high = (uint32_t)v;
	} else if (!strcmp(name, "dirty_low")) {
		ret = parse_u64(value, 100, &v);
		ci.dirty_low = (uint32_t)v;
	} else if (!strcmp(name, "space_timeout")) {
		/* run time only (not persisted): the daemon's -o space_timeout sets it at start */
		ret = parse_u64(value, 24ull * 3600, &v);
		if (!ret)
			atomic_store(&c->segs.wait_timeout_ns, v * 1000000000ull);
		pthread_mutex_unlock(&c->knob_lock);
		if (!ret)
			pthread_cond_broadcast(&c->segs.cond);
		return ret;
	} else {
		ret = -EINVAL;
	}
	if (!ret)
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

int pcache_cache_get_knob(struct pcache_cache *c, const char *name, char *buf, size_t len)
{
	struct pcache_cache_info ci;
	int n;

	pcache_cache_dev_get_info(c->cd, &ci);
	if (!strcmp(name, "gc_percent"))
		n = snprintf(buf, len, "%u\n", ci.gc_percent);
	else if (!strcmp(name, "writeback_rate"))
		n = snprintf(buf, len, "%" PRIu64 "\n", ci.wb_rate);
	else if (!strcmp(name, "dirty_high"))
		n = snprintf(buf, len, "%u\n", ci.dirty_high);
	else if (!strcmp(name, "dirty_low"))
		n = snprintf(buf, len, "%u\n", ci.dirty_low);
	else if (!strcmp(name, "space_timeout"))
		n = snprintf(buf, len, "%" PRIu64 "\n", (uint64_t)(atomic_load(&c->segs.wait_timeout_ns) / 1000000000ull));
	else
		return -EINVAL;
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

int pcache_image_set_knob(struct pcache_image *img, const char *name, const char *value)
{
	struct pcache_image_ent e;
	uint32_t m;
	int ret;

	if (strcmp(name, "cache_mode"))
		return -EINVAL;
	ret = pcache_mode_parse(value);
	if (ret < 0)
		return ret;
	m = (uint32_t)ret;
	/* Leaving writeback: drain the image's dirty data first, so the backing is current
	 * when writes start going to it directly. */
	if (m != PCACHE_MODE_WRITEBACK && atomic_load(&img->cache_mode) == PCACHE_MODE_WRITEBACK) {
		ret = pcache_image_writeback_all(img);
		if (ret)
			return ret;
	}
	pthread_mutex_lock(&img->ent_lock);
	ret = pcache_cache_dev_image_modify(img->c->cd, img->ent.slot, img->ent.id, mode_edit_fn,
					    &m, &e);
	if (!ret) {
		img->ent = e;
		atomic_store(&img->cache_mode, m);
	}
	pthread_mutex_unlock(&img->ent_lock);
	return ret;
}

int pcache_image_get_knob(struct pcache_image *img, const char *name, char *buf, size_t len)
{
	int n;

	if (strcmp(name, "cache_mode"))
		return -EINVAL;
	n = snprintf(buf, len, "%s\n", pcache_mode_name(atomic_load(&img->cache_mode)));
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
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
		st->dirty_percent = wbo_dirty_percent(c);
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
