/*
 * cache_replay.c -- reading the key log back at start and at attach.
 *
 * Replay walks the key log from key_tail and accepts a kset only if magic, CRC and lsn continue
 * the log and it lies within its segment; LAST records are followed. The global walk at start
 * (pcache_replay_all()) rebuilds the segment bitmap and refs and finds key_head; each image's
 * index is rebuilt by a second walk when the image attaches (pcache_replay_image(); keys of
 * images not attached stay in the log untouched). Every walk goes through the one log reader
 * (core/log.c). The dirty walk counts an image's keys not written back yet.
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

int pcache_replay_all(struct pcache_cache *c, char *err, size_t errlen)
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
		uint32_t len;
		int ret;

		if (k->image_id != img->id)
			continue;
		if (k->off >= img->size)
			continue; /* beyond the image (identity is checked at attach; a shrink cut it) */
		/* across the end (a shrink): its bytes before the end count, the CRC still covers all */
		len = (uint32_t)PCACHE_MIN((uint64_t)k->len, img->size - k->off);
		region = k->off >> PCACHE_REGION_SHIFT;
		if (!(k->flags & PCACHE_KEY_ZERO) &&
		    k->seg_gen != pcache_cache_dev_seg_gen(r->c->cd, k->seg)) {
			/* stale (invariant 2): its bytes, or newer ones, are on the backing */
			sub = &img->ix.sub[region];
			pthread_mutex_lock(&sub->lock);
			ret = pcache_subtree_punch(sub, (uint32_t)(k->off & (PCACHE_REGION_SIZE - 1)),
						   len);
			pthread_mutex_unlock(&sub->lock);
			if (ret)
				return ret;
			continue;
		}
		memset(&ik, 0, sizeof(ik));
		ik.off = (uint32_t)(k->off & (PCACHE_REGION_SIZE - 1));
		ik.len = len;
		ik.flags = k->flags;
		if (pos->lsn < r->dirty_lsn)
			ik.flags |= PCACHE_KEY_CLEAN; /* written back already */
		if (!(ik.flags & PCACHE_KEY_CLEAN) && pos->lsn >= r->count_lsn) {
			r->dirty_keys++;
			r->dirty_bytes += len;
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
bool pcache_image_has_dirty(struct pcache_cache *c, uint32_t id)
{
	uint64_t keys, bytes;

	pcache_image_dirty_walk(c, id, &keys, &bytes);
	return keys > 0;
}
