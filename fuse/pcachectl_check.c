/*
 * pcachectl_check.c -- `pcachectl check`: validate a cache device offline, optionally repair.
 *
 * The loader (pcache_cache_dev_open) already validates every field of every record; check opens
 * the device, reports what the load found, and maps it to the exit status:
 *   0 clean; 1 repairable (one slot of some record damaged -- a torn update or a flipped byte --
 *   and the other copy used; with --repair the damaged slots are rewritten and the device is
 *   re-checked); 2 corrupt (a record with no valid copy, a bad field, foreign or blank device,
 *   newer format); 3 usage or I/O error, or the device is locked (mounted).
 *
 * Invariants:
 *  1. Without --repair the device is opened read-only: check never writes.
 *  2. --repair opens it read-write with the exclusive lock, and a repaired device is reopened
 *     and must come back clean before check reports success of the repair.
 * NOTE: the key log itself (ksets) is checked by replay when pcachefs mounts the device.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "pcachectl_i.h"

static int check_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_check = {
	.name = "check",
	.run = check_run,
	.usage = "check [--repair] [--quiet] DEVICE",
	.help = "Validate every metadata record of a cache device offline: both superblock copies,\n"
		"cache_info, the log tails, the image table and every segment record. Each finding\n"
		"names the structure. A record with one damaged slot (left by a torn update or\n"
		"corruption) still loads from its other slot: that is repairable.\n\n"
		"options:\n"
		"  --repair   rewrite damaged slots from their valid copy (opens the device read-write)\n"
		"  --quiet    print nothing; only the exit status tells\n\n"
		"exit status: 0 clean, 1 repairable (or repaired with --repair), 2 corrupt or not a\n"
		"pcachefs cache, 3 usage or I/O error or device locked.\n",
};

static void report_line(void *arg, const char *line)
{
	const char *path = arg;

	printf("%s: %s\n", path, line);
}

/* Open for checking (read-write for --repair); an error is printed unless quiet. */
static int open_dev(const char *path, bool rw, bool quiet, struct pcache_cache_dev **cd)
{
	struct pcache_cache_dev_opts o = { .path = path, .read_only = !rw };
	char err[512];
	int rc;

	if (quiet)
		return pcachectl_open_status(pcache_cache_dev_open(&o, cd, err, sizeof(err)));
	rc = pcachectl_open(path, rw, false, cd);
	if (rc == PCACHECTL_CORRUPT)
		printf("%s: corrupt or not a pcachefs cache this version can read\n", path);
	return rc;
}

static int check_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "repair", no_argument, NULL, 'r' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_check;
	struct pcache_cache_dev *cd;
	bool repair = false, quiet = false;
	const char *path;
	enum pcache_check_result res;
	int c, rc;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'r')
			repair = true;
		else if (c == 'q')
			quiet = true;
		else
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no DEVICE given" : "more than one DEVICE given");
	path = argv[optind];

	rc = open_dev(path, repair, quiet, &cd);
	if (rc)
		return rc;
	res = pcache_cache_dev_check(cd, quiet ? NULL : report_line, (void *)path);
	if (res == PCACHE_CHECK_CLEAN) {
		if (!quiet)
			printf("%s: clean (%u segments, %s granularity)\n", path,
			       pcache_cache_dev_seg_count(cd), pcache_cache_dev_granularity(cd));
		pcache_cache_dev_close(cd);
		return PCACHECTL_OK;
	}
	if (!repair) {
		if (!quiet)
			printf("%s: repairable: %u damaged slot%s (run 'pcachectl check --repair')\n", path,
			       pcache_cache_dev_damaged(cd), pcache_cache_dev_damaged(cd) == 1 ? "" : "s");
		pcache_cache_dev_close(cd);
		return PCACHECTL_REPAIRABLE;
	}
	rc = pcache_cache_dev_repair(cd);
	pcache_cache_dev_close(cd);
	if (rc) {
		fprintf(stderr, "pcachectl check: %s: repair failed: %s\n", path, strerror(-rc));
		return PCACHECTL_ERROR;
	}
	rc = open_dev(path, false, quiet, &cd);
	if (rc)
		return rc;
	res = pcache_cache_dev_check(cd, NULL, NULL);
	pcache_cache_dev_close(cd);
	if (res != PCACHE_CHECK_CLEAN) {
		fprintf(stderr, "pcachectl check: %s: still damaged after repair\n", path);
		return PCACHECTL_CORRUPT;
	}
	if (!quiet)
		printf("%s: repaired\n", path);
	return PCACHECTL_REPAIRABLE;
}
