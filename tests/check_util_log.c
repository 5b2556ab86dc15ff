/*
 * check_util_log.c -- the log hook and the rate limit of repeated lines (pcache_log, util.h):
 * lines reach the hook with their level, a format gets its burst per interval and the next
 * interval starts with the count of dropped lines, formats have separate budgets, burst 0
 * turns the limit off.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pcache/util.h"

static char got[64][256];
static int got_level[64];
static int ngot;

static void capture(int level, const char *line)
{
	if (ngot < 64) {
		got_level[ngot] = level;
		snprintf(got[ngot], sizeof(got[ngot]), "%s", line);
	}
	ngot++;
}

static void setup(void)
{
	ngot = 0;
	pcache_set_log_hook(capture);
}

static void teardown(void)
{
	pcache_set_log_hook(NULL);
	pcache_set_log_ratelimit(PCACHE_LOG_BURST, PCACHE_LOG_INTERVAL_NS);
}

START_TEST(log_reaches_the_hook_with_its_level)
{
	pcache_log(PCACHE_LOG_WARNING, "segment %u: %s", 7u, "odd\n");
	ck_assert_int_eq(ngot, 1);
	ck_assert_int_eq(got_level[0], PCACHE_LOG_WARNING);
	ck_assert_str_eq(got[0], "segment 7: odd");   /* a trailing newline is dropped */
}
END_TEST

START_TEST(log_repeats_are_limited_then_counted)
{
	int i;

	pcache_set_log_ratelimit(3, 200ull * 1000 * 1000);
	for (i = 0; i < 10; i++)
		pcache_log(PCACHE_LOG_ERR, "image %s: CRC mismatch at %d", "a", i);
	ck_assert_int_eq(ngot, 3);
	ck_assert_str_eq(got[2], "image a: CRC mismatch at 2");
	/* another format has its own budget */
	pcache_log(PCACHE_LOG_ERR, "gc: %s", "stuck");
	ck_assert_int_eq(ngot, 4);
	usleep(250 * 1000);
	pcache_log(PCACHE_LOG_ERR, "image %s: CRC mismatch at %d", "a", 99);
	ck_assert_int_eq(ngot, 6);
	ck_assert_str_eq(got[4], "7 similar messages suppressed: image %s: CRC mismatch at %d");
	ck_assert_int_eq(got_level[4], PCACHE_LOG_ERR);
	ck_assert_str_eq(got[5], "image a: CRC mismatch at 99");
}
END_TEST

START_TEST(log_burst_zero_is_unlimited)
{
	pcache_set_log_ratelimit(0, 0);
	for (int i = 0; i < 40; i++)
		pcache_log(PCACHE_LOG_INFO, "line %d", i);
	ck_assert_int_eq(ngot, 40);
}
END_TEST

/* one call site (format) per n */
#define LOG_F(n) pcache_log(PCACHE_LOG_INFO, "f" #n " %d", n)

START_TEST(log_many_formats_do_not_break_the_table)
{
	/* more formats (36) than the table holds: the first line of each still gets through */
	pcache_set_log_ratelimit(1, 60ull * 1000 * 1000 * 1000);
	LOG_F(0); LOG_F(1); LOG_F(2); LOG_F(3); LOG_F(4); LOG_F(5); LOG_F(6); LOG_F(7); LOG_F(8);
	LOG_F(9); LOG_F(10); LOG_F(11); LOG_F(12); LOG_F(13); LOG_F(14); LOG_F(15); LOG_F(16);
	LOG_F(17); LOG_F(18); LOG_F(19); LOG_F(20); LOG_F(21); LOG_F(22); LOG_F(23); LOG_F(24);
	LOG_F(25); LOG_F(26); LOG_F(27); LOG_F(28); LOG_F(29); LOG_F(30); LOG_F(31); LOG_F(32);
	LOG_F(33); LOG_F(34); LOG_F(35);
	ck_assert_int_eq(ngot, 36);
	ck_assert_str_eq(got[35], "f35 35");
	/* a repeat of a recent one is still dropped */
	LOG_F(35);
	ck_assert_int_eq(ngot, 36);
}
END_TEST

Suite *util_log_suite(void);
Suite *util_log_suite(void)
{
	Suite *s = suite_create("util_log");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, log_reaches_the_hook_with_its_level);
	tcase_add_test(tc, log_repeats_are_limited_then_counted);
	tcase_add_test(tc, log_burst_zero_is_unlimited);
	tcase_add_test(tc, log_many_formats_do_not_break_the_table);
	suite_add_tcase(s, tc);
	return s;
}
