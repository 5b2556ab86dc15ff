/*
 * backing_open.c -- opening a backing image: type checks (a regular file or a block device),
 * O_DIRECT where the file system allows it, ownership (flock for files, O_EXCL for block
 * devices, the holder named when refused), geometry probing, then the ring and the threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backing_i.h"

/* ---- open --------------------------------------------------------------------------------- */

#define BK_HOLDER_MAX 2200
#define bk_err(err, errlen, ...) \
	do { if (err && errlen) snprintf(err, errlen, __VA_ARGS__); } while (0)

/* Refuse anything that is not a regular file or a block device. */
static int bk_check_type(const char *path, mode_t mode, char *err, size_t errlen)
{
	const char *what;

	if (S_ISREG(mode) || S_ISBLK(mode))
		return 0;
	if (S_ISDIR(mode)) {
		bk_err(err, errlen, "%s: is a directory, not an image", path);
		return -EISDIR;
	}
	what = S_ISFIFO(mode) ? "a FIFO" : S_ISSOCK(mode) ? "a socket" :
	       S_ISCHR(mode) ? "a character device" : "not a regular file or block device";
	bk_err(err, errlen, "%s: is %s, not an image", path, what);
	return -EINVAL;
}

/* Size, logical block size and O_DIRECT alignment of the open image. */
static int bk_probe(struct pcache_backing *b, char *err, size_t errlen)
{
	struct stat st;
	struct statx stx;

	if (fstat(b->fd, &st) < 0) {
		bk_err(err, errlen, "%s: fstat: %s", b->path, strerror(errno));
		return -errno;
	}
	if (bk_check_type(b->path, st.st_mode, err, errlen))
		return -EINVAL;
	b->blockdev = S_ISBLK(st.st_mode);
	if (b->blockdev) {
		int ssz = 0;

		if (ioctl(b->fd, BLKGETSIZE64, &b->size) < 0 || ioctl(b->fd, BLKSSZGET, &ssz) < 0) {
			bk_err(err, errlen, "%s: block device size query: %s", b->path,
			       strerror(errno));
			return -errno;
		}
		if (ssz < 512 || !PCACHE_IS_POW2((unsigned int)ssz)) {
			bk_err(err, errlen, "%s: odd logical block size %d", b->path, ssz);
			return -EINVAL;
		}
		b->lbs = (uint32_t)ssz;
	} else {
		b->size = (uint64_t)st.st_size;
		b->lbs = 512;
	}
	if (b->size == 0 && b->blockdev) {
		/* no medium: a loop device with no file behind it, an empty card reader */
		bk_err(err, errlen, "%s: block device of size 0 (no medium, or a loop device with no file)",
		       b->path);
		return -ENXIO;
	}
	/* an empty file is an image of size 0 (a file just created, or cut to 0 before a
	 * qemu-img create fills it): it can only grow */
	if (b->size % b->lbs) {
		/* a file cut anywhere (a fresh qcow2, a short ISO): served with its exact size; the
		 * engine sees whole sectors up to b->span (the tail past the end reads as zeros) */
		if (b->blockdev) {
			bk_err(err, errlen, "%s: size %llu is not a multiple of its block size %u", b->path,
			       (unsigned long long)b->size, b->lbs);
			return -EINVAL;
		}
	}
	b->span = PCACHE_ALIGN_UP(b->size, (uint64_t)b->lbs);
	b->align = b->mem_align = 1;
	if (b->direct) {
		b->align = b->lbs;
		b->mem_align = 512;
		if (statx(b->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
		    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
			b->align = PCACHE_MAX(b->align, stx.stx_dio_offset_align);
			b->mem_align = PCACHE_MAX(b->mem_align, stx.stx_dio_mem_align);
		}
	}
	return 0;
}

/* Take ownership of the open image: flock a file, O_EXCL (at open) for a block device. */
static int bk_own(struct pcache_backing *b, char *err, size_t errlen)
{
	char holder[160];

	if (b->blockdev)
		return 0; /* opened O_EXCL */
	if (flock(b->fd, (b->read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK) {
		bk_err(err, errlen, "%s: lock: %s", b->path, strerror(errno));
		return -errno;
	}
	pcache_flock_holder(b->fd, holder, sizeof(holder));
	bk_err(err, errlen, "%s: in use: locked by %s", b->path, holder);
	return -EBUSY;
}

static int bk_open_fd(struct pcache_backing *b, const char *path, bool no_direct, char *err,
		      size_t errlen)
{
	int flags = (b->read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
	struct stat st;
	int ret;

	/* O_EXCL on a block device claims it (refused while mounted or claimed elsewhere) */
	if (stat(path, &st) == 0 && S_ISBLK(st.st_mode))
		flags |= O_EXCL;

	b->direct = false;
	if (!no_direct) {
		b->fd = open(path, flags | O_DIRECT);
		if (b->fd >= 0)
			b->direct = true;
		else if (errno != EINVAL)
			goto fail;
	}
	if (!b->direct)
		b->fd = open(path, flags);
	if (b->fd < 0)
		goto fail;
	ret = bk_probe(b, err, errlen);
	if (ret)
		goto close_fd;
	ret = bk_own(b, err, errlen);
	if (ret)
		goto close_fd;
	ret = pcache_ident_fd(b->fd, &b->ident);
	if (ret) {
		bk_err(err, errlen, "%s: identity: %s", path, strerror(-ret));
		goto close_fd;
	}
	if (b->direct && (b->size % b->align)) {
		/* the last block could never be written with O_DIRECT: stay buffered */
		close(b->fd);
		return bk_open_fd(b, path, true, err, errlen);
	}
	return 0;

fail:
	ret = -errno;
	if (ret == -EBUSY && (flags & O_EXCL)) {
		char holder[BK_HOLDER_MAX];

		pcache_blockdev_holder(st.st_rdev, holder, sizeof(holder));
		bk_err(err, errlen, "%s: busy: %s", path, holder);
		return ret;
	}
	bk_err(err, errlen, "%s: open: %s", path, strerror(-ret));
	return ret;
close_fd:
	close(b->fd);
	b->fd = -1;
	return ret;
}

int pcache_backing_open(const char *path, const struct pcache_backing_opts *opts,
			struct pcache_backing **out, char *err, size_t errlen)
{
	struct pcache_backing_opts def = { 0 };
	struct pcache_backing *b;
	struct stat st;
	int ret;

	if (!opts)
		opts = &def;
	if (err && errlen)
		err[0] = 0;
	if (stat(path, &st) < 0) {
		ret = -errno;
		bk_err(err, errlen, "%s: %s", path, strerror(errno));
		return ret;
	}
	ret = bk_check_type(path, st.st_mode, err, errlen);
	if (ret)
		return ret;

	b = calloc(1, sizeof(*b));
	if (!b) {
		bk_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	b->fd = b->efd = -1;
	b->read_only = opts->read_only;
	b->depth = opts->queue_depth ? PCACHE_MIN(opts->queue_depth, BK_MAX_DEPTH) :
		   BK_DEFAULT_DEPTH;
	b->path = strdup(path);
	if (!b->path) {
		ret = -ENOMEM;
		bk_err(err, errlen, "out of memory");
		goto free_b;
	}
	ret = bk_open_fd(b, path, opts->no_direct, err, errlen);
	if (ret)
		goto free_path;
	b->efd = eventfd(0, EFD_CLOEXEC);
	if (b->efd < 0) {
		ret = -errno;
		bk_err(err, errlen, "eventfd: %s", strerror(errno));
		goto close_fd;
	}
	pthread_mutex_init(&b->lock, NULL);
	sem_init(&b->started, 0, 0);
	pthread_cond_init(&b->room_cond, NULL);
	pthread_cond_init(&b->worker_cond, NULL);
	if (b->blockdev && !b->read_only) {
		ret = -pthread_create(&b->worker, NULL, pcache_bk_worker_main, b);
		if (ret) {
			bk_err(err, errlen, "worker thread: %s", strerror(-ret));
			goto destroy_sync;
		}
		b->have_worker = true;
	}
	ret = -pthread_create(&b->cq_thread, NULL, pcache_bk_cq_main, b);
	if (ret) {
		bk_err(err, errlen, "completion thread: %s", strerror(-ret));
		goto stop_worker;
	}
	while (sem_wait(&b->started) && errno == EINTR)
		;
	if (b->start_ret < 0) {
		ret = b->start_ret;
		bk_err(err, errlen, "io_uring setup: %s", strerror(-ret));
		pthread_join(b->cq_thread, NULL);
		goto stop_worker;
	}
	*out = b;
	return 0;

stop_worker:
	pcache_bk_stop_worker(b);
destroy_sync:
	pcache_bk_destroy_sync(b);
	close(b->efd);
close_fd:
	close(b->fd);
free_path:
	free(b->path);
free_b:
	free(b);
	return ret;
}
