/*
 * check_util.c -- scratch directory and pattern files for the Check suites (see check_util.h).
 *
 * Named check_util.c (not check_<module>.c with a suite) -- the Makefile treats every
 * tests/check_*.c as a suite source, so this file exports an empty-named marker suite
 * util_suite() with one test of the helpers themselves.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_util.h"

static char scratch[256];
static pid_t scratch_owner;

static void scratch_remove(void)
{
	char cmd[300];

	/* Forked test processes inherit this handler: only the creator removes the directory. */
	if (scratch[0] && getpid() == scratch_owner && !getenv("PCACHE_KEEP_SCRATCH")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
		if (system(cmd) != 0)
			fprintf(stderr, "check_util: could not remove %s\n", scratch);
	}
}

const char *check_scratch_dir(void)
{
	const char *env;

	if (scratch[0])
		return scratch;
	env = getenv("PCACHE_SCRATCH");
	if (env && *env) {
		snprintf(scratch, sizeof(scratch), "%s", env);
		return scratch;
	}
	snprintf(scratch, sizeof(scratch), "/dev/shm/pcache-check.XXXXXX");
	if (!mkdtemp(scratch)) {
		snprintf(scratch, sizeof(scratch), "/tmp/pcache-check.XXXXXX");
		if (!mkdtemp(scratch))
			abort();
	}
	scratch_owner = getpid();
	atexit(scratch_remove);
	return scratch;
}

char *check_scratch_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", check_scratch_dir(), name);
	return buf;
}

uint8_t check_pattern_byte(uint64_t off, uint32_t seed)
{
	uint64_t x = (off >> 3) * 0x9E3779B97F4A7C15ULL + seed * 0xD1B54A32D192ED03ULL;

	x ^= x >> 29;
	x *= 0xBF58476D1CE4E5B9ULL;
	x ^= x >> 32;
	return (uint8_t)(x >> ((off & 7) * 8));
}

void check_make_file(const char *path, uint64_t size, uint32_t seed)
{
	static uint8_t buf[1 << 16];
	uint64_t off;
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);

	ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
	for (off = 0; off < size; off += sizeof(buf)) {
		size_t n = size - off < sizeof(buf) ? (size_t)(size - off) : sizeof(buf);
		size_t i;

		for (i = 0; i < n; i++)
			buf[i] = check_pattern_byte(off + i, seed);
		ck_assert_int_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
	}
	close(fd);
}

int check_under_tsan(void)
{
	return getenv("PCACHE_TSAN") != NULL;
}

START_TEST(pattern_differs_by_seed_and_offset)
{
	int same = 0;
	uint64_t i;

	for (i = 0; i < 4096; i++)
		same += check_pattern_byte(i, 1) == check_pattern_byte(i, 2);
	ck_assert_int_lt(same, 64);
	ck_assert_int_ne(check_pattern_byte(0, 1) | check_pattern_byte(1, 1) << 8,
			 check_pattern_byte(8, 1) | check_pattern_byte(9, 1) << 8);
}
END_TEST

Suite *util_suite(void);
Suite *util_suite(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, pattern_differs_by_seed_and_offset);
	suite_add_tcase(s, tc);
	return s;
}
