/*
 * nodes.c -- the nodes of the mount: inode numbers (fixed ones for the root and .pcache/,
 * encoded ones for the nodes of each image, daemon_i.h), their attributes, lookup by name and
 * directory listings. Image nodes are valid only while their slot holds the same image (slot
 * generation in the inode number), so a stale inode never reaches another image.
 */
#include "daemon_i.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* ---- nodes --------------------------------------------------------------------------------- */

int pfs_node_decode(fuse_ino_t ino, struct pfs_node *n)
{
	memset(n, 0, sizeof(*n));
	if (ino & PFS_INO_IMG_FLAG) {
		n->slot = (uint32_t)((ino >> PFS_INO_SLOT_SHIFT) & PFS_INO_SLOT_MASK);
		n->kind = (enum pfs_img_kind)(ino & PFS_INO_KIND_MASK);
		if (n->slot >= PFS_MAX_SLOTS || n->kind >= PFS_IK_COUNT)
			return -ENOENT;
		return 0;
	}
	if (ino < PFS_INO_ROOT || ino >= PFS_INO_FIXED_END)
		return -ENOENT;
	n->fixed = ino;
	return 0;
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

static void ns_to_ts(struct timespec *ts, int64_t ns)
{
	ts->tv_sec = (time_t)(ns / 1000000000);
	ts->tv_nsec = (long)(ns % 1000000000);
	if (ts->tv_nsec < 0) {
		ts->tv_sec--;
		ts->tv_nsec += 1000000000;
	}
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
int pfs_node_stat(fuse_ino_t ino, struct stat *st, double *timeout)
{
	struct pfs_node n;
	struct pfs_slot *s;
	uint32_t mode, uid, gid;
	int64_t mtime, ctime;

	if (pfs_node_decode(ino, &n))
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
	s = pfs_slot_of(ino, &n);
	if (!s)
		return -ENOENT;
	switch (n.kind) {
	case PFS_IK_FILE:
		/* st_blocks follows the writeback, and the file may change size: re-asked soon */
		*timeout = PFS_CTL_ATTR_TIMEOUT;
		stat_common(st, ino);
		pcache_image_attr(s->img, &mode, &uid, &gid);
		st->st_mode = S_IFREG | ((mode & 07777) ? (mode & 07777) : 0644);
		st->st_uid = uid;
		st->st_gid = gid;
		st->st_nlink = 1;
		st->st_size = (off_t)s->size;
		mtime = atomic_load(&s->mtime_ns);
		ctime = atomic_load(&s->ctime_ns);
		ns_to_ts(&st->st_atim, atomic_load(&s->atime_ns));
		ns_to_ts(&st->st_mtim, mtime);
		ns_to_ts(&st->st_ctim, ctime > mtime ? ctime : mtime);
		/* what the backing holds (du of a sparse or growing image), not the size */
		st->st_blocks = (blkcnt_t)pcache_image_blocks(s->img);
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
	[PFS_IK_SEQ] = "sequential_cutoff",
	[PFS_IK_SHARE] = "max_share",
	[PFS_IK_GROW] = "growable",
};

/* Resolve name in parent: 0 and *ino, or -ENOENT (pfs.lock held). */
int pfs_node_lookup(fuse_ino_t parent, const char *name, fuse_ino_t *ino)
{
	struct pfs_node n;
	struct pfs_slot *s;

	if (pfs_node_decode(parent, &n))
		return -ENOENT;
	if (n.fixed == PFS_INO_ROOT) {
		if (!strcmp(name, ".pcache")) {
			*ino = PFS_INO_CTL_DIR;
			return 0;
		}
		s = pfs_dir_hidden(name) ? NULL : pfs_slot_by_name(name);
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
		s = pfs_slot_by_name(name);
		if (!s)
			return -ENOENT;
		*ino = pfs_img_ino((uint32_t)(s - pfs.slots), s->gen, PFS_IK_DIR);
		return 0;
	}
	if (!n.fixed && n.kind == PFS_IK_DIR) {
		s = pfs_slot_of(parent, &n);
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
int pfs_dir_list(fuse_ino_t ino, struct pfs_dent *v)
{
	struct pfs_node n;
	struct pfs_slot *s;
	int cnt = 0;

	if (pfs_node_decode(ino, &n))
		return -ENOENT;
	if (n.fixed == PFS_INO_ROOT) {
		dir_add(v, &cnt, ".", ino, S_IFDIR);
		dir_add(v, &cnt, "..", ino, S_IFDIR);
		dir_add(v, &cnt, ".pcache", PFS_INO_CTL_DIR, S_IFDIR);
		for (int i = 0; i < PFS_MAX_SLOTS; i++) {
			s = &pfs.slots[i];
			if (s->state == PFS_SLOT_ATTACHED && !pfs_dir_hidden(s->name))
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
		s = pfs_slot_of(ino, &n);
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
