/*
 * imagedir.c -- -o image_dir=DIR: the mount as a cached view of one directory of image files.
 *
 * Every regular file of DIR (a valid image name, not ".pcache") is an image named like the
 * file, with the backing path DIR/NAME: attached at start, at a lookup of its name and at a
 * listing of the root (so files made in DIR behind the daemon's back appear). Through the
 * mount, create makes the file in DIR and attaches it; unlink removes the file and drops the
 * image's cached data (the file is gone: nothing could read it, writing it back is wasted);
 * rename renames both, the cached data stays with the image. Only images of DIR take part: an
 * image attached with -o image or .pcache/attach is never unlinked or renamed through the
 * mount (EPERM). Directories are refused: image names are flat file names.
 *
 * A file renamed in DIR while its image was not attached (behind the daemon's back, or a crash
 * between the file's rename and the table's) keeps its cached data: a file with no image of
 * its name is matched by identity (docs/identity.md) against the images of DIR whose file is
 * missing, and that image is renamed to it before the attach.
 *
 * Files change behind the daemon's back while it runs too: a listing of the root (and a lookup
 * of a name whose file is no longer the image's) compares every attached image of DIR with the
 * file DIR/NAME (device and inode of the open backing). An image whose file has another name in
 * DIR follows it (renamed, cached data kept); one whose file has no name left is dropped as by
 * an unlink; one whose file was moved out of DIR is detached (written back first).
 *
 * Unlinking an open image (through the mount, or its file gone behind the daemon's back) works
 * as on a plain directory: the name goes at once, the open files keep the image until the last
 * close, then its cached data is dropped. Meanwhile the image is renamed in the table to a name
 * of the mount's own (DIR_GONE_PREFIX, never served, refused for new images); a start drops
 * such records (the file they stood for died with the daemon that held it open).
 *
 * Locks: dir_lock orders every change of DIR's images (create, unlink, rename, attach of a
 * file, the comparison above): taken before pfs.lock, never while holding it; held across
 * engine calls (attach opens backings, detach writes back). A leaf lock for the log throttle.
 */
#include "daemon_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "pcache/backing.h"

#define DIR_GONE_PREFIX ".pcache-deleted-"

static int dir_fd = -1;
static pthread_mutex_t dir_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Root names the kernel must forget (pfs_dir_send_inval); past DIR_INVAL_MAX a name waits for
 * its entry timeout (PFS_DIR_ENTRY_TIMEOUT). inval_lock is a leaf lock.
 */
#define DIR_INVAL_MAX 64
static pthread_mutex_t inval_lock = PTHREAD_MUTEX_INITIALIZER;
static char inval_names[DIR_INVAL_MAX][PCACHE_NAME_MAX + 1];   /* inval_lock */
static int inval_n;                                           /* inval_lock */

static void inval_add(const char *name)
{
	pthread_mutex_lock(&inval_lock);
	if (inval_n < DIR_INVAL_MAX)
		snprintf(inval_names[inval_n++], sizeof(inval_names[0]), "%s", name);
	pthread_mutex_unlock(&inval_lock);
}

void pfs_dir_send_inval(void)
{
	char name[PCACHE_NAME_MAX + 1];

	for (;;) {
		pthread_mutex_lock(&inval_lock);
		if (inval_n)
			snprintf(name, sizeof(name), "%s", inval_names[--inval_n]);
		else
			name[0] = '\0';
		pthread_mutex_unlock(&inval_lock);
		if (!name[0])
			return;
		/* an error only says the kernel had no entry of it */
		(void)fuse_lowlevel_notify_inval_entry(pfs.se, PFS_INO_ROOT, name, strlen(name));
		(void)fuse_lowlevel_notify_inval_entry(pfs.se, PFS_INO_IMAGES_DIR, name, strlen(name));
	}
}

bool pfs_dir_hidden(const char *name)
{
	return !strncmp(name, DIR_GONE_PREFIX, sizeof(DIR_GONE_PREFIX) - 1);
}

/* A name a file of DIR can be served under. */
static bool dir_name_ok(const char *name)
{
	return pcache_name_valid(name) && !pfs_dir_hidden(name);
}

bool pfs_dir_active(void)
{
	return dir_fd >= 0;
}

int pfs_dir_open(char *err, size_t errlen)
{
	if (!pfs.opts->image_dir)
		return 0;
	dir_fd = open(pfs.opts->image_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd < 0) {
		snprintf(err, errlen, "image_dir %s: %s", pfs.opts->image_dir, strerror(errno));
		return -errno;
	}
	return 0;
}

void pfs_dir_close(void)
{
	if (dir_fd >= 0)
		close(dir_fd);
	dir_fd = -1;
}

/* DIR/name into buf: 0, or -ENAMETOOLONG past what an image record holds. */
static int dir_path(const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", pfs.opts->image_dir, name);

	return n < 0 || (size_t)n >= len || (size_t)n > PCACHE_PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Is the known image name one of DIR's (its backing path is DIR/name)? */
static bool known_in_dir(const char *name, const char *path)
{
	char want[PCACHE_PATH_MAX + 2];

	return dir_path(name, want, sizeof(want)) == 0 && !strcmp(path, want);
}

bool pfs_dir_owns(const char *name)
{
	struct pcache_image_ent *e;
	bool own;

	if (dir_fd < 0)
		return false;
	e = malloc(sizeof(*e));
	if (!e)
		return false;
	own = pcache_cache_known_image(pfs.cache, name, e) == 0 && known_in_dir(name, e->path);
	free(e);
	return own;
}

/*
 * An image of DIR, not attached, whose file is missing and whose recorded identity is that of
 * the file DIR/name: it was renamed to name. Rename the image to it (0), or -ENOENT.
 */
static int adopt_renamed(const char *name, const char *path)
{
	struct pcache_unattached *v = calloc(PFS_MAX_SLOTS, sizeof(*v));
	struct pcache_image_ent *e = malloc(sizeof(*e));
	struct pcache_ident id;
	int n, fd, ret = -ENOENT;

	fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (!v || !e || fd < 0 || pcache_ident_fd(fd, &id) != 0)
		goto out;
	n = pcache_cache_unattached(pfs.cache, v, PFS_MAX_SLOTS);
	for (int i = 0; i < n; i++) {
		struct stat st;

		if (!known_in_dir(v[i].name, v[i].path) || fstatat(dir_fd, v[i].name, &st, 0) == 0 ||
		    pcache_cache_known_image(pfs.cache, v[i].name, e) != 0 || strcmp(e->ident, id.text))
			continue;
		ret = pcache_image_rename(pfs.cache, v[i].name, name, path);
		if (!ret)
			pfs_log(LOG_NOTICE, "image_dir: %s was renamed to %s: its cached data goes with it",
				v[i].name, name);
		break;
	}
out:
	if (fd >= 0)
		close(fd);
	free(v);
	free(e);
	return ret;
}

/*
 * Is this the first refusal of name lately (dir_lock held)? Listings retry a refused file each
 * time: its log line is written once (the last DIR_REFUSED_MAX names are remembered).
 */
#define DIR_REFUSED_MAX 32
static bool first_refusal(const char *name)
{
	static char refused[DIR_REFUSED_MAX][PCACHE_NAME_MAX + 1];   /* dir_lock */
	static int next;                                            /* dir_lock */

	for (int i = 0; i < DIR_REFUSED_MAX; i++) {
		if (!strncmp(refused[i], name, PCACHE_NAME_MAX))
			return false;
	}
	snprintf(refused[next], sizeof(refused[0]), "%.*s", (int)PCACHE_NAME_MAX, name);
	next = (next + 1) % DIR_REFUSED_MAX;
	return true;
}

/*
 * Attach DIR/name if it is a regular file with a valid image name and not attached (dir_lock
 * held): 0 (now attached), -ENOENT (no such file, or not one that can be an image), or the
 * attach's error (logged once per name).
 */
static int dir_attach(const char *name)
{
	char path[PCACHE_PATH_MAX + 2], err[1024];
	struct stat st;
	bool taken;
	int ret;

	if (!dir_name_ok(name) || fstatat(dir_fd, name, &st, 0) != 0 || !S_ISREG(st.st_mode) ||
	    dir_path(name, path, sizeof(path)) != 0)
		return -ENOENT;
	pthread_mutex_lock(&pfs.lock);
	taken = pfs_slot_by_name(name) != NULL;
	pthread_mutex_unlock(&pfs.lock);
	if (taken)
		return 0;
	if (pcache_cache_known_image(pfs.cache, name, &(struct pcache_image_ent){ 0 }) != 0)
		(void)adopt_renamed(name, path);
	err[0] = '\0';
	ret = pfs_image_attach(name, path, pfs.opts->cache_mode, false, err, sizeof(err));
	if (ret == -EEXIST || ret == -EBUSY) {
		pthread_mutex_lock(&pfs.lock);
		taken = pfs_slot_by_name(name) != NULL;
		pthread_mutex_unlock(&pfs.lock);
		if (taken)
			return 0;   /* attached meanwhile by another request */
	}
	if (ret && first_refusal(name))
		pfs_log(LOG_WARNING, "image_dir: %s not served: %s", path, err[0] ? err : strerror(-ret));
	return ret;
}

int pfs_dir_adopt(const char *name)
{
	int ret;

	if (dir_fd < 0)
		return -ENOENT;
	pthread_mutex_lock(&dir_lock);
	ret = dir_attach(name);
	pthread_mutex_unlock(&dir_lock);
	return ret == 0 ? 0 : -ENOENT;
}

/*
 * The file of an open image of DIR is gone: rename the image to a name of the mount's own, so
 * its name is free and unseen while the open files keep using it (dir_lock held). 0 or -errno.
 */
static int hide_image(const char *name)
{
	char hidden[PCACHE_NAME_MAX + 1], path[PCACHE_PATH_MAX + 2], err[256];
	struct pfs_slot *s;
	uint32_t slot = 0, gen = 0;
	int ret;

	if (pfs_dir_hidden(name))
		return 0;
	pthread_mutex_lock(&pfs.lock);
	s = pfs_slot_by_name(name);
	if (s) {
		slot = (uint32_t)(s - pfs.slots);
		gen = atomic_load(&s->gen);
	}
	pthread_mutex_unlock(&pfs.lock);
	if (!s)
		return -ENOENT;
	snprintf(hidden, sizeof(hidden), DIR_GONE_PREFIX "%u.%u", slot, gen);
	ret = dir_path(hidden, path, sizeof(path));
	if (!ret)
		ret = pcache_image_rename(pfs.cache, name, hidden, path);
	if (ret) {
		snprintf(err, sizeof(err), "%s", strerror(-ret));
		pfs_log(LOG_WARNING, "image_dir: %s: its file is gone but the image stays: %s", name, err);
		return ret;
	}
	pfs_images_renamed(name, hidden);
	pfs_log(LOG_INFO, "image_dir: %s removed while open: its open files keep it (as %s) until "
		"the last close", name, hidden);
	return 0;
}

/*
 * The file of an image of DIR is gone (unlinked, or replaced by a rename; dir_lock held): drop
 * the image and its cached data, or hide it while files of it are open.
 */
static void drop_image(const char *name)
{
	uint64_t lost = 0;
	char err[512];
	int ret = pfs_image_give_up(name, &lost, err, sizeof(err));

	if (ret == -EBUSY)
		(void)hide_image(name);
	else if (ret && ret != -ENOENT)    /* -ENOENT: dropped meanwhile (a listing, a close) */
		pfs_log(LOG_WARNING, "image_dir: %s: its file is gone, the image stays: %s", name, err);
	else if (lost)
		pfs_log(LOG_INFO, "image_dir: %s removed with %llu cached bytes not written back "
			"(its file is gone)", name, (unsigned long long)lost);
}

void pfs_dir_closed(const char *name)
{
	if (!pfs_dir_hidden(name))
		return;
	pthread_mutex_lock(&dir_lock);
	drop_image(name);
	pthread_mutex_unlock(&dir_lock);
}

int pfs_dir_purge_hidden(void)
{
	struct pcache_unattached *v = calloc(PFS_MAX_SLOTS, sizeof(*v));
	struct stat st;
	uint64_t lost;
	int n;

	if (!v)
		return -ENOMEM;
	n = pcache_cache_unattached(pfs.cache, v, PFS_MAX_SLOTS);
	for (int i = 0; i < n; i++) {
		/* the path of such a record is never made: one that exists is not ours to drop */
		if (!pfs_dir_hidden(v[i].name) || stat(v[i].path, &st) == 0)
			continue;
		lost = 0;
		if (pcache_image_give_up(pfs.cache, v[i].name, &lost) == 0)
			pfs_log(LOG_INFO, "image %s (removed while open, before a crash) dropped with "
				"%llu cached bytes", v[i].name, (unsigned long long)lost);
	}
	free(v);
	return n < 0 ? n : 0;
}

/* A regular file of DIR with a name DIR may serve, and its inode. */
struct dir_file {
	char name[PCACHE_NAME_MAX + 1];
	dev_t dev;
	ino_t ino;
};

/* The files of DIR (*n of them, malloc'ed), or NULL (logged). */
static struct dir_file *dir_files(int *n)
{
	struct dir_file *v = NULL, *nv;
	int fd, cap = 0;
	struct dirent *de;
	struct stat st;
	DIR *d;

	*n = 0;
	fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		pfs_log(LOG_WARNING, "image_dir %s: %s", pfs.opts->image_dir, strerror(errno));
		return NULL;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_type != DT_REG && de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
			continue;
		if (fstatat(dir_fd, de->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode))
			continue;
		if (!dir_name_ok(de->d_name)) {
			if (!pfs_dir_hidden(de->d_name) && first_refusal(de->d_name))
				pfs_log(LOG_WARNING, "image_dir: %s/%s not served: image names are 1-%u "
					"bytes without control characters (rename the file)", pfs.opts->image_dir,
					de->d_name, PCACHE_NAME_MAX);
			continue;
		}
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			nv = realloc(v, (size_t)cap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		snprintf(v[*n].name, sizeof(v[*n].name), "%.*s", (int)PCACHE_NAME_MAX, de->d_name);
		v[*n].dev = st.st_dev;
		v[*n].ino = st.st_ino;
		(*n)++;
	}
	closedir(d);
	if (!v)
		v = malloc(sizeof(*v));   /* an empty directory is a list too */
	return v;
}

/* What became of an attached image's file (dir_follow). */
enum dir_fate { DF_SAME, DF_RENAMED, DF_GONE, DF_MOVED };

/*
 * Attached images of DIR whose file is no longer DIR/NAME follow it (dir_lock held): renamed
 * in DIR (the image takes the new name), gone (dropped as by an unlink), or moved out of DIR
 * (detached once nothing has it open: written back first, the table forgets it). Drops and
 * detaches come before renames, which may take the name of a dropped one.
 */
static void dir_follow(const struct dir_file *f, int nf)
{
	char (*names)[PCACHE_NAME_MAX + 1] = calloc(PFS_MAX_SLOTS, sizeof(*names));
	enum dir_fate *fate = calloc(PFS_MAX_SLOTS, sizeof(*fate));
	int *to = calloc(PFS_MAX_SLOTS, sizeof(*to));
	char err[512], path[PCACHE_PATH_MAX + 2];
	int n = 0, ret;

	if (!names || !fate || !to)
		goto out;
	pthread_mutex_lock(&pfs.lock);
	for (int i = 0; i < PFS_MAX_SLOTS; i++) {
		if (pfs.slots[i].state == PFS_SLOT_ATTACHED)
			snprintf(names[n++], sizeof(names[0]), "%s", pfs.slots[i].name);
	}
	pthread_mutex_unlock(&pfs.lock);
	for (int i = 0; i < n; i++) {
		struct pcache_image *img;
		struct stat st;

		fate[i] = DF_SAME;
		if (pfs_dir_hidden(names[i])) {
			fate[i] = DF_GONE;      /* its last close did not drop it: drop it now */
			continue;
		}
		if (!pfs_dir_owns(names[i]) || !(img = pcache_image_get(pfs.cache, names[i])))
			continue;
		ret = pcache_image_backing_stat(img, &st);
		pcache_image_put(img);
		if (ret)
			continue;
		fate[i] = st.st_nlink ? DF_MOVED : DF_GONE;
		for (int j = 0; j < nf; j++) {
			if (f[j].dev != st.st_dev || f[j].ino != st.st_ino)
				continue;
			if (!strcmp(f[j].name, names[i])) {
				fate[i] = DF_SAME;
				break;
			}
			if (fate[i] != DF_RENAMED) {
				fate[i] = DF_RENAMED;   /* the image takes the first other name met */
				to[i] = j;
			}
		}
	}
	for (int i = 0; i < n; i++) {
		if (fate[i] != DF_SAME)
			inval_add(names[i]);
		if (fate[i] == DF_GONE) {
			drop_image(names[i]);
		} else if (fate[i] == DF_MOVED) {
			ret = pfs_image_detach(names[i], err, sizeof(err));
			if (ret == 0)
				pfs_log(LOG_NOTICE, "image_dir: the file of %s left the directory: detached "
					"(written back)", names[i]);
			else if (first_refusal(names[i]))   /* open: every listing tries again */
				pfs_log(LOG_WARNING, "image_dir: the file of %s left the directory; it is "
					"served until it can be detached: %s", names[i], err);
		}
	}
	for (int i = 0; i < n; i++) {
		const char *nn;
		bool taken;

		if (fate[i] != DF_RENAMED)
			continue;
		nn = f[to[i]].name;
		if (dir_path(nn, path, sizeof(path)) != 0)
			continue;
		pthread_mutex_lock(&pfs.lock);
		taken = pfs_slot_by_name(nn) != NULL;
		pthread_mutex_unlock(&pfs.lock);
		if (taken)
			continue;   /* another image (open, moved out) still holds it: the next listing */
		/* a record of the new name left over from an earlier file of that name */
		if (pcache_cache_known_image(pfs.cache, nn, &(struct pcache_image_ent){ 0 }) == 0)
			drop_image(nn);
		ret = pcache_image_rename(pfs.cache, names[i], nn, path);
		if (ret) {
			snprintf(err, sizeof(err), "%s", strerror(-ret));
			pfs_log(LOG_WARNING, "image_dir: %s was renamed to %s behind the daemon's back, "
				"but not its image: %s", names[i], nn, err);
			continue;
		}
		pfs_images_renamed(names[i], nn);
		pfs_log(LOG_NOTICE, "image_dir: %s was renamed to %s: its cached data goes with it",
			names[i], nn);
	}
out:
	free(names);
	free(fate);
	free(to);
}

void pfs_dir_scan(void)
{
	struct dir_file *f;
	int n;

	if (dir_fd < 0)
		return;
	pthread_mutex_lock(&dir_lock);
	f = dir_files(&n);
	if (f) {
		dir_follow(f, n);
		for (int i = 0; i < n; i++)
			(void)dir_attach(f[i].name);
	}
	pthread_mutex_unlock(&dir_lock);
	free(f);
}

void pfs_dir_revalidate(const char *name)
{
	struct pcache_image *img;
	struct stat a, b;
	bool same;

	if (dir_fd < 0 || !pfs_dir_owns(name) || !(img = pcache_image_get(pfs.cache, name)))
		return;
	same = pcache_image_backing_stat(img, &a) == 0 && fstatat(dir_fd, name, &b, 0) == 0 &&
	       a.st_dev == b.st_dev && a.st_ino == b.st_ino;
	pcache_image_put(img);
	if (!same)
		pfs_dir_scan();
}

int pfs_dir_create(const char *name, mode_t mode, uid_t uid, gid_t gid)
{
	char path[PCACHE_PATH_MAX + 2], err[1024];
	int fd, ret;

	if (dir_fd < 0)
		return -EROFS;
	if (!dir_name_ok(name))
		return -EINVAL;
	ret = dir_path(name, path, sizeof(path));
	if (ret)
		return ret;
	pthread_mutex_lock(&dir_lock);
	fd = openat(dir_fd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode & 07777);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	/* the caller owns the new file, as on any directory (the daemon runs as root) */
	if (fchown(fd, uid, gid) != 0 && errno != EPERM)
		pfs_log(LOG_WARNING, "image_dir: chown %s: %s", path, strerror(errno));
	close(fd);
	err[0] = '\0';
	ret = pfs_image_attach(name, path, pfs.opts->cache_mode, false, err, sizeof(err));
	if (ret) {
		pfs_log(LOG_WARNING, "image_dir: created %s but cannot serve it: %s (removed)", path,
			err[0] ? err : strerror(-ret));
		(void)unlinkat(dir_fd, name, 0);
	}
out:
	pthread_mutex_unlock(&dir_lock);
	return ret;
}

/* The slot serving name, if it is an image of DIR: 0, -ENOENT, -EPERM (not DIR's). */
static int dir_image(const char *name)
{
	struct pfs_slot *s;

	if (pfs_dir_hidden(name))
		return -ENOENT;
	pthread_mutex_lock(&pfs.lock);
	s = pfs_slot_by_name(name);
	pthread_mutex_unlock(&pfs.lock);
	if (!s)
		return -ENOENT;
	return pfs_dir_owns(name) ? 0 : -EPERM;
}

int pfs_dir_unlink(const char *name)
{
	int ret;

	if (dir_fd < 0)
		return -EPERM;
	pthread_mutex_lock(&dir_lock);
	ret = dir_image(name);
	/* the file first: if that fails nothing changed; a crash after it leaves the image
	 * missing its file (status shows it; give_up forgets it), never a file without its data */
	if (!ret && unlinkat(dir_fd, name, 0) != 0)
		ret = -errno;
	if (!ret)
		drop_image(name);
	pthread_mutex_unlock(&dir_lock);
	return ret;
}

static int dir_rename_locked(const char *from, const char *to, unsigned int flags)
{
	char path[PCACHE_PATH_MAX + 2], err[512];
	int ret, dst;

	ret = dir_path(to, path, sizeof(path));
	if (ret)
		return ret;
	ret = dir_image(from);
	if (ret)
		return ret;
	if (!strcmp(from, to))
		return 0;
	dst = dir_image(to);
	if (dst == -EPERM)
		return -EPERM;          /* would replace an image that is not DIR's */
	if (dst == 0 && (flags & RENAME_NOREPLACE))
		return -EEXIST;
	if (renameat2(dir_fd, from, dir_fd, to, flags) != 0)
		return -errno;
	/* the file it replaced is gone: so is its image (or a record of that name left over) */
	if (dst == 0 || pcache_cache_known_image(pfs.cache, to, &(struct pcache_image_ent){ 0 }) == 0)
		drop_image(to);
	ret = pcache_image_rename(pfs.cache, from, to, path);
	if (ret) {
		/* the file has its new name; the next listing finds the image by its file */
		snprintf(err, sizeof(err), "%s", strerror(-ret));
		pfs_log(LOG_WARNING, "image_dir: renamed %s to %s, but not its image: %s", from, to, err);
		return 0;
	}
	pfs_images_renamed(from, to);
	return 0;
}

int pfs_dir_rename(const char *from, const char *to, unsigned int flags)
{
	int ret;

	if (dir_fd < 0)
		return -EPERM;
	if (flags & ~(unsigned int)RENAME_NOREPLACE)
		return -EINVAL;    /* RENAME_EXCHANGE, RENAME_WHITEOUT */
	if (!dir_name_ok(to))
		return -EINVAL;
	pthread_mutex_lock(&dir_lock);
	ret = dir_rename_locked(from, to, flags);
	pthread_mutex_unlock(&dir_lock);
	return ret;
}

int pfs_dir_set_attr(const char *name, const struct stat *attr, int to_set)
{
	uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
	gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;

	if (dir_fd < 0 || pfs_dir_hidden(name) || !pfs_dir_owns(name))
		return 0;
	if ((to_set & FUSE_SET_ATTR_MODE) && fchmodat(dir_fd, name, attr->st_mode & 07777, 0) != 0)
		return -errno;
	if ((uid != (uid_t)-1 || gid != (gid_t)-1) && fchownat(dir_fd, name, uid, gid, 0) != 0)
		return -errno;
	return 0;
}

int pfs_dir_statfs(struct statvfs *sv)
{
	if (dir_fd < 0)
		return -ENOENT;
	return fstatvfs(dir_fd, sv) == 0 ? 0 : -errno;
}
