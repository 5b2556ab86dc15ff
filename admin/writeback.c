/*
 * writeback.c -- `pcachectl writeback`: write back every dirty byte of a cache
 * device to its backing images offline (recovery without mounting).
 *
 * The device is opened read-write with the exclusive lock, so a device in use by pcachefs (or
 * another pcachectl) is refused. The work is pcache_wb_offline() (include/pcache/writeback.h):
 * log order, epoch by epoch, a backing flush before dirty_tail moves.
 *
 * Invariants:
 *  1. Nothing is written unless the exclusive lock is held (pcachectl_open read-write).
 *  2. On any failure the exit status is not 0 and the message names the image or log position;
 *     the dirty data that could not be written stays in the cache (dirty_tail stops before it).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pcache/util.h"
#include "pcache/writeback.h"
#include "pcachectl_i.h"

static int writeback_run(int argc, char **argv);

const struct pcachectl_cmd pcachectl_cmd_writeback = {
	.name = "writeback",
	.run = writeback_run,
	.usage = "writeback [--rate BYTES] [--quiet] DEVICE",
	.help = "Write every dirty byte held by the cache device back to its backing images, in log\n"
		"order, flushing each image before the cache's dirty tail moves: the images are\n"
		"crash-consistent at every moment. Each image is opened at the path stored in the image\n"
		"table; an image whose size differs from the stored one is refused. The device must not\n"
		"be in use (pcachefs holds its lock while mounted).\n\n"
		"options:\n"
		"  --rate BYTES  limit to BYTES per second (K/M/G suffixes; default unlimited)\n"
		"  --quiet       no progress line and no summary\n\n"
		"exit status: 0 all written back, 2 corrupt log or not a pcachefs cache, 3 usage or I/O\n"
		"error (an image that cannot be written), or device locked.\n",
};

struct wb_progress_state {
	struct pcachectl_progress bar;
	bool printed;
	uint64_t last_bytes, last_ksets;
};

static void progress_cb(void *arg, const struct pcache_wb_progress *p)
{
	struct wb_progress_state *ps = arg;
	char ksets[64];

	if (ps->printed && p->done_bytes == ps->last_bytes && p->done_ksets == ps->last_ksets)
		return; /* nothing new (a retry pass) */
	ps->printed = true;
	ps->last_bytes = p->done_bytes;
	ps->last_ksets = p->done_ksets;
	snprintf(ksets, sizeof(ksets), "%" PRIu64 "/%" PRIu64 " ksets", p->done_ksets, p->total_ksets);
	pcachectl_progress_update(&ps->bar, p->done_bytes, p->total_bytes, ksets,
				  p->done_ksets >= p->total_ksets);
}

static int writeback_run(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "rate", required_argument, NULL, 'r' },
		{ "quiet", no_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	const struct pcachectl_cmd *cmd = &pcachectl_cmd_writeback;
	struct pcache_wb_offline_opts oo;
	struct wb_progress_state ps;
	struct pcache_cache_dev *cd;
	bool quiet = false;
	struct pcache_pos before, after;
	const char *path;
	char err[1400];
	uint64_t rate = 0;
	int c, rc, r;

	memset(&ps, 0, sizeof(ps));
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (c == 'r') {
			if (pcache_parse_size(optarg, &rate) != 0)
				return pcachectl_usage_error(cmd, "bad --rate '%s'", optarg);
		} else if (c == 'q') {
			quiet = true;
		} else {
			return pcachectl_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return pcachectl_usage_error(cmd, optind == argc ? "no DEVICE given" :
					     "more than one DEVICE given");
	path = argv[optind];
	/* a log file (stderr not a terminal) gets a plain line every 2 s */
	pcachectl_progress_start(&ps.bar, "writeback", quiet, true);

	/* invariant 1: read-write open takes the exclusive lock; a mounted device is refused */
	rc = pcachectl_open(path, true, false, &cd);
	if (rc)
		return rc;
	pcache_cache_dev_get_dirty_tail(cd, &before);
	memset(&oo, 0, sizeof(oo));
	oo.rate = rate;
	oo.progress = progress_cb;
	oo.progress_arg = &ps;
	r = pcache_wb_offline(cd, &oo, err, sizeof(err));
	pcache_cache_dev_get_dirty_tail(cd, &after);
	pcache_cache_dev_close(cd);
	pcachectl_progress_end(&ps.bar);
	if (r) {
		fprintf(stderr, "pcachectl writeback: %s: %s\n", path, err[0] ? err : strerror(-r));
		return r == -EUCLEAN ? PCACHECTL_CORRUPT : PCACHECTL_ERROR;
	}
	if (!quiet)
		printf("%s: written back: %" PRIu64 " ksets, dirty tail now at lsn %" PRIu64 "\n", path,
		       after.lsn - before.lsn, after.lsn);
	return PCACHECTL_OK;
}
