/*
 * check_main.c -- the one Check runner for every unit-test suite.
 *
 * Each tests/check_<module>.c exports <module>_suite(); the table below lists them, with the
 * suites that also run under the thread sanitizer (the engine's concurrency tests) marked. To
 * add a suite: write its file, declare its function here and add one line to the table. Fork
 * mode stays on so a crash fails one test instead of the run. CK_RUN_SUITE / CK_RUN_CASE select,
 * CK_FORK=no debugs; PCACHE_TSAN=1 (make tsan-unit) runs only the marked suites. The exit
 * status is EXIT_FAILURE when any test failed, so make stops on it.
 */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "check_util.h"

Suite *backing_suite(void);
Suite *cache_conc_suite(void);
Suite *cache_crash_suite(void);
Suite *cache_dev_suite(void);
Suite *cache_dirty_suite(void);
Suite *cache_gc_suite(void);
Suite *cache_ident_suite(void);
Suite *cache_key_suite(void);
Suite *cache_kset_suite(void);
Suite *cache_media_suite(void);
Suite *cache_model_suite(void);
Suite *cache_pin_suite(void);
Suite *cache_replay_suite(void);
Suite *cache_req_suite(void);
Suite *cache_space_suite(void);
Suite *cache_wbskip_suite(void);
Suite *cache_writeback_suite(void);
Suite *daemon_knobs_suite(void);
Suite *log_suite(void);
Suite *util_suite(void);
Suite *util_crc_suite(void);
Suite *util_log_suite(void);
Suite *util_text_suite(void);
Suite *util_wait_suite(void);

static const struct {
	Suite *(*make)(void);
	bool tsan;             /* also run under the thread sanitizer */
} suites[] = {
	{ backing_suite, true },
	{ cache_conc_suite, true },
	{ cache_crash_suite, false },
	{ cache_dev_suite, true },
	{ cache_dirty_suite, true },
	{ cache_gc_suite, false },
	{ cache_ident_suite, false },
	{ cache_key_suite, false },
	{ cache_kset_suite, false },
	{ cache_media_suite, false },
	{ cache_model_suite, false },
	{ cache_pin_suite, true },
	{ cache_replay_suite, false },
	{ cache_req_suite, false },
	{ cache_space_suite, false },
	{ cache_wbskip_suite, true },
	{ cache_writeback_suite, true },
	{ daemon_knobs_suite, false },
	{ log_suite, false },
	{ util_suite, false },
	{ util_crc_suite, false },
	{ util_log_suite, false },
	{ util_text_suite, false },
	{ util_wait_suite, false },
};

int main(void)
{
	SRunner *sr = NULL;
	bool tsan = check_under_tsan();
	size_t i;
	int failed;

	check_scratch_dir(); /* created by the parent, shared by the forked tests */
	for (i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
		if (tsan && !suites[i].tsan)
			continue;
		if (!sr)
			sr = srunner_create(suites[i].make());
		else
			srunner_add_suite(sr, suites[i].make());
	}
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
