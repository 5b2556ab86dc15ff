/*
 * flakyfs.c -- a FUSE filesystem serving ONE file, backed by a real file, that fails on demand.
 *
 * Test tool for the backing layer, the engine and the daemon: it passes reads and writes through
 * to the real file (pread/pwrite), except in configured byte ranges, where it returns EIO or
 * ENOSPC, transfers less than asked (short reads/writes), or sleeps first. Every open of the
 * file uses direct_io, so each read and write reaches the daemon (no page cache, no read-ahead),
 * and asynchronous direct I/O is off, so a short write reaches the caller as a short count.
 *
 * Usage:
 *   flakyfs -f -o backing=FILE[,name=image][,delay_us=N][,nofalloc][,fsync_eio=N][,RULE=SPEC...] MNT
 *
 * Files in the mount:
 *   MNT/<name>            the image (default name "image"), same size as the backing file;
 *                         read, write, fsync (fdatasync of the backing file) and fallocate
 *                         (passed through; with -o nofalloc it fails with EOPNOTSUPP) work;
 *                         truncate to another size fails with EPERM.
 *   MNT/.control          write commands to it, read it for rules and counters.
 *
 * A rule is KIND OFF LEN [DIR [ARG]]: it applies to every read/write request of the image that
 * overlaps the byte range [OFF, OFF+LEN) and whose direction matches DIR (r, w or rw, default
 * rw). OFF and LEN accept 0x hex. KIND is:
 *   eio     the request fails with EIO.     ARG = how many hits before the rule expires (0 =
 *   enospc  the request fails with ENOSPC.  never expires; default 0)
 *   short   the request transfers at most ARG bytes (default 512), from its start.
 *   delay   the request first sleeps ARG microseconds (default 100000).
 * All matching delays sleep, then the first matching eio/enospc fails the request, else the
 * first matching short rule trims it. On the command line a rule is KIND=OFF:LEN[:DIR[:ARG]]
 * (e.g. -o eio=4096:512,short=0:65536:r:100); delay_us=N delays every request by N us.
 *
 * .control commands (one per line; a write may hold several; a bad line fails the write with
 * EINVAL and applies none of the lines after it):
 *   eio|enospc|short|delay OFF LEN [DIR [ARG]]   add a rule
 *   clear                                         remove every rule
 *   delay_us N                                    set the global delay
 *   fsync_eio N                                   the next N fsyncs of the image fail with EIO
 *                                                 (0 stops; -1 = every fsync from now on)
 *   reset                                         zero the counters
 * Reading .control gives "key value" lines: reads, writes, errors (requests failed by a rule),
 * shorts (requests trimmed), delayed, fsyncs, fsync_errors, delay_us, fsync_eio, then one
 * "rule KIND OFF LEN DIR ARG" line per rule. On the command line: fsync_eio=N.
 * Example: printf 'eio 0 4096 r 1\n' > /mnt/.control   (the next read of block 0 fails once)
 *
 * SIGTERM/SIGINT unmount and exit (fuse_main's handlers). Multi-threaded; rules are guarded by
 * one mutex, sleeps happen outside it.
 *
 * NOTE: read(2)/write(2) and buffered io_uring writes see a short rule as a short count. For
 * io_uring reads (and O_DIRECT io_uring writes) of a regular file the kernel retries the rest
 * itself, and on 6.18 that retry puts data at the wrong place on a direct_io FUSE file (the
 * request completes at full length with wrong bytes): do not use short read rules under
 * io_uring (tests/check_backing.c, short_transfers_are_continued_not_reported).
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FLAKY_MAX_RULES 64
#define FLAKY_STATUS_MAX 8192
#define PCACHE_FLAKY_MIN(a, b) ((a) < (b) ? (a) : (b))

enum flaky_kind { FLAKY_EIO, FLAKY_ENOSPC, FLAKY_SHORT, FLAKY_DELAY };
static const char *const flaky_kind_names[] = { "eio", "enospc", "short", "delay" };

struct flaky_rule {
	enum flaky_kind kind;
	uint64_t off, len;
	unsigned int dir;  /* bit 0: reads, bit 1: writes */
	uint64_t arg;
};

struct flaky_conf {
	char *backing;
	char *name;
	unsigned int delay_us;
	int nofalloc;
	int fsync_eio;
};

/* lock guards the rules, the counters and delay_us (written by .control). */
static struct {
	int fd;
	char name[256];
	pthread_mutex_t lock;
	struct flaky_rule rules[FLAKY_MAX_RULES];
	unsigned int nrules;
	unsigned int delay_us;
	int fsync_eio;     /* fsyncs left to fail; -1: all */
	uint64_t reads, writes, errors, shorts, delayed, fsyncs, fsync_errors;
} fl = { .fd = -1, .lock = PTHREAD_MUTEX_INITIALIZER };

static struct flaky_conf conf;

/* ---- rules ---------------------------------------------------------------------------------- */

/* Parse "KIND OFF LEN [DIR [ARG]]" and add the rule (caller holds lock). 0 or -EINVAL. */
static int flaky_add_rule(const char *line)
{
	char kind[16], dir[8] = "rw";
	long long off, len, arg = 0;
	struct flaky_rule r;
	int n, k;

	n = sscanf(line, "%15s %lli %lli %7s %lli", kind, &off, &len, dir, &arg);
	if (n < 3 || off < 0 || len <= 0 || arg < 0)
		return -EINVAL;
	for (k = 0; k < 4; k++)
		if (!strcmp(kind, flaky_kind_names[k]))
			break;
	if (k == 4 || fl.nrules == FLAKY_MAX_RULES)
		return -EINVAL;
	r.kind = (enum flaky_kind)k;
	r.off = (uint64_t)off;
	r.len = (uint64_t)len;
	r.dir = !strcmp(dir, "r") ? 1 : !strcmp(dir, "w") ? 2 : !strcmp(dir, "rw") ? 3 : 0;
	if (!r.dir)
		return -EINVAL;
	if (n < 5)
		arg = r.kind == FLAKY_SHORT ? 512 : r.kind == FLAKY_DELAY ? 100000 : 0;
	if (r.kind == FLAKY_SHORT && arg == 0)
		return -EINVAL;
	r.arg = (uint64_t)arg;
	fl.rules[fl.nrules++] = r;
	return 0;
}

static void flaky_sleep_us(uint64_t us)
{
	struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/*
 * Apply the rules to a request of *size bytes at off: sleeps, then returns -EIO/-ENOSPC, or
 * 0 with *size possibly trimmed.
 */
static int flaky_apply(uint64_t off, size_t *size, unsigned int dir)
{
	uint64_t sleep_us, end = off + *size;
	int err = 0;
	unsigned int i;
	size_t trimmed = *size;

	pthread_mutex_lock(&fl.lock);
	if (dir == 1)
		fl.reads++;
	else
		fl.writes++;
	sleep_us = fl.delay_us;
	for (i = 0; i < fl.nrules; i++) {
		struct flaky_rule *r = &fl.rules[i];

		if (!(r->dir & dir) || off >= r->off + r->len || end <= r->off)
			continue;
		if (r->kind == FLAKY_DELAY) {
			sleep_us += r->arg;
		} else if (r->kind == FLAKY_SHORT) {
			if (trimmed == *size && r->arg < *size)
				trimmed = r->arg;
		} else if (!err) {
			err = r->kind == FLAKY_EIO ? -EIO : -ENOSPC;
			if (r->arg && --r->arg == 0) {
				memmove(r, r + 1, (fl.nrules - i - 1) * sizeof(*r));
				fl.nrules--;
				i--;
			}
		}
	}
	if (sleep_us)
		fl.delayed++;
	if (err)
		fl.errors++;
	else if (trimmed != *size)
		fl.shorts++;
	pthread_mutex_unlock(&fl.lock);

	if (sleep_us)
		flaky_sleep_us(sleep_us);
	if (!err)
		*size = trimmed;
	return err;
}

/* Render the .control contents into buf; returns the length. */
static size_t flaky_status(char *buf, size_t len)
{
	size_t n = 0;
	unsigned int i;

	pthread_mutex_lock(&fl.lock);
	n += (size_t)snprintf(buf + n, len - n,
			      "reads %" PRIu64 "\nwrites %" PRIu64 "\nerrors %" PRIu64
			      "\nshorts %" PRIu64 "\ndelayed %" PRIu64 "\nfsyncs %" PRIu64
			      "\nfsync_errors %" PRIu64 "\ndelay_us %u\nfsync_eio %d\n",
			      fl.reads, fl.writes, fl.errors, fl.shorts, fl.delayed, fl.fsyncs,
			      fl.fsync_errors, fl.delay_us, fl.fsync_eio);
	for (i = 0; i < fl.nrules && n < len; i++) {
		const struct flaky_rule *r = &fl.rules[i];

		n += (size_t)snprintf(buf + n, len - n, "rule %s %" PRIu64 " %" PRIu64 " %s %" PRIu64 "\n",
				      flaky_kind_names[r->kind], r->off, r->len,
				      r->dir == 1 ? "r" : r->dir == 2 ? "w" : "rw", r->arg);
	}
	pthread_mutex_unlock(&fl.lock);
	return PCACHE_FLAKY_MIN(n, len);
}

/* ---- FUSE operations ------------------------------------------------------------------------ */


enum { FLAKY_INO_ROOT, FLAKY_INO_IMAGE, FLAKY_INO_CONTROL, FLAKY_INO_NONE };

static int flaky_which(const char *path)
{
	if (!strcmp(path, "/"))
		return FLAKY_INO_ROOT;
	if (path[0] == '/' && !strcmp(path + 1, fl.name))
		return FLAKY_INO_IMAGE;
	if (!strcmp(path, "/.control"))
		return FLAKY_INO_CONTROL;
	return FLAKY_INO_NONE;
}

static void *flaky_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	/* without this the kernel turns a short asynchronous direct write into EIO
	 * (fuse_get_res_by_io), and the short rule could not be seen by the caller */
	conn->want &= ~FUSE_CAP_ASYNC_DIO;
	cfg->direct_io = 1;
	cfg->attr_timeout = 0;
	cfg->entry_timeout = 0;
	cfg->use_ino = 0;
	return NULL;
}

static int flaky_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct stat bst;

	memset(st, 0, sizeof(*st));
	switch (flaky_which(path)) {
	case FLAKY_INO_ROOT:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	case FLAKY_INO_IMAGE:
		if (fstat(fl.fd, &bst) < 0)
			return -errno;
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 1;
		st->st_size = bst.st_size;
		st->st_blocks = bst.st_blocks;
		st->st_blksize = 4096;
		return 0;
	case FLAKY_INO_CONTROL:
		st->st_mode = S_IFREG | 0600;
		st->st_nlink = 1;
		st->st_size = 0;
		return 0;
	}
	return -ENOENT;
}

static int flaky_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
			 struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	if (flaky_which(path) != FLAKY_INO_ROOT)
		return -ENOTDIR;
	filler(buf, ".", NULL, 0, 0);
	filler(buf, "..", NULL, 0, 0);
	filler(buf, fl.name, NULL, 0, 0);
	filler(buf, ".control", NULL, 0, 0);
	return 0;
}

static int flaky_open(const char *path, struct fuse_file_info *fi)
{
	int w = flaky_which(path);

	if (w != FLAKY_INO_IMAGE && w != FLAKY_INO_CONTROL)
		return w == FLAKY_INO_ROOT ? -EISDIR : -ENOENT;
	fi->direct_io = 1; /* every read and write reaches us: no page cache, no read-ahead */
	fi->keep_cache = 0;
	return 0;
}

static int flaky_read(const char *path, char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	size_t done = 0;
	int ret;

	if (flaky_which(path) == FLAKY_INO_CONTROL) {
		char *st = malloc(FLAKY_STATUS_MAX);
		size_t n;

		if (!st)
			return -ENOMEM;
		n = flaky_status(st, FLAKY_STATUS_MAX);
		if ((size_t)off >= n) {
			free(st);
			return 0;
		}
		n = PCACHE_FLAKY_MIN(n - (size_t)off, size);
		memcpy(buf, st + off, n);
		free(st);
		return (int)n;
	}
	ret = flaky_apply((uint64_t)off, &size, 1);
	if (ret)
		return ret;
	while (done < size) {
		ssize_t n = pread(fl.fd, buf + done, size - done, off + (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return done ? (int)done : -errno;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (int)done;
}

/* Apply every line of a .control write. */
static int flaky_control(const char *buf, size_t size)
{
	char line[256];
	size_t i = 0;
	int ret = 0;

	while (i < size && !ret) {
		size_t n = 0;

		while (i < size && buf[i] != '\n') {
			if (n < sizeof(line) - 1)
				line[n++] = buf[i];
			i++;
		}
		i++;
		line[n] = 0;
		if (n == 0)
			continue;
		pthread_mutex_lock(&fl.lock);
		if (!strcmp(line, "clear")) {
			fl.nrules = 0;
		} else if (!strcmp(line, "reset")) {
			fl.reads = fl.writes = fl.errors = fl.shorts = fl.delayed = 0;
			fl.fsyncs = fl.fsync_errors = 0;
		} else if (!strncmp(line, "delay_us ", 9)) {
			fl.delay_us = (unsigned int)strtoul(line + 9, NULL, 0);
		} else if (!strncmp(line, "fsync_eio ", 10)) {
			fl.fsync_eio = (int)strtol(line + 10, NULL, 0);
		} else {
			ret = flaky_add_rule(line);
		}
		pthread_mutex_unlock(&fl.lock);
	}
	return ret;
}

static int flaky_write(const char *path, const char *buf, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	size_t done = 0;
	int ret;

	if (flaky_which(path) == FLAKY_INO_CONTROL) {
		ret = flaky_control(buf, size);
		return ret ? ret : (int)size;
	}
	ret = flaky_apply((uint64_t)off, &size, 2);
	if (ret)
		return ret;
	while (done < size) {
		ssize_t n = pwrite(fl.fd, buf + done, size - done, off + (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return done ? (int)done : -errno;
		}
		done += (size_t)n;
	}
	return (int)done;
}

static int flaky_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct stat st;

	if (flaky_which(path) == FLAKY_INO_CONTROL)
		return 0; /* "echo cmd > .control" truncates first */
	if (flaky_which(path) != FLAKY_INO_IMAGE)
		return -ENOENT;
	if (fstat(fl.fd, &st) < 0)
		return -errno;
	return st.st_size == size ? 0 : -EPERM;
}

static int flaky_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	bool fail;

	if (flaky_which(path) != FLAKY_INO_IMAGE)
		return 0;
	pthread_mutex_lock(&fl.lock);
	fl.fsyncs++;
	fail = fl.fsync_eio != 0;
	if (fl.fsync_eio > 0)
		fl.fsync_eio--;
	if (fail)
		fl.fsync_errors++;
	pthread_mutex_unlock(&fl.lock);
	if (fail)
		return -EIO;
	return fdatasync(fl.fd) < 0 ? -errno : 0;
}

static int flaky_fallocate(const char *path, int mode, off_t off, off_t len,
			   struct fuse_file_info *fi)
{
	if (flaky_which(path) != FLAKY_INO_IMAGE || conf.nofalloc)
		return -EOPNOTSUPP;
	return fallocate(fl.fd, mode, off, len) < 0 ? -errno : 0;
}

static const struct fuse_operations flaky_ops = {
	.init = flaky_init,
	.getattr = flaky_getattr,
	.readdir = flaky_readdir,
	.open = flaky_open,
	.read = flaky_read,
	.write = flaky_write,
	.truncate = flaky_truncate,
	.fsync = flaky_fsync,
	.fallocate = flaky_fallocate,
};

/* ---- options -------------------------------------------------------------------------------- */

enum { FLAKY_KEY_RULE, FLAKY_KEY_HELP };

#define FLAKY_OPT(t, p) { t, offsetof(struct flaky_conf, p), 1 }
static const struct fuse_opt flaky_opts[] = {
	FLAKY_OPT("backing=%s", backing),
	FLAKY_OPT("name=%s", name),
	FLAKY_OPT("delay_us=%u", delay_us),
	FLAKY_OPT("nofalloc", nofalloc),
	FLAKY_OPT("fsync_eio=%d", fsync_eio),
	FUSE_OPT_KEY("eio=", FLAKY_KEY_RULE),
	FUSE_OPT_KEY("enospc=", FLAKY_KEY_RULE),
	FUSE_OPT_KEY("short=", FLAKY_KEY_RULE),
	FUSE_OPT_KEY("delay=", FLAKY_KEY_RULE),
	FUSE_OPT_KEY("-h", FLAKY_KEY_HELP),
	FUSE_OPT_KEY("--help", FLAKY_KEY_HELP),
	FUSE_OPT_END
};

static int flaky_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	char line[256], *p;

	if (key == FLAKY_KEY_HELP) {
		printf("usage: flakyfs -f -o backing=FILE[,name=NAME][,delay_us=N][,nofalloc][,fsync_eio=N]"
		       "[,eio|enospc|short|delay=OFF:LEN[:DIR[:ARG]]...] MOUNTPOINT\n"
		       "see the comment at the top of tests/tools/flakyfs.c\n");
		exit(0);
	}
	if (key != FLAKY_KEY_RULE)
		return 1; /* keep for fuse */
	snprintf(line, sizeof(line), "%s", arg);
	for (p = line; *p; p++)
		if (*p == '=' || *p == ':')
			*p = ' ';
	if (flaky_add_rule(line)) {
		fprintf(stderr, "flakyfs: bad rule '%s'\n", arg);
		return -1;
	}
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	int ret;

	if (fuse_opt_parse(&args, &conf, flaky_opts, flaky_opt_proc) < 0)
		return 2;
	if (!conf.backing) {
		fprintf(stderr, "flakyfs: -o backing=FILE is required\n");
		ret = 2;
		goto free_args;
	}
	snprintf(fl.name, sizeof(fl.name), "%s", conf.name ? conf.name : "image");
	if (strchr(fl.name, '/') || !strcmp(fl.name, ".control")) {
		fprintf(stderr, "flakyfs: bad name '%s'\n", fl.name);
		ret = 2;
		goto free_args;
	}
	fl.delay_us = conf.delay_us;
	fl.fsync_eio = conf.fsync_eio;
	fl.fd = open(conf.backing, O_RDWR | O_CLOEXEC);
	if (fl.fd < 0) {
		fprintf(stderr, "flakyfs: %s: %s\n", conf.backing, strerror(errno));
		ret = 1;
		goto free_args;
	}
	ret = fuse_main(args.argc, args.argv, &flaky_ops, NULL);
	close(fl.fd);
free_args:
	fuse_opt_free_args(&args);
	free(conf.backing);
	free(conf.name);
	return ret;
}
