/*
 * backing_ident.c -- who is behind a backing path: the identity of the data an open file
 * descriptor reaches, and who else holds it.
 *
 * Two notions, kept apart:
 *  - overlap (pcache_ident_overlap()): do two open images reach the same bytes right now?
 *    Compared on kernel numbers (st_dev/st_ino of a file, st_rdev of a block device, and the
 *    backing file of a loop device), never on path strings, so hard links, symlinks, bind
 *    mounts, a second device node or a loop device over a file are all seen through.
 *  - stable identity (pcache_ident.text): a short string that names the same data after a
 *    reboot, when device numbers and /dev names may have moved. A file is named by its file
 *    system (the UUID libblkid reads from the file system's device, else the statfs fsid),
 *    its inode number and, where the file system has one, the inode's generation; a block device by what the kernel exposes in sysfs (dm UUID,
 *    WWID, serial, plus the partition number), a loop device by its backing file and
 *    offset. A device with none of these falls back to its device number (weak: say so).
 *
 * Depends on libc and libblkid.
 */
#include <blkid/blkid.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "pcache/backing.h"

/* Read a one-line sysfs attribute into buf (trailing blanks stripped); 0 if non-empty. */
static int sysfs_read(const char *dir, const char *attr, char *buf, size_t len)
{
	char path[PATH_MAX];
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, attr);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	n = fgets(buf, (int)len, f) ? strlen(buf) : 0;
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return n ? 0 : -ENODATA;
}

/* The file system UUID of device devno (libblkid), 0 if found. */
static int fs_uuid(dev_t devno, char *buf, size_t len)
{
	const char *val = NULL;
	blkid_probe pr;
	char *name;
	int ret = -ENOENT;

	if (!major(devno))
		return -ENOENT; /* an anonymous device (tmpfs, overlay, btrfs subvolume) */
	name = blkid_devno_to_devname(devno);
	if (!name)
		return -ENOENT;
	pr = blkid_new_probe_from_filename(name);
	free(name);
	if (!pr)
		return -ENOENT;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_UUID);
	if (blkid_do_safeprobe(pr) == 0 && blkid_probe_lookup_value(pr, "UUID", &val, NULL) == 0 &&
	    val && *val) {
		snprintf(buf, len, "%s", val);
		ret = 0;
	}
	blkid_free_probe(pr);
	return ret;
}

/* "fs=UUID ino=N" (or fsid=/dev= when the file system has no UUID) for a file. */
static void file_text(int fd, dev_t dev, ino_t ino, char *buf, size_t len)
{
	char uuid[64];
	struct statfs sf;
	unsigned int fsid[2];

	if (fs_uuid(dev, uuid, sizeof(uuid)) == 0) {
		snprintf(buf, len, "fs=%s ino=%llu", uuid, (unsigned long long)ino);
		return;
	}
	if (fd >= 0 && fstatfs(fd, &sf) == 0) {
		memcpy(fsid, &sf.f_fsid, sizeof(fsid));
		if (fsid[0] || fsid[1]) {
			snprintf(buf, len, "fsid=%08x%08x ino=%llu", fsid[0], fsid[1],
				 (unsigned long long)ino);
			return;
		}
	}
	snprintf(buf, len, "dev=%u:%u ino=%llu", major(dev), minor(dev), (unsigned long long)ino);
}

/* Stable identifiers of a (whole or partition) block device from sysfs. */
static void blk_text(const char *sysdir, dev_t rdev, char *buf, size_t len)
{
	char val[160], part[16] = "", whole[PATH_MAX + 4], real[PATH_MAX];
	const char *dir = sysdir;

	if (sysfs_read(sysdir, "dm/uuid", val, sizeof(val)) == 0) {
		snprintf(buf, len, "dm-uuid=%s", val);
		return;
	}
	if (sysfs_read(sysdir, "partition", part, sizeof(part)) == 0 && realpath(sysdir, real)) {
		snprintf(whole, sizeof(whole), "%s/..", real);
		dir = whole;
	} else {
		part[0] = '\0';
	}
	if (sysfs_read(dir, "wwid", val, sizeof(val)) == 0 ||
	    sysfs_read(dir, "device/wwid", val, sizeof(val)) == 0)
		snprintf(buf, len, "wwid=%s%s%s", val, part[0] ? " part=" : "", part);
	else if (sysfs_read(dir, "serial", val, sizeof(val)) == 0 ||
		 sysfs_read(dir, "device/serial", val, sizeof(val)) == 0)
		snprintf(buf, len, "serial=%s%s%s", val, part[0] ? " part=" : "", part);
	else
		snprintf(buf, len, "devno=%u:%u", major(rdev), minor(rdev)); /* nothing stable */
}

int pcache_ident_fd(int fd, struct pcache_ident *id)
{
	char sysdir[64], ftext[200];
	struct loop_info64 li;
	struct stat st;
	long gen;

	memset(id, 0, sizeof(*id));
	if (fstat(fd, &st) < 0)
		return -errno;
	id->mode = st.st_mode;
	id->uid = st.st_uid;
	id->gid = st.st_gid;
	if (S_ISREG(st.st_mode)) {
		id->dev = st.st_dev;
		id->ino = st.st_ino;
		file_text(fd, st.st_dev, st.st_ino, ftext, sizeof(ftext));
		/* the inode generation tells a recycled inode number apart (ext4, xfs, btrfs) */
		if (ioctl(fd, FS_IOC_GETVERSION, &gen) == 0)
			snprintf(id->text, sizeof(id->text), "file %s gen=%u", ftext, (unsigned int)gen);
		else
			snprintf(id->text, sizeof(id->text), "file %s", ftext);
		return 0;
	}
	if (!S_ISBLK(st.st_mode))
		return -EINVAL;
	id->blockdev = true;
	id->rdev = st.st_rdev;
	snprintf(sysdir, sizeof(sysdir), "/sys/dev/block/%u:%u", major(st.st_rdev), minor(st.st_rdev));
	if (ioctl(fd, LOOP_GET_STATUS64, &li) == 0) {
		int bfd = -1;

		id->loop = true;
		id->loop_dev = li.lo_device;
		id->loop_ino = li.lo_inode;
		id->loop_off = li.lo_offset;
		/* fstatfs needs an fd of the backing file: open it by name if it is still there */
		if (li.lo_file_name[0] == '/')
			bfd = open((const char *)li.lo_file_name, O_PATH | O_CLOEXEC);
		if (bfd >= 0) {
			struct stat bst;

			if (fstat(bfd, &bst) || bst.st_dev != li.lo_device || bst.st_ino != li.lo_inode) {
				close(bfd);
				bfd = -1;
			}
		}
		file_text(bfd, (dev_t)li.lo_device, (ino_t)li.lo_inode, ftext, sizeof(ftext));
		if (bfd >= 0)
			close(bfd);
		snprintf(id->text, sizeof(id->text), "loop %s off=%llu", ftext,
			 (unsigned long long)li.lo_offset);
		return 0;
	}
	blk_text(sysdir, st.st_rdev, ftext, sizeof(ftext));
	snprintf(id->text, sizeof(id->text), "blk %s", ftext);
	return 0;
}

bool pcache_ident_overlap(const struct pcache_ident *a, const struct pcache_ident *b)
{
	if (!a->blockdev && !b->blockdev)
		return a->dev == b->dev && a->ino == b->ino;
	if (a->blockdev && b->blockdev) {
		if (a->rdev == b->rdev)
			return true;
		return a->loop && b->loop && a->loop_dev == b->loop_dev && a->loop_ino == b->loop_ino;
	}
	if (a->blockdev) {
		const struct pcache_ident *t = a;

		a = b;
		b = t;
	}
	/* a is a file, b a block device: the same bytes if b is a loop device over a */
	return b->loop && b->loop_dev == a->dev && b->loop_ino == a->ino;
}

void pcache_flock_holder(int fd, char *buf, size_t len)
{
	char line[256], comm[64] = "", path[64];
	unsigned int maj, min;
	unsigned long long ino;
	struct stat st;
	FILE *f;
	int pid = 0, n;

	snprintf(buf, len, "another process");
	if (fstat(fd, &st) || !(f = fopen("/proc/locks", "re")))
		return;
	while (fgets(line, sizeof(line), f)) {
		char kind[16], mode[16], rw[16];
		bool same;
		int p;

		if (strstr(line, "->")) /* a waiter, not a holder */
			continue;
		n = sscanf(line, "%*d: %15s %15s %15s %d %x:%x:%llu", kind, mode, rw, &p, &maj, &min, &ino);
		if (n != 7 || strcmp(kind, "FLOCK") || p <= 0)
			continue;
		same = maj == major(st.st_dev) && min == minor(st.st_dev) && ino == st.st_ino;
		if (same && p != getpid()) {
			pid = p;
			break;
		}
		if (same)
			pid = p; /* our own pid (another open in this process): keep looking */
	}
	fclose(f);
	if (!pid)
		return;
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	f = fopen(path, "re");
	if (f) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
	if (comm[0])
		snprintf(buf, len, "pid %d (%s)", pid, comm);
	else /* the locker exited after a fork: a child inherited the locked descriptor */
		snprintf(buf, len, "pid %d (exited; a process it forked holds the lock)", pid);
}

/* Mount point of device rdev from /proc/self/mountinfo ("3:4" field), 0 if mounted. */
static int mounted_on(dev_t rdev, char *buf, size_t len)
{
	char line[4096], mnt[2048];
	unsigned int maj, min;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*d %*d %u:%u %*s %2047s", &maj, &min, mnt) == 3 &&
		    maj == major(rdev) && min == minor(rdev)) {
			snprintf(buf, len, "mounted on %s", mnt);
			ret = 0;
			break;
		}
	}
	fclose(f);
	return ret;
}

void pcache_blockdev_holder(dev_t rdev, char *buf, size_t len)
{
	char dir[96];
	struct dirent *d;
	DIR *dh;

	if (mounted_on(rdev, buf, len) == 0)
		return;
	snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u/holders", major(rdev), minor(rdev));
	dh = opendir(dir);
	if (dh) {
		while ((d = readdir(dh))) {
			if (d->d_name[0] == '.')
				continue;
			snprintf(buf, len, "held by %s", d->d_name);
			closedir(dh);
			return;
		}
		closedir(dh);
	}
	snprintf(buf, len, "opened exclusively by another program (a file system, pcachefs, ...)");
}

int pcache_probe_signature(int fd, char *what, size_t len)
{
	const char *type = NULL, *usage = NULL;
	blkid_probe pr;
	int rc, ret = 0;

	pr = blkid_new_probe();
	if (!pr)
		return -ENOMEM;
	if (blkid_probe_set_device(pr, fd, 0, 0) != 0) {
		blkid_free_probe(pr);
		return -EIO;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE);
	blkid_probe_enable_partitions(pr, 1);
	rc = blkid_do_safeprobe(pr);
	if (rc == -2) {
		snprintf(what, len, "more than one signature (libblkid: ambivalent probe)");
		ret = 1;
	} else if (rc == 0) {
		if (blkid_probe_lookup_value(pr, "TYPE", &type, NULL) == 0 && type) {
			(void)blkid_probe_lookup_value(pr, "USAGE", &usage, NULL);
			snprintf(what, len, "a %s signature%s%s", type, usage ? " (" : "", usage ? usage : "");
			if (usage)
				snprintf(what + strlen(what), len - strlen(what), ")");
			ret = 1;
		} else if (blkid_probe_lookup_value(pr, "PTTYPE", &type, NULL) == 0 && type) {
			snprintf(what, len, "a %s partition table", type);
			ret = 1;
		}
	} else if (rc < 0) {
		ret = -EIO;
	}
	blkid_free_probe(pr);
	return ret;
}
