/*
 * check_util_wait.c -- timed waits on the monotonic clock (pcache_cond_wait_until/_ns and
 * pcache_join_until, util.h): a wait ends at its deadline on pcache_now_ns()'s clock (not
 * earlier, whichever clock the condition variable was created with), a deadline already past
 * returns at once, a signal ends the wait with 0, a join gives up at its deadline and succeeds
 * once the thread ends.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "pcache/util.h"

#define MS (1000u * 1000)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* Wait for deadline on cv, re-waiting after spurious wake-ups; returns the last result. */
static int wait_out(pthread_cond_t *cv, uint64_t deadline)
{
	int r;

	pthread_mutex_lock(&mu);
	while ((r = pcache_cond_wait_until(cv, &mu, deadline)) == 0)
		;
	pthread_mutex_unlock(&mu);
	return r;
}

START_TEST(wait_ends_at_its_monotonic_deadline)
{
	pthread_condattr_t ca;
	pthread_cond_t cv_real, cv_mono;
	uint64_t deadline;

	/* a condition variable on the default (wall) clock and one on the monotonic clock */
	ck_assert_int_eq(pthread_cond_init(&cv_real, NULL), 0);
	ck_assert_int_eq(pthread_condattr_init(&ca), 0);
	ck_assert_int_eq(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC), 0);
	ck_assert_int_eq(pthread_cond_init(&cv_mono, &ca), 0);
	pthread_condattr_destroy(&ca);

	deadline = pcache_now_ns() + 50 * MS;
	ck_assert_int_eq(wait_out(&cv_real, deadline), ETIMEDOUT);
	ck_assert_uint_ge(pcache_now_ns(), deadline);
	deadline = pcache_now_ns() + 50 * MS;
	ck_assert_int_eq(wait_out(&cv_mono, deadline), ETIMEDOUT);
	ck_assert_uint_ge(pcache_now_ns(), deadline);

	/* relative form: at least the asked time passes */
	deadline = pcache_now_ns() + 30 * MS;
	pthread_mutex_lock(&mu);
	while (pcache_now_ns() < deadline)
		if (pcache_cond_wait_ns(&cv_real, &mu, 30 * MS) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&mu);
	ck_assert_uint_ge(pcache_now_ns(), deadline);

	/* a deadline already past: ETIMEDOUT at once */
	pthread_mutex_lock(&mu);
	ck_assert_int_eq(pcache_cond_wait_until(&cv_real, &mu, pcache_now_ns() - MS), ETIMEDOUT);
	ck_assert_int_eq(pcache_cond_wait_until(&cv_real, &mu, 0), ETIMEDOUT);
	pthread_mutex_unlock(&mu);
	pthread_cond_destroy(&cv_real);
	pthread_cond_destroy(&cv_mono);
}
END_TEST

static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool flag;

static void *set_flag(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	flag = true;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	return NULL;
}

START_TEST(signal_ends_the_wait)
{
	uint64_t deadline = pcache_now_ns() + 600ull * 1000 * MS;
	pthread_t t;
	int r = 0;

	flag = false;
	ck_assert_int_eq(pthread_create(&t, NULL, set_flag, NULL), 0);
	pthread_mutex_lock(&mu);
	while (!flag && (r = pcache_cond_wait_until(&cv, &mu, deadline)) == 0)
		;
	pthread_mutex_unlock(&mu);
	ck_assert_int_eq(r, 0);
	ck_assert(flag);
	ck_assert_uint_lt(pcache_now_ns(), deadline);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
}
END_TEST

static void *wait_flag(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	while (!flag)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return NULL;
}

START_TEST(join_gives_up_at_its_deadline)
{
	uint64_t deadline;
	pthread_t t;

	flag = false;
	ck_assert_int_eq(pthread_create(&t, NULL, wait_flag, NULL), 0);
	deadline = pcache_now_ns() + 40 * MS;
	ck_assert_int_eq(pcache_join_until(t, deadline), ETIMEDOUT);
	ck_assert_uint_ge(pcache_now_ns(), deadline);
	set_flag(NULL);
	ck_assert_int_eq(pcache_join_until(t, pcache_now_ns() + 600ull * 1000 * MS), 0);
}
END_TEST

Suite *util_wait_suite(void);
Suite *util_wait_suite(void)
{
	Suite *s = suite_create("util_wait");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, wait_ends_at_its_monotonic_deadline);
	tcase_add_test(tc, signal_ends_the_wait);
	tcase_add_test(tc, join_gives_up_at_its_deadline);
	suite_add_tcase(s, tc);
	return s;
}
