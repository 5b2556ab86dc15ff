/*
 * cache_i.h -- private interface of the cache engine (core/segment.c, cache_key.c, cache_kset.c,
 * cache_req.c, cache_gc.c, cache.c, cache_replay.c, cache_image.c, cache_wbglue.c). Nothing
 * outside core/ (and the engine's unit tests) includes it.
 *
 * GLOBAL LOCK ORDER (take left before right; never the other way):
 *
 *   c->img_lock -> c->gc_lock -> c->flush_lock -> subtree.lock -> stage.lock -> c->log.lock
 *     -> head.lock -> c->segs.lock -> (cache_dev record mutexes, backing submit locks)
 *   c->missreg_lock is a leaf (taken under a subtree lock; nothing is taken under it).
 *   img->through (a gate, not a lock held by one thread) is entered with no engine lock held:
 *   shared by a writethrough/writearound write from before its backing I/O is submitted until
 *   that I/O ends (possibly on the backing's completion thread: an asynchronous writethrough
 *   write), exclusively by the writeback around the issue and wait of that image's requests
 *   (cache_writeback.c), never across a rate-limit sleep. Its mutex is a leaf.
 *   c->knob_lock -> (cache_dev info_lock, the writeback's wb->lock): a knob update only.
 *
 *   c->gc_lock is held by the GC thread around one GC step, and around every walk of the log
 *   that starts behind key_head (attach replay, dirty scans), so GC cannot free a key-log
 *   segment under a walker. c->bg_lock (wake flags) and img->ent_lock are leaves.
 *   The writeback calls back into the engine (key_head: c->log.lock; backing_get/put:
 *   c->img_lock; dirty_percent: c->log.lock, c->segs.lock; tail_moved: c->bg_lock; live: a
 *   subtree lock, then a stage lock, both by bounded trylock, and may close that stage) holding
 *   none of its own locks; its own locks are leaves for the engine (pcache_wb_kick() is
 *   called from a kset close, under subtree and stage locks).
 *
 * Waiting for space (the only blocking waits on the request path) happens in two places:
 *  - pcache_seg_alloc() on c->segs.cond, with only c->segs.lock held (a data head's lock is
 *    released first: the completion thread allocates from heads too, with trylock);
 *  - a staging kset close that needs a new key-log segment, with the subtree and stage locks
 *    held but c->log.lock released.
 * Neither the GC thread, the timer thread nor the backing completion thread ever waits for space
 * or blocks on a subtree or stage lock (they use trylock), so they keep freeing space.
 */
#ifndef PCACHE_CACHE_I_H
#define PCACHE_CACHE_I_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "pcache/backing.h"
#include "pcache/cache.h"
#include "pcache/cache_dev.h"
#include "pcache/format.h"
#include "pcache/util.h"

#define PCACHE_REGION_SIZE (1u << PCACHE_REGION_SHIFT)
#define PCACHE_NSTAGE 16u           /* staging ksets (striped by image and 4 MiB region) */
#define PCACHE_NHEADS 4u            /* data heads */
#define PCACHE_LOG_RESERVE 2u       /* free segments data allocation leaves to the key log */
#define PCACHE_KSET_CLOSE_NS 1000000000ull   /* close a kset ~1 s after its first key */
#define PCACHE_HEAD_IDLE_NS 2000000000ull    /* release an idle data head after ~2 s */
#define PCACHE_IDLE_MS 200u         /* no user I/O this long: the writeback counts as idle */
#define PCACHE_MISSREG_BUCKETS 256u
#define PCACHE_GC_BUF_SIZE (256u << 10) /* GC's copy-forward buffer: keys up to this size */

/*
 * The fences of the hit path's seqlock-style generation check (copy_hits() in cache_read.c is
 * the reader, pcache_seg_alloc() in segment.c the writer; see segment.c invariant 6).
 * NOTE: GCC refuses atomic_thread_fence() under -fsanitize=thread (-Wtsan: TSan does not model
 * fences). TSan builds run on x86-64, where loads are not reordered with loads nor stores with
 * stores, so there a compiler barrier keeps the same order.
 */
#if defined(__SANITIZE_THREAD__)
#define pcache_fence_acquire() __asm__ __volatile__("" ::: "memory")
#define pcache_fence_release() __asm__ __volatile__("" ::: "memory")
#else
#define pcache_fence_acquire() atomic_thread_fence(memory_order_acquire)
#define pcache_fence_release() atomic_thread_fence(memory_order_release)
#endif

/* ---- segment.c: allocation bitmap, refs, generations, data heads ---------------------------- */

enum pcache_seg_kind { PCACHE_SEG_FREE = 0, PCACHE_SEG_DATA = 1, PCACHE_SEG_LOG = 2 };

struct pcache_segs {
	pthread_mutex_t lock;       /* guards everything below except refs */
	pthread_cond_t cond;        /* space freed / ticket served */
	uint64_t *bitmap;           /* 1 = used */
	uint8_t *kind;              /* enum pcache_seg_kind */
	uint32_t count, nfree, hint;
	uint64_t ticket_next, ticket_serving; /* FIFO order of writers waiting for space */
	uint32_t waiters;
	uint64_t full_waits, full_wait_ns, segs_freed;
	uint64_t allocs;            /* segments taken since start (GC's rate estimate) */
	_Atomic uint32_t kick_below; /* an allocation leaving fewer free segments kicks GC */
	bool failed;                /* nothing can ever be freed: waiters get -EIO */
	_Atomic uint64_t wait_timeout_ns; /* a writer waits this long for space, then -EIO (0 = no limit) */
	uint64_t space_timeouts;    /* writers that gave up so */
	bool aborted;               /* the cache is stopping: nobody waits for space any more */
	_Atomic uint32_t *refs;     /* lock-free: keys in the log (+ staged) + head pin */
	_Atomic uint32_t *readers;  /* lock-free: read pins + PCACHE_SEG_FREEING (segment.c inv. 5) */
	_Atomic uint64_t pin_deferred; /* frees left to the last unpin */
};

#define PCACHE_SEG_FREEING (1u << 31)  /* readers[]: refs dropped to 0, the last unpin frees */

struct pcache_head {
	pthread_mutex_t lock;       /* guards the fields below */
	uint32_t seg;
	uint32_t off;
	uint64_t gen;
	bool has_seg;
	uint64_t last_ns;           /* last allocation (idle release) */
};

/* An allocation: [seg_off, seg_off + len) of segment seg at generation gen, one ref taken. */
struct pcache_alloc {
	uint32_t seg, seg_off, len;
	uint64_t gen;
};

struct pcache_cache;

int pcache_segs_init(struct pcache_cache *c);
void pcache_segs_exit(struct pcache_cache *c);
/* Mark seg used with kind (replay). */
void pcache_seg_mark_used(struct pcache_cache *c, uint32_t seg, enum pcache_seg_kind kind);
/* Take a free segment: wait (FIFO) when none is free and wait is set, else -ENOSPC.
 * for_log may use the last PCACHE_LOG_RESERVE segments. -EIO when the cache failed/stops. */
int pcache_seg_alloc(struct pcache_cache *c, bool for_log, bool wait, uint32_t *seg);
/* Free a segment (log segments by GC; data segments when refs reach 0, after the gen bump). */
void pcache_seg_free(struct pcache_cache *c, uint32_t seg);
void pcache_seg_get(struct pcache_cache *c, uint32_t seg);
void pcache_seg_put(struct pcache_cache *c, uint32_t seg);
/*
 * Read pins (zero-copy hits): while pinned, a data segment is not freed (so not reused) even
 * when its last reference drops; the last unpin frees it then. pin: true when seg still has
 * generation gen (the key's), false (nothing pinned) when it was freed since. Lock-free; may be
 * called under a subtree lock. An unpin may free the segment (takes c->segs.lock).
 */
bool pcache_seg_read_pin(struct pcache_cache *c, uint32_t seg, uint64_t gen);
void pcache_seg_read_unpin(struct pcache_cache *c, uint32_t seg);
/* Allocate up to len bytes (may return less) from a data head; may wait for space. */
int pcache_data_alloc(struct pcache_cache *c, uint32_t len, bool wait, struct pcache_alloc *a);
/* Drop the head pins of heads idle for PCACHE_HEAD_IDLE_NS (or all heads with force). */
void pcache_heads_release(struct pcache_cache *c, bool force);
/* Wait until space for metadata-only keys (ZERO) is available (free > reserve). */
int pcache_space_wait(struct pcache_cache *c);
uint32_t pcache_segs_used(struct pcache_cache *c, uint32_t *data, uint32_t *log);
/* Wake every waiter with -EIO (cache stopping or nothing can be freed). */
void pcache_segs_fail(struct pcache_cache *c);
/*
 * The cache is stopping: wake every waiter with -EIO and let nobody wait for space again (an
 * allocation that finds no space fails at once). Allocations that find space still succeed, so
 * the stop can persist the staging ksets. Callable from any thread, more than once.
 */
void pcache_segs_abort_waits(struct pcache_cache *c);

/* ---- cache_key.c: the index ----------------------------------------------------------------- */

#define PCACHE_IKEY_EMPTY (1u << 15)  /* placeholder for an in-flight miss (seg = miss id) */
#define PCACHE_IKEY_EPOCH (1u << 14)  /* epoch16 is the exact flush epoch of the key's kset */
/* writethrough/writearound: the key's data reaches the backing image by the write itself, so
 * no older dirty key of its bytes needs writing any more (index only, not replayed) */
#define PCACHE_IKEY_THROUGH (1u << 13)
/* a writethrough key whose own backing write completed with no overlapping writethrough write
 * in flight beside it: the backing holds its bytes, the writeback need not write them again
 * (index only: after a restart the key is written back as any dirty key) */
#define PCACHE_IKEY_ONBACKING (1u << 12)
/*
 * CLOCK counter of an index key (index only): hits on the key since GC last passed it, 0..3.
 * GC copies a key with a non-zero count forward to the head (one count spent) instead of
 * dropping it (cache_gc.c); a hit adds one (pcache_ikey_touch(), under the subtree lock).
 */
#define PCACHE_IKEY_REF_SHIFT 10
#define PCACHE_IKEY_REF_MAX 3u
#define PCACHE_IKEY_REF_MASK (PCACHE_IKEY_REF_MAX << PCACHE_IKEY_REF_SHIFT)
#define PCACHE_FUA_EPOCHS 64u         /* epochs remembered for FUA writes (struct pcache_log) */

/* An index key (40 B): a non-overlapping extent inside one 4 MiB region. */
struct pcache_ikey {
	uint32_t off;        /* byte offset inside the region */
	uint32_t len;        /* bytes */
	uint32_t seg;        /* data segment; EMPTY: the miss id */
	uint32_t seg_off;    /* data offset in the segment */
	uint64_t seg_gen;    /* generation at allocation */
	uint32_t data_crc;   /* CRC32C of the original extent (crc_len bytes) */
	uint32_t crc_front;  /* bytes cut from the original extent's front */
	uint32_t crc_len;    /* bytes the CRC covers; 0 = no CRC */
	uint16_t flags;      /* PCACHE_KEY_CLEAN/ZERO, PCACHE_IKEY_EMPTY/EPOCH/THROUGH/ONBACKING, REF count */
	uint16_t epoch16;    /* low 16 bits of the kset's flush epoch (with PCACHE_IKEY_EPOCH) */
};

/*
 * Totals of one index (EMPTY placeholders not counted), kept by the subtree functions under
 * each subtree's lock, read with no lock (status): keys, their bytes, the bytes of keys not
 * CLEAN, and the key slots allocated.
 */
struct pcache_index_totals {
	_Atomic int64_t keys, cached, dirty, cap;
};

/* One 4 MiB region: a sorted array of non-overlapping keys. */
struct pcache_subtree {
	pthread_mutex_t lock;       /* guards v, n, cap */
	struct pcache_ikey *v;
	uint32_t n, cap;
	struct pcache_index_totals *tot; /* its index's (NULL: a subtree on its own) */
};

struct pcache_index {
	_Atomic uint32_t nsub;      /* subtrees in use (grows with the image, never shrinks) */
	uint32_t cap;               /* subtrees the mapping has room for */
	size_t map_len;
	struct pcache_subtree *sub;
	struct pcache_index_totals tot;
};

/* An index for size bytes that may grow to max_size (address space only until used). */
int pcache_index_init(struct pcache_index *ix, uint64_t size, uint64_t max_size);
/* Make room for size bytes: -EFBIG past max_size. Callers serialize grows. */
int pcache_index_grow(struct pcache_index *ix, uint64_t size);
void pcache_index_exit(struct pcache_index *ix);
/* First key whose end is past off (may be st->n). Lock held. */
uint32_t pcache_subtree_find(const struct pcache_subtree *st, uint32_t off);
/*
 * Take a subtree lock from a thread that must never wait for it (the backing completion
 * thread, the writeback): a bounded number of tries (holders keep it for microseconds, unless
 * they wait for log space that only those threads can free). true when taken.
 */
bool pcache_subtree_trylock_bounded(struct pcache_subtree *sub);
/* The same bounded tries for any mutex (a staging kset's lock, from the writeback). */
bool pcache_mutex_trylock_bounded(pthread_mutex_t *m);
/* Insert with fixup (cache_key.c invariant 2): overlapped keys are cut, split or removed.
 * Lock held. */
int pcache_subtree_insert(struct pcache_subtree *st, const struct pcache_ikey *k);
/* Remove key i. Lock held. */
void pcache_subtree_remove(struct pcache_subtree *st, uint32_t i);
/* Drop the bytes [off, off + len) of every key (trimming or splitting keys). Lock held. */
int pcache_subtree_punch(struct pcache_subtree *st, uint32_t off, uint32_t len);
/* Make room for extra keys (so insert cannot fail with -ENOMEM). Lock held. */
int pcache_subtree_reserve(struct pcache_subtree *st, uint32_t extra);
/* Key counters: bytes in the index, dirty bytes, key count. Takes each lock (a walk). */
void pcache_index_count(struct pcache_index *ix, uint64_t *cached, uint64_t *dirty, uint64_t *keys);
/* The same from the totals, and the key slots allocated: no lock, no walk (status). */
void pcache_index_totals(struct pcache_index *ix, uint64_t *cached, uint64_t *dirty, uint64_t *keys,
			 uint64_t *cap);

/* ---- cache_kset.c: staging ksets and the key log ---------------------------------------------- */

struct pcache_stage {
	pthread_mutex_t lock;       /* guards n, keys, first_ns */
	uint32_t n;
	uint64_t first_ns;          /* time of the first unpersisted key */
	struct pcache_key_om keys[PCACHE_KSET_MAX_KEYS];
};

/*
 * The staging ksets in memory that may outlive the process (pcache_cache_opts.stage_shm). The
 * header says what the log looked like after the last kset this process wrote, so that a later
 * start can tell whether the staged keys still continue the log it replays.
 */
#define PCACHE_STAGE_SHM_MAGIC 0x314d48534753435full   /* "_CSGSHM1" */
struct pcache_stage_shm {
	uint64_t magic;
	uint32_t nstage, stage_size, key_size, pad;
	_Atomic uint64_t log_lsn;   /* key_head lsn after the last kset or LAST record written */
	_Atomic uint64_t log_epoch; /* epoch of that kset (at start: the last epoch in the log) */
	uint8_t pad2[24];
	struct pcache_stage stage[PCACHE_NSTAGE];
};

/*
 * After the replay: take over stage_shm; log the keys a dead process left staged in it if they
 * continue the replayed log. 0 or -errno with a message (the start then fails).
 */
int pcache_stage_shm_recover(struct pcache_cache *c, void *shm, char *err, size_t errlen);

struct pcache_log {
	pthread_mutex_t lock;       /* guards head, next_lsn, epoch */
	struct pcache_pos head;     /* next kset position; head.lsn = lsn of the next kset */
	uint64_t epoch;
	uint64_t ksets_written;
	_Atomic uint64_t head_lsn;  /* copy of head.lsn for lock-free readers */
	_Atomic uint64_t epoch_now; /* copy of epoch for lock-free readers */
	/*
	 * A flush is between closing the staging ksets and bumping the epoch (or one failed to
	 * close them): the epoch a key staged now will carry is not certain (see index_add()).
	 */
	_Atomic bool epoch_unsure;
	_Atomic bool epoch_broken;  /* sticky: a flush bumped with keys left staged */
	/*
	 * fua_epoch[e % PCACHE_FUA_EPOCHS] == e: a FUA write's keys may be in a kset of epoch e.
	 * A FUA write is durable on its own, before its epoch ends, so the writeback must not
	 * skip its bytes for a later key of the same epoch that may not be in the log yet.
	 */
	_Atomic uint64_t fua_epoch[PCACHE_FUA_EPOCHS];
};

/* Encode/decode between an on-media key and an index key (region-relative off). */
void pcache_key_encode(struct pcache_key_om *om, uint32_t image_id, uint64_t off,
		       const struct pcache_ikey *k);

int pcache_log_init(struct pcache_cache *c);
/* Stage index of (image id, region). */
uint32_t pcache_stage_of(uint32_t image_id, uint64_t region);
/*
 * With st->lock held: make sure the stage can take one more key. A full stage is closed
 * (wait: may wait for log space; else -EAGAIN when no log space).
 */
int pcache_stage_room(struct pcache_cache *c, struct pcache_stage *st, bool wait);
/* With st->lock held and room made: add a key; a stage that becomes full is closed (no wait). */
void pcache_stage_add(struct pcache_cache *c, struct pcache_stage *st, const struct pcache_key_om *k);
/* With st->lock held: persist the staged keys as one kset. */
int pcache_stage_close(struct pcache_cache *c, struct pcache_stage *st, bool wait);
/* Close every stage holding keys (flush). trylock: skip busy stages (background threads). */
int pcache_stages_close_all(struct pcache_cache *c, bool wait, bool trylock, bool only_old);
/* Snapshot of key_head. */
void pcache_log_head(struct pcache_cache *c, struct pcache_pos *p);
/* Bump the flush epoch (after a flush closed its ksets). */
void pcache_log_epoch_bump(struct pcache_cache *c);

/* ---- images --------------------------------------------------------------------------------- */

/*
 * The gate between an image's writethrough/writearound backing writes (shared holders, each
 * from its submission until its I/O ended, released by whichever thread saw the end) and the
 * writeback (one exclusive holder). A waiting exclusive holder keeps new shared ones out, so
 * the writeback never starves behind a stream of writes.
 */
/* A writethrough write in the gate: its byte range, and whether another one overlapping it
 * was in flight beside it (then the backing may end with either one's bytes). */
struct pcache_through_ent {
	uint64_t off, end;
	bool overlapped;
	struct pcache_through_ent *next;
};

struct pcache_through_gate {
	pthread_mutex_t lock;       /* a leaf */
	pthread_cond_t cond;
	uint32_t shared;            /* backing writes in flight */
	struct pcache_through_ent *ents; /* those of them that track their range */
	uint32_t excl_waiting;
	bool excl;
};

/*
 * Recent read streams of an image (cache_read.c, pcache_seq_bypass()): where each one's next
 * read is expected, the bytes it read in a row, and when it was last used (a counter). A read
 * that continues a stream adds to it: it starts within PCACHE_SEQ_SLACK of its own lengths of
 * the expected offset (queued reads arrive a little out of order; a 4 KiB read must be within
 * 16 KiB, so random reads do not join streams); any other read replaces the least recently
 * used stream.
 */
#define PCACHE_SEQ_STREAMS 8
#define PCACHE_SEQ_SLACK 4u
struct pcache_seq {
	pthread_mutex_t lock;       /* a leaf; taken with trylock only */
	uint64_t tick;
	struct {
		uint64_t next, bytes, used;
	} s[PCACHE_SEQ_STREAMS];
};

struct pcache_name_node {
	struct pcache_name_node *next;
	char s[PCACHE_NAME_MAX + 1];
};

struct pcache_image {
	struct pcache_cache *c;
	_Atomic int refs;
	_Atomic int inflight;       /* I/O inside the engine (misses until done) */
	_Atomic bool detaching;
	_Atomic int wb_refs;        /* backings lent to the writeback */
	uint32_t id, slot;
	/* the name: a string never changed in place; a rename publishes a new one (renames keeps
	 * every string the image had until it is freed, so a reader's pointer stays valid) */
	char *_Atomic name;
	struct pcache_name_node *renames;
	struct pcache_backing *b;
	/* a growing image stores size, then bytes (pcache_image_grow(), under grow_lock) */
	_Atomic uint64_t size;      /* engine bytes: whole sectors (bytes rounded up to lbs) */
	_Atomic uint64_t bytes;     /* the image's size as its users see it (any number) */
	pthread_mutex_t grow_lock;
	uint32_t lbs;               /* engine sector */
	bool read_only;
	_Atomic uint32_t cache_mode;
	/*
	 * Orders writethrough/writearound backing writes against the writeback: a write holds it
	 * shared around its backing I/O only (its THROUGH key is staged before) and counts
	 * through_done under it when the I/O is over (the hold may end on another thread than
	 * the one that took it, hence a gate and not a rwlock); the writeback holds it
	 * exclusively, with priority over new shared holds, while it
	 * issues and waits for the image's requests (never across a rate-limit sleep), and asks
	 * again which bytes are live when through_done moved since it first looked at the
	 * image's keys (cache_writeback.c invariant 7). So an older key the writeback chose to
	 * write never lands on the backing after a newer write's data, and a newer key staged
	 * earlier makes it skip.
	 */
	struct pcache_through_gate through;
	_Atomic uint64_t through_done;
	/*
	 * Ranges of writearound writes and zeroings in flight (from before their cache step until
	 * their backing I/O ended): a miss over one inserts no placeholder, so it caches nothing
	 * it might have read before the write (cache_read.c scan_region()). nofill_n is read
	 * without the lock: 0 = none (the common case costs one load).
	 */
	pthread_mutex_t nofill_lock;      /* a leaf (taken under a subtree lock) */
	struct pcache_through_ent *nofill;
	_Atomic uint32_t nofill_n;
	/*
	 * Dirty keys (data and ZERO, overlaps counted twice) of the image not on its backing yet:
	 * set by the attach replay (logged after dirty_tail and after the writeback's progress
	 * for the image), raised when a key is indexed and staged, lowered when the writeback
	 * reports them durable on the backing (ops.image_passed). Status reads use these, never
	 * a log walk. Lock-free.
	 */
	_Atomic int64_t dirty_keys, dirty_bytes;
	pthread_mutex_t ent_lock;   /* guards ent (image table copy) */
	struct pcache_image_ent ent;
	struct pcache_index ix;
	/* stats (relaxed atomics) */
	_Atomic uint64_t reads, writes, flushes, discards, read_bytes, write_bytes;
	_Atomic uint64_t read_hit_bytes, read_miss_bytes, crc_errors, backing_errors;
	/* sequential cutoff in bytes (0: none) and the misses it kept out of the cache */
	_Atomic uint64_t seq_cutoff;
	_Atomic uint64_t read_bypass_bytes;
	/* max_share as bytes of cached data (0: no cap; pcache_image_over_share()) and the read
	 * and write bytes that bypassed the cache because the image was over it */
	_Atomic uint64_t share_limit;
	_Atomic uint64_t share_bypass_bytes;
	struct pcache_seq seq;
	struct pcache_seq wseq;     /* the same for writes */
	_Atomic uint64_t write_bypass_bytes; /* writes of long sequential streams sent around */
};

/* Reference an attached image by id for the writeback (NULL if none); put with image_put. */
struct pcache_image *pcache_image_get_by_id(struct pcache_cache *c, uint32_t id);
/* Replay the log at start: segment bitmap and refs, key_head, dirty bytes (cache_replay.c). */
int pcache_replay_all(struct pcache_cache *c, char *err, size_t errlen);
/* Replay the keys of one image into its index (attach); sets its dirty counters. */
int pcache_replay_image(struct pcache_cache *c, struct pcache_image *img, char *err, size_t errlen);
/*
 * Walk the log (after dirty_tail and the writeback's progress for image id, under c->gc_lock)
 * and the staging ksets for the image's dirty keys: their count and bytes. What the counters
 * of struct pcache_image stand for; the attach and detach decisions use the walk itself.
 */
void pcache_image_dirty_walk(struct pcache_cache *c, uint32_t id, uint64_t *keys, uint64_t *bytes);
/* Has image id dirty keys in the log or the staging ksets (a dirty walk)? */
bool pcache_image_has_dirty(struct pcache_cache *c, uint32_t id);
/* Wait until no I/O and no writeback reference is on img (detaching already set). */
void pcache_image_quiesce(struct pcache_image *img);
/* Close the image's backing, out of the live list; it is out of imgs[], quiesced. */
void pcache_image_teardown(struct pcache_cache *c, struct pcache_image *img);
/* Free the image (its last reference went). */
void pcache_image_free(struct pcache_image *img);

/* ---- the request path (cache_req.c, cache_read.c, cache_pin.c) ------------------------------ */

/* A media error in the data area (media.h) at seg/off: counted, logged (rate-limited). */
void pcache_req_media_error(struct pcache_image *img, uint32_t seg, uint32_t off);
/* img->through: init/destroy; shared enter/leave (leave counts through_done, from any
 * thread; e, if not NULL, tracks the write's range: e->overlapped after leave says whether
 * an overlapping write was in flight beside it); the writeback's exclusive hold (hold true)
 * and its release (hold false). */
void pcache_through_init(struct pcache_through_gate *g);
void pcache_through_destroy(struct pcache_through_gate *g);
void pcache_through_enter(struct pcache_image *img, struct pcache_through_ent *e);
void pcache_through_leave(struct pcache_image *img, struct pcache_through_ent *e);
void pcache_through_hold(struct pcache_image *img, bool hold);
/* img->nofill: add / remove a writearound write's range; does [off, off + len) overlap one? */
void pcache_nofill_add(struct pcache_image *img, struct pcache_through_ent *e);
void pcache_nofill_del(struct pcache_image *img, struct pcache_through_ent *e);
bool pcache_nofill_overlaps(struct pcache_image *img, uint64_t off, uint64_t len);

/* ---- the cache ------------------------------------------------------------------------------ */

struct pcache_wb;
struct pcache_miss_ent;

enum pcache_cache_state {
	PCACHE_CS_OPEN,       /* replayed, no background threads yet */
	PCACHE_CS_RUNNING,    /* background threads started */
	PCACHE_CS_STOPPING,   /* I/O refused, waits failed; stop under way */
	PCACHE_CS_ABANDONED,  /* stop left a writeback batch in flight; nothing freed */
	PCACHE_CS_STOPPED,    /* freed (only seen by the debug check) */
};

/*
 * One cache instance. Which lock guards what: the fields above segs are set at start and read
 * only afterwards (no lock). segs, heads, log and stage[] carry their own locks (segs.lock,
 * head.lock, log.lock, stage.lock; cache_i.h above gives their order). img_lock guards imgs[]
 * and live[] (an image's own fields: its ent_lock, its subtree locks, atomics). flush_lock
 * serialises flushes and so the epoch bumps; knob_lock the read-modify-write of cache_info.
 * gc_lock is held around one GC step and every log walk behind key_head, and owns log_rd after
 * the start. bg_lock guards gc_kick and stopping and is the mutex of bg_cond and timer_cond.
 * The GC thread alone touches gc_runs, clean_cursor and the stall_* fields; missreg_lock guards
 * missreg[]. state, stopping_io, last_io_ms, dirty_in/out, media_errors and the other _Atomic
 * counters are lock-free. wb is set at start and cleared by the stop (after its thread ended).
 */
struct pcache_cache {
	struct pcache_cache_dev *cd;
	struct pcache_log_reader *log_rd; /* the start's replay, then holders of gc_lock */
	atomic_uint_fast64_t media_errors; /* reads of the device that failed (poison) */
	struct pcache_ident dev_ident;   /* of the cache device: never attached as an image */
	struct pcache_pmem *pm;
	uint32_t seg_count;
	uint64_t seg_size;
	bool data_crc;
	bool no_background;
	uint64_t kset_close_ns;       /* the timer closes a kset this long after its first key */

	struct pcache_segs segs;
	struct pcache_head heads[PCACHE_NHEADS];
	struct pcache_log log;
	struct pcache_stage *stage;   /* PCACHE_NSTAGE (in stage_shm when given) */
	struct pcache_stage_shm *stage_shm; /* NULL: stage is private memory */
	uint64_t staged_recovered;    /* keys logged at start from a dead process's stages */
	pthread_mutex_t flush_lock;   /* serialises flushes (epoch bumps) */
	/*
	 * Group commit (pcache_cache_flush): commits begun (a commit's number is its value after
	 * the increment, under flush_lock), the number of the last one that succeeded, and the
	 * flushes a commit covered without one of their own.
	 */
	_Atomic uint64_t flush_begun, flush_ok;
	_Atomic uint64_t flush_joined;
	pthread_mutex_t knob_lock;    /* serialises knob updates (read-modify-write of cache_info) */

	pthread_mutex_t img_lock;     /* guards imgs[] and live[] */
	struct pcache_image *imgs[PCACHE_MAX_IMAGES];  /* attached */
	struct pcache_image *live[PCACHE_MAX_IMAGES];  /* attached or detaching (backing open) */
	_Atomic int state;            /* enum pcache_cache_state (cache.c draws the machine) */
	_Atomic bool stopping_io;     /* pcache_cache_stop() began: new I/O is refused */
	_Atomic uint64_t last_io_ms;  /* coarse monotonic ms of the latest user I/O (idle test) */
	/* dirty data bytes (keys neither CLEAN nor ZERO) logged, and put behind dirty_tail by the
	 * writeback, since start (replay counts the dirty part of the log in): the watermarks */
	_Atomic uint64_t dirty_in, dirty_out;
	uint64_t replay_keys, replay_ns;

	/* GC */
	pthread_mutex_t gc_lock;      /* one GC step / an attach replay */
	pthread_mutex_t bg_lock;      /* guards the wake flags; bg_cond wakes GC and timer */
	pthread_cond_t bg_cond;       /* wakes the GC thread */
	pthread_cond_t timer_cond;    /* wakes the timer thread (stop) */
	bool gc_kick, stopping;
	pthread_t gc_thread, timer_thread;
	bool gc_started, timer_started;
	bool bg_deferred;             /* background threads not started yet (defer_background) */
	pthread_t prefault_thread;    /* faults the mapping in after start (opts prefault) */
	bool prefault_started;
	_Atomic bool prefault_stop;
	uint64_t gc_runs;
	_Atomic uint64_t fill_skips;
	uint32_t clean_cursor;        /* incremental cleaner position (images x subtrees) */
	uint64_t stall_since_ns, stall_dirty_lsn; /* GC thread only: waiters without progress */
	bool stall_logged;
	_Atomic uint64_t clean_pending; /* segments freed since the cleaner last finished a sweep */
	/*
	 * Copy-forward (cache_gc.c): off when copy_forward is false; gc_buf and gc_credit (bytes
	 * GC may still copy, earned by the bytes it drops) belong to whoever holds gc_lock; the
	 * counters are lock-free.
	 */
	_Atomic bool copy_forward;
	/* gc_percent auto: the free segments GC keeps (set by GC runs) and the allocation rate
	 * it is sized from (segments/s, a rise-fast fall-slow average; GC runs only) */
	_Atomic uint32_t gc_reserve;
	double alloc_rate;
	uint64_t rate_t0_ns, rate_allocs0;
	uint8_t *gc_buf;
	int64_t gc_credit;
	_Atomic uint64_t gc_copied_bytes, gc_copied_keys, gc_dropped_bytes;
	_Atomic uint32_t miss_id;
	/* misses in flight that other readers may share (cache_read.c) */
	pthread_mutex_t missreg_lock; /* leaf; taken under a subtree lock */
	struct pcache_miss_ent *missreg[PCACHE_MISSREG_BUCKETS];
	_Atomic uint64_t shared_misses;

	/* writeback (core/cache_writeback.c) */
	struct pcache_wb *wb;
	_Atomic uint64_t wb_errors;
};

/* GC (cache_gc.c) */
int pcache_gc_start(struct pcache_cache *c);
void pcache_gc_stop(struct pcache_cache *c);
/* Run GC steps until nothing more can be done now; returns segments freed (tests, no_background). */
int pcache_gc_run(struct pcache_cache *c);
void pcache_gc_kick(struct pcache_cache *c);
/* Drop stale keys from up to budget subtrees (incremental cleaner). */
void pcache_gc_clean(struct pcache_cache *c, uint32_t budget);

/* writeback glue (cache_wbglue.c) */
void pcache_wb_notify_kick(struct pcache_cache *c);
/* new dirty data in the log (a kset closed): pcache_wb_kick_data() */
void pcache_wb_notify_data(struct pcache_cache *c);
/* The writeback's view of the engine (cache_wbglue.c); ctx is the struct pcache_cache. */
extern const struct pcache_wb_ops pcache_cache_wb_ops;
/* Dirty data as a percentage of the data area (the watermarks); ctx is the cache. */
uint32_t pcache_cache_dirty_percent(void *ctx);
/* No user read, write, discard or flush for PCACHE_IDLE_MS (the writeback's idle test). */
bool pcache_cache_idle(struct pcache_cache *c);

/* Coarse monotonic clock in ms (the user-I/O idle test: cheap enough for every request). */
static inline uint64_t pcache_coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Is the index key's data gone (its segment freed and its generation bumped since)? */
static inline bool pcache_key_stale(struct pcache_cache *c, const struct pcache_ikey *k)
{
	if (k->flags & (PCACHE_KEY_ZERO | PCACHE_IKEY_EMPTY))
		return false;
	return pcache_cache_dev_seg_gen(c->cd, k->seg) != k->seg_gen;
}

/* Address in the mapping of segment seg, offset off. */
static inline uint8_t *pcache_seg_ptr(struct pcache_cache *c, uint32_t seg, uint32_t off)
{
	return (uint8_t *)pcache_cache_dev_seg_addr(c->cd, seg) + off;
}

/* ---- the request path's per-request helpers (inline: every I/O calls them) ----------------- */

/* Begin I/O on img (counts it in inflight, notes user I/O time): 0, or -ENODEV (detaching or
 * stopping). Every successful enter is paired with pcache_req_exit(). */
static inline int pcache_req_enter(struct pcache_image *img)
{
	struct pcache_cache *c = img->c;
	uint64_t ms = pcache_coarse_ms();

	/* user I/O time for the writeback's idle test, stored only when it changed, so that
	 * I/O threads rarely write the shared line */
	if (atomic_load_explicit(&c->last_io_ms, memory_order_relaxed) != ms)
		atomic_store_explicit(&c->last_io_ms, ms, memory_order_relaxed);
	atomic_fetch_add(&img->inflight, 1);
	if (atomic_load(&img->detaching) || atomic_load(&img->c->stopping_io)) {
		atomic_fetch_sub(&img->inflight, 1);
		return -ENODEV;
	}
	return 0;
}

static inline void pcache_req_exit(struct pcache_image *img)
{
	atomic_fetch_sub(&img->inflight, 1);
}

/* A hit on index key k (its subtree lock held): one more count, up to PCACHE_IKEY_REF_MAX. */
static inline void pcache_ikey_touch(struct pcache_ikey *k)
{
	if ((k->flags & PCACHE_IKEY_REF_MASK) != PCACHE_IKEY_REF_MASK)
		k->flags = (uint16_t)(k->flags + (1u << PCACHE_IKEY_REF_SHIFT));
}

/* The hit count of index key k (its subtree lock held). */
static inline uint32_t pcache_ikey_refs(const struct pcache_ikey *k)
{
	return (k->flags & PCACHE_IKEY_REF_MASK) >> PCACHE_IKEY_REF_SHIFT;
}

/*
 * Does index key e hold (part of) the data extent that starts at seg_off in segment seg of
 * generation gen at region offset off? A data key, not EMPTY; its data the same bytes.
 */
static inline bool pcache_ikey_same_extent(const struct pcache_ikey *e, uint32_t seg, uint64_t gen,
					   uint32_t seg_off, uint32_t off)
{
	return !(e->flags & (PCACHE_KEY_ZERO | PCACHE_IKEY_EMPTY)) && e->seg == seg &&
	       e->seg_gen == gen && e->seg_off - e->off == seg_off - off;
}

/* Note a read (or a write) of [off, off + len) in img's read (write) streams: true when it
 * belongs to a sequential stream longer than the image's cutoff (a read's misses are then not
 * cached; a writeback-mode write goes around the cache). */
bool pcache_seq_bypass(struct pcache_image *img, bool write, uint64_t off, uint64_t len);
/* Edit img's table entry with fn(entry, arg) (persisted; its run-time copies follow). 0/-errno. */
int pcache_image_ent_edit(struct pcache_image *img, void (*fn)(struct pcache_image_ent *, void *),
			  void *arg);
/* The cap in bytes for an image entry's max_share field (percent of the data area; 0 = none). */
uint64_t pcache_share_limit(struct pcache_cache *c, uint32_t max_share);
/* Does img cache more than its max_share (its index's bytes)? Its reads then fill nothing and
 * its writeback-mode writes go around the cache, and GC does not copy its keys forward. */
static inline bool pcache_image_over_share(struct pcache_image *img)
{
	uint64_t lim = atomic_load_explicit(&img->share_limit, memory_order_relaxed);

	return lim && (uint64_t)PCACHE_MAX(atomic_load_explicit(&img->ix.tot.cached, memory_order_relaxed), 0) >= lim;
}
/* The cutoff in bytes for an image entry's seq_cutoff field. */
uint64_t pcache_seq_cutoff_bytes(uint32_t field);
/* A request's range: engine-sector aligned and inside the image. 0 or -EINVAL. */
static inline int pcache_req_check_range(const struct pcache_image *img, uint64_t off,
					 uint64_t len)
{
	if (off % img->lbs || len % img->lbs)
		return -EINVAL;
	if (off > img->size || len > img->size - off)
		return -EINVAL;
	return 0;
}

#endif
