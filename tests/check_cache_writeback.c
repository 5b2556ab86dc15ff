/*
 * check_cache_writeback.c -- unit tests of the writeback (core/cache_writeback.c,
 * cache_wb_batch.c, cache_wb_drain.c).
 *
 * Logs are built directly on a formatted cache device with tests/lib/logbuilder (no engine),
 * backing images are real files (and a flakyfs mount for real EIO), the writeback runs for
 * real (io_uring through backing/). Expected images come from an in-memory model of the log.
 * The crash-consistency case stops the writeback at many random points (a SIGKILLed child, or
 * a request count) and checks that each backing state is an epoch-prefix state.
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_util.h"
#include "lib/logbuilder.h"
#include "pcache/backing.h"
#include "pcache/cache_dev.h"
#include "pcache/util.h"
#include "../core/cache_writeback.h"

#define SEG_SIZE (1u << 20)
#define IMG_SIZE (8u << 20)
#define MAX_IMGS 3

/* ---- environment: a cache device, images, an in-memory model ----------------------------- */

struct env {
	char cpath[256];
	struct pcache_cache_dev *cd;
	struct lb lb;
	int nimg;
	uint32_t id[MAX_IMGS];
	char bpath[MAX_IMGS][256];
	struct pcache_backing *b[MAX_IMGS];
	bool detached[MAX_IMGS];       /* backing_get returns NULL */
	uint8_t *model[MAX_IMGS];      /* expected image after a full writeback */
	uint32_t tail_moves;
	struct pcache_pos last_tail;
	/* flush-before-tail checking (pmem seam wrapper) */
	struct pcache_pmem real;
	uint8_t *base;
	uint64_t tail_persists, tail_bad;
	uint64_t flushes_at_tail;
};

static struct env E;
/* the head the writeback sees: published under a mutex (the writeback thread reads it) */
static pthread_mutex_t head_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pcache_pos pub_head;

/* Upper-layer flush in the log: close the kset, next epoch, publish the new head. */
static void mflush(void)
{
	ck_assert_int_eq(lb_flush(&E.lb), 0);
	pthread_mutex_lock(&head_lock);
	pub_head = E.lb.head;
	pthread_mutex_unlock(&head_lock);
}

static uint64_t env_backing_flushes(void)
{
	uint64_t n = 0;

	for (int i = 0; i < E.nimg; i++) {
		struct pcache_backing_stats st;

		if (!E.b[i])
			continue;
		pcache_backing_get_stats(E.b[i], &st);
		n += st.flushes; /* counted before the flush's callback runs */
	}
	return n;
}

/* Seam wrapper: every store into the dirty_tail slots must come after a new backing flush. */
static bool env_is_tail(const void *addr)
{
	const uint8_t *p = addr;

	return p >= E.base + PCACHE_DIRTY_TAIL_SLOT(0) && p < E.base + PCACHE_DIRTY_TAIL_SLOT(2);
}

static void env_tail_store(void)
{
	uint64_t f = env_backing_flushes();

	E.tail_persists++;
	if (f <= E.flushes_at_tail)
		E.tail_bad++;
	E.flushes_at_tail = f;
}

static void seam_memcpy(void *ctx, void *dst, const void *src, size_t len, unsigned int flags)
{
	if (env_is_tail(dst))
		env_tail_store();
	E.real.ops->memcpy(E.real.ctx, dst, src, len, flags);
}

static void seam_memset(void *ctx, void *dst, int c, size_t len, unsigned int flags)
{
	E.real.ops->memset(E.real.ctx, dst, c, len, flags);
}

static void seam_persist(void *ctx, const void *addr, size_t len)
{
	E.real.ops->persist(E.real.ctx, addr, len);
}

static void seam_flush(void *ctx, const void *addr, size_t len)
{
	E.real.ops->flush(E.real.ctx, addr, len);
}

static void seam_drain(void *ctx)
{
	E.real.ops->drain(E.real.ctx);
}

static const struct pcache_pmem_ops seam_ops = {
	.memcpy = seam_memcpy, .memset = seam_memset, .persist = seam_persist,
	.flush = seam_flush, .drain = seam_drain,
};

static struct pcache_pmem seam_wrap(struct pcache_pmem real, void *base, uint64_t size, void *arg)
{
	struct pcache_pmem p = { .ops = &seam_ops, .ctx = NULL };

	E.real = real;
	E.base = base;
	return p;
}

static void env_open_cd(bool wrap)
{
	struct pcache_cache_dev_opts o;
	char err[256];

	memset(&o, 0, sizeof(o));
	o.path = E.cpath;
	if (wrap)
		o.wrap_pmem = seam_wrap;
	ck_assert_msg(pcache_cache_dev_open(&o, &E.cd, err, sizeof(err)) == 0, "open: %s", err);
}

static void env_zero_file(const char *path, uint64_t size)
{
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	close(fd);
}

/* Format a cache of nsegs 1 MiB segments with nimg zero-filled images of IMG_SIZE. */
static void env_setup(int nimg, uint32_t nsegs, bool data_crc, bool wrap)
{
	struct pcache_format_opts fo;
	char err[256], name[64];

	memset(&E, 0, sizeof(E));
	check_scratch_path(E.cpath, sizeof(E.cpath), "wb-cache");
	unlink(E.cpath);
	memset(&fo, 0, sizeof(fo));
	fo.seg_size = SEG_SIZE;
	fo.data_crc = data_crc;
	ck_assert_msg(pcache_cache_dev_format(E.cpath,
					      (2u << 20) + (uint64_t)nsegs * SEG_SIZE + (1u << 20),
					      &fo, err, sizeof(err)) == 0, "format: %s", err);
	env_open_cd(wrap);
	E.nimg = nimg;
	for (int i = 0; i < nimg; i++) {
		struct pcache_image_ent e;

		snprintf(name, sizeof(name), "wb-img%d", i);
		check_scratch_path(E.bpath[i], sizeof(E.bpath[i]), name);
		env_zero_file(E.bpath[i], IMG_SIZE);
		memset(&e, 0, sizeof(e));
		snprintf(e.name, sizeof(e.name), "img%d", i);
		snprintf(e.path, sizeof(e.path), "%s", E.bpath[i]);
		e.size = IMG_SIZE;
		e.lbs = 512;
		e.state = PCACHE_IMAGE_ATTACHED;
		ck_assert_int_eq(pcache_cache_dev_image_add(E.cd, &e), 0);
		E.id[i] = e.id;
		E.model[i] = calloc(1, IMG_SIZE);
		ck_assert_ptr_nonnull(E.model[i]);
	}
	lb_init(&E.lb, E.cd);
	pthread_mutex_lock(&head_lock);
	pub_head = E.lb.head;
	pthread_mutex_unlock(&head_lock);
}

static void env_open_backings(void)
{
	char err[256];

	for (int i = 0; i < E.nimg; i++)
		ck_assert_msg(pcache_backing_open(E.bpath[i], NULL, &E.b[i], err, sizeof(err)) == 0,
			      "backing %s: %s", E.bpath[i], err);
}

static void env_teardown(void)
{
	for (int i = 0; i < E.nimg; i++) {
		pcache_backing_close(E.b[i]);
		E.b[i] = NULL;
		free(E.model[i]);
		unlink(E.bpath[i]);
	}
	if (E.cd)
		pcache_cache_dev_close(E.cd);
	E.cd = NULL;
	unlink(E.cpath);
}

/* ---- model-tracking log writers ----------------------------------------------------------- */

static void fill(uint8_t *buf, uint32_t len, uint32_t tag)
{
	for (uint32_t i = 0; i < len; i += 4) {
		uint32_t v = tag * 2654435761u + i;

		memcpy(buf + i, &v, 4);
	}
}

static void mwrite(int img, uint64_t off, uint32_t len, uint32_t tag)
{
	uint8_t *buf = malloc(len);

	fill(buf, len, tag);
	ck_assert_int_eq(lb_write(&E.lb, E.id[img], off, buf, len), 0);
	memcpy(E.model[img] + off, buf, len);
	free(buf);
}

static void mzero(int img, uint64_t off, uint32_t len)
{
	ck_assert_int_eq(lb_zero(&E.lb, E.id[img], off, len), 0);
	memset(E.model[img] + off, 0, len);
}

static void check_image(int img)
{
	uint8_t *buf = malloc(IMG_SIZE);
	int fd = open(E.bpath[img], O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, IMG_SIZE, 0), IMG_SIZE);
	close(fd);
	for (uint64_t i = 0; i < IMG_SIZE; i += 512)
		ck_assert_msg(memcmp(buf + i, E.model[img] + i, 512) == 0,
			      "image %d differs from the model at sector offset %" PRIu64, img, i);
	free(buf);
}

/* ---- engine-side ops for the online writeback --------------------------------------------- */

static void ops_head(void *ctx, struct pcache_pos *head)
{
	pthread_mutex_lock(&head_lock);
	*head = pub_head;
	pthread_mutex_unlock(&head_lock);
}

static struct pcache_backing *ops_backing(void *ctx, uint32_t id)
{
	for (int i = 0; i < E.nimg; i++)
		if (E.id[i] == id)
			return E.detached[i] ? NULL : E.b[i];
	return NULL;
}

static void ops_tail(void *ctx, const struct pcache_pos *t)
{
	E.tail_moves++;
	E.last_tail = *t;
}

static const struct pcache_wb_ops test_ops = {
	.key_head = ops_head, .backing_get = ops_backing, .tail_moved = ops_tail,
};

static struct pcache_wb *wb_start_nothread(struct pcache_wb_opts *o)
{
	struct pcache_wb_opts def;
	struct pcache_wb *wb;

	if (!o) {
		memset(&def, 0, sizeof(def));
		o = &def;
	}
	o->no_thread = true;
	o->quiet = true;
	ck_assert_int_eq(pcache_wb_start(E.cd, &test_ops, NULL, o, &wb), 0);
	return wb;
}

/* ---- Core --------------------------------------------------------------------------------- */

START_TEST(offline_writeback_equals_the_expected_images)
{
	struct pcache_wb_offline_opts oo;
	struct pcache_pos dt;
	struct pcache_image_ent ents[8];
	char err[256];
	unsigned int seed = 7;
	int n;

	env_setup(2, 24, false, false);
	for (int ep = 0; ep < 40; ep++) {
		for (int w = 0; w < 20; w++) {
			int img = rand_r(&seed) % 2;
			uint64_t off = (uint64_t)(rand_r(&seed) % (IMG_SIZE / 512 - 64)) * 512;
			uint32_t len = (uint32_t)(1 + rand_r(&seed) % 32) * 512;

			if (rand_r(&seed) % 10 == 0)
				mzero(img, off, len);
			else
				mwrite(img, off, len, (uint32_t)(ep * 100 + w));
		}
		mflush();
	}
	memset(&oo, 0, sizeof(oo));
	oo.wb = &(struct pcache_wb_opts){ .quiet = true };
	ck_assert_msg(pcache_wb_offline(E.cd, &oo, err, sizeof(err)) == 0, "offline: %s", err);
	check_image(0);
	check_image(1);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_eq(dt.lsn, E.lb.head.lsn);
	ck_assert_uint_eq(dt.seg, E.lb.head.seg);
	ck_assert_uint_eq(dt.off, E.lb.head.off);
	n = pcache_cache_dev_images(E.cd, ents, 8);
	ck_assert_int_eq(n, 2);
	for (int i = 0; i < n; i++) {
		ck_assert_uint_eq(ents[i].wb_lsn, E.lb.head.lsn);
		ck_assert_uint_ne(ents[i].wb_time, 0);
	}
	/* a second run finds nothing to do and changes nothing */
	ck_assert_int_eq(pcache_wb_offline(E.cd, &oo, err, sizeof(err)), 0);
	check_image(0);
	env_teardown();
}
END_TEST

static uint32_t prog_id;
static uint64_t prog_lsn, prog_time;

static int ops_progress(void *ctx, uint32_t id, uint64_t lsn, uint64_t t)
{
	prog_id = id;
	prog_lsn = lsn;
	prog_time = t;
	return 0;
}

START_TEST(later_key_wins_within_a_batch_and_adjacent_keys_merge)
{
	struct pcache_wb_ops ops = test_ops;
	struct pcache_wb_opts o = { .no_thread = true, .quiet = true };
	struct pcache_image_ent e;
	struct pcache_wb *wb;
	struct pcache_wb_stats st;

	env_setup(1, 16, false, false);
	env_open_backings();
	/* one epoch: A covers [0, 64K), B overrides [16K, 32K), C overrides [20K, 24K), and a run of
	 * 16 adjacent 4 KiB keys contiguous in pmem at 1 MiB (mergeable into one request) */
	mwrite(0, 0, 65536, 1);
	mwrite(0, 16384, 16384, 2);
	mwrite(0, 20480, 4096, 3);
	for (int i = 0; i < 16; i++)
		mwrite(0, (1u << 20) + (uint64_t)i * 4096, 4096, 10 + (uint32_t)i);
	mflush();
	ops.image_progress = ops_progress; /* the engine persists wb_lsn itself */
	ck_assert_int_eq(pcache_wb_start(E.cd, &ops, NULL, &o, &wb), 0);
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	pcache_wb_get_stats(wb, &st);
	check_image(0);
	ck_assert_uint_eq(prog_id, E.id[0]);
	ck_assert_uint_eq(prog_lsn, E.lb.head.lsn);
	ck_assert_uint_ne(prog_time, 0);
	ck_assert_int_eq(pcache_cache_dev_image_find(E.cd, "img0", &e), 0);
	ck_assert_uint_eq(e.wb_lsn, 0); /* not written behind the engine's back */
	ck_assert_uint_eq(st.bytes_overridden, 16384 + 4096);
	ck_assert_uint_eq(st.bytes_written, 65536 + 65536);
	ck_assert_uint_eq(st.batches, 1);
	ck_assert_uint_eq(st.flushes, 1);
	/* [0,16K) [16K,20K) [20K,24K) [24K,32K) [32K,64K) -- pmem not contiguous across keys --
	 * plus one merged request for the 16 adjacent keys */
	ck_assert_uint_le(st.requests, 6);
	ck_assert_uint_eq(E.tail_moves, 1);
	ck_assert_uint_eq(E.last_tail.lsn, E.lb.head.lsn);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(clean_keys_are_skipped_and_zero_keys_zero_the_backing)
{
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	uint8_t junk[8192];
	int fd;

	env_setup(1, 16, false, false);
	check_make_file(E.bpath[0], IMG_SIZE, 5);
	fd = open(E.bpath[0], O_RDONLY);
	ck_assert_int_eq(pread(fd, E.model[0], IMG_SIZE, 0), IMG_SIZE);
	close(fd);
	env_open_backings();
	/* a CLEAN key whose data differs from the backing: must not be written */
	memset(junk, 0xEE, sizeof(junk));
	ck_assert_int_eq(lb_clean(&E.lb, E.id[0], 8192, junk, sizeof(junk)), 0);
	mwrite(0, 65536, 8192, 4);
	mflush();
	mzero(0, 65536 + 4096, 4096);  /* later epoch zeroes half of it */
	mzero(0, 1u << 20, 1u << 20);  /* and a large range */
	mflush();
	wb = wb_start_nothread(NULL);
	ck_assert_int_eq(pcache_wb_drain(wb, E.id[0]), 0);
	pcache_wb_get_stats(wb, &st);
	check_image(0);
	ck_assert_uint_eq(st.keys_clean_skipped, 1);
	ck_assert_uint_eq(st.bytes_zeroed, 4096 + (1u << 20));
	ck_assert_uint_eq(st.bytes_written, 8192);
	ck_assert_uint_eq(st.epochs, 2);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(dirty_tail_is_persisted_only_after_a_backing_flush)
{
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	struct pcache_wb_opts o;
	unsigned int seed = 3;

	env_setup(2, 24, false, true);
	env_open_backings();
	E.lb.max_keys = 2;
	for (int ep = 0; ep < 30; ep++) {
		for (int w = 0; w < 10; w++)
			mwrite(rand_r(&seed) % 2, (uint64_t)(rand_r(&seed) % 1000) * 4096, 8192,
			       (uint32_t)(ep * 10 + w));
		mflush();
	}
	E.flushes_at_tail = env_backing_flushes();
	memset(&o, 0, sizeof(o));
	o.batch_bytes = 32768; /* several batches per epoch too */
	wb = wb_start_nothread(&o);
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	pcache_wb_get_stats(wb, &st);
	check_image(0);
	check_image(1);
	ck_assert_uint_ge(E.tail_persists, 30);
	ck_assert_uint_eq(E.tail_bad, 0);
	ck_assert_uint_ge(st.batches, 60);
	ck_assert_uint_eq(st.epochs, 30);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

/* ---- Limits: rate ------------------------------------------------------------------------- */

static uint64_t vclock;
static uint64_t vnow(void *arg) { return vclock; }
static void vsleep(void *arg, uint64_t ns) { vclock += ns; }

START_TEST(token_bucket_never_exceeds_rate_plus_burst)
{
	struct pcache_wb_bucket b;
	uint64_t now = 1000, sent = 0;

	pcache_wb_bucket_init(&b, 10u << 20, 1u << 20, now);
	for (int i = 0; i < 10000; i++) {
		uint64_t w = pcache_wb_bucket_take(&b, now, 65536);

		if (w) {
			now += w;
			continue;
		}
		sent += 65536;
		/* bytes sent by now <= burst + rate * elapsed + one request */
		ck_assert_uint_le(sent, (1u << 20) + (now - 1000) * (10u << 20) / 1000000000u + 65536);
	}
	ck_assert_uint_ge(sent, 100u << 20);
	/* rate 0: never waits */
	pcache_wb_bucket_init(&b, 0, 0, 0);
	ck_assert_uint_eq(pcache_wb_bucket_take(&b, 0, 1u << 30), 0);
}
END_TEST

START_TEST(offline_rate_limit_is_respected_on_a_virtual_clock)
{
	struct pcache_wb_offline_opts oo;
	struct pcache_wb_opts o;
	char err[256];
	uint64_t bytes = 6u << 20, rate = 2u << 20;

	env_setup(1, 24, false, false);
	for (uint64_t off = 0; off < bytes; off += 65536) {
		mwrite(0, off, 65536, (uint32_t)(off >> 16));
		if ((off >> 16) % 8 == 7)
			mflush();
	}
	mflush();
	memset(&o, 0, sizeof(o));
	o.quiet = true;
	o.max_req_bytes = 65536;
	o.clock_now = vnow;
	o.clock_sleep = vsleep;
	vclock = 0;
	memset(&oo, 0, sizeof(oo));
	oo.wb = &o;
	oo.rate = rate;
	ck_assert_msg(pcache_wb_offline(E.cd, &oo, err, sizeof(err)) == 0, "%s", err);
	check_image(0);
	/* burst = max(rate / 10, max_req): the virtual time spent covers the rest at `rate` */
	ck_assert_uint_ge(vclock, (bytes - rate / 10 - 65536) * 1000000000ull / rate);
	ck_assert_uint_le(vclock, (bytes + 65536) * 1000000000ull / rate + 1000000000ull);
	env_teardown();
}
END_TEST

static uint32_t pct_now;
static uint32_t ops_pct_now(void *ctx) { return pct_now; }

/* Write 2 MiB of dirty data, drain it with run_once on the virtual clock: virtual ns spent. */
static uint64_t wm_round(struct pcache_wb *wb, uint32_t tag)
{
	uint64_t t0 = vclock;

	for (uint64_t off = 0; off < (2u << 20); off += 65536)
		mwrite(0, off, 65536, tag + (uint32_t)(off >> 16));
	mflush();
	while (pcache_wb_run_once(wb) > 0)
		;
	check_image(0);
	return vclock - t0;
}

START_TEST(above_dirty_high_the_rate_limit_is_lifted_until_below_dirty_low)
{
	struct pcache_wb_ops ops = test_ops;
	struct pcache_wb_opts o;
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	uint64_t rate = 1u << 20, slow = 2 * 1000000000ull - 300000000ull; /* 2 MiB at 1 MiB/s */

	env_setup(1, 40, false, false);
	env_open_backings();
	ops.dirty_percent = ops_pct_now;
	memset(&o, 0, sizeof(o));
	o.no_thread = true;
	o.quiet = true;
	o.max_req_bytes = 65536;
	o.clock_now = vnow;
	o.clock_sleep = vsleep;
	vclock = 0;
	ck_assert_int_eq(pcache_wb_start(E.cd, &ops, NULL, &o, &wb), 0);
	pcache_wb_set_rate(wb, rate);
	ck_assert_int_eq(pcache_wb_set_watermarks(wb, 60, 30), 0);
	pct_now = 45;  /* between the marks, never urgent yet: rate limited */
	ck_assert_uint_ge(wm_round(wb, 100), slow);
	pct_now = 70;  /* above dirty_high: urgent, no limit */
	ck_assert_uint_eq(wm_round(wb, 200), 0);
	pcache_wb_get_stats(wb, &st);
	ck_assert(st.urgent);
	pct_now = 45;  /* still above dirty_low: stays urgent (hysteresis) */
	ck_assert_uint_eq(wm_round(wb, 300), 0);
	pct_now = 20;  /* below dirty_low: urgent ends, the limit is back */
	ck_assert_uint_ge(wm_round(wb, 400), slow);
	pcache_wb_get_stats(wb, &st);
	ck_assert(!st.urgent);
	ck_assert_uint_gt(st.rate_waits, 0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

/* ---- Errors ------------------------------------------------------------------------------- */

START_TEST(missing_backing_blocks_the_tail_but_other_images_keep_going)
{
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	struct pcache_wb_image_stats is0, is1;
	struct pcache_pos dt;
	int r;

	env_setup(2, 16, false, false);
	env_open_backings();
	mwrite(1, 0, 4096, 1);
	mflush();
	mwrite(0, 0, 4096, 2);          /* image 0 first dirty in epoch 2 */
	mwrite(1, 4096, 4096, 3);
	mflush();
	mwrite(1, 8192, 4096, 4);
	mwrite(0, 0, 4096, 5);
	mflush();
	E.detached[0] = true;
	wb = wb_start_nothread(NULL);
	/* image 1 drains fully although image 0 cannot be written */
	ck_assert_int_eq(pcache_wb_drain(wb, E.id[1]), 0);
	check_image(1);
	r = pcache_wb_drain(wb, 0);
	ck_assert_int_eq(r, -ENXIO);
	pcache_wb_get_stats(wb, &st);
	ck_assert_int_eq(pcache_wb_image_stats(wb, E.id[0], &is0), 0);
	ck_assert_int_eq(pcache_wb_image_stats(wb, E.id[1], &is1), 0);
	ck_assert(is0.blocked);
	ck_assert(!is1.blocked);
	ck_assert_uint_eq(is1.wb_lsn, E.lb.head.lsn);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	/* dirty_tail stops at the epoch-2 kset: image 0's first dirty key */
	ck_assert_uint_eq(dt.lsn, 2);
	/* the image comes back (the engine kicks at attach): retried at once, not after 1 s */
	E.detached[0] = false;
	pcache_wb_kick(wb);
	usleep(150 * 1000);
	ck_assert_int_eq(pcache_wb_run_once(wb), 1);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_gt(dt.lsn, 2);
	/* everything drains, image 1 is not written twice */
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	check_image(0);
	check_image(1);
	pcache_wb_get_stats(wb, &st);
	ck_assert_uint_eq(st.bytes_written, 5 * 4096);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_eq(dt.lsn, E.lb.head.lsn);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

static const char *tool_path(char *buf, size_t len, const char *name)
{
	const char *b = getenv("PCACHE_BUILD");

	snprintf(buf, len, "%s/tools/%s", b ? b : "build", name);
	return buf;
}

static int flaky_ctl(const char *mnt, const char *cmd)
{
	char p[300];
	int fd, r;

	snprintf(p, sizeof(p), "%s/.control", mnt);
	fd = open(p, O_WRONLY);
	if (fd < 0)
		return -errno;
	r = write(fd, cmd, strlen(cmd)) == (ssize_t)strlen(cmd) ? 0 : -errno;
	close(fd);
	return r;
}

START_TEST(backing_eio_is_retried_without_dropping_data_and_counted)
{
	char tool[300], mnt[256], real[256], opt[600], img[300];
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	struct pcache_wb_image_stats is;
	struct pcache_pos dt;
	char err[256];
	pid_t pid;
	int status;

	tool_path(tool, sizeof(tool), "flakyfs");
	if (access(tool, X_OK) != 0 || access("/dev/fuse", R_OK | W_OK) != 0) {
		fprintf(stderr, "cache_writeback: flakyfs or /dev/fuse missing, EIO case uses ENXIO only\n");
		return;
	}
	env_setup(2, 16, false, false);
	check_scratch_path(mnt, sizeof(mnt), "wb-flaky");
	mkdir(mnt, 0700);
	snprintf(real, sizeof(real), "%s", E.bpath[0]);
	snprintf(opt, sizeof(opt), "backing=%s,name=image", real);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		execl(tool, "flakyfs", "-f", "-o", opt, mnt, (char *)NULL);
		_exit(127);
	}
	snprintf(img, sizeof(img), "%s/image", mnt);
	for (int i = 0; i < 200 && access(img, F_OK) != 0; i++)
		usleep(20000);
	ck_assert_msg(access(img, F_OK) == 0, "flakyfs did not come up");
	/* fail the next 3 writes at [0, 64K) with EIO, and 1 with ENOSPC at 1 MiB */
	ck_assert_int_eq(flaky_ctl(mnt, "eio 0 65536 w 3\nenospc 1048576 4096 w 1\n"), 0);
	ck_assert_msg(pcache_backing_open(img, NULL, &E.b[0], err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(pcache_backing_open(E.bpath[1], NULL, &E.b[1], err, sizeof(err)) == 0, "%s", err);
	mwrite(0, 0, 8192, 1);
	mwrite(1, 0, 8192, 2);
	mflush();
	mwrite(0, 1u << 20, 4096, 3);
	mwrite(1, 8192, 8192, 4);
	mflush();
	wb = wb_start_nothread(NULL);
	/* first attempt fails: nothing of image 0 past it, dirty_tail stays, image 1 is written */
	ck_assert_int_eq(pcache_wb_run_once(wb), 1);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_eq(dt.lsn, 1);
	ck_assert_int_eq(pcache_wb_image_stats(wb, E.id[0], &is), 0);
	ck_assert(is.blocked);
	ck_assert_int_eq(is.last_error, -EIO);
	/* drain: errors during the drain are reported, the data stays dirty; keep draining */
	for (int i = 0; i < 10; i++) {
		int r = pcache_wb_drain(wb, 0);

		if (r == 0)
			break;
		ck_assert_msg(r == -EIO || r == -ENOSPC, "drain: %d", r);
	}
	pcache_wb_get_stats(wb, &st);
	ck_assert_uint_ge(st.errors, 2);
	ck_assert_uint_ge(st.retries, 2);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_eq(dt.lsn, E.lb.head.lsn);
	pcache_wb_stop(wb);
	pcache_backing_close(E.b[0]);
	E.b[0] = NULL;
	check_image(0);
	check_image(1);
	umount2(mnt, MNT_DETACH);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	rmdir(mnt);
	env_teardown();
}
END_TEST

START_TEST(data_crc_mismatch_stops_that_image_and_never_writes_garbage)
{
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	struct pcache_wb_image_stats is;
	uint8_t *p;
	uint8_t saved[4096];

	env_setup(2, 16, true, false);
	env_open_backings();
	mwrite(0, 0, 4096, 1);
	mflush();
	memcpy(saved, E.model[0], 4096);
	E.lb.max_keys = 128;
	mwrite(0, 0, 4096, 2);                  /* this one gets corrupted in pmem */
	p = lb_last_data(&E.lb);
	ck_assert_ptr_nonnull(p);
	p[100] ^= 0xFF;
	mwrite(1, 0, 4096, 3);
	mflush();
	mwrite(0, 8192, 4096, 4);               /* later epoch of the bad image: not written */
	mwrite(1, 8192, 4096, 5);
	mflush();
	wb = wb_start_nothread(NULL);
	ck_assert_int_eq(pcache_wb_drain(wb, E.id[1]), 0);
	ck_assert_int_eq(pcache_wb_drain(wb, E.id[0]), -EBADMSG);
	pcache_wb_get_stats(wb, &st);
	ck_assert_uint_eq(st.crc_errors, 1);
	ck_assert_uint_ge(st.errors, 1);
	ck_assert_int_eq(pcache_wb_image_stats(wb, E.id[0], &is), 0);
	ck_assert(is.blocked);
	check_image(1);
	/* image 0 holds epoch 1 only */
	memset(E.model[0], 0, IMG_SIZE);
	memcpy(E.model[0], saved, 4096);
	check_image(0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(corrupt_kset_before_key_head_latches_the_writeback)
{
	struct pcache_wb *wb;
	uint8_t *ks;

	env_setup(1, 16, false, false);
	env_open_backings();
	mwrite(0, 0, 4096, 1);
	mflush();
	mwrite(0, 4096, 4096, 2);
	mflush();
	/* flip a byte of the second kset's key (after the first kset of one key) */
	ks = (uint8_t *)pcache_cache_dev_seg_addr(E.cd, 0) + PCACHE_KSET_SIZE(1);
	ks[PCACHE_KSET_HDR_SIZE + 2] ^= 1;
	wb = wb_start_nothread(NULL);
	ck_assert_int_eq(pcache_wb_drain(wb, 0), -EUCLEAN);
	ck_assert_int_eq(pcache_wb_run_once(wb), -EUCLEAN);
	/* the first epoch was written and its tail persisted */
	ck_assert_uint_eq(E.last_tail.lsn, 2);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

/* ---- Threads ------------------------------------------------------------------------------ */

static _Atomic uint32_t pct_value;
static uint32_t ops_pct(void *ctx) { return pct_value; }

START_TEST(thread_drains_on_request_and_on_kick)
{
	struct pcache_wb_ops ops = test_ops;
	struct pcache_wb_opts o;
	struct pcache_wb *wb;
	struct pcache_wb_stats st;
	struct pcache_wb_image_stats is;
	struct pcache_image_ent e;

	env_setup(2, 16, false, false);
	env_open_backings();
	ops.dirty_percent = ops_pct;
	pct_value = 0;
	for (int i = 0; i < 20; i++) {
		mwrite(i % 2, (uint64_t)i * 8192, 8192, (uint32_t)i);
		mflush();
	}
	memset(&o, 0, sizeof(o));
	o.quiet = true;
	ck_assert_int_eq(pcache_wb_start(E.cd, &ops, NULL, &o, &wb), 0);
	ck_assert_int_eq(pcache_wb_drain(wb, E.id[0]), 0);
	check_image(0);
	ck_assert_int_eq(pcache_wb_image_stats(wb, E.id[0], &is), 0);
	ck_assert_uint_ge(is.wb_lsn, 20);
	ck_assert_int_eq(pcache_cache_dev_image_find(E.cd, "img0", &e), 0);
	ck_assert_uint_ge(e.wb_lsn, 20); /* persisted at the drain */
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	check_image(1);
	/* new data after the drain: a kick (idle thread) writes it back without a drain */
	mwrite(1, 1u << 20, 4096, 99);
	mflush();
	pcache_wb_kick(wb);
	for (int i = 0; i < 500; i++) {
		pcache_wb_get_stats(wb, &st);
		if (st.dirty_tail.lsn == E.lb.head.lsn)
			break;
		usleep(10000);
	}
	ck_assert_uint_eq(st.dirty_tail.lsn, E.lb.head.lsn);
	ck_assert_uint_eq(st.drain_target_lsn, 21); /* the head at the last drain */
	check_image(1);
	ck_assert_int_eq(pcache_wb_set_watermarks(wb, 30, 40), -EINVAL);
	ck_assert_int_eq(pcache_wb_set_watermarks(wb, 50, 20), 0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

static _Atomic bool idle_value;
static bool ops_idle(void *ctx) { (void)ctx; return atomic_load(&idle_value); }

/*
 * A writeback thread with user I/O going on (idle() false) at pct_value percent dirty over a
 * log of 64 dirty 8 KiB keys in ksets of 2 (batches are cut at kset boundaries); a full batch
 * is 32 keys, a busy one 2.
 */
static struct pcache_wb *busy_wb_start(uint32_t interval_ms)
{
	struct pcache_wb_ops ops = test_ops;
	struct pcache_wb_opts o;
	struct pcache_wb *wb;

	env_setup(1, 16, false, false);
	env_open_backings();
	ops.dirty_percent = ops_pct;
	ops.idle = ops_idle;
	atomic_store(&idle_value, false);
	E.lb.max_keys = 2;
	for (uint32_t i = 0; i < 64; i++)
		mwrite(0, (uint64_t)i * 8192, 8192, i + 1);
	mflush();
	memset(&o, 0, sizeof(o));
	o.quiet = true;
	o.batch_keys = 32;
	o.idle_interval_ms = interval_ms;
	ck_assert_int_eq(pcache_wb_start(E.cd, &ops, NULL, &o, &wb), 0);
	return wb;
}

START_TEST(busy_below_dirty_low_trickles_small_batches_and_idle_drains)
{
	struct pcache_wb_stats st;
	struct pcache_wb *wb;

	uint64_t wakes;

	pct_value = 0;                 /* below dirty_low */
	wb = busy_wb_start(400);
	for (int i = 0; i < 100; i++) { /* the first trickle batch, then the pause */
		pcache_wb_get_stats(wb, &st);
		if (st.keys_dirty)
			break;
		usleep(1000);
	}
	usleep(20 * 1000);
	pcache_wb_get_stats(wb, &st);
	wakes = st.wakes;
	for (int i = 0; i < 5; i++) {
		usleep(40 * 1000);
		pcache_wb_kick_data(wb); /* what every kset close does: it must not end the pause */
	}
	pcache_wb_get_stats(wb, &st);
	_Static_assert(PCACHE_WB_TRICKLE_DIV == 16, "the bound below assumes 2-key trickle batches");
	ck_assert_msg(st.keys_dirty <= 2,
		      "busy, below dirty_low: %llu keys written in the first interval",
		      (unsigned long long)st.keys_dirty);
	/* nor even wake the thread (a context switch per kset close) */
	ck_assert_uint_eq(st.wakes, wakes);
	/* ... unless dirty data reached dirty_high */
	pct_value = 100;
	pcache_wb_kick_data(wb);
	for (int i = 0; i < 100 && st.wakes == wakes; i++) {
		usleep(10 * 1000);
		pcache_wb_get_stats(wb, &st);
	}
	ck_assert_uint_gt(st.wakes, wakes);
	pct_value = 0;
	/* idle: continuous, full batches */
	atomic_store(&idle_value, true);
	pcache_wb_kick(wb);
	for (int i = 0; i < 500; i++) {
		pcache_wb_get_stats(wb, &st);
		if (st.dirty_tail.lsn == E.lb.head.lsn)
			break;
		usleep(10000);
	}
	ck_assert_uint_eq(st.dirty_tail.lsn, E.lb.head.lsn);
	ck_assert_uint_eq(st.keys_dirty, 64);
	check_image(0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(busy_pause_shrinks_from_dirty_low_to_dirty_high)
{
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(0, 50, 80, 1000), 1000000000ull);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(49, 50, 80, 1000), 1000000000ull);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(50, 50, 80, 1000), 1000000000ull);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(65, 50, 80, 1000), 500000000ull);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(79, 50, 80, 1000), 1000000000ull / 30);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(80, 50, 80, 1000), 0);
	ck_assert_uint_eq(pcache_wb_busy_pause_ns(100, 50, 80, 1000), 0);
}
END_TEST

START_TEST(busy_near_dirty_high_writes_back_without_long_pauses)
{
	struct pcache_wb_stats st;
	struct pcache_wb *wb;

	pct_value = 0;
	wb = busy_wb_start(1000);
	ck_assert_int_eq(pcache_wb_set_watermarks(wb, 60, 20), 0);
	pct_value = 59;                /* pause 1000 ms * 1/40 = 25 ms after each 2-key batch */
	pcache_wb_kick(wb);
	for (int i = 0; i < 300; i++) {
		pcache_wb_get_stats(wb, &st);
		if (st.keys_dirty >= 16)
			break;
		usleep(10000);
	}
	/* with the full pause below dirty_low this takes 8 s */
	ck_assert_msg(st.keys_dirty >= 16, "busy at 59 %% of 20..60: only %llu keys in 3 s",
		      (unsigned long long)st.keys_dirty);
	ck_assert(!st.urgent);
	pct_value = 0;
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(stop_cuts_a_rate_limited_batch_short_and_leaves_it_dirty)
{
	struct pcache_cache_info ci;
	struct pcache_wb_opts o;
	struct pcache_wb *wb;
	struct pcache_pos dt;
	uint64_t t0;

	env_setup(1, 16, false, false);
	env_open_backings();
	for (uint64_t off = 0; off < (4u << 20); off += 65536)
		mwrite(0, off, 65536, (uint32_t)(off >> 16));
	mflush();
	pcache_cache_dev_get_info(E.cd, &ci);
	ci.wb_rate = 256u << 10; /* the batch would take 16 s */
	ck_assert_int_eq(pcache_cache_dev_set_info(E.cd, &ci), 0);
	memset(&o, 0, sizeof(o));
	o.quiet = true;
	o.max_req_bytes = 65536;
	ck_assert_int_eq(pcache_wb_start(E.cd, &test_ops, NULL, &o, &wb), 0);
	usleep(300 * 1000);
	t0 = pcache_now_ns();
	pcache_wb_stop(wb);
	ck_assert_uint_lt(pcache_now_ns() - t0, 1000000000ull);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	ck_assert_uint_eq(dt.lsn, 1); /* the cut batch stays dirty */
	/* a new writeback (unlimited) finishes it */
	ci.wb_rate = 0;
	ck_assert_int_eq(pcache_cache_dev_set_info(E.cd, &ci), 0);
	wb = wb_start_nothread(NULL);
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	check_image(0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

START_TEST(drain_ends_a_rate_limited_wait_at_once)
{
	struct pcache_cache_info ci;
	struct pcache_wb_opts o;
	struct pcache_wb *wb;
	uint64_t t0;

	env_setup(1, 16, false, false);
	env_open_backings();
	for (uint64_t off = 0; off < (4u << 20); off += 65536)
		mwrite(0, off, 65536, (uint32_t)(off >> 16) + 7);
	mflush();
	pcache_cache_dev_get_info(E.cd, &ci);
	ci.wb_rate = 1; /* 1 B/s: a throttled batch would never end by itself */
	ck_assert_int_eq(pcache_cache_dev_set_info(E.cd, &ci), 0);
	memset(&o, 0, sizeof(o));
	o.quiet = true;
	o.max_req_bytes = 65536;
	ck_assert_int_eq(pcache_wb_start(E.cd, &test_ops, NULL, &o, &wb), 0);
	usleep(300 * 1000); /* the thread is now waiting for tokens */
	t0 = pcache_now_ns();
	ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
	ck_assert_uint_lt(pcache_now_ns() - t0, 30ull * 1000000000ull);
	check_image(0);
	pcache_wb_stop(wb);
	env_teardown();
}
END_TEST

/* ---- Crash consistency -------------------------------------------------------------------- */

/*
 * Each write stamps its sectors with its write id (and the sector offset), so a backing sector
 * names the write it came from. For each sector the history lists (epoch, id) in log order.
 * A state is valid for epoch E when every sector holds the last value of epochs < E or some
 * value of epoch E; per sector that is an interval of E, and the state is valid when the
 * intersection of all intervals (and E >= the epoch at the persisted dirty_tail) is not empty.
 */
#define CC_IMG (1u << 20)
#define CC_SECTORS (CC_IMG / 512)
#define CC_MAXW 2048

struct cc_hist {
	uint32_t n;
	uint32_t *ids;  /* write ids in log order */
};

struct cc {
	uint32_t nw;
	uint32_t epoch_of[CC_MAXW + 1];  /* write id -> epoch (id 0 = original zeros) */
	struct cc_hist h[CC_SECTORS];
	uint64_t epoch_at_lsn[8192];     /* kset lsn -> epoch, 0 for LAST */
	uint64_t last_epoch;
	char pristine[256];
};

static struct cc CC;

static void cc_stamp(uint8_t *buf, uint32_t len, uint32_t id, uint64_t off)
{
	for (uint32_t s = 0; s < len; s += 512) {
		uint32_t w[4] = { id, (uint32_t)((off + s) / 512), id ^ 0xA5A5A5A5u, 0x5EC70000u };

		memset(buf + s, (int)(id & 0xFF), 512);
		memcpy(buf + s, w, sizeof(w));
	}
}

static void cc_build(unsigned int seed)
{
	uint32_t epoch = 1;
	uint64_t prev_lsn = E.lb.head.lsn;

	memset(&CC, 0, sizeof(CC));
	for (uint32_t id = 1; id <= CC_MAXW; id++) {
		uint32_t len = (uint32_t)(1 + rand_r(&seed) % 16) * 512;
		uint64_t off = (uint64_t)(rand_r(&seed) % (CC_SECTORS - 16)) * 512;
		uint8_t buf[16 * 512];

		cc_stamp(buf, len, id, off);
		ck_assert_int_eq(lb_write(&E.lb, E.id[0], off, buf, len), 0);
		CC.epoch_of[id] = epoch;
		for (uint32_t s = 0; s < len / 512; s++) {
			struct cc_hist *h = &CC.h[off / 512 + s];

			h->ids = realloc(h->ids, (h->n + 1) * sizeof(*h->ids));
			h->ids[h->n++] = id;
		}
		CC.nw = id;
		if (rand_r(&seed) % 24 == 0) {
			mflush();
			for (uint64_t l = prev_lsn; l < E.lb.head.lsn && l < 8192; l++)
				CC.epoch_at_lsn[l] = epoch;
			prev_lsn = E.lb.head.lsn;
			epoch++;
		}
	}
	mflush();
	for (uint64_t l = prev_lsn; l < E.lb.head.lsn && l < 8192; l++)
		CC.epoch_at_lsn[l] = epoch;
	CC.last_epoch = epoch;
}

/* 0 when the backing image is a valid epoch-prefix state consistent with dirty_tail_lsn. */
static int cc_check(const char *path, uint64_t dirty_tail_lsn, char *why, size_t wlen)
{
	uint8_t *img = malloc(CC_IMG);
	uint64_t lo = 1, hi = UINT64_MAX;
	int fd = open(path, O_RDONLY), r = 0;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, img, CC_IMG, 0), CC_IMG);
	close(fd);
	if (dirty_tail_lsn >= E.lb.head.lsn)
		lo = CC.last_epoch + 1;
	else if (dirty_tail_lsn < 8192 && CC.epoch_at_lsn[dirty_tail_lsn])
		lo = CC.epoch_at_lsn[dirty_tail_lsn];
	for (uint32_t s = 0; s < CC_SECTORS && !r; s++) {
		const uint8_t *p = img + (uint64_t)s * 512;
		const struct cc_hist *h = &CC.h[s];
		uint32_t id, w[4];
		uint64_t slo, shi;
		uint32_t k;

		memcpy(w, p, sizeof(w));
		id = w[0];
		if (id == 0) {
			for (uint32_t i = 0; i < 512; i++)
				if (p[i]) {
					snprintf(why, wlen, "sector %u: garbage", s);
					r = -1;
					break;
				}
			if (r)
				break;
			slo = 0;
			shi = h->n ? CC.epoch_of[h->ids[0]] : UINT64_MAX;
		} else {
			if (id > CC.nw || w[1] != s || w[2] != (id ^ 0xA5A5A5A5u) || w[3] != 0x5EC70000u) {
				snprintf(why, wlen, "sector %u: not a write of this sector", s);
				r = -1;
				break;
			}
			for (k = 0; k < h->n && h->ids[k] != id; k++)
				;
			if (k == h->n) {
				snprintf(why, wlen, "sector %u: write %u never touched it", s, id);
				r = -1;
				break;
			}
			slo = CC.epoch_of[id];
			/* last of its epoch for this sector: valid up to the next write's epoch */
			if (k + 1 < h->n && CC.epoch_of[h->ids[k + 1]] == slo)
				shi = slo;
			else
				shi = k + 1 < h->n ? CC.epoch_of[h->ids[k + 1]] : UINT64_MAX;
		}
		lo = PCACHE_MAX(lo, slo);
		hi = PCACHE_MIN(hi, shi);
		if (lo > hi) {
			snprintf(why, wlen, "sector %u (write %u, epoch %" PRIu64
				 "): no epoch-prefix state fits (E in [%" PRIu64 ", %" PRIu64 "])", s, id,
				 id ? (uint64_t)CC.epoch_of[id] : 0, lo, hi);
			r = -1;
		}
	}
	free(img);
	return r;
}

static void copy_file(const char *from, const char *to)
{
	static uint8_t buf[1 << 20];
	int a = open(from, O_RDONLY), b = open(to, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	ssize_t n;

	ck_assert(a >= 0 && b >= 0);
	while ((n = read(a, buf, sizeof(buf))) > 0)
		ck_assert_int_eq(write(b, buf, (size_t)n), n);
	close(a);
	close(b);
}

/* Reset the cache device and the backing to the state before any writeback. */
static void cc_reset(void)
{
	if (E.cd)
		pcache_cache_dev_close(E.cd);
	E.cd = NULL;
	copy_file(CC.pristine, E.cpath);
	env_zero_file(E.bpath[0], IMG_SIZE);
}

static uint64_t cc_dirty_tail(void)
{
	struct pcache_pos dt;

	env_open_cd(false);
	pcache_cache_dev_get_dirty_tail(E.cd, &dt);
	return dt.lsn;
}

static void cc_run_child(uint64_t stop_after)
{
	struct pcache_wb_offline_opts oo;
	struct pcache_wb_opts o;
	char err[256];

	memset(&o, 0, sizeof(o));
	o.quiet = true;
	o.max_req_bytes = 8192;     /* many requests in flight */
	o.batch_bytes = 48u << 10;  /* several batches per epoch */
	o.stop_after_reqs = stop_after;
	memset(&oo, 0, sizeof(oo));
	oo.wb = &o;
	env_open_cd(false);
	if (pcache_wb_offline(E.cd, &oo, err, sizeof(err)) != 0 && !stop_after)
		fprintf(stderr, "cache_writeback: child: %s\n", err);
}

START_TEST(backing_is_an_epoch_prefix_state_at_every_stop_point)
{
	int rounds = getenv("PCACHE_SOAK") ? 2000 : 300;
	unsigned int seed = 12345;
	uint64_t states = 0, violations = 0, total_reqs, kill_window_us = 0, midway = 0;
	struct pcache_wb_stats st;
	char why[256];

	if (check_under_tsan())
		rounds = 20;
	env_setup(1, 20, false, false);
	E.lb.max_keys = 8; /* several ksets per epoch, batches cut inside epochs */
	cc_build(99);
	pcache_cache_dev_close(E.cd);
	E.cd = NULL;
	check_scratch_path(CC.pristine, sizeof(CC.pristine), "wb-cc-pristine");
	copy_file(E.cpath, CC.pristine);
	env_zero_file(E.bpath[0], IMG_SIZE);

	/* a full run: the final state and the number of requests */
	{
		struct pcache_wb *wb;
		uint64_t t0 = pcache_now_ns();

		env_open_cd(false);
		env_open_backings();
		wb = wb_start_nothread(&(struct pcache_wb_opts){ .max_req_bytes = 8192,
								 .batch_bytes = 48u << 10 });
		ck_assert_int_eq(pcache_wb_drain(wb, 0), 0);
		pcache_wb_get_stats(wb, &st);
		pcache_wb_stop(wb);
		pcache_backing_close(E.b[0]);
		E.b[0] = NULL;
		total_reqs = st.requests;
		kill_window_us = (pcache_now_ns() - t0) / 1000 * 2 + 2000;
		ck_assert_msg(cc_check(E.bpath[0], E.lb.head.lsn, why, sizeof(why)) == 0, "final: %s", why);
		states++;
		ck_assert_uint_gt(st.epochs, 50);
	}

	for (int i = 0; i < rounds; i++) {
		bool by_kill = i % 2;
		uint64_t dt;
		pid_t pid;
		int status;

		cc_reset();
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			cc_run_child(by_kill ? 0 : 1 + (uint64_t)rand_r(&seed) % total_reqs);
			_exit(0);
		}
		if (by_kill) {
			usleep((useconds_t)((uint64_t)rand_r(&seed) % kill_window_us));
			kill(pid, SIGKILL);
		}
		(void)rand_r(&seed);
		waitpid(pid, &status, 0);
		dt = cc_dirty_tail();
		if (dt > 1 && dt < E.lb.head.lsn)
			midway++; /* stopped inside the writeback, not before or after it */
		if (cc_check(E.bpath[0], dt, why, sizeof(why)) != 0) {
			violations++;
			fprintf(stderr, "cache_writeback: violation (round %d, dirty_tail lsn %" PRIu64
				"): %s\n", i, dt, why);
		}
		states++;
	}
	printf("%" PRIu64 " backing states checked, %" PRIu64 " violations (%" PRIu64
	       " stopped midway)\n", states, violations, midway);
	fflush(stdout);
	ck_assert_uint_eq(violations, 0);
	ck_assert_uint_ge(midway, (uint64_t)rounds / 3);
	for (uint32_t s = 0; s < CC_SECTORS; s++)
		free(CC.h[s].ids);
	unlink(CC.pristine);
	env_teardown();
}
END_TEST

Suite *cache_writeback_suite(void);
Suite *cache_writeback_suite(void)
{
	Suite *s = suite_create("cache_writeback");
	TCase *tc = tcase_create("Core");
	TCase *tl = tcase_create("Limits");
	TCase *te = tcase_create("Errors");
	TCase *tt = tcase_create("Threads");
	TCase *tx = tcase_create("Crash");

	tcase_add_test(tc, offline_writeback_equals_the_expected_images);
	tcase_add_test(tc, later_key_wins_within_a_batch_and_adjacent_keys_merge);
	tcase_add_test(tc, clean_keys_are_skipped_and_zero_keys_zero_the_backing);
	tcase_add_test(tc, dirty_tail_is_persisted_only_after_a_backing_flush);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tl, token_bucket_never_exceeds_rate_plus_burst);
	tcase_add_test(tl, offline_rate_limit_is_respected_on_a_virtual_clock);
	tcase_add_test(tl, above_dirty_high_the_rate_limit_is_lifted_until_below_dirty_low);
	tcase_add_test(te, missing_backing_blocks_the_tail_but_other_images_keep_going);
	tcase_add_test(te, backing_eio_is_retried_without_dropping_data_and_counted);
	tcase_add_test(te, data_crc_mismatch_stops_that_image_and_never_writes_garbage);
	tcase_add_test(te, corrupt_kset_before_key_head_latches_the_writeback);
	tcase_set_timeout(te, 60);
	tcase_add_test(tt, thread_drains_on_request_and_on_kick);
	tcase_add_test(tt, busy_below_dirty_low_trickles_small_batches_and_idle_drains);
	tcase_add_test(tt, busy_pause_shrinks_from_dirty_low_to_dirty_high);
	tcase_add_test(tt, busy_near_dirty_high_writes_back_without_long_pauses);
	tcase_add_test(tt, stop_cuts_a_rate_limited_batch_short_and_leaves_it_dirty);
	tcase_add_test(tt, drain_ends_a_rate_limited_wait_at_once);
	tcase_set_timeout(tt, 60);
	tcase_add_test(tx, backing_is_an_epoch_prefix_state_at_every_stop_point);
	tcase_set_timeout(tx, getenv("PCACHE_SOAK") ? 1200 : 120);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, tl);
	suite_add_tcase(s, te);
	suite_add_tcase(s, tt);
	suite_add_tcase(s, tx);
	return s;
}
