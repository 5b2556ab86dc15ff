/*
 * cache_writeback.h -- log-order, epoch-based writeback of dirty data from the cache device to
 * the backing images (docs/durability.md), online (a thread driven by the engine) and offline
 * (pcachectl writeback).
 *
 * Depends only on cache_dev.h, backing.h and libc. The writeback walks the on-media log itself
 * from dirty_tail (it never looks at the engine's index): it validates every kset exactly like
 * replay (magic, CRC, lsn continuity, LAST records) and writes dirty keys straight from pmem.
 *
 * GUARANTEE. The backing image of every image always equals all writes of all epochs before
 * dirty_tail plus a subset of the next epoch's writes. dirty_tail is persisted only after a
 * backing flush of every image written by the ksets before it.
 *
 * NOTES FOR THE ENGINE (core/cache*.c):
 *  - key_head(): the position (seg, off, lsn) where the next kset will be written. Only ksets
 *    strictly before it are read, so every kset before it must be persisted when reported.
 *  - backing_get(image_id): the open backing of an ATTACHED image, with a reference the engine
 *    keeps until backing_put() (the writeback holds it only while one batch is in flight, so a
 *    detach waits at most one batch). Return NULL for an image that is not attached: its keys
 *    then BLOCK dirty_tail (they cannot be written) until it is attached again; keys of other
 *    images beyond it are still written back and their per-image progress is remembered.
 *    Keys whose image id is not in the image table at all (removed images) are skipped.
 *  - tail_moved(dirty_tail): called from the writeback thread after the new dirty_tail is
 *    persisted (pcache_cache_dev_set_dirty_tail() is done by the writeback, never the engine).
 *    Everything before it is clean: the engine may mark those keys clean and let GC run.
 *  - dirty_percent(): percent of the cache's capacity holding dirty data (watermarks);
 *    NULL = the writeback runs continuously at the rate limit (never urgent, never trickle):
 *    the watermarks then have no effect.
 *  - idle(): true when no user I/O arrived recently (faster writeback when idle); NULL = idle.
 *  - image_progress(): persist wb_lsn/wb_time of an image (at drains, at stop, and every 30 s
 *    after writes). NULL = the writeback rewrites the image-table entry itself with
 *    pcache_cache_dev_image_update(), a read-modify-write that can undo a concurrent update
 *    of the same entry by the engine (rename, attributes): an engine that updates entries at
 *    run time should provide this and apply the two fields under its own lock.
 *  - Call pcache_wb_kick_data() after closing ksets (new dirty data), and pcache_wb_kick()
 *    when a writer waits for space and after an attach (an image whose backing was missing
 *    is retried at once, at most every 100 ms; without a kick every second). pcache_wb_drain() backs
 *    pcache_image_writeback_all()/pcache_cache_writeback_all() and pcache_cache_stop(drain).
 *  - Callbacks are called without any writeback lock held; they must not call pcache_wb_stop().
 *
 * ERROR POLICY (chosen; see core/cache_writeback.c invariants). A backing error (EIO, ENOSPC,
 * a range beyond the image, a missing backing) never drops dirty data: dirty_tail stops at the
 * first kset holding a not-written key of the failing image; that image is retried with
 * back-off (100 ms doubling to 5 s); other images keep going past it (their progress is kept
 * per image, and their keys are not written twice). A data CRC mismatch latches the image
 * (never retried, nothing of it written past that point) until the writeback is restarted.
 * A corrupt kset before key_head latches the whole writeback (-EUCLEAN).
 * NOTE: the guarantee is per image. While one image is failing, the others go on, so images
 * used together (the disks of one VM) can stand at different epochs on their backings.
 */
#ifndef PCACHE_CACHE_WRITEBACK_H
#define PCACHE_CACHE_WRITEBACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/backing.h"
#include "pcache/cache_dev.h"
#include "pcache/writeback.h"

struct pcache_wb;

/* ---- interface with the engine ------------------------------------------------------------ */

/*
 * A dirty key of the log as live() sees it. live() fills ranges[2i], ranges[2i+1] with the
 * image byte ranges [start, end) of the key that must be written, ascending, and returns
 * their count: 0 when later keys of the SAME flush epoch replaced every byte (within an epoch
 * any subset of the writes is a state the backing may hold, and the later key is written
 * after this one), -1 (or more than max) to write the whole key. NULL op: write every key.
 * NOTE: only keys already in the log may count as replacing: dirty_tail may pass the key at
 * the end of the batch, and after a crash a replaced key behind it must not be the only copy.
 */
struct pcache_wb_key {
	uint32_t image_id;
	uint16_t flags;       /* PCACHE_KEY_ZERO or 0 */
	uint64_t epoch;       /* flush epoch of the kset */
	uint64_t off;
	uint32_t len;
	uint32_t seg, seg_off; /* data (not for ZERO) */
	uint64_t seg_gen;
};

struct pcache_wb_ops {
	void (*key_head)(void *ctx, struct pcache_pos *head);                 /* required */
	struct pcache_backing *(*backing_get)(void *ctx, uint32_t image_id); /* required */
	void (*backing_put)(void *ctx, uint32_t image_id, struct pcache_backing *b); /* optional */
	void (*tail_moved)(void *ctx, const struct pcache_pos *dirty_tail);  /* optional */
	uint32_t (*dirty_percent)(void *ctx);                                 /* optional */
	bool (*idle)(void *ctx);                                              /* optional */
	/* true while writers wait for cache space: write back at full speed, rate limit or not */
	bool (*space_wanted)(void *ctx);                                      /* optional */
	/* persist an image's writeback progress (wb_lsn, wb_time) in the image table; 0/-errno */
	int (*image_progress)(void *ctx, uint32_t image_id, uint64_t wb_lsn,
			      uint64_t wb_time);                     /* optional */
	/* dirty_tail moved past data keys (not CLEAN, not ZERO, not stale) of this many bytes */
	void (*dirty_passed)(void *ctx, uint64_t bytes);                      /* optional */
	/* which bytes of a dirty key must still be written (see struct pcache_wb_key) */
	int (*live)(void *ctx, const struct pcache_wb_key *k, uint64_t *ranges,
		    int max);                                        /* optional */
	/*
	 * Writethrough ordering (both or neither; optional; b is the backing_get() one):
	 * through_count() counts the image's writethrough backing writes completed so far;
	 * through_hold(true) waits for those in flight and keeps new ones waiting until
	 * through_hold(false). A writethrough write's key must be indexed (seen by live()) before
	 * its backing write starts. See invariant 7 of cache_writeback.c.
	 */
	uint64_t (*through_count)(void *ctx, uint32_t image_id, struct pcache_backing *b);
	void (*through_hold)(void *ctx, uint32_t image_id, struct pcache_backing *b, bool hold);
	/*
	 * The image's progress (wb_lsn) moved past this many dirty keys (data and ZERO, not
	 * stale) of this many bytes: they are durable on its backing. Called after a batch,
	 * before backing_put(). Optional.
	 */
	void (*image_passed)(void *ctx, uint32_t image_id, struct pcache_backing *b,
			     uint64_t keys, uint64_t bytes);
};

/* Tunables; zero fields take the defaults below. */
#define PCACHE_WB_DEFAULT_MAX_INFLIGHT 64u             /* requests in flight */
#define PCACHE_WB_DEFAULT_MAX_INFLIGHT_BYTES (64u << 20)
#define PCACHE_WB_DEFAULT_MAX_REQ_BYTES (1u << 20)     /* merged request size cap */
#define PCACHE_WB_DEFAULT_BATCH_BYTES (256u << 20)     /* dirty bytes per batch (one flush) */
#define PCACHE_WB_DEFAULT_BATCH_KEYS 65536u
#define PCACHE_WB_TRICKLE_DIV 16u                      /* busy, below dirty_low: smaller batches */
#define PCACHE_WB_RETRY_MIN_NS (100ull * 1000 * 1000)
#define PCACHE_WB_RETRY_MAX_NS (5000ull * 1000 * 1000)

struct pcache_wb_opts {
	uint32_t max_inflight;       /* requests in flight at once */
	uint64_t max_inflight_bytes;
	uint32_t max_req_bytes;      /* cap of one merged request */
	uint64_t batch_bytes;        /* dirty bytes per batch */
	uint32_t batch_keys;
	uint32_t idle_interval_ms;   /* busy, below dirty_low: one small batch per interval (1000) */
	bool no_thread;              /* tests: no thread; drive with pcache_wb_run_once() */
	/* tests: virtual clock for the rate limiter (now in ns, sleep ns); NULL = real clock */
	uint64_t (*clock_now)(void *arg);
	void (*clock_sleep)(void *arg, uint64_t ns);
	void *clock_arg;
	/* tests: stop issuing after this many write/zero requests (simulated crash); 0 = never.
	 * pcache_wb_run_once()/pcache_wb_offline() then return -ECANCELED. */
	uint64_t stop_after_reqs;
	bool quiet;                  /* no log lines on stderr (tests) */
};

/*
 * Start the writeback of cd. Rate and watermarks come from the device's cache_info; with
 * opts->no_thread no thread is started. opts may be NULL. Returns 0 and *out or -errno.
 */
int pcache_wb_start(struct pcache_cache_dev *cd, const struct pcache_wb_ops *ops, void *ctx,
		    const struct pcache_wb_opts *opts, struct pcache_wb **out);
/* The image was removed from the table (given up): skip its keys from the next batch on. */
void pcache_wb_image_forget(struct pcache_wb *wb, uint32_t image_id);
/* Start the thread of a writeback started with no_thread (once attach is done). 0 or -errno. */
int pcache_wb_start_thread(struct pcache_wb *wb);
/* Stop the thread, wait for every request in flight, persist per-image progress, free. */
void pcache_wb_stop(struct pcache_wb *wb);
/*
 * pcache_wb_stop(), waiting at most wait_ns (0: no limit) for the thread. -ETIMEDOUT when it is
 * still in a batch (a backing slower than that): then nothing is freed, the thread goes on and
 * the caller must leave wb (and the cache device it writes to) alone; exiting the process then
 * is a crash in the middle of a batch, which the log replays. 0 when stopped and freed.
 */
int pcache_wb_stop_timed(struct pcache_wb *wb, uint64_t wait_ns);
/* New dirty data or a writer waiting for space: wake the thread (cheap, any thread). */
void pcache_wb_kick(struct pcache_wb *wb);
/*
 * New dirty data only (a kset closed): the same as pcache_wb_kick(), except that the writeback
 * is not woken in its pause between busy batches unless dirty data reached dirty_high (the
 * pause ends at its time anyway; a kick per kset cost a context switch per fsync).
 */
void pcache_wb_kick_data(struct pcache_wb *wb);

/*
 * Write back everything up to the key_head at the time of the call for one image (image_id)
 * or all images (image_id 0), flush the backings, persist dirty_tail (all) and the images'
 * wb_lsn/wb_time, and return 0 when done. Returns the first backing error met by a concerned
 * image during the drain (-EIO, -ENOSPC, -ENXIO for an image still not attached after three
 * tries (an attach racing with a batch is waited for),
 * -EBADMSG for a data CRC mismatch, -EUCLEAN for a corrupt log) -- the data stays dirty.
 * Without a thread (no_thread) the caller's thread does the work.
 */
int pcache_wb_drain(struct pcache_wb *wb, uint32_t image_id);
/*
 * abort: every drain running or started from now on returns -ESHUTDOWN at its next check
 * (the data stays dirty); !abort: drains work again. Any thread; the writeback goes on.
 */
void pcache_wb_abort_drains(struct pcache_wb *wb, bool abort);

/*
 * Tests (no_thread): process one batch, rate limited unless above the watermarks (checked
 * here like the thread does). 1 = progress made, 0 = nothing to do, -errno (-EINVAL with a
 * thread).
 */
int pcache_wb_run_once(struct pcache_wb *wb);
/* The thread's pause after a batch while user I/O goes on, at pct percent dirty. */
uint64_t pcache_wb_busy_pause_ns(uint32_t pct, uint32_t low, uint32_t high, uint32_t interval_ms);

/* Knobs (also persisted by the engine in cache_info; here they only take effect). */
void pcache_wb_set_rate(struct pcache_wb *wb, uint64_t bytes_per_sec); /* 0 = unlimited */
int pcache_wb_set_watermarks(struct pcache_wb *wb, uint32_t dirty_high, uint32_t dirty_low);

/* ---- status ------------------------------------------------------------------------------- */

struct pcache_wb_stats {
	struct pcache_pos dirty_tail;     /* persisted */
	struct pcache_pos scan;           /* next kset the walker reads (>= dirty_tail) */
	uint64_t bytes_written;           /* data written to backings (after override) */
	uint64_t bytes_zeroed;            /* ZERO ranges */
	uint64_t requests, flushes, batches, epochs;
	uint64_t keys_dirty, keys_clean_skipped, keys_stale, keys_unknown_image;
	uint64_t bytes_overridden;        /* dirty bytes not written: a later key of the batch won */
	uint64_t bytes_superseded;        /* dirty bytes not written: live() said a later key of
					   * the same epoch replaced them, or that their own
					   * writethrough write put them on the backing */
	uint64_t errors;                  /* backing errors, CRC mismatches, corrupt ksets */
	uint64_t crc_errors, retries, rate_waits;
	uint64_t wakes;                   /* waits of the thread ended by a signal (not a timeout) */
	uint64_t media_errors;            /* ksets that could not be read (poisoned media) */
	int latched;                      /* -EUCLEAN when the log is corrupt, -EIO when it
					   * cannot be read, else 0 */
	bool urgent;                      /* above dirty_high (until below dirty_low) */
	uint64_t drain_total, drain_left; /* bytes of the drain running now (estimates; without
					   * the thread only) */
	uint64_t drain_target_lsn;        /* largest key_head lsn a drain waited for: ksets left
					   * = drain_target_lsn - dirty_tail.lsn while it runs */
};
void pcache_wb_get_stats(struct pcache_wb *wb, struct pcache_wb_stats *st);

struct pcache_wb_image_stats {
	uint64_t wb_lsn;         /* every key of the image in ksets with lsn < wb_lsn is on the backing */
	uint64_t wb_time;        /* wall-clock seconds of that progress */
	uint64_t bytes_written;
	uint64_t errors;
	int last_error;          /* 0 or -errno of the last failure (0 after a success) */
	bool blocked;            /* failing or not attached: blocks dirty_tail */
};
/* 0, or -ENOENT when the writeback has not met that image yet. */
int pcache_wb_image_stats(struct pcache_wb *wb, uint32_t image_id,
			  struct pcache_wb_image_stats *st);

/* ---- offline (pcachectl writeback): see include/pcache/writeback.h ------------------------ */

/* ---- pieces exposed for the unit tests ---------------------------------------------------- */

/* Token bucket: rate bytes/s, burst bytes. take() returns the ns to wait before len may go. */
struct pcache_wb_bucket {
	uint64_t rate, burst;
	int64_t tokens;      /* bytes available at last (negative: debt of the last request) */
	uint64_t last;       /* ns */
};
void pcache_wb_bucket_init(struct pcache_wb_bucket *b, uint64_t rate, uint64_t burst, uint64_t now);
uint64_t pcache_wb_bucket_take(struct pcache_wb_bucket *b, uint64_t now, uint64_t len);

#endif
