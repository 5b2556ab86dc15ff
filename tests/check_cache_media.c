/*
 * check_cache_media.c -- media errors of the cache mapping are errors, not crashes
 * (core/media.c and its users): a SIGBUS is produced for real by cutting the cache file under
 * the engine's mapping (every page past the new end raises SIGBUS on access).
 *
 *  - a guarded copy, CRC or store of a cut page returns -EIO, again and again; an unguarded
 *    access still kills the process with SIGBUS (a real bug is never hidden);
 *  - a hit on cut data returns EIO, counted in media_errors; a miss whose fill would land in the
 *    cut area returns the backing's data (only the fill is dropped); a write there gets EIO;
 *  - the writeback of dirty data it cannot read holds that image back (status: failing, media
 *    error), leaves the data dirty, counts it, with and without data CRCs (with them the CRC pass
 *    meets the SIGBUS, without them the kernel's read for the io_uring write fails).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"
#include "pcache/media.h"

#define IMG_SIZE (16u << 20)
#define CACHE_SIZE (48u << 20)

static char cpath[256], ipath[256], fpath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "media-cache");
	check_scratch_path(ipath, sizeof(ipath), "media-img");
	check_scratch_path(fpath, sizeof(fpath), "media-file");
	eng_make_image(ipath, IMG_SIZE, 1);
}

static void teardown(void)
{
	eng_close(&c, &img, cpath, ipath);
	unlink(fpath);
}

/* ---- the guard itself ----------------------------------------------------------------------- */

/* A file of two pages mapped shared, then cut to one: the second page raises SIGBUS. */
static char *cut_mapping(long *page)
{
	int fd = open(fpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
	char *p;

	*page = sysconf(_SC_PAGESIZE);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 2 * *page), 0);
	p = mmap(NULL, (size_t)(2 * *page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert(p != MAP_FAILED);
	memset(p, 0x5a, (size_t)(2 * *page));
	ck_assert_int_eq(ftruncate(fd, *page), 0);
	close(fd);
	return p;
}

START_TEST(guarded_accesses_of_a_cut_page_return_eio)
{
	long page;
	char *p, buf[64];
	uint32_t crc;

	ck_assert_int_eq(pcache_media_init(), 0);
	ck_assert(pcache_media_handler_installed());
	p = cut_mapping(&page);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(pcache_media_copy(buf, p + page, sizeof(buf)), -EIO);
		ck_assert_int_eq(pcache_media_crc(p + page + 100, 64, &crc), -EIO);
		/* a range that starts in the good page and runs into the cut one */
		ck_assert_int_eq(pcache_media_copy(buf, p + page - 32, sizeof(buf)), -EIO);
	}
	/* the good page still reads, through the guard and without it */
	ck_assert_int_eq(pcache_media_copy(buf, p, sizeof(buf)), 0);
	ck_assert_int_eq((unsigned char)buf[0], 0x5a);
	ck_assert_int_eq(pcache_media_crc(p, 64, &crc), 0);
	ck_assert_uint_eq(crc, pcache_crc32c(PCACHE_CRC_SEED, (const uint8_t *)p, 64));
	munmap(p, (size_t)(2 * page));
}
END_TEST

START_TEST(unguarded_sigbus_still_kills)
{
	int status;
	pid_t pid;

	ck_assert_int_eq(pcache_media_init(), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		long page;
		volatile char *p = cut_mapping(&page);
		char buf[8];

		/* a guarded access first: the handler is live and recovers it ... */
		if (pcache_media_copy(buf, (const char *)p + page, sizeof(buf)) != -EIO)
			_exit(2);
		/* ... an access outside any guard is a bug and must end the process */
		p[page] = 1;
		_exit(3);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
#if defined(__SANITIZE_ADDRESS__)
	/* ASan's own handler came first: ours passes the signal on, ASan reports and exits 1 */
	ck_assert_msg((WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) ||
		      (WIFEXITED(status) && WEXITSTATUS(status) == 1),
		      "child did not die of the SIGBUS (status 0x%x)", status);
#else
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS,
		      "child did not die of SIGBUS (status 0x%x)", status);
#endif
}
END_TEST

/* ---- the engine on a cut cache file ------------------------------------------------------- */

static void start(bool background, bool data_crc)
{
	char err[256];

	ck_assert_int_eq(eng_format(cpath, CACHE_SIZE, 1u << 20, data_crc), 0);
	ck_assert_msg(eng_start(cpath, ipath, "vm1", background, data_crc, &c, &img, err, sizeof(err)) == 0,
		      "start: %s", err);
}

/* The segment holding the cached data of image offset off (a data key must cover it). */
static uint32_t seg_of(uint64_t off)
{
	struct pcache_subtree *sub = &img->ix.sub[off >> PCACHE_REGION_SHIFT];
	uint32_t roff = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), i, seg = UINT32_MAX;

	pthread_mutex_lock(&sub->lock);
	i = pcache_subtree_find(sub, roff);
	if (i < sub->n && sub->v[i].off <= roff && !(sub->v[i].flags & PCACHE_KEY_ZERO))
		seg = sub->v[i].seg;
	pthread_mutex_unlock(&sub->lock);
	ck_assert_uint_ne(seg, UINT32_MAX);
	return seg;
}

/* Cut the cache file at the start of segment seg (everything from there on raises SIGBUS). */
static void cut_at(uint32_t seg)
{
	uint64_t at = (uint64_t)((char *)pcache_cache_dev_seg_addr(c->cd, seg) -
				 (char *)pcache_cache_dev_base(c->cd));
	int fd = open(cpath, O_RDWR);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)at), 0);
	close(fd);
}

/* Give the file its size back (the cut pages read as zeros again) before the engine stops. */
static void uncut(void)
{
	int fd = open(cpath, O_RDWR);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, CACHE_SIZE), 0);
	close(fd);
}

static uint64_t media_errors(void)
{
	struct pcache_cache_status cs;

	pcache_cache_get_status(c, &cs);
	return cs.media_errors;
}

START_TEST(hit_on_cut_data_is_eio_miss_and_write_do_not_crash)
{
	uint8_t *buf = malloc(1u << 20);
	uint32_t seg, v;

	start(false, false);
	ck_assert_int_eq(eng_write(img, 0, 64u << 10, 1, 7), 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	seg = seg_of(0);
	ck_assert_uint_gt(seg, 0);
	ck_assert_uint_eq(media_errors(), 0);
	cut_at(seg);

	/* the hit: EIO, counted, the process goes on */
	ck_assert_int_eq(eng_read(img, buf, 0, 4096), -EIO);
	ck_assert_uint_ge(media_errors(), 1);
	/* a miss: the backing's data comes back even though its fill cannot be stored */
	ck_assert_int_eq(eng_read(img, buf, 8u << 20, 64u << 10), 0);
	for (uint32_t s = 0; s < (64u << 10) / 512; s++) {
		ck_assert_int_eq(eng_decode(buf + s * 512, 1, (8u << 20) + s * 512, &v), 0);
		ck_assert_uint_eq(v, 0);
	}
	/* a write whose data would go to the cut segment: EIO, never acknowledged */
	ck_assert_int_eq(eng_write(img, 1u << 20, 4096, 1, 8), -EIO);
	ck_assert_uint_ge(media_errors(), 3);
	uncut();
	free(buf);
}
END_TEST

static void writeback_of_cut_data(bool data_crc)
{
	struct pcache_image_stats st;
	uint64_t before;
	int r;

	/* no writeback thread: it could write the data back before the cut (1 run in 6 did) */
	start(false, data_crc);
	ck_assert_int_eq(eng_write(img, 0, 256u << 10, 1, 9), 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	cut_at(seg_of(0));
	before = media_errors();
	r = pcache_image_writeback_all(img);
	ck_assert_msg(r == -EHWPOISON, "writeback_all: %d (%s), expected -EHWPOISON", r, strerror(-r));
	ck_assert_uint_gt(media_errors(), before);
	pcache_image_get_stats(img, &st);
	ck_assert_int_eq(st.wb_last_error, -EHWPOISON);
	ck_assert_uint_gt(st.dirty_bytes, 0); /* the data stays dirty in the cache */
	uncut();
}

START_TEST(writeback_of_unreadable_data_holds_the_image_back)
{
	writeback_of_cut_data(false);
}
END_TEST

START_TEST(writeback_of_unreadable_data_holds_the_image_back_with_crc)
{
	writeback_of_cut_data(true);
}
END_TEST

Suite *cache_media_suite(void);
Suite *cache_media_suite(void)
{
	Suite *s = suite_create("cache_media");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, guarded_accesses_of_a_cut_page_return_eio);
	tcase_add_test(tc, unguarded_sigbus_still_kills);
	tcase_add_test(tc, hit_on_cut_data_is_eio_miss_and_write_do_not_crash);
	tcase_add_test(tc, writeback_of_unreadable_data_holds_the_image_back);
	tcase_add_test(tc, writeback_of_unreadable_data_holds_the_image_back_with_crc);
	suite_add_tcase(s, tc);
	return s;
}
