/*
 * cache.h -- the cache engine's API: start and stop a cache on a cache device, attach and
 * detach images, and per image read, write, flush, discard/zero, writeback and stats.
 *
 * Depends on cache_dev.h (for the seam and format options) and util.h. Used by fuse/ and by
 * the tests; nothing here knows about FUSE.
 *
 * Threads: every function may be called from many threads at once, except start/stop.
 * Images are reference counted: pcache_image_get()/pcache_image_put(); I/O on an image needs a
 * reference held by the caller. Errors are 0 / -errno throughout.
 */
#ifndef PCACHE_CACHE_H
#define PCACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "pcache/cache_dev.h"

struct stat;

struct pcache_cache;
struct pcache_image;

/* ---- start and stop ----------------------------------------------------------------------- */

struct pcache_cache_opts {
	const char *path;                 /* cache device */
	uint64_t create_size;             /* create a missing regular file of this size (0 = no) */
	bool format_if_blank;             /* format an all-zero device (default true in the daemon) */
	struct pcache_format_opts format; /* used when formatting */
	int gc_percent;                   /* -1 = keep the persisted value; else set and persist */
	bool data_crc;                    /* verify data CRCs on hits (needs a data_crc format) */
	bool prefault;                    /* pre-fault the mapping */
	bool no_background;               /* tests: no writeback/GC threads (driven by hand) */
	bool no_copy_forward;             /* GC drops hot clean data too (FIFO by age) */
	int space_timeout_s;              /* a writer waits this long for space before -EIO (the
					   * writeback cannot free any: failing backing); 0 = no
					   * limit, -1 = PCACHE_DEFAULT_SPACE_TIMEOUT_S; knob
					   * "space_timeout" at run time */
	bool defer_background;            /* start the writeback/GC/timer threads only at
					   * pcache_cache_start_background(): until then a start that
					   * is refused (an image it cannot take) writes nothing */
	/* tests: seam wrapper, see struct pcache_cache_dev_opts */
	struct pcache_pmem (*wrap_pmem)(struct pcache_pmem real, void *base, uint64_t size, void *arg);
	void *wrap_arg;
	/* tests: close a staging kset this long after its first key (0 = about a second); the
	 * timer thread then wakes every tenth of it (at least every 100 ms) */
	uint64_t kset_close_ns;
	/* tests: emulated media errors on reads of the device, see struct pcache_cache_dev_opts */
	int (*read_fault)(uint64_t off, size_t len, void *arg);
	void *read_fault_arg;
	/*
	 * Shared memory of pcache_stage_shm_size() bytes (a memfd mapping another process keeps
	 * open) to hold the staging ksets, so that keys staged and acknowledged but not yet in the
	 * log survive the death of this process (not a power loss: they were never flushed). NULL:
	 * private memory. A start given the memory that a dead process of the same cache device
	 * left logs its staged keys right after the replay, if nothing else wrote the log since
	 * (else they are dropped, with a warning); pcache_cache_staged_recovered() says how many.
	 * Memory that holds no staging ksets (all zero, or another layout) is simply taken over.
	 */
	void *stage_shm;
};

/* Bytes of shared memory pcache_cache_opts.stage_shm must have. */
size_t pcache_stage_shm_size(void);

#define PCACHE_DEFAULT_SPACE_TIMEOUT_S 60

/* Open the device, replay the log, start the threads. -errno and a message in err. */
int pcache_cache_start(const struct pcache_cache_opts *opts, struct pcache_cache **out,
		       char *err, size_t errlen);
/*
 * Stop: refuse new I/O, persist every staging kset, stop the threads, detach every image
 * (dirty data stays on the cache device), close the device. With drain, write back all dirty
 * data first. Returns the first error met while persisting (the cache is stopped anyway).
 * -ETIMEDOUT: a writeback batch to a slow backing was still in flight after 5 s; the staging
 * ksets are persisted but nothing is freed or closed, and the caller must exit without using
 * the engine again (the next start replays the log as after a crash; dirty data stays dirty).
 */
int pcache_cache_stop(struct pcache_cache *c, bool drain);
/*
 * Begin stopping without waiting: refuse new I/O, fail writers waiting for cache space with
 * -EIO (nothing of theirs was acknowledged) and end running writeback drains with -ESHUTDOWN,
 * so that every I/O thread returns soon. Dirty data stays on the cache device. Any thread, any
 * number of times, until pcache_cache_stop(), which must still be called (after the I/O
 * threads are gone). NULL is a no-op.
 */
void pcache_cache_abort_waits(struct pcache_cache *c);
/* Keys a start logged from the staging memory of a dead process (stage_shm); 0 if none. */
uint64_t pcache_cache_staged_recovered(const struct pcache_cache *c);
/* Start the background threads deferred by defer_background (else a no-op). 0 or -errno. */
int pcache_cache_start_background(struct pcache_cache *c, char *err, size_t errlen);

/* ---- images ------------------------------------------------------------------------------- */

struct pcache_attach_opts {
	const char *name;
	const char *path;         /* NULL: use the path stored in the image table */
	bool allow_path_change;   /* accept a path that differs from the stored one */
	bool rekey;               /* accept a backing whose identity differs from the stored one
				   * (clean images only), dropping its cached data */
	uint64_t own_dev;         /* st_dev of the caller's own FUSE mount: refused (0 = none) */
	bool read_only;
	int cache_mode;           /* -1 = keep stored (new images: writeback) */
};

/*
 * Attach an image. The backing is opened first, before any engine lock, and owned while
 * attached (flock / O_EXCL, see backing.h). Refused: the cache device itself or a backing that
 * reaches the same data as another attached image, however named (-EINVAL / -EBUSY), a path on
 * own_dev (-EINVAL). A new name is added to the image table with the backing's stable identity
 * (backing.h struct pcache_ident), size, logical block size and its mode/uid/gid; a known name
 * must match all of these (a different path only with allow_path_change; a different identity
 * only with rekey and no dirty data), else -EEXIST with one line naming stored and found
 * identity, and nothing changes. Returns 0 and a referenced *out (may be NULL if not wanted).
 */
int pcache_image_attach(struct pcache_cache *c, const struct pcache_attach_opts *ao,
			struct pcache_image **out, char *err, size_t errlen);
/*
 * Before attaching several images at once: 0 if no two of paths reach the same data, else
 * -EBUSY with the reason (so the refusal comes before anything is written). Unopenable paths
 * are left to the attach.
 */
int pcache_backings_distinct(const char *const *names, const char *const *paths, int n,
			     char *err, size_t errlen);
/*
 * Attach every image of the image table that is not attached yet; 0 or the first error. An
 * image whose backing path does not exist (-ENOENT, -ENXIO, -ENODEV) is skipped with a log
 * line: it stays in the table with its cached data, listed by pcache_cache_unattached(), and
 * comes back with pcache_image_attach() once its backing is there.
 */
int pcache_cache_attach_known(struct pcache_cache *c, char *err, size_t errlen);
/* The same, leaving out the n_skip images named in skip (the caller attaches them itself). */
int pcache_cache_attach_known_except(struct pcache_cache *c, const char *const *skip, int n_skip,
				     char *err, size_t errlen);

/* An image of the image table that is not attached. */
struct pcache_unattached {
	char name[PCACHE_NAME_MAX + 1];
	char path[PCACHE_PATH_MAX + 1];
	bool missing;            /* meant to be attached (not detached): its backing was not found */
	uint64_t dirty_bytes;    /* cached data not written back to it yet */
};
/* Up to max images of the table that are not attached; returns the count or -ENOMEM. */
int pcache_cache_unattached(struct pcache_cache *c, struct pcache_unattached *v, int max);
/*
 * Detach: wait for I/O in flight on the image, persist its keys. With forget, also remove it
 * from the image table, which needs the image to be clean (-EBUSY otherwise).
 */
int pcache_image_detach(struct pcache_cache *c, const char *name, bool forget);

/*
 * Give up the image's dirty data (its backing failed for good, or is gone): detach it if
 * attached and remove it from the image table although it is dirty; its keys then belong to no
 * image, so the writeback passes them and the other images' dirty data flows again. The
 * backing keeps the crash-consistent state the writeback had reached. Logged; *lost_bytes (may
 * be NULL) gets the dirty bytes dropped. 0, -ENOENT (unknown name), or an image-table error.
 */
int pcache_image_give_up(struct pcache_cache *c, const char *name, uint64_t *lost_bytes);

/* Look up by name with a reference (NULL if not attached). */
struct pcache_image *pcache_image_get(struct pcache_cache *c, const char *name);
void pcache_image_put(struct pcache_image *img);
/* Up to max referenced attached images in name order; returns the count. */
int pcache_cache_images(struct pcache_cache *c, struct pcache_image **v, int max);

const char *pcache_image_name(const struct pcache_image *img);
/*
 * Rename a known image (attached or not) and give it a new backing path (the same backing:
 * its identity is unchanged, a renamed file). Durable in the image table on return; the cached
 * data stays with it. 0, -EINVAL (bad name or path), -ENOENT, -EEXIST (the new name is known).
 */
int pcache_image_rename(struct pcache_cache *c, const char *name, const char *to, const char *path);
uint64_t pcache_image_size(const struct pcache_image *img);
uint32_t pcache_image_lbs(const struct pcache_image *img);      /* engine sector size */
/* 512-byte blocks its backing occupies now (a file's allocation; du of the image). */
uint64_t pcache_image_blocks(const struct pcache_image *img);
/* fstat of the image's open backing: 0 or -errno. */
int pcache_image_backing_stat(const struct pcache_image *img, struct stat *st);
/* Largest size a file image grows to. */
#define PCACHE_GROW_MAX (16ull << 40)
/*
 * Growable images (files; block devices keep their size): growable by default, switchable,
 * persisted in the image table. pcache_image_grow() makes the image bytes long (if longer):
 * the new size is durable in the image table before it returns, the backing file is extended
 * (zeros), and I/O up to the new size is accepted afterwards. 0, -EFBIG (not growable, or past
 * PCACHE_GROW_MAX), -EROFS, or the errno of the table or the backing.
 */
bool pcache_image_growable(const struct pcache_image *img);
int pcache_image_set_growable(struct pcache_image *img, bool on);
int pcache_image_grow(struct pcache_image *img, uint64_t bytes);
/*
 * Make a growable image bytes long if it is longer (ftruncate down): the bytes past the new
 * end are dropped from the cache, dirty ones included (they become zeros first, in log order,
 * so the writeback never puts old bytes back), the file is cut, then the new size is recorded.
 * A crash leaves the old size with zeros past the new end, or the new size. I/O past the new
 * end fails afterwards. 0, -EPERM (not growable: a block device, growable=0), -EROFS, or an
 * I/O error. Callers serialize size changes of one image.
 */
int pcache_image_shrink(struct pcache_image *img, uint64_t bytes);
/* Mode/owner shown on the mount (persisted in the image table). */
void pcache_image_attr(const struct pcache_image *img, uint32_t *mode, uint32_t *uid, uint32_t *gid);
int pcache_image_set_attr(struct pcache_image *img, uint32_t mode, uint32_t uid, uint32_t gid);

/* ---- I/O ---------------------------------------------------------------------------------- */

#define PCACHE_IO_FUA (1u << 0)   /* make this write durable before returning (O_SYNC/O_DSYNC) */
#define PCACHE_IO_PENDING 1       /* pcache_image_read(): done() will be called later */

typedef void (*pcache_io_done_fn)(void *priv, int status);

/*
 * Read len bytes at off into buf (off and len multiples of pcache_image_lbs(), else -EINVAL;
 * beyond the image: -EINVAL). Returns 0 when the read completed inline (done is not called),
 * PCACHE_IO_PENDING when a miss went to the backing image (done(priv, status) is called once,
 * from the completion thread; buf must stay valid until then), or -errno (done not called).
 * Hits never wait. With data CRCs on, a hit whose CRC does not match fails the read with -EIO
 * (counted in crc_errors); no wrong data is returned.
 * NOTE: done may be NULL (tools, tests): misses are then read synchronously in the caller's
 * thread and the call returns 0 or -errno, never PCACHE_IO_PENDING.
 */
int pcache_image_read(struct pcache_image *img, void *buf, uint64_t off, size_t len,
		      pcache_io_done_fn done, void *priv);
/* pcache_image_read() that waits for a pending read: 0 or -errno. */
int pcache_image_read_wait(struct pcache_image *img, void *buf, uint64_t off, size_t len);
/*
 * Zero-copy reads: the bytes of a read that is entirely cached, pointed to in place.
 * pcache_image_read_pin() succeeds (0) only when every byte of [off, off+len) is a hit (data or
 * zeroed); pin->iov[0..niov) then holds the bytes in order (total len; zeroed ranges point to
 * a shared read-only zero buffer). Until pcache_read_unpin() those bytes stay valid and
 * unchanged: their segments are not freed or reused, and the image counts the read as in
 * flight (detach and stop wait for it). Returns PCACHE_PIN_FALLBACK (nothing pinned, nothing
 * counted) when any part misses, has a miss in flight or needs more than PCACHE_PIN_MAX_IOV
 * pieces: read it with pcache_image_read() instead. -errno as pcache_image_read(), including
 * -EIO for a data CRC mismatch (counted); nothing stays pinned after an error. len == 0: 0
 * with niov == 0. The pin is caller-owned memory (~2 KiB); unpin exactly once after 0
 * (a no-op for a pin that holds nothing). The caller may rewrite iov[] (e.g. trim it).
 * NOTE: keep pins short (one reply): a pinned segment that GC frees stays allocated until the
 * unpin, so a pin held for long keeps cache space from writers.
 */
#define PCACHE_PIN_MAX_IOV 64
#define PCACHE_PIN_FALLBACK 2

struct pcache_read_pin {
	struct iovec iov[PCACHE_PIN_MAX_IOV];
	uint32_t niov;
	/* engine-private */
	uint32_t nseg;
	struct pcache_image *img;             /* entered (io count held), NULL when nothing held */
	uint32_t seg[PCACHE_PIN_MAX_IOV];     /* pinned data segments */
};

int pcache_image_read_pin(struct pcache_image *img, uint64_t off, size_t len,
			  struct pcache_read_pin *pin);
void pcache_read_unpin(struct pcache_read_pin *pin);
/*
 * A zero-copy reply from pinned bytes failed because the kernel could not read them (EFAULT: a
 * media error of the cache device; the kernel ends that request with EIO): counted in status.
 */
void pcache_image_note_media_error(struct pcache_image *img);

/*
 * Write (same alignment rules). Acknowledged when in the cache; durable at the next flush or
 * at return with PCACHE_IO_FUA. May wait for space when the cache is full (first come first
 * served, counted in full_waits); -EIO when no space can ever be freed (writeback stopped
 * on a corrupt log, or the cache is stopping) or after waiting space_timeout (counted). -EROFS
 * on a read-only image, -ENODEV once the image is detaching. Cache modes: writeback (default);
 * writethrough (the cache is written and staged as a THROUGH key first, then the backing image,
 * synchronously; acknowledged when both are); writearound (the backing image only; cached
 * copies of the range are replaced, placeholders of misses in flight dropped).
 */
int pcache_image_write(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
		       unsigned int flags);
/*
 * A write that does not hold the caller's thread for the backing I/O: in writethrough mode the
 * cached copy is written and staged as for pcache_image_write(), then the backing is written
 * from that copy (and for PCACHE_IO_FUA flushed) and PCACHE_IO_PENDING returned (writearound:
 * the cached parts of the range are replaced as for pcache_image_write(), then the backing is
 * written from a copy the engine makes);
 * done(priv, status) runs when that is over (status 0 or -errno, as the synchronous write
 * would have returned), on the backing's completion thread or, when the backing refused the
 * submission, on the caller's before the call returns. buf is read during the call only. In
 * writeback mode it is pcache_image_write(): 0 or -errno at return, done() not called.
 */
int pcache_image_write_async(struct pcache_image *img, const void *buf, uint64_t off, size_t len,
			     unsigned int flags, pcache_io_done_fn done, void *priv);
/*
 * fsync semantics: every write acknowledged before the call is durable when it returns (all
 * staging ksets holding keys are closed and persisted; the flush epoch advances). In
 * writethrough/writearound mode the backing image is flushed too.
 */
int pcache_image_flush(struct pcache_image *img);
int pcache_cache_flush(struct pcache_cache *c);
/* Discard (zero = false) or zero a range: a ZERO key, reads return zeros at once. */
int pcache_image_discard(struct pcache_image *img, uint64_t off, uint64_t len, bool zero);

/* ---- writeback and tunables --------------------------------------------------------------- */

/* Write back every dirty byte of the image (or of all images) and flush the backing. */
int pcache_image_writeback_all(struct pcache_image *img);
int pcache_cache_writeback_all(struct pcache_cache *c);

/*
 * Tunables, typed (the daemon turns the control files' text into these: fuse/knobs.c). A value
 * above pcache_knob_max() is -EINVAL and changes nothing; an accepted one is persisted in
 * cache_info before return, except space_timeout (seconds), which lives for the run only.
 */
enum pcache_knob {
	PCACHE_KNOB_GC_PERCENT,      /* GC starts at this percent of segments used (0..90) */
	PCACHE_KNOB_WRITEBACK_RATE,  /* bytes/s, 0 = unlimited */
	PCACHE_KNOB_DIRTY_HIGH,      /* percent of the data area dirty: writeback at full speed */
	PCACHE_KNOB_DIRTY_LOW,       /* ... until below this one */
	PCACHE_KNOB_SPACE_TIMEOUT,   /* seconds a writer waits for space (0 = no limit) */
	PCACHE_KNOB_COUNT
};
uint64_t pcache_knob_max(enum pcache_knob k);
int pcache_cache_set(struct pcache_cache *c, enum pcache_knob k, uint64_t v);
uint64_t pcache_cache_get(struct pcache_cache *c, enum pcache_knob k);
/*
 * An image's cache mode (PCACHE_MODE_*, format.h). Leaving writeback first writes the image's
 * dirty data back (its error is returned and the mode stays). Persisted. -EINVAL: no such mode.
 */
int pcache_image_set_cache_mode(struct pcache_image *img, uint32_t mode);
uint32_t pcache_image_cache_mode(const struct pcache_image *img);
/*
 * An image's sequential cutoff in bytes: a read stream (reads that follow each other, up to
 * 1 MiB out of order) that has read more than this in a row reads its misses from the backing
 * without caching them (hits still come from the cache), so a backup, a dd or an image copy
 * does not push the working set out. 0 = no cutoff (every read is cached). Default 4 MiB.
 * Stored in KiB (rounded up), persisted; -EINVAL above PCACHE_SEQ_CUTOFF_MAX.
 */
#define PCACHE_SEQ_CUTOFF_MAX (1ull << 40)
int pcache_image_set_seq_cutoff(struct pcache_image *img, uint64_t bytes);
/*
 * Cap the image's share of the cache's data area at pct percent (persisted; 0 or 100 = no
 * cap; -EINVAL above 100). Past it, its read misses are not cached and its writes in writeback
 * mode go around the cache (as in writearound mode), so one image's burst or scan cannot evict
 * every other image's data; GC does not copy its data forward while it is over.
 */
int pcache_image_set_max_share(struct pcache_image *img, uint32_t pct);
uint32_t pcache_image_max_share(struct pcache_image *img);
uint64_t pcache_image_seq_cutoff(const struct pcache_image *img);
/*
 * Is name valid for an image (the image table's rule: 1..PCACHE_NAME_MAX bytes, no '/', no
 * control characters, not ".", ".." or ".pcache")?
 */
bool pcache_name_valid(const char *name);
/* The image table's entry of a known image by name (attached or not): 0 or -ENOENT. */
int pcache_cache_known_image(struct pcache_cache *c, const char *name, struct pcache_image_ent *e);

/* ---- status ------------------------------------------------------------------------------- */

struct pcache_image_stats {
	uint64_t reads, writes, flushes, discards;
	uint64_t read_bytes, write_bytes;
	uint64_t read_hit_bytes, read_miss_bytes;
	uint64_t read_bypass_bytes;           /* misses not cached: a sequential stream past the cutoff */
	uint64_t write_bypass_bytes;          /* writeback-mode writes of such a stream, sent around */
	uint64_t seq_cutoff;                  /* bytes, 0 = none */
	uint32_t max_share;                   /* percent of the data area, 0 = no cap */
	uint64_t share_bypass_bytes;          /* read and write bytes past the cap, not cached */
	uint64_t dirty_bytes, cached_bytes;   /* indexed now */
	uint64_t crc_errors, backing_errors;
	uint64_t wb_lsn, wb_time, wb_bytes;
	uint64_t wb_errors;                   /* failed writebacks of this image */
	int wb_last_error;                    /* -errno of the last one, 0 once one succeeds:
					       * non-zero = the backing is failing now */
	uint32_t cache_mode;
};
void pcache_image_get_stats(struct pcache_image *img, struct pcache_image_stats *st);

struct pcache_cache_status {
	uint32_t seg_count, segs_used, segs_data, segs_log;
	uint64_t seg_size;
	struct pcache_pos key_head, dirty_tail, key_tail;
	uint32_t gc_percent, dirty_high, dirty_low;
	/* gc_percent auto: GC keeps gc_reserve free segments (gc_percent is then the usage that
	 * leaves, in percent); copy-forward: bytes and keys GC copied to the head, bytes dropped */
	bool gc_auto;
	uint32_t gc_reserve;
	uint64_t gc_copied_bytes, gc_copied_keys, gc_dropped_bytes;
	uint64_t wb_rate;
	bool data_crc;
	const char *granularity;
	uint64_t full_waits, full_wait_ns;   /* writers that waited for space */
	uint64_t space_timeouts;             /* writers that waited space_timeout and got -EIO */
	uint64_t ksets_written, keys_indexed, index_bytes;
	/* flushes (fsync): log commits, and flushes a commit that began after them covered */
	uint64_t flush_commits, flush_joined;
	uint64_t wb_errors, gc_runs, segs_freed;
	/* reads of the cache device that hit a media error (poison, a page gone): key log and data */
	uint64_t media_errors;
	/* writeback: bytes written to backings (data + zeroed), and dirty bytes not written
	 * because a later key of the same flush epoch replaced them */
	uint64_t wb_bytes, wb_superseded;
	uint64_t dirty_bytes;                /* data not written back yet (the watermarks' measure) */
	uint32_t dirty_percent;              /* ... in percent of the cache's capacity */
	uint32_t images;
};
void pcache_cache_get_status(struct pcache_cache *c, struct pcache_cache_status *st);

#endif
