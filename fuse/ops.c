/*
 * ops.c -- the FUSE low-level operations of pcachefs: the mount root with one regular file per
 * attached image, the .pcache/ control tree (content in ctl.c), and the image I/O path onto the
 * engine (include/pcache/cache.h).
 *
 * Node map (inode numbers, see daemon_i.h):
 *   /                 root (1)           /<image>                    image file
 *   /.pcache/         fixed 2..12        /.pcache/images/<image>/    per-image dir, stats,
 *                                                                    cache_mode, flush
 *
 * Invariants:
 *  1. Exactly one fuse_reply_* per request; no lock is held across a reply.
 *  2. The engine only sees requests aligned to pcache_image_lbs() and inside the image; reads
 *     are widened to the aligned envelope and the reply points into it; unaligned writes are a
 *     read-modify-write of the envelope while holding it exclusively in the image's range lock.
 *     Aligned writes hold their range shared (no serialisation among themselves).
 *  3. Reads end at EOF (short read, 0 at or past EOF). Writes never grow an image: a write that
 *     starts at or past EOF fails with ENOSPC (as a block device does), one that crosses EOF is
 *     shortened. Truncate to another size is EPERM; to the same size succeeds.
 *  4. Writes on a file opened O_SYNC/O_DSYNC carry PCACHE_IO_FUA (durable on reply); fsync and
 *     fdatasync call pcache_image_flush() (every acknowledged write durable on reply). FUSE flush
 *     (close) promises nothing more and is a no-op (image files are opened with noflush).
 *  5. Every use of an image's engine handle by a request sits between io_enter() and io_exit();
 *     detach waits for those to drain (daemon_i.h, struct pfs_slot), and refuses while files are
 *     open. A request for a detached (or detached and reused) slot fails with ESTALE.
 *  6. A read miss (PCACHE_IO_PENDING) replies from the engine's completion callback; the buffer
 *     belongs to the request until then.
 *  7. A read that is all hits replies from the cache memory itself (pcache_image_read_pin,
 *     fuse_reply_iov) and unpins right after the reply; only other reads copy into a buffer.
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

_Static_assert(sizeof(fuse_ino_t) >= sizeof(uint64_t), "inode numbers need 64 bits");
_Static_assert(sizeof(uint64_t) >= sizeof(void *), "file handles hold pointers");

#define PFS_ENTRY_TIMEOUT 60.0
#define PFS_CTL_ATTR_TIMEOUT 1.0
#define PFS_IO_BUF_SIZE (PCACHE_FUSE_MAX_IO + 2 * 65536)

struct pfs pfs;

/* A decoded inode number. */
struct pfs_node {
	uint64_t fixed;            /* fixed inode, or 0 for an image node */
	uint32_t slot;
	enum pfs_img_kind kind;
};

/*
 * fi->fh of an open file is a value, not a pointer: its inode number plus PFS_FH_SYNC. Nothing
 * is allocated per open file, so a release that overtakes a request of the same file (its caller
 * was killed while the request was in the daemon) frees nothing that request still uses.
 * Directories keep no state either (each readdir lists afresh; offsets are entry indexes).
 */
#define PFS_FH_SYNC (1ull << 62)   /* opened O_SYNC / O_DSYNC: every write is FUA */

/* An open file, decoded from (ino, fi->fh). */
struct pfs_file {
	fuse_ino_t ino;
	struct pfs_node node;
	struct pfs_slot *s;        /* image nodes: the slot (its open_count counts this file) */
	bool sync;
};

/* One directory entry of a listing. */
struct pfs_dent {
	char name[PCACHE_NAME_MAX + 1];
	fuse_ino_t ino;
	mode_t type;
};
#define PFS_MAX_DENTS (PFS_MAX_SLOTS + 16)

/* A pending read. */
struct pfs_read {
	fuse_req_t req;
	struct pfs_slot *s;
	char *buf;
	size_t skip, len;
};

/*
 * ---- I/O buffers ----------------------------------------------------------------------------
 * One cached per thread, then a small shared pool. A read that goes pending hands its buffer to
 * the completion thread, which returns it with buf_put(); without the pool every miss would
 * allocate (and, at this size, mmap and munmap) a fresh buffer: the bench profile showed that
 * costing half the miss throughput. pool_lock is a leaf lock.
 */
#define PFS_BUF_POOL_MAX 32

static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static char *pool[PFS_BUF_POOL_MAX];   /* protected by pool_lock */
static int pool_n;                     /* protected by pool_lock */

static void buf_free(void *p)
{
	free(p);
}

static void buf_key_init(void)
{
	pthread_key_create(&buf_key, buf_free);
}

/* A PFS_IO_BUF_SIZE, 4 KiB-aligned buffer owned by the caller until buf_put(). */
static char *buf_get(void)
{
	void *p;

	pthread_once(&buf_once, buf_key_init);
	p = pthread_getspecific(buf_key);
	if (p) {
		pthread_setspecific(buf_key, NULL);
		return p;
	}
	pthread_mutex_lock(&pool_lock);
	p = pool_n ? pool[--pool_n] : NULL;
	pthread_mutex_unlock(&pool_lock);
	if (p)
		return p;
	if (posix_memalign(&p, 4096, PFS_IO_BUF_SIZE) != 0)
		return NULL;
	return p;
}

static void buf_put(char *p)
{
	pthread_once(&buf_once, buf_key_init);
	if (!pthread_getspecific(buf_key)) {
		pthread_setspecific(buf_key, p);
		return;
	}
	pthread_mutex_lock(&pool_lock);
	if (pool_n < PFS_BUF_POOL_MAX) {
		pool[pool_n++] = p;
		p = NULL;
	}
	pthread_mutex_unlock(&pool_lock);
	free(p);
}

/* ---- nodes --------------------------------------------------------------------------------- */

static int node_decode(fuse_ino_t ino, struct pfs_node *n)
{
	memset(n, 0, sizeof(*n));
	if (ino & PFS_INO_IMG_FLAG) {
		n->slot = (uint32_t)((ino >> 3) & 0x1ff);
		n->kind = (enum pfs_img_kind)(ino & 7);
		if (n->slot >= PFS_MAX_SLOTS || n->kind >= PFS_IK_COUNT)
			return -ENOENT;
		return 0;
	}
	if (ino < PFS_INO_ROOT || ino >= PFS_INO_FIXED_END)
		return -ENOENT;
	n->fixed = ino;
	return 0;
}

/* The slot of an image inode if it is still that image (pfs.lock held). */
static struct pfs_slot *slot_of(fuse_ino_t ino, const struct pfs_node *n)
{
	struct pfs_slot *s = &pfs.slots[n->slot];

	if (s->state != PFS_SLOT_ATTACHED || pfs_img_ino(n->slot, s->gen, n->kind) != ino)
		return NULL;
	return s;
}

static struct pfs_slot *slot_by_name(const char *name)
{
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state == PFS_SLOT_ATTACHED && !strcmp(s->name, name))
			return s;
	}
	return NULL;
}

/* Pin the slot of node ino for one request: 0, or -ESTALE if it is not that image any more. */
static int io_enter(struct pfs_slot *s, fuse_ino_t ino, enum pfs_img_kind k)
{
	atomic_fetch_add(&s->inflight, 1);
	if (atomic_load(&s->state) != PFS_SLOT_ATTACHED ||
	    pfs_img_ino((uint32_t)(s - pfs.slots), atomic_load(&s->gen), k) != ino) {
		atomic_fetch_sub(&s->inflight, 1);
		return -ESTALE;
	}
	return 0;
}

static void io_exit(struct pfs_slot *s)
{
	atomic_fetch_sub(&s->inflight, 1);
}

static void stat_common(struct stat *st, fuse_ino_t ino)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = pfs.uid;
	st->st_gid = pfs.gid;
	st->st_atime = st->st_mtime = st->st_ctime = pfs.start_time;
	st->st_blksize = 4096;
}

static void stat_dir(struct stat *st, fuse_ino_t ino)
{
	stat_common(st, ino);
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
}

static void stat_ctl(struct stat *st, fuse_ino_t ino, bool writable, bool readable)
{
	stat_common(st, ino);
	st->st_mode = S_IFREG | (readable ? 0444 : 0) | (writable ? 0200 : 0);
	st->st_nlink = 1;
}

/* Attributes of any node (pfs.lock held for image nodes). 0 or -ENOENT. */
static int node_stat(fuse_ino_t ino, struct stat *st, double *timeout)
{
	struct pfs_node n;
	struct pfs_slot *s;
	uint32_t mode, uid, gid;

	if (node_decode(ino, &n))
		return -ENOENT;
	*timeout = PFS_ENTRY_TIMEOUT;
	if (n.fixed) {
		switch (n.fixed) {
		case PFS_INO_ROOT:
		case PFS_INO_CTL_DIR:
		case PFS_INO_IMAGES_DIR:
			stat_dir(st, ino);
			return 0;
		default:
			*timeout = PFS_CTL_ATTR_TIMEOUT;
			stat_ctl(st, ino, pfs_ctl_writable(n.fixed, 0),
				 n.fixed != PFS_INO_FLUSH && n.fixed != PFS_INO_ATTACH && n.fixed != PFS_INO_DETACH &&
				 n.fixed != PFS_INO_REKEY && n.fixed != PFS_INO_GIVE_UP);
			return 0;
		}
	}
	s = slot_of(ino, &n);
	if (!s)
		return -ENOENT;
	switch (n.kind) {
	case PFS_IK_FILE:
		stat_common(st, ino);
		pcache_image_attr(s->img, &mode, &uid, &gid);
		st->st_mode = S_IFREG | ((mode & 07777) ? (mode & 07777) : 0644);
		st->st_uid = uid;
		st->st_gid = gid;
		st->st_nlink = 1;
		st->st_size = (off_t)s->size;
		st->st_blocks = (blkcnt_t)(s->size / 512);
		st->st_blksize = s->lbs > 4096 ? s->lbs : 4096;
		return 0;
	case PFS_IK_DIR:
		stat_dir(st, ino);
		return 0;
	default:
		*timeout = PFS_CTL_ATTR_TIMEOUT;
		stat_ctl(st, ino, pfs_ctl_writable(0, n.kind), n.kind != PFS_IK_FLUSH);
		return 0;
	}
}

static const struct {
	const char *name;
	enum pfs_fixed_ino ino;
} ctl_names[] = {
	{ "status", PFS_INO_STATUS },
	{ "status.json", PFS_INO_STATUS_JSON },
	{ "metrics", PFS_INO_METRICS },
	{ "gc_percent", PFS_INO_GC_PERCENT },
	{ "writeback_rate", PFS_INO_WB_RATE },
	{ "dirty_high", PFS_INO_DIRTY_HIGH },
	{ "dirty_low", PFS_INO_DIRTY_LOW },
	{ "flush", PFS_INO_FLUSH },
	{ "attach", PFS_INO_ATTACH },
	{ "detach", PFS_INO_DETACH },
	{ "images", PFS_INO_IMAGES_DIR },
	{ "rekey", PFS_INO_REKEY },
	{ "space_timeout", PFS_INO_SPACE_TIMEOUT },
	{ "give_up", PFS_INO_GIVE_UP },
};

static const char *const img_ctl_names[PFS_IK_COUNT] = {
	[PFS_IK_STATS] = "stats",
	[PFS_IK_MODE] = "cache_mode",
	[PFS_IK_FLUSH] = "flush",
};

/* Resolve name in parent: 0 and *ino, or -ENOENT (pfs.lock held). */
static int node_lookup(fuse_ino_t parent, const char *name, fuse_ino_t *ino)
{
	struct pfs_node n;
	struct pfs_slot *s;

	if (node_decode(parent, &n))
		return -ENOENT;
	if (n.fixed == PFS_INO_ROOT) {
		if (!strcmp(name, ".pcache")) {
			*ino = PFS_INO_CTL_DIR;
			return 0;
		}
		s = slot_by_name(name);
		if (!s)
			return -ENOENT;
		*ino = pfs_img_ino((uint32_t)(s - pfs.slots), s->gen, PFS_IK_FILE);
		return 0;
	}
	if (n.fixed == PFS_INO_CTL_DIR) {
		for (size_t i = 0; i < PCACHE_ARRAY_SIZE(ctl_names); i++) {
			if (!strcmp(name, ctl_names[i].name)) {
				*ino = ctl_names[i].ino;
				return 0;
			}
		}
		return -ENOENT;
	}
	if (n.fixed == PFS_INO_IMAGES_DIR) {
		s = slot_by_name(name);
		if (!s)
			return -ENOENT;
		*ino = pfs_img_ino((uint32_t)(s - pfs.slots), s->gen, PFS_IK_DIR);
		return 0;
	}
	if (!n.fixed && n.kind == PFS_IK_DIR) {
		s = slot_of(parent, &n);
		if (!s)
			return -ENOENT;
		for (int k = PFS_IK_STATS; k < PFS_IK_COUNT; k++) {
			if (!strcmp(name, img_ctl_names[k])) {
				*ino = pfs_img_ino(n.slot, s->gen, (enum pfs_img_kind)k);
				return 0;
			}
		}
		return -ENOENT;
	}
	return n.fixed || n.kind == PFS_IK_FILE ? -ENOTDIR : -ENOENT;
}

/* ---- image slots ---------------------------------------------------------------------------- */

/* Fill a free slot with a referenced image (pfs.lock held). */
static int slot_fill(struct pcache_image *img)
{
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state != PFS_SLOT_FREE)
			continue;
		s->open_count = 0;
		s->img = img;
		snprintf(s->name, sizeof(s->name), "%s", pcache_image_name(img));
		s->size = pcache_image_size(img);
		s->lbs = pcache_image_lbs(img);
		if (s->lbs == 0)
			s->lbs = 512;
		s->gen++;
		/* publish last: io_enter() trusts the fields above once it sees ATTACHED */
		s->state = PFS_SLOT_ATTACHED;
		return 0;
	}
	return -ENOSPC;
}

int pfs_image_attach(const char *name, const char *path, int cache_mode, bool rekey, char *err,
		     size_t errlen)
{
	struct pcache_attach_opts ao = {
		.name = name,
		.path = path,
		.allow_path_change = true,
		.rekey = rekey,
		.own_dev = atomic_load(&pfs.mnt_dev),
		.cache_mode = cache_mode,
	};
	struct pcache_image *img = NULL;
	bool taken;
	int ret;

	if (!pcache_image_name_valid(name)) {
		snprintf(err, errlen, "invalid image name '%s'", name);
		return -EINVAL;
	}
	pthread_mutex_lock(&pfs.lock);
	taken = slot_by_name(name) != NULL;
	pthread_mutex_unlock(&pfs.lock);
	if (taken) {
		snprintf(err, errlen, "image '%s' is already attached", name);
		return -EEXIST;
	}
	/* no lock here: the engine refuses a second attach of the name itself */
	ret = pcache_image_attach(pfs.cache, &ao, &img, err, errlen);
	if (ret)
		return ret;
	pthread_mutex_lock(&pfs.lock);
	ret = slot_fill(img);
	pthread_mutex_unlock(&pfs.lock);
	if (ret) {
		snprintf(err, errlen, "too many images");
		pcache_image_put(img);
		pcache_image_detach(pfs.cache, name, false);
	}
	return ret;
}

uint64_t pfs_mount_dev(const char *mountpoint)
{
	char line[4096], mnt[2048], fstype[64];
	unsigned int maj, min;
	uint64_t dev = 0;
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return 0;
	/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS" */
	while (fgets(line, sizeof(line), f)) {
		const char *sep = strstr(line, " - ");

		if (sscanf(line, "%*d %*d %u:%u %*s %2047s", &maj, &min, mnt) != 3 || !sep ||
		    sscanf(sep + 3, "%63s", fstype) != 1)
			continue;
		/* the last match wins: a later mount on the same point hides the earlier ones */
		if (!strcmp(mnt, mountpoint) && !strncmp(fstype, "fuse", 4))
			dev = makedev(maj, min);
	}
	fclose(f);
	return dev;
}

int pfs_images_attach_known(const char *const *skip, int n_skip, char *err, size_t errlen)
{
	struct pcache_image *v[PFS_MAX_SLOTS];
	int n, ret;

	ret = pcache_cache_attach_known_except(pfs.cache, skip, n_skip, err, errlen);
	if (ret)
		return ret;
	n = pcache_cache_images(pfs.cache, v, PFS_MAX_SLOTS);
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < n; i++) {
		if (slot_by_name(pcache_image_name(v[i])) || slot_fill(v[i]) != 0)
			pcache_image_put(v[i]);
	}
	pthread_mutex_unlock(&pfs.lock);
	return 0;
}

int pfs_image_detach(const char *name, char *err, size_t errlen)
{
	struct pfs_slot *s;
	struct pcache_image *img;
	int ret;

	pthread_mutex_lock(&pfs.lock);
	s = slot_by_name(name);
	if (!s) {
		pthread_mutex_unlock(&pfs.lock);
		snprintf(err, errlen, "no attached image '%s'", name);
		return -ENOENT;
	}
	if (s->open_count) {
		pthread_mutex_unlock(&pfs.lock);
		snprintf(err, errlen, "image '%s' is open (%u files)", name, s->open_count);
		return -EBUSY;
	}
	s->state = PFS_SLOT_DETACHING;
	img = s->img;
	pthread_mutex_unlock(&pfs.lock);
	/* requests already past io_enter() finish first (a killed client's request can outlive its file) */
	while (atomic_load(&s->inflight))
		usleep(1000);

	/* the backing image must be complete on its own once it leaves the cache */
	ret = pcache_image_writeback_all(img);
	if (ret) {
		snprintf(err, errlen, "image '%s': writeback failed: %s", name, strerror(-ret));
		goto restore;
	}
	pcache_image_put(img);
	ret = pcache_image_detach(pfs.cache, name, true);
	if (ret) {
		snprintf(err, errlen, "image '%s': detach failed: %s", name, strerror(-ret));
		img = pcache_image_get(pfs.cache, name);
		if (!img) {
			/* the engine let it go anyway: the slot is gone */
			pthread_mutex_lock(&pfs.lock);
			s->state = PFS_SLOT_FREE;
			s->img = NULL;
			pthread_mutex_unlock(&pfs.lock);
			return ret;
		}
		goto restore;
	}
	pthread_mutex_lock(&pfs.lock);
	s->state = PFS_SLOT_FREE;
	s->img = NULL;
	pthread_mutex_unlock(&pfs.lock);
	return 0;
restore:
	pthread_mutex_lock(&pfs.lock);
	s->img = img;
	s->state = PFS_SLOT_ATTACHED;
	pthread_mutex_unlock(&pfs.lock);
	return ret;
}

int pfs_image_give_up(const char *name, uint64_t *lost, char *err, size_t errlen)
{
	struct pfs_slot *s;
	struct pcache_image *img = NULL;
	int ret;

	pthread_mutex_lock(&pfs.lock);
	s = slot_by_name(name);
	if (s && s->open_count) {
		pthread_mutex_unlock(&pfs.lock);
		snprintf(err, errlen, "image '%s' is open (%u files)", name, s->open_count);
		return -EBUSY;
	}
	if (s) {
		s->state = PFS_SLOT_DETACHING;
		img = s->img;
	}
	pthread_mutex_unlock(&pfs.lock);
	if (s) {
		while (atomic_load(&s->inflight))
			usleep(1000);
		pcache_image_put(img);
	}
	/* no writeback first: the data is given up because it cannot be written */
	ret = pcache_image_give_up(pfs.cache, name, lost);
	if (ret) {
		snprintf(err, errlen, "image '%s': %s", name, ret == -ENOENT ? "not known to the cache" :
			 strerror(-ret));
		if (s) {
			pthread_mutex_lock(&pfs.lock);
			s->img = pcache_image_get(pfs.cache, name);
			s->state = s->img ? PFS_SLOT_ATTACHED : PFS_SLOT_FREE;
			pthread_mutex_unlock(&pfs.lock);
		}
		return ret;
	}
	if (s) {
		pthread_mutex_lock(&pfs.lock);
		s->state = PFS_SLOT_FREE;
		s->img = NULL;
		pthread_mutex_unlock(&pfs.lock);
	}
	return 0;
}

void pfs_images_release(void)
{
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state != PFS_SLOT_FREE && s->img)
			pcache_image_put(s->img);
		s->img = NULL;
		s->state = PFS_SLOT_FREE;
	}
	pthread_mutex_unlock(&pfs.lock);
}

/* ---- the engine I/O helpers ------------------------------------------------------------------ */

struct sync_wait {
	sem_t sem;
	int status;
};

static void sync_done(void *priv, int status)
{
	struct sync_wait *w = priv;

	w->status = status;
	sem_post(&w->sem);
}

/* Read [off, off+len) (aligned) into buf and wait for it, pending or not. */
static int read_sync(struct pcache_image *img, void *buf, uint64_t off, size_t len)
{
	struct sync_wait w;
	int ret;

	sem_init(&w.sem, 0, 0);
	w.status = 0;
	ret = pcache_image_read(img, buf, off, len, sync_done, &w);
	if (ret == PCACHE_IO_PENDING) {
		while (sem_wait(&w.sem) != 0 && errno == EINTR)
			;
		ret = w.status;
	}
	sem_destroy(&w.sem);
	return ret;
}

/*
 * Write len bytes from src (NULL: zeros) at the unaligned off through a read-modify-write of
 * the aligned envelope, holding it exclusively.
 */
static int write_rmw(struct pfs_slot *s, const char *src, uint64_t off, size_t len, unsigned int flags)
{
	uint64_t lbs = s->lbs;
	uint64_t a = PCACHE_ALIGN_DOWN(off, lbs);
	uint64_t e = PCACHE_ALIGN_UP(off + len, lbs);
	struct pfs_range r;
	char *tmp;
	int ret = 0;

	if (e > s->size)
		return -EINVAL;
	tmp = buf_get();
	if (!tmp)
		return -ENOMEM;
	pfs_rangelock_lock(&s->rl, &r, a, e, true);
	if (e - a <= 2 * lbs) {
		ret = read_sync(s->img, tmp, a, e - a);
	} else {
		if (off != a)
			ret = read_sync(s->img, tmp, a, lbs);
		if (!ret && off + len != e)
			ret = read_sync(s->img, tmp + (e - lbs - a), e - lbs, lbs);
	}
	if (!ret) {
		if (src)
			memcpy(tmp + (off - a), src, len);
		else
			memset(tmp + (off - a), 0, len);
		ret = pcache_image_write(s->img, tmp, a, e - a, flags);
	}
	pfs_rangelock_unlock(&s->rl, &r);
	buf_put(tmp);
	return ret;
}

/* Write (aligned or not). len > 0, [off, off+len) inside the image. */
static int image_write(struct pfs_slot *s, const char *src, uint64_t off, size_t len, unsigned int flags)
{
	struct pfs_range r;
	int ret;

	if ((off | len) & (s->lbs - 1)) {
		/* one RMW per at most 1 MiB (the buffer size) */
		while (len) {
			size_t n = len > PCACHE_FUSE_MAX_IO ? PCACHE_FUSE_MAX_IO : len;

			ret = write_rmw(s, src, off, n, flags);
			if (ret)
				return ret;
			off += n;
			len -= n;
			if (src)
				src += n;
		}
		return 0;
	}
	pfs_rangelock_lock(&s->rl, &r, off, off + len, false);
	ret = pcache_image_write(s->img, src, off, len, flags);
	pfs_rangelock_unlock(&s->rl, &r);
	return ret;
}

static void read_done(void *priv, int status)
{
	struct pfs_read *rr = priv;

	if (status < 0)
		fuse_reply_err(rr->req, -status);
	else
		fuse_reply_buf(rr->req, rr->buf + rr->skip, rr->len);
	io_exit(rr->s);
	buf_put(rr->buf);
	free(rr);
}

/*
 * A read that is all hits: reply straight from the cache memory the engine pinned (no copy, no
 * allocation here), trimmed from the aligned envelope [a, e) to skip bytes in front and len
 * bytes in total, then unpin. Returns PCACHE_PIN_FALLBACK (nothing replied) when the read must
 * take the copying path, else 0 (replied, with the data or the engine's error).
 */
static int read_pinned(fuse_req_t req, struct pfs_slot *s, uint64_t a, uint64_t e, size_t skip,
		       size_t len)
{
	struct pcache_read_pin pin;
	struct iovec *iov;
	uint32_t n, i;
	size_t total = 0;
	int ret;

	ret = pcache_image_read_pin(s->img, a, (size_t)(e - a), &pin);
	if (ret == PCACHE_PIN_FALLBACK)
		return ret;
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return 0;
	}
	iov = pin.iov;
	n = pin.niov;
	while (n && skip >= iov->iov_len) {
		skip -= iov->iov_len;
		iov++;
		n--;
	}
	if (n) {
		iov->iov_base = (char *)iov->iov_base + skip;
		iov->iov_len -= skip;
	}
	for (i = 0; i < n; i++) {
		if (total + iov[i].iov_len >= len) {
			iov[i].iov_len = len - total;
			n = i + 1;
			break;
		}
		total += iov[i].iov_len;
	}
	/* the pin (not a lock) is held across the reply: the kernel copies from pmem */
	fuse_reply_iov(req, iov, (int)n);
	pcache_read_unpin(&pin);
	return 0;
}

/* Read of an image file (the caller did io_enter; every path here ends in io_exit). */
static void image_read(fuse_req_t req, struct pfs_slot *s, size_t size, uint64_t off)
{
	uint64_t lbs = s->lbs, a, e;
	struct pfs_read *rr;
	char *buf;
	size_t len;
	int ret;

	if (off >= s->size || size == 0) {
		io_exit(s);
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	len = size;
	if (len > s->size - off)
		len = (size_t)(s->size - off);
	if (len > PCACHE_FUSE_MAX_IO)
		len = PCACHE_FUSE_MAX_IO;
	a = PCACHE_ALIGN_DOWN(off, lbs);
	e = PCACHE_ALIGN_UP(off + len, lbs);
	if (e > s->size)
		e = s->size;   /* a size that is not a sector multiple: the engine decides */
	if (read_pinned(req, s, a, e, (size_t)(off - a), len) != PCACHE_PIN_FALLBACK) {
		io_exit(s);
		return;
	}
	buf = buf_get();
	if (!buf) {
		io_exit(s);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rr = malloc(sizeof(*rr));
	if (!rr) {
		io_exit(s);
		buf_put(buf);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rr->req = req;
	rr->s = s;
	rr->buf = buf;
	rr->skip = (size_t)(off - a);
	rr->len = len;
	ret = pcache_image_read(s->img, buf, a, (size_t)(e - a), read_done, rr);
	if (ret == PCACHE_IO_PENDING)
		return;   /* read_done replies, leaves the slot and frees */
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_buf(req, buf + rr->skip, len);
	io_exit(s);
	free(rr);
	buf_put(buf);
}

/* ---- operations ------------------------------------------------------------------------------ */

static void pfs_init(void *userdata, struct fuse_conn_info *conn)
{
	pcache_fuse_session_init_conn(&pfs.scfg, conn);
	/* O_TRUNC reaches open() (refused for images) instead of a separate setattr */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
}

/* Valid replies: fuse_reply_entry, fuse_reply_err (ENOENT, ENOTDIR). */
static void pfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	fuse_ino_t ino;
	int ret;

	memset(&e, 0, sizeof(e));
	pthread_mutex_lock(&pfs.lock);
	ret = node_lookup(parent, name, &ino);
	if (!ret)
		ret = node_stat(ino, &e.attr, &e.attr_timeout);
	pthread_mutex_unlock(&pfs.lock);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	e.ino = ino;
	e.generation = 1;
	e.entry_timeout = PFS_ENTRY_TIMEOUT;
	fuse_reply_entry(req, &e);
}

/* Valid replies: fuse_reply_attr, fuse_reply_err (ENOENT). */
static void pfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	double tmo;
	int ret;

	pthread_mutex_lock(&pfs.lock);
	ret = node_stat(ino, &st, &tmo);
	pthread_mutex_unlock(&pfs.lock);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, tmo);
}

/*
 * Image files: mode, uid, gid persisted; size only to the current size (else EPERM); times
 * accepted and ignored. Control files: size changes (O_TRUNC of a shell redirection) ignored.
 * Valid replies: fuse_reply_attr, fuse_reply_err (ENOENT, EPERM, engine errors).
 */
static void pfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct pfs_node n;
	struct pfs_slot *s;
	struct stat st;
	double tmo;
	int ret = 0;

	if (node_decode(ino, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	pthread_mutex_lock(&pfs.lock);
	if (!n.fixed && n.kind == PFS_IK_FILE) {
		s = slot_of(ino, &n);
		if (!s) {
			ret = -ENOENT;
		} else if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != s->size) {
			ret = -EPERM;
		} else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
			uint32_t mode, uid, gid;

			pcache_image_attr(s->img, &mode, &uid, &gid);
			if (to_set & FUSE_SET_ATTR_MODE)
				mode = attr->st_mode & 07777;
			if (to_set & FUSE_SET_ATTR_UID)
				uid = attr->st_uid;
			if (to_set & FUSE_SET_ATTR_GID)
				gid = attr->st_gid;
			ret = pcache_image_set_attr(s->img, mode, uid, gid);
		}
	} else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		ret = -EPERM;
	}
	if (!ret)
		ret = node_stat(ino, &st, &tmo);
	pthread_mutex_unlock(&pfs.lock);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, tmo);
}

static bool req_is_root(fuse_req_t req)
{
	return fuse_req_ctx(req)->uid == 0;
}

/*
 * Image files: direct I/O (unless kernel_cache), parallel direct writes (common_session.c),
 * no flush on close. Control files: direct I/O; opening for writing needs root.
 * Valid replies: fuse_reply_open, fuse_reply_err (ENOENT, EISDIR, EACCES, EPERM, ENOMEM).
 */
static void pfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	bool wr = (fi->flags & O_ACCMODE) != O_RDONLY;
	struct pfs_node n;
	struct pfs_slot *s;
	int err = 0;

	if (node_decode(ino, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (n.fixed == PFS_INO_ROOT || n.fixed == PFS_INO_CTL_DIR || n.fixed == PFS_INO_IMAGES_DIR ||
	    (!n.fixed && n.kind == PFS_IK_DIR)) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (n.fixed || n.kind != PFS_IK_FILE) {
		if (wr && (!pfs_ctl_writable(n.fixed, n.kind) || !req_is_root(req))) {
			fuse_reply_err(req, EACCES);
			return;
		}
	} else if (fi->flags & O_TRUNC) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (!n.fixed) {
		pthread_mutex_lock(&pfs.lock);
		s = slot_of(ino, &n);
		if (s)
			s->open_count++;
		else
			err = ENOENT;
		pthread_mutex_unlock(&pfs.lock);
		if (err) {
			fuse_reply_err(req, err);
			return;
		}
	}
	if (!n.fixed && n.kind == PFS_IK_FILE && pfs.opts->kernel_cache)
		fi->keep_cache = 1;
	else
		fi->direct_io = 1;
	fi->noflush = 1;
	fi->fh = (uint64_t)ino | ((fi->flags & (O_SYNC | O_DSYNC)) ? PFS_FH_SYNC : 0);
	if (fuse_reply_open(req, fi) != 0 && !n.fixed) {
		/* the kernel will not send a release for it */
		pthread_mutex_lock(&pfs.lock);
		pfs.slots[n.slot].open_count--;
		pthread_mutex_unlock(&pfs.lock);
	}
}

/* Decode an open file. 0 or -ENOENT (never for a file the kernel opened through us). */
static int file_of(fuse_ino_t ino, const struct fuse_file_info *fi, struct pfs_file *f)
{
	if (node_decode(ino, &f->node))
		return -ENOENT;
	f->ino = ino;
	f->s = f->node.fixed ? NULL : &pfs.slots[f->node.slot];
	f->sync = (fi->fh & PFS_FH_SYNC) != 0;
	return 0;
}

static bool file_is_image(const struct pfs_file *f)
{
	return !f->node.fixed && f->node.kind == PFS_IK_FILE;
}

/* Valid replies: fuse_reply_err (always 0). */
static void pfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pfs_file f;

	if (file_of(ino, fi, &f) == 0 && f.s) {
		pthread_mutex_lock(&pfs.lock);
		if (f.s->open_count)
			f.s->open_count--;
		pthread_mutex_unlock(&pfs.lock);
	}
	fuse_reply_err(req, 0);
}

/* Control file read: generated afresh for every read (control files are direct-io). */
static void ctl_read(fuse_req_t req, const struct pfs_file *f, size_t size, off_t off)
{
	struct pfs_text t = { 0 };
	int ret;

	if (f->s && io_enter(f->s, f->ino, f->node.kind)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	ret = pfs_ctl_read(f->node.fixed, f->s, f->node.kind, &t);
	if (f->s)
		io_exit(f->s);
	if (ret)
		fuse_reply_err(req, -ret);
	else if ((size_t)off >= t.len)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, t.buf + off, PCACHE_MIN(size, t.len - (size_t)off));
	pfs_text_free(&t);
}

/* Valid replies: fuse_reply_buf, fuse_reply_err (EIO, EINVAL, engine errors). */
static void pfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct pfs_file f;

	if (off < 0 || file_of(ino, fi, &f)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!file_is_image(&f)) {
		ctl_read(req, &f, size, off);
		return;
	}
	if (io_enter(f.s, ino, PFS_IK_FILE)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	image_read(req, f.s, size, (uint64_t)off);
}

static void ctl_write(fuse_req_t req, const struct pfs_file *f, const char *buf, size_t size)
{
	bool is_detach = f->node.fixed == PFS_INO_DETACH;
	char *v;
	size_t n = size;
	int ret;

	if (!req_is_root(req)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	if (size > 4096) {
		pfs_log(LOG_WARNING, "control file write of %zu bytes refused (max 4096)", size);
		fuse_reply_err(req, EINVAL);
		return;
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\t' || buf[n - 1] == '\r'))
		n--;
	v = strndup(buf, n);
	if (!v) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (strlen(v) != n) {
		pfs_log(LOG_WARNING, "control file write with a NUL byte refused");
		ret = -EINVAL;
	} else if (f->s && io_enter(f->s, f->ino, f->node.kind)) {
		ret = -ESTALE;
	} else {
		ret = pfs_ctl_write(f->node.fixed, f->s, f->node.kind, v);
		if (f->s)
			io_exit(f->s);
	}
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, size);
	if (!ret && is_detach) {
		/* after the reply: drop the kernel's cached entries of the detached image */
		fuse_lowlevel_notify_inval_entry(pfs.se, PFS_INO_ROOT, v, strlen(v));
		fuse_lowlevel_notify_inval_entry(pfs.se, PFS_INO_IMAGES_DIR, v, strlen(v));
	}
	free(v);
}

/* Valid replies: fuse_reply_write, fuse_reply_err (ENOSPC, EACCES, EINVAL, engine errors). */
static void pfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct pfs_file f;
	struct pfs_slot *s;
	size_t len = size;
	int ret;

	if (file_of(ino, fi, &f)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!file_is_image(&f)) {
		ctl_write(req, &f, buf, size);
		return;
	}
	s = f.s;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (size == 0) {
		fuse_reply_write(req, 0);
		return;
	}
	if ((uint64_t)off >= s->size) {
		fuse_reply_err(req, ENOSPC);
		return;
	}
	if (len > s->size - (uint64_t)off)
		len = (size_t)(s->size - (uint64_t)off);
	if (io_enter(s, ino, PFS_IK_FILE)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	ret = image_write(s, buf, (uint64_t)off, len, f.sync ? PCACHE_IO_FUA : 0);
	io_exit(s);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, len);
}

/* FUSE flush (close): nothing to do, durability is fsync's job. Valid replies: fuse_reply_err. */
static void pfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

/* Valid replies: fuse_reply_err (0 or the engine's error). */
static void pfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct pfs_file f;
	int ret = 0;

	if (file_of(ino, fi, &f) == 0 && file_is_image(&f)) {
		ret = io_enter(f.s, ino, PFS_IK_FILE);
		if (!ret) {
			ret = pcache_image_flush(f.s->img);
			io_exit(f.s);
		}
	}
	fuse_reply_err(req, -ret);
}

/*
 * PUNCH_HOLE|KEEP_SIZE -> discard, ZERO_RANGE -> zero (both read back as zeros at once; the
 * unaligned edges are written as zeros). Mode 0 inside the image is a no-op (all of it is
 * allocated). Valid replies: fuse_reply_err (0, EOPNOTSUPP, EFBIG, engine errors).
 */
static void pfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			  struct fuse_file_info *fi)
{
	struct pfs_file f;
	struct pfs_slot *s;
	bool zero;
	uint64_t off, end, a, e, lbs;
	struct pfs_range r;
	int ret = 0;

	if (file_of(ino, fi, &f) || !file_is_image(&f)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	s = f.s;
	if (offset < 0 || length <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	off = (uint64_t)offset;
	end = off + (uint64_t)length;
	if (mode == 0) {
		fuse_reply_err(req, end <= s->size ? 0 : EFBIG);
		return;
	}
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		zero = false;
	else if (mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
		zero = true;
	else {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (end > s->size) {
		if (!(mode & FALLOC_FL_KEEP_SIZE)) {
			fuse_reply_err(req, EFBIG);
			return;
		}
		end = s->size;
	}
	if (off >= end) {
		fuse_reply_err(req, 0);
		return;
	}
	if (io_enter(s, ino, PFS_IK_FILE)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	lbs = s->lbs;
	a = PCACHE_ALIGN_UP(off, lbs);
	e = PCACHE_ALIGN_DOWN(end, lbs);
	if (a >= e) {
		ret = write_rmw(s, NULL, off, (size_t)(end - off), f.sync ? PCACHE_IO_FUA : 0);
	} else {
		if (off < a)
			ret = write_rmw(s, NULL, off, (size_t)(a - off), 0);
		if (!ret && e < end)
			ret = write_rmw(s, NULL, e, (size_t)(end - e), 0);
		if (!ret) {
			pfs_rangelock_lock(&s->rl, &r, a, e, true);
			ret = pcache_image_discard(s->img, a, e - a, zero);
			pfs_rangelock_unlock(&s->rl, &r);
		}
		if (!ret && f.sync)
			ret = pcache_image_flush(s->img);
	}
	io_exit(s);
	fuse_reply_err(req, -ret);
}

/* ---- directories ----------------------------------------------------------------------------- */

static void dir_add(struct pfs_dent *v, int *n, const char *name, fuse_ino_t ino, mode_t type)
{
	if (*n >= PFS_MAX_DENTS)
		return;
	snprintf(v[*n].name, sizeof(v[*n].name), "%s", name);
	v[*n].ino = ino;
	v[*n].type = type;
	(*n)++;
}

/* The listing of directory ino into v (pfs.lock held): the count, or -ENOENT / -ENOTDIR. */
static int dir_list(fuse_ino_t ino, struct pfs_dent *v)
{
	struct pfs_node n;
	struct pfs_slot *s;
	int cnt = 0;

	if (node_decode(ino, &n))
		return -ENOENT;
	if (n.fixed == PFS_INO_ROOT) {
		dir_add(v, &cnt, ".", ino, S_IFDIR);
		dir_add(v, &cnt, "..", ino, S_IFDIR);
		dir_add(v, &cnt, ".pcache", PFS_INO_CTL_DIR, S_IFDIR);
		for (int i = 0; i < PFS_MAX_SLOTS; i++) {
			s = &pfs.slots[i];
			if (s->state == PFS_SLOT_ATTACHED)
				dir_add(v, &cnt, s->name, pfs_img_ino((uint32_t)i, s->gen, PFS_IK_FILE), S_IFREG);
		}
		return cnt;
	}
	if (n.fixed == PFS_INO_CTL_DIR) {
		dir_add(v, &cnt, ".", ino, S_IFDIR);
		dir_add(v, &cnt, "..", PFS_INO_ROOT, S_IFDIR);
		for (size_t i = 0; i < PCACHE_ARRAY_SIZE(ctl_names); i++)
			dir_add(v, &cnt, ctl_names[i].name, ctl_names[i].ino,
				ctl_names[i].ino == PFS_INO_IMAGES_DIR ? S_IFDIR : S_IFREG);
		return cnt;
	}
	if (n.fixed == PFS_INO_IMAGES_DIR) {
		dir_add(v, &cnt, ".", ino, S_IFDIR);
		dir_add(v, &cnt, "..", PFS_INO_CTL_DIR, S_IFDIR);
		for (int i = 0; i < PFS_MAX_SLOTS; i++) {
			s = &pfs.slots[i];
			if (s->state == PFS_SLOT_ATTACHED)
				dir_add(v, &cnt, s->name, pfs_img_ino((uint32_t)i, s->gen, PFS_IK_DIR), S_IFDIR);
		}
		return cnt;
	}
	if (!n.fixed && n.kind == PFS_IK_DIR) {
		s = slot_of(ino, &n);
		if (!s)
			return -ENOENT;
		dir_add(v, &cnt, ".", ino, S_IFDIR);
		dir_add(v, &cnt, "..", PFS_INO_IMAGES_DIR, S_IFDIR);
		for (int k = PFS_IK_STATS; k < PFS_IK_COUNT; k++)
			dir_add(v, &cnt, img_ctl_names[k], pfs_img_ino(n.slot, s->gen, (enum pfs_img_kind)k), S_IFREG);
		return cnt;
	}
	return -ENOTDIR;
}

/* Valid replies: fuse_reply_open, fuse_reply_err (ENOENT, ENOTDIR). */
static void pfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pfs_node n;
	int ret = 0;

	if (node_decode(ino, &n))
		ret = -ENOENT;
	else if (!(n.fixed == PFS_INO_ROOT || n.fixed == PFS_INO_CTL_DIR || n.fixed == PFS_INO_IMAGES_DIR ||
		   (!n.fixed && n.kind == PFS_IK_DIR)))
		ret = -ENOTDIR;
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = 0;
	fuse_reply_open(req, fi);
}

/*
 * Lists afresh on every call; off is the index of the next entry (an image attached or
 * detached between two calls may shift the rest by one, as in any live directory).
 * Valid replies: fuse_reply_buf, fuse_reply_err (ENOENT, ENOTDIR, ENOMEM).
 */
static void pfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct pfs_dent *v = malloc(sizeof(*v) * PFS_MAX_DENTS);
	char *buf = NULL;
	size_t used = 0;
	int cnt;

	if (!v) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&pfs.lock);
	cnt = dir_list(ino, v);
	pthread_mutex_unlock(&pfs.lock);
	if (cnt < 0) {
		free(v);
		fuse_reply_err(req, -cnt);
		return;
	}
	buf = malloc(size ? size : 1);
	if (!buf) {
		free(v);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (off_t i = off < 0 ? 0 : off; i < cnt; i++) {
		struct stat st;
		size_t need;

		memset(&st, 0, sizeof(st));
		st.st_ino = v[i].ino;
		st.st_mode = v[i].type;
		need = fuse_add_direntry(req, buf + used, size - used, v[i].name, &st, i + 1);
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
	free(v);
}

/* Cache usage: blocks = cache size, free = free segments. Valid replies: fuse_reply_statfs. */
static void pfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct pcache_cache_status cs;
	struct statvfs sv;
	uint64_t bs = 4096;

	memset(&cs, 0, sizeof(cs));
	pcache_cache_get_status(pfs.cache, &cs);
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = bs;
	sv.f_frsize = bs;
	sv.f_blocks = (fsblkcnt_t)((uint64_t)cs.seg_count * cs.seg_size / bs);
	sv.f_bfree = (fsblkcnt_t)((uint64_t)(cs.seg_count > cs.segs_used ? cs.seg_count - cs.segs_used : 0) *
				  cs.seg_size / bs);
	sv.f_bavail = sv.f_bfree;
	sv.f_files = PFS_MAX_SLOTS;
	sv.f_ffree = PFS_MAX_SLOTS > cs.images ? PFS_MAX_SLOTS - cs.images : 0;
	sv.f_namemax = PCACHE_NAME_MAX;
	fuse_reply_statfs(req, &sv);
}

/* Valid replies: none (no lookup counts are kept: every node is static or a slot). */
static void pfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fuse_reply_none(req);
}

static void pfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	fuse_reply_none(req);
}

const struct fuse_lowlevel_ops pfs_ops = {
	.init = pfs_init,
	.lookup = pfs_lookup,
	.forget = pfs_forget,
	.forget_multi = pfs_forget_multi,
	.getattr = pfs_getattr,
	.setattr = pfs_setattr,
	.open = pfs_open,
	.read = pfs_read,
	.write = pfs_write,
	.flush = pfs_flush,
	.release = pfs_release,
	.fsync = pfs_fsync,
	.opendir = pfs_opendir,
	.readdir = pfs_readdir,
	.statfs = pfs_statfs,
	.fallocate = pfs_fallocate,
};
