/*
 * cache_dev_i.h -- private to the cache-device files (core/cache_dev*.c): the device structure
 * and the helpers they share. The public interface is include/pcache/cache_dev.h; the
 * invariants and the lock order are at the top of core/cache_dev.c.
 *
 *   cache_dev.c          open, lock, map, close, accessors, check and repair
 *   cache_dev_load.c     reading and validating every record at open
 *   cache_dev_records.c  encoding, validation and the crash-safe update of each record
 *   cache_dev_format.c   format v1
 */
#ifndef PCACHE_CACHE_DEV_I_H
#define PCACHE_CACHE_DEV_I_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "pcache/cache_dev.h"
#include "pmem_i.h"

/* the record locks are taken in const accessors too */
#define LOCK(cd, l) pthread_mutex_lock((pthread_mutex_t *)&(cd)->l)
#define UNLOCK(cd, l) pthread_mutex_unlock((pthread_mutex_t *)&(cd)->l)

#define MD_PAGE 4096u
#define NOTES_MAX 64u

/* Bookkeeping of one dual-slot record. */
struct rec_slot {
	uint64_t seq;    /* seq of the newest valid copy */
	uint8_t newest;  /* slot index holding it */
	bool damaged;    /* the other slot was non-blank and invalid at load (not yet rewritten) */
};

struct pcache_cache_dev {
	char *path;
	int fd;
	bool read_only;
	bool created;               /* this open created the file (removed again if it fails) */
	bool locked;                /* the flock is held */
	struct pcache_pmem_map map;
	struct pcache_pmem pmem;    /* the seam in use: map.seam, or what wrap_pmem returned */
	int (*read_fault)(uint64_t off, size_t len, void *arg); /* tests: opts->read_fault */
	void *read_fault_arg;

	/* immutable after open */
	struct pcache_sb_om sb;
	uint32_t seg_count;
	uint64_t seg_size;
	uint64_t seg_base;
	uint64_t md_len;            /* end of the segment table */
	uint32_t max_images;        /* entries of the image table (sb->max_images) */
	uint64_t segtab_off;        /* PCACHE_SEGTAB_OFF(max_images) */
	bool sb_damaged[2];         /* superblock copy damaged at load */

	/* findings of the load (written during open and repair only) */
	unsigned int damaged;
	unsigned int note_count;
	char notes[NOTES_MAX][160];

	/* protects info and info_rs; taken after img_lock */
	pthread_mutex_t info_lock;
	struct pcache_cache_info info;
	struct rec_slot info_rs;

	/* protects the two tails and their slots (leaf lock) */
	pthread_mutex_t tail_lock;
	struct pcache_pos key_tail, dirty_tail;
	struct rec_slot key_rs, dirty_rs;

	/* protects the image table copy; taken before info_lock (add bumps next_image_id) */
	pthread_mutex_t img_lock;
	struct pcache_image_ent img[PCACHE_MAX_IMAGES];
	struct rec_slot img_rs[PCACHE_MAX_IMAGES];

	/* protects seg_rs and the writers of seg_gen (leaf lock); seg_gen is read lock-free */
	pthread_mutex_t seg_lock;
	_Atomic uint64_t *seg_gen;
	struct rec_slot *seg_rs;
};

/* The metadata area as read at open: its bytes, and which pages could not be read. */
struct md_buf {
	uint8_t *buf;
	uint64_t len;
	bool *bad_page;
};


/* cache_dev.c (helpers, geometry, open) */
bool cd_all_zero(const void *p, size_t len);
void cd_assert_state(struct pcache_cache_dev *cd);
int cd_pread(struct pcache_cache_dev *cd, void *buf, size_t len, uint64_t off);
void cd_note(struct pcache_cache_dev *cd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cd_random_uuid(uint8_t uuid[16]);
uint32_t cd_rec_crc(const void *rec, size_t len);
uint64_t cd_seg_base_for(uint32_t max_images, uint64_t seg_count);
int cd_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* cache_dev_records.c */
void cd_image_commit(struct pcache_cache_dev *cd, const struct pcache_image_ent *e);
int cd_image_decode(struct pcache_image_ent *e, uint32_t slot, const struct pcache_image_om *om,
		    char *why, size_t len);
int cd_info_check(const struct pcache_cache_info *ci, char *why, size_t len);
void cd_info_commit(struct pcache_cache_dev *cd, const struct pcache_cache_info *ci);
void cd_info_decode(struct pcache_cache_info *ci, const struct pcache_cache_info_om *om);
void cd_info_encode(struct pcache_cache_info_om *om, const struct pcache_cache_info *ci);
int cd_pos_check(const struct pcache_cache_dev *cd, const struct pcache_pos *p, char *why,
		 size_t len);
void cd_seg_commit(struct pcache_cache_dev *cd, uint32_t seg, uint64_t gen);
void cd_tail_encode(struct pcache_tail_om *om, const struct pcache_pos *p);
int cd_tail_set(struct pcache_cache_dev *cd, const struct pcache_pos *p, bool dirty);

/* cache_dev_load.c */
void cd_md_free(struct md_buf *md);
int cd_md_read(struct pcache_cache_dev *cd, struct md_buf *md, uint64_t len);
int cd_records_load(struct pcache_cache_dev *cd, const struct md_buf *md, char *err,
		    size_t errlen);
int cd_sb_load(struct pcache_cache_dev *cd, const uint8_t *slots, const bool unreadable[2],
	       char *err, size_t errlen);

/* cache_dev_format.c */
int cd_format(struct pcache_cache_dev *cd, const struct pcache_format_opts *fo, char *err,
	      size_t errlen);

#endif
