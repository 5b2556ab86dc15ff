/*
 * check_cache_crash.c -- power-failure states through the persistence emulator
 * (tests/lib/pmem_emu.c): only what the engine persisted survives, the crashing persist is torn.
 *
 * A scenario runs writes, FUA writes, discards, reads (miss fills) and flushes on two images of
 * one cache (the second in writethrough or writearound mode for half of the seeds); the long runs add writeback and GC steps; the background runs start the engine's
 * own threads (the timer closes staging ksets after 3 ms, the writeback with its same-epoch skip
 * and GC run all the time) and flush rarely, so epochs are long and the crash lands in whichever
 * thread persists the chosen event. A scenario is run once to count its persist events, then once
 * per crash point: crash at event K, which also freezes the backing images (copied at that
 * instant), stop, write the surviving shadow over the device and the frozen copies over the
 * backing images, start again (replay) and check the durability contract (docs/durability.md):
 *  - every CLEAN key of the index holds exactly the backing's bytes (the writeback never put a
 *    key behind dirty_tail whose bytes the backing did not get);
 *  - every write covered by a flush (or FUA) that returned before the crash is intact;
 *  - every sector holds a value that was written to it before the crash, or its original;
 *  - nothing of the other image, no garbage, no failure to start;
 *  - after a full writeback the backing image equals what the engine served.
 * The suite prints "N crash states checked, M violations". PCACHE_SOAK=1 runs more.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "../core/cache_writeback.h"
#include "check_util.h"
#include "lib/engine_util.h"
#include "lib/pmem_emu.h"

#define SPAN (512u << 10)      /* bytes of each image the scenario touches */
#define NSECT (SPAN / 512)
#define IMG_SIZE (1u << 20)

struct sect_hist {
	uint32_t *v;               /* versions written (started before the crash) */
	uint32_t n, cap;
	uint32_t base;             /* must be at least this version (flushed) */
	uint32_t acked;            /* latest version acknowledged */
};

struct model {
	struct sect_hist s[2][NSECT];
	uint32_t next_v;
	bool zero_v[1 << 16];      /* version -> it was a discard */
};

static char cpath[256], ipath[2][256];
static uint64_t states, violations;
static uint64_t states_copied;   /* ... of them after GC had copied hot keys forward */
static uint64_t states_shared;   /* ... after image a went around the cache (max_share) */

static void hist_add(struct sect_hist *h, uint32_t v)
{
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 4;
		h->v = realloc(h->v, h->cap * sizeof(*h->v));
	}
	h->v[h->n++] = v;
}

static void model_free(struct model *m)
{
	int i;
	uint32_t s;

	for (i = 0; i < 2; i++)
		for (s = 0; s < NSECT; s++)
			free(m->s[i][s].v);
	free(m);
}

struct run {
	struct pcache_cache *c;
	struct pcache_image *img[2];
	struct pmem_emu emu;
	bool use_emu;
	bool bg;                   /* the engine's background threads run */
	uint64_t kset_close_ns;    /* with bg: the timer closes staging ksets this long after */
	struct model *m;
	uint8_t *frozen[2];        /* the backing images at the crash (NULL: no crash yet) */
	int mode_b;                /* image b's cache mode at its first attach (persisted) */
	uint32_t share_a;          /* image a's max_share at its first attach (persisted) */
	uint64_t copied;           /* keys GC had copied forward when the crash came */
	uint64_t shared;           /* bytes image a had sent around the cache (max_share) by then */
};

/* on_crash: the backing images as a power failure leaves them (emulator lock held) */
static void freeze_backings(void *arg)
{
	struct run *r = arg;
	int i, fd;

	r->copied = r->c ? atomic_load(&r->c->gc_copied_keys) : 0; /* NULL: a crash in the start */
	r->shared = r->img[0] ? atomic_load(&r->img[0]->share_bypass_bytes) : 0;
	for (i = 0; i < 2; i++) {
		r->frozen[i] = malloc(IMG_SIZE);
		fd = open(ipath[i], O_RDONLY);
		if (!r->frozen[i] || fd < 0 || pread(fd, r->frozen[i], IMG_SIZE, 0) != (ssize_t)IMG_SIZE)
			abort();
		close(fd);
	}
}

/* Write the frozen backing images back (after the stop): what the power failure left. */
static void restore_backings(struct run *r)
{
	int i, fd;

	for (i = 0; i < 2; i++) {
		if (!r->frozen[i])
			continue;
		fd = open(ipath[i], O_WRONLY);
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(pwrite(fd, r->frozen[i], IMG_SIZE, 0), (ssize_t)IMG_SIZE);
		ck_assert_int_eq(fsync(fd), 0);
		close(fd);
		free(r->frozen[i]);
		r->frozen[i] = NULL;
	}
}

static bool crashed(struct run *r)
{
	return r->use_emu && pmem_emu_events(&r->emu) >= r->emu.crash_at && r->emu.crash_at;
}

static int start(struct run *r, bool emu, char *err, size_t errlen)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .cache_mode = -1 };
	int i, ret;

	eng_opts(&o, cpath);
	o.no_background = !r->bg;
	o.kset_close_ns = r->bg ? r->kset_close_ns : 0;
	o.gc_percent = 0;
	if (emu) {
		o.wrap_pmem = pmem_emu_wrap;
		o.wrap_arg = &r->emu;
	}
	ret = pcache_cache_start(&o, &r->c, err, errlen);
	if (ret)
		return ret;
	for (i = 0; i < 2; i++) {
		ao.name = i ? "b" : "a";
		ao.path = ipath[i];
		/* the first start (with the emulator) sets b's mode; restarts keep the persisted one */
		ao.cache_mode = i && emu ? r->mode_b : -1;
		ret = pcache_image_attach(r->c, &ao, &r->img[i], err, errlen);
		if (ret)
			return ret;
	}
	if (emu && r->share_a && pcache_image_set_max_share(r->img[0], r->share_a))
		return -EIO;
	/* the writeback at full speed, never paused for the user's I/O */
	if (r->bg && (pcache_cache_set(r->c, PCACHE_KNOB_DIRTY_LOW, 0) ||
		      pcache_cache_set(r->c, PCACHE_KNOB_DIRTY_HIGH, 1)))
		return -EINVAL;
	return 0;
}

static void stop(struct run *r)
{
	int i;

	for (i = 0; i < 2; i++)
		if (r->img[i])
			pcache_image_put(r->img[i]);
	r->img[0] = r->img[1] = NULL;
	(void)pcache_cache_stop(r->c, false);
	r->c = NULL;
}

/*
 * One scenario; returns the persist events it took. long_run adds writeback and GC steps (with
 * background threads: short pauses for them and the timer instead, and one flush in 32 ops).
 */
static uint64_t scenario(struct run *r, uint32_t seed, int ops, bool long_run)
{
	struct model *m = r->m;
	unsigned int rs = seed;
	uint8_t *buf = malloc(65536);
	int op;

	for (op = 0; op < ops; op++) {
		int i = rand_r(&rs) % 2, kind = rand_r(&rs) % (r->bg ? 64 : 16);
		uint32_t sect = (uint32_t)rand_r(&rs) % NSECT;
		uint32_t n = 1 + (uint32_t)rand_r(&rs) % 64, s, v;
		bool pre = !crashed(r);

		if (sect + n > NSECT)
			n = NSECT - sect;
		if (kind >= 16)
			kind = 2 + kind % 14;  /* background runs: a flush in 32 ops, the rest as usual */
		if (r->bg && kind == 4 && rand_r(&rs) % 8)
			kind = 7;  /* few FUA writes: an epoch with one is never skipped in */
		if (r->bg && rand_r(&rs) % 3 == 0)
			usleep(50 + (unsigned int)rand_r(&rs) % 400); /* let the threads in between */
		if (kind < 2) {
			/* flush: writes acknowledged before it are durable once it returns */
			{
				static uint32_t snap[2][NSECT];
				int j;

				for (j = 0; j < 2; j++)
					for (s = 0; s < NSECT; s++)
						snap[j][s] = m->s[j][s].acked;
				ck_assert_int_eq(pcache_cache_flush(r->c), 0);
				if (!crashed(r))
					for (j = 0; j < 2; j++)
						for (s = 0; s < NSECT; s++)
							if (snap[j][s] > m->s[j][s].base)
								m->s[j][s].base = snap[j][s];
			}
			continue;
		}
		if (long_run && kind == 2 && r->bg) {
			usleep(200 + (unsigned int)rand_r(&rs) % 2000);
			continue;
		} else if (long_run && kind == 2) {
			if (!crashed(r)) {
				(void)pcache_wb_run_once(r->c->wb);
				(void)pcache_gc_run(r->c);
			}
			continue;
		}
		if (kind == 5 || kind == 6) {
			/* a read (misses fill the cache: more persist points); checks live data too */
			ck_assert_int_eq(eng_read(r->img[i], buf, (uint64_t)sect * 512, n * 512), 0);
			for (s = sect; s < sect + n; s++) {
				uint32_t want = m->s[i][s].acked, got;

				ck_assert_int_eq(eng_decode(buf + (size_t)(s - sect) * 512, (uint32_t)i + 1,
							    (uint64_t)s * 512, &got), 0);
				if (want && m->zero_v[want])
					ck_assert_uint_eq(got, ENG_ZERO);
				else
					ck_assert_uint_eq(got, want);
			}
			continue;
		}
		v = ++m->next_v;
		if (kind == 3) {
			m->zero_v[v] = true;
			if (pre)
				for (s = sect; s < sect + n; s++)
					hist_add(&m->s[i][s], v);
			ck_assert_int_eq(pcache_image_discard(r->img[i], (uint64_t)sect * 512, n * 512, kind & 1), 0);
		} else {
			unsigned int fl = kind == 4 ? PCACHE_IO_FUA : 0;

			eng_fill(buf, n * 512, (uint32_t)i + 1, (uint64_t)sect * 512, v);
			if (pre)
				for (s = sect; s < sect + n; s++)
					hist_add(&m->s[i][s], v);
			ck_assert_int_eq(pcache_image_write(r->img[i], buf, (uint64_t)sect * 512, n * 512, fl), 0);
			if (fl && !crashed(r))
				for (s = sect; s < sect + n; s++)
					m->s[i][s].base = v;
		}
		for (s = sect; s < sect + n; s++)
			m->s[i][s].acked = v;
	}
	free(buf);
	return r->use_emu ? pmem_emu_events(&r->emu) : 0;
}

/* After the restart, before any I/O: CLEAN keys of image i whose bytes differ from the backing. */
static uint64_t unclean_keys(struct run *r, int i, const char *what)
{
	struct pcache_image *img = r->img[i];
	uint8_t *back = malloc(IMG_SIZE), *zero = calloc(1, IMG_SIZE);
	uint64_t bad = 0;
	uint32_t sub, j;
	int fd;

	fd = open(ipath[i], O_RDONLY);
	ck_assert_int_eq(pread(fd, back, IMG_SIZE, 0), (ssize_t)IMG_SIZE);
	close(fd);
	for (sub = 0; sub < img->ix.nsub; sub++) {
		struct pcache_subtree *st = &img->ix.sub[sub];

		pthread_mutex_lock(&st->lock);
		for (j = 0; j < st->n; j++) {
			const struct pcache_ikey *k = &st->v[j];
			uint64_t off = (uint64_t)sub * PCACHE_REGION_SIZE + k->off;
			const uint8_t *data;

			if (!(k->flags & PCACHE_KEY_CLEAN) || (k->flags & PCACHE_IKEY_EMPTY))
				continue;
			ck_assert_uint_le(off + k->len, IMG_SIZE);
			data = (k->flags & PCACHE_KEY_ZERO) ? zero : pcache_seg_ptr(r->c, k->seg, k->seg_off);
			if (memcmp(data, back + off, k->len)) {
				if (bad < 3)
					fprintf(stderr, "crash %s: image %d: CLEAN key %" PRIu64 "+%u differs "
						"from the backing\n", what, i, off, k->len);
				bad++;
			}
		}
		pthread_mutex_unlock(&st->lock);
	}
	free(back);
	free(zero);
	return bad;
}

/* After the restart: check every sector against the model; count violations. */
static uint64_t verify(struct run *r, const char *what)
{
	uint8_t *buf = malloc(SPAN), *back = malloc(SPAN);
	uint64_t bad = 0;
	int i, fd;
	uint32_t s, k;

	for (i = 0; i < 2; i++)
		bad += unclean_keys(r, i, what);
	for (i = 0; i < 2; i++) {
		ck_assert_int_eq(eng_read(r->img[i], buf, 0, SPAN), 0);
		for (s = 0; s < NSECT; s++) {
			struct sect_hist *h = &r->m->s[i][s];
			uint32_t v;
			bool ok = false;

			if (eng_decode(buf + (size_t)s * 512, (uint32_t)i + 1, (uint64_t)s * 512, &v) != 0) {
				ok = false;
			} else if (v == 0) {
				ok = h->base == 0;
			} else if (v == ENG_ZERO) {
				for (k = 0; k < h->n; k++)
					ok |= r->m->zero_v[h->v[k]] && h->v[k] >= h->base;
			} else {
				for (k = 0; k < h->n; k++)
					ok |= h->v[k] == v && !r->m->zero_v[v] && v >= h->base;
			}
			if (!ok) {
				if (bad < 3)
					fprintf(stderr, "crash %s: image %d sector %u: read version %d, flushed %u\n",
						what, i, s, eng_decode(buf + (size_t)s * 512, (uint32_t)i + 1,
								       (uint64_t)s * 512, &v) ? -1 : (int)v, h->base);
				bad++;
			}
		}
		/* after a full writeback the backing equals what the engine served */
		ck_assert_int_eq(pcache_image_writeback_all(r->img[i]), 0);
		fd = open(ipath[i], O_RDONLY);
		ck_assert_int_eq(pread(fd, back, SPAN, 0), (ssize_t)SPAN);
		close(fd);
		if (memcmp(back, buf, SPAN)) {
			if (bad < 3)
				fprintf(stderr, "crash %s: image %d: backing differs after writeback\n", what, i);
			bad++;
		}
	}
	free(buf);
	free(back);
	return bad;
}

static void fresh_devices(bool long_run)
{
	ck_assert_int_eq(eng_format(cpath, (long_run ? 26u : 12u) << 20, 1u << 20, false), 0);
	eng_make_image(ipath[0], IMG_SIZE, 1);
	eng_make_image(ipath[1], IMG_SIZE, 2);
}

/*
 * PCACHE_CRASH_KEEP=DIR: the devices as the crash left them are copied to DIR before each
 * restart, and kept under the crash's name when the restart finds a violation.
 */
static void keep_evidence(const char *what, bool violation)
{
	const char *dir = getenv("PCACHE_CRASH_KEEP");
	const char *src[3] = { cpath, ipath[0], ipath[1] }, *base[3] = { "cache", "a", "b" };
	char cmd[1024];
	int i;

	if (!dir)
		return;
	for (i = 0; i < 3; i++) {
		if (violation)
			snprintf(cmd, sizeof(cmd), "mv '%s/last-%s' '%s/%.40s-%s'", dir, base[i], dir, what,
				 base[i]);
		else
			snprintf(cmd, sizeof(cmd), "cp '%s' '%s/last-%s'", src[i], dir, base[i]);
		if (system(cmd) != 0)
			fprintf(stderr, "crash %s: could not keep the evidence (%s)\n", what, cmd);
	}
}

/*
 * Run the scenario crashing at event k (0 = count only), with the engine's background threads
 * when bg. Returns the events of the run.
 */
static uint64_t crash_run(uint32_t seed, int ops, bool long_run, bool bg, uint64_t k)
{
	struct run r;
	char err[256], what[80];
	uint64_t ev;
	bool hit;

	memset(&r, 0, sizeof(r));
	r.m = calloc(1, sizeof(*r.m));
	r.bg = bg;
	/* short stage lifetimes close ksets under the writeback's feet; long ones leave rewrites
	 * staged while the writeback looks at the keys they replace */
	r.kset_close_ns = (seed % 3 == 0 ? 3 : seed % 3 == 1 ? 20 : 150) * 1000000ull;
	/* image b in writethrough (a quarter of the seeds) or writearound (another quarter): their
	 * writes put bytes on the backing before the log has them, and marked writethrough keys
	 * are skipped by the writeback */
	r.mode_b = seed % 4 == 1 ? PCACHE_MODE_WRITETHROUGH :
		   seed % 4 == 3 ? PCACHE_MODE_WRITEAROUND : PCACHE_MODE_WRITEBACK;
	/* image a (writeback) capped at 1 % of the cache for a third of the seeds: past the cap
	 * its writes go around the cache, beside older dirty keys of the same bytes */
	r.share_a = seed % 3 == 1 ? 1 : 0;
	fresh_devices(long_run);
	pmem_emu_init(&r.emu, k, seed ^ (uint32_t)k);
	r.emu.on_crash = freeze_backings;
	r.emu.crash_arg = &r;
	r.use_emu = true;
	ck_assert_msg(start(&r, true, err, sizeof(err)) == 0, "start: %s", err);
	ev = scenario(&r, seed, ops, long_run);
	stop(&r);
	if (!k) {
		pmem_emu_free(&r.emu);
		model_free(r.m);
		return ev;
	}
	hit = r.emu.crashed;   /* the threads are gone: no lock needed */
	ck_assert_int_eq(pmem_emu_power_fail(&r.emu, cpath), 0);
	restore_backings(&r);
	r.use_emu = false;
	r.bg = false;
	snprintf(what, sizeof(what), "seed %u at %llu%s", seed, (unsigned long long)k,
		 bg ? " (background)" : "");
	if (getenv("PCACHE_CRASH_KEEP"))
		keep_evidence(what, false);
	if (start(&r, false, err, sizeof(err)) != 0) {
		fprintf(stderr, "crash %s: restart failed: %s\n", what, err);
		violations++;
		keep_evidence(what, true);
	} else if (verify(&r, what)) {
		violations++;
		stop(&r);
		keep_evidence(what, true);
	} else {
		stop(&r);
	}
	states += hit;  /* a point past the run's events was a clean stop (checked too) */
	states_copied += hit && r.copied;
	states_shared += hit && r.shared;
	model_free(r.m);
	return ev;
}

static int scale(void)
{
	int n = getenv("PCACHE_SOAK") ? 8 : 1;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	n = 0;
#endif
	if (check_under_tsan())
		n = 0;
	return n;
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "crash-cache");
	check_scratch_path(ipath[0], sizeof(ipath[0]), "crash-a");
	check_scratch_path(ipath[1], sizeof(ipath[1]), "crash-b");
}

static void teardown(void)
{
	unlink(cpath);
	unlink(ipath[0]);
	unlink(ipath[1]);
}

START_TEST(every_persist_of_short_scenarios)
{
	uint32_t base = eng_seed("crash every persist");
	int nscen = scale() ? 16 * scale() : 2, j;
	uint64_t k, ev;

	states = violations = states_copied = states_shared = 0;
	/* random scenarios vary in length: more of them until the floor below is covered */
	for (j = 0; j < nscen || (scale() && states < 1000 && j < 2 * nscen); j++) {
		uint32_t seed = base + (uint32_t)j;

		ev = crash_run(seed, 60, false, false, 0);
		for (k = 1; k <= ev; k += scale() ? 1 : 9)
			crash_run(seed, 60, false, false, k);
	}
	fprintf(stderr, "short scenarios: %llu crash states checked (%llu after writes around a full "
		"max_share), %llu violations\n", (unsigned long long)states,
		(unsigned long long)states_shared, (unsigned long long)violations);
	ck_assert_uint_eq(violations, 0);
	ck_assert_uint_gt(states, 0);
	if (scale())
		ck_assert_uint_ge(states, 1000);
}
END_TEST

START_TEST(random_points_of_long_runs_with_writeback_and_gc)
{
	uint32_t base = eng_seed("crash long runs");
	int nrun = scale() ? 4 * scale() : 1, j, p;
	uint64_t ev;

	states = violations = states_copied = states_shared = 0;
	for (j = 0; j < nrun; j++) {
		uint32_t seed = base + 1000u * (uint32_t)j;
		unsigned int rs = seed;

		ev = crash_run(seed, 300, true, false, 0);
		for (p = 0; p < 12; p++)
			crash_run(seed, 300, true, false, 1 + (uint64_t)rand_r(&rs) % ev);
	}
	fprintf(stderr, "long runs: %llu crash states checked (%llu after GC copied hot keys forward, "
		"%llu after writes around a full max_share), %llu violations\n", (unsigned long long)states,
		(unsigned long long)states_copied, (unsigned long long)states_shared,
		(unsigned long long)violations);
	ck_assert_uint_eq(violations, 0);
	if (scale())   /* the runs hit their keys and collect: copy-forward is crashed too */
		ck_assert_uint_gt(states_copied, 0);
}
END_TEST

/*
 * The engine's own threads: timer-closed ksets, writeback and GC all the time, long epochs. The
 * persist events of a run vary with the threads' timing, so the crash points are drawn from
 * what a counting run took; a point past the end of a run is no crash and not counted.
 */
START_TEST(random_points_with_background_threads)
{
	uint32_t base = eng_seed("crash background");
	int nrun = scale() ? 20 * scale() : 1, npoint = scale() > 1 ? 80 : scale() ? 52 : 6, j, p;
	uint64_t ev, all = 0, all_viol = 0;

	states_copied = states_shared = 0;

	for (j = 0; j < nrun; j++) {
		uint32_t seed = base + 7919u * (uint32_t)j;
		unsigned int rs = seed;

		ev = crash_run(seed, 300, true, true, 0);
		ck_assert_uint_gt(ev, 0);
		states = violations = 0;
		for (p = 0; p < npoint; p++)
			crash_run(seed, 300, true, true, 1 + (uint64_t)rand_r(&rs) % ev);
		all += states;
		all_viol += violations;
	}
	fprintf(stderr, "background threads: %llu crash states checked (%llu after GC copied hot keys "
		"forward, %llu after writes around a full max_share), %llu violations\n",
		(unsigned long long)all, (unsigned long long)states_copied, (unsigned long long)states_shared,
		(unsigned long long)all_viol);
	ck_assert_uint_eq(all_viol, 0);
	ck_assert_uint_gt(all, 0);
	if (scale())   /* a few points past a run's end are clean stops, not crashes */
		ck_assert_uint_ge(all, (uint64_t)nrun * npoint * 9 / 10);
}
END_TEST

Suite *cache_crash_suite(void);
Suite *cache_crash_suite(void)
{
	Suite *s = suite_create("cache_crash");
	TCase *tc = tcase_create("Recovery");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, getenv("PCACHE_SOAK") ? 3600 : 240);
	tcase_add_test(tc, every_persist_of_short_scenarios);
	tcase_add_test(tc, random_points_of_long_runs_with_writeback_and_gc);
	suite_add_tcase(s, tc);
	tc = tcase_create("Background");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, getenv("PCACHE_SOAK") ? 3600 : 240);
	tcase_add_test(tc, random_points_with_background_threads);
	suite_add_tcase(s, tc);
	return s;
}
