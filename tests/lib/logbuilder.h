/*
 * logbuilder.h -- build a pcachefs key log directly on a formatted cache device (tests).
 *
 * Depends on cache_dev.h and format.h only, so the writeback and replay tests do not need the
 * engine. The builder appends data to data segments (sequentially from segment 1 up), keys to a
 * staged kset, and writes ksets (LAST records when a log segment fills) from the position of
 * dirty_tail, all through the device's persistence seam. Every call returns 0 or -errno
 * (-ENOSPC when the device has no free segment left). Nothing here asserts.
 */
#ifndef PCACHE_LOGBUILDER_H
#define PCACHE_LOGBUILDER_H

#include <stdbool.h>
#include <stdint.h>

#include "pcache/cache_dev.h"

struct lb {
	struct pcache_cache_dev *cd;
	uint32_t seg_count;
	uint64_t seg_size;
	bool data_crc;
	struct pcache_pos head;     /* where the next kset goes (== key_head for the writeback) */
	uint64_t epoch;             /* epoch of the staged kset */
	struct pcache_key_om keys[PCACHE_KSET_MAX_KEYS];
	uint32_t nkeys;
	uint32_t max_keys;          /* keys per kset before auto close (default 128) */
	uint32_t data_seg, data_off;
	uint32_t next_seg;          /* next never-used segment */
	uint64_t ksets;             /* ksets written (LAST records included) */
};

/* Start a log at the device's dirty_tail (a freshly formatted device: segment 0, lsn 1). */
int lb_init(struct lb *lb, struct pcache_cache_dev *cd);
/* A dirty write of len bytes (sector multiple) at off of image id (split at 4 MiB regions). */
int lb_write(struct lb *lb, uint32_t image_id, uint64_t off, const void *data, uint32_t len);
/* A CLEAN key (miss fill) with data. */
int lb_clean(struct lb *lb, uint32_t image_id, uint64_t off, const void *data, uint32_t len);
/* A ZERO key (discard / write zeroes). */
int lb_zero(struct lb *lb, uint32_t image_id, uint64_t off, uint32_t len);
/* Append a raw key as given (tests of validation). */
int lb_raw_key(struct lb *lb, const struct pcache_key_om *k);
/* Write the staged kset (if any). */
int lb_close(struct lb *lb);
/* Upper-layer flush: close the staged kset, start the next epoch. */
int lb_flush(struct lb *lb);
/* Pointer to the pmem data of the last key appended (tests corrupt it). */
void *lb_last_data(struct lb *lb);

#endif
