/*
 * backing.h -- the backing-device layer: backing images (files or block devices) served
 * through io_uring. The user-space form of dm-pcache's backing_dev.{c,h}.
 *
 * Depends only on libc, liburing and libblkid (internally). Knows nothing about the cache or
 * FUSE.
 *
 * Model:
 *  - pcache_backing_open() opens an image; pcache_backing_close() stops it (drains everything
 *    in flight: every submitted request gets exactly one end callback before close returns).
 *  - A request is described by a struct pcache_backing_io, copied at submission (the caller's
 *    struct may live on its stack). Two kinds, as in the seed:
 *      REQ:  a range of an upper request's buffer (upper->buf + upper_off), holding a reference
 *            on the upper request (upper->get/put) from submission until after its callback.
 *      KMEM: any memory range (e.g. a pmem address) read from or written to a backing offset.
 *  - Operations: READ, WRITE, FLUSH (data sync), DISCARD and ZERO (punch-hole / zero-range on
 *    files, BLKDISCARD / BLKZEROOUT on block devices).
 *  - Completion: callbacks run on the layer's completion thread, never in the submitter's
 *    context. A callback may submit new requests. Short transfers are continued by the layer;
 *    the callback sees 0 (the whole range done) or a negative errno (-EIO, -ENOSPC, and
 *    -ENODATA for a read that hit the end of the image).
 *  - O_DIRECT alignment is the layer's problem: unaligned memory, offsets or lengths are
 *    bounced, never rejected.
 *
 * Threading rules (one completion thread per open image):
 *  - submit() and submit_direct() may be called from any thread, including a callback of the
 *    same image (submit_direct() then does not wait, so a callback never blocks). From a
 *    callback of another image, submit_direct() may wait: use submit() there.
 *  - submit_direct() waits for completions when queue_depth requests are outstanding: never
 *    call it holding a lock that an end callback (or upper put) of the same image takes.
 *    submit() only takes the layer's innermost lock briefly, so it is safe under any lock.
 *  - A callback blocks every other completion of its image while it runs: keep it short, and
 *    never wait in it for another request of the same image. rw_sync()/flush_sync() return
 *    -EDEADLK from a callback of the same image; close() from one aborts the process.
 *  - Callbacks of one image run one at a time, in completion order (not submission order).
 *  - Once close() has started, submissions fail with -ESHUTDOWN (no callback), including
 *    submissions made by callbacks during the drain; requests already accepted all complete.
 *  - The caller keeps buffers (kmem, upper->buf) valid until the callback has run.
 *
 * NOTE: an unaligned WRITE on an O_DIRECT image is a read-modify-write of its edge blocks.
 * These are serialized among themselves, and an aligned write can only share an edge block
 * with one if their bytes overlap, so writes whose byte ranges are disjoint may be in flight
 * together in any mix. Byte-overlapping writes in flight together end in no defined order (as
 * on any block device).
 * NOTE: for regular files io_uring itself continues short reads (and O_DIRECT writes) before
 * completing; on FUSE-backed images with direct_io this kernel path misplaces data after a
 * short transfer (seen on 6.18 with tests/tools/flakyfs), so do not inject short reads there.
 */
#ifndef PCACHE_BACKING_H
#define PCACHE_BACKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct stat;

struct pcache_backing;

/* ---- opening and querying ----------------------------------------------------------------- */

struct pcache_backing_opts {
	bool read_only;        /* open O_RDONLY; writes, discards and zeroing fail with -EROFS */
	bool no_direct;        /* never try O_DIRECT (buffered I/O, made durable by flush) */
	unsigned int queue_depth; /* operations in the kernel at once, and the outstanding requests
				   * submit_direct() waits below; 0 = default (128), max 4096 */
};

/*
 * Open the image at path (a regular file or a block device). opts may be NULL (defaults).
 * Returns 0 and *out, or -errno with a one-line reason in err (if err is not NULL):
 * -EISDIR for a directory, -EINVAL for a FIFO, socket or character device, -EINVAL for a size
 * of 0 (-ENXIO for a block device of size 0: no medium), or the errno of stat/open/ioctl/
 * io_uring setup. A file may have any size: requests may reach its last sector whole
 * (pcache_backing_span()), reads past the end give zeros, writes past it are dropped.
 * O_DIRECT is tried first (unless no_direct) and kept when the open succeeds and the size is
 * a multiple of the direct-I/O alignment; otherwise the image is opened buffered. The size is
 * fixed at open (a file that shrinks later gives -ENODATA on reads past its new end).
 * Ownership: a regular file is flock()ed (LOCK_EX, LOCK_SH when read_only, never waiting) and
 * a block device opened O_EXCL, for as long as it is open; -EBUSY names the holder.
 */
int pcache_backing_open(const char *path, const struct pcache_backing_opts *opts,
			struct pcache_backing **out, char *err, size_t errlen);

/*
 * Stop: refuse new submissions (-ESHUTDOWN), wait for every accepted request (each gets its
 * callback), join the threads, free. NULL is a no-op. Not from a callback of the same image.
 */
void pcache_backing_close(struct pcache_backing *b);

uint64_t pcache_backing_size(const struct pcache_backing *b);       /* bytes */
uint64_t pcache_backing_span(const struct pcache_backing *b);       /* size rounded up to lbs */
/* 512-byte blocks the backing occupies: a file's allocation (st_blocks), a device's size. */
uint64_t pcache_backing_blocks(const struct pcache_backing *b);
/* fstat of the open backing (its inode now: st_nlink 0 once every name of a file is gone). */
int pcache_backing_stat(const struct pcache_backing *b, struct stat *st);
/*
 * Grow a file to size bytes (ftruncate; the new bytes read as zeros): 0 (also when it is not
 * smaller), -EFBIG for a block device, -EROFS, or the errno of ftruncate/fcntl. A direct image
 * whose new size is not a multiple of its alignment goes on buffered. Callers serialize grows;
 * I/O may run meanwhile. The new size is durable after the next flush.
 */
int pcache_backing_grow(struct pcache_backing *b, uint64_t size);
/*
 * Cut a file backing to size bytes (0 too): requests started from now on stop at the new end, a
 * write already in flight that lands past it is cut off again when it completes. -EPERM for a
 * block device, -EROFS, -errno of ftruncate.
 */
int pcache_backing_shrink(struct pcache_backing *b, uint64_t size);
uint32_t pcache_backing_lbs(const struct pcache_backing *b);        /* BLKSSZGET; 512 for files */
bool pcache_backing_is_direct(const struct pcache_backing *b);      /* opened O_DIRECT */
bool pcache_backing_is_blockdev(const struct pcache_backing *b);
const char *pcache_backing_path(const struct pcache_backing *b);

/* ---- identity and ownership --------------------------------------------------------------- */

#define PCACHE_IDENT_MAX 255u

/*
 * What an open descriptor reaches (backing/backing_ident.c). overlap fields compare data now;
 * text is the stable identity stored per image and compared at every attach.
 */
struct pcache_ident {
	bool blockdev;
	uint64_t dev, ino;                 /* regular file: st_dev, st_ino */
	uint64_t rdev;                     /* block device: st_rdev */
	bool loop;                         /* block device is a loop device over a file: */
	uint64_t loop_dev, loop_ino, loop_off;
	uint32_t mode, uid, gid;           /* st_mode, st_uid, st_gid of the file or device node */
	char text[PCACHE_IDENT_MAX + 1];   /* "file fs=UUID ino=N", "blk wwid=...", "loop ..." */
};

/* Identity of fd (a regular file or block device): 0, -errno of fstat, -EINVAL otherwise. */
int pcache_ident_fd(int fd, struct pcache_ident *id);
/* true if a and b reach the same bytes (same inode, same device, or a loop device over it). */
bool pcache_ident_overlap(const struct pcache_ident *a, const struct pcache_ident *b);
/* Name the holder of an flock on fd's inode ("pid 12 (pcachefs)") from /proc/locks. */
void pcache_flock_holder(int fd, char *buf, size_t len);
/* Say who holds block device rdev busy ("mounted on /mnt", "held by dm-0", ...). */
void pcache_blockdev_holder(dev_t rdev, char *buf, size_t len);
/*
 * Does fd carry a signature libblkid knows (file systems, LVM, RAID, swap, LUKS, ZFS, partition
 * tables, including copies kept at the end of a device)? 1 with a description in what, 0 none,
 * -errno when the probe cannot run.
 */
int pcache_probe_signature(int fd, char *what, size_t len);
/* Identity of an open image (computed at open). */
const struct pcache_ident *pcache_backing_ident(const struct pcache_backing *b);

/* ---- requests ----------------------------------------------------------------------------- */

enum pcache_backing_op {
	PCACHE_BIO_READ,
	PCACHE_BIO_WRITE,
	PCACHE_BIO_FLUSH,   /* off/len ignored: makes every completed write durable */
	/* DISCARD: advisory; the range may read back as zeros or old data. Files: punch hole;
	 * block devices: BLKDISCARD of the logical-block-aligned part. Unsupported = success. */
	PCACHE_BIO_DISCARD,
	/* ZERO: the range reads back as zeros. Files: ZERO_RANGE, else PUNCH_HOLE, else zero
	 * writes; block devices: BLKZEROOUT, unaligned edges as zero writes. */
	PCACHE_BIO_ZERO,
};

/*
 * An upper request (for REQ). The backing layer calls get() at submission (on the submitting
 * thread, before submit returns) and put() on the completion thread after the end callback has
 * run; get/put may be NULL. buf is the upper request's data buffer, len its size. With put, the
 * struct lives until put(); without, until the end callback runs (not after it returns).
 */
struct pcache_upper_req {
	void *buf;
	size_t len;
	void (*get)(struct pcache_upper_req *u);
	void (*put)(struct pcache_upper_req *u);
};

/* End callback: status is 0 or -errno. Runs on the completion thread (see threading rules). */
typedef void (*pcache_backing_end_fn)(void *priv, int status);

struct pcache_backing_io {
	enum pcache_backing_op op;
	uint64_t off;                  /* backing byte offset */
	size_t len;                    /* bytes */
	/* REQ: upper != NULL, data at upper->buf + upper_off. KMEM: upper == NULL, data at kmem. */
	struct pcache_upper_req *upper;
	size_t upper_off;
	void *kmem;
	pcache_backing_end_fn end;     /* may be NULL (fire and forget) */
	void *priv;
};

/*
 * Queue a request (any thread, also one that holds engine locks): it goes on the submit queue
 * and the completion thread drains it into the ring. Never blocks on the device (takes one
 * short mutex, and may write an eventfd).
 * Returns 0, or -EINVAL (len 0, range beyond the image, bad op, NULL memory, upper range
 * beyond upper->len), -EROFS, -ESHUTDOWN (closing), -ENOMEM; on error the callback is NOT
 * called and no reference is kept (invalid requests take none; for -ESHUTDOWN/-ENOMEM the
 * get() is matched by a put() before return). off/len are ignored (not checked) for FLUSH.
 * get() is called without any lock of this layer held, so it may take the caller's locks.
 */
int pcache_backing_submit(struct pcache_backing *b, const struct pcache_backing_io *io);

/*
 * Submit for callers that may block (e.g. writeback): same contract as
 * pcache_backing_submit(), but the caller waits while queue_depth requests of this image are
 * outstanding (back-pressure). From a callback of the same image it never waits.
 * NOTE: the request still goes through the completion thread, which alone owns the ring; see
 * the NOTE at the top of backing/backing_dev.c for why that is faster than entering the ring
 * from the caller's thread.
 */
int pcache_backing_submit_direct(struct pcache_backing *b, const struct pcache_backing_io *io);

/*
 * Batching: between plug and unplug, submissions from the calling thread to b do not wake
 * the completion thread; unplug wakes it once for the whole batch (one eventfd write instead
 * of one per sleep of the completion thread). Per thread, one image at a time, not nested;
 * a thread must unplug before it waits for any of the batch's completions (submit_direct()
 * wakes by itself before waiting for room). No-ops on the completion thread of b.
 */
void pcache_backing_plug(struct pcache_backing *b);
void pcache_backing_unplug(struct pcache_backing *b);

/* Synchronous helpers (submit + wait on the completion): 0 or -errno; -EDEADLK from a
 * callback of the same image. buf is KMEM memory. */
int pcache_backing_rw_sync(struct pcache_backing *b, enum pcache_backing_op op, void *buf,
			   size_t len, uint64_t off);
int pcache_backing_flush_sync(struct pcache_backing *b);

/*
 * Counters (monotonic, for status and tests). They count the caller's requests only (not the
 * layer's internal sub-requests): submitted = accepted, completed = callbacks run (counted
 * just before each callback, so a caller that saw its callback sees it counted), errors =
 * callbacks with status < 0, short_continued = operations resubmitted after a short
 * transfer, bounced = requests that went through a bounce buffer, flushes = successful
 * FLUSHes, in_flight = submitted - completed.
 */
struct pcache_backing_stats {
	uint64_t submitted, completed, errors, short_continued, bounced, flushes;
	uint64_t in_flight;
};
void pcache_backing_get_stats(const struct pcache_backing *b, struct pcache_backing_stats *st);

#endif
