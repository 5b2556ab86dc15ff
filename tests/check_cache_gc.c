/*
 * check_cache_gc.c -- GC and back-pressure (core/cache_gc.c, core/segment.c): gc_percent is
 * honoured, freed data segments get their generation bumped and stale keys fall back to the
 * backing image, idle data heads do not pin segments, and writers that fill the cache wait for
 * space (counted) and complete with correct data.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void start(bool background, uint64_t cache_size, uint64_t img_size)
{
	char err[256];

	ck_assert_int_eq(eng_format(cpath, cache_size, 1u << 20, false), 0);
	eng_make_image(ipath, img_size, 1);
	ck_assert_msg(eng_start(cpath, ipath, "g", background, false, &c, &img, err, sizeof(err)) == 0,
		      "start: %s", err);
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "gc-cache");
	check_scratch_path(ipath, sizeof(ipath), "gc-img");
}

static void teardown(void)
{
	eng_close(&c, &img, cpath, ipath);
}

static void wr(uint64_t off, size_t len, uint32_t v)
{
	ck_assert_int_eq(eng_write(img, off, len, 1, v), 0);
}

static void expect(uint64_t off, size_t len, uint32_t want)
{
	uint8_t *buf = malloc(len);
	uint32_t v;
	size_t s;

	ck_assert_int_eq(eng_read(img, buf, off, len), 0);
	for (s = 0; s < len; s += 512) {
		ck_assert_int_eq(eng_decode(buf + s, 1, off + s, &v), 0);
		ck_assert_msg(v == want, "sector %llu: %u want %u", (unsigned long long)(off + s) / 512, v, want);
	}
	free(buf);
}

START_TEST(gc_percent_gates_collection)
{
	struct pcache_cache_status st;

	start(false, 24u << 20, 8u << 20);
	wr(0, 2u << 20, 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	pcache_heads_release(c, true);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 90), 0);
	ck_assert_int_eq(pcache_gc_run(c), 0); /* usage far below 90 % */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_ge(st.segs_freed, 2);
	ck_assert_uint_eq(st.segs_data, 0);
	ck_assert_uint_eq(st.key_tail.lsn, st.dirty_tail.lsn); /* stopped at dirty_tail */
	/* the data is still readable: stale keys fall back to the (written back) backing */
	expect(0, 2u << 20, 1);
}
END_TEST

START_TEST(gc_never_passes_dirty_tail)
{
	struct pcache_cache_status st;

	start(false, 24u << 20, 8u << 20);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	wr(0, 1u << 20, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	pcache_heads_release(c, true);
	ck_assert_int_eq(pcache_gc_run(c), 0); /* nothing written back: nothing to collect */
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.segs_freed, 0);
	expect(0, 1u << 20, 1);
}
END_TEST

START_TEST(freed_segment_reuse_makes_old_keys_stale)
{
	struct pcache_cache_status st;
	uint32_t seg;
	uint64_t gen;

	start(false, 24u << 20, 8u << 20);
	wr(0, 1u << 20, 1); /* fills exactly one data segment */
	seg = img->ix.sub[0].v[0].seg;
	gen = pcache_cache_dev_seg_gen(c->cd, seg);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(c->cd, seg), gen + 1);
	/* reuse everything: other data overwrites the freed segment */
	wr(4u << 20, 4u << 20, 2);
	expect(0, 1u << 20, 1);     /* served from the backing, never from the reused segment */
	expect(4u << 20, 4u << 20, 2);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_ge(st.segs_freed, 1);
}
END_TEST

/* Read [off, off + len) (expecting version want) and return the bytes served from the cache. */
static uint64_t hits_of(uint64_t off, size_t len, uint32_t want)
{
	uint64_t h0 = atomic_load(&img->read_hit_bytes);

	expect(off, len, want);
	return atomic_load(&img->read_hit_bytes) - h0;
}

/* Everything logged, written back and out of the heads, then one GC pass over all of it. */
static void collect_all(void)
{
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	pcache_heads_release(c, true);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	(void)pcache_gc_run(c);
}

/* A cold 1 MiB extent at 1 MiB, then a hot 64 KiB one at 0, hit once (same kset, in that
 * order: dropping the cold one earns GC the credit to copy the hot one). */
static void cold_then_hot(void)
{
	ck_assert_uint_eq(hits_of(1u << 20, 1u << 20, 0), 0);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 0);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 64u << 10);
}

START_TEST(gc_copies_hot_clean_data_forward)
{
	struct pcache_cache_status st;

	start(false, 24u << 20, 8u << 20);
	/* a cold extent, then a hot one (same kset, in that order: dropping the cold one earns
	 * GC the credit to copy the hot one) */
	ck_assert_uint_eq(hits_of(1u << 20, 1u << 20, 0), 0);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 0);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 64u << 10); /* one hit counts */
	collect_all();
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.gc_copied_bytes, 64u << 10);
	ck_assert_uint_eq(st.gc_copied_keys, 1);
	ck_assert_uint_ge(st.gc_dropped_bytes, 1u << 20);
	/* the copy is indexed (a hit, the right bytes) and in the log: a restart keeps it */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(eng_stop(&c, &img), 0);
	{
		char err[256];

		ck_assert_msg(eng_start(cpath, ipath, "g", false, false, &c, &img, err, sizeof(err)) == 0,
			      "restart: %s", err);
	}
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 64u << 10);
	ck_assert_uint_eq(hits_of(1u << 20, 1u << 20, 0), 0);  /* the cold one went */
}
END_TEST

START_TEST(gc_copy_spends_the_hit_count)
{
	start(false, 24u << 20, 8u << 20);
	cold_then_hot();
	collect_all();   /* copied with its one hit spent */
	ck_assert_uint_eq(atomic_load(&c->gc_copied_keys), 1);
	ck_assert_uint_eq(hits_of(2u << 20, 1u << 20, 0), 0); /* more cold data for credit */
	collect_all();   /* no hit since the copy: dropped now */
	ck_assert_uint_eq(atomic_load(&c->gc_copied_keys), 1);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 0);
}
END_TEST

START_TEST(gc_without_copy_forward_drops_hot_data)
{
	start(false, 24u << 20, 8u << 20);
	atomic_store(&c->copy_forward, false);
	cold_then_hot();
	collect_all();
	ck_assert_uint_eq(atomic_load(&c->gc_copied_bytes), 0);
	ck_assert_uint_eq(hits_of(0, 64u << 10, 0), 0);
}
END_TEST

/* Bytes of a hot extent that a newer write replaced are not copied (the rest is). */
START_TEST(gc_copy_skips_bytes_a_newer_write_replaced)
{
	start(false, 24u << 20, 8u << 20);
	cold_then_hot();
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	pcache_heads_release(c, true);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	wr(16u << 10, 4096, 7);   /* newer than the hot extent, not written back */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	(void)pcache_gc_run(c);
	/* the parts around the write were copied, the written sectors read the write */
	ck_assert_uint_eq(atomic_load(&c->gc_copied_bytes), (64u << 10) - 4096);
	expect(0, 16u << 10, 0);
	expect(16u << 10, 4096, 7);
	expect((16u << 10) + 4096, (48u << 10) - 4096, 0);
}
END_TEST

/* gc_percent auto: GC leaves clean data in the whole device but a small free reserve. */
START_TEST(gc_auto_uses_the_device)
{
	struct pcache_cache_status st;
	uint64_t i;

	start(false, 40u << 20, 64u << 20);
	/* the reads below are one stream: cache them all */
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	pcache_cache_get_status(c, &st);
	ck_assert(st.gc_auto);     /* the default of a new format */
	for (i = 0; i < 28; i++)
		ck_assert_uint_eq(hits_of(i << 20, 1u << 20, 0), 0);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_gc_run(c), 0); /* free segments above the reserve: nothing to do */
	pcache_cache_get_status(c, &st);
	ck_assert_uint_ge(st.segs_used, 28);
	ck_assert_uint_lt(st.gc_reserve, st.seg_count - st.segs_used);
	for (i = 0; i < 28; i++)
		ck_assert_uint_eq(hits_of(i << 20, 1u << 20, 0), 1u << 20);
	/* more than fits: GC frees down to the reserve, not to a fixed percentage */
	for (i = 28; i < 48; i++)
		ck_assert_uint_eq(hits_of(i << 20, 1u << 20, 0), 0);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_ge(st.seg_count - st.segs_used, st.gc_reserve);
	/* a GC step drops a whole kset: here up to four 1 MiB keys, four segments */
	ck_assert_uint_le(st.seg_count - st.segs_used, st.gc_reserve + 4);
	/* the old percentage, when set, still means what it did */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 50), 0);
	(void)pcache_gc_run(c);
	pcache_cache_get_status(c, &st);
	ck_assert(!st.gc_auto);
	ck_assert_uint_lt(st.segs_used * 100, st.seg_count * 50);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, PCACHE_GC_PERCENT_AUTO), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 91), -EINVAL);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 254), -EINVAL);
}
END_TEST

/* The backing image holds version want of [off, off + len) (read around the cache). */
static void backing_holds(uint64_t off, size_t len, uint32_t want)
{
	uint64_t bad;

	ck_assert_msg(eng_file_holds(ipath, off, len, 1, want, &bad) == 0,
		      "backing sector %llu is not version %u", (unsigned long long)bad, want);
}

/* max_share: past its cap an image caches no more reads and its writes go around the cache. */
START_TEST(max_share_caps_an_images_cached_data)
{
	struct pcache_image_stats st;
	uint64_t limit, i;

	start(false, 24u << 20, 16u << 20);
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	wr(0, 64u << 10, 1);               /* dirty, under the cap */
	ck_assert_int_eq(pcache_image_set_max_share(img, 101), -EINVAL);
	ck_assert_int_eq(pcache_image_set_max_share(img, 25), 0);
	limit = (uint64_t)c->seg_count * c->seg_size / 100 * 25;
	for (i = 1; i < 16; i++)
		expect(i << 20, 1u << 20, 0);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.max_share, 25);
	ck_assert_uint_le(st.cached_bytes, limit + (1u << 20)); /* the read that crossed it */
	ck_assert_uint_gt(st.share_bypass_bytes, 0);
	/* over the cap: a write goes around the cache, to the backing at once ... */
	wr(0, 64u << 10, 2);
	backing_holds(0, 64u << 10, 2);
	expect(0, 64u << 10, 2);
	/* ... and the older dirty copy of those bytes never lands after it */
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_holds(0, 64u << 10, 2);
	expect(0, 64u << 10, 2);
	/* persisted; 0 lifts the cap */
	ck_assert_int_eq(eng_stop(&c, &img), 0);
	{
		char err[256];

		ck_assert_msg(eng_start(cpath, ipath, "g", false, false, &c, &img, err, sizeof(err)) == 0,
			      "restart: %s", err);
	}
	ck_assert_uint_eq(pcache_image_max_share(img), 25);
	ck_assert_uint_eq(pcache_image_seq_cutoff(img), 0);
	ck_assert_int_eq(pcache_image_set_max_share(img, 0), 0);
	expect(15u << 20, 1u << 20, 0);
	ck_assert_uint_eq(hits_of(15u << 20, 1u << 20, 0), 1u << 20);
}
END_TEST

START_TEST(idle_head_does_not_pin_a_segment)
{
	struct pcache_cache_status st;

	start(false, 24u << 20, 8u << 20);
	wr(0, 4096, 1); /* a head now sits in a nearly empty segment */
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	(void)pcache_gc_run(c);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.segs_data, 1); /* pinned by the head */
	pcache_heads_release(c, true);      /* what the timer does after PCACHE_HEAD_IDLE_NS */
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.segs_data, 0);
	expect(0, 4096, 1);
}
END_TEST

/* The writeback's idle test (core/cache_wbglue.c): user I/O makes it busy for PCACHE_IDLE_MS. */
START_TEST(user_io_keeps_the_cache_busy_for_idle_ms)
{
	uint8_t buf[4096];

	start(false, 24u << 20, 8u << 20);
	usleep((PCACHE_IDLE_MS + 100) * 1000);
	ck_assert(pcache_cache_idle(c));
	wr(0, 4096, 1);
	ck_assert(!pcache_cache_idle(c));
	usleep((PCACHE_IDLE_MS + 100) * 1000);
	ck_assert(pcache_cache_idle(c));
	ck_assert_int_eq(eng_read(img, buf, 0, sizeof(buf)), 0);
	ck_assert(!pcache_cache_idle(c));
	usleep((PCACHE_IDLE_MS + 100) * 1000);
	ck_assert(pcache_cache_idle(c));
	ck_assert_int_eq(pcache_image_discard(img, 0, 4096, true), 0);
	ck_assert(!pcache_cache_idle(c));
}
END_TEST

START_TEST(writers_wait_for_space_and_complete)
{
	struct pcache_cache_status st;
	uint64_t off, total = check_under_tsan() ? (16u << 20) : (48u << 20);

	/* 12 MiB device: ~9 segments of 1 MiB; write several times that (one stream: cached) */
	start(true, 12u << 20, total);
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	for (off = 0; off < total; off += 65536)
		wr(off, 65536, (uint32_t)(off >> 16) + 1);
	for (off = 0; off < total; off += 65536)
		expect(off, 65536, (uint32_t)(off >> 16) + 1);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_gt(st.full_waits, 0);
	ck_assert_uint_gt(st.segs_freed, 0);
	ck_assert_uint_gt(st.gc_runs, 0);
	fprintf(stderr, "gc: %llu full waits, %.1f ms waited, %llu segments freed\n",
		(unsigned long long)st.full_waits, st.full_wait_ns / 1e6,
		(unsigned long long)st.segs_freed);
}
END_TEST

START_TEST(rate_limit_never_stalls_writers_waiting_for_space)
{
	struct pcache_cache_status st;
	uint64_t off, total = 32u << 20;

	/* 1 B/s would take years to free a segment: waiting writers must lift the limit */
	start(true, 12u << 20, total);
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_WRITEBACK_RATE, 1), 0);
	/* and the watermarks never make it urgent on their own */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_DIRTY_HIGH, 100), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_DIRTY_LOW, 99), 0);
	for (off = 0; off < total; off += 65536)
		wr(off, 65536, (uint32_t)(off >> 16) + 3);
	for (off = 0; off < total; off += 65536)
		expect(off, 65536, (uint32_t)(off >> 16) + 3);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_gt(st.full_waits, 0);
	ck_assert_uint_eq(st.wb_rate, 1);
}
END_TEST

START_TEST(zero_keys_wait_for_log_space_too)
{
	uint64_t off, total = 32u << 20;

	start(true, 12u << 20, total);
	for (off = 0; off < total; off += 4096)
		ck_assert_int_eq(pcache_image_discard(img, off, 512, true), 0);
	expect(0, 512, ENG_ZERO);
	expect(512, 3584, 0);
	expect(total - 4096, 512, ENG_ZERO);
}
END_TEST

Suite *cache_gc_suite(void);
Suite *cache_gc_suite(void)
{
	Suite *s = suite_create("cache_gc");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, gc_percent_gates_collection);
	tcase_add_test(tc, gc_never_passes_dirty_tail);
	tcase_add_test(tc, freed_segment_reuse_makes_old_keys_stale);
	tcase_add_test(tc, idle_head_does_not_pin_a_segment);
	tcase_add_test(tc, gc_copies_hot_clean_data_forward);
	tcase_add_test(tc, gc_copy_spends_the_hit_count);
	tcase_add_test(tc, gc_without_copy_forward_drops_hot_data);
	tcase_add_test(tc, gc_copy_skips_bytes_a_newer_write_replaced);
	tcase_add_test(tc, gc_auto_uses_the_device);
	tcase_add_test(tc, max_share_caps_an_images_cached_data);
	tcase_add_test(tc, user_io_keeps_the_cache_busy_for_idle_ms);
	tcase_add_test(tc, rate_limit_never_stalls_writers_waiting_for_space);
	tcase_add_test(tc, writers_wait_for_space_and_complete);
	tcase_add_test(tc, zero_keys_wait_for_log_space_too);
	suite_add_tcase(s, tc);
	return s;
}
