/*
 * check_cache_model.c -- model-based randomized test of the whole engine: random writes (some
 * FUA), reads, flushes, discards, zeroes, writebacks, cache-mode changes (writeback,
 * writethrough, writearound), detach + attach of one image, and restarts (stop + start +
 * replay) on two
 * images of one small cache (1 MiB segments, so GC, writeback and waits for space all run),
 * checked byte for byte against an in-memory model. Prints its seed; PCACHE_SEED reproduces.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

#define IMG_SIZE (6u << 20)
#define MAX_IO (256u << 10)

static char cpath[256], ipath[2][256];
static struct pcache_cache *c;
static struct pcache_image *img[2];
static uint8_t *model[2];

static void start(bool data_crc)
{
	struct pcache_cache_opts o;
	char err[256];
	int i;

	eng_opts(&o, cpath);
	o.data_crc = data_crc;
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "start: %s", err);
	for (i = 0; i < 2; i++) {
		struct pcache_attach_opts ao = { .name = i ? "y" : "x", .path = ipath[i], .cache_mode = -1 };

		ck_assert_msg(pcache_image_attach(c, &ao, &img[i], err, sizeof(err)) == 0, "attach: %s", err);
	}
}

static void stop(void)
{
	int i;

	for (i = 0; i < 2; i++)
		if (img[i])
			pcache_image_put(img[i]);
	img[0] = img[1] = NULL;
	if (c)
		ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	c = NULL;
}

static void setup(void)
{
	int i, fd;

	check_scratch_path(cpath, sizeof(cpath), "model-cache");
	check_scratch_path(ipath[0], sizeof(ipath[0]), "model-x");
	check_scratch_path(ipath[1], sizeof(ipath[1]), "model-y");
	for (i = 0; i < 2; i++) {
		check_make_file(ipath[i], IMG_SIZE, (uint32_t)i + 11);
		model[i] = malloc(IMG_SIZE);
		fd = open(ipath[i], O_RDONLY);
		ck_assert_int_eq(pread(fd, model[i], IMG_SIZE, 0), IMG_SIZE);
		close(fd);
	}
}

static void teardown(void)
{
	stop();
	free(model[0]);
	free(model[1]);
	unlink(cpath);
	unlink(ipath[0]);
	unlink(ipath[1]);
}

static void run_model(bool data_crc, int nops)
{
	uint32_t seed = eng_seed(data_crc ? "model (data_crc)" : "model");
	unsigned int rs = seed;
	uint8_t *buf = malloc(MAX_IO);
	struct pcache_cache_status st;
	uint64_t freed = 0, waits = 0;
	int op, counts[8] = { 0 };

	ck_assert_int_eq(eng_format(cpath, 11u << 20, 1u << 20, data_crc), 0);
	start(data_crc);
	for (op = 0; op < nops; op++) {
		int i = rand_r(&rs) % 2, kind = rand_r(&rs) % 100;
		/* mostly small I/O in a hot 2 MiB window, sometimes anywhere, sometimes large */
		uint64_t span = (rand_r(&rs) % 4) ? (2u << 20) : IMG_SIZE;
		uint32_t maxs = (rand_r(&rs) % 8) ? 64 : MAX_IO / 512;
		uint32_t n = 1 + (uint32_t)rand_r(&rs) % maxs;
		uint64_t off = ((uint64_t)rand_r(&rs) % (span / 512)) * 512;
		size_t len;

		if (off + (uint64_t)n * 512 > IMG_SIZE)
			n = (uint32_t)((IMG_SIZE - off) / 512);
		len = (size_t)n * 512;
		if (kind < 40) {
			size_t k;

			for (k = 0; k < len; k += 4)
				*(uint32_t *)(buf + k) = (uint32_t)rand_r(&rs);
			ck_assert_int_eq(pcache_image_write(img[i], buf, off, len,
							    kind < 4 ? PCACHE_IO_FUA : 0), 0);
			memcpy(model[i] + off, buf, len);
			counts[0]++;
		} else if (kind < 80) {
			ck_assert_int_eq(eng_read(img[i], buf, off, len), 0);
			if (memcmp(buf, model[i] + off, len)) {
				size_t k;

				for (k = 0; k < len && buf[k] == model[i][off + k]; k++)
					;
				ck_abort_msg("seed %u op %d: image %d read %llu+%zu differs at byte %llu",
					     seed, op, i, (unsigned long long)off, len,
					     (unsigned long long)(off + k));
			}
			counts[1]++;
		} else if (kind < 86) {
			ck_assert_int_eq(pcache_image_flush(img[i]), 0);
			counts[2]++;
		} else if (kind < 92) {
			ck_assert_int_eq(pcache_image_discard(img[i], off, len, kind & 1), 0);
			memset(model[i] + off, 0, len);
			counts[3]++;
		} else if (kind < 94) {
			ck_assert_int_eq(pcache_image_writeback_all(img[i]), 0);
			counts[4]++;
		} else if (kind < 95) {
			pcache_cache_get_status(c, &st);
			freed += st.segs_freed;
			waits += st.full_waits;
			stop();
			start(data_crc);
			counts[5]++;
		} else if (kind < 96) {
			/* detach and attach one image while the other stays (index rebuilt from the log) */
			struct pcache_attach_opts ao = { .name = i ? "y" : "x", .cache_mode = -1 };
			char err[256];

			pcache_image_put(img[i]);
			img[i] = NULL;
			ck_assert_int_eq(pcache_image_detach(c, i ? "y" : "x", false), 0);
			ck_assert_msg(pcache_image_attach(c, &ao, &img[i], err, sizeof(err)) == 0, "%s", err);
			counts[5]++;
		} else if (kind < 97) {
			uint32_t mode = (uint32_t)rand_r(&rs) % 3;

			ck_assert_int_eq(pcache_image_set_cache_mode(img[i], mode), 0);
			counts[7]++;
		} else {
			/* a read of the whole image now and then */
			uint64_t o;

			for (o = 0; o < IMG_SIZE; o += MAX_IO) {
				ck_assert_int_eq(eng_read(img[i], buf, o, MAX_IO), 0);
				ck_assert_msg(!memcmp(buf, model[i] + o, MAX_IO), "seed %u op %d: full read of %d at %llu",
					      seed, op, i, (unsigned long long)o);
			}
			counts[6]++;
		}
	}
	pcache_cache_get_status(c, &st);
	freed += st.segs_freed;
	waits += st.full_waits;
	fprintf(stderr, "model: %d ops (%d writes, %d reads, %d flushes, %d discards, %d writebacks, "
		"%d restarts or re-attaches, %d full reads, %d mode changes); %llu segments freed, "
		"%llu full waits\n",
		nops, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], counts[7],
		(unsigned long long)freed, (unsigned long long)waits);
	/* the end: everything written back equals the model on the backing images */
	{
		int i, fd;
		uint8_t *back = malloc(IMG_SIZE);

		ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
		for (i = 0; i < 2; i++) {
			fd = open(ipath[i], O_RDONLY);
			ck_assert_int_eq(pread(fd, back, IMG_SIZE, 0), IMG_SIZE);
			close(fd);
			ck_assert_msg(!memcmp(back, model[i], IMG_SIZE), "seed %u: backing %d differs", seed, i);
		}
		free(back);
	}
	free(buf);
}

static int nops(void)
{
	int n = getenv("PCACHE_SOAK") ? 50000 : 4000;

#if defined(__SANITIZE_ADDRESS__)
	n /= 2;
#endif
	if (check_under_tsan())
		n = 300;
	return n;
}

START_TEST(random_ops_match_the_model)
{
	run_model(false, nops());
}
END_TEST

START_TEST(random_ops_match_the_model_with_data_crc)
{
	run_model(true, nops() / 2);
}
END_TEST

Suite *cache_model_suite(void);
Suite *cache_model_suite(void)
{
	Suite *s = suite_create("cache_model");
	TCase *tc = tcase_create("Model");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, getenv("PCACHE_SOAK") ? 3600 : 240);
	tcase_add_test(tc, random_ops_match_the_model);
	tcase_add_test(tc, random_ops_match_the_model_with_data_crc);
	suite_add_tcase(s, tc);
	return s;
}
