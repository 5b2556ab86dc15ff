/*
 * wb_i.h -- private interface of the writeback (core/cache_writeback.c: the thread, pacing,
 * start/stop and controls; core/cache_wb_batch.c: one batch; core/cache_wb_drain.c: drains and
 * the offline writeback). Nothing else includes it. The design, invariants and locks of the
 * writeback are at the top of cache_writeback.c.
 */
#ifndef PCACHE_WB_I_H
#define PCACHE_WB_I_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "pcache/log.h"
#include "pcache/util.h"
#include "cache_writeback.h"

#define WB_NS_PER_SEC 1000000000ull
#define WB_POLL_NS (1000ull * 1000 * 1000)      /* key_head poll when nothing to do */
#define WB_PERSIST_NS (30ull * WB_NS_PER_SEC)   /* wb_lsn persisted at least this often */
#define WB_ZERO_MAX_REQ (64ull << 20)
#define WB_OFFLINE_MAX_FAILS 4u
#define WB_ENXIO_KICK_NS (100ull * 1000 * 1000) /* earliest retry of a missing backing on a kick */
#define WB_DRAIN_ENXIO_FAILS 3u                  /* a drain reports -ENXIO after this many */
#define WB_LIVE_MAX 16u                          /* live ranges asked per key */

/* Per-image writeback state (only the worker writes it, under wb->lock). */
struct wb_img {
	uint32_t id;
	bool in_table;          /* present in the image table (else its keys are skipped) */
	bool blocked;           /* failing or not attached: its keys are skipped until retry */
	bool latched;           /* data CRC mismatch or media error: blocked until restart */
	uint64_t bad_off, bad_len; /* the image extent whose cached data could not be read */
	uint64_t done_lsn;      /* all its keys in ksets with lsn < done_lsn are durable */
	uint64_t persisted_lsn; /* wb_lsn last written to the image table */
	uint64_t wb_time;
	uint64_t retry_at, backoff;
	uint64_t bytes_written, errors, fail_seq, fails_in_row;
	int last_error;
	bool written_since_persist;
	/* per batch (worker only) */
	struct pcache_backing *b;
	uint64_t through_seen;  /* ops.through_count() when live() was last asked for its keys */
	bool in_batch;
	bool batch_done;        /* committed: its progress moved past the batch */
	int batch_err;
	uint64_t batch_bytes;
	uint64_t batch_keys, batch_key_bytes; /* its dirty keys in the batch (ops.image_passed) */
};

/* One dirty key range of the batch (input of the sweep). */
struct wb_ext {
	uint64_t off, end;
	uint64_t seq;           /* position in the batch: larger = later in the log */
	const uint8_t *src;     /* pmem data of byte off (NULL for ZERO) */
	uint32_t img;           /* index in wb->imgs */
	uint32_t seg, seg_off;  /* the key's data position of byte off (not for ZERO) ... */
	uint64_t seg_gen;       /* ... and generation: live() is asked again from these */
};

struct wb_extv {
	struct wb_ext *v;
	size_t n, cap;
};

/* One request to a backing (output of the sweep). */
struct wb_req {
	struct pcache_wb *wb;
	uint64_t off, len;
	const uint8_t *src;     /* NULL: ZERO */
	uint32_t img;
	int status;
};

struct wb_reqv {
	struct wb_req *v;
	size_t n, cap;
};

struct pcache_wb {
	struct pcache_cache_dev *cd;
	struct pcache_wb_ops ops;
	void *ctx;
	struct pcache_wb_opts o;
	uint32_t seg_count;
	uint64_t seg_size;
	bool data_crc;
	bool offline;

	/* worker-only scratch */
	struct pcache_log_reader *rd;      /* the key log (core/log.c) */
	struct wb_extv exts;               /* the batch's extents (sorted by wb_resolve()) */
	struct wb_reqv reqs;               /* the batch's requests, grouped by image */
	struct wb_extv rexts;              /* an image's extents asked again (wb_relook()) */
	struct wb_reqv rreqs;              /* and its requests from them */
	uint32_t *heap;
	size_t cap_heap;
	uint64_t reqs_issued;             /* for stop_after_reqs */

	pthread_mutex_t run_lock;         /* no_thread: one worker (drain / run_once) at a time;
					   * taken before persist_lock */
	pthread_mutex_t persist_lock;     /* serialises wb_persist_images(); before lock */
	struct pcache_image_ent *table;   /* image table copy (PCACHE_MAX_IMAGES), persist_lock
					   * or the worker (the worker holds it for lookups) */
	uint64_t last_persist_ns;         /* written under persist_lock, read atomically */

	pthread_mutex_t lock;
	pthread_cond_t cond;              /* worker wake-ups (kick, stop, drain) */
	pthread_cond_t done_cond;         /* progress for drains */
	/* guarded by lock */
	struct wb_img *imgs;
	uint32_t n_imgs, cap_imgs;
	struct pcache_pos dirty_tail;     /* persisted */
	struct pcache_pos scan;           /* committed walker position */
	bool block_set;
	struct pcache_pos block_pos;      /* first kset with a not-durable key of a blocked image */
	uint64_t last_epoch;
	bool have_epoch;
	struct pcache_wb_stats st;
	uint64_t rate;
	uint32_t dirty_high, dirty_low;
	struct pcache_wb_bucket bucket;
	unsigned int drains;              /* drains waiting (full speed while > 0) */
	bool kicked, stopping;
	bool busy_pause;                  /* in wb_busy_wait(): data kicks do not wake it */
	bool drain_abort;                 /* pcache_wb_abort_drains(): drains end with -ESHUTDOWN */
	bool retry_enxio;                 /* a kick since the last batch: retry missing backings */
	uint32_t forget_ids[8];           /* images removed from the table (given up), applied at */
	uint32_t n_forget;                /* the start of the next batch */
	int latched;                      /* -EUCLEAN: corrupt log, nothing more is done */
	uint64_t progress_seq;            /* bumped after every batch */

	pthread_mutex_t io_lock;
	pthread_cond_t io_cond;
	/* guarded by io_lock */
	uint32_t inflight;
	uint64_t inflight_bytes;
	bool io_waiting;                  /* the issuer sleeps until io_wake_n / io_wake_bytes */
	uint32_t io_wake_n;
	uint64_t io_wake_bytes;

	pthread_t thread;
	bool have_thread;
};

/* An error line of the writeback (a macro: each message keeps its own rate-limit budget). */
#define wb_log(wb, fmt, ...)                                                         \
	do {                                                                          \
		if (!(wb)->o.quiet)                                                   \
			pcache_log(PCACHE_LOG_ERR, "writeback: " fmt, __VA_ARGS__);   \
	} while (0)

/* ---- shared by the writeback's files ------------------------------------------------------ */

/* The writeback's clock (its test clock when set) and a sleep on it. */
uint64_t pcache_wb_now(struct pcache_wb *wb);
void pcache_wb_sleep(struct pcache_wb *wb, uint64_t ns);
/* Index of image id in wb->imgs, created (done_lsn = the walker position) on first sight. */
int pcache_wb_img_index(struct pcache_wb *wb, uint32_t id, uint64_t cur_lsn);
/* Persist every image's progress (wb_lsn, wb_time) when it moved, or always with force. */
void pcache_wb_persist_images(struct pcache_wb *wb, bool force);
/* Wait until at most max_n requests and max_bytes bytes are in flight. */
void pcache_wb_wait_inflight(struct pcache_wb *wb, uint32_t max_n, uint64_t max_bytes);
/* What an image's writeback error means, for its log line and pcachectl. */
const char *pcache_wb_err_text(const struct wb_img *im, int err, char *buf, size_t len);
/*
 * One batch (cache_wb_batch.c): 1 when it made progress, 0 nothing to do, -errno (-ECANCELED:
 * stopped midway, -EUCLEAN/-EIO: the log is corrupt or unreadable and the writeback latched).
 * limited: through the token bucket; small: a trickle batch. Caller holds run_lock.
 */
int pcache_wb_batch(struct pcache_wb *wb, bool limited, bool small);
/* Hysteresis: urgent from dirty_high until below dirty_low. Returns the dirty percent. */
uint32_t pcache_wb_urgent_update(struct pcache_wb *wb, bool *urgent);
/* How long until the next retry of a failing image is due (WB_POLL_NS at most). */
uint64_t pcache_wb_next_retry_ns(struct pcache_wb *wb);

#endif
