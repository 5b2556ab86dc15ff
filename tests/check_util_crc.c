/*
 * check_util_crc.c -- CRC32C: known vectors, hardware path equals the table path (each forced
 * through pcache_crc32c_set_impl; the runner forks per test, so a forced path ends with it).
 */
#include <check.h>
#include <errno.h>
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

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: reproducible buffers without touching rand()'s global state */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

START_TEST(crc32c_forced_paths_agree_on_random_buffers)
{
	static unsigned char buf[8192 + 8];
	uint64_t seed = 0x9E3779B97F4A7C15ull;
	uint32_t sw, hw, crc;
	size_t i, off, len;
	int round;

	if (!pcache_crc32c_has_hw()) {
		/* this build or CPU has no fast path: forcing it is refused, the table serves */
		ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_HW), -ENOTSUP);
		return;
	}
	for (round = 0; round < 400; round++) {
		for (i = 0; i < sizeof(buf); i += 8) {
			uint64_t v = rng_next(&seed);

			memcpy(buf + i, &v, 8);
		}
		off = rng_next(&seed) % 8;
		len = round < 64 ? (size_t)round : rng_next(&seed) % (sizeof(buf) - off);
		crc = (uint32_t)rng_next(&seed);
		ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_SW), 0);
		sw = pcache_crc32c(crc, buf + off, len);
		ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_HW), 0);
		hw = pcache_crc32c(crc, buf + off, len);
		ck_assert_msg(sw == hw, "round %d: off %zu len %zu seed %08x: table %08x, hw %08x", round,
			      off, len, crc, sw, hw);
		ck_assert_uint_eq(sw, pcache_crc32c_sw(crc, buf + off, len));
	}
	/* both forced paths give the standard check value too */
	ck_assert_uint_eq(~pcache_crc32c(~0u, "123456789", 9), 0xE3069283u);
	ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_SW), 0);
	ck_assert_uint_eq(~pcache_crc32c(~0u, "123456789", 9), 0xE3069283u);
}
END_TEST

START_TEST(crc32c_fast_path_is_chosen_at_run_time)
{
#if defined(__x86_64__)
	/* x86-64 builds carry the SSE4.2 path and use it exactly when the CPU has the instruction */
	__builtin_cpu_init();
	ck_assert_int_eq(pcache_crc32c_has_hw(), !!__builtin_cpu_supports("sse4.2"));
#endif
	ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_HW), pcache_crc32c_has_hw() ? 0 : -ENOTSUP);
	ck_assert_int_eq(pcache_crc32c_set_impl(PCACHE_CRC_IMPL_AUTO), 0);
	ck_assert_int_eq(pcache_crc32c_set_impl((enum pcache_crc_impl)42), -EINVAL);
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
	tcase_add_test(tc, crc32c_forced_paths_agree_on_random_buffers);
	tcase_add_test(tc, crc32c_fast_path_is_chosen_at_run_time);
	tcase_add_test(tc, crc32c_detects_single_bit_flip);
	suite_add_tcase(s, tc);
	return s;
}
