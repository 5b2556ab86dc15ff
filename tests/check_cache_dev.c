/*
 * check_cache_dev.c -- suite "cache_dev": format, dual-slot records, image table, locking,
 * refusals and the corruption sweep of core/cache_dev.c, on real /dev/shm files.
 *
 * Devices are small (1 MiB segments, 8 segments) so the suite stays fast under ASan. Raw slot
 * bytes are read and crafted with pread/pwrite on the device file while it is closed.
 * The "Threads" case also runs under TSan (loops shrink there: check_under_tsan()).
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_util.h"
#include "pcache/cache_dev.h"
#include "pcache/util.h"

#define MIB (1024u * 1024u)
#define SMALL_SIZE (10u * MIB) /* 2 MiB metadata + 8 x 1 MiB segments */
#define V1T PCACHE_MAX_IMAGES_V1     /* the image table of the small devices here (under 128 MiB) */

static char errbuf[256];

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *dev_path(const char *name)
{
	static char buf[8][256];
	static int n;
	char *b = buf[n++ % 8];

	return check_scratch_path(b, 256, name);
}

static struct pcache_format_opts small_fo = { .seg_size = MIB };

static int try_open(const char *path, struct pcache_cache_dev **cd, bool format, bool ro)
{
	struct pcache_cache_dev_opts o = {
		.path = path,
		.create_size = format ? SMALL_SIZE : 0,
		.format_if_blank = format,
		.format = &small_fo,
		.read_only = ro,
	};

	errbuf[0] = 0;
	return pcache_cache_dev_open(&o, cd, errbuf, sizeof(errbuf));
}

static struct pcache_cache_dev *open_ok(const char *path, bool format)
{
	struct pcache_cache_dev *cd = NULL;
	int rc = try_open(path, &cd, format, false);

	ck_assert_msg(rc == 0, "open %s: %d %s", path, rc, errbuf);
	return cd;
}

/* A fresh formatted small device. */
static const char *fresh_dev(const char *name)
{
	const char *p = dev_path(name);

	unlink(p);
	pcache_cache_dev_close(open_ok(p, true));
	return p;
}

static void raw_read(const char *path, uint64_t off, void *buf, size_t len)
{
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void raw_write(const char *path, uint64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

/* Rewrite a record slot with its CRC recomputed (for crafted values). */
static void raw_write_rec(const char *path, uint64_t off, void *rec, size_t len)
{
	struct pcache_rec_hdr_om *h = rec;

	h->crc = pcache_crc32c(PCACHE_CRC_SEED, (uint8_t *)rec + 4, len - 4);
	raw_write(path, off, rec, len);
}

static void flip_byte(const char *path, uint64_t off, uint8_t x)
{
	uint8_t b;

	raw_read(path, off, &b, 1);
	b ^= x;
	raw_write(path, off, &b, 1);
}

static uint64_t slot_seq(const char *path, uint64_t off)
{
	struct pcache_rec_hdr_om h;

	raw_read(path, off, &h, sizeof(h));
	return h.seq;
}

static bool slot_valid(const char *path, uint64_t off, size_t len, uint16_t type)
{
	uint8_t buf[1024];
	struct pcache_rec_hdr_om *h = (void *)buf;

	raw_read(path, off, buf, len);
	return h->type == type && h->len == len &&
	       h->crc == pcache_crc32c(PCACHE_CRC_SEED, buf + 4, len - 4);
}

static struct pcache_image_ent mk_image(const char *name, const char *path)
{
	struct pcache_image_ent e;

	memset(&e, 0, sizeof(e));
	snprintf(e.name, sizeof(e.name), "%s", name);
	snprintf(e.path, sizeof(e.path), "%s", path);
	e.size = 64 * MIB;
	e.lbs = 4096;
	e.state = PCACHE_IMAGE_ATTACHED;
	e.cache_mode = PCACHE_MODE_WRITEBACK;
	e.file_mode = 0640;
	e.uid = 1000;
	e.gid = 100;
	return e;
}

/* ---- Core --------------------------------------------------------------------------------- */

START_TEST(blank_file_is_created_formatted_and_reopens_with_same_identity)
{
	const char *p = dev_path("fmt");
	struct pcache_cache_dev *cd;
	struct pcache_cache_info ci;
	struct pcache_pos kt, dt;
	struct pcache_image_ent ents[4];
	uint8_t uuid[16], kset[PCACHE_KSET_MAX_SIZE], zero[PCACHE_KSET_MAX_SIZE] = { 0 };
	uint32_t i;

	unlink(p);
	cd = open_ok(p, true);
	ck_assert_uint_eq(pcache_cache_dev_size(cd), SMALL_SIZE);
	ck_assert_uint_eq(pcache_cache_dev_seg_size(cd), MIB);
	ck_assert_uint_eq(pcache_cache_dev_seg_count(cd), 8);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->seg_base, 2 * MIB);
	ck_assert_ptr_eq(pcache_cache_dev_seg_addr(cd, 1), (char *)pcache_cache_dev_base(cd) + 3 * MIB);
	ck_assert_ptr_null(pcache_cache_dev_seg_addr(cd, 8));
	ck_assert_str_eq(pcache_cache_dev_granularity(cd), "page");
	ck_assert_str_eq(pcache_cache_dev_path(cd), p);
	ck_assert_int_ge(pcache_cache_dev_fd(cd), 0);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.gc_percent, PCACHE_DEFAULT_GC_PERCENT);
	ck_assert_uint_eq(ci.dirty_high, PCACHE_DEFAULT_DIRTY_HIGH);
	ck_assert_uint_eq(ci.dirty_low, PCACHE_DEFAULT_DIRTY_LOW);
	ck_assert_uint_eq(ci.flags, 0);
	ck_assert_uint_eq(ci.next_image_id, 1);
	pcache_cache_dev_get_key_tail(cd, &kt);
	pcache_cache_dev_get_dirty_tail(cd, &dt);
	ck_assert(kt.seg == 0 && kt.off == 0 && kt.lsn == 1);
	ck_assert(dt.seg == 0 && dt.off == 0 && dt.lsn == 1);
	ck_assert_int_eq(pcache_cache_dev_images(cd, ents, 4), 0);
	for (i = 0; i < 8; i++)
		ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, i), 0);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	ck_assert_int_eq(pcache_cache_dev_check(cd, NULL, NULL), PCACHE_CHECK_CLEAN);
	/* the empty log: the first kset slot of segment 0 is zero (read with pread, not the map) */
	ck_assert_int_eq(pcache_cache_dev_pread(cd, kset, sizeof(kset), 2 * MIB), 0);
	ck_assert_mem_eq(kset, zero, sizeof(kset));
	ck_assert_int_eq(pcache_cache_dev_pread(cd, kset, 16, SMALL_SIZE - 8), -EINVAL);
	memcpy(uuid, pcache_cache_dev_sb(cd)->uuid, 16);
	ck_assert(memcmp(uuid, zero, 16) != 0);
	ck_assert_uint_eq(uuid[6] >> 4, 4);  /* a version 4 UUID */
	ck_assert_uint_eq(uuid[8] >> 6, 2);  /* RFC 4122 variant */
	pcache_cache_dev_close(cd);

	cd = open_ok(p, false);
	ck_assert_mem_eq(pcache_cache_dev_sb(cd)->uuid, uuid, 16);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->version, PCACHE_FORMAT_VERSION);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->dev_size, SMALL_SIZE);
	pcache_cache_dev_close(cd);
	/* both superblock copies and both slots of every record were written */
	ck_assert(slot_valid(p, 0, sizeof(struct pcache_sb_om), PCACHE_REC_SB));
	ck_assert(slot_valid(p, PCACHE_SB_SLOT_SIZE, sizeof(struct pcache_sb_om), PCACHE_REC_SB));
	ck_assert(slot_valid(p, PCACHE_SEG_SLOT(V1T, 7, 0), 32, PCACHE_REC_SEG));
	ck_assert(slot_valid(p, PCACHE_SEG_SLOT(V1T, 7, 1), 32, PCACHE_REC_SEG));
	ck_assert(slot_valid(p, PCACHE_IMAGE_SLOT(63, 0), 1024, PCACHE_REC_IMAGE));
	ck_assert(slot_valid(p, PCACHE_IMAGE_SLOT(63, 1), 1024, PCACHE_REC_IMAGE));
	ck_assert(slot_valid(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, 64, PCACHE_REC_INFO));
	ck_assert(slot_valid(p, PCACHE_DIRTY_TAIL_SLOT(1), 32, PCACHE_REC_DIRTY_TAIL));
	ck_assert_uint_eq(slot_seq(p, PCACHE_INFO_OFF), 1);
	ck_assert_uint_eq(slot_seq(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE), 0);
}
END_TEST

START_TEST(format_api_uses_default_segment_size_and_honours_options)
{
	const char *p = dev_path("fmt-default");
	struct pcache_format_opts fo = { .data_crc = true, .gc_percent = 40, .set_gc_percent = true };
	struct pcache_cache_dev *cd;
	struct pcache_cache_info ci;
	uint32_t count;
	uint64_t base;

	unlink(p);
	ck_assert_int_eq(pcache_cache_dev_format(p, 300 * MIB, &fo, errbuf, sizeof(errbuf)), 0);
	cd = open_ok(p, false);
	/* a small device gets 4 MiB segments by default (pcache_default_seg_size()) */
	ck_assert_uint_eq(pcache_cache_dev_seg_size(cd), 4 * MIB);
	/* and a table of one entry per MiB, rounded down to 64s: 256 */
	ck_assert_uint_eq(pcache_cache_dev_max_images(cd), 256);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->version, PCACHE_FORMAT_VERSION);
	ck_assert_int_eq(pcache_cache_dev_geometry(300 * MIB, 4 * MIB, 256, &count, &base), 0);
	ck_assert_uint_eq(pcache_cache_dev_seg_count(cd), count);
	ck_assert_uint_eq(count, 74); /* (300 - 2) / 4 */
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.flags, PCACHE_INFO_DATA_CRC);
	ck_assert_uint_eq(ci.gc_percent, 40);
	pcache_cache_dev_close(cd);

	fo = (struct pcache_format_opts){ .seg_size = 3 * MIB };
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &fo, errbuf, sizeof(errbuf)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(errbuf, "segment size"));
	fo = (struct pcache_format_opts){ .seg_size = 512 * 1024 };
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &fo, errbuf, sizeof(errbuf)), -EINVAL);
	fo = (struct pcache_format_opts){ .gc_percent = 91, .set_gc_percent = true };
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &fo, errbuf, sizeof(errbuf)), -EINVAL);
	/* refused formats wrote nothing: the device still opens with its old values */
	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.gc_percent, 40);
	pcache_cache_dev_close(cd);
	unlink(p);
}
END_TEST

START_TEST(geometry_is_maximal_aligned_and_fits)
{
	static const uint64_t sizes[] = { 10 * MIB, 10 * MIB + 4095, 130 * MIB, 1024ull * MIB,
					  (64ull << 30) + 12345, 3ull << 40 };
	static const uint64_t segs[] = { MIB, 2 * MIB, 16 * MIB, 1024 * MIB };
	static const uint32_t tabs[] = { PCACHE_MAX_IMAGES_V1, 128, PCACHE_MAX_IMAGES };
	uint32_t count;
	uint64_t base;
	size_t i, j, t;

	for (t = 0; t < PCACHE_ARRAY_SIZE(tabs); t++)
	for (i = 0; i < PCACHE_ARRAY_SIZE(sizes); i++)
		for (j = 0; j < PCACHE_ARRAY_SIZE(segs); j++) {
			int rc = pcache_cache_dev_geometry(sizes[i], segs[j], tabs[t], &count, &base);

			if (rc) {
				ck_assert_int_eq(rc, -ENOSPC);
				continue;
			}
			ck_assert_uint_ge(count, PCACHE_MIN_SEGS);
			ck_assert_uint_le(count, PCACHE_MAX_SEGS);
			ck_assert_uint_eq(base % PCACHE_SEG_BASE_ALIGN, 0);
			ck_assert_uint_ge(base, PCACHE_SEGTAB_OFF(tabs[t]) + (uint64_t)count * 64);
			ck_assert_uint_le(base + count * segs[j], sizes[i]);
			if (count < PCACHE_MAX_SEGS) { /* one more segment would not fit */
				uint64_t b2 = PCACHE_ALIGN_UP(PCACHE_SEGTAB_OFF(tabs[t]) + (count + 1ull) * 64,
							      (uint64_t)PCACHE_SEG_BASE_ALIGN);

				ck_assert_uint_gt(b2 + (count + 1ull) * segs[j], sizes[i]);
			}
		}
	ck_assert_int_eq(pcache_cache_dev_geometry(10 * MIB - 1, MIB, 64, &count, &base), -ENOSPC);
	ck_assert_int_eq(pcache_cache_dev_geometry(1ull << 40, 3 * MIB, 64, &count, &base), -EINVAL);
	ck_assert_int_eq(pcache_cache_dev_geometry(1ull << 40, 2ull << 30, 64, &count, &base), -EINVAL);
	ck_assert_int_eq(pcache_cache_dev_geometry(1ull << 40, MIB, 100, &count, &base), -EINVAL);
	ck_assert_int_eq(pcache_cache_dev_geometry(1ull << 40, MIB, 576, &count, &base), -EINVAL);
	ck_assert_int_eq(pcache_cache_dev_geometry(1ull << 42, MIB, 512, &count, &base), 0);
	ck_assert_uint_eq(count, PCACHE_MAX_SEGS);
}
END_TEST

/* The raw value of the newest and the other slot of cache_info. */
static void info_slots(const char *p, struct pcache_cache_info_om s[2])
{
	raw_read(p, PCACHE_INFO_OFF, &s[0], sizeof(s[0]));
	raw_read(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &s[1], sizeof(s[1]));
}

START_TEST(every_record_survives_1000_updates_and_restarts_alternating_slots)
{
	const char *p = fresh_dev("upd");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent e = mk_image("disk", "/images/disk.raw"), got;
	struct pcache_cache_info ci, prev_ci;
	struct pcache_pos kt, dt, prev_kt = { 0, 0, 1 }, t;
	struct pcache_cache_info_om s[2];
	struct pcache_tail_om ts[2];
	struct pcache_image_om *is = malloc(2 * sizeof(*is));
	uint64_t gens[8] = { 0 };
	int i, n = check_under_tsan() ? 200 : 1000;

	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	pcache_cache_dev_get_info(cd, &prev_ci);
	for (i = 0; i < n; i++) {
		uint32_t seg = (uint32_t)i % 8;

		pcache_cache_dev_get_info(cd, &ci);
		ci.gc_percent = (uint32_t)i % 91;
		ci.dirty_high = 50 + (uint32_t)i % 51;
		ci.dirty_low = (uint32_t)i % 50;
		ci.wb_rate = (uint64_t)i * 1000;
		ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
		/* the newest slot holds the new value, the other one the previous value */
		info_slots(p, s);
		{
			int nw = pcache_seq_after(s[1].hdr.seq, s[0].hdr.seq) ? 1 : 0;

			ck_assert_uint_eq(s[nw].wb_rate, ci.wb_rate);
			ck_assert_uint_eq(s[nw].gc_percent, ci.gc_percent);
			ck_assert_uint_eq(s[nw ^ 1].wb_rate, prev_ci.wb_rate);
			ck_assert_uint_eq(s[nw].hdr.seq, s[nw ^ 1].hdr.seq + 1);
		}
		prev_ci = ci;

		kt = (struct pcache_pos){ .seg = seg, .off = (uint32_t)i * 8 % MIB, .lsn = 2 + (uint64_t)i };
		dt = (struct pcache_pos){ .seg = (seg + 1) % 8, .off = 4096, .lsn = 1 + (uint64_t)i };
		ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &kt), 0);
		ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &dt), 0);
		raw_read(p, PCACHE_KEY_TAIL_SLOT(0), &ts[0], sizeof(ts[0]));
		raw_read(p, PCACHE_KEY_TAIL_SLOT(1), &ts[1], sizeof(ts[1]));
		{
			int nw = pcache_seq_after(ts[1].hdr.seq, ts[0].hdr.seq) ? 1 : 0;

			ck_assert_uint_eq(ts[nw].lsn, kt.lsn);
			ck_assert_uint_eq(ts[nw ^ 1].lsn, prev_kt.lsn);
		}
		prev_kt = kt;

		ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, seg), 0);
		gens[seg]++;
		ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, seg), gens[seg]);

		e.wb_lsn = (uint64_t)i;
		e.wb_time = 1700000000u + (uint64_t)i;
		ck_assert_int_eq(pcache_cache_dev_image_update(cd, &e), 0);
		raw_read(p, PCACHE_IMAGE_SLOT(e.slot, 0), is, 2 * sizeof(*is));
		{
			int nw = pcache_seq_after(is[1].hdr.seq, is[0].hdr.seq) ? 1 : 0;

			ck_assert_uint_eq(is[nw].wb_lsn, (uint64_t)i);
			if (i > 0)
				ck_assert_uint_eq(is[nw ^ 1].wb_lsn, (uint64_t)i - 1);
		}

		if (i % 100 == 99) { /* restart */
			uint32_t j;

			pcache_cache_dev_close(cd);
			cd = open_ok(p, false);
			pcache_cache_dev_get_info(cd, &ci);
			ck_assert_uint_eq(ci.wb_rate, prev_ci.wb_rate);
			ck_assert_uint_eq(ci.gc_percent, prev_ci.gc_percent);
			ck_assert_uint_eq(ci.dirty_high, prev_ci.dirty_high);
			ck_assert_uint_eq(ci.dirty_low, prev_ci.dirty_low);
			pcache_cache_dev_get_key_tail(cd, &t);
			ck_assert(t.seg == kt.seg && t.off == kt.off && t.lsn == kt.lsn);
			pcache_cache_dev_get_dirty_tail(cd, &t);
			ck_assert(t.seg == dt.seg && t.off == dt.off && t.lsn == dt.lsn);
			for (j = 0; j < 8; j++)
				ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, j), gens[j]);
			ck_assert_int_eq(pcache_cache_dev_image_find(cd, "disk", &got), 0);
			ck_assert_uint_eq(got.wb_lsn, (uint64_t)i);
			ck_assert_uint_eq(got.wb_time, 1700000000u + (uint64_t)i);
			ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
		}
	}
	free(is);
	pcache_cache_dev_close(cd);
}
END_TEST

START_TEST(largest_segment_count_formats_and_reloads)
{
	const char *p = dev_path("huge");
	struct pcache_format_opts fo = { .seg_size = MIB };
	struct pcache_cache_dev *cd;
	uint32_t last;
	int fd;

	if (check_under_tsan())
		return; /* 64 MiB segment table: too slow under TSan, same code as below */
	unlink(p);
	fd = open(p, O_CREAT | O_RDWR, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)(3ull << 40)), 0); /* sparse: only metadata is written */
	close(fd);
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &fo, errbuf, sizeof(errbuf)), 0);
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_seg_count(cd), PCACHE_MAX_SEGS);
	last = PCACHE_MAX_SEGS - 1;
	ck_assert_ptr_nonnull(pcache_cache_dev_seg_addr(cd, last));
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, last), 0);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, last), 1);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, last - 1), 0);
	pcache_cache_dev_close(cd);
	unlink(p);
}
END_TEST

START_TEST(set_functions_validate_ranges)
{
	const char *p = fresh_dev("ranges");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_cache_info ci, base;
	struct pcache_pos t;

	pcache_cache_dev_get_info(cd, &base);
	ci = base, ci.gc_percent = 91;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.dirty_high = 101;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.dirty_low = ci.dirty_high;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.flags = 0x80;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.flags = PCACHE_INFO_DATA_CRC; /* fixed at format */
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.next_image_id = 0;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EINVAL);
	ci = base, ci.gc_percent = 90, ci.dirty_high = 100, ci.dirty_low = 0;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	/* next_image_id never goes back (a stale get_info must not undo an image_add) */
	ci.next_image_id = 7;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	ci.next_image_id = 2;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.next_image_id, 7);

	t = (struct pcache_pos){ .seg = 8, .off = 0, .lsn = 1 };
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), -EINVAL);
	t = (struct pcache_pos){ .seg = 0, .off = MIB, .lsn = 1 };
	ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &t), -EINVAL);
	t = (struct pcache_pos){ .seg = 0, .off = 12, .lsn = 1 };
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), -EINVAL);
	t = (struct pcache_pos){ .seg = 0, .off = 8, .lsn = 0 };
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), -EINVAL);
	t = (struct pcache_pos){ .seg = 7, .off = MIB - 8, .lsn = 5 };
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), 0);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 8), -EINVAL);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, 8), 0);
	pcache_cache_dev_close(cd);

	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.gc_percent, 90);
	ck_assert_uint_eq(ci.dirty_high, 100);
	ck_assert_uint_eq(ci.next_image_id, 7);
	pcache_cache_dev_get_key_tail(cd, &t);
	ck_assert(t.seg == 7 && t.off == MIB - 8 && t.lsn == 5);
	pcache_cache_dev_close(cd);
}
END_TEST

/* ---- Recovery ----------------------------------------------------------------------------- */

START_TEST(corrupt_newest_copy_falls_back_to_older_and_repair_rewrites_it)
{
	const char *p = fresh_dev("fallback");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_cache_info ci;
	struct pcache_cache_info_om s[2];
	int nw;

	pcache_cache_dev_get_info(cd, &ci);
	ci.wb_rate = 111;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	ci.wb_rate = 222;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	pcache_cache_dev_close(cd);

	info_slots(p, s);
	nw = pcache_seq_after(s[1].hdr.seq, s[0].hdr.seq) ? 1 : 0;
	ck_assert_uint_eq(s[nw].wb_rate, 222);
	flip_byte(p, PCACHE_INFO_OFF + (uint64_t)nw * PCACHE_INFO_SLOT_SIZE + 33, 0x40);

	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 111);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 1);
	ck_assert_int_eq(pcache_cache_dev_check(cd, NULL, NULL), PCACHE_CHECK_REPAIRABLE);
	ck_assert_int_eq(pcache_cache_dev_repair(cd), 0);
	pcache_cache_dev_close(cd);

	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 111);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	/* the next update goes to the slot not holding the newest copy */
	ci.wb_rate = 333;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	pcache_cache_dev_close(cd);
	info_slots(p, s);
	ck_assert(s[0].wb_rate == 333 || s[1].wb_rate == 333);
	ck_assert(s[0].wb_rate == 111 || s[1].wb_rate == 111);
}
END_TEST

struct lines {
	char text[1024];
};

static void collect(void *arg, const char *line)
{
	struct lines *l = arg;

	strncat(l->text, line, sizeof(l->text) - strlen(l->text) - 2);
	strcat(l->text, "\n");
}

START_TEST(damaged_superblock_copy_and_torn_slot_are_reported_repairable)
{
	const char *p = fresh_dev("sbcopy");
	struct pcache_cache_dev *cd;
	struct lines l = { "" };

	flip_byte(p, PCACHE_SB_SLOT_SIZE + 20, 0x01);
	flip_byte(p, PCACHE_SEG_SLOT(V1T, 5, 1) + 3, 0x80); /* the older copy */
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 2);
	ck_assert_int_eq(pcache_cache_dev_check(cd, collect, &l), PCACHE_CHECK_REPAIRABLE);
	ck_assert_msg(strstr(l.text, "superblock copy 1") && strstr(l.text, "segment 5 record slot 1"),
		      "report: %s", l.text);
	ck_assert_int_eq(pcache_cache_dev_repair(cd), 0);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
}
END_TEST

/* Fail every read that overlaps one of the listed 4 KiB pages (poisoned media). */
struct poison {
	uint64_t page[4];
	int n;
};

static int poison_fault(uint64_t off, size_t len, void *arg)
{
	const struct poison *po = arg;
	int i;

	for (i = 0; i < po->n; i++)
		if (off < po->page[i] * 4096 + 4096 && po->page[i] * 4096 < off + len)
			return -EIO;
	return 0;
}

static int open_poisoned(const char *p, struct poison *po, struct pcache_cache_dev **cd)
{
	struct pcache_cache_dev_opts o = { .path = p, .read_fault = poison_fault, .read_fault_arg = po };

	errbuf[0] = 0;
	return pcache_cache_dev_open(&o, cd, errbuf, sizeof(errbuf));
}

START_TEST(unreadable_slots_count_as_invalid)
{
	const char *p = fresh_dev("poison");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_cache_info ci;
	struct poison po = { { 0 }, 0 };
	struct lines l = { "" };
	uint8_t buf[16];

	pcache_cache_dev_get_info(cd, &ci);
	ci.wb_rate = 5;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0); /* into slot 1 */
	pcache_cache_dev_close(cd);

	/* the page of cache_info slot 1 (the newest) is poisoned: slot 0 is used */
	po = (struct poison){ { PCACHE_INFO_OFF / 4096 + 1 }, 1 };
	ck_assert_int_eq(open_poisoned(p, &po, &cd), 0);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 0);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 1);
	pcache_cache_dev_check(cd, collect, &l);
	ck_assert_msg(strstr(l.text, "cache_info slot 1: unreadable"), "%s", l.text);
	ck_assert_int_eq(pcache_cache_dev_pread(cd, buf, sizeof(buf), PCACHE_INFO_OFF + 4096), -EIO);
	ck_assert_int_eq(pcache_cache_dev_pread(cd, buf, sizeof(buf), 0), 0);
	pcache_cache_dev_close(cd);

	/* superblock copy 0 unreadable: copy 1 is used */
	po = (struct poison){ { 0 }, 1 };
	ck_assert_int_eq(open_poisoned(p, &po, &cd), 0);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 1);
	pcache_cache_dev_close(cd);

	/* both slots unreadable: refused, naming the structure; and nothing is formatted */
	po = (struct poison){ { PCACHE_INFO_OFF / 4096, PCACHE_INFO_OFF / 4096 + 1 }, 2 };
	ck_assert_int_eq(open_poisoned(p, &po, &cd), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "cache_info: both slots invalid (slot 0: unreadable, slot 1: unreadable)"),
		      "%s", errbuf);
	po = (struct poison){ { 0, 1 }, 2 };
	ck_assert_int_eq(open_poisoned(p, &po, &cd), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "superblock: both copies invalid (copy 0: unreadable, copy 1: unreadable)"),
		      "%s", errbuf);
	/* a poisoned segment-table page takes out its records, not the whole read */
	po = (struct poison){ { PCACHE_SEGTAB_OFF(V1T) / 4096 }, 1 };
	ck_assert_int_eq(open_poisoned(p, &po, &cd), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "segment 0 record: both slots invalid"), "%s", errbuf);
	po = (struct poison){ { PCACHE_IMAGES_OFF / 4096 + 3 }, 1 }; /* images 6 and 7 */
	ck_assert_int_eq(open_poisoned(p, &po, &cd), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "image 6: both slots invalid"), "%s", errbuf);
	pcache_cache_dev_close(open_ok(p, false));
}
END_TEST

START_TEST(bad_values_in_the_older_copy_are_repairable)
{
	const char *p = fresh_dev("oldbad");
	struct pcache_cache_dev *cd;
	struct pcache_cache_info_om ci;
	struct pcache_tail_om t;
	struct pcache_image_om *im = malloc(sizeof(*im));
	struct lines l = { "" };
	struct pcache_cache_info got;

	/* format wrote slot 1 as the older copy (seq 0): give it valid CRCs over bad values */
	raw_read(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &ci, sizeof(ci));
	ci.gc_percent = 99;
	raw_write_rec(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &ci, sizeof(ci));
	raw_read(p, PCACHE_KEY_TAIL_SLOT(1), &t, sizeof(t));
	t.seg = 1000;
	raw_write_rec(p, PCACHE_KEY_TAIL_SLOT(1), &t, sizeof(t));
	raw_read(p, PCACHE_IMAGE_SLOT(4, 1), im, sizeof(*im));
	im->id = 5; /* >= next_image_id, and no name */
	raw_write_rec(p, PCACHE_IMAGE_SLOT(4, 1), im, sizeof(*im));
	free(im);

	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &got);
	ck_assert_uint_eq(got.gc_percent, PCACHE_DEFAULT_GC_PERCENT);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 3);
	ck_assert_int_eq(pcache_cache_dev_check(cd, collect, &l), PCACHE_CHECK_REPAIRABLE);
	ck_assert_msg(strstr(l.text, "cache_info slot 1: valid CRC but gc_percent 99") &&
		      strstr(l.text, "key_tail slot 1: valid CRC but segment 1000") &&
		      strstr(l.text, "image 4 slot 1: valid CRC but"), "%s", l.text);
	ck_assert_int_eq(pcache_cache_dev_repair(cd), 0);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
}
END_TEST

START_TEST(both_copies_corrupt_is_refused_naming_the_structure)
{
	static const struct {
		uint64_t off0, off1;
		const char *name;
	} recs[] = {
		{ PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, "cache_info: " },
		{ PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1), "key_tail: " },
		{ PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1), "dirty_tail: " },
		{ PCACHE_IMAGE_SLOT(9, 0), PCACHE_IMAGE_SLOT(9, 1), "image 9: " },
		{ PCACHE_SEG_SLOT(V1T, 6, 0), PCACHE_SEG_SLOT(V1T, 6, 1), "segment 6 record: " },
		{ 0, PCACHE_SB_SLOT_SIZE, "superblock: both copies invalid" },
	};
	const char *p = dev_path("both");
	struct pcache_cache_dev *cd = NULL;
	size_t i;

	for (i = 0; i < PCACHE_ARRAY_SIZE(recs); i++) {
		p = fresh_dev("both");
		flip_byte(p, recs[i].off0 + 13, 0x10);
		flip_byte(p, recs[i].off1 + 13, 0x10);
		ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);
		ck_assert_ptr_null(cd);
		ck_assert_msg(strncmp(errbuf, recs[i].name, strlen(recs[i].name)) == 0, "error: %s", errbuf);
	}
}
END_TEST

START_TEST(sequence_numbers_wrap_around)
{
	const char *p = fresh_dev("wrap");
	struct pcache_cache_dev *cd;
	struct pcache_cache_info_om s[2];
	struct pcache_cache_info ci;
	int i;

	info_slots(p, s);
	s[1] = s[0];
	s[0].hdr.seq = UINT64_MAX - 1;
	s[0].wb_rate = 1;
	s[1].hdr.seq = UINT64_MAX;
	s[1].wb_rate = 2;
	raw_write_rec(p, PCACHE_INFO_OFF, &s[0], sizeof(s[0]));
	raw_write_rec(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &s[1], sizeof(s[1]));
	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 2);
	ci.wb_rate = 3;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	pcache_cache_dev_close(cd);
	ck_assert_uint_eq(slot_seq(p, PCACHE_INFO_OFF), 0); /* wrapped into slot 0 */
	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 3); /* seq 0 is after UINT64_MAX */
	for (i = 4; i < 8; i++) {
		ci.wb_rate = (uint64_t)i;
		ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	}
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 7);
	pcache_cache_dev_close(cd);

	/* equal sequence numbers: slot 0 wins */
	info_slots(p, s);
	s[0].hdr.seq = s[1].hdr.seq = 42;
	s[0].wb_rate = 10;
	s[1].wb_rate = 11;
	raw_write_rec(p, PCACHE_INFO_OFF, &s[0], sizeof(s[0]));
	raw_write_rec(p, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &s[1], sizeof(s[1]));
	cd = open_ok(p, false);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 10);
	pcache_cache_dev_close(cd);
}
END_TEST

/* ---- Images ------------------------------------------------------------------------------- */

START_TEST(image_table_add_find_update_remove_and_identity_round_trip)
{
	const char *p = fresh_dev("img");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent a = mk_image("vm1", "/var/lib/images/vm1.raw");
	struct pcache_image_ent b = mk_image("db", "/dev/sdb"), got, list[PCACHE_MAX_IMAGES];
	struct pcache_cache_info ci;
	uint8_t zero[16] = { 0 };

	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &a), 0);
	ck_assert_uint_eq(a.id, 1);
	ck_assert_uint_eq(a.slot, 0);
	ck_assert(memcmp(a.uuid, zero, 16) != 0);
	b.lbs = 0; /* defaults to 512 */
	b.state = 0; /* defaults to ATTACHED */
	b.size = 1ull << 40;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &b), 0);
	ck_assert_uint_eq(b.id, 2);
	ck_assert_uint_eq(b.slot, 1);
	ck_assert_uint_eq(b.lbs, 512);
	ck_assert(memcmp(a.uuid, b.uuid, 16) != 0);
	ck_assert_uint_eq(b.uuid[6] >> 4, 4);
	ck_assert_uint_eq(b.uuid[8] >> 6, 2);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.next_image_id, 3);

	/* duplicate */
	got = mk_image("vm1", "/x");
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &got), -EEXIST);
	pcache_cache_dev_close(cd);

	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_images(cd, list, PCACHE_MAX_IMAGES), 2);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "vm1", &got), 0);
	ck_assert_mem_eq(got.uuid, a.uuid, 16);
	ck_assert_uint_eq(got.size, 64 * MIB);
	ck_assert_uint_eq(got.lbs, 4096);
	ck_assert_uint_eq(got.file_mode, 0640);
	ck_assert_uint_eq(got.uid, 1000);
	ck_assert_uint_eq(got.gid, 100);
	ck_assert_uint_eq(got.state, PCACHE_IMAGE_ATTACHED);
	ck_assert_str_eq(got.path, "/var/lib/images/vm1.raw");
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "db", &got), 0);
	ck_assert_uint_eq(got.size, 1ull << 40);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "nope", &got), -ENOENT);

	/* rename + detach; the uuid is kept even when the caller passes another */
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "vm1", &got), 0);
	snprintf(got.name, sizeof(got.name), "vm1-renamed");
	got.state = PCACHE_IMAGE_DETACHED;
	memset(got.uuid, 0xAB, 16);
	ck_assert_int_eq(pcache_cache_dev_image_update(cd, &got), 0);
	snprintf(got.name, sizeof(got.name), "db");
	ck_assert_int_eq(pcache_cache_dev_image_update(cd, &got), -EEXIST);
	got.id = 99;
	snprintf(got.name, sizeof(got.name), "x");
	ck_assert_int_eq(pcache_cache_dev_image_update(cd, &got), -ENOENT);
	pcache_cache_dev_close(cd);

	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "vm1", &got), -ENOENT);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "vm1-renamed", &got), 0);
	ck_assert_uint_eq(got.state, PCACHE_IMAGE_DETACHED);
	ck_assert_mem_eq(got.uuid, a.uuid, 16);
	/* remove, then the id is never reused */
	ck_assert_int_eq(pcache_cache_dev_image_remove(cd, got.slot), 0);
	ck_assert_int_eq(pcache_cache_dev_image_remove(cd, got.slot), -ENOENT);
	ck_assert_int_eq(pcache_cache_dev_image_remove(cd, PCACHE_MAX_IMAGES), -EINVAL);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_images(cd, list, PCACHE_MAX_IMAGES), 1);
	ck_assert_str_eq(list[0].name, "db");
	got = mk_image("vm1", "/var/lib/images/vm1.raw");
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &got), 0);
	ck_assert_uint_eq(got.id, 3);
	ck_assert_uint_eq(got.slot, 0); /* the freed slot is reused, the id is not */
	pcache_cache_dev_close(cd);
}
END_TEST

static void rename_to_x(struct pcache_image_ent *e, void *arg)
{
	snprintf(e->name, sizeof(e->name), "%s", (const char *)arg);
	e->file_mode = 0600;
	e->id = 999;           /* identity changes are undone */
	memset(e->uuid, 0, 16);
}

START_TEST(image_modify_and_set_wb_update_fields_without_undoing_others)
{
	const char *p = fresh_dev("imgmod");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent a = mk_image("a", "/a"), b = mk_image("b", "/b"), got;
	char a2[] = "a2", nb[] = "b", bad[] = "x/y";

	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &a), 0);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &b), 0);
	/* a stale copy of a (wb_lsn 0) exists somewhere; progress is set field-wise */
	ck_assert_int_eq(pcache_cache_dev_image_set_wb(cd, a.slot, a.id, 42, 1234), 0);
	ck_assert_int_eq(pcache_cache_dev_image_modify(cd, a.slot, a.id, rename_to_x, a2, &got), 0);
	ck_assert_str_eq(got.name, "a2");
	ck_assert_uint_eq(got.wb_lsn, 42); /* the rename kept the progress */
	ck_assert_uint_eq(got.id, a.id);
	ck_assert_mem_eq(got.uuid, a.uuid, 16);
	ck_assert_int_eq(pcache_cache_dev_image_modify(cd, a.slot, a.id, rename_to_x, nb, NULL), -EEXIST);
	ck_assert_int_eq(pcache_cache_dev_image_modify(cd, a.slot, a.id, rename_to_x, bad, NULL), -EINVAL);
	ck_assert_int_eq(pcache_cache_dev_image_set_wb(cd, a.slot, b.id, 1, 1), -ENOENT);
	ck_assert_int_eq(pcache_cache_dev_image_set_wb(cd, PCACHE_MAX_IMAGES, a.id, 1, 1), -ENOENT);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "a2", &got), 0);
	ck_assert_uint_eq(got.wb_lsn, 42);
	ck_assert_uint_eq(got.wb_time, 1234);
	ck_assert_uint_eq(got.file_mode, 0600);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "b", &got), 0);
	ck_assert_uint_eq(got.wb_lsn, 0);
	pcache_cache_dev_close(cd);
}
END_TEST

START_TEST(image_names_paths_and_fields_are_validated)
{
	static const char *bad[] = { "", ".", "..", ".pcache", "a/b", "tab\there", "nl\n", "del\x7f" };
	const char *p = fresh_dev("imgbad");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent e;
	char longname[PCACHE_NAME_MAX + 2];
	size_t i;

	for (i = 0; i < PCACHE_ARRAY_SIZE(bad); i++) {
		ck_assert_msg(!pcache_image_name_valid(bad[i]), "accepted '%s'", bad[i]);
		e = mk_image(bad[i], "/p");
		ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	}
	memset(longname, 'x', sizeof(longname));
	longname[PCACHE_NAME_MAX] = 0;
	ck_assert(pcache_image_name_valid(longname));
	longname[PCACHE_NAME_MAX] = 'x';
	longname[PCACHE_NAME_MAX + 1] = 0;
	ck_assert(!pcache_image_name_valid(longname));
	ck_assert(pcache_image_name_valid("vm-1.raw"));
	ck_assert(pcache_image_name_valid(".hidden"));
	ck_assert(pcache_image_name_valid("caf\xc3\xa9"));

	e = mk_image("ok", "");
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.lbs = 1000;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.lbs = 128 * 1024;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.size = 1000;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.state = 7;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.cache_mode = 3;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p"), e.file_mode = 010644;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p");
	memset(e.path, 'p', sizeof(e.path)); /* not NUL-terminated */
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EINVAL);
	e = mk_image("ok", "/p");
	memset(e.path, 'p', PCACHE_PATH_MAX);
	e.path[PCACHE_PATH_MAX] = 0; /* the longest path */
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "ok", &e), 0);
	ck_assert_uint_eq(strlen(e.path), PCACHE_PATH_MAX);
	pcache_cache_dev_close(cd);
}
END_TEST

/* Fill a table of maxi entries, one more is -ENOSPC; a reopen lists them all. */
static void fill_table(const char *p, uint32_t maxi)
{
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent e, *list = calloc(PCACHE_MAX_IMAGES + 1, sizeof(*list));
	char name[32];
	uint32_t i;

	ck_assert_ptr_nonnull(list);
	ck_assert_uint_eq(pcache_cache_dev_max_images(cd), maxi);
	for (i = 0; i < maxi; i++) {
		snprintf(name, sizeof(name), "img%u", i);
		e = mk_image(name, "/dev/null");
		ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
		ck_assert_uint_eq(e.slot, i);
	}
	e = mk_image("one-too-many", "/dev/null");
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -ENOSPC);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_int_eq(pcache_cache_dev_images(cd, list, PCACHE_MAX_IMAGES + 1), (int)maxi);
	ck_assert_str_eq(list[maxi - 1].name, name);
	ck_assert_int_eq(pcache_cache_dev_images(cd, list, 3), 3);
	/* the last entry's record sits right before the segment table, which is intact */
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
	free(list);
}

START_TEST(full_image_table_is_refused_with_enospc)
{
	struct pcache_format_opts fo = { .seg_size = MIB, .max_images = PCACHE_MAX_IMAGES };
	const char *p = fresh_dev("imgfull");

	fill_table(p, PCACHE_MAX_IMAGES_V1);       /* a small device's default table */
	unlink(p);
	ck_assert_int_eq(pcache_cache_dev_format(p, SMALL_SIZE, &fo, errbuf, sizeof(errbuf)), 0);
	fill_table(p, PCACHE_MAX_IMAGES);
	fo.max_images = 100;
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &fo, errbuf, sizeof(errbuf)), -EINVAL);
	ck_assert_msg(strstr(errbuf, "max_images 100"), "%s", errbuf);
	unlink(p);
}
END_TEST

/* A version 1 device (a fixed table of 64) is read and written as it is. */
START_TEST(version1_device_is_used_as_is)
{
	const char *p = fresh_dev("v1");
	struct pcache_cache_dev *cd;
	struct pcache_image_ent e = mk_image("old", "/dev/null"), got;
	struct pcache_sb_om sb;

	raw_read(p, 0, &sb, sizeof(sb));
	ck_assert_uint_eq(sb.version, PCACHE_FORMAT_VERSION);
	ck_assert_uint_eq(sb.max_images, PCACHE_MAX_IMAGES_V1);
	sb.version = PCACHE_FORMAT_VERSION_V1;  /* the same layout, as version 1 wrote it */
	raw_write_rec(p, 0, &sb, sizeof(sb));
	raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->version, PCACHE_FORMAT_VERSION_V1);
	ck_assert_uint_eq(pcache_cache_dev_max_images(cd), PCACHE_MAX_IMAGES_V1);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 3), 0);
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_sb(cd)->version, PCACHE_FORMAT_VERSION_V1);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "old", &got), 0);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, 3), 1);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
	unlink(p);
}
END_TEST

START_TEST(crafted_image_entries_are_refused)
{
	const char *p = fresh_dev("imgcraft");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent a = mk_image("a", "/a"), b = mk_image("b", "/b");
	struct pcache_image_om om, orig;
	uint64_t off;

	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &a), 0);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &b), 0);
	pcache_cache_dev_close(cd);
	off = PCACHE_IMAGE_SLOT(1, 1); /* b was written once: into slot 1 (slot 0 holds FREE) */
	raw_read(p, off, &orig, sizeof(orig));
	ck_assert_uint_eq(orig.id, 2);

#define CRAFT(stmt, what)                                                                       \
	do {                                                                                    \
		om = orig;                                                                      \
		stmt;                                                                           \
		raw_write_rec(p, off, &om, sizeof(om));                                         \
		ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);                     \
		ck_assert_msg(strstr(errbuf, "image 1: ") && strstr(errbuf, what), "%s", errbuf); \
	} while (0)
	CRAFT(memset(om.name, 'n', sizeof(om.name)), "name");
	CRAFT(memset(om.path, 'p', sizeof(om.path)), "path");
	CRAFT(strcpy(om.name, "a"), "name also used");
	CRAFT(om.id = 1, "id 1 also used");
	CRAFT(om.id = 3, "next_image_id");
	CRAFT(om.state = 5, "state");
	CRAFT(om.lbs = 100, "block size");
	CRAFT((om.size = 0, om.lbs = 4096), "size 0");
	CRAFT((om.lbs = 4096, om.size = 4096 * 3 + 512), "not a multiple of its block size");
	CRAFT(om.id = 0, "id 0 with state");
	CRAFT(strcpy(om.name, "x/y"), "name");
#undef CRAFT
	raw_write(p, off, &orig, sizeof(orig));
	pcache_cache_dev_close(open_ok(p, false));
}
END_TEST

/* ---- Refusals ----------------------------------------------------------------------------- */

static uint32_t file_crc(const char *path)
{
	static uint8_t buf[1 << 16];
	uint32_t crc = 0;
	ssize_t n;
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		crc = pcache_crc32c(crc, buf, (size_t)n);
	close(fd);
	return crc;
}

START_TEST(blank_foreign_newer_and_too_small_devices_are_refused_untouched)
{
	const char *p = dev_path("refuse");
	struct pcache_cache_dev *cd = NULL;
	struct pcache_sb_om sb;
	uint32_t crc;
	int fd;

	/* blank, no format_if_blank */
	unlink(p);
	fd = open(p, O_CREAT | O_RDWR, 0600);
	ck_assert_int_eq(ftruncate(fd, SMALL_SIZE), 0);
	close(fd);
	ck_assert_int_eq(try_open(p, &cd, false, false), -ENODATA);
	ck_assert_ptr_nonnull(strstr(errbuf, "superblock: device is blank"));
	/* blank but read-only: never formatted */
	{
		struct pcache_cache_dev_opts o = { .path = p, .format_if_blank = true, .read_only = true };

		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)), -ENODATA);
	}

	/* foreign data */
	check_make_file(p, SMALL_SIZE, 7);
	crc = file_crc(p);
	ck_assert_int_eq(try_open(p, &cd, true, false), -EMEDIUMTYPE);
	ck_assert_msg(strstr(errbuf, "superblock: bad magic"), "%s", errbuf);
	ck_assert_uint_eq(file_crc(p), crc);

	/* a missing file without create_size */
	unlink(p);
	ck_assert_int_eq(try_open(p, &cd, false, false), -ENOENT);

	/* newer version (valid CRC) and unknown incompat feature */
	p = fresh_dev("refuse");
	raw_read(p, 0, &sb, sizeof(sb));
	sb.version = PCACHE_FORMAT_VERSION + 1;
	raw_write_rec(p, 0, &sb, sizeof(sb));
	raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));
	crc = file_crc(p);
	ck_assert_int_eq(try_open(p, &cd, true, false), -EPROTONOSUPPORT);
	ck_assert_msg(strstr(errbuf, "superblock: format version 3 is newer"), "%s", errbuf);
	ck_assert_uint_eq(file_crc(p), crc);
	sb.version = 1;
	sb.incompat = 4;
	raw_write_rec(p, 0, &sb, sizeof(sb));
	raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));
	ck_assert_int_eq(try_open(p, &cd, true, false), -EPROTONOSUPPORT);
	ck_assert_msg(strstr(errbuf, "superblock: unknown incompatible features 0x4"), "%s", errbuf);
	/* compat bits are ignored */
	sb.incompat = 0;
	sb.compat = 0x10;
	raw_write_rec(p, 0, &sb, sizeof(sb));
	raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));
	pcache_cache_dev_close(open_ok(p, false));
	/* copies that are both valid but differ */
	sb.compat = 0x20;
	raw_write_rec(p, 0, &sb, sizeof(sb));
	ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "superblock: the two copies differ"), "%s", errbuf);

	/* too small to format */
	unlink(p);
	fd = open(p, O_CREAT | O_RDWR, 0600);
	ck_assert_int_eq(ftruncate(fd, SMALL_SIZE - MIB), 0);
	close(fd);
	ck_assert_int_eq(try_open(p, &cd, true, false), -ENOSPC);
	ck_assert_msg(strstr(errbuf, "device: too small"), "%s", errbuf);
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &small_fo, errbuf, sizeof(errbuf)), -ENOSPC);
	ck_assert_int_eq(access(p, F_OK), 0); /* not ours: left alone */
	/* a file created by a failed open or format is removed again */
	unlink(p);
	{
		struct pcache_cache_dev_opts o = { .path = p, .create_size = 5 * MIB,
						   .format_if_blank = true, .format = &small_fo };

		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)), -ENOSPC);
		ck_assert_int_eq(access(p, F_OK), -1);
		ck_assert_int_eq(pcache_cache_dev_format(p, 5 * MIB, &small_fo, errbuf, sizeof(errbuf)), -ENOSPC);
		ck_assert_int_eq(access(p, F_OK), -1);
	}

	/* a device truncated below its formatted size */
	p = fresh_dev("refuse");
	ck_assert_int_eq(truncate(p, SMALL_SIZE - MIB), 0);
	ck_assert_int_eq(try_open(p, &cd, true, false), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "superblock: device is"), "%s", errbuf);
	ck_assert_ptr_null(cd);
	unlink(p);
}
END_TEST

START_TEST(crafted_superblock_geometry_is_refused)
{
	const char *p = fresh_dev("sbgeo");
	struct pcache_cache_dev *cd = NULL;
	struct pcache_sb_om sb, orig;

	raw_read(p, 0, &orig, sizeof(orig));
#define CRAFT(stmt, what)                                                                 \
	do {                                                                              \
		sb = orig;                                                                \
		stmt;                                                                     \
		raw_write_rec(p, 0, &sb, sizeof(sb));                                     \
		raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));                   \
		ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);               \
		ck_assert_msg(strstr(errbuf, "superblock: ") && strstr(errbuf, what), "%s", errbuf); \
	} while (0)
	CRAFT(sb.seg_size = 3 * MIB, "segment size");
	CRAFT(sb.seg_size = 2 * MIB, "do not fit");
	CRAFT(sb.seg_count = 7, "segment count");
	CRAFT(sb.seg_count = PCACHE_MAX_SEGS + 1, "segment count");
	CRAFT(sb.seg_count = 9, "do not fit");
	CRAFT(sb.seg_base = 3 * MIB, "segment base");
	CRAFT(sb.seg_base = 0, "segment base");
	CRAFT(sb.seg_base = 1ull << 62, "do not fit");
	CRAFT(sb.dev_size = 1ull << 50, "smaller than at format");
	CRAFT(sb.max_images = 65, "max_images");
	CRAFT(sb.max_images = 1024, "max_images");
	CRAFT((sb.version = PCACHE_FORMAT_VERSION_V1, sb.max_images = 128), "max_images 128 invalid for version 1");
	CRAFT(sb.version = 0, "version 0");
#undef CRAFT
	/* a table of 128 would read the segment records as image 64: refused, never misread */
	sb = orig;
	sb.max_images = 128;
	raw_write_rec(p, 0, &sb, sizeof(sb));
	raw_write_rec(p, PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb));
	ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);
	ck_assert_msg(strstr(errbuf, "image 64: both slots invalid"), "%s", errbuf);
	raw_write(p, 0, &orig, sizeof(orig));
	raw_write(p, PCACHE_SB_SLOT_SIZE, &orig, sizeof(orig));
	pcache_cache_dev_close(open_ok(p, false));
}
END_TEST

START_TEST(crafted_record_values_are_refused)
{
	const char *p = fresh_dev("reccraft");
	struct pcache_cache_dev *cd = NULL;
	struct pcache_cache_info_om ci, cio;
	struct pcache_tail_om t, to;

	raw_read(p, PCACHE_INFO_OFF, &cio, sizeof(cio));
#define CRAFT_INFO(stmt, what)                                                          \
	do {                                                                            \
		ci = cio;                                                               \
		stmt;                                                                   \
		raw_write_rec(p, PCACHE_INFO_OFF, &ci, sizeof(ci));                     \
		ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);             \
		ck_assert_msg(strstr(errbuf, "cache_info: ") && strstr(errbuf, what), "%s", errbuf); \
	} while (0)
	CRAFT_INFO(ci.gc_percent = 91, "gc_percent");
	CRAFT_INFO(ci.dirty_high = 101, "dirty_high");
	CRAFT_INFO(ci.dirty_low = ci.dirty_high, "dirty_low");
	CRAFT_INFO(ci.flags = 6, "flags");
	CRAFT_INFO(ci.next_image_id = 0, "next_image_id");
#undef CRAFT_INFO
	raw_write(p, PCACHE_INFO_OFF, &cio, sizeof(cio));

	raw_read(p, PCACHE_DIRTY_TAIL_SLOT(0), &to, sizeof(to));
#define CRAFT_TAIL(stmt, what)                                                          \
	do {                                                                            \
		t = to;                                                                 \
		stmt;                                                                   \
		raw_write_rec(p, PCACHE_DIRTY_TAIL_SLOT(0), &t, sizeof(t));             \
		ck_assert_int_eq(try_open(p, &cd, false, false), -EUCLEAN);             \
		ck_assert_msg(strstr(errbuf, "dirty_tail: ") && strstr(errbuf, what), "%s", errbuf); \
	} while (0)
	CRAFT_TAIL(t.seg = 8, "segment 8");
	CRAFT_TAIL(t.off = MIB, "offset");
	CRAFT_TAIL(t.off = 4, "offset");
	CRAFT_TAIL(t.lsn = 0, "lsn");
#undef CRAFT_TAIL
	/* a CRC-valid record of another type in the slot: invalid, the other slot is used */
	t = to;
	t.hdr.type = PCACHE_REC_KEY_TAIL;
	raw_write_rec(p, PCACHE_DIRTY_TAIL_SLOT(0), &t, sizeof(t));
	cd = open_ok(p, false);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 1);
	pcache_cache_dev_close(cd);
	raw_write(p, PCACHE_DIRTY_TAIL_SLOT(0), &to, sizeof(to));
	pcache_cache_dev_close(open_ok(p, false));
}
END_TEST

/* ---- Locking ------------------------------------------------------------------------------ */

START_TEST(second_open_is_refused_naming_the_holder)
{
	const char *p = fresh_dev("lock");
	struct pcache_cache_dev *cd = open_ok(p, false), *cd2 = NULL;
	char want[64];
	int pipefd[2], status, rc;
	pid_t pid;
	char c;

	snprintf(want, sizeof(want), "locked by pid %d (", (int)getpid());
	ck_assert_int_eq(try_open(p, &cd2, false, false), -EBUSY);
	ck_assert_msg(strstr(errbuf, want), "%s", errbuf);
	ck_assert_int_eq(try_open(p, &cd2, false, true), -EBUSY); /* read-only shares, not with rw */
	ck_assert_int_eq(pcache_cache_dev_format(p, 0, &small_fo, errbuf, sizeof(errbuf)), -EBUSY);

	/* a forked process is refused too, naming us */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		rc = try_open(p, &cd2, false, false);
		_exit(rc == -EBUSY && strstr(errbuf, want) ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	pcache_cache_dev_close(cd);

	/* the other way round: the child holds it, we are refused with its pid */
	ck_assert_int_eq(pipe(pipefd), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct pcache_cache_dev *ccd = NULL;

		close(pipefd[0]);
		if (try_open(p, &ccd, false, false))
			_exit(1);
		ck_assert_int_eq(write(pipefd[1], "x", 1), 1);
		pause();
		_exit(0);
	}
	close(pipefd[1]);
	ck_assert_int_eq(read(pipefd[0], &c, 1), 1);
	close(pipefd[0]);
	snprintf(want, sizeof(want), "locked by pid %d (", (int)pid);
	ck_assert_int_eq(try_open(p, &cd2, false, false), -EBUSY);
	ck_assert_msg(strstr(errbuf, want), "%s", errbuf);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	/* the lock died with its holder */
	pcache_cache_dev_close(open_ok(p, false));

	/* the locker forks and exits (a daemonizing server): the message says so */
	ck_assert_int_eq(pipe(pipefd), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct pcache_cache_dev *ccd = NULL;
		pid_t gc;

		close(pipefd[0]);
		if (try_open(p, &ccd, false, false))
			_exit(1);
		gc = fork();
		if (gc == 0) {
			gc = getpid();
			if (write(pipefd[1], &gc, sizeof(gc)) != sizeof(gc))
				_exit(1);
			pause();
			_exit(0);
		}
		_exit(gc > 0 ? 0 : 1);
	}
	close(pipefd[1]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	{
		pid_t gpid = 0;
		int tries;

		ck_assert_int_eq(read(pipefd[0], &gpid, sizeof(gpid)), (ssize_t)sizeof(gpid));
		close(pipefd[0]);
		snprintf(want, sizeof(want), "locked by pid %d (exited;", (int)pid);
		rc = try_open(p, &cd2, false, false);
		kill(gpid, SIGKILL); /* the grandchild we started (its pid came through the pipe) */
		ck_assert_int_eq(rc, -EBUSY);
		ck_assert_msg(strstr(errbuf, want), "%s", errbuf);
		/* the lock goes away with the last descriptor */
		for (tries = 0; tries < 200 && try_open(p, &cd2, false, false) == -EBUSY; tries++)
			usleep(10000);
		ck_assert_ptr_nonnull(cd2);
		pcache_cache_dev_close(cd2);
	}

	/* read-only opens share the lock with each other, not with a read-write open */
	cd = NULL;
	ck_assert_int_eq(try_open(p, &cd, false, true), 0);
	ck_assert_int_eq(try_open(p, &cd2, false, true), 0);
	pcache_cache_dev_close(cd2);
	ck_assert_int_eq(try_open(p, &cd2, false, false), -EBUSY);
	pcache_cache_dev_close(cd);
	/* read-only + no_lock ignores a held lock; no_lock needs read_only */
	cd = open_ok(p, false);
	{
		struct pcache_cache_dev_opts o = { .path = p, .read_only = true, .no_lock = true };

		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd2, errbuf, sizeof(errbuf)), 0);
		pcache_cache_dev_close(cd2);
		o.read_only = false;
		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd2, errbuf, sizeof(errbuf)), -EINVAL);
	}
	pcache_cache_dev_close(cd);
}
END_TEST

START_TEST(read_only_open_refuses_updates)
{
	const char *p = fresh_dev("ro");
	struct pcache_cache_dev *cd = NULL;
	struct pcache_cache_info ci;
	struct pcache_pos t = { 0, 8, 2 };
	struct pcache_image_ent e = mk_image("x", "/x");
	uint32_t crc = file_crc(p);

	ck_assert_int_eq(try_open(p, &cd, false, true), 0);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &t), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 0), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_image_update(cd, &e), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_image_remove(cd, 0), -EROFS);
	ck_assert_int_eq(pcache_cache_dev_repair(cd), -EROFS);
	pcache_cache_dev_close(cd);
	ck_assert_uint_eq(file_crc(p), crc);
	/* prefault, read-only and read-write */
	{
		struct pcache_cache_dev_opts o = { .path = p, .read_only = true, .prefault = true };

		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)), 0);
		pcache_cache_dev_close(cd);
		ck_assert_uint_eq(file_crc(p), crc);
		o.read_only = false;
		ck_assert_int_eq(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)), 0);
		pcache_cache_dev_get_info(cd, &ci);
		ck_assert_uint_eq(ci.gc_percent, PCACHE_DEFAULT_GC_PERCENT);
		pcache_cache_dev_close(cd);
	}
}
END_TEST

/* ---- Seam --------------------------------------------------------------------------------- */

struct counting {
	struct pcache_pmem real;
	uint8_t *base;
	unsigned long durable_copies, nodrain_copies, persists, drains, sets;
	uint64_t last_off, last_len;
	long crash_after; /* >= 0: _exit(0) at that operation (before doing it) */
	long torn_bytes;  /* >= 0: the next durable memcpy stores only this many bytes, then _exit */
};

static struct counting cnt;

static void crash_point(void)
{
	if (cnt.crash_after >= 0 && cnt.crash_after-- == 0)
		_exit(0);
}

static void c_memcpy(void *ctx, void *dst, const void *src, size_t len, unsigned int flags)
{
	struct counting *c = ctx;

	crash_point();
	if (c->torn_bytes >= 0 && !(flags & PCACHE_PM_NODRAIN)) {
		/* power fails in the middle of the copy: a prefix reached the media */
		c->real.ops->memcpy(c->real.ctx, dst, src, (size_t)PCACHE_MIN((size_t)c->torn_bytes, len), 0);
		_exit(0);
	}
	if (flags & PCACHE_PM_NODRAIN)
		c->nodrain_copies++;
	else
		c->durable_copies++;
	c->last_off = (uint64_t)((uint8_t *)dst - c->base);
	c->last_len = len;
	c->real.ops->memcpy(c->real.ctx, dst, src, len, flags);
}

static void c_memset(void *ctx, void *dst, int v, size_t len, unsigned int flags)
{
	struct counting *c = ctx;

	crash_point();
	c->sets++;
	c->real.ops->memset(c->real.ctx, dst, v, len, flags);
}

static void c_persist(void *ctx, const void *addr, size_t len)
{
	struct counting *c = ctx;

	crash_point();
	c->persists++;
	c->real.ops->persist(c->real.ctx, addr, len);
}

static void c_flush(void *ctx, const void *addr, size_t len)
{
	struct counting *c = ctx;

	crash_point();
	c->real.ops->flush(c->real.ctx, addr, len);
}

static void c_drain(void *ctx)
{
	struct counting *c = ctx;

	crash_point();
	c->drains++;
	c->real.ops->drain(c->real.ctx);
}

static const struct pcache_pmem_ops counting_ops = { c_memcpy, c_memset, c_persist, c_flush, c_drain };

static struct pcache_pmem wrap_counting(struct pcache_pmem real, void *base, uint64_t size, void *arg)
{
	(void)size;
	(void)arg;
	cnt.real = real;
	cnt.base = base;
	return (struct pcache_pmem){ .ops = &counting_ops, .ctx = &cnt };
}

static struct pcache_cache_dev *open_counting(const char *p, bool format)
{
	struct pcache_cache_dev_opts o = {
		.path = p, .create_size = format ? SMALL_SIZE : 0, .format_if_blank = format,
		.format = &small_fo, .wrap_pmem = wrap_counting,
	};
	struct pcache_cache_dev *cd = NULL;

	memset(&cnt, 0, sizeof(cnt));
	cnt.crash_after = -1;
	cnt.torn_bytes = -1;
	ck_assert_msg(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
	return cd;
}

START_TEST(counting_seam_sees_a_durable_store_per_update_into_the_other_slot)
{
	const char *p = fresh_dev("seam");
	struct pcache_cache_dev *cd = open_counting(p, false);
	struct pcache_cache_info ci;
	struct pcache_pos t = { 1, 64, 9 };
	struct pcache_image_ent e = mk_image("s", "/s");
	unsigned long before;
	int i;

	ck_assert_ptr_eq(pcache_cache_dev_pmem(cd)->ctx, &cnt);
	ck_assert_uint_eq(cnt.durable_copies + cnt.sets + cnt.persists, 0); /* open writes nothing */
	for (i = 0; i < 4; i++) {
		uint64_t slot = (uint64_t)((i + 1) % 2); /* format wrote slot 0: updates alternate 1,0,.. */

		pcache_cache_dev_get_info(cd, &ci);
		ci.wb_rate = (uint64_t)i;
		before = cnt.durable_copies;
		ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
		ck_assert_uint_eq(cnt.durable_copies, before + 1);
		ck_assert_uint_eq(cnt.last_off, PCACHE_INFO_OFF + slot * PCACHE_INFO_SLOT_SIZE);
		ck_assert_uint_eq(cnt.last_len, sizeof(struct pcache_cache_info_om));

		before = cnt.durable_copies;
		ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &t), 0);
		ck_assert_uint_eq(cnt.durable_copies, before + 1);
		ck_assert_uint_eq(cnt.last_off, PCACHE_KEY_TAIL_SLOT(slot));
		ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &t), 0);
		ck_assert_uint_eq(cnt.durable_copies, before + 2);
		ck_assert_uint_eq(cnt.last_off, PCACHE_DIRTY_TAIL_SLOT(slot));

		before = cnt.durable_copies;
		ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 3), 0);
		ck_assert_uint_eq(cnt.durable_copies, before + 1);
		ck_assert_uint_eq(cnt.last_off, PCACHE_SEG_SLOT(V1T, 3, slot));
	}
	before = cnt.durable_copies;
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	ck_assert_uint_eq(cnt.durable_copies, before + 2); /* next_image_id first, then the entry */
	ck_assert_uint_eq(cnt.last_off, PCACHE_IMAGE_SLOT(e.slot, 1));
	ck_assert_uint_eq(cnt.nodrain_copies, 0);
	pcache_cache_dev_close(cd);
}
END_TEST

START_TEST(crash_at_every_step_of_format_leaves_a_formattable_device)
{
	const char *p = dev_path("crashfmt");
	struct pcache_cache_dev *cd;
	unsigned long total;
	long n;

	/* count the seam operations of one format */
	unlink(p);
	cd = open_counting(p, true);
	total = cnt.durable_copies + cnt.nodrain_copies + cnt.sets + cnt.persists + cnt.drains;
	pcache_cache_dev_close(cd);
	ck_assert_uint_gt(total, 70);

	for (n = 0; n <= (long)total; n++) {
		struct pcache_cache_info ci;
		int status;
		pid_t pid;

		unlink(p);
		pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			struct pcache_cache_dev_opts o = {
				.path = p, .create_size = SMALL_SIZE, .format_if_blank = true,
				.format = &small_fo, .wrap_pmem = wrap_counting,
			};

			memset(&cnt, 0, sizeof(cnt));
			cnt.crash_after = n;
			cnt.torn_bytes = -1;
			_exit(pcache_cache_dev_open(&o, &cd, errbuf, sizeof(errbuf)) == 0 ? 0 : 2);
		}
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		/* after the "crash" the device is either blank (formatted now) or fully formatted */
		cd = open_ok(p, true);
		pcache_cache_dev_get_info(cd, &ci);
		ck_assert_uint_eq(ci.next_image_id, 1);
		if (pcache_cache_dev_damaged(cd)) {
			/* only a crash between the two superblock copies leaves anything to repair */
			uint8_t sb1[PCACHE_SB_SLOT_SIZE], zero[PCACHE_SB_SLOT_SIZE] = { 0 };

			ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 1);
			ck_assert_int_eq(pcache_cache_dev_pread(cd, sb1, sizeof(sb1), PCACHE_SB_SLOT_SIZE), 0);
			ck_assert_mem_eq(sb1, zero, sizeof(sb1));
		}
		pcache_cache_dev_close(cd);
	}
}
END_TEST

/* Run one update in a child whose seam tears its durable copy after `torn` bytes. */
static void torn_update(const char *p, int kind, long torn, uint64_t val)
{
	int status;
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct pcache_cache_dev *cd = open_counting(p, false);
		struct pcache_cache_info ci;
		struct pcache_pos t = { 1, 8, val };
		struct pcache_image_ent e;

		cnt.torn_bytes = torn;
		switch (kind) {
		case 0:
			pcache_cache_dev_get_info(cd, &ci);
			ci.wb_rate = val;
			pcache_cache_dev_set_info(cd, &ci);
			break;
		case 1:
			pcache_cache_dev_set_dirty_tail(cd, &t);
			break;
		case 2:
			pcache_cache_dev_image_find(cd, "torn", &e);
			e.wb_lsn = val;
			pcache_cache_dev_image_update(cd, &e);
			break;
		default:
			pcache_cache_dev_seg_gen_bump(cd, 4);
			break;
		}
		_exit(3); /* the tear must have ended the child */
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The value of record kind as loaded now. */
static uint64_t torn_value(const char *p, int kind)
{
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_cache_info ci;
	struct pcache_pos t;
	struct pcache_image_ent e;
	uint64_t v;

	switch (kind) {
	case 0:
		pcache_cache_dev_get_info(cd, &ci);
		v = ci.wb_rate;
		break;
	case 1:
		pcache_cache_dev_get_dirty_tail(cd, &t);
		v = t.lsn;
		break;
	case 2:
		ck_assert_int_eq(pcache_cache_dev_image_find(cd, "torn", &e), 0);
		v = e.wb_lsn;
		break;
	default:
		v = pcache_cache_dev_seg_gen(cd, 4);
		break;
	}
	pcache_cache_dev_close(cd);
	return v;
}

START_TEST(torn_update_at_any_byte_keeps_the_previous_value)
{
	static const size_t lens[] = { sizeof(struct pcache_cache_info_om), sizeof(struct pcache_tail_om),
				       sizeof(struct pcache_image_om), sizeof(struct pcache_seg_om) };
	const char *p = fresh_dev("torn");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct pcache_image_ent e = mk_image("torn", "/t");
	int kind;

	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	pcache_cache_dev_close(cd);
	for (kind = 0; kind < 4; kind++) {
		uint64_t before = torn_value(p, kind), val = before + 100;
		size_t step = lens[kind] > 64 ? 61 : 4;
		long torn;


		/*
		 * A tear shorter than the record leaves the old value, or the new one when the bytes
		 * not written already held it (the slot's previous content); never anything else,
		 * never a refusal (torn_value opens the device).
		 */
		for (torn = 0; torn < (long)lens[kind]; torn += (long)step) {
			uint64_t v;

			before = torn_value(p, kind);
			if (kind == 3)
				val = before + 1; /* a bump */
			torn_update(p, kind, torn, val);
			v = torn_value(p, kind);
			ck_assert_msg(v == before || v == val, "kind %d torn at %ld: %llu", kind, torn,
				      (unsigned long long)v);
			if (torn < 8) /* the CRC itself was torn: the old value for sure */
				ck_assert_uint_eq(v, before);
		}
		if (kind == 3)
			val = torn_value(p, kind) + 1;
		torn_update(p, kind, (long)lens[kind], val);
		ck_assert_uint_eq(torn_value(p, kind), val);
	}
}
END_TEST

START_TEST(forced_cache_line_granularity_path_works)
{
	const char *p;
	struct pcache_cache_dev *cd;
	struct pcache_cache_info ci;
	struct pcache_image_ent e = mk_image("cl", "/cl");

	/* libpmem2 reads PMEM2_FORCE_GRANULARITY at map time; this test runs in its own fork */
	setenv("PMEM2_FORCE_GRANULARITY", "CACHE_LINE", 1);
	p = dev_path("cacheline");
	unlink(p);
	cd = open_ok(p, true);
	ck_assert_str_eq(pcache_cache_dev_granularity(cd), "cache line");
	pcache_cache_dev_get_info(cd, &ci);
	ci.wb_rate = 77;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 2), 0);
	pcache_cache_dev_close(cd);
	setenv("PMEM2_FORCE_GRANULARITY", "BYTE", 1);
	cd = open_ok(p, false);
	ck_assert_str_eq(pcache_cache_dev_granularity(cd), "byte");
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, 77);
	ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, 2), 1);
	ck_assert_int_eq(pcache_cache_dev_image_find(cd, "cl", &e), 0);
	pcache_cache_dev_close(cd);
	unsetenv("PMEM2_FORCE_GRANULARITY");
}
END_TEST

/* ---- Threads ------------------------------------------------------------------------------ */

struct thr_arg {
	struct pcache_cache_dev *cd;
	int which, n;
};

static void *thr_main(void *p)
{
	struct thr_arg *a = p;
	struct pcache_cache_info ci;
	struct pcache_pos t;
	struct pcache_image_ent e, list[PCACHE_MAX_IMAGES];
	char name[32];
	int i;

	for (i = 0; i < a->n; i++) {
		switch (a->which) {
		case 0: /* generation bumps, each segment by its own thread half */
			if (pcache_cache_dev_seg_gen_bump(a->cd, (uint32_t)i % 4) != 0)
				return (void *)1;
			break;
		case 1:
			if (pcache_cache_dev_seg_gen_bump(a->cd, 4 + (uint32_t)i % 4) != 0)
				return (void *)1;
			t = (struct pcache_pos){ (uint32_t)i % 8, 8 * (uint32_t)i, 1 + (uint64_t)i };
			if (pcache_cache_dev_set_key_tail(a->cd, &t) || pcache_cache_dev_set_dirty_tail(a->cd, &t))
				return (void *)1;
			break;
		case 2: /* tunables (info_lock) racing with image adds (img_lock -> info_lock) */
			pcache_cache_dev_get_info(a->cd, &ci);
			ci.wb_rate = (uint64_t)i;
			if (pcache_cache_dev_set_info(a->cd, &ci))
				return (void *)1;
			break;
		case 3:
			snprintf(name, sizeof(name), "t%d", i);
			e = mk_image(name, "/t");
			if (pcache_cache_dev_image_add(a->cd, &e))
				return (void *)1;
			if (i % 2 && pcache_cache_dev_image_remove(a->cd, e.slot))
				return (void *)1;
			break;
		default: /* readers */
			(void)pcache_cache_dev_seg_gen(a->cd, (uint32_t)i % 8);
			pcache_cache_dev_get_key_tail(a->cd, &t);
			(void)pcache_cache_dev_images(a->cd, list, PCACHE_MAX_IMAGES);
			pcache_cache_dev_get_info(a->cd, &ci);
			break;
		}
	}
	return NULL;
}

START_TEST(concurrent_updates_are_serialised_and_all_land)
{
	const char *p = fresh_dev("threads");
	struct pcache_cache_dev *cd = open_ok(p, false);
	struct thr_arg args[5];
	pthread_t th[5];
	struct pcache_cache_info ci;
	struct pcache_image_ent list[PCACHE_MAX_IMAGES];
	int i, n = check_under_tsan() ? 40 : 400;
	void *ret;

	for (i = 0; i < 5; i++) {
		args[i] = (struct thr_arg){ cd, i, i == 3 ? 100 : n };
		ck_assert_int_eq(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
	}
	for (i = 0; i < 5; i++) {
		ck_assert_int_eq(pthread_join(th[i], &ret), 0);
		ck_assert_ptr_null(ret);
	}
	pcache_cache_dev_close(cd);
	cd = open_ok(p, false);
	for (i = 0; i < 8; i++)
		ck_assert_uint_eq(pcache_cache_dev_seg_gen(cd, (uint32_t)i), (uint64_t)n / 4);
	pcache_cache_dev_get_info(cd, &ci);
	ck_assert_uint_eq(ci.wb_rate, (uint64_t)n - 1);
	ck_assert_uint_eq(ci.next_image_id, 101);
	ck_assert_int_eq(pcache_cache_dev_images(cd, list, PCACHE_MAX_IMAGES), 50);
	pcache_cache_dev_close(cd);
}
END_TEST

/* ---- Sweep -------------------------------------------------------------------------------- */

/* Everything the loader exposes, for exact comparison. */
struct snap {
	struct pcache_sb_om sb;
	struct pcache_cache_info ci;
	struct pcache_pos kt, dt;
	int nimg;
	struct pcache_image_ent img[PCACHE_MAX_IMAGES];
	uint32_t seg_count;
	uint64_t gen[8];
};

static void take_snap(struct pcache_cache_dev *cd, struct snap *s)
{
	uint32_t i;

	memset(s, 0, sizeof(*s));
	s->sb = *pcache_cache_dev_sb(cd);
	pcache_cache_dev_get_info(cd, &s->ci);
	pcache_cache_dev_get_key_tail(cd, &s->kt);
	pcache_cache_dev_get_dirty_tail(cd, &s->dt);
	s->nimg = pcache_cache_dev_images(cd, s->img, PCACHE_MAX_IMAGES);
	s->seg_count = pcache_cache_dev_seg_count(cd);
	for (i = 0; i < 8; i++)
		s->gen[i] = pcache_cache_dev_seg_gen(cd, i);
}

static bool ent_eq(const struct pcache_image_ent *a, const struct pcache_image_ent *b)
{
	return a->slot == b->slot && a->id == b->id && a->state == b->state &&
	       !memcmp(a->uuid, b->uuid, 16) && a->size == b->size && a->lbs == b->lbs &&
	       a->cache_mode == b->cache_mode && a->file_mode == b->file_mode && a->uid == b->uid &&
	       a->gid == b->gid && a->wb_lsn == b->wb_lsn && a->wb_time == b->wb_time &&
	       !strcmp(a->name, b->name) && !strcmp(a->path, b->path);
}

static bool pos_eq(const struct pcache_pos *a, const struct pcache_pos *b)
{
	return a->seg == b->seg && a->off == b->off && a->lsn == b->lsn;
}

static bool snap_eq(const struct snap *a, const struct snap *b)
{
	int i;

	if (memcmp(&a->sb, &b->sb, sizeof(a->sb)) || a->ci.flags != b->ci.flags ||
	    a->ci.gc_percent != b->ci.gc_percent || a->ci.dirty_high != b->ci.dirty_high ||
	    a->ci.dirty_low != b->ci.dirty_low || a->ci.wb_rate != b->ci.wb_rate ||
	    a->ci.next_image_id != b->ci.next_image_id || !pos_eq(&a->kt, &b->kt) ||
	    !pos_eq(&a->dt, &b->dt) || a->nimg != b->nimg || a->seg_count != b->seg_count ||
	    memcmp(a->gen, b->gen, sizeof(a->gen)))
		return false;
	for (i = 0; i < a->nimg; i++)
		if (!ent_eq(&a->img[i], &b->img[i]))
			return false;
	return true;
}

/* The outcome a flipped byte must have: a snapshot to load, or a refusal naming a structure. */
struct expect {
	const struct snap *snap;
	char refusal[48];
};

struct sweep {
	const char *path;
	int fd;
	uint64_t md_len;
	struct snap golden, old_info, old_kt, old_dt, old_img0, old_seg3;
	int newest_info, newest_kt, newest_dt, newest_img0, newest_seg3;
	unsigned long cases, fallbacks, refusals, wrong;
	uint32_t rng;
};

static int newest_of(const char *p, uint64_t off0, uint64_t off1)
{
	return pcache_seq_after(slot_seq(p, off1), slot_seq(p, off0)) ? 1 : 0;
}

/* Which outcome a change of byte off must produce (see the setup in sweep_setup). */
static void sweep_expect(const struct sweep *sw, uint64_t off, struct expect *ex)
{
	uint64_t rel;
	uint32_t i, k;

	ex->snap = &sw->golden;
	ex->refusal[0] = 0;
	if (off < PCACHE_INFO_OFF) /* superblock copies: the other copy is identical */
		return;
	if (off < PCACHE_TAILS_OFF) {
		k = (uint32_t)((off - PCACHE_INFO_OFF) / PCACHE_INFO_SLOT_SIZE);
		rel = (off - PCACHE_INFO_OFF) % PCACHE_INFO_SLOT_SIZE;
		if (rel < sizeof(struct pcache_cache_info_om) && (int)k == sw->newest_info)
			ex->snap = &sw->old_info;
		return;
	}
	if (off < PCACHE_IMAGES_OFF) {
		rel = off - PCACHE_TAILS_OFF;
		if (rel >= 1024 || rel % 256 >= sizeof(struct pcache_tail_om))
			return;
		k = (uint32_t)(rel / 256) % 2;
		if (rel < 512 && (int)k == sw->newest_kt)
			ex->snap = &sw->old_kt;
		else if (rel >= 512 && (int)k == sw->newest_dt)
			ex->snap = &sw->old_dt;
		return;
	}
	if (off < PCACHE_SEGTAB_OFF(V1T)) {
		i = (uint32_t)((off - PCACHE_IMAGES_OFF) / (2 * PCACHE_IMAGE_SLOT_SIZE));
		k = (uint32_t)((off - PCACHE_IMAGES_OFF) / PCACHE_IMAGE_SLOT_SIZE) % 2;
		if (i == 0 && (int)k == sw->newest_img0) /* other entries: same values in both slots */
			ex->snap = &sw->old_img0;
		return;
	}
	if (off < sw->md_len) {
		i = (uint32_t)((off - PCACHE_SEGTAB_OFF(V1T)) / (2 * PCACHE_SEG_SLOT_SIZE));
		k = (uint32_t)((off - PCACHE_SEGTAB_OFF(V1T)) / PCACHE_SEG_SLOT_SIZE) % 2;
		if (i == 3 && (int)k == sw->newest_seg3)
			ex->snap = &sw->old_seg3;
	}
}

/* Flip byte off (and off2 when != UINT64_MAX), open, compare with ex, restore. */
static void sweep_run(struct sweep *sw, uint64_t off, uint64_t off2, const struct expect *ex)
{
	struct pcache_cache_dev *cd = NULL;
	struct snap *got = malloc(sizeof(*got));
	uint64_t offs[2] = { off, off2 };
	uint8_t orig[2], b;
	uint8_t x;
	int rc, i, n = off2 == UINT64_MAX ? 1 : 2;

	ck_assert_ptr_nonnull(got);
	sw->rng = sw->rng * 1103515245u + 12345u;
	x = (uint8_t)((sw->rng >> 16) % 255 + 1);
	for (i = 0; i < n; i++) {
		ck_assert_int_eq(pread(sw->fd, &orig[i], 1, (off_t)offs[i]), 1);
		b = orig[i] ^ x;
		ck_assert_int_eq(pwrite(sw->fd, &b, 1, (off_t)offs[i]), 1);
	}
	sw->cases++;
	rc = try_open(sw->path, &cd, false, false);
	if (rc == 0) {
		take_snap(cd, got);
		pcache_cache_dev_close(cd);
		if (ex->snap && snap_eq(got, ex->snap)) {
			sw->fallbacks++;
		} else {
			sw->wrong++;
			fprintf(stderr, "sweep: byte %llu%s ^ 0x%02x: opened with %s values\n",
				(unsigned long long)off, n == 2 ? " and its twin" : "", x,
				ex->snap ? "unexpected" : "(should refuse)");
		}
	} else if (!ex->snap && !strncmp(errbuf, ex->refusal, strlen(ex->refusal))) {
		sw->refusals++;
	} else {
		sw->wrong++;
		fprintf(stderr, "sweep: byte %llu%s ^ 0x%02x: refused (%d %s), expected %s\n",
			(unsigned long long)off, n == 2 ? " and its twin" : "", x, rc, errbuf,
			ex->snap ? "a fallback" : ex->refusal);
	}
	for (i = n - 1; i >= 0; i--)
		ck_assert_int_eq(pwrite(sw->fd, &orig[i], 1, (off_t)offs[i]), 1);
	free(got);
}

static void sweep_case(struct sweep *sw, uint64_t off)
{
	struct expect ex;

	sweep_expect(sw, off, &ex);
	sweep_run(sw, off, UINT64_MAX, &ex);
}

/*
 * The same byte of both slots of a record (rel < len: inside the record -> a refusal naming it;
 * else slot padding, which nothing reads -> the golden values).
 */
static void sweep_both(struct sweep *sw, uint64_t off0, uint64_t off1, uint64_t rel, uint64_t len,
		       const char *name)
{
	struct expect ex = { .snap = &sw->golden };

	if (rel < len) {
		ex.snap = NULL;
		snprintf(ex.refusal, sizeof(ex.refusal), "%s: ", name);
	}
	sweep_run(sw, off0 + rel, off1 + rel, &ex);
}

static void sweep_setup(struct sweep *sw)
{
	struct pcache_cache_dev *cd;
	struct pcache_image_ent e = mk_image("alpha", "/images/alpha.raw");
	struct pcache_cache_info ci;
	struct pcache_pos a = { 1, 64, 10 }, b = { 2, 128, 11 };

	sw->path = fresh_dev("sweep");
	cd = open_ok(sw->path, false);
	ck_assert_int_eq(pcache_cache_dev_image_add(cd, &e), 0);
	e.wb_lsn = 5;
	ck_assert_int_eq(pcache_cache_dev_image_update(cd, &e), 0);
	pcache_cache_dev_get_info(cd, &ci);
	ci.wb_rate = 1000, ci.gc_percent = 50;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	ci.wb_rate = 2000, ci.gc_percent = 60;
	ck_assert_int_eq(pcache_cache_dev_set_info(cd, &ci), 0);
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &a), 0);
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &b), 0);
	ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &a), 0);
	ck_assert_int_eq(pcache_cache_dev_set_dirty_tail(cd, &b), 0);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 3), 0);
	ck_assert_int_eq(pcache_cache_dev_seg_gen_bump(cd, 3), 0);
	take_snap(cd, &sw->golden);
	pcache_cache_dev_close(cd);

	/* what each record looked like one update earlier */
	sw->old_info = sw->golden;
	sw->old_info.ci.wb_rate = 1000, sw->old_info.ci.gc_percent = 50;
	sw->old_kt = sw->golden;
	sw->old_kt.kt = a;
	sw->old_dt = sw->golden;
	sw->old_dt.dt = a;
	sw->old_img0 = sw->golden;
	sw->old_img0.img[0].wb_lsn = 0;
	sw->old_seg3 = sw->golden;
	sw->old_seg3.gen[3] = 1;
	sw->newest_info = newest_of(sw->path, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE);
	sw->newest_kt = newest_of(sw->path, PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1));
	sw->newest_dt = newest_of(sw->path, PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1));
	sw->newest_img0 = newest_of(sw->path, PCACHE_IMAGE_SLOT(0, 0), PCACHE_IMAGE_SLOT(0, 1));
	sw->newest_seg3 = newest_of(sw->path, PCACHE_SEG_SLOT(V1T, 3, 0), PCACHE_SEG_SLOT(V1T, 3, 1));
	sw->md_len = PCACHE_SEGTAB_OFF(V1T) + 8 * 2 * PCACHE_SEG_SLOT_SIZE;
	sw->fd = open(sw->path, O_RDWR);
	ck_assert_int_ge(sw->fd, 0);
	sw->rng = 12345;
}

START_TEST(corruption_sweep_never_loads_wrong_values)
{
	struct sweep *sw = calloc(1, sizeof(*sw));
	uint64_t off, stride = check_under_tsan() ? 13 : 1;
	uint32_t k, i, n;

	ck_assert_ptr_nonnull(sw);
	sweep_setup(sw);
	/* every byte of both superblock copies */
	for (off = 0; off < 2 * PCACHE_SB_SLOT_SIZE; off += stride)
		sweep_case(sw, off);
	for (k = 0; k < 2; k++) {
		uint64_t info = PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE;

		for (off = 0; off < sizeof(struct pcache_cache_info_om) + 8; off++)
			sweep_case(sw, info + off);
		for (off = 0; off < sizeof(struct pcache_tail_om) + 8; off++) {
			sweep_case(sw, PCACHE_KEY_TAIL_SLOT(k) + off);
			sweep_case(sw, PCACHE_DIRTY_TAIL_SLOT(k) + off);
		}
		for (off = 0; off < PCACHE_IMAGE_SLOT_SIZE; off += stride)
			sweep_case(sw, PCACHE_IMAGE_SLOT(0, k) + off);
		for (off = 0; off < PCACHE_SEG_SLOT_SIZE; off++) {
			sweep_case(sw, PCACHE_SEG_SLOT(V1T, 3, k) + off); /* slots differ */
			sweep_case(sw, PCACHE_SEG_SLOT(V1T, 6, k) + off); /* slots as format wrote them */
		}
		for (off = 0; off < 64; off++)
			sweep_case(sw, PCACHE_IMAGE_SLOT(7, k) + off * 16); /* an unused entry */
	}
	/* the same byte in both slots: no valid copy left */
	for (off = 0; off < sizeof(struct pcache_sb_om) + 64; off += stride)
		sweep_both(sw, 0, PCACHE_SB_SLOT_SIZE, off, sizeof(struct pcache_sb_om), "superblock");
	for (off = 0; off < sizeof(struct pcache_cache_info_om) + 8; off++)
		sweep_both(sw, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, off,
			   sizeof(struct pcache_cache_info_om), "cache_info");
	for (off = 0; off < sizeof(struct pcache_tail_om) + 8; off++) {
		sweep_both(sw, PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1), off,
			   sizeof(struct pcache_tail_om), "key_tail");
		sweep_both(sw, PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1), off,
			   sizeof(struct pcache_tail_om), "dirty_tail");
	}
	for (off = 0; off < PCACHE_IMAGE_SLOT_SIZE; off += 4 * stride)
		sweep_both(sw, PCACHE_IMAGE_SLOT(0, 0), PCACHE_IMAGE_SLOT(0, 1), off,
			   PCACHE_IMAGE_SLOT_SIZE, "image 0");
	for (off = 0; off < PCACHE_SEG_SLOT_SIZE; off++)
		sweep_both(sw, PCACHE_SEG_SLOT(V1T, 6, 0), PCACHE_SEG_SLOT(V1T, 6, 1), off, PCACHE_SEG_SLOT_SIZE,
			   "segment 6 record");
	/* random bytes anywhere in the metadata area */
	n = check_under_tsan() ? 200 : 3000;
	for (i = 0; i < n; i++) {
		sw->rng = sw->rng * 1103515245u + 12345u;
		sweep_case(sw, ((uint64_t)sw->rng << 8 ^ sw->rng >> 8) % sw->md_len);
	}
	printf("corruption sweep: %lu cases, %lu fallbacks, %lu refusals, %lu wrong\n", sw->cases,
	       sw->fallbacks, sw->refusals, sw->wrong);
	fflush(stdout);
	ck_assert_uint_eq(sw->wrong, 0);
	ck_assert_uint_gt(sw->refusals, 0);
	/* the device is intact again after the sweep */
	{
		struct pcache_cache_dev *cd = open_ok(sw->path, false);
		struct snap *s = malloc(sizeof(*s));

		take_snap(cd, s);
		ck_assert(snap_eq(s, &sw->golden));
		ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
		pcache_cache_dev_close(cd);
		free(s);
	}
	close(sw->fd);
	free(sw);
}
END_TEST

Suite *cache_dev_suite(void);
Suite *cache_dev_suite(void)
{
	Suite *s = suite_create("cache_dev");
	TCase *tc;

	tc = tcase_create("Core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, blank_file_is_created_formatted_and_reopens_with_same_identity);
	tcase_add_test(tc, format_api_uses_default_segment_size_and_honours_options);
	tcase_add_test(tc, geometry_is_maximal_aligned_and_fits);
	tcase_add_test(tc, every_record_survives_1000_updates_and_restarts_alternating_slots);
	tcase_add_test(tc, set_functions_validate_ranges);
	tcase_add_test(tc, largest_segment_count_formats_and_reloads);
	tcase_add_test(tc, read_only_open_refuses_updates);
	tcase_add_test(tc, forced_cache_line_granularity_path_works);
	tcase_add_test(tc, counting_seam_sees_a_durable_store_per_update_into_the_other_slot);
	suite_add_tcase(s, tc);

	tc = tcase_create("Recovery");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, corrupt_newest_copy_falls_back_to_older_and_repair_rewrites_it);
	tcase_add_test(tc, damaged_superblock_copy_and_torn_slot_are_reported_repairable);
	tcase_add_test(tc, both_copies_corrupt_is_refused_naming_the_structure);
	tcase_add_test(tc, unreadable_slots_count_as_invalid);
	tcase_add_test(tc, bad_values_in_the_older_copy_are_repairable);
	tcase_add_test(tc, sequence_numbers_wrap_around);
	tcase_add_test(tc, crash_at_every_step_of_format_leaves_a_formattable_device);
	tcase_add_test(tc, torn_update_at_any_byte_keeps_the_previous_value);
	suite_add_tcase(s, tc);

	tc = tcase_create("Images");
	tcase_add_test(tc, image_table_add_find_update_remove_and_identity_round_trip);
	tcase_add_test(tc, image_names_paths_and_fields_are_validated);
	tcase_add_test(tc, image_modify_and_set_wb_update_fields_without_undoing_others);
	tcase_add_test(tc, full_image_table_is_refused_with_enospc);
	tcase_add_test(tc, version1_device_is_used_as_is);
	tcase_add_test(tc, crafted_image_entries_are_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("Refusals");
	tcase_add_test(tc, blank_foreign_newer_and_too_small_devices_are_refused_untouched);
	tcase_add_test(tc, crafted_superblock_geometry_is_refused);
	tcase_add_test(tc, crafted_record_values_are_refused);
	tcase_add_test(tc, second_open_is_refused_naming_the_holder);
	suite_add_tcase(s, tc);

	tc = tcase_create("Threads");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, concurrent_updates_are_serialised_and_all_land);
	suite_add_tcase(s, tc);

	tc = tcase_create("Sweep");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, corruption_sweep_never_loads_wrong_values);
	suite_add_tcase(s, tc);
	return s;
}
