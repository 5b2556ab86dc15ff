/*
 * knobs.c -- the text of the tunables' control files (.pcache/gc_percent, writeback_rate,
 * dirty_high, dirty_low, space_timeout; .pcache/images/NAME/cache_mode) turned into the
 * engine's typed setters (pcache_cache_set(), pcache_image_set_cache_mode()) and back.
 *
 * A value is one decimal number (gc_percent: or "auto") with optional blanks around it and one
 * trailing newline (what `echo N > file` writes); anything else, or a number above the knob's
 * limit, is -EINVAL and changes nothing.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_i.h"

static const char *const knob_names[PCACHE_KNOB_COUNT] = {
	[PCACHE_KNOB_GC_PERCENT] = "gc_percent",
	[PCACHE_KNOB_WRITEBACK_RATE] = "writeback_rate",
	[PCACHE_KNOB_DIRTY_HIGH] = "dirty_high",
	[PCACHE_KNOB_DIRTY_LOW] = "dirty_low",
	[PCACHE_KNOB_SPACE_TIMEOUT] = "space_timeout",
};

int pfs_knob_by_name(const char *name)
{
	int k;

	for (k = 0; k < PCACHE_KNOB_COUNT; k++)
		if (!strcmp(name, knob_names[k]))
			return k;
	return -EINVAL;
}

const char *pfs_knob_name(enum pcache_knob k)
{
	return (unsigned int)k < PCACHE_KNOB_COUNT ? knob_names[k] : NULL;
}

int pfs_knob_parse(const char *s, uint64_t max, uint64_t *v)
{
	char *end;
	unsigned long long x;

	while (*s == ' ' || *s == '\t')
		s++;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	while (*end == ' ' || *end == '\t')
		end++;
	if (*end == '\n')
		end++;
	if (*end || x > max)
		return -EINVAL;
	*v = x;
	return 0;
}

/* "auto" with optional blanks around it and one trailing newline (gc_percent). */
static bool pfs_knob_is_auto(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	if (strncmp(s, "auto", 4))
		return false;
	s += 4;
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '\n')
		s++;
	return !*s;
}

int pfs_knob_set(struct pcache_cache *c, const char *name, const char *text)
{
	int k = pfs_knob_by_name(name);
	uint64_t v;

	if (k < 0)
		return k;
	if (k == PCACHE_KNOB_GC_PERCENT && pfs_knob_is_auto(text))
		return pcache_cache_set(c, (enum pcache_knob)k, PCACHE_GC_PERCENT_AUTO);
	if (pfs_knob_parse(text, pcache_knob_max((enum pcache_knob)k), &v))
		return -EINVAL;
	return pcache_cache_set(c, (enum pcache_knob)k, v);
}

int pfs_knob_get(struct pcache_cache *c, const char *name, char *buf, size_t len)
{
	int k = pfs_knob_by_name(name), n;

	if (k < 0)
		return k;
	if (k == PCACHE_KNOB_GC_PERCENT &&
	    pcache_cache_get(c, (enum pcache_knob)k) == PCACHE_GC_PERCENT_AUTO)
		n = snprintf(buf, len, "auto\n");
	else
		n = snprintf(buf, len, "%" PRIu64 "\n", pcache_cache_get(c, (enum pcache_knob)k));
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

int pfs_seq_cutoff_set(struct pcache_image *img, const char *text)
{
	char buf[32];
	size_t n = strlen(text);
	uint64_t v;

	if (n && text[n - 1] == '\n')
		n--;
	if (n == 0 || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, text, n);
	buf[n] = '\0';
	if (pcache_parse_size(buf, &v) || v > PCACHE_SEQ_CUTOFF_MAX)
		return -EINVAL;
	return pcache_image_set_seq_cutoff(img, v);
}

int pfs_max_share_set(struct pcache_image *img, const char *text)
{
	uint64_t v;

	if (pfs_knob_parse(text, 100, &v))
		return -EINVAL;
	return pcache_image_set_max_share(img, (uint32_t)v);
}

int pfs_growable_set(struct pcache_image *img, const char *text)
{
	uint64_t v;

	if (pfs_knob_parse(text, 1, &v))
		return -EINVAL;
	return pcache_image_set_growable(img, v == 1);
}

int pfs_mode_set(struct pcache_image *img, const char *text)
{
	int m = pcache_mode_parse(text);

	if (m < 0)
		return m;
	return pcache_image_set_cache_mode(img, (uint32_t)m);
}
