/*
 * cache_dev.h -- the cache device: libpmem2 mapping, the persistence seam, format v1 and the
 * crash-safe metadata records (superblock, cache info, tails, image table, segment records).
 *
 * Depends only on format.h and util.h (libpmem2 stays inside core/pmem.c: no libpmem2 type or
 * PMEM2_E_* code escapes; every function returns 0 or -errno). Used by the engine (core/) and by the
 * admin command (admin/) for offline format/info/check/dump.
 *
 * Thread safety: the record update functions serialise on an internal mutex per record kind;
 * the engine calls them from its own threads. Reads of the in-memory copies are the caller's
 * business (the engine keeps its own state; these are the durable copies).
 * NOTE: the internal mutexes are leaves for callers: cache_dev never calls back into its caller
 * while holding one (internal order: image table -> cache_info; tails and segments are
 * independent), so any engine lock may be held across these calls. pcache_cache_dev_seg_gen()
 * takes no lock at all.
 */
#ifndef PCACHE_CACHE_DEV_H
#define PCACHE_CACHE_DEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pcache/format.h"

/* ---- the persistence seam ----------------------------------------------------------------- */

/*
 * Every store into the mapping that must become durable goes through one of these (data copies,
 * metadata slot writes, zeroing). Production: libpmem2's functions for the mapping. Tests:
 * counters, or the crash emulator (only ranges passed to persist/flush+drain survive a
 * simulated power failure). ctx is the seam's own state.
 *
 *  memcpy: copy len bytes to dst (inside the mapping); when flags has PCACHE_PM_NODRAIN the copy
 *          is flushed but not drained (a later drain() orders it), otherwise it is durable on return.
 *  memset: same for a fill.
 *  persist: make [addr, addr+len) durable (flush + drain).
 *  flush / drain: the two halves of persist.
 */
#define PCACHE_PM_NODRAIN (1u << 0)
#define PCACHE_PM_NONTEMPORAL (1u << 1)

struct pcache_pmem_ops {
	void (*memcpy)(void *ctx, void *dst, const void *src, size_t len, unsigned int flags);
	void (*memset)(void *ctx, void *dst, int c, size_t len, unsigned int flags);
	void (*persist)(void *ctx, const void *addr, size_t len);
	void (*flush)(void *ctx, const void *addr, size_t len);
	void (*drain)(void *ctx);
};

struct pcache_pmem {
	const struct pcache_pmem_ops *ops;
	void *ctx;
};

/* ---- opening ------------------------------------------------------------------------------ */

struct pcache_cache_dev;

struct pcache_format_opts {
	uint64_t seg_size;     /* 0 = pcache_default_seg_size() of the device */
	uint32_t max_images;   /* image table entries; 0 = pcache_default_max_images() */
	bool data_crc;
	uint32_t gc_percent;   /* 0 = default; stored as given when set_gc_percent is true */
	bool set_gc_percent;
};

struct pcache_cache_dev_opts {
	const char *path;          /* DAX device, file on fsdax, or any regular file */
	uint64_t create_size;      /* create/extend a missing regular file to this size (0 = no) */
	bool format_if_blank;      /* an all-zero device (no superblock) gets formatted */
	const struct pcache_format_opts *format; /* options used when formatting a blank device */
	bool read_only;            /* offline inspection: map read-only, write nothing */
	bool no_lock;              /* do not take the exclusive lock (read-only tools only) */
	/*
	 * Wrap the production seam (tests): called once after mapping with the libpmem2 seam;
	 * returns the seam to use. NULL = use libpmem2 directly.
	 */
	struct pcache_pmem (*wrap_pmem)(struct pcache_pmem real, void *base, uint64_t size, void *arg);
	void *wrap_arg;
	bool prefault;             /* touch every page at start (avoids first-touch latency later) */
	/*
	 * Tests: called before every read of the device (metadata loads and
	 * pcache_cache_dev_pread()) with its range; a non-zero return fails that read with -EIO
	 * (or the negative value returned), emulating poisoned media. NULL in production.
	 */
	int (*read_fault)(uint64_t off, size_t len, void *arg);
	void *read_fault_arg;
};

/*
 * Open (and lock) a cache device, validate everything, load the newest valid copy of every
 * record. On error returns -errno and a message naming the structure in err, e.g.
 * "superblock: bad magic (not a pcachefs cache device; use 'pcachectl format')",
 * "cache_info: both slots invalid", "segment 17 record: both slots invalid",
 * "locked by pid 1234 (pcachefs)". Nothing is written on error.
 * Error codes: -ENOENT missing device (and no create_size), -EBUSY locked by another open
 * (err names the holder), -ENODATA blank device not formatted (format_if_blank false or
 * read_only), -EMEDIUMTYPE not a pcachefs device (foreign data), -EPROTONOSUPPORT newer format
 * version or unknown incompatible feature, -ENOSPC too small to format, -EUCLEAN corrupt
 * metadata (err names the structure), -EINVAL bad options, -EIO and others from the system.
 * NOTE: a missing *or empty* regular file is created/extended to create_size; the exclusive
 * lock is flock(LOCK_EX) (LOCK_SH when read_only), held by the device fd until close, and the
 * holder is named from /proc/locks.
 */
int pcache_cache_dev_open(const struct pcache_cache_dev_opts *opts, struct pcache_cache_dev **out,
			  char *err, size_t errlen);
/* Persist nothing more, unmap, unlock, free. */
void pcache_cache_dev_close(struct pcache_cache_dev *cd);

/* Format the device at path (create at create_size if missing): destroys its content. */
int pcache_cache_dev_format(const char *path, uint64_t create_size,
			    const struct pcache_format_opts *fo, char *err, size_t errlen);

/* ---- geometry and mapping ----------------------------------------------------------------- */

struct pcache_pmem *pcache_cache_dev_pmem(struct pcache_cache_dev *cd);
void *pcache_cache_dev_base(const struct pcache_cache_dev *cd);
uint64_t pcache_cache_dev_size(const struct pcache_cache_dev *cd);
uint32_t pcache_cache_dev_seg_count(const struct pcache_cache_dev *cd);
uint64_t pcache_cache_dev_seg_size(const struct pcache_cache_dev *cd);
/* Address of byte 0 of segment seg; NULL when seg >= seg_count. */
void *pcache_cache_dev_seg_addr(const struct pcache_cache_dev *cd, uint32_t seg);
/* "cache line", "page" or "byte": libpmem2's store granularity for this mapping. */
const char *pcache_cache_dev_granularity(const struct pcache_cache_dev *cd);
const struct pcache_sb_om *pcache_cache_dev_sb(const struct pcache_cache_dev *cd);
const char *pcache_cache_dev_path(const struct pcache_cache_dev *cd);
int pcache_cache_dev_fd(const struct pcache_cache_dev *cd);
/* Fault in [off, off + len) of the mapping (first-touch latency paid now; contents unchanged). */
void pcache_cache_dev_prefault(struct pcache_cache_dev *cd, uint64_t off, uint64_t len);
/* Bytes mapped (the device size). */
uint64_t pcache_cache_dev_map_size(const struct pcache_cache_dev *cd);

/*
 * Read len bytes at device offset off with pread() (media errors become -EIO instead of
 * SIGBUS). Used for metadata and replay. -EINVAL if the range is outside the device.
 */
int pcache_cache_dev_pread(struct pcache_cache_dev *cd, void *buf, size_t len, uint64_t off);

/* ---- metadata records (dual slot; each update persisted before return) -------------------- */

/* Decoded cache info. */
struct pcache_cache_info {
	uint32_t flags;          /* PCACHE_INFO_* */
	uint32_t gc_percent;
	uint32_t dirty_high, dirty_low;
	uint64_t wb_rate;
	uint32_t next_image_id;
};
void pcache_cache_dev_get_info(const struct pcache_cache_dev *cd, struct pcache_cache_info *ci);
/*
 * Validates ranges (-EINVAL: gc_percent > 90, dirty_low >= dirty_high, dirty_high > 100,
 * unknown flags, next_image_id 0, a change of PCACHE_INFO_DATA_CRC (fixed at format)), then
 * persists. -EROFS on a read-only open.
 * NOTE: next_image_id never goes back: the larger of the stored and the given value is kept,
 * so a get_info/set_info of the tunables cannot undo a concurrent image_add.
 */
int pcache_cache_dev_set_info(struct pcache_cache_dev *cd, const struct pcache_cache_info *ci);

/* A log position. */
struct pcache_pos {
	uint32_t seg;
	uint32_t off;
	uint64_t lsn;
};
void pcache_cache_dev_get_key_tail(const struct pcache_cache_dev *cd, struct pcache_pos *p);
void pcache_cache_dev_get_dirty_tail(const struct pcache_cache_dev *cd, struct pcache_pos *p);
/* Persist a tail: -EINVAL unless seg < seg_count, off < seg_size and 8-aligned, lsn != 0. */
int pcache_cache_dev_set_key_tail(struct pcache_cache_dev *cd, const struct pcache_pos *p);
int pcache_cache_dev_set_dirty_tail(struct pcache_cache_dev *cd, const struct pcache_pos *p);

/* Segment generation. get is lock-free (an atomic load of the in-memory copy); 0 if out of range. */
uint64_t pcache_cache_dev_seg_gen(const struct pcache_cache_dev *cd, uint32_t seg);
/* Bump the generation of seg by one and persist it before returning. -EINVAL, -EROFS. */
int pcache_cache_dev_seg_gen_bump(struct pcache_cache_dev *cd, uint32_t seg);

/* Image table entry, decoded. */
struct pcache_image_ent {
	uint32_t slot;           /* table index, 0..PCACHE_MAX_IMAGES-1 */
	uint32_t id;             /* 0 = unused */
	uint32_t state;
	uint8_t uuid[16];
	uint64_t size;
	uint32_t lbs;
	uint32_t cache_mode;
	uint32_t file_mode, uid, gid;
	uint64_t wb_lsn, wb_time;
	uint32_t seq_cutoff;     /* as the record: KiB, 0 = default, PCACHE_SEQ_CUTOFF_OFF = none */
	uint32_t max_share;      /* percent of the data area, 0 = no cap */
	bool fixed;              /* a file image that does not grow (PCACHE_IMAGE_F_FIXED) */
	char name[PCACHE_NAME_MAX + 1];
	char path[PCACHE_PATH_MAX + 1];
	char ident[PCACHE_IDENT_LEN];    /* "" = not recorded yet (an entry from before identities) */
};
/*
 * 1 if name is a valid image name (1..127 bytes, no '/', not "." or "..", no control chars).
 * NOTE: ".pcache" is refused too: it is the mount's control directory.
 */
bool pcache_image_name_valid(const char *name);
/* Fill ents with every used entry (up to max); returns the count. */
int pcache_cache_dev_images(const struct pcache_cache_dev *cd, struct pcache_image_ent *ents, int max);
/* Find by name: 0 and *e, or -ENOENT. */
int pcache_cache_dev_image_find(const struct pcache_cache_dev *cd, const char *name,
				struct pcache_image_ent *e);
/*
 * Add a new image (id from next_image_id, new uuid, slot chosen here): fills e->slot, e->id,
 * e->uuid. -EEXIST (name taken), -ENOSPC (table full), -EINVAL (bad name or path).
 * Validated like a loaded entry: path non-empty; lbs a power of two 512..65536 (0 = 512);
 * size a multiple of 512; cache_mode a PCACHE_MODE_*; file_mode <= 07777; state ATTACHED or
 * DETACHED (FREE = 0 means ATTACHED). The bumped next_image_id is durable before the entry.
 */
int pcache_cache_dev_image_add(struct pcache_cache_dev *cd, struct pcache_image_ent *e);
/*
 * Rewrite an existing entry (matched by e->slot and e->id): rename, path, mode, wb_lsn...
 * The uuid is kept from the table (e->uuid is ignored). -ENOENT (no such entry), -EEXIST
 * (name taken by another entry), -EINVAL (as for add).
 * NOTE: every field is written from *e: two threads updating different fields from their own
 * copies undo each other; use image_modify / image_set_wb for field updates.
 */
int pcache_cache_dev_image_update(struct pcache_cache_dev *cd, const struct pcache_image_ent *e);
/*
 * Read-modify-write of one entry under the table lock, so concurrent updates of different
 * fields (writeback progress vs. mode/owner/rename) never undo each other: fn(e, arg) edits the
 * current entry (it must not call into cache_dev; slot, id and uuid are restored after it);
 * the result is validated and persisted like image_update, and copied to *out when out is not
 * NULL. -ENOENT (no entry slot with this id), -EEXIST, -EINVAL, -EROFS.
 */
int pcache_cache_dev_image_modify(struct pcache_cache_dev *cd, uint32_t slot, uint32_t id,
				  void (*fn)(struct pcache_image_ent *e, void *arg), void *arg,
				  struct pcache_image_ent *out);
/* Persist the writeback progress (wb_lsn, wb_time) of one entry, leaving its other fields. */
int pcache_cache_dev_image_set_wb(struct pcache_cache_dev *cd, uint32_t slot, uint32_t id,
				  uint64_t wb_lsn, uint64_t wb_time);
/* Free the slot (the id is never reused). */
int pcache_cache_dev_image_remove(struct pcache_cache_dev *cd, uint32_t slot);

/* ---- offline check ------------------------------------------------------------------------ */

enum pcache_check_result { PCACHE_CHECK_CLEAN = 0, PCACHE_CHECK_REPAIRABLE = 1, PCACHE_CHECK_CORRUPT = 2 };

/*
 * Number of records (superblock copies included) whose load found one damaged slot -- a torn
 * update or corruption -- and used the other, valid one. The device works; the next update of
 * such a record rewrites the damaged slot (pcache_cache_dev_repair() does it at once).
 */
unsigned int pcache_cache_dev_damaged(const struct pcache_cache_dev *cd);
/*
 * Report what the load found: report(arg, line) is called once per finding ("cache_info slot 1:
 * bad CRC; using slot 0 (seq 7)"). Returns PCACHE_CHECK_CLEAN or PCACHE_CHECK_REPAIRABLE (an
 * open device is never CORRUPT: open refuses corrupt devices with -EUCLEAN). report may be NULL.
 */
enum pcache_check_result pcache_cache_dev_check(const struct pcache_cache_dev *cd,
						void (*report)(void *arg, const char *line),
						void *arg);
/*
 * Rewrite every damaged slot found at load from the valid copy (same values, next seq), and a
 * damaged superblock copy from the good one. 0, -EROFS on a read-only open.
 */
int pcache_cache_dev_repair(struct pcache_cache_dev *cd);

/* Format geometry for a device of dev_size bytes: 0, -EINVAL (bad seg_size) or -ENOSPC. */
int pcache_cache_dev_geometry(uint64_t dev_size, uint64_t seg_size, uint32_t max_images,
			      uint32_t *seg_count, uint64_t *seg_base);
/* Entries of the device's image table (64 for a version 1 device). */
uint32_t pcache_cache_dev_max_images(const struct pcache_cache_dev *cd);

#endif
