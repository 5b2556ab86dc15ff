/*
 * check_cache_pin.c -- zero-copy reads (pcache_image_read_pin, core/cache_pin.c) and the read
 * pins of data segments (core/segment.c invariant 5), on a real cache file and backing image:
 * a read that is all hits points into pmem (no copy) with the written bytes; zeroed ranges
 * point to the shared zero buffer; anything not a hit falls back with nothing pinned or counted;
 * CRC mismatches are -EIO; a pinned segment that GC frees is not reused until the unpin (GC and
 * writers never wait for the pin, a waiting allocation proceeds at the unpin); detach and stop
 * wait for pins; readers pinning under writers and GC never see bytes change while pinned.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

#define IMG_SIZE (16u << 20)

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void start(bool background, bool data_crc, uint64_t cache_size, uint64_t img_size)
{
	char err[256];

	ck_assert_int_eq(eng_format(cpath, cache_size, 1u << 20, data_crc), 0);
	eng_make_image(ipath, img_size, 1);
	ck_assert_msg(eng_start(cpath, ipath, "p", background, data_crc, &c, &img, err,
				sizeof(err)) == 0, "start: %s", err);
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "pin-cache");
	check_scratch_path(ipath, sizeof(ipath), "pin-img");
}

static void teardown(void)
{
	if (img)
		pcache_image_put(img);
	img = NULL;
	if (c)
		pcache_cache_stop(c, false);
	c = NULL;
	unlink(cpath);
	unlink(ipath);
}

static void wr(uint64_t off, size_t len, uint32_t v)
{
	uint8_t *buf = malloc(len);

	eng_fill(buf, len, 1, off, v);
	ck_assert_int_eq(pcache_image_write(img, buf, off, len, 0), 0);
	free(buf);
}

/* Copy the pinned bytes into out (cap bytes); returns the total. */
static size_t gather(const struct pcache_read_pin *p, uint8_t *out, size_t cap)
{
	size_t total = 0;
	uint32_t i;

	for (i = 0; i < p->niov; i++) {
		ck_assert_uint_le(total + p->iov[i].iov_len, cap);
		memcpy(out + total, p->iov[i].iov_base, p->iov[i].iov_len);
		total += p->iov[i].iov_len;
	}
	return total;
}

/* The pinned bytes are len bytes of version v (ENG_ZERO: zeros) at image offset off. */
static void expect_pinned(const struct pcache_read_pin *p, uint64_t off, size_t len, uint32_t v)
{
	uint8_t *buf = malloc(len);
	uint32_t got;
	size_t s;

	ck_assert_uint_eq(gather(p, buf, len), len);
	for (s = 0; s < len; s += 512) {
		ck_assert_int_eq(eng_decode(buf + s, 1, off + s, &got), 0);
		ck_assert_msg(got == v, "sector %llu: version %u, want %u",
			      (unsigned long long)(off + s) / 512, got, v);
	}
	free(buf);
}

static uint32_t readers_of(uint32_t seg)
{
	return atomic_load(&c->segs.readers[seg]);
}

static uint32_t total_readers(void)
{
	uint32_t i, n = 0;

	for (i = 0; i < c->seg_count; i++)
		n += atomic_load(&c->segs.readers[i]);
	return n;
}

/* The first key of region 0 at or after off (copied under the lock). */
static struct pcache_ikey key_at(uint64_t off)
{
	struct pcache_subtree *sub = &img->ix.sub[off >> PCACHE_REGION_SHIFT];
	struct pcache_ikey k;
	uint32_t i;

	pthread_mutex_lock(&sub->lock);
	i = pcache_subtree_find(sub, (uint32_t)(off & (PCACHE_REGION_SIZE - 1)));
	ck_assert_uint_lt(i, sub->n);
	k = sub->v[i];
	pthread_mutex_unlock(&sub->lock);
	return k;
}

START_TEST(hit_pins_pmem_in_place_with_the_written_bytes)
{
	struct pcache_image_stats st0, st;
	struct pcache_read_pin pin;
	struct pcache_ikey k;

	start(false, false, 24u << 20, IMG_SIZE);
	wr(4096, 65536, 5);
	k = key_at(4096);
	pcache_image_get_stats(img, &st0);
	ck_assert_int_eq(pcache_image_read_pin(img, 4096, 65536, &pin), 0);
	/* zero-copy: the iovec is the key's data in the cache mapping */
	ck_assert_uint_eq(pin.niov, 1);
	ck_assert_ptr_eq(pin.iov[0].iov_base, pcache_seg_ptr(c, k.seg, k.seg_off));
	expect_pinned(&pin, 4096, 65536, 5);
	ck_assert_uint_eq(readers_of(k.seg), 1);
	ck_assert_int_eq(atomic_load(&img->inflight), 1);
	pcache_read_unpin(&pin);
	ck_assert_uint_eq(readers_of(k.seg), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	pcache_read_unpin(&pin); /* a second unpin is a no-op */
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	/* counted once, as a hit */
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.reads, st0.reads + 1);
	ck_assert_uint_eq(st.read_bytes, st0.read_bytes + 65536);
	ck_assert_uint_eq(st.read_hit_bytes, st0.read_hit_bytes + 65536);
	ck_assert_uint_eq(st.read_miss_bytes, st0.read_miss_bytes);
	/* a piece inside the key starts at its own offset */
	ck_assert_int_eq(pcache_image_read_pin(img, 4096 + 1536, 1024, &pin), 0);
	ck_assert_uint_eq(pin.niov, 1);
	ck_assert_ptr_eq(pin.iov[0].iov_base, pcache_seg_ptr(c, k.seg, k.seg_off + 1536));
	ck_assert_uint_eq(pin.iov[0].iov_len, 1024);
	expect_pinned(&pin, 4096 + 1536, 1024, 5);
	pcache_read_unpin(&pin);
	/* a zero-length pin holds nothing */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 0, &pin), 0);
	ck_assert_uint_eq(pin.niov, 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	pcache_read_unpin(&pin);
}
END_TEST

START_TEST(pin_crosses_regions_and_merges_contiguous_keys)
{
	struct pcache_read_pin pin;
	uint64_t off;

	start(false, false, 24u << 20, IMG_SIZE);
	/* 4 KiB writes in order land back to back in one head's segment: one iovec */
	for (off = 1u << 20; off < (1u << 20) + (256u << 10); off += 4096)
		wr(off, 4096, 7);
	ck_assert_int_eq(pcache_image_read_pin(img, 1u << 20, 256u << 10, &pin), 0);
	ck_assert_uint_eq(pin.niov, 1);
	ck_assert_uint_eq(pin.nseg, 1);
	expect_pinned(&pin, 1u << 20, 256u << 10, 7);
	pcache_read_unpin(&pin);
	/* across the 4 MiB region boundary (two subtrees) */
	wr((4u << 20) - 8192, 16384, 8);
	ck_assert_int_eq(pcache_image_read_pin(img, (4u << 20) - 8192, 16384, &pin), 0);
	expect_pinned(&pin, (4u << 20) - 8192, 16384, 8);
	pcache_read_unpin(&pin);
	ck_assert_uint_eq(total_readers(), 0);
}
END_TEST

START_TEST(more_pieces_than_the_iovec_cap_fall_back)
{
	struct pcache_read_pin pin;
	int i;

	start(false, false, 24u << 20, IMG_SIZE);
	/* written backwards: no two neighbours are contiguous in pmem */
	for (i = PCACHE_PIN_MAX_IOV; i >= 0; i--)
		wr((uint64_t)i * 4096, 4096, 9);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, PCACHE_PIN_MAX_IOV * 4096u, &pin), 0);
	ck_assert_uint_eq(pin.niov, PCACHE_PIN_MAX_IOV);
	expect_pinned(&pin, 0, PCACHE_PIN_MAX_IOV * 4096u, 9);
	pcache_read_unpin(&pin);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, (PCACHE_PIN_MAX_IOV + 1) * 4096u, &pin),
			 PCACHE_PIN_FALLBACK);
	ck_assert_uint_eq(pin.niov, 0);
	ck_assert_ptr_null(pin.img);
	ck_assert_uint_eq(total_readers(), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
}
END_TEST

START_TEST(anything_but_hits_falls_back_with_nothing_pinned)
{
	struct pcache_image_stats st0, st;
	struct pcache_read_pin pin;
	struct pcache_subtree *sub;
	struct pcache_ikey ph;
	uint8_t buf[8192];
	uint32_t v;

	start(false, false, 24u << 20, IMG_SIZE);
	wr(0, 4096, 3);
	pcache_image_get_stats(img, &st0);
	/* a hole after a hit */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 8192, &pin), PCACHE_PIN_FALLBACK);
	ck_assert_uint_eq(pin.niov, 0);
	ck_assert_uint_eq(total_readers(), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	/* a hole before a hit */
	ck_assert_int_eq(pcache_image_read_pin(img, 1u << 20, 4096, &pin), PCACHE_PIN_FALLBACK);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.reads, st0.reads);      /* the copying read counts it */
	ck_assert_uint_eq(st.read_bytes, st0.read_bytes);
	/* the copying read serves it (and fills the hole) */
	ck_assert_int_eq(eng_read(img, buf, 0, 8192), 0);
	ck_assert_int_eq(eng_decode(buf, 1, 0, &v), 0);
	ck_assert_uint_eq(v, 3);
	ck_assert_int_eq(eng_decode(buf + 4096, 1, 4096, &v), 0);
	ck_assert_uint_eq(v, 0);
	/* the miss counts in inflight until its fill on the completion thread is over (the read
	 * itself returned when its data was copied): wait for that before counting again */
	for (int i = 0; i < 5000 && atomic_load(&img->inflight); i++)
		usleep(1000);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 8192, &pin), 0);
	pcache_read_unpin(&pin);
	/* a miss in flight (placeholder) */
	sub = &img->ix.sub[0];
	memset(&ph, 0, sizeof(ph));
	ph.off = 65536;
	ph.len = 4096;
	ph.seg = 12345;
	ph.flags = PCACHE_IKEY_EMPTY;
	pthread_mutex_lock(&sub->lock);
	ck_assert_int_eq(pcache_subtree_insert(sub, &ph), 0);
	pthread_mutex_unlock(&sub->lock);
	ck_assert_int_eq(pcache_image_read_pin(img, 65536, 4096, &pin), PCACHE_PIN_FALLBACK);
	ck_assert_uint_eq(total_readers(), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	/* bad ranges */
	ck_assert_int_eq(pcache_image_read_pin(img, 100, 4096, &pin), -EINVAL);
	ck_assert_int_eq(pcache_image_read_pin(img, IMG_SIZE, 4096, &pin), -EINVAL);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
}
END_TEST

START_TEST(stale_key_falls_back_to_the_backing)
{
	struct pcache_read_pin pin;
	struct pcache_ikey k;
	uint8_t *buf = malloc(1u << 20);
	uint32_t v;

	start(false, false, 24u << 20, IMG_SIZE);
	wr(0, 1u << 20, 4); /* fills exactly one data segment */
	k = key_at(0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	ck_assert_uint_ne(pcache_cache_dev_seg_gen(c->cd, k.seg), k.seg_gen);
	/* the key is still in the index but its segment was freed: not pinned */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 4096, &pin), PCACHE_PIN_FALLBACK);
	ck_assert_uint_eq(readers_of(k.seg), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	ck_assert_int_eq(eng_read(img, buf, 0, 1u << 20), 0);
	ck_assert_int_eq(eng_decode(buf + 4096, 1, 4096, &v), 0);
	ck_assert_uint_eq(v, 4);
	free(buf);
}
END_TEST

START_TEST(zeroed_ranges_point_to_the_shared_zero_buffer)
{
	struct pcache_read_pin pin;
	uint8_t *buf = malloc(1u << 20);
	size_t i;

	start(false, false, 24u << 20, IMG_SIZE);
	ck_assert_int_eq(pcache_image_discard(img, 0, 1u << 20, true), 0);
	wr(512u << 10, 4096, 6);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 1u << 20, &pin), 0);
	/* 512 KiB of zeros (two buffer-sized pieces), the data, 508 KiB of zeros (two) */
	ck_assert_uint_eq(pin.niov, 5);
	ck_assert_ptr_eq(pin.iov[0].iov_base, pin.iov[1].iov_base);
	ck_assert_ptr_eq(pin.iov[0].iov_base, pin.iov[3].iov_base);
	ck_assert_uint_eq(pin.iov[2].iov_len, 4096);
	ck_assert_uint_eq(pin.nseg, 1);
	ck_assert_uint_eq(gather(&pin, buf, 1u << 20), 1u << 20);
	for (i = 0; i < (1u << 20); i++) {
		if (i == 512u << 10) {
			i += 4095;
			continue;
		}
		ck_assert_msg(buf[i] == 0, "byte %zu not zero", i);
	}
	pcache_read_unpin(&pin);
	ck_assert_int_eq(pcache_image_read_pin(img, 512u << 10, 4096, &pin), 0);
	expect_pinned(&pin, 512u << 10, 4096, 6);
	pcache_read_unpin(&pin);
	/* an all-zero pin pins no segment */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 256u << 10, &pin), 0);
	ck_assert_uint_eq(pin.nseg, 0);
	ck_assert_uint_eq(pin.niov, 1);
	expect_pinned(&pin, 0, 256u << 10, ENG_ZERO);
	pcache_read_unpin(&pin);
	ck_assert_uint_eq(total_readers(), 0);
	free(buf);
}
END_TEST

START_TEST(crc_mismatch_is_eio_counted_and_unpinned)
{
	struct pcache_image_stats st;
	struct pcache_read_pin pin;
	struct pcache_ikey k;
	uint64_t off;
	uint8_t *p;

	start(false, true, 24u << 20, IMG_SIZE);
	wr(0, 16384, 1);
	wr(4096, 4096, 2); /* splits the first key: its pieces keep the original extent's CRC */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 16384, &pin), 0);
	ck_assert_uint_eq(pin.niov, 3);
	ck_assert_uint_eq(pin.iov[0].iov_len, 4096);
	ck_assert_uint_eq(pin.iov[1].iov_len, 4096);
	ck_assert_uint_eq(pin.iov[2].iov_len, 8192);
	pin.niov = 1;
	expect_pinned(&pin, 0, 4096, 1);
	pin.niov = 3;
	pcache_read_unpin(&pin);
	k = key_at(0);
	p = pcache_seg_ptr(c, k.seg, k.seg_off);
	p[4096 + 100] ^= 0xFF; /* media corruption in the hidden middle of the original extent */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 4096, &pin), -EIO);
	ck_assert_uint_eq(pin.niov, 0);
	ck_assert_ptr_null(pin.img);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.crc_errors, 1);
	ck_assert_uint_eq(total_readers(), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
	/* the overwriting key is intact */
	ck_assert_int_eq(pcache_image_read_pin(img, 4096, 4096, &pin), 0);
	expect_pinned(&pin, 4096, 4096, 2);
	pcache_read_unpin(&pin);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.crc_errors, 1);
	/* 128 keys of 4 KiB, contiguous in pmem: one piece, every key's CRC checked */
	for (off = 1u << 20; off < (1u << 20) + (512u << 10); off += 4096)
		wr(off, 4096, 3);
	ck_assert_int_eq(pcache_image_read_pin(img, 1u << 20, 512u << 10, &pin), 0);
	ck_assert_uint_eq(pin.niov, 1);
	expect_pinned(&pin, 1u << 20, 512u << 10, 3);
	pcache_read_unpin(&pin);
	k = key_at((1u << 20) + (300u << 10));
	p = pcache_seg_ptr(c, k.seg, k.seg_off);
	p[7] ^= 0x01;
	ck_assert_int_eq(pcache_image_read_pin(img, 1u << 20, 512u << 10, &pin), -EIO);
	pcache_image_get_stats(img, &st);
	ck_assert_uint_eq(st.crc_errors, 2);
	ck_assert_uint_eq(total_readers(), 0);
}
END_TEST

/* A call run in a thread, to show it waits for an unpin. */
enum bg_kind { BG_ALLOC, BG_DETACH, BG_STOP };

struct bg_call {
	enum bg_kind kind;
	pthread_t th;
	uint32_t seg;       /* BG_ALLOC: the segment got */
	int ret;
	atomic_bool done;
};

static void *bg_main(void *arg)
{
	struct bg_call *b = arg;

	if (b->kind == BG_ALLOC)
		b->ret = pcache_seg_alloc(c, true, true, &b->seg);
	else if (b->kind == BG_DETACH)
		b->ret = pcache_image_detach(c, "p", false);
	else
		b->ret = pcache_cache_stop(c, false);
	atomic_store(&b->done, true);
	return NULL;
}

/* Start the call and check that it is still waiting 200 ms later. */
static void bg_start_blocked(struct bg_call *b, enum bg_kind kind)
{
	b->kind = kind;
	b->ret = -1;
	atomic_init(&b->done, false);
	ck_assert_int_eq(pthread_create(&b->th, NULL, bg_main, b), 0);
	usleep(200 * 1000);
	ck_assert(!atomic_load(&b->done));
}

/* The call completes (within 5 s) with 0. */
static void bg_finish(struct bg_call *b)
{
	int t;

	for (t = 0; t < 500 && !atomic_load(&b->done); t++)
		usleep(10 * 1000);
	ck_assert(atomic_load(&b->done));
	pthread_join(b->th, NULL);
	ck_assert_int_eq(b->ret, 0);
}

START_TEST(pinned_segment_freed_by_gc_is_reused_only_after_unpin)
{
	struct pcache_read_pin pin;
	struct bg_call w;
	struct pcache_ikey k;
	uint32_t held[64], nheld = 0, s, i;
	uint8_t *before = malloc(65536), *after = malloc(65536);

	start(false, false, 24u << 20, IMG_SIZE);
	wr(0, 1u << 20, 1); /* fills exactly one data segment */
	k = key_at(0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 65536, &pin), 0);
	ck_assert_uint_eq(gather(&pin, before, 65536), 65536);
	/* GC frees the segment's last reference: it must not block on the pin */
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(c->cd, k.seg), k.seg_gen + 1);
	ck_assert_uint_eq(readers_of(k.seg), PCACHE_SEG_FREEING | 1u);
	ck_assert_uint_eq(atomic_load(&c->segs.pin_deferred), 1);
	/* every free segment can be taken, never the pinned one */
	while (nheld < 64 && pcache_seg_alloc(c, true, false, &s) == 0) {
		ck_assert_uint_ne(s, k.seg);
		held[nheld++] = s;
		memset(pcache_seg_ptr(c, s, 0), 0xA5, 65536); /* reused segments get new data */
	}
	ck_assert_uint_gt(nheld, 0);
	ck_assert_uint_lt(nheld, 64);
	/* an allocation now waits: only the pinned segment can come free */
	bg_start_blocked(&w, BG_ALLOC);
	ck_assert_uint_eq(gather(&pin, after, 65536), 65536);
	ck_assert_int_eq(memcmp(before, after, 65536), 0);
	expect_pinned(&pin, 0, 65536, 1);
	pcache_read_unpin(&pin);
	/* the unpin frees it: the waiter gets exactly that segment */
	bg_finish(&w);
	ck_assert_uint_eq(w.seg, k.seg);
	ck_assert_uint_eq(readers_of(k.seg), 0);
	pcache_seg_free(c, w.seg);
	for (i = 0; i < nheld; i++)
		pcache_seg_free(c, held[i]);
	free(before);
	free(after);
}
END_TEST

START_TEST(unpinned_freed_segment_is_freed_at_once)
{
	struct pcache_cache_status st0, st;
	struct pcache_read_pin pin;
	struct pcache_ikey k;

	start(false, false, 24u << 20, IMG_SIZE);
	wr(0, 1u << 20, 1);
	k = key_at(0);
	ck_assert_int_eq(pcache_cache_writeback_all(c), 0);
	/* pinned and unpinned before GC: nothing is deferred */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 4096, &pin), 0);
	pcache_read_unpin(&pin);
	pcache_cache_get_status(c, &st0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	pcache_cache_get_status(c, &st);
	ck_assert_uint_gt(st.segs_freed, st0.segs_freed);
	ck_assert_uint_eq(st.segs_data, 0);
	ck_assert_uint_eq(readers_of(k.seg), 0);
	ck_assert_uint_eq(atomic_load(&c->segs.pin_deferred), 0);
}
END_TEST

static void wait_for_unpin(bool stop)
{
	struct pcache_read_pin pin, pin2;
	struct bg_call d;

	start(false, false, 24u << 20, IMG_SIZE);
	wr(0, 65536, 2);
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 65536, &pin), 0);
	bg_start_blocked(&d, stop ? BG_STOP : BG_DETACH);
	/* new I/O is refused meanwhile; the held pin's bytes are intact */
	ck_assert_int_eq(pcache_image_read_pin(img, 0, 4096, &pin2), -ENODEV);
	expect_pinned(&pin, 0, 65536, 2);
	pcache_read_unpin(&pin);
	bg_finish(&d);
	if (stop)
		c = NULL;
}

START_TEST(detach_waits_for_unpin)
{
	wait_for_unpin(false);
}
END_TEST

START_TEST(stop_waits_for_unpin)
{
	wait_for_unpin(true);
}
END_TEST

/* ---- readers, writers and GC at once ------------------------------------------------------- */

#define ST_IMG (8u << 20)
#define ST_WRITERS 2
#define ST_READERS 2

static atomic_bool st_stop;
static atomic_int st_failures;
static atomic_uint_fast64_t st_pins, st_fallbacks;

static int st_iters(void)
{
	return check_under_tsan() ? 200 : 3000;
}

static void *st_writer(void *arg)
{
	unsigned int rs = 11u + (unsigned int)(intptr_t)arg;
	uint8_t *buf = malloc(65536);
	int i;

	for (i = 0; i < st_iters(); i++) {
		uint32_t n = 1 + (uint32_t)rand_r(&rs) % 16;    /* 4 KiB .. 64 KiB */
		uint64_t off = ((uint64_t)rand_r(&rs) % (ST_IMG / 4096 - n)) * 4096;

		eng_fill(buf, n * 4096, 1, off, (uint32_t)(intptr_t)arg * 100000u + (uint32_t)i + 1);
		if (pcache_image_write(img, buf, off, n * 4096, 0)) {
			atomic_fetch_add(&st_failures, 1);
			break;
		}
	}
	free(buf);
	return NULL;
}

static void *st_reader(void *arg)
{
	unsigned int rs = 1000u + (unsigned int)(intptr_t)arg;
	uint8_t *a = malloc(131072), *b = malloc(131072);

	while (!atomic_load(&st_stop)) {
		uint32_t n = 1 + (uint32_t)rand_r(&rs) % 32;    /* 4 KiB .. 128 KiB */
		uint64_t off = ((uint64_t)rand_r(&rs) % (ST_IMG / 4096 - n)) * 4096;
		struct pcache_read_pin pin;
		size_t len = n * 4096u, s;
		uint32_t v;
		int ret = pcache_image_read_pin(img, off, len, &pin);

		if (ret == PCACHE_PIN_FALLBACK) {
			/* the copying read fills the cache: pin again at once (GC may race with it) */
			atomic_fetch_add(&st_fallbacks, 1);
			if (eng_read(img, a, off, len) != 0)
				atomic_fetch_add(&st_failures, 1);
			ret = pcache_image_read_pin(img, off, len, &pin);
			if (ret == PCACHE_PIN_FALLBACK)
				continue;
		}
		if (ret != 0 || gather(&pin, a, len) != len) {
			atomic_fetch_add(&st_failures, 1);
			pcache_read_unpin(&pin);
			continue;
		}
		for (s = 0; s < len; s += 512) {
			if (eng_decode(a + s, 1, off + s, &v) != 0) {
				fprintf(stderr, "pin: sector %llu is not a written version\n",
					(unsigned long long)(off + s) / 512);
				atomic_fetch_add(&st_failures, 1);
				break;
			}
		}
		/* hold the pin a while: GC and writers run; the bytes must not change */
		usleep(2000);
		gather(&pin, b, len);
		if (memcmp(a, b, len) != 0) {
			fprintf(stderr, "pin: bytes at %llu changed while pinned\n", (unsigned long long)off);
			atomic_fetch_add(&st_failures, 1);
		}
		pcache_read_unpin(&pin);
		atomic_fetch_add(&st_pins, 1);
	}
	free(a);
	free(b);
	return NULL;
}

START_TEST(readers_pin_while_writers_and_gc_reuse_segments)
{
	pthread_t w[ST_WRITERS], r[ST_READERS];
	struct pcache_cache_status st;
	intptr_t i;

	/* 12 MiB cache under an 8 MiB image written several times over: GC reclaims constantly */
	start(true, false, 12u << 20, ST_IMG);
	atomic_store(&st_stop, false);
	atomic_store(&st_failures, 0);
	atomic_store(&st_pins, 0);
	atomic_store(&st_fallbacks, 0);
	for (i = 0; i < ST_READERS; i++)
		ck_assert_int_eq(pthread_create(&r[i], NULL, st_reader, (void *)i), 0);
	for (i = 0; i < ST_WRITERS; i++)
		ck_assert_int_eq(pthread_create(&w[i], NULL, st_writer, (void *)(i + 1)), 0);
	for (i = 0; i < ST_WRITERS; i++)
		pthread_join(w[i], NULL);
	atomic_store(&st_stop, true);
	for (i = 0; i < ST_READERS; i++)
		pthread_join(r[i], NULL);
	pcache_cache_get_status(c, &st);
	fprintf(stderr, "pin stress: %llu pins, %llu fallbacks, %llu segments freed, %llu frees "
		"deferred to an unpin\n", (unsigned long long)atomic_load(&st_pins),
		(unsigned long long)atomic_load(&st_fallbacks), (unsigned long long)st.segs_freed,
		(unsigned long long)atomic_load(&c->segs.pin_deferred));
	ck_assert_int_eq(atomic_load(&st_failures), 0);
	ck_assert_uint_gt(atomic_load(&st_pins), 0);
	ck_assert_uint_gt(st.segs_freed, 0);
	ck_assert_uint_eq(total_readers(), 0);
	ck_assert_int_eq(atomic_load(&img->inflight), 0);
}
END_TEST

Suite *cache_pin_suite(void);
Suite *cache_pin_suite(void)
{
	Suite *s = suite_create("cache_pin");
	TCase *tc = tcase_create("Core");
	TCase *tl = tcase_create("Lifetime");
	TCase *tt = tcase_create("Concurrency");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, hit_pins_pmem_in_place_with_the_written_bytes);
	tcase_add_test(tc, pin_crosses_regions_and_merges_contiguous_keys);
	tcase_add_test(tc, more_pieces_than_the_iovec_cap_fall_back);
	tcase_add_test(tc, anything_but_hits_falls_back_with_nothing_pinned);
	tcase_add_test(tc, stale_key_falls_back_to_the_backing);
	tcase_add_test(tc, zeroed_ranges_point_to_the_shared_zero_buffer);
	tcase_add_test(tc, crc_mismatch_is_eio_counted_and_unpinned);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(tl, setup, teardown);
	tcase_add_test(tl, pinned_segment_freed_by_gc_is_reused_only_after_unpin);
	tcase_add_test(tl, unpinned_freed_segment_is_freed_at_once);
	tcase_add_test(tl, detach_waits_for_unpin);
	tcase_add_test(tl, stop_waits_for_unpin);
	suite_add_tcase(s, tl);

	tcase_add_checked_fixture(tt, setup, teardown);
	tcase_set_timeout(tt, 120);
	tcase_add_test(tt, readers_pin_while_writers_and_gc_reuse_segments);
	suite_add_tcase(s, tt);
	return s;
}
