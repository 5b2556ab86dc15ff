/*
 * check.c -- `pcachectl check`: validate a cache device offline, optionally repair.
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
 *  3. The key log is walked with the engine's one log reader (core/log.c) and judged by the
 *     rules replay applies at start: a kset with a bad key, or a dirty_tail that is not a kset
 *     position inside the log, makes pcachefs refuse the device (exit 2); the walk ending at a
 *     media error means everything logged after it is lost (exit 2, named); a log that simply
 *     ends (at key_head, or at a torn last kset) is normal.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pcache/log.h"
#include "pcache/util.h"
#include "pcachectl_i.h"

static int check_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_check = {
	.name = "check",
	.run = check_run,
	.usage = "check [--repair] [--quiet] DEVICE",
	.help = "Validate every metadata record of a cache device offline: both superblock copies,\n"
		"cache_info, the log tails, the image table and every segment record, then walk the\n"
		"key log as pcachefs replays it at start. Each finding names the structure. A record with one damaged slot (left by a torn update or\n"
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

struct log_check {
	uint32_t seg_count;
	uint64_t seg_size;
	struct pcache_pos dirty_tail;
	bool saw_dirty_tail;
	uint64_t keys, dirty_keys;
	char err[256];
};

static int log_check_kset(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct log_check *lc = arg;
	uint32_t i, n = pcache_le16(&ks->key_num);

	if (pos->lsn == lc->dirty_tail.lsn) {
		if (pos->seg != lc->dirty_tail.seg || pos->off != lc->dirty_tail.off) {
			snprintf(lc->err, sizeof(lc->err),
				 "dirty_tail %u:%u (lsn %" PRIu64 ") is not the kset of that lsn (%u:%u)",
				 lc->dirty_tail.seg, lc->dirty_tail.off, lc->dirty_tail.lsn, pos->seg,
				 pos->off);
			return -EUCLEAN;
		}
		lc->saw_dirty_tail = true;
	}
	for (i = 0; i < n; i++) {
		if (pcache_log_key_check(&ks->keys[i], lc->seg_count, lc->seg_size, lc->err,
					 sizeof(lc->err)))
			return -EUCLEAN;
		lc->keys++;
		if (pos->lsn >= lc->dirty_tail.lsn && !(pcache_le16(&ks->keys[i].flags) & PCACHE_KEY_CLEAN))
			lc->dirty_keys++;
	}
	return 0;
}

/* Walk the key log as replay would; 0 when pcachefs would start on it, else a line printed. */
static int check_log(struct pcache_cache_dev *cd, const char *path, bool quiet)
{
	struct log_check lc = { .seg_count = pcache_cache_dev_seg_count(cd),
				.seg_size = pcache_cache_dev_seg_size(cd) };
	struct pcache_log_reader *rd;
	struct pcache_pos kt, end;
	uint64_t ksets;
	int rc, why;

	pcache_cache_dev_get_key_tail(cd, &kt);
	pcache_cache_dev_get_dirty_tail(cd, &lc.dirty_tail);
	if (pcache_log_reader_new(cd, &rd))
		return PCACHECTL_ERROR;
	rc = pcache_log_walk(rd, &kt, 0, log_check_kset, &lc, &end, &why, &ksets);
	pcache_log_reader_free(rd);
	if (!rc && (lc.dirty_tail.lsn < kt.lsn || lc.dirty_tail.lsn > end.lsn ||
		    (lc.dirty_tail.lsn < end.lsn && !lc.saw_dirty_tail) ||
		    (lc.dirty_tail.lsn == end.lsn &&
		     (lc.dirty_tail.seg != end.seg || lc.dirty_tail.off != end.off)))) {
		snprintf(lc.err, sizeof(lc.err),
			 "dirty_tail %u:%u (lsn %" PRIu64 ") is not inside the log (key_tail lsn %"
			 PRIu64 ", end %u:%u lsn %" PRIu64 ")", lc.dirty_tail.seg, lc.dirty_tail.off,
			 lc.dirty_tail.lsn, kt.lsn, end.seg, end.off, end.lsn);
		rc = -EUCLEAN;
	}
	if (!rc && why == -EIO) {
		snprintf(lc.err, sizeof(lc.err),
			 "media error reading the kset at %u:%u (lsn %" PRIu64 "): the log ends there "
			 "and what was logged after it is lost", end.seg, end.off, end.lsn);
		rc = -EIO;
	}
	if (rc) {
		if (!quiet)
			printf("%s: key log: %s\n", path, lc.err);
		return PCACHECTL_CORRUPT;
	}
	if (!quiet)
		printf("%s: key log: %" PRIu64 " ksets, %" PRIu64 " keys (%" PRIu64 " dirty), lsn %"
		       PRIu64 "..%" PRIu64 "\n", path, ksets, lc.keys, lc.dirty_keys, kt.lsn, end.lsn);
	return PCACHECTL_OK;
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
		rc = check_log(cd, path, quiet);
		if (rc) {
			pcache_cache_dev_close(cd);
			return rc;
		}
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
