/*
 * check_cache_space.c -- writers never wait for cache space without bound: with nothing able
 * to free space (no writeback), a writer waits space_timeout, then gets -EIO, counted in
 * status; the knob reads back and changes at run time (core/segment.c). Giving up an image's
 * dirty data lets the writeback of the others pass it (core/cache_image.c pcache_image_give_up).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_util.h"
#include "lib/engine_util.h"
#include "pcache/cache_dev.h"
#include "pcache/util.h"

#define IMG_SIZE (64u << 20)

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void setup(void)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = "s", .cache_mode = -1 };
	char err[256];

	check_scratch_path(cpath, sizeof(cpath), "space-cache");
	check_scratch_path(ipath, sizeof(ipath), "space-img");
	ck_assert_int_eq(eng_format(cpath, 24u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, IMG_SIZE, 1);
	eng_opts(&o, cpath);
	o.no_background = true; /* nothing writes back: the cache fills and stays full */
	o.space_timeout_s = 1;
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "start: %s", err);
	ao.path = ipath;
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "attach: %s", err);
	/* the tests fill the cache with sequential writes: cache them all */
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
}

static void teardown(void)
{
	eng_close(&c, &img, cpath, ipath);
}

START_TEST(a_writer_waits_space_timeout_then_gets_eio)
{
	struct pcache_cache_status st;
	uint64_t off, t0, waited = 0;
	int r = 0;

	for (off = 0; off < IMG_SIZE; off += 1u << 20) {
		t0 = pcache_now_ns();
		r = eng_write(img, off, 1u << 20, 1, 1);
		waited = pcache_now_ns() - t0;
		if (r)
			break;
	}
	ck_assert_int_eq(r, -EIO);
	ck_assert_msg(waited >= 900ull * 1000 * 1000 && waited < 10ull * 1000 * 1000 * 1000,
		      "waited %llu ms", (unsigned long long)(waited / 1000000));
	memset(&st, 0, sizeof(st));
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.space_timeouts, 1);
	ck_assert_uint_ge(st.full_waits, 1);
	/* the knob reads back, and a new value applies to the next writer */
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_SPACE_TIMEOUT), 1);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_SPACE_TIMEOUT, 2), 0);
	t0 = pcache_now_ns();
	ck_assert_int_eq(eng_write(img, off, 1u << 20, 1, 2), -EIO);
	waited = pcache_now_ns() - t0;
	ck_assert_msg(waited >= 1900ull * 1000 * 1000, "waited %llu ms", (unsigned long long)(waited / 1000000));
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.space_timeouts, 2);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_SPACE_TIMEOUT, 24 * 3600 + 1), -EINVAL);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_SPACE_TIMEOUT), 2);
}
END_TEST

START_TEST(giving_up_an_image_lets_the_others_write_back)
{
	struct pcache_attach_opts ao = { .name = "b", .cache_mode = -1 };
	struct pcache_cache_status st;
	struct pcache_image *b;
	struct pcache_image_ent e;
	uint8_t buf[4096], want[4096];
	uint64_t lost = 0;
	char err[256], bpath[256];
	int fd;

	check_scratch_path(bpath, sizeof(bpath), "space-img-b");
	eng_make_image(bpath, 8u << 20, 2);
	ao.path = bpath;
	ck_assert_msg(pcache_image_attach(c, &ao, &b, err, sizeof(err)) == 0, "attach: %s", err);
	ck_assert_int_eq(eng_write(img, 0, 1u << 20, 1, 5), 0);   /* s: dirty, first in the log */
	ck_assert_int_eq(eng_write(b, 0, 4096, 2, 6), 0);         /* b: dirty, behind it */
	ck_assert_int_eq(pcache_image_flush(b), 0);
	/* s's backing goes away (detached: its keys block dirty_tail) */
	pcache_image_put(img);
	img = NULL;
	ck_assert_int_eq(pcache_image_detach(c, "s", false), 0);
	ck_assert_int_ne(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_image_give_up(c, "nosuch", NULL), -ENOENT);
	ck_assert_int_eq(pcache_image_give_up(c, "s", &lost), 0);
	ck_assert_uint_eq(lost, 1u << 20);
	ck_assert_int_eq(pcache_cache_known_image(c, "s", &e), -ENOENT);
	/* everything else is written back, and dirty_tail reaches the head */
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	memset(&st, 0, sizeof(st));
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_tail.lsn, st.key_head.lsn);
	fd = open(bpath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	close(fd);
	eng_fill(want, sizeof(want), 2, 0, 6);
	ck_assert_mem_eq(buf, want, sizeof(buf));
	/* the given-up data is never served: attached again, s reads as its backing */
	ao.name = "s";
	ao.path = ipath;
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "attach: %s", err);
	ck_assert_int_eq(eng_read(img, buf, 0, sizeof(buf)), 0);
	eng_fill(want, sizeof(want), 1, 0, 0);
	ck_assert_mem_eq(buf, want, sizeof(buf));
	pcache_image_put(b);
	unlink(bpath);
}
END_TEST

Suite *cache_space_suite(void);
Suite *cache_space_suite(void)
{
	Suite *s = suite_create("cache_space");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, a_writer_waits_space_timeout_then_gets_eio);
	tcase_add_test(tc, giving_up_an_image_lets_the_others_write_back);
	suite_add_tcase(s, tc);
	return s;
}
