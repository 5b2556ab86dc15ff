/*
 * check_log.c -- the one log reader (core/log.c) and the walks built on it: a real log walked
 * to key_head, a window read before a kset was written is read again, a media error is -EIO
 * narrowed to its kset, replay ends at an unreadable kset after dirty_tail and starts the log
 * at dirty_tail when the unreadable kset was already written back, GC and the writeback stop
 * at one with an error instead of a crash, and pcachectl-style walks of a read-only open.
 *
 * Media errors are emulated with the cache device's read_fault hook: every read of the device
 * (pread or the mcsafe read) overlapping a poisoned range fails with -EIO, as on a poisoned
 * line. The SIGBUS side (a store or load on the mapping) is not reached by any reader here:
 * they never look at the mapping.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "../core/cache_writeback.h"
#include "check_util.h"
#include "lib/engine_util.h"
#include "pcache/log.h"

#define IMG_SIZE (16u << 20)

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

/* poisoned device ranges (read_fault hook) */
static struct {
	uint64_t off[4], len[4];
	int n;
	unsigned int hits;
} poison;

static int poison_fault(uint64_t off, size_t len, void *arg)
{
	int i;

	(void)arg;
	for (i = 0; i < poison.n; i++) {
		if (off < poison.off[i] + poison.len[i] && poison.off[i] < off + len) {
			poison.hits++;
			return -EIO;
		}
	}
	return 0;
}

static void start(void)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = "a", .path = ipath, .cache_mode = -1 };
	char err[256];

	eng_opts(&o, cpath);
	o.no_background = true;
	o.read_fault = poison_fault;
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "start: %s", err);
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "attach: %s", err);
}

static void stop(void)
{
	ck_assert_int_eq(eng_stop(&c, &img), 0);
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "log-cache");
	check_scratch_path(ipath, sizeof(ipath), "log-img");
	ck_assert_int_eq(eng_format(cpath, 40u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, IMG_SIZE, 1);
	memset(&poison, 0, sizeof(poison));
	start();
}

static void teardown(void)
{
	memset(&poison, 0, sizeof(poison));
	stop();
	unlink(cpath);
	unlink(ipath);
}

/* One kset per call: a write of version v at off, then a flush. */
static void logged_write(uint64_t off, uint32_t v)
{
	ck_assert_int_eq(eng_write(img, off, 4096, 1, v), 0);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
}

static void expect(uint64_t off, uint32_t want)
{
	uint8_t buf[4096];
	uint32_t v;

	ck_assert_int_eq(eng_read(img, buf, off, sizeof(buf)), 0);
	ck_assert_int_eq(eng_decode(buf, 1, off, &v), 0);
	ck_assert_msg(v == want, "offset %llu: version %u, want %u", (unsigned long long)off, v, want);
}

/* Device offset of a log position. */
static uint64_t dev_off(const struct pcache_pos *p)
{
	struct pcache_cache_dev *cd = c->cd;

	return (uint64_t)((uint8_t *)pcache_cache_dev_seg_addr(cd, p->seg) -
			  (uint8_t *)pcache_cache_dev_base(cd)) + p->off;
}

struct seen {
	struct pcache_pos pos[64];
	int n;
};

static int remember(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct seen *s = arg;

	ck_assert_uint_eq(pcache_le64(&ks->lsn), pos->lsn);
	if (s->n < 64)
		s->pos[s->n++] = *pos;
	return 0;
}

/* Walk the live cache's log from key_tail with a new reader. */
static int walk_all(struct seen *s, struct pcache_pos *end, int *why, uint64_t *n)
{
	struct pcache_log_reader *rd;
	struct pcache_pos kt;
	int ret;

	ck_assert_int_eq(pcache_log_reader_new(c->cd, &rd), 0);
	pcache_cache_dev_get_key_tail(c->cd, &kt);
	ret = pcache_log_walk(rd, &kt, 0, remember, s, end, why, n);
	pcache_log_reader_free(rd);
	return ret;
}

START_TEST(the_reader_walks_a_real_log_to_key_head)
{
	struct pcache_cache_dev_opts dopts = { .path = cpath, .read_only = true, .no_lock = true };
	struct pcache_cache_dev *cd;
	struct pcache_log_reader *rd;
	struct pcache_pos kt, head, end;
	struct seen s = { .n = 0 };
	char err[256];
	uint64_t n;
	int why, i;

	for (i = 0; i < 20; i++)
		logged_write((uint64_t)i * 65536, (uint32_t)i + 1);
	pcache_log_head(c, &head);
	stop();
	ck_assert_int_eq(pcache_cache_dev_open(&dopts, &cd, err, sizeof(err)), 0);
	ck_assert_int_eq(pcache_log_reader_new(cd, &rd), 0);
	pcache_cache_dev_get_key_tail(cd, &kt);
	ck_assert_int_eq(pcache_log_walk(rd, &kt, 0, remember, &s, &end, &why, &n), 0);
	ck_assert_int_eq(why, -EUCLEAN); /* the end of the log */
	ck_assert_uint_eq(end.lsn, head.lsn);
	ck_assert_uint_eq(end.seg, head.seg);
	ck_assert_uint_eq(end.off, head.off);
	ck_assert_uint_eq(n, head.lsn - kt.lsn);
	ck_assert_uint_ge(n, 20);
	for (i = 1; i < s.n; i++)
		ck_assert_uint_eq(s.pos[i].lsn, s.pos[i - 1].lsn + 1);
	/* stop_lsn is exclusive and ends the walk with why 0 */
	s.n = 0;
	ck_assert_int_eq(pcache_log_walk(rd, &kt, kt.lsn + 3, remember, &s, &end, &why, &n), 0);
	ck_assert_int_eq(why, 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(end.lsn, kt.lsn + 3);
	ck_assert_uint_eq(pcache_log_reader_media_errors(rd), 0);
	pcache_log_reader_free(rd);
	pcache_cache_dev_close(cd);
	start();
}
END_TEST

START_TEST(a_window_read_before_a_kset_was_written_is_read_again)
{
	struct pcache_log_reader *rd;
	const struct pcache_kset_om *ks;
	struct pcache_pos head, first;

	logged_write(0, 1);
	pcache_log_head(c, &head);
	ck_assert_int_eq(pcache_log_reader_new(c->cd, &rd), 0);
	ck_assert_int_eq(pcache_log_read(rd, &head, &ks), -EUCLEAN); /* nothing there yet */
	first = head;
	/* the window now holds the (empty) bytes at head; the log grows into them */
	logged_write(65536, 2);
	logged_write(131072, 3);
	ck_assert_int_eq(pcache_log_read(rd, &first, &ks), 0);
	ck_assert_uint_eq(pcache_le64(&ks->lsn), first.lsn);
	pcache_log_next(ks, &first, &head);
	ck_assert_int_eq(pcache_log_read(rd, &head, &ks), 0);
	pcache_log_reader_free(rd);
}
END_TEST

START_TEST(a_media_error_is_eio_and_narrowed_to_its_kset)
{
	struct pcache_log_reader *rd;
	const struct pcache_kset_om *ks;
	struct pcache_pos end;
	struct seen s = { .n = 0 };
	uint64_t n;
	int why, i, bad;

	for (i = 0; i < 6; i++)
		logged_write((uint64_t)i * 65536, (uint32_t)i + 1);
	ck_assert_int_eq(walk_all(&s, &end, &why, &n), 0);
	ck_assert_int_ge(s.n, 6);
	bad = s.n - 2;
	/* one line in the middle of a kset near the end of the log */
	poison.off[0] = dev_off(&s.pos[bad]) + PCACHE_KSET_HDR_SIZE;
	poison.len[0] = 16;
	poison.n = 1;
	ck_assert_int_eq(pcache_log_reader_new(c->cd, &rd), 0);
	/* the kset before it shares its window: the wide read fails, the narrow one does not */
	ck_assert_int_eq(pcache_log_read(rd, &s.pos[bad - 1], &ks), 0);
	ck_assert_int_eq(pcache_log_read(rd, &s.pos[bad], &ks), -EIO);
	ck_assert_uint_eq(pcache_log_reader_media_errors(rd), 1);
	ck_assert_int_eq(pcache_log_read(rd, &s.pos[bad + 1], &ks), 0); /* after it: readable */
	pcache_log_reader_free(rd);
	ck_assert_uint_gt(poison.hits, 0);
	/* a walk ends at it with -EIO */
	s.n = 0;
	ck_assert_int_eq(walk_all(&s, &end, &why, &n), 0);
	ck_assert_int_eq(why, -EIO);
	ck_assert_uint_eq(n, (uint64_t)bad);
}
END_TEST

START_TEST(replay_ends_at_an_unreadable_kset_and_counts_it)
{
	struct pcache_pos end;
	struct seen s = { .n = 0 };
	uint64_t n;
	int why, i;

	for (i = 0; i < 4; i++)
		logged_write((uint64_t)i * 65536, (uint32_t)i + 1);
	ck_assert_int_eq(walk_all(&s, &end, &why, &n), 0);
	/* the kset of the third write (the log's last four ksets are the four writes') */
	poison.off[0] = dev_off(&s.pos[s.n - 2]);
	poison.len[0] = 64;
	stop();
	poison.n = 1;
	start();
	ck_assert_uint_eq(atomic_load(&c->media_errors), 1);
	expect(0, 1);
	expect(65536, 2);
	expect(2 * 65536, 0); /* logged after the unreadable kset: lost, the backing's data */
	expect(3 * 65536, 0);
}
END_TEST

START_TEST(an_unreadable_kset_before_dirty_tail_loses_nothing)
{
	struct pcache_pos end, kt, dt;
	struct seen s = { .n = 0 };
	uint64_t n;
	int why, i;

	for (i = 0; i < 4; i++)
		logged_write((uint64_t)i * 65536, (uint32_t)i + 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0); /* the four are on the backing */
	logged_write(4 * 65536, 5);                         /* dirty, after dirty_tail */
	ck_assert_int_eq(walk_all(&s, &end, &why, &n), 0);
	pcache_cache_dev_get_dirty_tail(c->cd, &dt);
	ck_assert_uint_lt(s.pos[1].lsn, dt.lsn);
	poison.off[0] = dev_off(&s.pos[1]);
	poison.len[0] = 64;
	stop();
	poison.n = 1;
	start();
	ck_assert_uint_eq(atomic_load(&c->media_errors), 1);
	pcache_cache_dev_get_key_tail(c->cd, &kt);
	ck_assert_uint_eq(kt.lsn, dt.lsn); /* the log starts at dirty_tail now */
	for (i = 0; i < 5; i++)
		expect((uint64_t)i * 65536, (uint32_t)i + 1);
	/* and so it stays: the next start reads nothing poisoned */
	poison.hits = 0;
	stop();
	start();
	ck_assert_uint_eq(poison.hits, 0);
	ck_assert_uint_eq(atomic_load(&c->media_errors), 0);
	expect(4 * 65536, 5);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
}
END_TEST

START_TEST(the_writeback_stops_at_an_unreadable_kset_with_an_error)
{
	struct pcache_wb_stats ws;
	struct pcache_pos end;
	struct seen s = { .n = 0 };
	uint64_t n;
	int why;

	logged_write(0, 1);
	logged_write(65536, 2);
	ck_assert_int_eq(walk_all(&s, &end, &why, &n), 0);
	poison.off[0] = dev_off(&s.pos[s.n - 1]);
	poison.len[0] = 64;
	poison.n = 1;
	ck_assert_int_eq(pcache_cache_writeback_all(c), -EIO);
	pcache_wb_get_stats(c->wb, &ws);
	ck_assert_int_eq(ws.latched, -EIO);
	ck_assert_uint_eq(ws.media_errors, 1);
	expect(0, 1); /* the cache still serves what it holds */
	expect(65536, 2);
}
END_TEST

Suite *log_suite(void);
Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("reader");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, the_reader_walks_a_real_log_to_key_head);
	tcase_add_test(tc, a_window_read_before_a_kset_was_written_is_read_again);
	tcase_add_test(tc, a_media_error_is_eio_and_narrowed_to_its_kset);
	tcase_add_test(tc, replay_ends_at_an_unreadable_kset_and_counts_it);
	tcase_add_test(tc, an_unreadable_kset_before_dirty_tail_loses_nothing);
	tcase_add_test(tc, the_writeback_stops_at_an_unreadable_kset_with_an_error);
	suite_add_tcase(s, tc);
	return s;
}
