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
 * Locks: only a leaf lock for its log throttle. Calls the engine and images.c without pfs.lock
 * held (attach opens backings); reads slots under pfs.lock.
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

static int dir_fd = -1;

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
 * Attach DIR/name if it is a regular file with a valid image name and not attached: 0 (now
 * attached), -ENOENT (no such file, or not one that can be an image), or the attach's error
 * (logged once per name and file).
 */
static int dir_attach(const char *name)
{
	static pthread_mutex_t refused_lock = PTHREAD_MUTEX_INITIALIZER;
	static char last_refused[PCACHE_NAME_MAX + 1];   /* refused_lock */
	char path[PCACHE_PATH_MAX + 2], err[1024];
	struct stat st;
	bool taken, again;
	int ret;

	if (!pcache_name_valid(name) || fstatat(dir_fd, name, &st, 0) != 0 || !S_ISREG(st.st_mode) ||
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
	if (ret) {
		/* once per name in a row: a listing retries it each time */
		pthread_mutex_lock(&refused_lock);
		again = !strcmp(last_refused, name);
		snprintf(last_refused, sizeof(last_refused), "%s", name);
		pthread_mutex_unlock(&refused_lock);
		if (!again)
			pfs_log(LOG_WARNING, "image_dir: %s not served: %s", path, err[0] ? err : strerror(-ret));
	}
	return ret;
}

int pfs_dir_adopt(const char *name)
{
	if (dir_fd < 0)
		return -ENOENT;
	return dir_attach(name) == 0 ? 0 : -ENOENT;
}

void pfs_dir_scan(void)
{
	DIR *d;
	struct dirent *de;
	int fd;

	if (dir_fd < 0)
		return;
	fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		pfs_log(LOG_WARNING, "image_dir %s: %s", pfs.opts->image_dir, strerror(errno));
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_type != DT_REG && de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
			continue;
		(void)dir_attach(de->d_name);
	}
	closedir(d);
}

int pfs_dir_create(const char *name, mode_t mode, uid_t uid, gid_t gid)
{
	char path[PCACHE_PATH_MAX + 2], err[1024];
	int fd, ret;

	if (dir_fd < 0)
		return -EROFS;
	if (!pcache_name_valid(name))
		return -EINVAL;
	ret = dir_path(name, path, sizeof(path));
	if (ret)
		return ret;
	fd = openat(dir_fd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode & 07777);
	if (fd < 0)
		return -errno;
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
	return ret;
}

/* The slot serving name, if it is an image of DIR: 0, -ENOENT, -EPERM (not DIR's). */
static int dir_image(const char *name, bool *open)
{
	struct pfs_slot *s;

	pthread_mutex_lock(&pfs.lock);
	s = pfs_slot_by_name(name);
	*open = s && s->open_count;
	pthread_mutex_unlock(&pfs.lock);
	if (!s)
		return -ENOENT;
	return pfs_dir_owns(name) ? 0 : -EPERM;
}

/* The file of an image of DIR is gone (unlinked, or replaced by a rename): drop the image. */
static void drop_image(const char *name)
{
	uint64_t lost = 0;
	char err[512];

	if (pfs_image_give_up(name, &lost, err, sizeof(err)) != 0)
		pfs_log(LOG_WARNING, "image_dir: %s: its file is gone, the image stays: %s", name, err);
	else if (lost)
		pfs_log(LOG_INFO, "image_dir: %s removed with %llu cached bytes not written back "
			"(its file is gone)", name, (unsigned long long)lost);
}

int pfs_dir_unlink(const char *name)
{
	bool open;
	int ret;

	if (dir_fd < 0)
		return -EPERM;
	ret = dir_image(name, &open);
	if (ret)
		return ret;
	if (open)
		return -EBUSY;
	/* the file first: if that fails nothing changed; a crash after it leaves the image
	 * missing its file (status shows it; give_up forgets it), never a file without its data */
	if (unlinkat(dir_fd, name, 0) != 0)
		return -errno;
	drop_image(name);
	return 0;
}

int pfs_dir_rename(const char *from, const char *to, unsigned int flags)
{
	char path[PCACHE_PATH_MAX + 2], err[512];
	bool open, dst_open = false;
	int ret, dst;

	if (dir_fd < 0)
		return -EPERM;
	if (flags & ~(unsigned int)RENAME_NOREPLACE)
		return -EINVAL;    /* RENAME_EXCHANGE, RENAME_WHITEOUT */
	if (!pcache_name_valid(to))
		return -EINVAL;
	ret = dir_path(to, path, sizeof(path));
	if (ret)
		return ret;
	ret = dir_image(from, &open);
	if (ret)
		return ret;
	if (!strcmp(from, to))
		return 0;
	dst = dir_image(to, &dst_open);
	if (dst == -EPERM)
		return -EPERM;          /* would replace an image that is not DIR's */
	if (dst == 0 && (flags & RENAME_NOREPLACE))
		return -EEXIST;
	if (dst == 0 && dst_open)
		return -EBUSY;
	if (renameat2(dir_fd, from, dir_fd, to, flags) != 0)
		return -errno;
	/* the file it replaced is gone: so is its image (or a record of that name left over) */
	if (dst == 0 || pcache_cache_known_image(pfs.cache, to, &(struct pcache_image_ent){ 0 }) == 0)
		drop_image(to);
	ret = pcache_image_rename(pfs.cache, from, to, path);
	if (ret) {
		/* the file has its new name; the next attach of it finds the image by identity */
		snprintf(err, sizeof(err), "%s", strerror(-ret));
		pfs_log(LOG_WARNING, "image_dir: renamed %s to %s, but not its image: %s", from, to, err);
		return 0;
	}
	pfs_images_renamed(from, to);
	return 0;
}

int pfs_dir_statfs(struct statvfs *sv)
{
	if (dir_fd < 0)
		return -ENOENT;
	return fstatvfs(dir_fd, sv) == 0 ? 0 : -errno;
}
