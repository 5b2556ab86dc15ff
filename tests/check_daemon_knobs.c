/*
 * check_daemon_knobs.c -- the daemon's control-file text for tunables (fuse/knobs.c): what a
 * write to .pcache/gc_percent & co. or to an image's cache_mode accepts, what it refuses (and
 * that a refusal changes nothing), and that an accepted value reaches the engine and reads
 * back as one line.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

static char cpath[256], ipath[256];
static struct pcache_cache *c;
static struct pcache_image *img;

static void setup(void)
{
	char err[256];

	check_scratch_path(cpath, sizeof(cpath), "knobs-cache");
	check_scratch_path(ipath, sizeof(ipath), "knobs-img");
	ck_assert_int_eq(eng_format(cpath, 16u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, 1u << 20, 1);
	ck_assert_msg(eng_start(cpath, ipath, "vm1", false, false, &c, &img, err, sizeof(err)) == 0,
		      "start: %s", err);
}

static void teardown(void)
{
	pcache_image_put(img);
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	unlink(cpath);
	unlink(ipath);
}

START_TEST(numbers_are_one_decimal_line)
{
	static const struct {
		const char *text;
		uint64_t max;
		int ret;
		uint64_t v;
	} cases[] = {
		{ "50", 90, 0, 50 },      { "50\n", 90, 0, 50 },   { " 7 \n", 90, 0, 7 },
		{ "0", 90, 0, 0 },        { "90", 90, 0, 90 },     { "91", 90, -EINVAL, 0 },
		{ "x", 90, -EINVAL, 0 },  { "", 90, -EINVAL, 0 },  { "\n", 90, -EINVAL, 0 },
		{ "-1", 90, -EINVAL, 0 }, { "+1", 90, -EINVAL, 0 }, { "5\n\n", 90, -EINVAL, 0 },
		{ "5 6", 90, -EINVAL, 0 }, { "0x10", 90, -EINVAL, 0 }, { "12k", 90, -EINVAL, 0 },
		{ "18446744073709551615", UINT64_MAX, 0, UINT64_MAX },
		{ "18446744073709551616", UINT64_MAX, -EINVAL, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		int r = pfs_knob_parse(cases[i].text, cases[i].max, &v);

		ck_assert_msg(r == cases[i].ret, "'%s': %d, want %d", cases[i].text, r, cases[i].ret);
		ck_assert_msg(r ? v == 12345 : v == cases[i].v, "'%s': value %llu", cases[i].text,
			      (unsigned long long)v);
	}
}
END_TEST

START_TEST(cache_knobs_by_name_reach_the_engine)
{
	char buf[32];

	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "50\n"), 0);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), 50);
	ck_assert_int_eq(pfs_knob_get(c, "gc_percent", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "50\n");
	/* refused: nothing changes */
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "91"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "x"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "autos"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "255"), -EINVAL); /* auto is spelt out */
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), 50);
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", " auto\n"), 0);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_GC_PERCENT), PCACHE_GC_PERCENT_AUTO);
	ck_assert_int_eq(pfs_knob_get(c, "gc_percent", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "auto\n");
	ck_assert_int_eq(pfs_knob_set(c, "gc_percent", "50"), 0);
	ck_assert_int_eq(pfs_knob_set(c, "nope", "1"), -EINVAL);
	ck_assert_int_eq(pfs_knob_get(c, "nope", buf, sizeof(buf)), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "space_timeout", "lots"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "space_timeout", "-1"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "space_timeout", "86401"), -EINVAL);
	ck_assert_int_eq(pfs_knob_set(c, "space_timeout", "2\n"), 0);
	ck_assert_uint_eq(pcache_cache_get(c, PCACHE_KNOB_SPACE_TIMEOUT), 2);
	ck_assert_int_eq(pfs_knob_set(c, "writeback_rate", "1048576"), 0);
	ck_assert_int_eq(pfs_knob_get(c, "writeback_rate", buf, sizeof(buf)), 0);
	ck_assert_str_eq(buf, "1048576\n");
	ck_assert_int_eq(pfs_knob_get(c, "writeback_rate", buf, 4), -ENOSPC);
	/* every knob has a name and the name leads back to it */
	for (int k = 0; k < PCACHE_KNOB_COUNT; k++)
		ck_assert_int_eq(pfs_knob_by_name(pfs_knob_name((enum pcache_knob)k)), k);
	ck_assert_ptr_null(pfs_knob_name(PCACHE_KNOB_COUNT));
}
END_TEST

START_TEST(cache_mode_by_name)
{
	ck_assert_int_eq(pfs_mode_set(img, "writethrough\n"), 0);
	ck_assert_uint_eq(pcache_image_cache_mode(img), PCACHE_MODE_WRITETHROUGH);
	ck_assert_int_eq(pfs_mode_set(img, "bogus"), -EINVAL);
	ck_assert_int_eq(pfs_mode_set(img, "writeback extra"), -EINVAL);
	ck_assert_uint_eq(pcache_image_cache_mode(img), PCACHE_MODE_WRITETHROUGH);
	ck_assert_int_eq(pfs_mode_set(img, "writearound"), 0);
	ck_assert_uint_eq(pcache_image_cache_mode(img), PCACHE_MODE_WRITEAROUND);
}
END_TEST

/* The hand-over state a keeper passes on is checked before use (handover.c). */
START_TEST(handover_state_is_checked_on_receipt)
{
	static struct pfs_hstate st, bad;

	memset(&st, 0, sizeof(st));
	st.magic = PFS_HSTATE_MAGIC;
	st.version = PFS_HSTATE_VERSION;
	st.size = sizeof(st);
	st.init_len = 104;
	strcpy(st.cache_path, "/dev/pmem0");
	strcpy(st.mountpoint, "/srv/pcache");
	st.slots[3].attached = 1;
	st.slots[3].gen = 7;
	strcpy(st.slots[3].name, "vm1");
	ck_assert_int_eq(pfs_hstate_check(&st, sizeof(st)), 0);
	ck_assert_int_eq(pfs_hstate_check(&st, sizeof(st) - 1), -EPROTO);
	bad = st;
	bad.magic++;
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
	bad = st;
	bad.version++;
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
	bad = st;
	bad.init_len = PFS_HSTATE_INIT_MAX + 1;
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
	bad = st;
	memset(bad.cache_path, 'x', sizeof(bad.cache_path));   /* no terminator */
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
	bad = st;
	strcpy(bad.slots[3].name, "../x");
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
	bad = st;
	bad.slots[5].attached = 2;
	ck_assert_int_eq(pfs_hstate_check(&bad, sizeof(bad)), -EPROTO);
}
END_TEST

/* One socket per mount point, whatever slashes the user typed; under $PCACHEFS_RUN_DIR. */
START_TEST(keeper_socket_per_mount_point)
{
	char a[128], b[128], other[128];

	setenv("PCACHEFS_RUN_DIR", "/tmp/pcfs-run", 1);
	ck_assert_int_eq(pfs_keeper_sock_path("/srv/pcache", a, sizeof(a)), 0);
	ck_assert_int_eq(pfs_keeper_sock_path("/srv//pcache/", b, sizeof(b)), 0);
	ck_assert_int_eq(pfs_keeper_sock_path("/srv/pcache2", other, sizeof(other)), 0);
	ck_assert_str_eq(a, b);
	ck_assert_str_ne(a, other);
	ck_assert_int_eq(strncmp(a, "/tmp/pcfs-run/keep-", 19), 0);
	ck_assert_int_eq(pfs_keeper_sock_path("/srv/pcache", a, 20), -ENAMETOOLONG);
	unsetenv("PCACHEFS_RUN_DIR");
}
END_TEST

Suite *daemon_knobs_suite(void);
Suite *daemon_knobs_suite(void)
{
	Suite *s = suite_create("daemon_knobs");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, numbers_are_one_decimal_line);
	tcase_add_test(tc, handover_state_is_checked_on_receipt);
	tcase_add_test(tc, keeper_socket_per_mount_point);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, cache_knobs_by_name_reach_the_engine);
	tcase_add_test(tc, cache_mode_by_name);
	suite_add_tcase(s, tc);
	return s;
}
