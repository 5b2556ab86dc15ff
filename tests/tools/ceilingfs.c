/*
 * ceilingfs.c -- a minimal RAM-backed FUSE filesystem serving one file, "ceiling", with exactly
 * the session settings of pcachefs (fuse/common_session.c). It is the FUSE ceiling of this
 * machine for the benchmarks (pcachefs cache hits are judged against it) and a test bed for the
 * session plumbing (parallel direct writes, cloned fds, 1 MiB requests).
 *
 *   ceilingfs [-f] [-s] [-o size=BYTES] [-o max_threads=N] [-o no_pdw] [-o no_clone_fd]
 *             [-o kernel_cache] MOUNTPOINT
 *
 * Invariants:
 *  1. Reads reply straight from the RAM buffer (fuse_reply_data over a memory bufvec): no copy
 *     in the daemon, as pcachefs does for data it holds in memory.
 *  2. Reads end at EOF (short read); writes past EOF fail with EFBIG, nothing grows.
 *  3. The RAM is pre-faulted at start, so first touches do not land on measured requests.
 */
#include "common_session.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CEIL_FILE_INO 2
#define CEIL_NAME "ceiling"

struct ceil_opts {
	char *size_str;
	int single;
	int no_pdw;
	int no_clone_fd;
	int kernel_cache;
	int foreground;
	int help;
	unsigned int max_threads;
};

static struct {
	char *mem;
	uint64_t size;
	struct ceil_opts o;
	struct pcache_fuse_session_cfg cfg;
	time_t t0;
} cfs;

#define CEIL_OPT(t, p) { t, offsetof(struct ceil_opts, p), 1 }
static const struct fuse_opt ceil_opt_spec[] = {
	{ "size=%s", offsetof(struct ceil_opts, size_str), 0 },
	{ "max_threads=%u", offsetof(struct ceil_opts, max_threads), 0 },
	CEIL_OPT("no_pdw", no_pdw),
	CEIL_OPT("no_clone_fd", no_clone_fd),
	CEIL_OPT("kernel_cache", kernel_cache),
	CEIL_OPT("-s", single),
	CEIL_OPT("-f", foreground),
	CEIL_OPT("-h", help),
	CEIL_OPT("--help", help),
	FUSE_OPT_END
};

static void ceil_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mtime = st->st_ctime = st->st_atime = cfs.t0;
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
		st->st_size = (off_t)cfs.size;
		st->st_blocks = (blkcnt_t)(cfs.size / 512);
		st->st_blksize = 4096;
	}
}

static void ceil_init(void *userdata, struct fuse_conn_info *conn)
{
	pcache_fuse_session_init_conn(&cfs.cfg, conn);
}

static void ceil_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, CEIL_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = CEIL_FILE_INO;
	e.attr_timeout = 3600;
	e.entry_timeout = 3600;
	ceil_stat(e.ino, &e.attr);
	fuse_reply_entry(req, &e);
}

static void ceil_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	if (ino != FUSE_ROOT_ID && ino != CEIL_FILE_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	ceil_stat(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void ceil_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != CEIL_FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (fi->flags & O_TRUNC) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (cfs.o.kernel_cache)
		fi->keep_cache = 1;
	else
		fi->direct_io = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

static void ceil_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);

	if ((uint64_t)off >= cfs.size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > cfs.size - (uint64_t)off)
		size = cfs.size - (uint64_t)off;
	bv.buf[0].mem = cfs.mem + off;
	bv.buf[0].size = size;
	fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

static void ceil_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	if ((uint64_t)off >= cfs.size) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	if (size > cfs.size - (uint64_t)off)
		size = cfs.size - (uint64_t)off;
	memcpy(cfs.mem + off, buf, size);
	fuse_reply_write(req, size);
}

static void ceil_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	static const char *names[] = { ".", "..", CEIL_NAME };
	char buf[512];
	size_t used = 0;
	struct stat st;

	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (off_t i = off; i < 3; i++) {
		size_t n;

		ceil_stat(i == 2 ? CEIL_FILE_INO : FUSE_ROOT_ID, &st);
		n = fuse_add_direntry(req, buf + used, sizeof(buf) - used, names[i], &st, i + 1);
		if (n > sizeof(buf) - used || used + n > size)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void ceil_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ceil_ops = {
	.init = ceil_init,
	.lookup = ceil_lookup,
	.getattr = ceil_getattr,
	.open = ceil_open,
	.read = ceil_read,
	.write = ceil_write,
	.readdir = ceil_readdir,
	.fsync = ceil_fsync,
};

static int ceil_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
	}
	if (*end || v == 0 || v % 4096)
		return -EINVAL;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts;
	struct fuse_session *se;
	int ret = 1;

	cfs.t0 = time(NULL);
	if (fuse_opt_parse(&args, &cfs.o, ceil_opt_spec, NULL) != 0)
		return 1;
	if (cfs.o.help) {
		printf("usage: %s [-f] [-s] [-o size=BYTES] [-o max_threads=N] [-o no_pdw]\n"
		       "       [-o no_clone_fd] [-o kernel_cache] MOUNTPOINT\n", argv[0]);
		fuse_opt_free_args(&args);
		return 0;
	}
	cfs.size = 1ull << 30;
	if (cfs.o.size_str && ceil_parse_size(cfs.o.size_str, &cfs.size) != 0) {
		fprintf(stderr, "ceilingfs: bad size '%s' (a multiple of 4096, suffix K/M/G)\n", cfs.o.size_str);
		goto out_args;
	}
	if (fuse_parse_cmdline(&args, &copts) != 0 || !copts.mountpoint) {
		fprintf(stderr, "ceilingfs: missing MOUNTPOINT\n");
		goto out_args;
	}
	pcache_fuse_session_cfg_default(&cfs.cfg);
	cfs.cfg.single_thread = cfs.o.single || copts.singlethread;
	cfs.cfg.clone_fd = !cfs.o.no_clone_fd;
	cfs.cfg.parallel_writes = !cfs.o.no_pdw;
	cfs.cfg.max_threads = cfs.o.max_threads;

	cfs.mem = mmap(NULL, cfs.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (cfs.mem == MAP_FAILED) {
		fprintf(stderr, "ceilingfs: cannot allocate %llu bytes\n", (unsigned long long)cfs.size);
		goto out_cmdline;
	}
	if (pcache_fuse_session_add_args(&args) != 0)
		goto out_mem;
	se = fuse_session_new(&args, &ceil_ops, sizeof(ceil_ops), NULL);
	if (!se)
		goto out_mem;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (pcache_fuse_session_mount(se, copts.mountpoint, &cfs.cfg) != 0)
		goto out_signals;
	if (fuse_daemonize(copts.foreground || cfs.o.foreground) != 0)
		goto out_unmount;
	ret = pcache_fuse_session_loop(se, &cfs.cfg) ? 1 : 0;
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_mem:
	munmap(cfs.mem, cfs.size);
out_cmdline:
	free(copts.mountpoint);
out_args:
	fuse_opt_free_args(&args);
	return ret;
}
