/*
 * log.h -- the one reader of the key log: every walk of the log (replay at start, an image's
 * replay at attach, the dirty walk, GC at key_tail, the online and offline writeback,
 * pcachectl check) reads ksets through it and validates them with the same rules.
 *
 * Depends only on cache_dev.h and format.h. Nothing here looks at the mapping: ksets are read
 * with pcache_cache_dev_pread() (pread on the device file, libpmem2's machine-check-safe read
 * on a DAX character device) into the reader's own buffer, so a poisoned or vanished line is
 * -EIO, never a SIGBUS, and the bytes validated are the bytes the caller then uses (the media
 * cannot change them between the check and the use).
 *
 * A reader keeps a window of the segment it last read (up to PCACHE_LOG_WINDOW bytes from
 * the position asked for). A kset found invalid in a window that was read for an earlier
 * position is read again from the device before the answer is given, so a reader whose window
 * predates ksets written since (a live log) still sees them. A valid kset in an old window is
 * the kset of the log: a kset is written once at the one position of its lsn, and the lsn is
 * part of what is validated.
 *
 * Threads: a reader belongs to one thread at a time; create one per walker.
 */
#ifndef PCACHE_LOG_H
#define PCACHE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/cache_dev.h"
#include "pcache/format.h"

#define PCACHE_LOG_WINDOW (64u * 1024u)

struct pcache_log_reader;

/* ---- validation (also for callers that hold a kset in memory: tests, the fuzzer) ---------- */

/*
 * Is ks (avail bytes readable from it, 8-aligned) the kset of lsn in a log of seg_count
 * segments: magic, lsn, flags, key count (1..128, 0 for a LAST record), size within avail,
 * CRC, and a LAST record's next segment inside the device. 0 or -EUCLEAN.
 */
int pcache_log_kset_check(const struct pcache_kset_om *ks, uint32_t avail, uint64_t lsn,
			  uint32_t seg_count);
/*
 * Is key k of a valid kset usable: sector-aligned offset and length, no overflow, inside one
 * 4 MiB region, known flags, image id not 0, data (unless ZERO) inside one segment. 0, or
 * -EUCLEAN with a message naming the key in err (err may be NULL).
 */
int pcache_log_key_check(const struct pcache_key_om *k, uint32_t seg_count, uint64_t seg_size,
			 char *err, size_t errlen);
/* The position after the valid kset ks that sits at pos. */
void pcache_log_next(const struct pcache_kset_om *ks, const struct pcache_pos *pos,
		     struct pcache_pos *next);

/* ---- reading ------------------------------------------------------------------------------ */

/* A reader of cd's log; -ENOMEM. */
int pcache_log_reader_new(struct pcache_cache_dev *cd, struct pcache_log_reader **out);
void pcache_log_reader_free(struct pcache_log_reader *r);

/*
 * Read the kset at pos. 0: *ks points to a validated copy, good until the next call on r.
 * -EUCLEAN: no kset continues the log at pos (its end, a torn kset, or corruption; also a
 * position outside the segments). -EIO: the device could not be read there (media error).
 */
int pcache_log_read(struct pcache_log_reader *r, const struct pcache_pos *pos,
		    const struct pcache_kset_om **ks);

/* Media errors this reader met (reads that ended in -EIO). */
uint64_t pcache_log_reader_media_errors(const struct pcache_log_reader *r);

/*
 * Walk the log from start: call fn for every kset (LAST records included) until the first
 * position that does not continue the log, or stop_lsn (exclusive; 0 = no limit), or fn
 * returning non-zero (returned). *end is where the walk stopped, *why (may be NULL) why: 0 at
 * stop_lsn, -EUCLEAN at an invalid kset (the end of the log), -EIO at a media error.
 * *ksets (may be NULL) counts the ksets passed to fn.
 */
typedef int (*pcache_log_fn)(void *arg, const struct pcache_kset_om *ks,
			     const struct pcache_pos *pos);
int pcache_log_walk(struct pcache_log_reader *r, const struct pcache_pos *start,
		    uint64_t stop_lsn, pcache_log_fn fn, void *arg, struct pcache_pos *end,
		    int *why, uint64_t *ksets);

#endif
