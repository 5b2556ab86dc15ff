/*
 * check_cache_key.c -- the index (core/cache_key.c): insert with fixup, the four ways a new
 * key can overlap an old one (covers it, is inside it, overlaps its front, overlaps its back)
 * and their combinations with EMPTY placeholders, and a randomized comparison against a
 * per-sector model.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/cache_i.h"
#include "check_util.h"

static struct pcache_ikey mk(uint32_t off, uint32_t len, uint32_t seg, uint32_t seg_off, uint16_t flags)
{
	struct pcache_ikey k;

	memset(&k, 0, sizeof(k));
	k.off = off;
	k.len = len;
	k.seg = seg;
	k.seg_off = seg_off;
	k.flags = flags;
	return k;
}

static struct pcache_subtree st;

static void setup(void)
{
	memset(&st, 0, sizeof(st));
	pthread_mutex_init(&st.lock, NULL);
}

static void teardown(void)
{
	free(st.v);
	pthread_mutex_destroy(&st.lock);
}

static void ins(struct pcache_ikey k)
{
	ck_assert_int_eq(pcache_subtree_insert(&st, &k), 0);
}

static void expect(uint32_t i, uint32_t off, uint32_t len, uint32_t seg, uint32_t seg_off)
{
	ck_assert_uint_gt(st.n, i);
	ck_assert_uint_eq(st.v[i].off, off);
	ck_assert_uint_eq(st.v[i].len, len);
	ck_assert_uint_eq(st.v[i].seg, seg);
	ck_assert_uint_eq(st.v[i].seg_off, seg_off);
}

START_TEST(insert_into_empty_and_disjoint_keeps_order)
{
	ins(mk(4096, 512, 1, 0, 0));
	ins(mk(0, 512, 2, 0, 0));
	ins(mk(8192, 1024, 3, 0, 0));
	ck_assert_uint_eq(st.n, 3);
	expect(0, 0, 512, 2, 0);
	expect(1, 4096, 512, 1, 0);
	expect(2, 8192, 1024, 3, 0);
	ck_assert_uint_eq(pcache_subtree_find(&st, 0), 0);
	ck_assert_uint_eq(pcache_subtree_find(&st, 512), 1);
	ck_assert_uint_eq(pcache_subtree_find(&st, 4607), 1);
	ck_assert_uint_eq(pcache_subtree_find(&st, 4608), 2);
	ck_assert_uint_eq(pcache_subtree_find(&st, 9216), 3);
}
END_TEST

START_TEST(tail_case_cuts_front_and_advances_position)
{
	ins(mk(1024, 2048, 1, 100 * 512, 0));   /* T = [1024, 3072) */
	ins(mk(512, 1024, 2, 0, 0));            /* N = [512, 1536): T starts inside N */
	ck_assert_uint_eq(st.n, 2);
	expect(0, 512, 1024, 2, 0);
	expect(1, 1536, 1536, 1, 100 * 512 + 512);
	ck_assert_uint_eq(st.v[1].crc_front, 512);
}
END_TEST

START_TEST(contain_case_deletes_covered_keys)
{
	ins(mk(1024, 512, 1, 0, 0));
	ins(mk(2048, 512, 2, 0, 0));
	ins(mk(0, 4096, 3, 0, 0));
	ck_assert_uint_eq(st.n, 1);
	expect(0, 0, 4096, 3, 0);
}
END_TEST

START_TEST(contained_case_splits_the_old_key)
{
	ins(mk(0, 4096, 1, 8192, 0));
	ins(mk(1024, 512, 2, 0, 0));
	ck_assert_uint_eq(st.n, 3);
	expect(0, 0, 1024, 1, 8192);
	expect(1, 1024, 512, 2, 0);
	expect(2, 1536, 2560, 1, 8192 + 1536);
}
END_TEST

START_TEST(head_case_cuts_back)
{
	ins(mk(0, 2048, 1, 0, 0));
	ins(mk(1024, 2048, 2, 0, 0));
	ck_assert_uint_eq(st.n, 2);
	expect(0, 0, 1024, 1, 0);
	expect(1, 1024, 2048, 2, 0);
}
END_TEST

START_TEST(all_cases_at_once)
{
	ins(mk(0, 1024, 1, 0, 0));       /* head */
	ins(mk(1536, 512, 2, 0, 0));     /* contain */
	ins(mk(2560, 1536, 3, 0, 0));    /* tail */
	ins(mk(512, 2560, 4, 0, 0));     /* N = [512, 3072) */
	ck_assert_uint_eq(st.n, 3);
	expect(0, 0, 512, 1, 0);
	expect(1, 512, 2560, 4, 0);
	expect(2, 3072, 1024, 3, 512);
}
END_TEST

START_TEST(empty_placeholder_is_deleted_not_front_cut)
{
	ins(mk(1024, 2048, 77, 0, PCACHE_IKEY_EMPTY)); /* placeholder [1024, 3072) */
	ins(mk(512, 1024, 2, 0, 0));                     /* covers its front */
	ck_assert_uint_eq(st.n, 1);
	expect(0, 512, 1024, 2, 0);
}
END_TEST

START_TEST(empty_placeholder_contained_keeps_only_head)
{
	ins(mk(0, 4096, 77, 0, PCACHE_IKEY_EMPTY));
	ins(mk(1024, 512, 2, 0, 0));
	ck_assert_uint_eq(st.n, 2);
	expect(0, 0, 1024, 77, 0);
	ck_assert(st.v[0].flags & PCACHE_IKEY_EMPTY);
	expect(1, 1024, 512, 2, 0);
}
END_TEST

START_TEST(empty_placeholder_head_case_cut_back)
{
	ins(mk(0, 2048, 77, 0, PCACHE_IKEY_EMPTY));
	ins(mk(1024, 2048, 2, 0, 0));
	ck_assert_uint_eq(st.n, 2);
	expect(0, 0, 1024, 77, 0);
	expect(1, 1024, 2048, 2, 0);
}
END_TEST

START_TEST(empty_placeholders_among_keys)
{
	ins(mk(0, 512, 1, 0, 0));
	ins(mk(512, 1024, 70, 0, PCACHE_IKEY_EMPTY));
	ins(mk(1536, 512, 2, 0, 0));
	ins(mk(2048, 2048, 71, 0, PCACHE_IKEY_EMPTY));
	ins(mk(1024, 2048, 3, 0, 0)); /* cuts 70's back, removes 2, removes 71 (front overlap) */
	ck_assert_uint_eq(st.n, 3);
	expect(0, 0, 512, 1, 0);
	expect(1, 512, 512, 70, 0);
	expect(2, 1024, 2048, 3, 0);
}
END_TEST

START_TEST(zero_keys_are_cut_without_position)
{
	ins(mk(0, 4096, 0, 0, PCACHE_KEY_ZERO));
	ins(mk(1024, 512, 2, 0, 0));
	ck_assert_uint_eq(st.n, 3);
	expect(2, 1536, 2560, 0, 0);
	ck_assert(st.v[2].flags & PCACHE_KEY_ZERO);
}
END_TEST

/* Model: per 512-byte sector, the id of the key covering it (0 = none) and its data sector. */
#define MSECT 256
START_TEST(random_inserts_match_sector_model)
{
	uint32_t owner[MSECT], pos[MSECT], iter, s, i;
	unsigned int seed = 12345;
	uint32_t n = check_under_tsan() ? 2000 : 20000;

	memset(owner, 0, sizeof(owner));
	for (iter = 1; iter <= n; iter++) {
		uint32_t a = (uint32_t)rand_r(&seed) % MSECT;
		uint32_t l = 1 + (uint32_t)rand_r(&seed) % (MSECT - a < 40 ? MSECT - a : 40);

		ins(mk(a * 512, l * 512, iter, iter * 4096, 0));
		for (s = a; s < a + l; s++) {
			owner[s] = iter;
			pos[s] = iter * 4096 + (s - a) * 512;
		}
		if (iter % 97)
			continue;
		/* check: sorted, non-overlapping, equal to the model */
		for (i = 0; i + 1 < st.n; i++)
			ck_assert_uint_le(st.v[i].off + st.v[i].len, st.v[i + 1].off);
		for (i = 0; i < st.n; i++)
			for (s = st.v[i].off / 512; s < (st.v[i].off + st.v[i].len) / 512; s++) {
				ck_assert_uint_eq(owner[s], st.v[i].seg);
				ck_assert_uint_eq(pos[s], st.v[i].seg_off + (s * 512 - st.v[i].off));
			}
	}
	ck_assert_uint_gt(st.n, 1);
}
END_TEST

START_TEST(ikey_is_40_bytes)
{
	ck_assert_uint_eq(sizeof(struct pcache_ikey), 40);
}
END_TEST

Suite *cache_key_suite(void);
Suite *cache_key_suite(void)
{
	Suite *s = suite_create("cache_key");
	TCase *tc = tcase_create("Fixup");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, insert_into_empty_and_disjoint_keeps_order);
	tcase_add_test(tc, tail_case_cuts_front_and_advances_position);
	tcase_add_test(tc, contain_case_deletes_covered_keys);
	tcase_add_test(tc, contained_case_splits_the_old_key);
	tcase_add_test(tc, head_case_cuts_back);
	tcase_add_test(tc, all_cases_at_once);
	tcase_add_test(tc, empty_placeholder_is_deleted_not_front_cut);
	tcase_add_test(tc, empty_placeholder_contained_keeps_only_head);
	tcase_add_test(tc, empty_placeholder_head_case_cut_back);
	tcase_add_test(tc, empty_placeholders_among_keys);
	tcase_add_test(tc, zero_keys_are_cut_without_position);
	tcase_add_test(tc, random_inserts_match_sector_model);
	tcase_add_test(tc, ikey_is_40_bytes);
	suite_add_tcase(s, tc);
	return s;
}
