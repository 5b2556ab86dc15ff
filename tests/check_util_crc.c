/*
 * check_util_crc.c -- CRC32C: known vectors, hardware path equals the table path.
 */
#include <check.h>
#include <stdlib.h>

#include "pcache/util.h"

START_TEST(crc32c_matches_standard_check_value)
{
	/* The standard CRC-32C check value of "123456789" (init ~0, final xor ~0) is 0xE3069283. */
	ck_assert_uint_eq(~pcache_crc32c(~0u, "123456789", 9), 0xE3069283u);
	ck_assert_uint_eq(~pcache_crc32c_sw(~0u, "123456789", 9), 0xE3069283u);
}
END_TEST

START_TEST(crc32c_hw_equals_sw_on_every_length_and_alignment)
{
	unsigned char buf[300];
	size_t off, len;

	for (off = 0; off < sizeof(buf); off++)
		buf[off] = (unsigned char)(off * 131 + 7);
	for (off = 0; off < 9; off++)
		for (len = 0; len + off <= sizeof(buf); len += 7)
			ck_assert_uint_eq(pcache_crc32c(PCACHE_CRC_SEED, buf + off, len),
					  pcache_crc32c_sw(PCACHE_CRC_SEED, buf + off, len));
}
END_TEST

START_TEST(crc32c_detects_single_bit_flip)
{
	unsigned char buf[512] = { 0 };
	uint32_t base = pcache_crc32c(PCACHE_CRC_SEED, buf, sizeof(buf));
	size_t bit;

	for (bit = 0; bit < sizeof(buf) * 8; bit += 13) {
		buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		ck_assert_uint_ne(pcache_crc32c(PCACHE_CRC_SEED, buf, sizeof(buf)), base);
		buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
	}
}
END_TEST

Suite *util_crc_suite(void);
Suite *util_crc_suite(void)
{
	Suite *s = suite_create("crc32c");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, crc32c_matches_standard_check_value);
	tcase_add_test(tc, crc32c_hw_equals_sw_on_every_length_and_alignment);
	tcase_add_test(tc, crc32c_detects_single_bit_flip);
	suite_add_tcase(s, tc);
	return s;
}
