/*
 * check_cache_wbskip.c -- the writeback skips dirty bytes that a later key of the same flush
 * epoch replaced (core/cache_wbglue.c wbo_live(), core/cache_writeback.c), and only those: across a
 * flush, for ZERO keys replaced by ZERO keys, and while the epoch a key will carry is not
 * certain, every key is written. A randomized run checks after every batch that the backing
 * holds an epoch-prefix state (the crash-consistency contract). Also the dirty-bytes measure
 * the watermarks use, and writethrough/writearound keys: their data is on the backing already,
 * so an older key of the same bytes is never written after them, whatever the epochs, and
 * FUA writes, never skipped for a later key of their epoch (it may not be durable yet), and
 * their backing write waits while the writeback holds the image (its through gate). A key skipped
 * for a later key that was only staged must never be left behind dirty_tail unwritten: after
 * a crash the engine and the backing agree, before and after GC (issue 13 item 1). And a
 * writethrough write is never held back by a writeback sleeping in its rate limit; the batch
 * then looks again before it writes older data of those bytes (item 8).
 */
#include <check.h>
#include <fcntl.h>
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

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

/* Start the engine on cpath (no background threads: batches run when a test says) and
 * attach the image. */
static void open_cache(void)
{
	char err[256];

	ck_assert_msg(eng_start(cpath, ipath, "s", false, false, &c, &img, err, sizeof(err)) == 0,
		      "start: %s", err);
}

/* Stop without a drain and start again: the log is replayed. */
static void restart(void)
{
	pcache_image_put(img);
	img = NULL;
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	open_cache();
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "wbskip-cache");
	check_scratch_path(ipath, sizeof(ipath), "wbskip-img");
	ck_assert_int_eq(eng_format(cpath, 128u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, IMG_SIZE, 1);
	open_cache();
}

static void teardown(void)
{
	eng_close(&c, &img, cpath, ipath);
}

static void wr(uint64_t off, size_t len, uint32_t v)
{
	ck_assert_int_eq(eng_write(img, off, len, 1, v), 0);
}

/* The value of every sector of [off, off + len) on the backing file must be want. */
static void backing_is(uint64_t off, size_t len, uint32_t want)
{
	uint8_t *buf = malloc(len);
	int fd = open(ipath, O_RDONLY);
	uint32_t v;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
	for (size_t s = 0; s < len; s += 512) {
		ck_assert_int_eq(eng_decode(buf + s, 1, off + s, &v), 0);
		ck_assert_msg(v == want, "backing sector %llu: %u, want %u",
			      (unsigned long long)(off + s) / 512, v, want);
	}
	free(buf);
}

/* A crash (kill -9, power loss) before the staging ksets close: the staged keys are lost,
 * then the engine starts again and replays the log. */
static void crash_restart(void)
{
	for (uint32_t i = 0; i < PCACHE_NSTAGE; i++) {
		pthread_mutex_lock(&c->stage[i].lock);
		c->stage[i].n = 0;
		pthread_mutex_unlock(&c->stage[i].lock);
	}
	restart();
}

/* The versions the engine reads in [off, off + len), one per sector, into v. */
static void engine_read_versions(uint64_t off, size_t len, uint32_t *v)
{
	uint8_t *buf = malloc(len);

	ck_assert_int_eq(eng_read(img, buf, off, len), 0);
	for (size_t s = 0; s < len; s += 512)
		ck_assert_int_eq(eng_decode(buf + s, 1, off + s, &v[s / 512]), 0);
	free(buf);
}

/* Every sector of [off, off + len) reads as want[] through the engine and on the backing. */
static void engine_and_backing_are(uint64_t off, size_t len, const uint32_t *want)
{
	uint32_t *ev = malloc(len / 512 * sizeof(*ev));

	engine_read_versions(off, len, ev);
	for (size_t s = 0; s < len; s += 512) {
		ck_assert_msg(ev[s / 512] == want[s / 512], "sector %llu: the engine reads %u, "
			      "it read %u before", (unsigned long long)(off + s) / 512, ev[s / 512],
			      want[s / 512]);
		backing_is(off + s, 512, want[s / 512]);
	}
	free(ev);
}

static uint64_t superseded(void)
{
	struct pcache_wb_stats st;

	pcache_wb_get_stats(c->wb, &st);
	return st.bytes_superseded;
}

START_TEST(a_key_replaced_in_the_same_epoch_is_not_written)
{
	wr(0, 65536, 1);
	wr(16384, 16384, 2);     /* replaces the middle of the first key */
	wr(1u << 20, 8192, 3);
	wr(1u << 20, 8192, 4);   /* replaces all of it */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 16384 + 8192);
	backing_is(0, 16384, 1);
	backing_is(16384, 16384, 2);
	backing_is(32768, 32768, 1);
	backing_is(1u << 20, 8192, 4);
}
END_TEST

START_TEST(a_key_replaced_after_a_flush_is_written)
{
	struct pcache_wb_stats st;

	wr(0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 65536, 2);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	/* the first epoch alone: the flushed value must reach the backing */
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	backing_is(0, 65536, 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_is(0, 65536, 2);
	pcache_wb_get_stats(c->wb, &st);
	ck_assert_uint_eq(st.bytes_superseded, 0);
	ck_assert_uint_eq(st.bytes_written, 2 * 65536);
}
END_TEST

START_TEST(zero_keys_replaced_by_zero_keys_are_written)
{
	wr(0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_image_discard(img, 0, 65536, true), 0);
	ck_assert_int_eq(pcache_image_discard(img, 0, 65536, true), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 0);
	backing_is(0, 65536, ENG_ZERO);
	/* but data replaced by a ZERO key of the same epoch is skipped */
	wr(1u << 20, 65536, 5);
	ck_assert_int_eq(pcache_image_discard(img, 1u << 20, 65536, true), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 65536);
	backing_is(1u << 20, 65536, ENG_ZERO);
}
END_TEST

START_TEST(keys_of_an_uncertain_epoch_never_replace)
{
	/* what index_add() sees while a flush is between its closes and its epoch bump */
	atomic_store(&c->log.epoch_unsure, true);
	wr(0, 65536, 1);
	wr(0, 65536, 2);
	atomic_store(&c->log.epoch_unsure, false);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 0);
	backing_is(0, 65536, 2);
	/* and a flush that failed to close its ksets ends skipping for good */
	atomic_store(&c->log.epoch_broken, true);
	wr(0, 65536, 3);
	wr(0, 65536, 4);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 0);
	backing_is(0, 65536, 4);
}
END_TEST

START_TEST(replayed_keys_keep_their_epoch)
{
	wr(0, 65536, 1);
	wr(0, 32768, 2);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	restart();
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(superseded(), 32768);
	backing_is(0, 32768, 2);
	backing_is(32768, 32768, 1);
}
END_TEST

/* The watermarks' measure: dirty data bytes, across ZERO keys, a restart and the writeback. */
START_TEST(dirty_bytes_follow_writes_restart_and_writeback)
{
	struct pcache_cache_status st;

	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_bytes, 0);
	wr(0, 1u << 20, 1);
	wr(0, 512u << 10, 2);           /* a rewrite counts again until written back */
	ck_assert_int_eq(pcache_image_discard(img, 4u << 20, 65536, true), 0); /* no data */
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_bytes, (1u << 20) + (512u << 10));
	ck_assert_uint_eq(st.dirty_percent, (uint32_t)(st.dirty_bytes * 100 /
						       ((uint64_t)st.seg_count * st.seg_size)));
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	restart();
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_bytes, (1u << 20) + (512u << 10)); /* counted by the replay */
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_bytes, 0);
	ck_assert_uint_eq(st.dirty_percent, 0);
	/* after a writeback the replay counts nothing */
	wr(65536, 65536, 3);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	restart();
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.dirty_bytes, 0);
}
END_TEST

/*
 * Random overlapping writes (some of them ZERO) with random flushes, written back one batch
 * (= one epoch here) at a time. After batch b the backing must hold an epoch-prefix state for
 * some E >= b + 1: per sector, the last value of an epoch before E or any value of E. A skip
 * of a key replaced only in a LATER epoch leaves an older value where epoch b's is due.
 */
#define RND_SECT (IMG_SIZE / 512)
#define RND_W 3000

struct hist {
	uint32_t n;
	uint32_t *v;   /* write ids in log order (0: the original content) */
};

static struct hist h[RND_SECT];
static uint32_t epoch_of[RND_W + 1];
static bool is_zero[RND_W + 1];

/* The epochs E for which write k of sector x may be what the sector holds. */
static void interval(const struct hist *x, uint32_t k, uint64_t *lo, uint64_t *hi)
{
	uint64_t e = epoch_of[x->v[k]];

	*lo = e;
	if (k + 1 == x->n)
		*hi = UINT64_MAX;
	else if (epoch_of[x->v[k + 1]] == e)
		*hi = e;  /* overwritten in its own epoch: only as a value of that epoch */
	else
		*hi = epoch_of[x->v[k + 1]];
}

START_TEST(backing_is_an_epoch_prefix_state_after_every_batch)
{
	unsigned int seed = eng_seed("wbskip");
	uint32_t epoch = 1, nonempty = 0, batches = 0;
	bool epoch_has_keys = false;
	uint8_t *buf = malloc(64 * 1024), *img_buf = malloc(IMG_SIZE);
	int r;

	for (uint32_t s = 0; s < RND_SECT; s++) {
		h[s].v = malloc(sizeof(uint32_t));
		h[s].v[0] = 0;
		h[s].n = 1;
	}
	for (uint32_t id = 1; id <= RND_W; id++) {
		uint64_t off = (uint64_t)(rand_r(&seed) % (RND_SECT - 64)) * 512;
		uint32_t len = (uint32_t)(1 + rand_r(&seed) % 64) * 512; /* all fit in the cache */

		is_zero[id] = rand_r(&seed) % 10 == 0;
		if (is_zero[id]) {
			ck_assert_int_eq(pcache_image_discard(img, off, len, true), 0);
		} else {
			eng_fill(buf, len, 1, off, id);
			ck_assert_int_eq(pcache_image_write(img, buf, off, len, 0), 0);
		}
		epoch_of[id] = epoch;
		epoch_has_keys = true;
		for (uint32_t s = 0; s < len / 512; s++) {
			struct hist *x = &h[off / 512 + s];

			x->v = realloc(x->v, (x->n + 1) * sizeof(*x->v));
			x->v[x->n++] = id;
		}
		if (rand_r(&seed) % 100 == 0) {
			ck_assert_int_eq(pcache_cache_flush(c), 0);
			nonempty++;
			epoch++;
			epoch_has_keys = false;
		}
	}
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	nonempty += epoch_has_keys;

	while ((r = pcache_wb_run_once(c->wb)) == 1) {
		uint64_t lo, hi = UINT64_MAX;
		int fd = open(ipath, O_RDONLY);

		batches++;
		lo = batches + 1; /* epochs 1..batches are on the backing */
		ck_assert_int_eq(pread(fd, img_buf, IMG_SIZE, 0), IMG_SIZE);
		close(fd);
		for (uint32_t s = 0; s < RND_SECT; s++) {
			const struct hist *x = &h[s];
			uint64_t slo = UINT64_MAX, shi = 0, a, b;
			uint32_t v;

			ck_assert_msg(eng_decode(img_buf + (size_t)s * 512, 1, (uint64_t)s * 512,
						 &v) == 0, "sector %u: garbage", s);
			for (uint32_t k = 0; k < x->n; k++) {
				uint32_t id = x->v[k];
				bool match = v == ENG_ZERO ? (id && is_zero[id]) : (id == v && !is_zero[id]);

				if (!match)
					continue;
				/* several ZERO writes give the same bytes: take their hull */
				interval(x, k, &a, &b);
				slo = PCACHE_MIN(slo, a);
				shi = PCACHE_MAX(shi, b);
			}
			ck_assert_msg(slo != UINT64_MAX, "after batch %u: sector %u holds %u, never "
				      "written there", batches, s, v);
			lo = PCACHE_MAX(lo, slo);
			hi = PCACHE_MIN(hi, shi);
			ck_assert_msg(lo <= hi, "after batch %u: sector %u (value %u) fits no epoch-prefix "
				      "state (E in [%llu, %llu])", batches, s, v,
				      (unsigned long long)lo, (unsigned long long)hi);
		}
	}
	ck_assert_int_eq(r, 0);
	printf("wbskip: %u writes, %u epochs, %u batches checked, %llu bytes superseded\n",
	       RND_W, nonempty, batches, (unsigned long long)superseded());
	fflush(stdout);
	ck_assert_uint_eq(batches, nonempty);
	ck_assert_uint_gt(superseded(), 0);
	for (uint32_t s = 0; s < RND_SECT; s++)
		free(h[s].v);
	free(buf);
	free(img_buf);
}
END_TEST
/* A FUA write is durable before its epoch ends: a later key of its epoch that is still only
 * staged (not in the log) must not make the writeback skip it, or a crash loses both. */
START_TEST(a_fua_write_is_never_skipped_for_a_later_key_of_its_epoch)
{
	static uint8_t buf[8192];

	eng_fill(buf, sizeof(buf), 1, 0, 5);
	ck_assert_int_eq(pcache_image_write(img, buf, 0, sizeof(buf), PCACHE_IO_FUA), 0);
	wr(0, 8192, 6);          /* same epoch, staged only */
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	backing_is(0, 8192, 5);
	ck_assert_uint_eq(superseded(), 0);
}
END_TEST

/*
 * Issue 13 item 1: a key replaced by a later key of its epoch that is only staged (not in the
 * log) must not be passed over by dirty_tail unwritten. Otherwise a crash loses the later key,
 * replay marks the older one CLEAN behind dirty_tail, and the engine serves bytes the backing
 * never got (until GC drops the key and the sector flips back).
 */
START_TEST(a_key_replaced_by_a_staged_key_is_never_left_clean_and_unwritten)
{
	uint32_t v[128];

	wr(0, 65536, 1);
	/* what the timer does ~1 s after the first key: the kset is logged, the epoch goes on */
	ck_assert_int_eq(pcache_stages_close_all(c, false, false, false), 0);
	wr(0, 65536, 2);         /* same epoch, staged only */
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	ck_assert_uint_eq(superseded(), 65536); /* the skip stays (the rewrite's kset closed) */
	crash_restart();
	engine_read_versions(0, 65536, v);
	for (int s = 0; s < 128; s++)
		ck_assert_msg(v[s] == 1 || v[s] == 2, "sector %d: %u after the crash", s, v[s]);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	engine_and_backing_are(0, 65536, v);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	pcache_heads_release(c, true);
	(void)pcache_gc_run(c);
	engine_and_backing_are(0, 65536, v);  /* GC changes nothing either */
}
END_TEST

/*
 * The same for a writethrough key: its data is on the backing at once, and its key is in the
 * log before that (a writethrough write closes its stages before its backing write), so the
 * writeback skips both keys: the first replaced by a later THROUGH key, the second on the
 * backing already. A crash then finds the engine and the backing agreeing.
 */
START_TEST(a_key_replaced_by_a_staged_writethrough_key_is_never_left_clean_and_unwritten)
{
	struct pcache_cache_status st;
	uint32_t v[128];
	uint64_t ksets;

	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	wr(0, 65536, 1);
	pcache_cache_get_status(c, &st);
	ksets = st.ksets_written;
	wr(0, 65536, 2);         /* on the backing, its key logged before */
	pcache_cache_get_status(c, &st);
	ck_assert_uint_gt(st.ksets_written, ksets);
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	ck_assert_uint_eq(superseded(), 131072);
	crash_restart();
	engine_read_versions(0, 65536, v);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	engine_and_backing_are(0, 65536, v);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	pcache_heads_release(c, true);
	(void)pcache_gc_run(c);
	engine_and_backing_are(0, 65536, v);
}
END_TEST

/*
 * A writethrough write while another one overlapping it is in flight (played by a gate entry
 * held over the range): the backing may end with either one's bytes, so its key is not marked
 * on the backing and the writeback writes it again (as every writethrough key before that
 * mark existed).
 */
static void wr_unmarked(uint64_t off, size_t len, uint32_t v)
{
	struct pcache_through_ent other = { .off = off, .end = off + len };

	pcache_through_enter(img, &other);
	wr(off, len, v);
	pcache_through_leave(img, &other);
	ck_assert(other.overlapped);
}

/* A writethrough key and a later one of the same bytes, each in its own epoch: the writeback
 * of the first epoch alone must not put the older data back on the backing. */
START_TEST(an_older_key_is_never_written_over_a_writethrough_one)
{
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	wr_unmarked(0, 65536, 1);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(16384, 16384, 2);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	backing_is(16384, 16384, 2);
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1); /* the first epoch alone */
	backing_is(0, 16384, 1);
	backing_is(16384, 16384, 2);
	backing_is(32768, 32768, 1);
	ck_assert_uint_eq(superseded(), 16384);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_is(16384, 16384, 2);
}
END_TEST

/* The same for writearound, whose keys exist only over ranges that were cached. */
START_TEST(an_older_key_is_never_written_over_a_writearound_one)
{
	wr(0, 65536, 1);
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITEAROUND), 0);
	wr(0, 65536, 2);    /* cached: staged over the cached copy */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 8192, 3);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	backing_is(0, 8192, 3);
	ck_assert_int_eq(pcache_wb_run_once(c->wb), 1);
	backing_is(0, 8192, 3);
	backing_is(8192, 65536 - 8192, 2);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_is(0, 8192, 3);
	backing_is(8192, 65536 - 8192, 2);
}
END_TEST

static void *wt_writer(void *arg)
{
	(void)arg;
	wr(1u << 20, 4096, 7);
	return NULL;
}

/* While the writeback holds the image (as during a batch), a writethrough write stages its
 * key but its backing write waits; it lands once the writeback lets go. */
START_TEST(a_writethrough_backing_write_waits_for_the_writebacks_batch)
{
	pthread_t t;

	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	wr(1u << 20, 4096, 6);
	pcache_through_hold(img, true);
	ck_assert_int_eq(pthread_create(&t, NULL, wt_writer, NULL), 0);
	usleep(100 * 1000);
	backing_is(1u << 20, 4096, 6);
	pcache_through_hold(img, false);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	backing_is(1u << 20, 4096, 7);
}
END_TEST

static _Atomic bool wt_done;
static int batch_ret;

static void *wb_batch_thread(void *arg)
{
	(void)arg;
	batch_ret = pcache_wb_run_once(c->wb);
	return NULL;
}

static void *wt_rewriter(void *arg)
{
	(void)arg;
	wr((3u << 20) - 4096, 4096, 3);
	atomic_store(&wt_done, true);
	return NULL;
}

/* Wait up to ms for *flag; its value. */
static bool wait_for(_Atomic bool *flag, int ms)
{
	for (int i = 0; i < ms / 10 && !atomic_load(flag); i++)
		usleep(10 * 1000);
	return atomic_load(flag);
}

/*
 * Issue 13 item 8: the writeback holds an image's writethrough writes only while it issues
 * and waits for that image's requests, never across a rate-limit sleep. A writethrough write
 * of bytes the batch has not issued yet completes during the sleep; the batch then asks again
 * which bytes are live and does not put its older data over the new.
 */
START_TEST(a_writethrough_write_completes_while_the_writeback_sleeps_in_its_rate_limit)
{
	struct pcache_wb_stats st;
	pthread_t wbt, wt;
	bool done_in_sleep;
	int i;

	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	wr_unmarked(0, 3u << 20, 1); /* one epoch, at least 3 requests of at most 1 MiB */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	/* 1 B/s: the bucket's 1 MiB burst runs out before the batch's last request */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_WRITEBACK_RATE, 1), 0);
	atomic_store(&wt_done, false);
	ck_assert_int_eq(pthread_create(&wbt, NULL, wb_batch_thread, NULL), 0);
	for (i = 0; i < 1000; i++) {
		pcache_wb_get_stats(c->wb, &st);
		if (st.rate_waits)
			break;
		usleep(10 * 1000);
	}
	ck_assert_uint_gt(st.rate_waits, 0);
	ck_assert_int_eq(pthread_create(&wt, NULL, wt_rewriter, NULL), 0);
	done_in_sleep = wait_for(&wt_done, 3000);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_WRITEBACK_RATE, 0), 0); /* wake the batch */
	ck_assert_int_eq(pthread_join(wbt, NULL), 0);
	ck_assert_int_eq(pthread_join(wt, NULL), 0);
	ck_assert_msg(done_in_sleep, "the writethrough write waited for the rate-limited batch");
	ck_assert_int_eq(batch_ret, 1);
	backing_is((3u << 20) - 4096, 4096, 3);
	backing_is(0, (3u << 20) - 4096, 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_is((3u << 20) - 4096, 4096, 3);
}
END_TEST

static uint64_t wb_written(void)
{
	struct pcache_wb_stats st;

	pcache_wb_get_stats(c->wb, &st);
	return st.bytes_written;
}

/* A writethrough write put its bytes on the backing: the writeback does not write them again
 * (its key is marked on the backing once the backing write is over), and the image reads
 * them from the cache and from the backing alike. */
START_TEST(a_writethrough_write_is_not_written_back_a_second_time)
{
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	wr(0, 65536, 1);
	wr(1u << 20, 8192, 2);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	backing_is(0, 65536, 1);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(wb_written(), 0);
	ck_assert_uint_eq(superseded(), 65536 + 8192);
	backing_is(0, 65536, 1);
	backing_is(1u << 20, 8192, 2);
	/* after a crash the keys are replayed as dirty and written again: the same bytes */
	wr(2u << 20, 4096, 3);
	crash_restart();
	backing_is(2u << 20, 4096, 3);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	backing_is(0, 65536, 1);
}
END_TEST

/*
 * Two overlapping writethrough writes in flight together may end on the backing in either
 * order, so neither is marked on the backing: the writeback writes them again in log order
 * and the backing ends with the later one's bytes, as the cache. The other write in flight is
 * played by a gate entry held over the range.
 */
START_TEST(overlapping_writethrough_writes_in_flight_together_are_written_back_again)
{
	struct pcache_through_ent other = { .off = 4096, .end = 8192 };
	uint32_t want[16];

	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	pcache_through_enter(img, &other);
	wr(0, 8192, 1);                 /* overlaps the one in flight */
	wr(65536, 4096, 2);             /* does not */
	pcache_through_leave(img, &other);
	ck_assert(other.overlapped);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(wb_written(), 8192);
	for (int i = 0; i < 16; i++)
		want[i] = 1;
	engine_and_backing_are(0, 8192, want);
	backing_is(65536, 4096, 2);
}
END_TEST

struct async_done {
	_Atomic int calls;
	_Atomic int status;
};

static void async_cb(void *priv, int status)
{
	struct async_done *d = priv;

	atomic_store(&d->status, status);
	atomic_fetch_add(&d->calls, 1);
}

/* Wait up to 5 s for d's callback; its status. */
static int async_wait(struct async_done *d)
{
	for (int i = 0; i < 500 && !atomic_load(&d->calls); i++)
		usleep(10 * 1000);
	ck_assert_int_eq(atomic_load(&d->calls), 1);
	return atomic_load(&d->status);
}

static struct {
	struct async_done *d;
	int ret;
} async_arg;

static void *async_writer(void *arg)
{
	uint8_t buf[4096];

	(void)arg;
	eng_fill(buf, 4096, 1, 16384, 7);
	async_arg.ret = pcache_image_write_async(img, buf, 16384, 4096, 0, async_cb, async_arg.d);
	return NULL;
}

/*
 * pcache_image_write_async(): in writethrough mode it returns PCACHE_IO_PENDING, the caller's
 * buffer is free at once (the backing is written from the cached copy), done() reports the
 * backing write, a FUA write flushes the backing before done(); in writeback mode it is a
 * plain write (0, done() never called). The writeback holds it off while it issues.
 */
START_TEST(an_async_writethrough_write_completes_from_its_backing_write)
{
	struct pcache_backing_stats bs0, bs1;
	struct async_done d = { 0 }, d2 = { 0 }, d3 = { 0 };
	uint8_t *buf = malloc(1u << 20);
	uint32_t want[2048];
	pthread_t t;
	int ret;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	eng_fill(buf, 1u << 20, 1, 0, 5);
	ret = pcache_image_write_async(img, buf, 0, 1u << 20, 0, async_cb, &d);
	ck_assert_int_eq(ret, PCACHE_IO_PENDING);
	memset(buf, 0xEE, 1u << 20);    /* the caller's buffer is its own again */
	ck_assert_int_eq(async_wait(&d), 0);
	for (int i = 0; i < 2048; i++)
		want[i] = 5;
	engine_and_backing_are(0, 1u << 20, want);
	/* FUA: the backing is flushed before done() */
	pcache_backing_get_stats(img->b, &bs0);
	eng_fill(buf, 4096, 1, 8192, 6);
	ret = pcache_image_write_async(img, buf, 8192, 4096, PCACHE_IO_FUA, async_cb, &d2);
	ck_assert_int_eq(ret, PCACHE_IO_PENDING);
	ck_assert_int_eq(async_wait(&d2), 0);
	pcache_backing_get_stats(img->b, &bs1);
	ck_assert_uint_eq(bs1.flushes, bs0.flushes + 1);
	backing_is(8192, 4096, 6);
	/* while the writeback holds the gate the write waits; it lands once it lets go */
	pcache_through_hold(img, true);
	async_arg.d = &d3;
	ck_assert_int_eq(pthread_create(&t, NULL, async_writer, NULL), 0);
	usleep(100 * 1000);
	ck_assert_int_eq(atomic_load(&d3.calls), 0);
	backing_is(16384, 4096, 5);
	pcache_through_hold(img, false);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(async_arg.ret, PCACHE_IO_PENDING);
	ck_assert_int_eq(async_wait(&d3), 0);
	backing_is(16384, 4096, 7);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_uint_eq(wb_written(), 0);
	/* writeback mode: a plain write */
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITEBACK), 0);
	memset(&d, 0, sizeof(d));
	eng_fill(buf, 4096, 1, 0, 8);
	ck_assert_int_eq(pcache_image_write_async(img, buf, 0, 4096, 0, async_cb, &d), 0);
	usleep(50 * 1000);
	ck_assert_int_eq(atomic_load(&d.calls), 0);
	backing_is(0, 4096, 5);
	free(buf);
}
END_TEST

Suite *cache_wbskip_suite(void);
Suite *cache_wbskip_suite(void)
{
	Suite *s = suite_create("cache_wbskip");
	TCase *tc = tcase_create("Skip");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, a_key_replaced_in_the_same_epoch_is_not_written);
	tcase_add_test(tc, a_key_replaced_after_a_flush_is_written);
	tcase_add_test(tc, zero_keys_replaced_by_zero_keys_are_written);
	tcase_add_test(tc, keys_of_an_uncertain_epoch_never_replace);
	tcase_add_test(tc, replayed_keys_keep_their_epoch);
	tcase_add_test(tc, dirty_bytes_follow_writes_restart_and_writeback);
	tcase_add_test(tc, backing_is_an_epoch_prefix_state_after_every_batch);
	tcase_add_test(tc, a_fua_write_is_never_skipped_for_a_later_key_of_its_epoch);
	tcase_add_test(tc, a_key_replaced_by_a_staged_key_is_never_left_clean_and_unwritten);
	tcase_add_test(tc, a_key_replaced_by_a_staged_writethrough_key_is_never_left_clean_and_unwritten);
	tcase_add_test(tc, an_older_key_is_never_written_over_a_writethrough_one);
	tcase_add_test(tc, an_older_key_is_never_written_over_a_writearound_one);
	tcase_add_test(tc, a_writethrough_backing_write_waits_for_the_writebacks_batch);
	tcase_add_test(tc, a_writethrough_write_completes_while_the_writeback_sleeps_in_its_rate_limit);
	tcase_add_test(tc, a_writethrough_write_is_not_written_back_a_second_time);
	tcase_add_test(tc, overlapping_writethrough_writes_in_flight_together_are_written_back_again);
	tcase_add_test(tc, an_async_writethrough_write_completes_from_its_backing_write);
	suite_add_tcase(s, tc);
	return s;
}
