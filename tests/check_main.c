/*
 * check_main.c -- the one Check runner for every unit-test suite.
 *
 * Each tests/check_<module>.c exports <module>_suite(); the Makefile lists them in suites.h
 * (one SUITE(name) line per file), so adding a suite needs no edit here. Fork mode stays on so
 * a crash fails one test instead of the run. CK_RUN_SUITE / CK_RUN_CASE select, CK_FORK=no
 * debugs. The exit status is EXIT_FAILURE when any test failed, so make stops on it.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "check_util.h"

#define SUITE(name) Suite *name##_suite(void);
#include "suites.h"
#undef SUITE

int main(void)
{
	SRunner *sr = srunner_create(NULL);
	int failed;

	check_scratch_dir(); /* created by the parent, shared by the forked tests */

#define SUITE(name) srunner_add_suite(sr, name##_suite());
#include "suites.h"
#undef SUITE

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
