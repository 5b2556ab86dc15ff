/*
 * cache_kset.c -- staging ksets and the key log.
 *
 * Keys are staged in PCACHE_NSTAGE buffers striped by (image id, 4 MiB region): the same region
 * always maps to the same buffer, and a key is inserted into the index and appended to its
 * buffer under the region's subtree lock, so for overlapping keys log order equals index order
 * (replay: later in the log wins). A buffer is closed -- written as one kset at key_head and
 * persisted -- when it fills (128 keys), on a flush (all buffers), on a FUA write (its buffer),
 * and about 1 s after its first unpersisted key (timer thread, cache.c).
 *
 * Invariants:
 *  1. Every kset (LAST records included) carries lsn = previous + 1 and the current flush
 *     epoch; epochs never decrease along the log (both are read under c->log.lock).
 *  2. A kset is durable before c->log.lock is released and before key_head moves past it, so
 *     everything before key_head is persisted (what writeback may read).
 *  3. No zero terminator is written or relied on: replay stops at the first kset whose magic,
 *     CRC or lsn does not continue the log. A new key-log segment is zeroed (persisted) before
 *     the LAST record that links it, so bytes of its previous use (user data of a data segment)
 *     can never be parsed as a kset.
 *  4. A kset never crosses its segment: a segment always keeps room for a LAST record.
 *  5. pcache_stage_room() is called before the index is touched: a key that made it into the
 *     index always has a place in its buffer (an append that failed after the index changed
 *     would leave indexed data that no kset describes: lost at the next replay).
 *  6. With stage_shm (the stages in memory that outlives the process), a dead process's stages
 *     are read by the next start: a key is stored whole before the stage's count includes it,
 *     and after every kset or LAST record the shared header holds the log's new end lsn and
 *     epoch before the stage's count drops to 0. So a stage read after a death holds keys not
 *     in the log, or (death between the two stores) exactly the keys of the last kset; and
 *     the log's end is the header's lsn or one more (a LAST record or kset written, the
 *     header not yet). A log that ends anywhere else, or whose last epoch differs, was written
 *     by someone else since: the staged keys are then dropped, never logged over it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_i.h"
#include "pcache/log.h"

void pcache_key_encode(struct pcache_key_om *om, uint32_t image_id, uint64_t off,
		       const struct pcache_ikey *k)
{
	memset(om, 0, sizeof(*om));
	om->off = off;
	om->len = k->len;
	om->flags = k->flags & (PCACHE_KEY_CLEAN | PCACHE_KEY_ZERO);
	om->image_id = image_id;
	if (!(k->flags & PCACHE_KEY_ZERO)) {
		om->seg = k->seg;
		om->seg_off = k->seg_off;
		om->seg_gen = k->seg_gen;
		om->data_crc = k->data_crc;
	}
}

int pcache_log_init(struct pcache_cache *c)
{
	uint32_t i;

	pthread_mutex_init(&c->log.lock, NULL);
	pthread_mutex_init(&c->flush_lock, NULL);
	for (i = 0; i < PCACHE_NSTAGE; i++) {
		pthread_mutex_init(&c->stage[i].lock, NULL);
		c->stage[i].n = 0;
	}
	return 0;
}

uint32_t pcache_stage_of(uint32_t image_id, uint64_t region)
{
	uint64_t x = region * 0x9E3779B97F4A7C15ull + image_id * 0xC2B2AE3D27D4EB4Full;

	return (uint32_t)((x >> 32) % PCACHE_NSTAGE);
}

void pcache_log_head(struct pcache_cache *c, struct pcache_pos *p)
{
	pthread_mutex_lock(&c->log.lock);
	*p = c->log.head;
	pthread_mutex_unlock(&c->log.lock);
}

void pcache_log_epoch_bump(struct pcache_cache *c)
{
	pthread_mutex_lock(&c->log.lock);
	c->log.epoch++;
	atomic_store(&c->log.epoch_now, c->log.epoch);
	pthread_mutex_unlock(&c->log.lock);
}

/* With c->log.lock held: write a LAST record at key_head linking seg, move key_head there. */
static void log_link_segment(struct pcache_cache *c, uint32_t seg)
{
	struct pcache_log *lg = &c->log;
	struct pcache_kset_om last;

	/* the new segment's old bytes must never parse as ksets: zero it, flushed, ... */
	c->pm->ops->memset(c->pm->ctx, pcache_seg_ptr(c, seg, 0), 0, c->seg_size,
			   PCACHE_PM_NONTEMPORAL | PCACHE_PM_NODRAIN);
	/* ... and drained before the LAST record that makes it part of the log */
	c->pm->ops->drain(c->pm->ctx);

	memset(&last, 0, sizeof(last));
	last.key_num = 0;
	last.flags = PCACHE_KSET_LAST;
	last.magic = PCACHE_KSET_MAGIC;
	last.lsn = lg->head.lsn;
	last.epoch = lg->epoch;
	last.next_seg = seg;
	last.crc = pcache_crc32c(PCACHE_CRC_SEED, (const uint8_t *)&last + 4, PCACHE_KSET_HDR_SIZE - 4);
	/* the LAST record is durable before key_head moves into the new segment */
	c->pm->ops->memcpy(c->pm->ctx, pcache_seg_ptr(c, lg->head.seg, lg->head.off), &last,
			   PCACHE_KSET_HDR_SIZE, 0);
	lg->head.seg = seg;
	lg->head.off = 0;
	lg->head.lsn++;
	lg->ksets_written++;
	if (c->stage_shm) {
		atomic_store(&c->stage_shm->log_lsn, lg->head.lsn);
		atomic_store(&c->stage_shm->log_epoch, lg->epoch);
	}
}

int pcache_stage_close(struct pcache_cache *c, struct pcache_stage *st, bool wait)
{
	struct pcache_log *lg = &c->log;
	union {
		struct pcache_kset_om ks;
		uint8_t raw[PCACHE_KSET_MAX_SIZE];
	} buf;
	uint32_t size, seg;
	int ret;

	if (st->n == 0)
		return 0;
	size = PCACHE_KSET_SIZE(st->n);
	pthread_mutex_lock(&lg->lock);
	while (lg->head.off + size + PCACHE_KSET_HDR_SIZE > c->seg_size) {
		ret = pcache_seg_alloc(c, true, false, &seg);
		if (ret == -ENOSPC && wait) {
			/* wait without the log lock: writeback and GC need it to make space */
			pthread_mutex_unlock(&lg->lock);
			ret = pcache_seg_alloc(c, true, true, &seg);
			pthread_mutex_lock(&lg->lock);
			if (ret == 0 && lg->head.off + size + PCACHE_KSET_HDR_SIZE <= c->seg_size) {
				/* someone else linked a segment meanwhile */
				pcache_seg_free(c, seg);
				continue;
			}
		}
		if (ret) {
			pthread_mutex_unlock(&lg->lock);
			return ret == -ENOSPC ? -EAGAIN : ret;
		}
		log_link_segment(c, seg);
	}
	memset(&buf.ks, 0, PCACHE_KSET_HDR_SIZE);
	buf.ks.key_num = (uint16_t)st->n;
	buf.ks.magic = PCACHE_KSET_MAGIC;
	buf.ks.lsn = lg->head.lsn;
	buf.ks.epoch = lg->epoch;
	memcpy(buf.ks.keys, st->keys, (size_t)st->n * sizeof(st->keys[0]));
	buf.ks.crc = pcache_crc32c(PCACHE_CRC_SEED, buf.raw + 4, size - 4);
	/* the kset (keys + CRC) is durable before key_head moves past it and the writers go on */
	c->pm->ops->memcpy(c->pm->ctx, pcache_seg_ptr(c, lg->head.seg, lg->head.off), buf.raw, size,
			   PCACHE_PM_NONTEMPORAL);
	lg->head.off += size;
	lg->head.lsn++;
	lg->ksets_written++;
	atomic_store(&lg->head_lsn, lg->head.lsn);
	if (c->stage_shm) {
		/* invariant 6: the log's new end is recorded before the stage empties */
		atomic_store(&c->stage_shm->log_lsn, lg->head.lsn);
		atomic_store(&c->stage_shm->log_epoch, lg->epoch);
	}
	pthread_mutex_unlock(&lg->lock);
	atomic_signal_fence(memory_order_seq_cst);
	st->n = 0;
	pcache_wb_notify_data(c);
	return 0;
}

int pcache_stage_room(struct pcache_cache *c, struct pcache_stage *st, bool wait)
{
	if (st->n < PCACHE_KSET_MAX_KEYS)
		return 0;
	return pcache_stage_close(c, st, wait);
}

void pcache_stage_add(struct pcache_cache *c, struct pcache_stage *st, const struct pcache_key_om *k)
{
	if (st->n == 0)
		st->first_ns = pcache_now_ns();
	st->keys[st->n] = *k;
	/* invariant 6: a key is whole before the count that makes it part of the stage */
	atomic_signal_fence(memory_order_seq_cst);
	st->n++;
	if (st->n == PCACHE_KSET_MAX_KEYS)
		(void)pcache_stage_close(c, st, false); /* else the next appender or the timer closes it */
}

int pcache_stages_close_all(struct pcache_cache *c, bool wait, bool trylock, bool only_old)
{
	uint64_t now = pcache_now_ns();
	uint32_t i;
	int ret, first = 0;

	for (i = 0; i < PCACHE_NSTAGE; i++) {
		struct pcache_stage *st = &c->stage[i];

		if (trylock) {
			if (pthread_mutex_trylock(&st->lock) != 0)
				continue;
		} else {
			pthread_mutex_lock(&st->lock);
		}
		if (st->n && (!only_old || now - st->first_ns >= c->kset_close_ns)) {
			ret = pcache_stage_close(c, st, wait);
			if (ret && !first)
				first = ret;
		}
		pthread_mutex_unlock(&st->lock);
	}
	return first;
}

/* ---- staging memory that outlives the process ------------------------------------------- */

size_t pcache_stage_shm_size(void)
{
	return sizeof(struct pcache_stage_shm);
}

uint64_t pcache_cache_staged_recovered(const struct pcache_cache *c)
{
	return c ? c->staged_recovered : 0;
}

/* Account keys as the replay does (segment marked, referenced; dirty counted): 0 or -EUCLEAN. */
static int stage_account(struct pcache_cache *c, const struct pcache_stage *st, char *err, size_t errlen)
{
	for (uint32_t i = 0; i < st->n; i++) {
		const struct pcache_key_om *k = &st->keys[i];
		int ret = pcache_log_key_check(k, c->seg_count, c->seg_size, err, errlen);

		if (ret)
			return ret;
		if (k->flags & PCACHE_KEY_ZERO)
			continue;
		if (k->seg_gen != pcache_cache_dev_seg_gen(c->cd, k->seg) ||
		    c->segs.kind[k->seg] == PCACHE_SEG_LOG) {
			snprintf(err, errlen, "staged key (image %u, off %" PRIu64 ") does not match segment %u",
				 k->image_id, k->off, k->seg);
			return -EUCLEAN;
		}
	}
	for (uint32_t i = 0; i < st->n; i++) {
		const struct pcache_key_om *k = &st->keys[i];

		if (k->flags & PCACHE_KEY_ZERO)
			continue;
		pcache_seg_mark_used(c, k->seg, PCACHE_SEG_DATA);
		pcache_seg_get(c, k->seg);
		if (!(k->flags & PCACHE_KEY_CLEAN))
			atomic_fetch_add(&c->dirty_in, k->len);
	}
	return 0;
}

int pcache_stage_shm_recover(struct pcache_cache *c, void *mem, char *err, size_t errlen)
{
	struct pcache_stage_shm *shm = mem;
	uint64_t end = c->log.head.lsn, last_epoch = c->log.epoch - 1;
	bool layout, cont = false;
	uint32_t i, staged = 0;
	int ret;

	layout = shm->magic == PCACHE_STAGE_SHM_MAGIC && shm->nstage == PCACHE_NSTAGE &&
		 shm->stage_size == sizeof(struct pcache_stage) &&
		 shm->key_size == sizeof(struct pcache_key_om);
	if (layout) {
		uint64_t l = atomic_load(&shm->log_lsn);

		cont = (end == l || end == l + 1) && atomic_load(&shm->log_epoch) == last_epoch;
		for (i = 0; i < PCACHE_NSTAGE; i++) {
			if (shm->stage[i].n > PCACHE_KSET_MAX_KEYS) {
				layout = cont = false;
				break;
			}
			staged += shm->stage[i].n;
		}
	}
	if (layout && staged && !cont)
		pcache_log(PCACHE_LOG_WARNING, "staging memory: %u keys a dead process staged are dropped: "
			   "the log was written since (it ends at lsn %" PRIu64 ", they follow lsn %" PRIu64 ")",
			   staged, end, (uint64_t)atomic_load(&shm->log_lsn));
	if (!layout || !cont) {
		memset(shm, 0, sizeof(*shm));
		staged = 0;
	}
	shm->magic = PCACHE_STAGE_SHM_MAGIC;
	shm->nstage = PCACHE_NSTAGE;
	shm->stage_size = sizeof(struct pcache_stage);
	shm->key_size = sizeof(struct pcache_key_om);
	atomic_store(&shm->log_lsn, end);
	atomic_store(&shm->log_epoch, last_epoch);
	for (i = 0; i < PCACHE_NSTAGE; i++)
		pthread_mutex_init(&shm->stage[i].lock, NULL);
	free(c->stage);
	c->stage = shm->stage;
	c->stage_shm = shm;
	if (!staged)
		return 0;
	/* the keys follow the log (invariant 6): log them now, each stage as one kset, in order */
	for (i = 0; i < PCACHE_NSTAGE; i++) {
		struct pcache_stage *st = &shm->stage[i];
		uint32_t n = st->n;

		if (!n)
			continue;
		ret = stage_account(c, st, err, errlen);
		if (ret)
			return ret;
		ret = pcache_stage_close(c, st, false);
		if (ret) {
			snprintf(err, errlen, "logging %u staged keys of a dead process: %s", n, strerror(-ret));
			return ret;
		}
		c->staged_recovered += n;
	}
	pcache_log(PCACHE_LOG_INFO, "logged %" PRIu64 " keys a dead process had staged (acknowledged, "
		   "not yet flushed)", c->staged_recovered);
	return 0;
}
