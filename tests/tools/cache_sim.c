/*
 * cache_sim.c -- the reference hit ratio of an I/O trace: replay an fio iolog (version 2, or 3
 * with a timestamp first on each line, as fio --write_iolog writes it) through simple cache policies of a given size and print the
 * share of read bytes each would have served from the cache.
 *
 *   cache_sim --cache SIZE [--block SIZE] [--warmup OPS] IOLOG...
 *
 * The cache holds blocks (default 4 KiB) of every file of the trace; a read of a block not in
 * it is a miss and inserts it (read allocate), a write inserts it too (write allocate, as a
 * writeback cache does); trims remove. The first OPS reads and writes only warm the cache. The
 * policies: LRU (evict the least recently used block) and FIFO (evict the oldest insertion).
 * Output, one line per policy: "lru hit 93.31% of 1234567 read bytes (cache 1008 MiB)".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/iolog.h"
#include "pcache/util.h"

/* One policy: a hash of block -> node, a doubly linked list in eviction order (head = next out). */
struct sim {
	const char *name;
	bool touch_on_hit;          /* LRU moves a hit to the tail; FIFO and CLOCK do not */
	uint8_t ref_max;            /* CLOCK: a hit counts up to this; 0 = not CLOCK */
	uint8_t *ref;               /* CLOCK: per node, hits not yet spent */
	uint64_t copied;            /* CLOCK: blocks given another pass (copied forward) */
	uint64_t cap, n;
	uint64_t *key;              /* node i holds block key[i]; UINT64_MAX = free */
	uint32_t *prev, *next;
	uint32_t head, tail;        /* UINT32_MAX = empty */
	uint32_t *slot;             /* hash slot -> node + 1 (0 = empty), open addressing */
	uint64_t nslots;
	uint32_t free_top;
	uint32_t *free_list;
	uint64_t read_bytes, hit_bytes;
};

#define NIL UINT32_MAX

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static int sim_init(struct sim *s, const char *name, bool touch, uint8_t ref_max, uint64_t cap)
{
	memset(s, 0, sizeof(*s));
	s->name = name;
	s->touch_on_hit = touch;
	s->ref_max = ref_max;
	s->cap = cap;
	s->ref = calloc(cap, 1);
	for (s->nslots = 1; s->nslots < cap * 2; s->nslots <<= 1)
		;
	s->key = malloc(cap * sizeof(*s->key));
	s->prev = malloc(cap * sizeof(*s->prev));
	s->next = malloc(cap * sizeof(*s->next));
	s->free_list = malloc(cap * sizeof(*s->free_list));
	s->slot = calloc(s->nslots, sizeof(*s->slot));
	if (!s->key || !s->prev || !s->next || !s->free_list || !s->slot || !s->ref)
		return -ENOMEM;
	for (uint64_t i = 0; i < cap; i++)
		s->free_list[i] = (uint32_t)(cap - 1 - i);
	s->free_top = (uint32_t)cap;
	s->head = s->tail = NIL;
	return 0;
}

/* Hash slot of block b: where it is, or the empty slot where it would go. */
static uint64_t sim_find(const struct sim *s, uint64_t b)
{
	uint64_t h = mix(b) & (s->nslots - 1);

	while (s->slot[h] && s->key[s->slot[h] - 1] != b)
		h = (h + 1) & (s->nslots - 1);
	return h;
}

static void list_unlink(struct sim *s, uint32_t i)
{
	if (s->prev[i] != NIL)
		s->next[s->prev[i]] = s->next[i];
	else
		s->head = s->next[i];
	if (s->next[i] != NIL)
		s->prev[s->next[i]] = s->prev[i];
	else
		s->tail = s->prev[i];
}

static void list_append(struct sim *s, uint32_t i)
{
	s->prev[i] = s->tail;
	s->next[i] = NIL;
	if (s->tail != NIL)
		s->next[s->tail] = i;
	else
		s->head = i;
	s->tail = i;
}

/* Remove the node in hash slot h (backward-shift deletion keeps the probe chains whole). */
static void sim_remove_slot(struct sim *s, uint64_t h)
{
	uint32_t i = s->slot[h] - 1;
	uint64_t j = h;

	list_unlink(s, i);
	s->free_list[s->free_top++] = i;
	s->n--;
	s->slot[h] = 0;
	for (;;) {
		uint64_t home;

		j = (j + 1) & (s->nslots - 1);
		if (!s->slot[j])
			return;
		home = mix(s->key[s->slot[j] - 1]) & (s->nslots - 1);
		/* move slot j back to h if its home is not in (h, j] */
		if ((j > h && (home <= h || home > j)) || (j < h && home <= h && home > j)) {
			s->slot[h] = s->slot[j];
			s->slot[j] = 0;
			h = j;
		}
	}
}

/* Access block b: returns true on a hit. insert: a miss brings it in. */
static bool sim_access(struct sim *s, uint64_t b, bool insert)
{
	uint64_t h = sim_find(s, b);
	uint32_t i;

	if (s->slot[h]) {
		i = s->slot[h] - 1;
		if (s->ref[i] < s->ref_max)
			s->ref[i]++;
		if (s->touch_on_hit) {
			list_unlink(s, i);
			list_append(s, i);
		}
		return true;
	}
	if (!insert || !s->cap)
		return false;
	if (s->n == s->cap) {
		/* CLOCK: a block hit since its last pass spends one hit and goes round again */
		while (s->ref[s->head]) {
			uint32_t o = s->head;

			s->ref[o]--;
			list_unlink(s, o);
			list_append(s, o);
			s->copied++;
		}
		sim_remove_slot(s, sim_find(s, s->key[s->head]));
	}
	h = sim_find(s, b); /* the removal may have moved slots */
	i = s->free_list[--s->free_top];
	s->key[i] = b;
	s->ref[i] = 0;
	s->slot[h] = i + 1;
	list_append(s, i);
	s->n++;
	return false;
}

static void sim_trim(struct sim *s, uint64_t b)
{
	uint64_t h = sim_find(s, b);

	if (s->slot[h])
		sim_remove_slot(s, h);
}

#define NSIM 4

/* Block keys: a file index in the top 16 bits, the block number below. */
#define MAX_FILES 64
static char *files[MAX_FILES];
static int nfiles;

static uint64_t file_index(const char *name)
{
	for (int i = 0; i < nfiles; i++)
		if (!strcmp(files[i], name))
			return (uint64_t)i;
	if (nfiles == MAX_FILES) {
		fprintf(stderr, "cache_sim: more than %d files in the trace\n", MAX_FILES);
		exit(2);
	}
	files[nfiles] = strdup(name);
	return (uint64_t)nfiles++;
}

int main(int argc, char **argv)
{
	struct sim sims[NSIM];
	uint64_t cache = 0, block = 4096, warmup = 0, ops = 0;
	static struct iolog_op op;
	int i, nf = 0;

	for (i = 1; i < argc && argv[i][0] == '-'; i += 2) {
		uint64_t *dst = !strcmp(argv[i], "--cache") ? &cache : !strcmp(argv[i], "--block") ? &block :
				!strcmp(argv[i], "--warmup") ? &warmup : NULL;

		if (!dst || i + 1 >= argc || pcache_parse_size(argv[i + 1], dst)) {
			fprintf(stderr, "usage: cache_sim --cache SIZE [--block SIZE] [--warmup OPS] IOLOG...\n");
			return 2;
		}
	}
	if (!cache || !block || i >= argc || cache / block > UINT32_MAX - 1) {
		fprintf(stderr, "usage: cache_sim --cache SIZE [--block SIZE] [--warmup OPS] IOLOG...\n");
		return 2;
	}
	if (sim_init(&sims[0], "lru", true, 0, cache / block) || sim_init(&sims[1], "fifo", false, 0, cache / block) ||
	    sim_init(&sims[2], "clock", false, 1, cache / block) ||
	    sim_init(&sims[3], "clock3", false, 3, cache / block)) {
		fprintf(stderr, "cache_sim: out of memory\n");
		return 1;
	}
	for (; i < argc; i++) {
		struct iolog l;

		if (iolog_open(&l, argv[i], "cache_sim"))
			return 1;
		nf++;
		while (iolog_next(&l, &op)) {
			uint64_t fi, b, e, off = op.off, len = op.len;
			bool wr = op.kind == IOLOG_WRITE, tr = op.kind == IOLOG_TRIM;

			fi = file_index(op.file);
			ops++;
			for (b = off / block, e = (off + len + block - 1) / block; b < e; b++) {
				uint64_t key = fi << 48 | b;
				/* the bytes of this request inside block b */
				uint64_t lo = PCACHE_MAX(off, b * block), hi = PCACHE_MIN(off + len, (b + 1) * block);

				for (int k = 0; k < NSIM; k++) {
					struct sim *s = &sims[k];

					if (tr) {
						sim_trim(s, key);
					} else if (wr) {
						sim_access(s, key, true);
					} else {
						bool hit = sim_access(s, key, true);

						if (ops > warmup) {
							s->read_bytes += hi - lo;
							s->hit_bytes += hit ? hi - lo : 0;
						}
					}
				}
			}
		}
		iolog_close(&l);
	}
	for (int k = 0; k < NSIM; k++) {
		char c[32];

		printf("%s hit %.2f%% of %" PRIu64 " read bytes (cache %s, %" PRIu64 " ops, %" PRIu64
		       " warm-up, %d trace%s", sims[k].name,
		       sims[k].read_bytes ? 100.0 * (double)sims[k].hit_bytes / (double)sims[k].read_bytes : 0.0,
		       sims[k].read_bytes, pcache_fmt_size(cache, c, sizeof(c)), ops, PCACHE_MIN(warmup, ops), nf,
		       nf == 1 ? "" : "s");
		if (sims[k].ref_max)
			printf(", %" PRIu64 " blocks copied forward", sims[k].copied);
		printf(")\n");
	}
	return 0;
}
