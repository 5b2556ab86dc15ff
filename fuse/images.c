/*
 * images.c -- the image slot table of the mount (attach, detach, give up, the known images at
 * start) and the I/O buffers of the image read and write paths.
 *
 * Invariants:
 *  1. A slot's state, gen, img, name and open_count change under pfs.lock only; a reused slot
 *     gets gen + 1, so inode numbers of the image it held no longer match it.
 *  2. Every use of an image's engine handle by a request sits between pfs_io_enter() and
 *     pfs_io_exit(); detach sets DETACHING and then waits for those to drain.
 */
#include "daemon_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/*
 * ---- I/O buffers ----------------------------------------------------------------------------
 * One cached per thread, then a small shared pool. A read that goes pending hands its buffer to
 * the completion thread, which returns it with pfs_buf_put(); without the pool every miss would
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

/* A PFS_IO_BUF_SIZE, 4 KiB-aligned buffer owned by the caller until pfs_buf_put(). */
char *pfs_buf_get(void)
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

void pfs_buf_put(char *p)
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

/* The slot of an image inode if it is still that image (pfs.lock held). */
struct pfs_slot *pfs_slot_of(fuse_ino_t ino, const struct pfs_node *n)
{
	struct pfs_slot *s = &pfs.slots[n->slot];

	if (s->state != PFS_SLOT_ATTACHED || pfs_img_ino(n->slot, s->gen, n->kind) != ino)
		return NULL;
	return s;
}

struct pfs_slot *pfs_slot_by_name(const char *name)
{
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state == PFS_SLOT_ATTACHED && !strcmp(s->name, name))
			return s;
	}
	return NULL;
}

/* Pin the slot of node ino for one request: 0, or -ESTALE if it is not that image any more. */
int pfs_io_enter(struct pfs_slot *s, fuse_ino_t ino, enum pfs_img_kind k)
{
	atomic_fetch_add(&s->inflight, 1);
	if (atomic_load(&s->state) != PFS_SLOT_ATTACHED ||
	    pfs_img_ino((uint32_t)(s - pfs.slots), atomic_load(&s->gen), k) != ino) {
		atomic_fetch_sub(&s->inflight, 1);
		return -ESTALE;
	}
	return 0;
}

void pfs_io_exit(struct pfs_slot *s)
{
	atomic_fetch_sub(&s->inflight, 1);
}

/* ---- image slots ---------------------------------------------------------------------------- */

/*
 * A free slot for image name (pfs.lock held): the one reserved for it by a take-over, else one
 * reserved for nobody, else any (a reservation whose image never came back).
 */
static struct pfs_slot *slot_pick(const char *name)
{
	struct pfs_slot *any = NULL, *unreserved = NULL;

	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state != PFS_SLOT_FREE)
			continue;
		if (s->reserved[0] && !strcmp(s->reserved, name))
			return s;
		if (!s->reserved[0] && !unreserved)
			unreserved = s;
		if (!any)
			any = s;
	}
	return unreserved ? unreserved : any;
}

int64_t pfs_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A slot's times start as its backing's (now if it cannot be asked). */
static void slot_times(struct pfs_slot *s, const struct pcache_image *img)
{
	struct stat st;

	if (pcache_image_backing_stat(img, &st) != 0) {
		clock_gettime(CLOCK_REALTIME, &st.st_mtim);
		st.st_atim = st.st_ctim = st.st_mtim;
	}
	atomic_store(&s->atime_ns, pfs_ts_ns(&st.st_atim));
	atomic_store(&s->mtime_ns, pfs_ts_ns(&st.st_mtim));
	atomic_store(&s->ctime_ns, pfs_ts_ns(&st.st_ctim));
}

/* Fill a free slot with a referenced image (pfs.lock held). */
static int slot_fill(struct pcache_image *img)
{
	struct pfs_slot *s = slot_pick(pcache_image_name(img));
	bool back;

	if (!s)
		return -ENOSPC;
	back = s->reserved[0] && !strcmp(s->reserved, pcache_image_name(img));
	s->open_count = back ? s->restore_open : 0;
	s->reserved[0] = '\0';
	s->restore_open = 0;
	s->img = img;
	snprintf(s->name, sizeof(s->name), "%s", pcache_image_name(img));
	s->size = pcache_image_size(img);
	slot_times(s, img);
	s->lbs = pcache_image_lbs(img);
	if (s->lbs == 0)
		s->lbs = 512;
	s->gen++;
	/* publish last: pfs_io_enter() trusts the fields above once it sees ATTACHED */
	s->state = PFS_SLOT_ATTACHED;
	return 0;
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

	if (!pcache_name_valid(name)) {
		snprintf(err, errlen, "invalid image name '%s'", name);
		return -EINVAL;
	}
	if (pfs_dir_hidden(name)) {
		snprintf(err, errlen, "image names starting with '.pcache-deleted-' are the mount's own");
		return -EINVAL;
	}
	pthread_mutex_lock(&pfs.lock);
	taken = pfs_slot_by_name(name) != NULL;
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
		return ret;
	}
	pfs_handover_changed();
	return 0;
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
		if (pfs_slot_by_name(pcache_image_name(v[i])) || slot_fill(v[i]) != 0)
			pcache_image_put(v[i]);
	}
	pthread_mutex_unlock(&pfs.lock);
	pfs_handover_changed();
	return 0;
}

int pfs_image_detach(const char *name, char *err, size_t errlen)
{
	struct pfs_slot *s;
	struct pcache_image *img;
	int ret;

	pthread_mutex_lock(&pfs.lock);
	s = pfs_slot_by_name(name);
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
	/* requests already past pfs_io_enter() finish first (a killed client's request can outlive its file) */
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
			pfs_handover_changed();
			return ret;
		}
		goto restore;
	}
	pthread_mutex_lock(&pfs.lock);
	s->state = PFS_SLOT_FREE;
	s->img = NULL;
	pthread_mutex_unlock(&pfs.lock);
	pfs_handover_changed();
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
	s = pfs_slot_by_name(name);
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
	pthread_mutex_lock(&pfs.lock);
	if (s) {
		s->state = PFS_SLOT_FREE;
		s->img = NULL;
	}
	/* a take-over's claim for an image that never came back ends with it */
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		if (!strcmp(pfs.slots[i].reserved, name))
			pfs.slots[i].reserved[0] = '\0';
	}
	pthread_mutex_unlock(&pfs.lock);
	pfs_handover_changed();
	return 0;
}

void pfs_images_renamed(const char *from, const char *to)
{
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		struct pfs_slot *s = &pfs.slots[i];

		if (s->state != PFS_SLOT_FREE && !strcmp(s->name, from))
			snprintf(s->name, sizeof(s->name), "%s", to);
	}
	pthread_mutex_unlock(&pfs.lock);
	pfs_handover_changed();
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
