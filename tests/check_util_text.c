/*
 * check_util_text.c -- the one size parser, size formatter, cache-mode name table and JSON
 * string writer shared by pcachefs (options, control files, status) and pcachectl (core/util.c).
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pcache/format.h"
#include "pcache/util.h"

START_TEST(sizes_parse_in_every_spelling_both_programs_took)
{
	static const struct { const char *s; uint64_t v; } ok[] = {
		{ "0", 0 }, { "4096", 4096 }, { "512B", 512 }, { "512b", 512 }, { "4K", 4096 },
		{ "4k", 4096 }, { "4Ki", 4096 }, { "4KiB", 4096 }, { "4kb", 4096 }, { "16M", 16u << 20 },
		{ "1G", 1ull << 30 }, { "2T", 2ull << 40 }, { "1GiB", 1ull << 30 },
	};
	static const char *const bad[] = {
		"", "-1", "+1", "K", "4X", "4KK", "4 K", "4Kx", "1.5G", "99999999999999999999",
		"17179869184T", "4iB", " 4",
	};
	uint64_t v;

	for (size_t i = 0; i < PCACHE_ARRAY_SIZE(ok); i++) {
		v = 1;
		ck_assert_msg(pcache_parse_size(ok[i].s, &v) == 0, "'%s' refused", ok[i].s);
		ck_assert_msg(v == ok[i].v, "'%s' = %llu", ok[i].s, (unsigned long long)v);
	}
	for (size_t i = 0; i < PCACHE_ARRAY_SIZE(bad); i++)
		ck_assert_msg(pcache_parse_size(bad[i], &v) == -EINVAL, "'%s' accepted", bad[i]);
	ck_assert_int_eq(pcache_parse_size(NULL, &v), -EINVAL);
}
END_TEST

START_TEST(sizes_format_exact_or_with_one_decimal)
{
	char b[32];

	ck_assert_str_eq(pcache_fmt_size(0, b, sizeof(b)), "0 B");
	ck_assert_str_eq(pcache_fmt_size(512, b, sizeof(b)), "512 B");
	ck_assert_str_eq(pcache_fmt_size(16u << 20, b, sizeof(b)), "16 MiB");
	ck_assert_str_eq(pcache_fmt_size(3ull << 29, b, sizeof(b)), "1.5 GiB");
	ck_assert_str_eq(pcache_fmt_size(1ull << 50, b, sizeof(b)), "1 PiB");
	/* what it prints, the parser reads back (exact values) */
	ck_assert_str_eq(pcache_fmt_size(4096, b, sizeof(b)), "4 KiB");
}
END_TEST

START_TEST(mode_names_round_trip)
{
	for (uint32_t m = PCACHE_MODE_WRITEBACK; m <= PCACHE_MODE_WRITEAROUND; m++) {
		char line[32];

		ck_assert_int_eq(pcache_mode_parse(pcache_mode_name(m)), (int)m);
		snprintf(line, sizeof(line), "%s\n", pcache_mode_name(m));
		ck_assert_int_eq(pcache_mode_parse(line), (int)m); /* as written to a control file */
	}
	ck_assert_str_eq(pcache_mode_name(PCACHE_MODE_WRITEAROUND + 1), "unknown");
	ck_assert_int_eq(pcache_mode_parse("unknown"), -EINVAL);
	ck_assert_int_eq(pcache_mode_parse("write"), -EINVAL);
	ck_assert_int_eq(pcache_mode_parse("writebackx"), -EINVAL);
	ck_assert_int_eq(pcache_mode_parse(""), -EINVAL);
}
END_TEST

struct sink {
	char buf[256];
	size_t n;
	int pieces;
};

static void sink_put(void *arg, const char *p, size_t n)
{
	struct sink *s = arg;

	ck_assert_uint_lt(s->n + n, sizeof(s->buf));
	memcpy(s->buf + s->n, p, n);
	s->n += n;
	s->buf[s->n] = '\0';
	s->pieces++;
}

static const char *json(const char *in)
{
	static struct sink s;

	memset(&s, 0, sizeof(s));
	pcache_json_string(in, sink_put, &s);
	return s.buf;
}

START_TEST(json_strings_escape_quotes_backslashes_and_controls)
{
	ck_assert_str_eq(json(""), "\"\"");
	ck_assert_str_eq(json("vm1"), "\"vm1\"");
	ck_assert_str_eq(json("/a b/\"q\"\\x"), "\"/a b/\\\"q\\\"\\\\x\"");
	ck_assert_str_eq(json("t\tn\nz\x01\x1f\x7f"), "\"t\\u0009n\\u000az\\u0001\\u001f\\u007f\"");
	/* bytes from 0x80 up (UTF-8) pass through unchanged */
	ck_assert_str_eq(json("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
	ck_assert_str_eq(json("\"\""), "\"\\\"\\\"\"");
}
END_TEST

Suite *util_text_suite(void);
Suite *util_text_suite(void)
{
	Suite *s = suite_create("util_text");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, sizes_parse_in_every_spelling_both_programs_took);
	tcase_add_test(tc, sizes_format_exact_or_with_one_decimal);
	tcase_add_test(tc, mode_names_round_trip);
	tcase_add_test(tc, json_strings_escape_quotes_backslashes_and_controls);
	suite_add_tcase(s, tc);
	return s;
}
