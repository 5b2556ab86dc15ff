/*
 * opts.c -- command line of pcachefs: libfuse-style options (-o key=value, -f, -d, -s), the
 * help text, and validation of everything that can be checked before the cache device is
 * touched.
 *
 * Invariants:
 *  1. Parsing never touches the cache device or a backing image: a bad command line changes
 *     nothing on disk. Image paths are only made absolute (not resolved) and stat'ed.
 *  2. Every error is one line on stderr starting with "pcachefs: "; the caller exits with 1.
 *  3. Options pcachefs does not know are left for libfuse (mount options such as fsname,
 *     default_permissions); options mount.fuse3 passes from fstab that mean nothing to a FUSE
 *     daemon (defaults, auto, noauto, nofail, _netdev, user, users) are dropped.
 *  4. `pcachefs MOUNTPOINT`, `pcachefs SOURCE MOUNTPOINT` (mount.fuse3: SOURCE is "none",
 *     "pcachefs" or the cache device) are both accepted.
 */
#include "daemon_i.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcache/format.h"

enum {
	KEY_HELP,
	KEY_VERSION,
	KEY_FOREGROUND,
	KEY_DEBUG,
	KEY_SINGLE,
	KEY_CACHE,
	KEY_CACHE_SIZE,
	KEY_IMAGE,
	KEY_REKEY,
	KEY_DATA_CRC,
	KEY_GC_PERCENT,
	KEY_SPACE_TIMEOUT,
	KEY_CACHE_MODE,
	KEY_SEQ_CUTOFF,
	KEY_MAX_SHARE,
	KEY_SEGMENT_SIZE,
	KEY_MAX_IMAGES,
	KEY_IMAGE_DIR,
	KEY_ALLOW_OTHER,
	KEY_KERNEL_CACHE,
	KEY_DRAIN,
	KEY_MAX_THREADS,
	KEY_NO_PDW,
	KEY_KEEP_TIMEOUT,
	KEY_TAKEOVER,
	KEY_FDSTORE,
	KEY_DROP,
};

static const struct fuse_opt pfs_opt_spec[] = {
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("-s", KEY_SINGLE),
	FUSE_OPT_KEY("cache=", KEY_CACHE),
	FUSE_OPT_KEY("cache_size=", KEY_CACHE_SIZE),
	FUSE_OPT_KEY("image=", KEY_IMAGE),
	FUSE_OPT_KEY("rekey=", KEY_REKEY),
	FUSE_OPT_KEY("data_crc", KEY_DATA_CRC),
	FUSE_OPT_KEY("gc_percent=", KEY_GC_PERCENT),
	FUSE_OPT_KEY("space_timeout=", KEY_SPACE_TIMEOUT),
	FUSE_OPT_KEY("cache_mode=", KEY_CACHE_MODE),
	FUSE_OPT_KEY("sequential_cutoff=", KEY_SEQ_CUTOFF),
	FUSE_OPT_KEY("max_share=", KEY_MAX_SHARE),
	FUSE_OPT_KEY("segment_size=", KEY_SEGMENT_SIZE),
	FUSE_OPT_KEY("max_images=", KEY_MAX_IMAGES),
	FUSE_OPT_KEY("image_dir=", KEY_IMAGE_DIR),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("kernel_cache", KEY_KERNEL_CACHE),
	FUSE_OPT_KEY("drain_on_exit", KEY_DRAIN),
	FUSE_OPT_KEY("max_threads=", KEY_MAX_THREADS),
	FUSE_OPT_KEY("no_parallel_writes", KEY_NO_PDW),
	FUSE_OPT_KEY("keep_timeout=", KEY_KEEP_TIMEOUT),
	FUSE_OPT_KEY("takeover", KEY_TAKEOVER),
	FUSE_OPT_KEY("fdstore", KEY_FDSTORE),
	FUSE_OPT_KEY("defaults", KEY_DROP),
	FUSE_OPT_KEY("auto", KEY_DROP),
	FUSE_OPT_KEY("noauto", KEY_DROP),
	FUSE_OPT_KEY("nofail", KEY_DROP),
	FUSE_OPT_KEY("_netdev", KEY_DROP),
	FUSE_OPT_KEY("user", KEY_DROP),
	FUSE_OPT_KEY("users", KEY_DROP),
	FUSE_OPT_END
};

struct parse_ctx {
	struct pfs_opts *o;
	char *rekey[PFS_MAX_IMAGE_OPTS];
	int n_rekey;
	int n_nonopt;
	char *nonopt[2];
	int exit_ok;
	int error;
};

static void usage(const char *prog)
{
	printf("usage: %s [options] MOUNTPOINT\n"
	       "       %s SOURCE MOUNTPOINT -o cache=PATH[,...]   (as mount.fuse3 calls it)\n"
	       "\n"
	       "Serves disk images through a persistent cache: one regular file per image under\n"
	       "MOUNTPOINT, and the control tree MOUNTPOINT/.pcache/.\n"
	       "\n"
	       "pcachefs options:\n"
	       "    -o cache=PATH             cache device (DAX device or file); required\n"
	       "    -o cache_size=SIZE        create a missing cache file of SIZE (K/M/G/T suffix)\n"
	       "    -o image=NAME:PATH        attach image NAME backed by PATH (repeatable);\n"
	       "                              images known to the cache device come back by themselves\n"
	       "                              (PATH is stored as given: use a stable name such as\n"
	       "                              /dev/disk/by-id/...; the backing's identity is checked)\n"
	       "    -o image_dir=DIR          serve every regular file of DIR as an image named like it;\n"
	       "                              files created, renamed or removed through the mount are\n"
	       "                              created, renamed or removed in DIR (one per mount)\n"
	       "    -o rekey=NAME             accept a different backing for the clean image NAME\n"
	       "                              (named with -o image), dropping its cached data\n"
	       "    -o cache_mode=MODE        writeback (default), writethrough or writearound, for\n"
	       "                              the images named with -o image\n"
	       "    -o sequential_cutoff=SIZE a read or write stream longer than SIZE is not cached\n"
	       "                              (writes go to the backing; default 4M, 0 = cache\n"
	       "                              everything), for the images named with -o image\n"
	       "                              (persisted)\n"
	       "    -o max_share=PERCENT      cap the cached data of the images named with -o image\n"
	       "                              at PERCENT of the cache (0 = no cap; persisted)\n"
	       "    -o gc_percent=N|auto      start garbage collection at N %% usage, or keep a free\n"
	       "                              reserve sized from the write rate (auto; persisted)\n"
	       "    -o space_timeout=SECONDS  a writer waits at most this long for cache space, then\n"
	       "                              gets EIO (default 60, 0 = no limit)\n"
	       "    -o data_crc               checksum cached data (format time) and verify it on hits\n"
	       "    -o segment_size=SIZE      segment size when formatting (default 1/256 of the\n"
	       "                              cache, 4M-16M)\n"
	       "    -o max_images=N           image table entries when formatting (a multiple of 64,\n"
	       "                              64-512; default one per MiB of cache)\n"
	       "    -o allow_other            let other users access the mount (needs\n"
	       "                              user_allow_other in /etc/fuse.conf for non-root)\n"
	       "    -o kernel_cache           use the kernel page cache instead of direct I/O\n"
	       "                              (needed for shared mmap of image files)\n"
	       "    -o drain_on_exit          write back all dirty data before exiting\n"
	       "    -o keep_timeout=SECONDS   if the daemon dies, a keeper process holds the mount for\n"
	       "                              this long (its callers wait) for a new pcachefs on the\n"
	       "                              same mount point to take it over (default 60; 0 = no\n"
	       "                              keeper: the mount fails with ENOTCONN at once)\n"
	       "    -o takeover               take the mount point over from the pcachefs serving it\n"
	       "                              (it hands over and exits; open files keep working)\n"
	       "    -o fdstore                as a systemd service (FileDescriptorStoreMax=): keep the\n"
	       "                              mount in the service manager's fd store instead of a\n"
	       "                              keeper; a restarted service takes it over\n"
	       "    -o max_threads=N          FUSE worker threads (default: number of CPUs)\n"
	       "    -o no_parallel_writes     do not enable parallel direct writes (benchmarks)\n"
	       "    -f                        stay in the foreground\n"
	       "    -d, -o debug              FUSE debug output (implies -f)\n"
	       "    -s                        single-threaded session loop\n"
	       "    -h, --help                this help\n"
	       "    -V, --version             version\n"
	       "\n"
	       "Other -o options go to FUSE (for example fsname=NAME, default_permissions).\n",
	       prog, prog);
}

/* A decimal integer in [lo, hi], the whole of v: true and *out, or false. */
static bool parse_long(const char *v, long lo, long hi, long *out)
{
	char *end;
	long t;

	errno = 0;
	t = strtol(v, &end, 10);
	if (errno || end == v || *end || t < lo || t > hi)
		return false;
	*out = t;
	return true;
}

static int perr(struct parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(struct parse_ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "pcachefs: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	c->error = 1;
	return -1;
}

/* "key=value" -> value */
static const char *optval(const char *arg)
{
	const char *eq = strchr(arg, '=');

	return eq ? eq + 1 : "";
}

static int set_string(char **dst, const char *v)
{
	char *s = strdup(v);

	if (!s)
		return -1;
	free(*dst);
	*dst = s;
	return 0;
}

static int add_image(struct parse_ctx *c, const char *v)
{
	struct pfs_opts *o = c->o;
	const char *colon = strchr(v, ':');
	struct pfs_image_opt *io;
	char *name;

	if (!colon || colon == v || !colon[1])
		return perr(c, "bad -o image=%s (expected image=NAME:PATH)", v);
	if (o->n_images >= PFS_MAX_IMAGE_OPTS)
		return perr(c, "too many -o image options (max %d)", PFS_MAX_IMAGE_OPTS);
	name = strndup(v, (size_t)(colon - v));
	if (!name)
		return -1;
	if (!pcache_name_valid(name)) {
		perr(c, "invalid image name '%s' (1-127 bytes, no '/', not '.' or '..', no control characters)", name);
		free(name);
		return -1;
	}
	for (int i = 0; i < o->n_images; i++) {
		if (!strcmp(o->images[i].name, name)) {
			perr(c, "duplicate image name '%s'", name);
			free(name);
			return -1;
		}
	}
	io = &o->images[o->n_images];
	io->name = name;
	io->path = strdup(colon + 1);
	if (!io->path) {
		free(name);
		return -1;
	}
	o->n_images++;
	return 0;
}

static int pfs_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct parse_ctx *c = data;
	struct pfs_opts *o = c->o;
	const char *v = optval(arg);
	uint64_t n;

	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (c->n_nonopt >= 2)
			return perr(c, "too many arguments: '%s' (usage: pcachefs [options] MOUNTPOINT)", arg);
		c->nonopt[c->n_nonopt++] = strdup(arg);
		return 0;
	case KEY_HELP:
		usage("pcachefs");
		c->exit_ok = 1;
		return 0;
	case KEY_VERSION:
		printf("pcachefs version %s (libfuse %s, format v%u)\n", PFS_VERSION, fuse_pkgversion(),
		       PCACHE_FORMAT_VERSION);
		c->exit_ok = 1;
		return 0;
	case KEY_FOREGROUND:
		o->foreground = true;
		return 0;
	case KEY_DEBUG:
		o->debug = o->foreground = true;
		return fuse_opt_add_arg(outargs, "-d");
	case KEY_SINGLE:
		o->single_thread = true;
		return 0;
	case KEY_CACHE:
		if (!*v)
			return perr(c, "empty -o cache=");
		return set_string(&o->cache_path, v);
	case KEY_CACHE_SIZE:
		if (pcache_parse_size(v, &n) || n == 0)
			return perr(c, "bad -o cache_size=%s (a size such as 1G)", v);
		o->cache_size = n;
		return 0;
	case KEY_IMAGE:
		return add_image(c, v);
	case KEY_REKEY:
		if (c->n_rekey >= PFS_MAX_IMAGE_OPTS)
			return perr(c, "too many -o rekey options");
		if (!*v)
			return perr(c, "empty -o rekey=");
		c->rekey[c->n_rekey] = strdup(v); /* v lives in libfuse's argument buffer */
		return c->rekey[c->n_rekey++] ? 0 : -1;
	case KEY_DATA_CRC:
		o->data_crc = true;
		return 0;
	case KEY_GC_PERCENT: {
		uint32_t g;

		if (pcache_parse_gc_percent(v, &g))
			return perr(c, "bad -o gc_percent=%s (0-90 or auto)", v);
		o->gc_percent = (int)g;
		return 0;
	}
	case KEY_KEEP_TIMEOUT: {
		long t;

		if (!parse_long(v, 0, 7 * 24 * 3600, &t))
			return perr(c, "bad -o keep_timeout=%s (seconds, 0-604800)", v);
		o->keep_timeout = (unsigned int)t;
		return 0;
	}
	case KEY_TAKEOVER:
		o->takeover = true;
		return 0;
	case KEY_FDSTORE:
		o->fdstore = true;
		return 0;
	case KEY_SPACE_TIMEOUT: {
		long t;

		if (!parse_long(v, 0, 24 * 3600, &t))
			return perr(c, "bad -o space_timeout=%s (seconds, 0-86400)", v);
		o->space_timeout = (int)t;
		return 0;
	}
	case KEY_CACHE_MODE:
		o->cache_mode = pcache_mode_parse(v);
		if (o->cache_mode < 0)
			return perr(c, "bad -o cache_mode=%s (writeback, writethrough or writearound)", v);
		return 0;
	case KEY_SEQ_CUTOFF:
		if (pcache_parse_size(v, &n) || n > PCACHE_SEQ_CUTOFF_MAX)
			return perr(c, "bad -o sequential_cutoff=%s (a size such as 4M, 0 = none)", v);
		o->seq_cutoff = (int64_t)n;
		return 0;
	case KEY_MAX_SHARE: {
		uint64_t p;

		if (pfs_knob_parse(v, 100, &p))
			return perr(c, "bad -o max_share=%s (a percent 0-100, 0 = no cap)", v);
		o->max_share = (int)p;
		return 0;
	}
	case KEY_SEGMENT_SIZE:
		if (pcache_parse_size(v, &n) || !PCACHE_IS_POW2(n) || n < PCACHE_MIN_SEG_SIZE ||
		    n > PCACHE_MAX_SEG_SIZE)
			return perr(c, "bad -o segment_size=%s (a power of two, 1M-1G)", v);
		o->segment_size = n;
		return 0;
	case KEY_MAX_IMAGES: {
		char *end;
		unsigned long m;

		errno = 0;
		m = strtoul(v, &end, 10);
		if (errno || end == v || *end || m > UINT32_MAX || !pcache_max_images_valid((uint32_t)m))
			return perr(c, "bad -o max_images=%s (a multiple of %u, %u-%u)", v, PCACHE_IMAGES_STEP,
				    PCACHE_MAX_IMAGES_V1, PCACHE_MAX_IMAGES);
		o->max_images = (uint32_t)m;
		return 0;
	}
	case KEY_IMAGE_DIR:
		if (!*v)
			return perr(c, "empty -o image_dir=");
		if (o->image_dir)
			return perr(c, "-o image_dir given twice (one directory per mount: its files are "
				    "the mount's names)");
		return set_string(&o->image_dir, v);
	case KEY_ALLOW_OTHER:
		o->allow_other = true;
		return fuse_opt_add_arg(outargs, "-oallow_other");
	case KEY_KERNEL_CACHE:
		o->kernel_cache = true;
		return 0;
	case KEY_DRAIN:
		o->drain_on_exit = true;
		return 0;
	case KEY_MAX_THREADS: {
		long t;

		if (!parse_long(v, 1, 256, &t))
			return perr(c, "bad -o max_threads=%s (1-256)", v);
		o->max_threads = (unsigned int)t;
		return 0;
	}
	case KEY_NO_PDW:
		o->no_pdw = true;
		return 0;
	case KEY_DROP:
		return 0;
	default:
		return 1;   /* keep for libfuse */
	}
}

/* Resolve a path that must exist; one-line error otherwise. */
static int resolve(struct parse_ctx *c, char **path, const char *what)
{
	char *r = realpath(*path, NULL);

	if (!r) {
		fprintf(stderr, "pcachefs: %s '%s': %s\n", what, *path, strerror(errno));
		c->error = 1;
		return -1;
	}
	free(*path);
	*path = r;
	return 0;
}

/*
 * Is the mount point (made absolute, not resolved) kept by a keeper (keeper.c) or given back by
 * the service manager's fd store (fdstore.c)? Then it is a live FUSE mount whose daemon may be
 * dead, and it is used as given: resolving it, or any stat of it, would wait for a daemon.
 * Only the keeper's socket, or the variables the manager set, are looked at.
 */
static bool keeper_holds(struct parse_ctx *c)
{
	char sock[128], *abs;
	struct stat st;
	bool held;

	if (c->o->keep_timeout == 0 && !c->o->takeover && !c->o->fdstore)
		return false;
	abs = pfs_path_absolute(c->o->mountpoint);
	if (!abs)
		return false;
	if (c->o->fdstore)
		held = pfs_fdstore_kept();
	else
		held = pfs_keeper_sock_path(abs, sock, sizeof(sock)) == 0 && lstat(sock, &st) == 0 &&
		       S_ISSOCK(st.st_mode);
	if (held) {
		free(c->o->mountpoint);
		c->o->mountpoint = abs;
	} else {
		free(abs);
	}
	return held;
}

static int validate(struct parse_ctx *c)
{
	struct pfs_opts *o = c->o;
	struct stat st;

	if (c->n_nonopt == 0)
		return perr(c, "missing MOUNTPOINT (see pcachefs --help)");
	o->mountpoint = c->nonopt[c->n_nonopt - 1];
	c->nonopt[c->n_nonopt - 1] = NULL;
	if (c->n_nonopt == 2) {
		/* mount.fuse3 passes the fstab source first: "none", "pcachefs" or the cache device */
		const char *src = c->nonopt[0];

		if (strcmp(src, "none") && strcmp(src, "pcachefs") && !o->cache_path) {
			if (set_string(&o->cache_path, src))
				return -1;
		}
	}
	if (!o->cache_path)
		return perr(c, "missing -o cache=PATH (the cache device)");
	if (stat(o->cache_path, &st) != 0) {
		if (errno != ENOENT || !o->cache_size) {
			fprintf(stderr, "pcachefs: cache device '%s': %s%s\n", o->cache_path, strerror(errno),
				errno == ENOENT ? " (add -o cache_size=SIZE to create it)" : "");
			c->error = 1;
			return -1;
		}
		/* a file to be created: resolve its directory */
		char *dup = strdup(o->cache_path), *slash, *abs;
		const char *dir;

		if (!dup)
			return -1;
		slash = strrchr(dup, '/');
		dir = slash ? (slash == dup ? "/" : dup) : ".";
		if (slash && slash != dup)
			*slash = '\0';
		abs = realpath(dir, NULL);
		if (!abs) {
			fprintf(stderr, "pcachefs: cache device directory '%s': %s\n", dir, strerror(errno));
			free(dup);
			c->error = 1;
			return -1;
		}
		const char *base = slash ? slash + 1 : dup;
		char *full = malloc(strlen(abs) + strlen(base) + 2);

		if (!full) {
			free(abs);
			free(dup);
			return -1;
		}
		sprintf(full, "%s/%s", strcmp(abs, "/") ? abs : "", base);
		free(abs);
		free(dup);
		free(o->cache_path);
		o->cache_path = full;
	} else {
		if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode))
			return perr(c, "cache device '%s' is not a file or a device", o->cache_path);
		if (resolve(c, &o->cache_path, "cache device"))
			return -1;
	}
	if (o->fdstore && !getenv("NOTIFY_SOCKET"))
		return perr(c, "-o fdstore needs $NOTIFY_SOCKET: it is for a systemd service with "
			    "FileDescriptorStoreMax= (see contrib/pcachefs@.service)");
	o->fdstore = pfs_fdstore_wanted(o->fdstore);
	if (keeper_holds(c))
		goto images;   /* its daemon is gone: a stat of the mount point would wait for it */
	if (stat(o->mountpoint, &st) != 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "pcachefs: mount point '%s' is not a directory\n", o->mountpoint);
		c->error = 1;
		return -1;
	}
	/* absolute: the daemon changes to / and libfuse unmounts by this path at exit */
	if (resolve(c, &o->mountpoint, "mount point"))
		return -1;
images:
	if (o->image_dir) {
		if (stat(o->image_dir, &st) != 0) {
			fprintf(stderr, "pcachefs: image_dir '%s': %s\n", o->image_dir, strerror(errno));
			c->error = 1;
			return -1;
		}
		if (!S_ISDIR(st.st_mode))
			return perr(c, "image_dir '%s' is not a directory", o->image_dir);
		if (resolve(c, &o->image_dir, "image_dir"))
			return -1;
		if (pfs_path_under(o->image_dir, o->mountpoint) || pfs_path_under(o->mountpoint, o->image_dir))
			return perr(c, "image_dir '%s' and the mount point %s contain one another",
				    o->image_dir, o->mountpoint);
		if (strlen(o->image_dir) + 2 > PCACHE_PATH_MAX)
			return perr(c, "image_dir '%s' is too long (its files' paths must fit %u bytes)",
				    o->image_dir, PCACHE_PATH_MAX);
	}
	for (int i = 0; i < o->n_images; i++) {
		struct pfs_image_opt *io = &o->images[i];
		char *abs;

		/* stored as given (made absolute, symlinks kept: a by-id name stays that name) */
		abs = pfs_path_absolute(io->path);
		if (!abs)
			return -1;
		free(io->path);
		io->path = abs;
		if (pfs_path_under(io->path, o->mountpoint))
			return perr(c, "image path '%s' is inside the mount point %s", io->path, o->mountpoint);
		if (stat(io->path, &st) != 0) {
			fprintf(stderr, "pcachefs: image path '%s': %s\n", io->path, strerror(errno));
			c->error = 1;
			return -1;
		}
		if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
			return perr(c, "image path '%s' is not a regular file or block device", io->path);
		if (strlen(io->path) > PCACHE_PATH_MAX)
			return perr(c, "image path '%s' is too long (max %u bytes)", io->path, PCACHE_PATH_MAX);
	}
	for (int r = 0; r < c->n_rekey; r++) {
		int i;

		for (i = 0; i < o->n_images && strcmp(o->images[i].name, c->rekey[r]); i++)
			;
		if (i == o->n_images)
			return perr(c, "-o rekey=%s names no -o image=%s:PATH", c->rekey[r], c->rekey[r]);
		o->images[i].rekey = true;
	}
	return 0;
}

char *pfs_path_absolute(const char *path)
{
	char cwd[PATH_MAX], *r;
	size_t n;

	if (path[0] == '/')
		return strdup(path);
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	n = strlen(cwd) + strlen(path) + 2;
	r = malloc(n);
	if (r)
		snprintf(r, n, "%s/%s", strcmp(cwd, "/") ? cwd : "", path);
	return r;
}

bool pfs_path_under(const char *path, const char *dir)
{
	const char *p = path, *d = dir;

	/* component by component, ignoring repeated slashes and "." (".." is not undone) */
	for (;;) {
		size_t lp, ld;

		while (*p == '/' || (p[0] == '.' && (p[1] == '/' || !p[1])))
			p++;
		while (*d == '/' || (d[0] == '.' && (d[1] == '/' || !d[1])))
			d++;
		if (!*d)
			return true;
		lp = strcspn(p, "/");
		ld = strcspn(d, "/");
		if (lp != ld || strncmp(p, d, lp))
			return false;
		p += lp;
		d += ld;
	}
}

int pfs_opts_parse(int argc, char **argv, struct pfs_opts *o, struct fuse_args *fargs)
{
	struct parse_ctx c = { .o = o };
	int ret = PFS_PARSE_ERROR;

	memset(o, 0, sizeof(*o));
	o->gc_percent = -1;
	o->keep_timeout = PFS_KEEP_TIMEOUT_DEFAULT;
	o->space_timeout = -1;
	o->cache_mode = -1;
	o->seq_cutoff = -1;
	o->max_share = -1;
	fargs->argc = 0;
	fargs->argv = NULL;
	fargs->allocated = 0;
	if (fuse_opt_add_arg(fargs, argv[0]) != 0)
		return PFS_PARSE_ERROR;
	{
		struct fuse_args in = FUSE_ARGS_INIT(argc, argv);

		/* fuse_opt_parse writes the kept arguments into 'in'; copy them to fargs after */
		if (fuse_opt_parse(&in, &c, pfs_opt_spec, pfs_opt_proc) != 0) {
			if (!c.error)
				fprintf(stderr, "pcachefs: bad command line (see pcachefs --help)\n");
			fuse_opt_free_args(&in);
			goto out;
		}
		for (int i = 1; i < in.argc; i++)
			if (fuse_opt_add_arg(fargs, in.argv[i]) != 0) {
				fuse_opt_free_args(&in);
				goto out;
			}
		fuse_opt_free_args(&in);
	}
	if (c.exit_ok) {
		ret = PFS_PARSE_EXIT_OK;
		goto out;
	}
	if (validate(&c) != 0)
		goto out;
	ret = PFS_PARSE_OK;
out:
	for (int i = 0; i < 2; i++)
		free(c.nonopt[i]);
	for (int i = 0; i < c.n_rekey; i++)
		free(c.rekey[i]);
	return ret;
}

void pfs_opts_free(struct pfs_opts *o)
{
	free(o->cache_path);
	free(o->image_dir);
	free(o->mountpoint);
	for (int i = 0; i < o->n_images; i++) {
		free(o->images[i].name);
		free(o->images[i].path);
	}
	memset(o, 0, sizeof(*o));
}
