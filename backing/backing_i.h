/*
 * backing_i.h -- private interface of the backing layer (backing/backing_dev.c: the request
 * engine and its completion thread; backing/backing_open.c: opening an image). The design and
 * invariants are at the top of backing_dev.c. Nothing else includes it.
 */
#ifndef PCACHE_BACKING_I_H
#define PCACHE_BACKING_I_H

#include <liburing.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>

#include "pcache/backing.h"
#include "pcache/util.h"

#define BK_DEFAULT_DEPTH 128u
#define BK_MAX_DEPTH 4096u
#define BK_POOL_CHUNK 64u
#define BK_OP_MAX (1u << 30)     /* bytes per ring operation (the SQE length is 32-bit) */
#define BK_ZBUF_SIZE (1u << 20)  /* the shared zero buffer for zeroing fallbacks */
#define BK_MAX_RETRIES 64u       /* -EAGAIN / -EINTR / -ECANCELED resubmissions per request */
#define BK_EFD_TAG ((uint64_t)1) /* user_data of the armed eventfd read (requests are aligned) */

enum bk_stage {
	BK_ST_START,
	BK_ST_IO,       /* read or write of op_buf at op_off (the request's own op) */
	BK_ST_RMW_HEAD, /* reading the first aligned block of a read-modify-write */
	BK_ST_RMW_TAIL, /* reading the last aligned block */
	BK_ST_FSYNC,
	BK_ST_FALLOC,
	BK_ST_WORKER,   /* ioctl on the worker thread */
	BK_ST_PARENT,   /* waiting for children */
};

struct bk_req {
	struct bk_req *next;
	struct pcache_backing_io io;  /* the caller's description (copied at submission) */
	uint8_t *data;                /* the caller's memory for READ/WRITE */
	struct bk_req *parent;        /* internal child: the request it belongs to */

	/* the image's I/O rules when the request started */
	bool direct;
	uint32_t align, mem_align;

	/* the current operation */
	uint8_t stage;
	bool rmw_owner;               /* holds b->rmw_busy */
	bool counted;                 /* a top-level request (stats count it) */
	int falloc_mode;
	uint8_t *op_buf;
	uint64_t op_off;
	size_t op_len, op_done, op_ask;
	unsigned int retries;
	int worker_res;

	/* bounce: the aligned extent [b_off, b_off + b_len) */
	uint8_t *bounce;
	uint64_t b_off;
	size_t b_len;

	/* PARENT */
	unsigned int children;
	int child_status;
};

struct bk_list {
	struct bk_req *head, *tail;
};

struct bk_chunk {
	struct bk_chunk *next;
	struct bk_req reqs[BK_POOL_CHUNK];
};

/*
 * One lock (b->lock), innermost: callers may hold their own locks when they submit, and the
 * layer never calls out (end callbacks, upper get/put) with it held. The ring and the fields
 * after "completion thread only" belong to the completion thread.
 */
struct pcache_backing {
	/* immutable after open */
	int fd;
	int efd;                      /* eventfd waking the completion thread */
	char *path;
	/* a file grows (pcache_backing_grow()): size, then span, then maybe direct off (in that
	 * order); each request reads direct/align/mem_align once, at its start */
	_Atomic uint64_t size;        /* bytes (any number for a file) */
	_Atomic uint64_t span;        /* size rounded up to lbs: requests may reach this far */
	uint32_t lbs;
	_Atomic uint32_t align;       /* offset/length alignment for O_DIRECT (1 when buffered) */
	_Atomic uint32_t mem_align;   /* memory alignment for O_DIRECT (1 when buffered) */
	unsigned int depth;           /* operations allowed in the kernel at once */
	_Atomic bool direct;
	bool blockdev, read_only;
	struct pcache_ident ident;    /* what the image reaches (backing_ident.c) */
	pthread_t cq_thread;
	pthread_t worker;
	bool have_worker;
	sem_t started;                /* the completion thread set up the ring (start_ret) */
	int start_ret;

	/* lock: the pool, the submit queue, the worker and done queues, in_flight, closing, idle */
	pthread_mutex_t lock;
	struct bk_req *free_list;
	struct bk_chunk *chunks;
	struct bk_list submit_q;
	struct bk_list worker_q;
	struct bk_list done_q;        /* worker results waiting for the completion thread */
	pthread_cond_t worker_cond;
	pthread_cond_t room_cond;     /* in_flight went down (direct submitters wait on it) */
	unsigned int room_waiters;
	uint64_t in_flight;
	bool closing;
	bool worker_stop;
	bool cq_idle;                 /* the completion thread sleeps (or is about to): wake it */

	/* completion thread only */
	struct io_uring ring;
	unsigned int ring_busy;
	struct bk_list start_q;       /* accepted requests not planned yet */
	struct bk_list ready_q;       /* planned operations waiting for a ring slot */
	struct bk_list rmw_wait;      /* read-modify-writes waiting for rmw_busy */
	struct bk_req *release;       /* finished requests to give back to the pool */
	unsigned int release_n;
	bool rmw_busy;
	bool kicked;                  /* a callback submitted: gather before sleeping */
	bool efd_armed;
	uint64_t efd_val;
	uint8_t *zbuf;                /* BK_ZBUF_SIZE zeros, allocated on first need */

	/* statistics (relaxed atomics) */
	uint64_t st_submitted, st_completed, st_errors, st_short, st_bounced, st_flushes;
};

#define bk_stat_add(b, field) __atomic_fetch_add(&(b)->field, 1, __ATOMIC_RELAXED)

/* Thread entries (backing_dev.c): the completion thread of b, and its ioctl worker. */
void *pcache_bk_cq_main(void *arg);
void *pcache_bk_worker_main(void *arg);
/* Stop and join the ioctl worker if it runs; destroy b's locks and semaphores (close, a
 * failed open). */
void pcache_bk_stop_worker(struct pcache_backing *b);
void pcache_bk_destroy_sync(struct pcache_backing *b);

#endif
