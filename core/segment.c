/*
 * segment.c -- segment allocation, reference counts, generations and data heads.
 *
 * Every segment is free, a data segment or a key-log segment. The bitmap lives in DRAM and is
 * rebuilt by replay. Data segments are filled sequentially by data heads (PCACHE_NHEADS, picked
 * by a hash of the calling thread) and freed when their reference count drops to zero; a data
 * segment's refs = keys pointing into it in the log between key_tail and key_head (plus keys
 * still staged) + 1 while a data head sits in it.
 *
 * Invariants:
 *  1. A data segment's generation is bumped durably (cache_dev persists it) before its bitmap
 *     bit is cleared, so it is bumped before any reuse: every key of the old use is then stale.
 *  2. Data allocation never takes the last PCACHE_LOG_RESERVE free segments: the key log can
 *     always get a segment to persist the keys of data already written.
 *  3. Writers waiting for space are served first come first served (tickets), and counted.
 *  4. A data head never pins a segment forever: idle heads are released by the timer thread,
 *     and every head is released when a writer waits for space (a half-used head segment
 *     can never be collected, so a full cache could otherwise wait on its own heads).
 *  5. A data segment under read pins (zero-copy hits, cache_pin.c) is not made allocatable:
 *     its last pcache_seg_put() bumps the generation, then sets PCACHE_SEG_FREEING in
 *     readers[seg]; whoever then sees no pin with FREEING set (that put, or the last unpin)
 *     clears the word with one compare-and-swap and frees the segment, so it is freed exactly
 *     once. A reader pins by incrementing readers[seg] and only then re-reading the generation:
 *     both sides read-modify-write the same word, so either the put sees the pin or the pin sees
 *     the bumped generation (and backs off). Nobody waits for a pin: a leaked pin keeps one
 *     segment allocated but never blocks GC or writers.
 *  6. A copying hit (cache_read.c copy_hits) pins nothing: it copies, then re-reads the
 *     generation and drops the hit if it changed. pcache_seg_alloc() fences after taking a
 *     segment, so the new generation is visible before any new byte in it (invariant 1 makes
 *     the bump come first).
 *  7. Once aborted (pcache_segs_abort_waits(), the cache is stopping), nobody waits for space:
 *     every waiter and every later allocation that finds no space gets -EIO. The write it
 *     serves was never acknowledged, and the data already written stays where it is.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cache_i.h"

/* space waiters re-check (and kick GC again) at least this often */
#define SPACE_POLL_NS (50u * 1000 * 1000)

static inline bool bit_test(const uint64_t *bm, uint32_t i)
{
	return (bm[i / 64] >> (i % 64)) & 1;
}

static inline void bit_set(uint64_t *bm, uint32_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

static inline void bit_clear(uint64_t *bm, uint32_t i)
{
	bm[i / 64] &= ~(1ull << (i % 64));
}

int pcache_segs_init(struct pcache_cache *c)
{
	struct pcache_segs *s = &c->segs;
	uint32_t i;

	memset(s, 0, sizeof(*s));
	s->count = c->seg_count;
	s->nfree = c->seg_count;
	s->bitmap = calloc((s->count + 63) / 64, sizeof(uint64_t));
	s->kind = calloc(s->count, 1);
	s->refs = calloc(s->count, sizeof(*s->refs));
	s->readers = calloc(s->count, sizeof(*s->readers));
	if (!s->bitmap || !s->kind || !s->refs || !s->readers)
		goto err_free;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	for (i = 0; i < PCACHE_NHEADS; i++) {
		pthread_mutex_init(&c->heads[i].lock, NULL);
		c->heads[i].has_seg = false;
	}
	return 0;

err_free:
	free(s->bitmap);
	free(s->kind);
	free((void *)s->refs);
	free((void *)s->readers);
	return -ENOMEM;
}

void pcache_segs_exit(struct pcache_cache *c)
{
	struct pcache_segs *s = &c->segs;
	uint32_t i;

	for (i = 0; i < PCACHE_NHEADS; i++)
		pthread_mutex_destroy(&c->heads[i].lock);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s->bitmap);
	free(s->kind);
	free((void *)s->refs);
	free((void *)s->readers);
	s->bitmap = NULL;
	s->kind = NULL;
	s->refs = NULL;
	s->readers = NULL;
}

void pcache_seg_mark_used(struct pcache_cache *c, uint32_t seg, enum pcache_seg_kind kind)
{
	struct pcache_segs *s = &c->segs;

	pthread_mutex_lock(&s->lock);
	if (!bit_test(s->bitmap, seg)) {
		bit_set(s->bitmap, seg);
		s->nfree--;
	}
	s->kind[seg] = (uint8_t)kind;
	pthread_mutex_unlock(&s->lock);
}

static uint32_t find_free(struct pcache_segs *s)
{
	uint32_t i, idx;

	for (i = 0; i < s->count; i++) {
		idx = (s->hint + i) % s->count;
		if (!bit_test(s->bitmap, idx)) {
			s->hint = (idx + 1) % s->count;
			return idx;
		}
	}
	return UINT32_MAX;
}

/* A writer waiting for space since t0 has waited longer than it may (segs lock held). */
static bool space_timed_out(const struct pcache_segs *s, uint64_t t0)
{
	uint64_t limit = atomic_load_explicit(&s->wait_timeout_ns, memory_order_relaxed);

	return limit && pcache_now_ns() - t0 >= limit;
}

/* Count and report a writer that gave up waiting for space: -EIO (segs lock held). */
static int space_timeout_fail(struct pcache_segs *s)
{
	s->space_timeouts++;
	pcache_log(PCACHE_LOG_ERR, "a writer waited %llu s for cache space and gets EIO (%llu so far): "
		   "the writeback cannot free space (a failing or missing backing?)",
		   (unsigned long long)(atomic_load(&s->wait_timeout_ns) / 1000000000ull),
		   (unsigned long long)s->space_timeouts);
	return -EIO;
}

int pcache_seg_alloc(struct pcache_cache *c, bool for_log, bool wait, uint32_t *seg)
{
	struct pcache_segs *s = &c->segs;
	uint32_t reserve = for_log ? 0 : PCACHE_LOG_RESERVE;
	uint64_t ticket, t0 = 0;
	bool timed_out = false, kick = false;
	uint32_t idx;
	int ret = 0;

	pthread_mutex_lock(&s->lock);
	/* fast path: nobody queued and space is there */
	if (s->ticket_next == s->ticket_serving && s->nfree > reserve && !s->failed)
		goto take;
	if (s->failed) {
		ret = -EIO;
		goto out;
	}
	if (for_log) {
		/*
		 * Log allocations jump the queue and may use the reserve: persisting staged keys is
		 * what lets the queued writers go on once writeback and GC have run.
		 */
		while (s->nfree == 0 && wait && !s->failed && !s->aborted) {
			pthread_mutex_unlock(&s->lock);
			pcache_gc_kick(c);
			pthread_mutex_lock(&s->lock);
			if (s->nfree == 0 && !s->failed && !s->aborted) {
				s->waiters++;
				(void)pcache_cond_wait_ns(&s->cond, &s->lock, SPACE_POLL_NS);
				s->waiters--;
			}
		}
		if (s->failed || (s->nfree == 0 && s->aborted)) {
			ret = -EIO;
			goto out;
		}
		if (s->nfree > 0)
			goto take;
		ret = -ENOSPC;
		goto out;
	}
	if (!wait) {
		ret = -ENOSPC;
		goto out;
	}
	if (s->aborted) {
		ret = -EIO;
		goto out;
	}
	ticket = s->ticket_next++;
	s->waiters++;
	s->full_waits++;
	t0 = pcache_now_ns();
	while (!s->failed && !s->aborted && (ticket != s->ticket_serving || s->nfree <= reserve)) {
		/*
		 * Only the writer being served gives up (the FIFO stays intact): the ones behind it
		 * become served in turn and, their own deadline passed too, give up at once.
		 */
		if (ticket == s->ticket_serving && space_timed_out(s, t0)) {
			timed_out = true;
			break;
		}
		pthread_mutex_unlock(&s->lock);
		/* wake GC (and through it writeback and the heads) before sleeping */
		pcache_gc_kick(c);
		pthread_mutex_lock(&s->lock);
		if (!s->failed && !s->aborted && (ticket != s->ticket_serving || s->nfree <= reserve))
			(void)pcache_cond_wait_ns(&s->cond, &s->lock, SPACE_POLL_NS);
	}
	s->waiters--;
	s->ticket_serving++;
	s->full_wait_ns += pcache_now_ns() - t0;
	pthread_cond_broadcast(&s->cond);
	if (s->failed || s->aborted) {
		ret = -EIO;
		goto out;
	}
	if (timed_out) {
		ret = space_timeout_fail(s);
		goto out;
	}
take:
	idx = find_free(s);
	if (idx == UINT32_MAX) {
		ret = -ENOSPC;
		goto out;
	}
	bit_set(s->bitmap, idx);
	s->nfree--;
	s->allocs++;
	kick = s->nfree < atomic_load_explicit(&s->kick_below, memory_order_relaxed);
	s->kind[idx] = for_log ? PCACHE_SEG_LOG : PCACHE_SEG_DATA;
	atomic_store(&s->refs[idx], 0);
	/*
	 * Writer half of the hit path's seqlock-style check (invariant 6). The bump of this
	 * segment's generation by its last use happened before this point (the freeing thread
	 * bumped, then released s->lock, taken here); the fence orders it before every store the
	 * caller makes into the segment, data or kset. It pairs with the acquire fence in
	 * copy_hits() (cache_read.c). NOTE: a release fence (dmb ish on arm64) is cumulative, so a
	 * bump stored by another thread is covered too; the lock alone orders only what comes
	 * before its release.
	 */
	pcache_fence_release();
	*seg = idx;
out:
	pthread_mutex_unlock(&s->lock);
	if (kick)
		pcache_gc_kick(c); /* below GC's threshold: do not wait for its next tick */
	return ret;
}

void pcache_seg_free(struct pcache_cache *c, uint32_t seg)
{
	struct pcache_segs *s = &c->segs;

	pthread_mutex_lock(&s->lock);
	if (bit_test(s->bitmap, seg)) {
		bit_clear(s->bitmap, seg);
		s->nfree++;
		s->segs_freed++;
	}
	s->kind[seg] = PCACHE_SEG_FREE;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/*
 * A data segment's last reference is gone and no read pin was seen: free it unless a late
 * (stale) pin slipped in, whose unpin then frees it (invariant 5).
 */
static void seg_free_claim(struct pcache_cache *c, uint32_t seg)
{
	uint32_t expect = PCACHE_SEG_FREEING;

	if (atomic_compare_exchange_strong(&c->segs.readers[seg], &expect, 0))
		pcache_seg_free(c, seg);
}

void pcache_seg_get(struct pcache_cache *c, uint32_t seg)
{
	atomic_fetch_add(&c->segs.refs[seg], 1);
}

void pcache_seg_put(struct pcache_cache *c, uint32_t seg)
{
	uint32_t old = atomic_fetch_sub(&c->segs.refs[seg], 1);

	if (old != 1)
		return;
	/*
	 * Last reference: bump the generation durably (cache_dev persists the record before it
	 * returns) so every key of this use is stale, and only then make the segment allocatable.
	 */
	if (pcache_cache_dev_seg_gen_bump(c->cd, seg) != 0) {
		pcache_log(PCACHE_LOG_ERR, "segment %u: generation bump failed; segment leaked", seg);
		return;
	}
	atomic_fetch_add(&c->clean_pending, 1);
	/*
	 * The bump above is stored before this read-modify-write: a pin taken after it sees the
	 * new generation and backs off; a pin taken before it is counted in old (invariant 5).
	 */
	if (atomic_fetch_or(&c->segs.readers[seg], PCACHE_SEG_FREEING) == 0)
		seg_free_claim(c, seg);
	else
		atomic_fetch_add_explicit(&c->segs.pin_deferred, 1, memory_order_relaxed);
}

bool pcache_seg_read_pin(struct pcache_cache *c, uint32_t seg, uint64_t gen)
{
	/* the pin is counted before the generation is re-read (invariant 5) */
	atomic_fetch_add(&c->segs.readers[seg], 1);
	if (pcache_cache_dev_seg_gen(c->cd, seg) == gen)
		return true;
	pcache_seg_read_unpin(c, seg);
	return false;
}

void pcache_seg_read_unpin(struct pcache_cache *c, uint32_t seg)
{
	/* release: the pinned bytes were read before the segment can be freed and reused */
	if (atomic_fetch_sub(&c->segs.readers[seg], 1) == (PCACHE_SEG_FREEING | 1u))
		seg_free_claim(c, seg);
}

static unsigned int head_of_thread(void)
{
	static __thread unsigned int idx = UINT32_MAX;

	if (idx == UINT32_MAX) {
		uint64_t t = (uint64_t)syscall(SYS_gettid);

		idx = (unsigned int)((t * 0x9E3779B97F4A7C15ull) >> 60) % PCACHE_NHEADS;
	}
	return idx;
}

int pcache_data_alloc(struct pcache_cache *c, uint32_t len, bool wait, struct pcache_alloc *a)
{
	struct pcache_head *h = &c->heads[head_of_thread()];
	uint32_t seg, left;
	int ret;

	if (!wait) {
		/* the completion thread: never wait, not even for a head's lock */
		if (pthread_mutex_trylock(&h->lock) != 0)
			return -EAGAIN;
	} else {
		pthread_mutex_lock(&h->lock);
	}
	while (!h->has_seg) {
		/*
		 * Never wait for space with the head's lock held: the completion thread allocates
		 * from heads too, and writeback (which makes the space) needs it running.
		 */
		pthread_mutex_unlock(&h->lock);
		ret = pcache_seg_alloc(c, false, wait, &seg);
		if (ret)
			return ret;
		pthread_mutex_lock(&h->lock);
		if (h->has_seg) {
			/* another thread refilled the head meanwhile: give this one back unused */
			pcache_seg_free(c, seg);
			break;
		}
		atomic_store(&c->segs.refs[seg], 1); /* the head's pin */
		h->seg = seg;
		h->off = 0;
		h->gen = pcache_cache_dev_seg_gen(c->cd, seg);
		h->has_seg = true;
	}
	left = (uint32_t)c->seg_size - h->off;
	a->seg = h->seg;
	a->seg_off = h->off;
	a->gen = h->gen;
	a->len = PCACHE_MIN(len, left);
	pcache_seg_get(c, h->seg); /* the key's reference */
	h->off += a->len;
	h->last_ns = pcache_now_ns();
	if (h->off == c->seg_size) {
		/* exhausted: drop the pin, the next allocation takes a fresh segment */
		h->has_seg = false;
		pcache_seg_put(c, h->seg);
	}
	pthread_mutex_unlock(&h->lock);
	return 0;
}

void pcache_heads_release(struct pcache_cache *c, bool force)
{
	uint64_t now = pcache_now_ns();
	uint32_t i;

	for (i = 0; i < PCACHE_NHEADS; i++) {
		struct pcache_head *h = &c->heads[i];

		if (pthread_mutex_trylock(&h->lock) != 0)
			continue;
		if (h->has_seg && (force || now - h->last_ns > PCACHE_HEAD_IDLE_NS)) {
			/* the unused rest of the segment is given up; it frees with its keys */
			h->has_seg = false;
			pcache_seg_put(c, h->seg);
		}
		pthread_mutex_unlock(&h->lock);
	}
}

int pcache_space_wait(struct pcache_cache *c)
{
	struct pcache_segs *s = &c->segs;
	uint64_t t0;
	int ret = 0;

	pthread_mutex_lock(&s->lock);
	if (s->nfree > PCACHE_LOG_RESERVE && !s->failed)
		goto out;
	if (s->aborted) {
		ret = -EIO;
		goto out;
	}
	s->full_waits++;
	t0 = pcache_now_ns();
	while (s->nfree <= PCACHE_LOG_RESERVE && !s->failed && !s->aborted) {
		if (space_timed_out(s, t0)) {
			s->full_wait_ns += pcache_now_ns() - t0;
			ret = space_timeout_fail(s);
			goto out;
		}
		pthread_mutex_unlock(&s->lock);
		pcache_gc_kick(c);
		pthread_mutex_lock(&s->lock);
		s->waiters++;
		(void)pcache_cond_wait_ns(&s->cond, &s->lock, SPACE_POLL_NS);
		s->waiters--;
	}
	s->full_wait_ns += pcache_now_ns() - t0;
	if (s->failed || s->aborted)
		ret = -EIO;
out:
	pthread_mutex_unlock(&s->lock);
	return ret;
}

uint32_t pcache_segs_used(struct pcache_cache *c, uint32_t *data, uint32_t *log)
{
	struct pcache_segs *s = &c->segs;
	uint32_t i, d = 0, l = 0, used;

	pthread_mutex_lock(&s->lock);
	for (i = 0; i < s->count; i++) {
		if (s->kind[i] == PCACHE_SEG_DATA)
			d++;
		else if (s->kind[i] == PCACHE_SEG_LOG)
			l++;
	}
	used = s->count - s->nfree;
	pthread_mutex_unlock(&s->lock);
	if (data)
		*data = d;
	if (log)
		*log = l;
	return used;
}

void pcache_segs_fail(struct pcache_cache *c)
{
	pthread_mutex_lock(&c->segs.lock);
	c->segs.failed = true;
	pthread_cond_broadcast(&c->segs.cond);
	pthread_mutex_unlock(&c->segs.lock);
}

void pcache_segs_abort_waits(struct pcache_cache *c)
{
	pthread_mutex_lock(&c->segs.lock);
	c->segs.aborted = true;
	pthread_cond_broadcast(&c->segs.cond);
	pthread_mutex_unlock(&c->segs.lock);
}
