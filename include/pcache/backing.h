/*
 * backing.h -- the backing-device layer: backing images (files or block devices) served
 * through io_uring. The user-space form of dm-pcache's backing_dev.{c,h}.
 *
 * Depends only on libc and liburing (internally). Knows nothing about the cache or FUSE.
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
 */
#ifndef PCACHE_BACKING_H
#define PCACHE_BACKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pcache_backing;

/* ---- opening and querying ----------------------------------------------------------------- */

struct pcache_backing_opts {
	bool read_only;        /* open O_RDONLY; writes, discards and zeroing fail with -EROFS */
	bool no_direct;        /* never try O_DIRECT (buffered I/O, made durable by flush) */
	unsigned int queue_depth; /* io_uring entries; 0 = default (128) */
};

/*
 * Open the image at path (a regular file or a block device). opts may be NULL (defaults).
 * Returns 0 and *out, or -errno with a one-line reason in err (if err is not NULL):
 * -EISDIR / -EINVAL for a directory, FIFO, socket or character device, -EINVAL for a size
 * that is not a multiple of 512 or is 0, or the errno of open/ioctl/io_uring setup.
 */
int pcache_backing_open(const char *path, const struct pcache_backing_opts *opts,
			struct pcache_backing **out, char *err, size_t errlen);

/* Stop: wait for every request in flight (each gets its callback), then free. NULL is a no-op. */
void pcache_backing_close(struct pcache_backing *b);

uint64_t pcache_backing_size(const struct pcache_backing *b);       /* bytes */
uint32_t pcache_backing_lbs(const struct pcache_backing *b);        /* logical block size */
bool pcache_backing_is_direct(const struct pcache_backing *b);      /* opened O_DIRECT */
bool pcache_backing_is_blockdev(const struct pcache_backing *b);
const char *pcache_backing_path(const struct pcache_backing *b);

/* ---- requests ----------------------------------------------------------------------------- */

enum pcache_backing_op {
	PCACHE_BIO_READ,
	PCACHE_BIO_WRITE,
	PCACHE_BIO_FLUSH,   /* off/len ignored: makes every completed write durable */
	PCACHE_BIO_DISCARD, /* the range may read back as zeros or old data; files: punch hole */
	PCACHE_BIO_ZERO,    /* the range reads back as zeros */
};

/*
 * An upper request (for REQ). The backing layer calls get() at submission and put() after the
 * end callback has run. buf is the upper request's data buffer.
 */
struct pcache_upper_req {
	void *buf;
	size_t len;
	void (*get)(struct pcache_upper_req *u);
	void (*put)(struct pcache_upper_req *u);
};

/* End callback: status is 0 or -errno. Runs on the completion thread. */
typedef void (*pcache_backing_end_fn)(void *priv, int status);

struct pcache_backing_io {
	enum pcache_backing_op op;
	uint64_t off;                  /* backing byte offset */
	size_t len;                    /* bytes */
	/* REQ: upper != NULL, data at upper->buf + upper_off. KMEM: upper == NULL, data at kmem. */
	struct pcache_upper_req *upper;
	size_t upper_off;
	void *kmem;
	pcache_backing_end_fn end;
	void *priv;
};

/*
 * Queue a request (any thread, also one that holds engine locks): it goes on the submit queue
 * and the submitter drains it into the ring. Never blocks on the device.
 * Returns 0, or -EINVAL (range beyond the image, bad op), -EROFS, -ESHUTDOWN (closing); on
 * error the callback is NOT called and no reference is taken.
 */
int pcache_backing_submit(struct pcache_backing *b, const struct pcache_backing_io *io);

/*
 * Submit directly into the ring from the calling thread, which may block while the ring is
 * full. Same contract as pcache_backing_submit() otherwise.
 */
int pcache_backing_submit_direct(struct pcache_backing *b, const struct pcache_backing_io *io);

/* Synchronous helpers (submit + wait on the completion): 0 or -errno. */
int pcache_backing_rw_sync(struct pcache_backing *b, enum pcache_backing_op op, void *buf,
			   size_t len, uint64_t off);
int pcache_backing_flush_sync(struct pcache_backing *b);

/* Counters (monotonic, for status and tests). */
struct pcache_backing_stats {
	uint64_t submitted, completed, errors, short_continued, bounced, flushes;
	uint64_t in_flight;
};
void pcache_backing_get_stats(const struct pcache_backing *b, struct pcache_backing_stats *st);

#endif
