/*
 * check_cache_req.c -- the request path (core/cache_req.c) on a real cache file and real backing
 * images: hits, misses (asynchronous fill), overlapping writes, discard/zero, FUA, flush,
 * validation, data CRCs, writeback to the backing, and image attach identity rules.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

#define IMG_SIZE (16u << 20)

static char cpath[256], ipath[256], ipath2[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void start(bool data_crc)
{
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = "vm1", .path = ipath, .cache_mode = -1 };
	char err[256];

	eng_opts(&o, cpath);
	o.data_crc = data_crc;
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "start: %s", err);
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "attach: %s", err);
}

static void stop(void)
{
	ck_assert_int_eq(eng_stop(&c, &img), 0);
}

static void setup_common(bool data_crc)
{
	check_scratch_path(cpath, sizeof(cpath), "req-cache");
	check_scratch_path(ipath, sizeof(ipath), "req-img");
	check_scratch_path(ipath2, sizeof(ipath2), "req-img2");
	ck_assert_int_eq(eng_format(cpath, 48u << 20, 1u << 20, data_crc), 0);
	eng_make_image(ipath, IMG_SIZE, 1);
	start(data_crc);
}

static void setup(void)
{
	setup_common(false);
}

static void setup_crc(void)
{
	setup_common(true);
}

static void teardown(void)
{
	stop();
	unlink(cpath);
	unlink(ipath);
	unlink(ipath2);
}

static void check_range_version(uint64_t off, size_t len, uint32_t want)
{
	uint8_t *buf = malloc(len);
	size_t s;
	uint32_t v;

	ck_assert_int_eq(eng_read(img, buf, off, len), 0);
	for (s = 0; s < len; s += 512) {
		ck_assert_msg(eng_decode(buf + s, 1, off + s, &v) == 0, "sector %llu garbage",
			      (unsigned long long)(off + s) / 512);
		ck_assert_msg(v == want, "sector %llu: version %u, want %u",
			      (unsigned long long)(off + s) / 512, v, want);
	}
	free(buf);
}

static void write_version(uint64_t off, size_t len, uint32_t v, unsigned int flags)
{
	uint8_t *buf = malloc(len);

	eng_fill(buf, len, 1, off, v);
	ck_assert_int_eq(pcache_image_write(img, buf, off, len, flags), 0);
	free(buf);
}

static void img_stats(struct pcache_image_stats *st)
{
	memset(st, 0, sizeof(*st));
	pcache_image_get_stats(img, st);
}

START_TEST(write_then_read_hits_inline)
{
	uint8_t buf[8192];
	struct pcache_image_stats st;

	write_version(4096, 8192, 5, 0);
	eng_fill(buf, sizeof(buf), 1, 4096, 0);
	/* a full hit completes inline: done is not called, 0 returned */
	ck_assert_int_eq(pcache_image_read(img, buf, 4096, 8192, NULL, NULL), 0);
	check_range_version(4096, 8192, 5);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.writes, 1);
	ck_assert_uint_ge(st.read_hit_bytes, 16384);
	ck_assert_uint_eq(st.read_miss_bytes, 0);
	ck_assert_uint_eq(st.dirty_bytes, 8192);
}
END_TEST

START_TEST(miss_reads_backing_then_hits)
{
	struct pcache_image_stats st;

	check_range_version(1 << 20, 65536, 0);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.read_miss_bytes, 65536);
	ck_assert_uint_eq(st.cached_bytes, 65536); /* filled as clean keys */
	ck_assert_uint_eq(st.dirty_bytes, 0);
	check_range_version(1 << 20, 65536, 0);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.read_miss_bytes, 65536);
	ck_assert_uint_eq(st.read_hit_bytes, 65536);
}
END_TEST

START_TEST(partial_hits_and_misses_in_one_read)
{
	write_version(8192, 4096, 3, 0);
	write_version(20480, 1024, 4, 0);
	{
		uint8_t buf[32768];
		uint32_t v;
		size_t s;

		ck_assert_int_eq(eng_read(img, buf, 0, sizeof(buf)), 0);
		for (s = 0; s < sizeof(buf); s += 512) {
			uint32_t want = (s >= 8192 && s < 12288) ? 3 : (s >= 20480 && s < 21504) ? 4 : 0;

			ck_assert_int_eq(eng_decode(buf + s, 1, s, &v), 0);
			ck_assert_uint_eq(v, want);
		}
	}
}
END_TEST

START_TEST(read_over_hundreds_of_keys_and_holes)
{
	uint32_t k, v;
	uint8_t *buf = malloc(512 * 1024);

	/* 500 one-sector keys with holes between them: many more than one scan pass holds */
	for (k = 0; k < 500; k++)
		write_version((uint64_t)k * 1024, 512, k + 1, 0);
	ck_assert_int_eq(eng_read(img, buf, 0, 512 * 1024), 0);
	for (k = 0; k < 1024; k++) {
		ck_assert_int_eq(eng_decode(buf + (size_t)k * 512, 1, (uint64_t)k * 512, &v), 0);
		ck_assert_uint_eq(v, (k % 2 || k >= 1000) ? 0 : k / 2 + 1);
	}
	free(buf);
}
END_TEST

START_TEST(overlapping_writes_later_wins)
{
	write_version(0, 65536, 1, 0);
	write_version(4096, 4096, 2, 0);
	write_version(2048, 1024, 3, 0);
	write_version(60 * 1024, 8192, 4, 0); /* extends past the first write */
	check_range_version(0, 2048, 1);
	check_range_version(2048, 1024, 3);
	check_range_version(3072, 1024, 1);
	check_range_version(4096, 4096, 2);
	check_range_version(8192, 52 * 1024, 1);
	check_range_version(60 * 1024, 8192, 4);
	check_range_version(68 * 1024, 4096, 0);
}
END_TEST

START_TEST(write_across_regions_and_segments)
{
	/* 3 MiB starting 1 MiB before a region boundary: split by regions and 1 MiB segments */
	write_version(3u << 20, 3u << 20, 9, 0);
	check_range_version((3u << 20) - 4096, 4096, 0);
	check_range_version(3u << 20, 3u << 20, 9);
	check_range_version(6u << 20, 4096, 0);
}
END_TEST

START_TEST(discard_and_zero_read_as_zeros)
{
	write_version(0, 16384, 2, 0);
	ck_assert_int_eq(pcache_image_discard(img, 4096, 4096, false), 0);
	ck_assert_int_eq(pcache_image_discard(img, 12288, 8192, true), 0);
	check_range_version(0, 4096, 2);
	check_range_version(4096, 4096, ENG_ZERO);
	check_range_version(8192, 4096, 2);
	check_range_version(12288, 8192, ENG_ZERO);
	check_range_version(20480, 4096, 0);
	write_version(4096, 512, 7, 0);
	check_range_version(4096, 512, 7);
	check_range_version(4608, 3584, ENG_ZERO);
}
END_TEST

START_TEST(bad_ranges_are_einval)
{
	uint8_t buf[4096];

	memset(buf, 0, sizeof(buf));
	ck_assert_int_eq(pcache_image_write(img, buf, 100, 512, 0), -EINVAL);
	ck_assert_int_eq(pcache_image_write(img, buf, 0, 100, 0), -EINVAL);
	ck_assert_int_eq(pcache_image_write(img, buf, IMG_SIZE, 512, 0), -EINVAL);
	ck_assert_int_eq(pcache_image_write(img, buf, IMG_SIZE - 512, 1024, 0), -EINVAL);
	ck_assert_int_eq(pcache_image_read(img, buf, 1, 512, NULL, NULL), -EINVAL);
	ck_assert_int_eq(pcache_image_read(img, buf, IMG_SIZE, 512, NULL, NULL), -EINVAL);
	ck_assert_int_eq(pcache_image_discard(img, 0, 100, false), -EINVAL);
	ck_assert_int_eq(pcache_image_write(img, buf, IMG_SIZE - 512, 512, 0), 0);
}
END_TEST

START_TEST(fua_write_persists_its_kset)
{
	struct pcache_cache_status a, b;

	pcache_cache_get_status(c, &a);
	write_version(0, 4096, 1, 0);
	pcache_cache_get_status(c, &b);
	ck_assert_uint_eq(a.ksets_written, b.ksets_written); /* staged only */
	write_version(8192, 4096, 1, PCACHE_IO_FUA);
	pcache_cache_get_status(c, &b);
	ck_assert_uint_gt(b.ksets_written, a.ksets_written);
	ck_assert_uint_gt(b.key_head.lsn, a.key_head.lsn);
}
END_TEST

START_TEST(flush_persists_every_staged_key)
{
	struct pcache_cache_status a, b;
	uint64_t off;

	pcache_cache_get_status(c, &a);
	for (off = 0; off < (8u << 20); off += 1u << 20)
		write_version(off, 4096, 1, 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	pcache_cache_get_status(c, &b);
	ck_assert_uint_gt(b.key_head.lsn, a.key_head.lsn);
	/* nothing is staged any more: a second flush writes no kset */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	pcache_cache_get_status(c, &a);
	ck_assert_uint_eq(a.ksets_written, b.ksets_written);
}
END_TEST

/* A crash before the staging ksets close (their keys are lost), then a start and replay. */
static void crash_restart(void)
{
	for (uint32_t i = 0; i < PCACHE_NSTAGE; i++) {
		pthread_mutex_lock(&c->stage[i].lock);
		c->stage[i].n = 0;
		pthread_mutex_unlock(&c->stage[i].lock);
	}
	stop();
	start(false);
}

static _Atomic int gc_wrote;

static void *gc_flusher(void *arg)
{
	uint64_t off = (uint64_t)(uintptr_t)arg;

	write_version(off, 4096, 7, 0);
	atomic_fetch_add(&gc_wrote, 1);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	return NULL;
}

/*
 * Group commit: flushes that arrive while another holds the flush lock share the commit that
 * begins after them (one commit for three fsyncs), and each one's write is durable: a crash
 * right after loses none of them.
 */
START_TEST(concurrent_flushes_share_one_commit)
{
	struct pcache_cache_status a, b;
	pthread_t t[3];

	pcache_cache_get_status(c, &a);
	atomic_store(&gc_wrote, 0);
	pthread_mutex_lock(&c->flush_lock);     /* a commit in progress */
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, gc_flusher,
						(void *)(uintptr_t)((uint64_t)i << 20)), 0);
	while (atomic_load(&gc_wrote) < 3)
		usleep(1000);
	usleep(check_under_tsan() ? 500000 : 100000); /* all three wait on the lock */
	pthread_mutex_unlock(&c->flush_lock);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
	pcache_cache_get_status(c, &b);
	ck_assert_uint_eq(b.flush_commits - a.flush_commits, 1);
	ck_assert_uint_eq(b.flush_joined - a.flush_joined, 2);
	crash_restart();
	for (int i = 0; i < 3; i++)
		check_range_version((uint64_t)i << 20, 4096, 7);
}
END_TEST

/* A flush never joins a commit that began before it (that commit may have closed the staging
 * ksets before its write was staged): flush, write, flush makes two commits, and the second
 * write survives a crash. */
START_TEST(a_flush_after_a_commit_makes_its_own)
{
	struct pcache_cache_status a, b;

	pcache_cache_get_status(c, &a);
	write_version(0, 4096, 1, 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	write_version(8192, 4096, 2, 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	pcache_cache_get_status(c, &b);
	ck_assert_uint_eq(b.flush_commits - a.flush_commits, 2);
	ck_assert_uint_eq(b.flush_joined - a.flush_joined, 0);
	crash_restart();
	check_range_version(0, 4096, 1);
	check_range_version(8192, 4096, 2);
}
END_TEST

START_TEST(writeback_all_reaches_the_backing)
{
	uint8_t buf[8192];
	uint32_t v;
	int fd;

	write_version(1u << 20, 8192, 6, 0);
	ck_assert_int_eq(pcache_image_discard(img, 2u << 20, 4096, true), 0);
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	{
		struct pcache_image_stats st;

		pcache_image_get_stats(img, &st);
		ck_assert_uint_eq(st.dirty_bytes, 0);
		ck_assert_uint_ge(st.cached_bytes, 8192);
	}
	fd = open(ipath, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, 8192, 1u << 20), 8192);
	ck_assert_int_eq(eng_decode(buf, 1, 1u << 20, &v), 0);
	ck_assert_uint_eq(v, 6);
	ck_assert_int_eq(eng_decode(buf + 7680, 1, (1u << 20) + 7680, &v), 0);
	ck_assert_uint_eq(v, 6);
	ck_assert_int_eq(pread(fd, buf, 4096, 2u << 20), 4096);
	ck_assert_int_eq(eng_decode(buf, 1, 2u << 20, &v), 0);
	ck_assert_uint_eq(v, ENG_ZERO);
	close(fd);
}
END_TEST

START_TEST(crc_mismatch_on_hit_is_eio_and_counted)
{
	struct pcache_subtree *sub;
	struct pcache_image_stats st;
	uint8_t buf[4096], *p;

	write_version(0, 4096, 1, 0);
	check_range_version(0, 4096, 1);
	sub = &img->ix.sub[0];
	pthread_mutex_lock(&sub->lock);
	ck_assert_uint_eq(sub->n, 1);
	p = pcache_seg_ptr(c, sub->v[0].seg, sub->v[0].seg_off);
	pthread_mutex_unlock(&sub->lock);
	p[100] ^= 0xFF; /* media corruption */
	ck_assert_int_eq(eng_read(img, buf, 0, 4096), -EIO);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.crc_errors, 1);
	/* an unaffected range still reads */
	write_version(8192, 4096, 2, 0);
	check_range_version(8192, 4096, 2);
}
END_TEST

START_TEST(crc_is_verified_on_cut_keys)
{
	write_version(0, 16384, 1, 0);
	write_version(4096, 4096, 2, 0); /* splits the first key: CRC covers the original extent */
	check_range_version(0, 4096, 1);
	check_range_version(4096, 4096, 2);
	check_range_version(8192, 8192, 1);
}
END_TEST

START_TEST(attach_refuses_changed_identity_with_dirty_data)
{
	struct pcache_attach_opts ao = { .name = "vm1", .cache_mode = -1 };
	char err[256];
	int fd;

	struct pcache_cache_opts o;

	/* restart without background writeback, so the data stays dirty */
	stop();
	eng_opts(&o, cpath);
	o.no_background = true;
	ck_assert_int_eq(pcache_cache_start(&o, &c, err, sizeof(err)), 0);
	ck_assert_int_eq(pcache_cache_attach_known(c, err, sizeof(err)), 0);
	img = pcache_image_get(c, "vm1");
	write_version(0, 4096, 1, PCACHE_IO_FUA);
	pcache_image_put(img);
	img = NULL;
	ck_assert_int_eq(pcache_image_detach(c, "vm1", false), 0);
	/* the backing grew: dirty data of the old identity refuses the attach */
	fd = open(ipath, O_WRONLY);
	ck_assert_int_eq(ftruncate(fd, IMG_SIZE * 2), 0);
	close(fd);
	ck_assert_int_eq(pcache_image_attach(c, &ao, &img, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_ne(strstr(err, "dirty"), NULL);
	fd = open(ipath, O_WRONLY);
	ck_assert_int_eq(ftruncate(fd, IMG_SIZE), 0);
	close(fd);
	/* a different path is refused without allow_path_change */
	eng_make_image(ipath2, IMG_SIZE, 1);
	ao.path = ipath2;
	ck_assert_int_eq(pcache_image_attach(c, &ao, &img, err, sizeof(err)), -EEXIST);
	/* another file of the same size under a new path: refused, naming both identities */
	ao.allow_path_change = true;
	ck_assert_int_eq(pcache_image_attach(c, &ao, &img, err, sizeof(err)), -EEXIST);
	ck_assert_msg(strstr(err, "stored file") && strstr(err, "found file") && strstr(err, "dirty"), "%s", err);
	ao.rekey = true; /* not even when asked: the cache holds dirty data of the stored one */
	ck_assert_int_eq(pcache_image_attach(c, &ao, &img, err, sizeof(err)), -EEXIST);
	ao.rekey = false;
	/* the same file under another name (a hard link) is the same image */
	unlink(ipath2);
	ck_assert_int_eq(link(ipath, ipath2), 0);
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "%s", err);
	check_range_version(0, 4096, 1); /* the dirty data is still there */
}
END_TEST

START_TEST(changed_identity_of_clean_image_is_rekeyed_on_request)
{
	struct pcache_attach_opts ao = { .name = "vm1", .cache_mode = -1 };
	char err[256];
	int fd;

	write_version(0, 4096, 1, 0);
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	ck_assert_int_eq(pcache_image_detach(c, "vm1", false), 0);
	pcache_image_put(img);
	img = NULL;
	/* the image file is replaced by another of another size: clean, so accepted */
	eng_make_image(ipath, IMG_SIZE * 2, 1);
	fd = open(ipath, O_WRONLY);
	ck_assert_int_eq(pwrite(fd, "\0\0\0\0", 4, 0), 4); /* sector 0 now differs from the cache */
	close(fd);
	/* never silently: refused until the user asks for the re-key */
	ck_assert_int_eq(pcache_image_attach(c, &ao, &img, err, sizeof(err)), -EEXIST);
	ck_assert_ptr_ne(strstr(err, "rekey"), NULL);
	ao.rekey = true;
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(pcache_image_size(img), IMG_SIZE * 2);
	{
		uint8_t buf[512], want[512];

		ck_assert_int_eq(eng_read(img, buf, 0, 512), 0);
		fd = open(ipath, O_RDONLY);
		ck_assert_int_eq(pread(fd, want, 512, 0), 512);
		close(fd);
		ck_assert_mem_eq(buf, want, 512); /* the old cached copy is not served */
	}
}
END_TEST

START_TEST(detach_forget_needs_clean_image)
{
	struct pcache_cache_opts o;
	char err[256];

	/* without background writeback, so the data stays dirty until written back here */
	stop();
	eng_opts(&o, cpath);
	o.no_background = true;
	ck_assert_int_eq(pcache_cache_start(&o, &c, err, sizeof(err)), 0);
	ck_assert_int_eq(pcache_cache_attach_known(c, err, sizeof(err)), 0);
	img = pcache_image_get(c, "vm1");
	write_version(0, 4096, 1, 0);
	ck_assert_int_eq(pcache_image_detach(c, "vm1", true), -EBUSY);
	check_range_version(0, 4096, 1); /* still attached and usable */
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	ck_assert_int_eq(pcache_image_detach(c, "vm1", true), 0);
	ck_assert_ptr_eq(pcache_image_get(c, "vm1"), NULL);
	ck_assert_int_eq(pcache_image_write(img, "x", 0, 512, 0) == -ENODEV ||
			 pcache_image_write(img, "x", 0, 512, 0) == -EINVAL, 1);
}
END_TEST

START_TEST(knobs_round_trip_and_reject_bad_values)
{
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 50), 0);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), 50);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 91), -EINVAL);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), 50);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_DIRTY_HIGH, 101), -EINVAL);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_COUNT, 1), -EINVAL);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_WRITEBACK_RATE, 1048576), 0);
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	ck_assert_uint_eq(pcache_image_cache_mode(img), PCACHE_MODE_WRITETHROUGH);
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITEAROUND + 1), -EINVAL);
	/* persisted: survives a restart */
	stop();
	start(false);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), 50);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_WRITEBACK_RATE), 1048576);
	ck_assert_uint_eq(pcache_image_cache_mode(img), PCACHE_MODE_WRITETHROUGH);
}
END_TEST

START_TEST(writethrough_writes_the_backing_at_once)
{
	uint8_t buf[4096];
	uint32_t v;
	int fd;

	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	write_version(4096, 4096, 8, 0);
	fd = open(ipath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 4096, 4096), 4096);
	close(fd);
	ck_assert_int_eq(eng_decode(buf, 1, 4096, &v), 0);
	ck_assert_uint_eq(v, 8);
	check_range_version(4096, 4096, 8);
}
END_TEST

START_TEST(writearound_bypasses_the_cache_and_never_serves_old_data)
{
	struct pcache_image_stats st;
	uint8_t buf[4096];
	uint32_t v;
	int fd;

	write_version(0, 8192, 1, 0);          /* cached, dirty */
	check_range_version(65536, 4096, 0);   /* cached clean by a miss fill */
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITEAROUND), 0);
	write_version(4096, 4096, 2, 0);       /* over a dirty key: overridden in the cache too */
	write_version(65536, 4096, 3, 0);      /* over a clean key */
	write_version(1u << 20, 4096, 4, 0);   /* nothing cached: bypasses the cache */
	check_range_version(0, 4096, 1);
	check_range_version(4096, 4096, 2);
	check_range_version(65536, 4096, 3);
	pcache_image_get_stats(img, &st);
	check_range_version(1u << 20, 4096, 4);
	fd = open(ipath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 4096, 1u << 20), 4096);
	ck_assert_int_eq(eng_decode(buf, 1, 1u << 20, &v), 0);
	ck_assert_uint_eq(v, 4);
	close(fd);
	/* after a full writeback the older dirty key did not overwrite the newer backing data */
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	fd = open(ipath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 4096, 4096), 4096);
	close(fd);
	ck_assert_int_eq(eng_decode(buf, 1, 4096, &v), 0);
	ck_assert_uint_eq(v, 2);
}
END_TEST

/*
 * While a writearound write is in flight (its range in nofill, from before its cache step
 * until its backing write ended), a miss over the range caches nothing: it may have read the
 * data from before the write. Once the range is out of nofill, misses fill again.
 */
START_TEST(a_miss_over_a_writearound_write_in_flight_caches_nothing)
{
	struct pcache_through_ent nf = { .off = 1u << 20, .end = (1u << 20) + 65536 };
	struct pcache_image_stats st;

	pcache_nofill_add(img, &nf);
	check_range_version((1u << 20) + 4096, 8192, 0);   /* inside */
	check_range_version((1u << 20) - 4096, 8192, 0);   /* across its start */
	check_range_version(2u << 20, 4096, 0);            /* elsewhere: cached */
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 4096);
	pcache_nofill_del(img, &nf);
	check_range_version((1u << 20) + 4096, 8192, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 4096 + 8192);
}
END_TEST

static _Atomic int wa_calls, wa_status;

static void wa_done(void *priv, int status)
{
	(void)priv;
	atomic_store(&wa_status, status);
	atomic_fetch_add(&wa_calls, 1);
}

/* pcache_image_write_async() in writearound mode: replies from the backing write, the
 * backing holds the data, a cached range reads the new data, an uncached one stays uncached
 * (the engine wrote the backing from its own copy: the caller's buffer is free at once). */
START_TEST(an_async_writearound_write_completes_from_its_backing_write)
{
	struct pcache_image_stats st0, st;
	uint8_t *buf = malloc(65536);
	int fd, i;
	uint32_t v;

	check_range_version(0, 4096, 0);                   /* cached clean */
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITEAROUND), 0);
	img_stats(&st0);
	eng_fill(buf, 65536, 1, 0, 9);
	ck_assert_int_eq(pcache_image_write_async(img, buf, 0, 65536, PCACHE_IO_FUA, wa_done, NULL),
			 PCACHE_IO_PENDING);
	memset(buf, 0xEE, 65536);
	for (i = 0; i < 500 && !atomic_load(&wa_calls); i++)
		usleep(10 * 1000);
	ck_assert_int_eq(atomic_load(&wa_calls), 1);
	ck_assert_int_eq(atomic_load(&wa_status), 0);
	check_range_version(0, 65536, 9);
	fd = open(ipath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 65536, 0), 65536);
	close(fd);
	for (i = 0; i < 128; i++) {
		ck_assert_int_eq(eng_decode(buf + i * 512, 1, (uint64_t)i * 512, &v), 0);
		ck_assert_uint_eq(v, 9);
	}
	img_stats(&st);
	/* the write cached nothing new: only the range cached before, now the new data (the
	 * check reads after the write filled the rest: misses, not the write) */
	ck_assert_uint_eq(st.writes, st0.writes + 1);
	ck_assert_uint_eq(st.backing_errors, 0);
	ck_assert_uint_eq(atomic_load(&img->nofill_n), 0);
	free(buf);
}
END_TEST

START_TEST(leaving_writeback_drains_dirty_data_first)
{
	uint8_t buf[4096];
	uint32_t v;
	int fd;

	write_version(8192, 4096, 5, 0); /* dirty in the cache, not on the backing */
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	fd = open(ipath, O_RDONLY);
	ck_assert_int_eq(pread(fd, buf, 4096, 8192), 4096);
	close(fd);
	ck_assert_int_eq(eng_decode(buf, 1, 8192, &v), 0);
	ck_assert_uint_eq(v, 5);
}
END_TEST

START_TEST(attr_changes_keep_persisted_writeback_progress)
{
	struct pcache_image_ent e;
	uint64_t lsn;

	write_version(0, 4096, 1, 0);
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	ck_assert_int_eq(pcache_cache_known_image(c, "vm1", &e), 0);
	lsn = e.wb_lsn;
	ck_assert_uint_gt(lsn, 0);
	/* an attribute change must not rewrite the entry from a copy older than the progress */
	ck_assert_int_eq(pcache_image_set_attr(img, 0640, 12, 34), 0);
	ck_assert_int_eq(pcache_image_set_cache_mode(img, PCACHE_MODE_WRITETHROUGH), 0);
	ck_assert_int_eq(pcache_cache_known_image(c, "vm1", &e), 0);
	ck_assert_uint_eq(e.wb_lsn, lsn);
	ck_assert_uint_eq(e.file_mode, 0640);
	ck_assert_uint_eq(e.uid, 12);
	ck_assert_uint_eq(e.gid, 34);
	ck_assert_uint_eq(e.cache_mode, PCACHE_MODE_WRITETHROUGH);
}
END_TEST

START_TEST(status_reports_geometry_and_index)
{
	struct pcache_cache_status st;
	struct pcache_image *v[4];

	write_version(0, 4096, 1, 0);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_eq(st.seg_size, 1u << 20);
	ck_assert_uint_ge(st.seg_count, 40);
	ck_assert_uint_ge(st.segs_used, 2);
	ck_assert_uint_eq(st.images, 1);
	ck_assert_uint_eq(st.keys_indexed, 1);
	ck_assert_uint_gt(st.index_bytes, 0);
	ck_assert_ptr_ne(st.granularity, NULL);
	ck_assert_int_eq(pcache_cache_images(c, v, 4), 1);
	ck_assert_str_eq(pcache_image_name(v[0]), "vm1");
	ck_assert_uint_eq(pcache_image_size(v[0]), IMG_SIZE);
	ck_assert_uint_eq(pcache_image_lbs(v[0]), 512);
	pcache_image_put(v[0]);
}
END_TEST

/* Read [off, off + total) in 1 MiB reads, checking the backing's version 0 (never written). */
static void read_seq(uint64_t off, uint64_t total)
{
	for (uint64_t o = off; o < off + total; o += 1u << 20)
		check_range_version(o, 1u << 20, 0);
}

/*
 * Sequential cutoff (default 4 MiB): a read stream caches its first 4 MiB and reads the rest
 * from the backing without caching it; the bytes still read right; random reads are cached.
 */
START_TEST(a_sequential_stream_past_the_cutoff_is_not_cached)
{
	struct pcache_image_stats st;

	ck_assert_uint_eq(pcache_image_seq_cutoff(img), 4u << 20);
	read_seq(0, 12u << 20);
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 4u << 20);
	ck_assert_uint_eq(st.read_bypass_bytes, 8u << 20);
	/* scattered 4 KiB reads are no stream, even close behind one: every one is cached */
	for (uint32_t i = 0; i < 16; i++)
		check_range_version((11u << 20) + (uint64_t)((i * 7) % 16) * 65536, 4096, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, (4u << 20) + 16 * 4096);
	ck_assert_uint_eq(st.read_bypass_bytes, 8u << 20);
	/* a stream over cached data reads it from the cache, and stays a stream */
	read_seq(0, 4u << 20);
	img_stats(&st);
	ck_assert_uint_ge(st.read_hit_bytes, 4u << 20);
}
END_TEST

/* Two streams read in turn (1 MiB each) are told apart: each is cut off after its own 4 MiB. */
START_TEST(interleaved_streams_are_each_cut_off)
{
	struct pcache_image_stats st;

	for (uint64_t i = 0; i < 6; i++) {
		check_range_version(i << 20, 1u << 20, 0);
		check_range_version((8u << 20) + (i << 20), 1u << 20, 0);
	}
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 8u << 20);
	ck_assert_uint_eq(st.read_bypass_bytes, 4u << 20);
}
END_TEST

/* Reads of a stream queued a little out of order (as two FUSE workers deliver them) still
 * count as the stream's: 0, 1M, 512K, 1.5M, 2M, ... (512 KiB each, cutoff 2 MiB). */
START_TEST(a_stream_read_out_of_order_is_still_one_stream)
{
	static const uint32_t at_kib[] = { 0, 1024, 512, 1536, 2048, 2560, 3072 };
	struct pcache_image_stats st;

	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 2u << 20), 0);
	for (size_t i = 0; i < sizeof(at_kib) / sizeof(at_kib[0]); i++)
		check_range_version((uint64_t)at_kib[i] << 10, 512u << 10, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 2u << 20);
	ck_assert_uint_eq(st.read_bypass_bytes, 1536u << 10);
}
END_TEST

/* Cutoff 0: every read is cached; the setting survives a restart; bad values are refused. */
START_TEST(sequential_cutoff_zero_caches_every_read_and_persists)
{
	struct pcache_image_stats st;

	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	ck_assert_uint_eq(pcache_image_seq_cutoff(img), 0);
	read_seq(0, 12u << 20);
	img_stats(&st);
	ck_assert_uint_eq(st.cached_bytes, 12u << 20);
	ck_assert_uint_eq(st.read_bypass_bytes, 0);
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, PCACHE_SEQ_CUTOFF_MAX + 1), -EINVAL);
	stop();
	start(false);
	ck_assert_uint_eq(pcache_image_seq_cutoff(img), 0);
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 1000), 0); /* rounded up to 1 KiB */
	stop();
	start(false);
	ck_assert_uint_eq(pcache_image_seq_cutoff(img), 1024);
}
END_TEST

/*
 * Writes (writeback mode): a sequential stream caches its first 4 MiB (dirty, as any write) and
 * sends the rest around the cache to the backing; random writes stay in the cache. Everything
 * reads back, and the backing ends with every write after a writeback.
 */
START_TEST(a_sequential_write_stream_past_the_cutoff_goes_around)
{
	struct pcache_image_stats st;
	uint64_t o, bad;

	for (o = 0; o < (12u << 20); o += 1u << 20)
		write_version(o, 1u << 20, 3, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.write_bypass_bytes, 8u << 20);
	ck_assert_uint_eq(st.dirty_bytes, 4u << 20);
	/* the bytes past the cutoff are on the backing already, no writeback needed */
	ck_assert_int_eq(eng_file_holds(ipath, 4u << 20, 8u << 20, 1, 3, &bad), 0);
	/* scattered 4 KiB writes are no stream: cached (dirty) */
	for (uint32_t i = 0; i < 16; i++)
		write_version((13u << 20) + (uint64_t)((i * 7) % 16) * 65536, 4096, 4, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.write_bypass_bytes, 8u << 20);
	ck_assert_uint_eq(st.dirty_bytes, (4u << 20) + 16 * 4096);
	check_range_version(0, 12u << 20, 3);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	check_range_version(0, 12u << 20, 3);
	/* cutoff 0: a stream is cached as it was before the cutoff applied to writes */
	ck_assert_int_eq(pcache_image_set_seq_cutoff(img, 0), 0);
	for (o = 0; o < (12u << 20); o += 1u << 20)
		write_version(o, 1u << 20, 5, 0);
	img_stats(&st);
	ck_assert_uint_eq(st.write_bypass_bytes, 8u << 20);
	ck_assert_uint_ge(st.dirty_bytes, 12u << 20);
	check_range_version(0, 12u << 20, 5);
}
END_TEST

Suite *cache_req_suite(void);
Suite *cache_req_suite(void)
{
	Suite *s = suite_create("cache_req");
	TCase *tc = tcase_create("Core");
	TCase *tcc = tcase_create("DataCrc");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, write_then_read_hits_inline);
	tcase_add_test(tc, leaving_writeback_drains_dirty_data_first);
	tcase_add_test(tc, attr_changes_keep_persisted_writeback_progress);
	tcase_add_test(tc, miss_reads_backing_then_hits);
	tcase_add_test(tc, partial_hits_and_misses_in_one_read);
	tcase_add_test(tc, read_over_hundreds_of_keys_and_holes);
	tcase_add_test(tc, overlapping_writes_later_wins);
	tcase_add_test(tc, write_across_regions_and_segments);
	tcase_add_test(tc, discard_and_zero_read_as_zeros);
	tcase_add_test(tc, bad_ranges_are_einval);
	tcase_add_test(tc, fua_write_persists_its_kset);
	tcase_add_test(tc, flush_persists_every_staged_key);
	tcase_add_test(tc, concurrent_flushes_share_one_commit);
	tcase_add_test(tc, a_flush_after_a_commit_makes_its_own);
	tcase_add_test(tc, writeback_all_reaches_the_backing);
	tcase_add_test(tc, attach_refuses_changed_identity_with_dirty_data);
	tcase_add_test(tc, changed_identity_of_clean_image_is_rekeyed_on_request);
	tcase_add_test(tc, detach_forget_needs_clean_image);
	tcase_add_test(tc, knobs_round_trip_and_reject_bad_values);
	tcase_add_test(tc, writethrough_writes_the_backing_at_once);
	tcase_add_test(tc, writearound_bypasses_the_cache_and_never_serves_old_data);
	tcase_add_test(tc, status_reports_geometry_and_index);
	tcase_add_test(tc, a_sequential_stream_past_the_cutoff_is_not_cached);
	tcase_add_test(tc, a_miss_over_a_writearound_write_in_flight_caches_nothing);
	tcase_add_test(tc, an_async_writearound_write_completes_from_its_backing_write);
	tcase_add_test(tc, interleaved_streams_are_each_cut_off);
	tcase_add_test(tc, a_stream_read_out_of_order_is_still_one_stream);
	tcase_add_test(tc, sequential_cutoff_zero_caches_every_read_and_persists);
	tcase_add_test(tc, a_sequential_write_stream_past_the_cutoff_goes_around);
	suite_add_tcase(s, tc);
	tcase_add_checked_fixture(tcc, setup_crc, teardown);
	tcase_set_timeout(tcc, 60);
	tcase_add_test(tcc, crc_mismatch_on_hit_is_eio_and_counted);
	tcase_add_test(tcc, crc_is_verified_on_cut_keys);
	suite_add_tcase(s, tcc);
	return s;
}
