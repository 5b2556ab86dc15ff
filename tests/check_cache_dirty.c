/*
 * check_cache_dirty.c -- the per-image dirty counters (struct pcache_image dirty_keys and
 * dirty_bytes, core/cache_wbglue.c, core/cache_req.c, core/cache_wb_batch.c ops.image_passed)
 * that status and stats reads use instead of a walk of the log under the GC lock. After writes,
 * discards, every writeback batch, GC, a restart (replay), a detach and attach, and with
 * another image holding dirty_tail back, the counters must equal a walk of the log and the
 * staging ksets (pcache_image_dirty_walk()), and the index totals a walk of the index
 * (pcache_index_count()). And a status read never takes the GC lock.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "../core/cache_writeback.h"
#include "check_util.h"
#include "lib/engine_util.h"

#define IMG_SIZE (8u << 20)

static char cpath[256], ipath[2][256];
static struct pcache_cache *c;
static struct pcache_image *img[2];

static void attach(int i)
{
	struct pcache_attach_opts ao = { .name = i ? "b" : "a", .path = ipath[i], .cache_mode = -1 };
	char err[256];

	ck_assert_msg(pcache_image_attach(c, &ao, &img[i], err, sizeof(err)) == 0, "attach: %s", err);
}

static void detach(int i)
{
	pcache_image_put(img[i]);
	img[i] = NULL;
	ck_assert_int_eq(pcache_image_detach(c, i ? "b" : "a", false), 0);
}

static void setup(void)
{
	char err[256];

	check_scratch_path(cpath, sizeof(cpath), "dirty-cache");
	check_scratch_path(ipath[0], sizeof(ipath[0]), "dirty-img-a");
	check_scratch_path(ipath[1], sizeof(ipath[1]), "dirty-img-b");
	ck_assert_int_eq(eng_format(cpath, 128u << 20, 1u << 20, false), 0);
	eng_make_image(ipath[0], IMG_SIZE, 1);
	eng_make_image(ipath[1], IMG_SIZE, 2);
	ck_assert_msg(eng_start(cpath, ipath[0], "a", false, false, &c, &img[0], err,
				sizeof(err)) == 0, "start: %s", err);
}

static void teardown(void)
{
	if (img[1])
		pcache_image_put(img[1]);
	img[1] = NULL;
	eng_close(&c, &img[0], cpath, ipath[0]);
	unlink(ipath[1]);
}

/* Stop without a drain and start again (replay), with the images that were attached. */
static void restart(void)
{
	bool had_b = img[1] != NULL;
	char err[256];

	for (int i = 0; i < 2; i++) {
		if (img[i])
			pcache_image_put(img[i]);
		img[i] = NULL;
	}
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	ck_assert_msg(eng_start(cpath, ipath[0], "a", false, false, &c, &img[0], err,
				sizeof(err)) == 0, "start: %s", err);
	if (had_b)
		attach(1);
}

/* The counters of image i equal a walk of the log and the stages; returns the dirty keys. */
#define counters_match(i) counters_match_at(i, __LINE__)
static uint64_t counters_match_at(int i, int line)
{
	uint64_t keys, bytes;

	pcache_image_dirty_walk(c, img[i]->id, &keys, &bytes);
	ck_assert_msg(atomic_load(&img[i]->dirty_keys) == (int64_t)keys &&
		      atomic_load(&img[i]->dirty_bytes) == (int64_t)bytes,
		      "line %d, image %d: counters %lld keys / %lld bytes, the log %llu / %llu", line,
		      i, (long long)atomic_load(&img[i]->dirty_keys),
		      (long long)atomic_load(&img[i]->dirty_bytes), (unsigned long long)keys,
		      (unsigned long long)bytes);
	return keys;
}

static void wr(int i, uint64_t off, size_t len, uint32_t v)
{
	ck_assert_int_eq(eng_write(img[i], off, len, i + 1, v), 0);
}

START_TEST(counters_follow_writes_discards_batches_and_gc)
{
	struct pcache_image_stats st;
	int r;

	counters_match(0);
	wr(0, 0, 65536, 1);
	wr(0, 16384, 16384, 2);                  /* overlaps: counted twice, like the log */
	ck_assert_int_eq(pcache_image_discard(img[0], 1u << 20, 65536, true), 0);
	ck_assert_uint_eq(counters_match(0), 3); /* staged only */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 5u << 20, 8192, 3);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 0, 4096, 4);
	ck_assert_int_eq(pcache_stages_close_all(c, false, false, false), 0);
	counters_match(0);
	while ((r = pcache_wb_run_once(c->wb)) == 1)
		counters_match(0);                /* after every batch (one epoch each) */
	ck_assert_int_eq(r, 0);
	ck_assert_uint_eq(counters_match(0), 0);
	pcache_image_get_stats(img[0], &st);
	ck_assert_uint_eq(st.dirty_bytes, 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	pcache_heads_release(c, true);
	(void)pcache_gc_run(c);
	ck_assert_uint_eq(counters_match(0), 0);
	wr(0, 65536, 4096, 5);
	ck_assert_uint_eq(counters_match(0), 1);
	pcache_image_get_stats(img[0], &st);
	ck_assert_uint_eq(st.dirty_bytes, 4096);
}
END_TEST

START_TEST(counters_are_rebuilt_by_replay_and_attach)
{
	wr(0, 0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 0, 65536, 2);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1); /* the first epoch only */
	ck_assert_uint_eq(counters_match(0), 1);
	restart();
	ck_assert_uint_eq(counters_match(0), 1);
	detach(0);
	attach(0);
	ck_assert_uint_eq(counters_match(0), 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(counters_match(0), 0);
	restart();
	ck_assert_uint_eq(counters_match(0), 0);
}
END_TEST

/* Image b, detached with dirty data, holds dirty_tail back; image a's writeback goes on past
 * it, and its counters (also when attached again) start from its own progress. */
START_TEST(counters_follow_an_image_ahead_of_dirty_tail)
{
	attach(1);
	wr(1, 0, 65536, 1);
	wr(0, 0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	detach(1);
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	ck_assert_uint_eq(counters_match(0), 0);
	detach(0);
	attach(0);
	ck_assert_uint_eq(counters_match(0), 0);
	attach(1);
	ck_assert_uint_eq(counters_match(1), 1);
	restart();                         /* the replay starts at dirty_tail: a's key counts again */
	ck_assert_uint_eq(counters_match(0), 1);
	ck_assert_uint_eq(counters_match(1), 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(counters_match(0), 0);
	ck_assert_uint_eq(counters_match(1), 0);
}
END_TEST

/* The index totals (status) equal a walk of the index, and the slots its subtrees hold. */
#define totals_match(i) totals_match_at(i, __LINE__)
static void totals_match_at(int i, int line)
{
	struct pcache_index *ix = &img[i]->ix;
	uint64_t tc, td, tk, tcap, wc, wd, wk, wcap = 0;

	pcache_index_totals(ix, &tc, &td, &tk, &tcap);
	pcache_index_count(ix, &wc, &wd, &wk);
	for (uint32_t s = 0; s < ix->nsub; s++) {
		pthread_mutex_lock(&ix->sub[s].lock);
		wcap += ix->sub[s].cap;
		pthread_mutex_unlock(&ix->sub[s].lock);
	}
	ck_assert_msg(tc == wc && td == wd && tk == wk && tcap == wcap,
		      "line %d: totals %llu cached / %llu dirty / %llu keys / %llu slots, the index "
		      "%llu / %llu / %llu / %llu", line, (unsigned long long)tc,
		      (unsigned long long)td, (unsigned long long)tk, (unsigned long long)tcap,
		      (unsigned long long)wc, (unsigned long long)wd, (unsigned long long)wk,
		      (unsigned long long)wcap);
}

/* Random writes, discards, reads (miss fills), flushes, batches, GC and restarts. */
START_TEST(counters_and_index_totals_follow_a_random_run)
{
	unsigned int seed = eng_seed("dirty");
	uint8_t *buf = malloc(256u << 10);

	for (int step = 0; step < 600; step++) {
		uint64_t off = (uint64_t)(rand_r(&seed) % (IMG_SIZE / 512 - 512)) * 512;
		size_t len = (size_t)(1 + rand_r(&seed) % 512) * 512;
		int op = rand_r(&seed) % 100;

		if (op < 45) {
			wr(0, off, len, (uint32_t)step + 1);
		} else if (op < 55) {
			ck_assert_int_eq(pcache_image_discard(img[0], off, len, true), 0);
		} else if (op < 80) {
			ck_assert_int_eq(eng_read(img[0], buf, off, len), 0);
		} else if (op < 88) {
			ck_assert_int_eq(pcache_cache_flush(c), 0);
		} else if (op < 93) {
			ck_assert_int_ge(pcache_wb_run_once(c->wb), 0);
		} else if (op < 97) {
			ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
			pcache_heads_release(c, true);
			(void)pcache_gc_run(c);
			pcache_gc_clean(c, UINT32_MAX);
		} else if (op < 99) {
			ck_assert_int_eq(pcache_stages_close_all(c, false, false, false), 0);
		} else {
			restart();
		}
		counters_match(0);
		totals_match(0);
	}
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(counters_match(0), 0);
	totals_match(0);
	free(buf);
}
END_TEST

static _Atomic bool status_done;

static void *status_reader(void *arg)
{
	struct pcache_image_stats is;
	struct pcache_cache_status cs;

	(void)arg;
	pcache_image_get_stats(img[0], &is);
	pcache_cache_get_status(c, &cs);
	atomic_store(&status_done, true);
	return NULL;
}

/* GC holds its lock around a step; status and stats reads never wait for it. */
START_TEST(a_status_read_never_takes_the_gc_lock)
{
	pthread_t t;
	bool done = false;

	wr(0, 0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	atomic_store(&status_done, false);
	pthread_mutex_lock(&c->gc_lock);
	ck_assert_int_eq(pthread_create(&t, NULL, status_reader, NULL), 0);
	for (int i = 0; i < 300 && !(done = atomic_load(&status_done)); i++)
		usleep(10 * 1000);
	pthread_mutex_unlock(&c->gc_lock);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_msg(done, "a status read waited for the GC lock");
}
END_TEST

Suite *cache_dirty_suite(void);
Suite *cache_dirty_suite(void)
{
	Suite *s = suite_create("cache_dirty");
	TCase *tc = tcase_create("Counters");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, counters_follow_writes_discards_batches_and_gc);
	tcase_add_test(tc, counters_are_rebuilt_by_replay_and_attach);
	tcase_add_test(tc, counters_follow_an_image_ahead_of_dirty_tail);
	tcase_add_test(tc, a_status_read_never_takes_the_gc_lock);
	tcase_add_test(tc, counters_and_index_totals_follow_a_random_run);
	suite_add_tcase(s, tc);
	return s;
}
