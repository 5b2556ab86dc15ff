/*
 * common_session.c -- FUSE session setup shared by pcachefs and the benchmark/test filesystems:
 * mount options, connection parameters, the custom /dev/fuse I/O that enables parallel direct
 * writes on libfuse 3.14.0, and the session loop (multi-threaded with cloned fds, or single).
 *
 * Invariants:
 *  1. A FUSE_OPEN reply gets FOPEN_PARALLEL_DIRECT_WRITES only when it carries FOPEN_DIRECT_IO
 *     and no error: the kernel honours the flag only for direct-io files anyway, and a reply is
 *     recognised by its unique id, recorded when the same worker thread read the FUSE_OPEN request.
 *     (libfuse handles a request on the thread that read it; our open handlers reply inline.)
 *  2. Every other message passes through unchanged: the writev wrapper only ever swaps the
 *     iovec entry of the open reply for a patched copy, it never touches libfuse's buffers.
 *  3. The custom read is plain read(2): same errno conventions as libfuse's default.
 *
 * Build: part of every program that serves FUSE (Makefile: fuse/common_*.c).
 */
#include "common_session.h"

#include <errno.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* The unique id of the FUSE_OPEN request this worker is handling (0 = none). */
static __thread uint64_t tls_open_unique;
/* The fd this thread last reported to on_reader_fd (+1; 0 = none yet). */
static __thread int tls_reader_fd;
/* This thread is replaying an INIT: swallow what libfuse answers. */
static __thread bool tls_replaying;
static atomic_uint_fast64_t pdw_count;
static atomic_uint_fast64_t resent_count;
static bool pdw_enabled;
static void (*hook_init)(const void *req, size_t len);
static void (*hook_reader_fd)(int fd);

void pcache_fuse_session_cfg_default(struct pcache_fuse_session_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->clone_fd = true;
	cfg->parallel_writes = true;
}

int pcache_fuse_session_add_args(struct fuse_args *args)
{
	/* max_read is a mount option in libfuse 3.14 (the kernel caps reads by it). */
	if (fuse_opt_add_arg(args, "-omax_read=1048576") != 0)
		return -ENOMEM;
	return 0;
}

void pcache_fuse_session_init_conn(const struct pcache_fuse_session_cfg *cfg, struct fuse_conn_info *conn)
{
	conn->max_write = PCACHE_FUSE_MAX_IO;
	conn->max_read = PCACHE_FUSE_MAX_IO;
	conn->max_readahead = PCACHE_FUSE_MAX_IO;
	conn->max_background = cfg->max_background ? cfg->max_background : 64;
	conn->congestion_threshold = conn->max_background * 3 / 4;
	/* splice measured no gain here and collapsed 1 MiB reads from an fd: never use it */
	conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
}

static ssize_t session_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n;

	if (hook_reader_fd && tls_reader_fd != fd + 1) {
		hook_reader_fd(fd);
		tls_reader_fd = fd + 1;
	}
	n = read(fd, buf, len);
	tls_open_unique = 0;
	if (n >= (ssize_t)sizeof(struct fuse_in_header)) {
		const struct fuse_in_header *in = buf;

		if (in->unique >> 63)
			atomic_fetch_add_explicit(&resent_count, 1, memory_order_relaxed);
		if (in->opcode == FUSE_OPEN)
			tls_open_unique = in->unique;
		else if (in->opcode == FUSE_INIT && hook_init)
			hook_init(buf, (size_t)n);
	}
	return n;
}

static ssize_t session_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fuse_open_out patched;

	if (tls_replaying) {
		ssize_t total = 0;

		for (int i = 0; i < count; i++)
			total += (ssize_t)iov[i].iov_len;
		return total;
	}
	if (tls_open_unique != 0 && pdw_enabled && count >= 2 &&
	    iov[0].iov_len == sizeof(struct fuse_out_header) &&
	    iov[1].iov_len == sizeof(struct fuse_open_out)) {
		const struct fuse_out_header *oh = iov[0].iov_base;

		if (oh->unique == tls_open_unique && oh->error == 0) {
			memcpy(&patched, iov[1].iov_base, sizeof(patched));
			if (patched.open_flags & FOPEN_DIRECT_IO) {
				patched.open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
				iov[1].iov_base = &patched;
				atomic_fetch_add_explicit(&pdw_count, 1, memory_order_relaxed);
			}
			tls_open_unique = 0;
		}
	}
	return writev(fd, iov, count);
}

static const struct fuse_custom_io session_io = {
	.writev = session_writev,
	.read = session_read,
};

int pcache_fuse_session_mount(struct fuse_session *se, const char *mountpoint,
			      const struct pcache_fuse_session_cfg *cfg)
{
	if (fuse_session_mount(se, mountpoint) != 0)
		return -EIO;
	pdw_enabled = cfg->parallel_writes;
	hook_init = cfg->on_init;
	hook_reader_fd = cfg->on_reader_fd;
	/*
	 * Install our I/O on the fd the mount just opened (libfuse keeps se->fd; cloned worker
	 * fds go through the same functions).
	 */
	if (fuse_session_custom_io(se, &session_io, fuse_session_fd(se)) != 0) {
		fuse_session_unmount(se);
		return -EINVAL;
	}
	return 0;
}

int pcache_fuse_session_adopt(struct fuse_session *se, int fd, const void *init, size_t len,
			      const struct pcache_fuse_session_cfg *cfg)
{
	struct fuse_buf fb;
	char name[32];
	void *copy;

	/* libfuse takes "/dev/fd/N" as an fd that is already mounted (fuse_session_mount) */
	snprintf(name, sizeof(name), "/dev/fd/%d", fd);
	if (fuse_session_mount(se, name) != 0)
		return -EBADF;
	pdw_enabled = cfg->parallel_writes;
	hook_init = cfg->on_init;
	hook_reader_fd = cfg->on_reader_fd;
	if (fuse_session_custom_io(se, &session_io, fd) != 0)
		return -EINVAL;
	if (!init || len < sizeof(struct fuse_in_header) + 16 ||
	    ((const struct fuse_in_header *)init)->opcode != FUSE_INIT)
		return 0;   /* INIT was never answered: it comes again with the resent requests */
	copy = malloc(len);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, init, len);
	memset(&fb, 0, sizeof(fb));
	fb.mem = copy;
	fb.size = len;
	tls_replaying = true;
	if (hook_init)
		hook_init(copy, len);
	fuse_session_process_buf(se, &fb);
	tls_replaying = false;
	free(copy);
	return 0;
}

int pcache_fuse_session_loop(struct fuse_session *se, const struct pcache_fuse_session_cfg *cfg)
{
	struct fuse_loop_config *lc;
	long cpus;
	int ret;

	if (cfg->single_thread)
		return fuse_session_loop(se);
	lc = fuse_loop_cfg_create();
	if (!lc)
		return -ENOMEM;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		cpus = 1;
	fuse_loop_cfg_set_clone_fd(lc, cfg->clone_fd ? 1 : 0);
	fuse_loop_cfg_set_max_threads(lc, cfg->max_threads ? cfg->max_threads : (unsigned int)cpus);
	fuse_loop_cfg_set_idle_threads(lc, cfg->max_threads ? cfg->max_threads : (unsigned int)cpus);
	ret = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return ret;
}

uint64_t pcache_fuse_session_resent_count(void)
{
	return atomic_load_explicit(&resent_count, memory_order_relaxed);
}

uint64_t pcache_fuse_session_pdw_count(void)
{
	return atomic_load_explicit(&pdw_count, memory_order_relaxed);
}
