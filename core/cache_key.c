/*
 * cache_key.c -- the index: per image, one sorted array of non-overlapping keys per 4 MiB
 * region ("subtree"), each with its own mutex.
 *
 * A sorted array was chosen over a tree: a region holds at most 8192 keys (512 B sectors) and
 * typically a few hundred; binary search plus one memmove per insert beats pointer chasing,
 * and the cost per extent is sizeof(struct pcache_ikey) = 40 B (up to 2x with array slack),
 * against ~100 B for dm-pcache's rb-tree node.
 *
 * Invariants:
 *  1. Keys of a subtree are sorted by off and never overlap (EMPTY placeholders included).
 *  2. Insert with fixup: a new key removes what it covers; a key overlapping its
 *     front keeps its head part, a key overlapping its back keeps its tail part with the pmem
 *     position advanced. An EMPTY placeholder is never cut at the front: its tail part is
 *     dropped instead, so a miss fill always starts at the placeholder's own offset.
 *  3. The inserted key is never EMPTY during fixup of other keys: placeholders are only added
 *     into holes found under the same lock hold.
 *  4. Only insert, remove and reserve change a subtree's keys or slots, and each updates the
 *     index totals (struct pcache_index_totals) in the same lock hold, so status reads them
 *     instead of walking the index.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cache_i.h"

static uint32_t regions_of(uint64_t size)
{
	uint64_t n = (size + PCACHE_REGION_SIZE - 1) >> PCACHE_REGION_SHIFT;

	return n ? (uint32_t)n : 1;
}

int pcache_index_init(struct pcache_index *ix, uint64_t size, uint64_t max_size)
{
	uint32_t n = regions_of(size);
	void *p;

	ix->cap = PCACHE_MAX(regions_of(max_size), n);
	/* address space for every region the image may grow to; pages are touched (and count)
	 * only as regions come into use */
	ix->map_len = PCACHE_ALIGN_UP((size_t)ix->cap * sizeof(*ix->sub), (size_t)4096);
	p = mmap(NULL, ix->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		ix->sub = NULL;
		return -ENOMEM;
	}
	ix->sub = p;
	atomic_init(&ix->tot.keys, 0);
	atomic_init(&ix->tot.cached, 0);
	atomic_init(&ix->tot.dirty, 0);
	atomic_init(&ix->tot.cap, 0);
	atomic_init(&ix->nsub, 0);
	return pcache_index_grow(ix, size);
}

int pcache_index_grow(struct pcache_index *ix, uint64_t size)
{
	uint32_t n = regions_of(size), i;

	if (n > ix->cap)
		return -EFBIG;
	for (i = ix->nsub; i < n; i++) {
		pthread_mutex_init(&ix->sub[i].lock, NULL);
		ix->sub[i].tot = &ix->tot;
	}
	/* published after the subtrees it counts are ready */
	if (n > ix->nsub)
		atomic_store_explicit(&ix->nsub, n, memory_order_release);
	return 0;
}

/* Count key k into the totals t (sign 1) or out of them (sign -1). */
static void totals_add(struct pcache_index_totals *t, const struct pcache_ikey *k, int64_t sign)
{
	if (!t || (k->flags & PCACHE_IKEY_EMPTY))
		return;
	atomic_fetch_add_explicit(&t->keys, sign, memory_order_relaxed);
	atomic_fetch_add_explicit(&t->cached, sign * (int64_t)k->len, memory_order_relaxed);
	if (!(k->flags & PCACHE_KEY_CLEAN))
		atomic_fetch_add_explicit(&t->dirty, sign * (int64_t)k->len, memory_order_relaxed);
}

void pcache_index_exit(struct pcache_index *ix)
{
	uint32_t i;

	if (!ix->sub)
		return;
	for (i = 0; i < ix->nsub; i++) {
		pthread_mutex_destroy(&ix->sub[i].lock);
		free(ix->sub[i].v);
	}
	munmap(ix->sub, ix->map_len);
	ix->sub = NULL;
	ix->nsub = 0;
}

bool pcache_mutex_trylock_bounded(pthread_mutex_t *m)
{
	int i;

	for (i = 0; i < 256; i++) {
		if (pthread_mutex_trylock(m) == 0)
			return true;
		sched_yield();
	}
	return false;
}

bool pcache_subtree_trylock_bounded(struct pcache_subtree *sub)
{
	return pcache_mutex_trylock_bounded(&sub->lock);
}

uint32_t pcache_subtree_find(const struct pcache_subtree *st, uint32_t off)
{
	uint32_t lo = 0, hi = st->n;

	/* ends are sorted too (keys do not overlap): first key with off + len > off */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct pcache_ikey *k = &st->v[mid];

		if (k->off + k->len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int pcache_subtree_reserve(struct pcache_subtree *st, uint32_t extra)
{
	uint32_t need = st->n + extra, cap;
	struct pcache_ikey *v;

	if (need <= st->cap)
		return 0;
	cap = st->cap ? st->cap : 8;
	while (cap < need)
		cap *= 2;
	v = realloc(st->v, (size_t)cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	if (st->tot)
		atomic_fetch_add_explicit(&st->tot->cap, (int64_t)cap - st->cap, memory_order_relaxed);
	st->v = v;
	st->cap = cap;
	return 0;
}

void pcache_subtree_remove(struct pcache_subtree *st, uint32_t i)
{
	totals_add(st->tot, &st->v[i], -1);
	memmove(&st->v[i], &st->v[i + 1], (size_t)(st->n - i - 1) * sizeof(st->v[0]));
	st->n--;
}

int pcache_subtree_punch(struct pcache_subtree *st, uint32_t off, uint32_t len)
{
	struct pcache_ikey hole = { .off = off, .len = len, .flags = PCACHE_KEY_ZERO | PCACHE_KEY_CLEAN };
	uint32_t i;
	int ret;

	/* the hole replaces the bytes like any newer key, then goes itself */
	ret = pcache_subtree_insert(st, &hole);
	if (ret)
		return ret;
	i = pcache_subtree_find(st, off);
	pcache_subtree_remove(st, i);
	return 0;
}

int pcache_subtree_insert(struct pcache_subtree *st, const struct pcache_ikey *k)
{
	struct pcache_ikey pieces[3];
	uint32_t np = 0, i, j, start = k->off, end = k->off + k->len;
	int ret;

	i = pcache_subtree_find(st, start);
	j = i;
	while (j < st->n && st->v[j].off < end)
		j++;
	if (i < j && st->v[i].off < start) {
		/* head / contained: the overlapped key keeps its front part */
		pieces[np] = st->v[i];
		pieces[np].len = start - st->v[i].off;
		np++;
	}
	pieces[np++] = *k;
	if (i < j && st->v[j - 1].off + st->v[j - 1].len > end &&
	    !(st->v[j - 1].flags & PCACHE_IKEY_EMPTY)) {
		/* tail / contained: the overlapped key keeps its back part, data position advanced */
		const struct pcache_ikey *t = &st->v[j - 1];
		uint32_t cut = end - t->off;

		pieces[np] = *t;
		pieces[np].off = end;
		pieces[np].len = t->len - cut;
		if (!(t->flags & PCACHE_KEY_ZERO)) {
			pieces[np].seg_off = t->seg_off + cut;
			pieces[np].crc_front = t->crc_front + cut;
		}
		np++;
	}
	/* replace v[i, j) by pieces[0, np) */
	if (np > j - i) {
		ret = pcache_subtree_reserve(st, np - (j - i));
		if (ret)
			return ret;
	}
	for (uint32_t m = i; m < j; m++)
		totals_add(st->tot, &st->v[m], -1);
	for (uint32_t m = 0; m < np; m++)
		totals_add(st->tot, &pieces[m], 1);
	if (np != j - i)
		memmove(&st->v[i + np], &st->v[j], (size_t)(st->n - j) * sizeof(st->v[0]));
	memcpy(&st->v[i], pieces, np * sizeof(pieces[0]));
	st->n = st->n - (j - i) + np;
	return 0;
}

void pcache_index_count(struct pcache_index *ix, uint64_t *cached, uint64_t *dirty, uint64_t *keys)
{
	uint64_t cb = 0, db = 0, nk = 0;
	uint32_t s, i;

	for (s = 0; s < ix->nsub; s++) {
		struct pcache_subtree *st = &ix->sub[s];

		pthread_mutex_lock(&st->lock);
		for (i = 0; i < st->n; i++) {
			const struct pcache_ikey *k = &st->v[i];

			if (k->flags & PCACHE_IKEY_EMPTY)
				continue;
			nk++;
			cb += k->len;
			if (!(k->flags & PCACHE_KEY_CLEAN))
				db += k->len;
		}
		pthread_mutex_unlock(&st->lock);
	}
	if (cached)
		*cached = cb;
	if (dirty)
		*dirty = db;
	if (keys)
		*keys = nk;
}

/* A total read while keys come and go; never below 0. */
static uint64_t totals_get(_Atomic int64_t *v)
{
	int64_t x = atomic_load_explicit(v, memory_order_relaxed);

	return x > 0 ? (uint64_t)x : 0;
}

void pcache_index_totals(struct pcache_index *ix, uint64_t *cached, uint64_t *dirty, uint64_t *keys,
			 uint64_t *cap)
{
	if (cached)
		*cached = totals_get(&ix->tot.cached);
	if (dirty)
		*dirty = totals_get(&ix->tot.dirty);
	if (keys)
		*keys = totals_get(&ix->tot.keys);
	if (cap)
		*cap = totals_get(&ix->tot.cap);
}
