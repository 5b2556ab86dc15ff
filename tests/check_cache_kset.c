/*
 * check_cache_kset.c -- ksets and keys (core/cache_kset.c, core/log.c): what a valid kset is (magic, CRC,
 * lsn continuity, size inside its segment, LAST records), the key bounds checks, the stable
 * region -> staging kset mapping, and on a real cache: lsn = previous + 1 along the whole log
 * (LAST records included), epochs non-decreasing (across a restart too) and bumped by every
 * flush, segment chaining.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "pcache/log.h"
#include "check_util.h"
#include "lib/engine_util.h"

static uint8_t raw[PCACHE_KSET_MAX_SIZE + 64];

static struct pcache_kset_om *mk(uint16_t n, uint64_t lsn, uint16_t flags)
{
	struct pcache_kset_om *ks = (struct pcache_kset_om *)raw;
	uint16_t i;

	memset(raw, 0, sizeof(raw));
	ks->key_num = n;
	ks->flags = flags;
	ks->magic = PCACHE_KSET_MAGIC;
	ks->lsn = lsn;
	ks->epoch = 3;
	for (i = 0; i < n; i++) {
		ks->keys[i].off = (uint64_t)i * 4096;
		ks->keys[i].len = 4096;
		ks->keys[i].image_id = 1;
	}
	ks->crc = pcache_crc32c(PCACHE_CRC_SEED, raw + 4, PCACHE_KSET_SIZE(n) - 4);
	return ks;
}

static void recrc(struct pcache_kset_om *ks)
{
	ks->crc = pcache_crc32c(PCACHE_CRC_SEED, raw + 4, PCACHE_KSET_SIZE(ks->key_num) - 4);
}

START_TEST(valid_kset_is_accepted)
{
	struct pcache_kset_om *ks = mk(5, 42, 0);

	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), 0);
	ck_assert_int_eq(pcache_log_kset_check(ks, PCACHE_KSET_SIZE(5), 42, 16), 0);
	ks = mk(PCACHE_KSET_MAX_KEYS, 7, 0);
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 7, 16), 0);
	ks = mk(0, 8, PCACHE_KSET_LAST);
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 8, 16), 0);
}
END_TEST

START_TEST(wrong_lsn_magic_crc_or_size_is_rejected)
{
	struct pcache_kset_om *ks = mk(5, 42, 0);

	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 41, 16), -EUCLEAN);  /* stale lap */
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 43, 16), -EUCLEAN);
	ck_assert_int_eq(pcache_log_kset_check(ks, PCACHE_KSET_SIZE(5) - 1, 42, 16), -EUCLEAN); /* crosses */
	ck_assert_int_eq(pcache_log_kset_check(ks, 8, 42, 16), -EUCLEAN);
	raw[PCACHE_KSET_HDR_SIZE + 3] ^= 1; /* one key bit flipped */
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(5, 42, 0);
	ks->magic ^= 1;
	recrc(ks);
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(5, 42, 0);
	ks->key_num = PCACHE_KSET_MAX_KEYS + 1;
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(0, 42, 0); /* an empty non-LAST kset */
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(2, 42, PCACHE_KSET_LAST); /* LAST with keys */
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(2, 42, 0x80); /* unknown flag */
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks = mk(0, 42, PCACHE_KSET_LAST); /* LAST linking a segment the device does not have */
	ks->next_seg = 16;
	recrc(ks);
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), -EUCLEAN);
	ks->next_seg = 15;
	recrc(ks);
	ck_assert_int_eq(pcache_log_kset_check(ks, 1u << 20, 42, 16), 0);
	memset(raw, 0, sizeof(raw)); /* zeros are never a kset */
	ck_assert_int_eq(pcache_log_kset_check((struct pcache_kset_om *)raw, 1u << 20, 0, 16), -EUCLEAN);
}
END_TEST

START_TEST(key_bounds_are_checked_with_a_message)
{
	struct pcache_key_om k = { .off = 4096, .len = 4096, .image_id = 1, .seg = 3, .seg_off = 8192 };
	char err[256];

	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), 0);
	k.seg = 10;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	ck_assert_ptr_ne(strstr(err, "seg 10"), NULL);
	k.seg = 3;
	k.seg_off = (1u << 20) - 512;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	k.seg_off = 0;
	k.len = 100;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	k.len = 0;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	k.len = 8192;
	k.off = (4u << 20) - 4096; /* crosses a 4 MiB region */
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	ck_assert_ptr_ne(strstr(err, "region"), NULL);
	k.off = 0;
	k.image_id = 0;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	k.image_id = 1;
	k.flags = 0x40;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), -EUCLEAN);
	k.flags = 0;
	k.off = UINT64_MAX - 511; /* off + len wraps */
	k.len = 1024;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, NULL, 0), -EUCLEAN);
	k.off = 0;
	/* a ZERO key has no data position to check */
	k.flags = PCACHE_KEY_ZERO;
	k.seg = 99999;
	ck_assert_int_eq(pcache_log_key_check(&k, 10, 1u << 20, err, sizeof(err)), 0);
}
END_TEST

START_TEST(same_region_maps_to_same_stage)
{
	uint64_t r;
	uint32_t seen = 0;

	for (r = 0; r < 1000; r++) {
		ck_assert_uint_eq(pcache_stage_of(1, r), pcache_stage_of(1, r));
		ck_assert_uint_lt(pcache_stage_of(1, r), PCACHE_NSTAGE);
		seen |= 1u << pcache_stage_of(1, r);
	}
	ck_assert_uint_eq(seen, (1u << PCACHE_NSTAGE) - 1); /* regions spread over every stage */
}
END_TEST

START_TEST(log_has_continuous_lsns_and_flush_epochs)
{
	char cpath[256], ipath[256], err[256];
	struct pcache_cache_opts o;
	struct pcache_attach_opts ao = { .name = "k", .cache_mode = -1 };
	struct pcache_cache *c;
	struct pcache_image *img;
	struct pcache_pos pos, head;
	uint8_t buf[4096];
	uint64_t epoch = 0, lsn, last_epoch_bump_lsn = 0, ksets = 0, lasts = 0, flushes = 0;
	int i;

	check_scratch_path(cpath, sizeof(cpath), "kset-cache");
	check_scratch_path(ipath, sizeof(ipath), "kset-img");
	ck_assert_int_eq(eng_format(cpath, 24u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, 16u << 20, 1);
	eng_opts(&o, cpath);
	o.no_background = true;
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "%s", err);
	ao.path = ipath;
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "%s", err);
	memset(buf, 1, sizeof(buf));
	/* enough ksets to fill more than one 1 MiB key-log segment (LAST records) */
	/* 8 MiB of data, ~1.3 MiB of ksets: fits without GC */
	for (i = 0; i < 16000; i++) {
		ck_assert_int_eq(pcache_image_write(img, buf, ((uint64_t)i * 8192) % (16u << 20), 512,
						    i % 8 ? PCACHE_IO_FUA : 0), 0);
		if (i % 1000 == 999) {
			ck_assert_int_eq(pcache_image_flush(img), 0);
			flushes++;
		}
	}
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	flushes++;
	pcache_cache_dev_get_key_tail(c->cd, &pos);
	pcache_log_head(c, &head);
	for (lsn = pos.lsn; lsn < head.lsn; lsn++) {
		const struct pcache_kset_om *ks =
			(const struct pcache_kset_om *)pcache_seg_ptr(c, pos.seg, pos.off);

		ck_assert_int_eq(pcache_log_kset_check(ks, (uint32_t)(c->seg_size - pos.off), lsn, c->seg_count), 0);
		ck_assert_uint_ge(ks->epoch, epoch); /* never decreases */
		if (ks->epoch > epoch)
			last_epoch_bump_lsn = lsn;
		epoch = ks->epoch;
		if (ks->flags & PCACHE_KSET_LAST) {
			lasts++;
			pos.seg = ks->next_seg;
			pos.off = 0;
		} else {
			ksets++;
			pos.off += PCACHE_KSET_SIZE(ks->key_num);
		}
		pos.lsn = lsn + 1;
	}
	ck_assert_uint_eq(pos.seg, head.seg);
	ck_assert_uint_eq(pos.off, head.off);
	ck_assert_uint_ge(lasts, 1);
	ck_assert_uint_gt(ksets, 10000); /* FUA writes close their kset */
	ck_assert_uint_gt(pcache_cache_dev_seg_count(c->cd), 0);
	ck_assert_uint_ge(epoch, flushes - 2); /* each flush bumped it (the last two: no kset after) */
	ck_assert_uint_gt(last_epoch_bump_lsn, 0);
	/* after a restart the epochs go on from the last one, never back */
	pcache_image_put(img);
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(pcache_image_attach(c, &ao, &img, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pcache_image_write(img, buf, 0, 512, PCACHE_IO_FUA), 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	ck_assert_int_eq(pcache_image_write(img, buf, 0, 512, PCACHE_IO_FUA), 0);
	pcache_cache_dev_get_key_tail(c->cd, &pos);
	pcache_log_head(c, &head);
	epoch = 0;
	for (lsn = pos.lsn; lsn < head.lsn; lsn++) {
		const struct pcache_kset_om *ks =
			(const struct pcache_kset_om *)pcache_seg_ptr(c, pos.seg, pos.off);

		ck_assert_int_eq(pcache_log_kset_check(ks, (uint32_t)(c->seg_size - pos.off), lsn, c->seg_count), 0);
		ck_assert_msg(ks->epoch >= epoch, "lsn %llu: epoch %llu after %llu",
			      (unsigned long long)lsn, (unsigned long long)ks->epoch,
			      (unsigned long long)epoch);
		epoch = ks->epoch;
		if (ks->flags & PCACHE_KSET_LAST) {
			pos.seg = ks->next_seg;
			pos.off = 0;
		} else {
			pos.off += PCACHE_KSET_SIZE(ks->key_num);
		}
	}
	pcache_image_put(img);
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	unlink(cpath);
	unlink(ipath);
}
END_TEST

Suite *cache_kset_suite(void);
Suite *cache_kset_suite(void)
{
	Suite *s = suite_create("cache_kset");
	TCase *tc = tcase_create("Format");
	TCase *tl = tcase_create("Log");

	tcase_add_test(tc, valid_kset_is_accepted);
	tcase_add_test(tc, wrong_lsn_magic_crc_or_size_is_rejected);
	tcase_add_test(tc, key_bounds_are_checked_with_a_message);
	tcase_add_test(tc, same_region_maps_to_same_stage);
	suite_add_tcase(s, tc);
	tcase_set_timeout(tl, 60);
	tcase_add_test(tl, log_has_continuous_lsns_and_flush_epochs);
	suite_add_tcase(s, tl);
	return s;
}
