/*
 * writeback.h -- offline writeback of a cache device (pcachectl writeback): every dirty byte of
 * the key log written to the backing images in log order, epoch by epoch.
 *
 * Depends only on cache_dev.h and backing.h. The online writeback (a thread of the engine) is
 * core/cache_writeback.h; both share one implementation (core/cache_writeback.c) and the same
 * guarantee: the backing image always equals all writes of all epochs before dirty_tail plus
 * a subset of the next epoch's, and dirty_tail is persisted only after a backing flush.
 */
#ifndef PCACHE_WRITEBACK_H
#define PCACHE_WRITEBACK_H

#include <stdint.h>

#include "pcache/backing.h"
#include "pcache/cache_dev.h"

struct pcache_wb_opts; /* core/cache_writeback.h: tuning for tests and benchmarks */

struct pcache_wb_progress {
	uint64_t total_bytes;    /* dirty bytes found in the log (before override) */
	uint64_t done_bytes;
	uint64_t total_ksets, done_ksets;
};
/* Called after each batch (from the caller's thread). */
typedef void (*pcache_wb_progress_fn)(void *arg, const struct pcache_wb_progress *p);

struct pcache_wb_offline_opts {
	const struct pcache_wb_opts *wb;   /* NULL = defaults */
	uint64_t rate;                     /* bytes/s, 0 = unlimited */
	pcache_wb_progress_fn progress;    /* may be NULL */
	void *progress_arg;
	struct pcache_backing_opts backing; /* how the images are opened */
};

/*
 * Write back everything in the log of an open, exclusively locked cache device: open each
 * image's backing from its image-table path (an image whose size differs from the stored one
 * is refused, never written), find the end of the log by scanning from dirty_tail, write every
 * epoch in order, flush, persist dirty_tail == end of the log and every image's wb_lsn.
 * A failing image is retried a few times (100 ms doubling) while the others go on.
 * Returns 0, or -errno with a one-line message in err naming the image or the log position;
 * the device is left consistent (data that could not be written stays dirty).
 */
int pcache_wb_offline(struct pcache_cache_dev *cd, const struct pcache_wb_offline_opts *oo,
		      char *err, size_t errlen);

#endif
