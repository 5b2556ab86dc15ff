/*
 * ops.c -- the FUSE low-level operations of pcachefs: the mount root with one regular file per
 * attached image, the .pcache/ control tree (content in ctl.c), and the image I/O path onto the
 * engine (include/pcache/cache.h). Inode numbers, stat and lookup are in nodes.c, the image
 * slots and the I/O buffers in images.c.
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
 *  5. Every use of an image's engine handle by a request sits between pfs_io_enter() and pfs_io_exit();
 *     detach waits for those to drain (daemon_i.h, struct pfs_slot), and refuses while files are
 *     open. A request for a detached (or detached and reused) slot fails with ESTALE.
 *  6. A read miss (PCACHE_IO_PENDING) replies from the engine's completion callback; the buffer
 *     belongs to the request until then. An aligned write to a writethrough or writearound image
 *     replies from the backing completion too (pcache_image_write_async), its range held until
 *     the reply.
 *  7. A read that is all hits replies from the cache memory itself (pcache_image_read_pin,
 *     fuse_reply_iov) and unpins right after the reply; only other reads copy into a buffer.
 */
#include "daemon_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

_Static_assert(sizeof(fuse_ino_t) >= sizeof(uint64_t), "inode numbers need 64 bits");
_Static_assert(sizeof(uint64_t) >= sizeof(void *), "file handles hold pointers");

struct pfs pfs;

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

/* A pending read. */
struct pfs_read {
	fuse_req_t req;
	struct pfs_slot *s;
	char *buf;
	size_t skip, len;
};

/* ---- the engine I/O helpers ------------------------------------------------------------------ */

/*
 * Make the image at least end bytes long (a write, truncate or fallocate past its end; the
 * caller did pfs_io_enter or holds pfs.lock). 0; -ENOSPC if the image does not grow (a block
 * device, growable=0); -EFBIG past the largest size; or the engine's error. The new size is
 * in the image table (durable) when this returns.
 */
static int image_grow(struct pfs_slot *s, uint64_t end)
{
	uint64_t cur, want;
	int ret;

	if (end <= s->size)
		return 0;
	if (!pcache_image_growable(s->img))
		return -ENOSPC;
	ret = pcache_image_grow(s->img, end);
	if (ret)
		return ret;
	/* concurrent growers: the slot's size only moves up */
	want = pcache_image_size(s->img);
	cur = s->size;
	while (cur < want && !atomic_compare_exchange_weak(&s->size, &cur, want))
		;
	return 0;
}

/*
 * Make the image size bytes long: a growth (-EPERM if it does not grow) or a cut (the cached
 * bytes past the end are dropped, dirty ones too). The caller did pfs_io_enter.
 */
static int image_resize(struct pfs_slot *s, uint64_t size)
{
	int ret;

	pfs_slot_touch(s);   /* even a truncate to the same size changes mtime */
	if (size > s->size) {
		ret = image_grow(s, size);
		return ret == -ENOSPC ? -EPERM : ret;
	}
	if (size == s->size)
		return 0;
	ret = pcache_image_shrink(s->img, size);
	atomic_store(&s->size, pcache_image_size(s->img));
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

	/* a size that is not a sector multiple: the engine has the last sector whole (zeros past
	 * the end, which nothing shows and the backing never writes) */
	if (e > PCACHE_ALIGN_UP(s->size, lbs))
		return -EINVAL;
	tmp = pfs_buf_get();
	if (!tmp)
		return -ENOMEM;
	pfs_rangelock_lock(&s->rl, &r, a, e, true);
	if (e - a <= 2 * lbs) {
		ret = pcache_image_read_wait(s->img, tmp, a, e - a);
	} else {
		if (off != a)
			ret = pcache_image_read_wait(s->img, tmp, a, lbs);
		if (!ret && off + len != e)
			ret = pcache_image_read_wait(s->img, tmp + (e - lbs - a), e - lbs, lbs);
	}
	if (!ret) {
		if (src)
			memcpy(tmp + (off - a), src, len);
		else
			memset(tmp + (off - a), 0, len);
		ret = pcache_image_write(s->img, tmp, a, e - a, flags);
	}
	pfs_rangelock_unlock(&s->rl, &r);
	pfs_buf_put(tmp);
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

/*
 * An aligned write to a writethrough or writearound image: the engine replies from the backing
 * completion (pcache_image_write_async, which writes the backing from its cached copy or its
 * own copy, so libfuse's receive buffer is free once the call returns) and the worker is free
 * while the backing writes. The range stays held (shared) and the slot entered until the reply.
 */
struct pfs_wreq {
	fuse_req_t req;
	struct pfs_slot *s;
	struct pfs_range r;
	size_t len;
};

static void wreq_end(struct pfs_wreq *w, int status)
{
	pfs_rangelock_unlock(&w->s->rl, &w->r);
	pfs_io_exit(w->s);
	if (status < 0)
		fuse_reply_err(w->req, -status);
	else
		fuse_reply_write(w->req, w->len);
	free(w);
}

static void write_done(void *priv, int status)
{
	wreq_end(priv, status);
}

/* The caller did pfs_io_enter; every path here ends in pfs_io_exit and one reply. */
static void image_write_async(fuse_req_t req, struct pfs_slot *s, const char *src, uint64_t off,
			      size_t len, unsigned int flags)
{
	struct pfs_wreq *w = malloc(sizeof(*w));
	int ret;

	if (!w) {
		pfs_io_exit(s);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	w->req = req;
	w->s = s;
	w->len = len;
	pfs_rangelock_lock(&s->rl, &w->r, off, off + len, false);
	ret = pcache_image_write_async(s->img, src, off, len, flags, write_done, w);
	if (ret != PCACHE_IO_PENDING)
		wreq_end(w, ret);   /* else w belongs to write_done(), which may have run already */
}

static void read_done(void *priv, int status)
{
	struct pfs_read *rr = priv;

	if (status < 0)
		fuse_reply_err(rr->req, -status);
	else
		fuse_reply_buf(rr->req, rr->buf + rr->skip, rr->len);
	pfs_io_exit(rr->s);
	pfs_buf_put(rr->buf);
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
	/*
	 * The pin (not a lock) is held across the reply: the kernel copies from pmem. If it cannot
	 * read them (a media error) it ends the request with EIO itself and writev says EFAULT.
	 */
	if (fuse_reply_iov(req, iov, (int)n) == -EFAULT)
		pcache_image_note_media_error(s->img);
	pcache_read_unpin(&pin);
	return 0;
}

/* Read of an image file (the caller did pfs_io_enter; every path here ends in pfs_io_exit). */
static void image_read(fuse_req_t req, struct pfs_slot *s, size_t size, uint64_t off)
{
	uint64_t lbs = s->lbs, a, e;
	struct pfs_read *rr;
	char *buf;
	size_t len;
	int ret;

	if (off >= s->size || size == 0) {
		pfs_io_exit(s);
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	len = size;
	if (len > s->size - off)
		len = (size_t)(s->size - off);
	if (len > PCACHE_FUSE_MAX_IO)
		len = PCACHE_FUSE_MAX_IO;
	a = PCACHE_ALIGN_DOWN(off, lbs);
	e = PCACHE_ALIGN_UP(off + len, lbs);   /* may pass a size that is not a sector multiple */
	if (read_pinned(req, s, a, e, (size_t)(off - a), len) != PCACHE_PIN_FALLBACK) {
		pfs_io_exit(s);
		return;
	}
	buf = pfs_buf_get();
	if (!buf) {
		pfs_io_exit(s);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rr = malloc(sizeof(*rr));
	if (!rr) {
		pfs_io_exit(s);
		pfs_buf_put(buf);
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
	pfs_io_exit(s);
	free(rr);
	pfs_buf_put(buf);
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
	if (parent == PFS_INO_ROOT)
		pfs_dir_revalidate(name);   /* its file may have changed behind our back */
	pthread_mutex_lock(&pfs.lock);
	ret = pfs_node_lookup(parent, name, &ino);
	pthread_mutex_unlock(&pfs.lock);
	/* a file made in the image directory behind our back: serve it from now on */
	if (ret == -ENOENT && parent == PFS_INO_ROOT && pfs_dir_adopt(name) == 0) {
		pthread_mutex_lock(&pfs.lock);
		ret = pfs_node_lookup(parent, name, &ino);
		pthread_mutex_unlock(&pfs.lock);
	}
	if (!ret) {
		pthread_mutex_lock(&pfs.lock);
		ret = pfs_node_stat(ino, &e.attr, &e.attr_timeout);
		pthread_mutex_unlock(&pfs.lock);
	}
	if (ret) {
		fuse_reply_err(req, -ret);
		pfs_dir_send_inval();
		return;
	}
	e.ino = ino;
	e.generation = 1;
	e.entry_timeout = parent == PFS_INO_ROOT && pfs_dir_active() ? PFS_DIR_ENTRY_TIMEOUT :
			  PFS_ENTRY_TIMEOUT;
	fuse_reply_entry(req, &e);
	pfs_dir_send_inval();
}

/* Valid replies: fuse_reply_attr, fuse_reply_err (ENOENT). */
static void pfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	double tmo;
	int ret;

	pthread_mutex_lock(&pfs.lock);
	ret = pfs_node_stat(ino, &st, &tmo);
	pthread_mutex_unlock(&pfs.lock);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, tmo);
}

/* utimensat of an image (pfs.lock held): the times asked for, ctime now. */
static void set_times(struct pfs_slot *s, const struct stat *attr, int to_set)
{
	int64_t now = pfs_now_ns();

	if (to_set & FUSE_SET_ATTR_ATIME)
		atomic_store(&s->atime_ns, (to_set & FUSE_SET_ATTR_ATIME_NOW) ? now : pfs_ts_ns(&attr->st_atim));
	if (to_set & FUSE_SET_ATTR_MTIME)
		atomic_store(&s->mtime_ns, (to_set & FUSE_SET_ATTR_MTIME_NOW) ? now : pfs_ts_ns(&attr->st_mtim));
	atomic_store(&s->ctime_ns, now);
}

/*
 * Image files: mode, uid, gid persisted; size: a growable image grows or is cut (else EPERM);
 * atime and mtime set (kept while attached, not persisted: a start shows the backing's).
 * Control files: size changes (O_TRUNC of a shell redirection) ignored.
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

	if (pfs_node_decode(ino, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!n.fixed && n.kind == PFS_IK_FILE && (to_set & FUSE_SET_ATTR_SIZE)) {
		/* outside pfs.lock: a cut writes and flushes */
		pthread_mutex_lock(&pfs.lock);
		s = pfs_slot_of(ino, &n);
		pthread_mutex_unlock(&pfs.lock);
		ret = !s ? -ENOENT : attr->st_size < 0 ? -EINVAL : pfs_io_enter(s, ino, PFS_IK_FILE);
		if (!ret) {
			ret = image_resize(s, (uint64_t)attr->st_size);
			pfs_io_exit(s);
		}
		if (ret == -ESTALE)
			ret = -ENOENT;
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
	}
	if (!n.fixed && n.kind == PFS_IK_FILE &&
	    (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		char name[PCACHE_NAME_MAX + 1] = "";

		/* an image of the image directory: its file first (as chmod/chown there would) */
		pthread_mutex_lock(&pfs.lock);
		s = pfs_slot_of(ino, &n);
		if (s)
			snprintf(name, sizeof(name), "%s", s->name);
		pthread_mutex_unlock(&pfs.lock);
		ret = name[0] ? pfs_dir_set_attr(name, attr, to_set) : 0;
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
	}
	pthread_mutex_lock(&pfs.lock);
	if (!n.fixed && n.kind == PFS_IK_FILE) {
		s = pfs_slot_of(ino, &n);
		if (!s) {
			ret = -ENOENT;
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
			if (!ret)
				atomic_store(&s->ctime_ns, pfs_now_ns());
		}
		if (s && !ret && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)))
			set_times(s, attr, to_set);
	} else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		ret = -EPERM;
	}
	if (!ret)
		ret = pfs_node_stat(ino, &st, &tmo);
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

	if (pfs_node_decode(ino, &n)) {
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
	}
	if (!n.fixed) {
		pthread_mutex_lock(&pfs.lock);
		s = pfs_slot_of(ino, &n);
		if (s)
			s->open_count++;
		else
			err = ENOENT;
		pthread_mutex_unlock(&pfs.lock);
		if (!err && n.kind == PFS_IK_FILE && wr && (fi->flags & O_TRUNC)) {
			/* the kernel left the truncation to the open (atomic O_TRUNC) */
			err = pfs_io_enter(s, ino, PFS_IK_FILE) ? ENOENT : 0;
			if (!err) {
				err = -image_resize(s, 0);
				pfs_io_exit(s);
			}
			if (err) {
				pthread_mutex_lock(&pfs.lock);
				s->open_count--;
				pthread_mutex_unlock(&pfs.lock);
			}
		}
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
	if (!n.fixed)
		pfs_handover_changed();   /* the next daemon must know the file is open */
	if (fuse_reply_open(req, fi) != 0 && !n.fixed) {
		/* the kernel will not send a release for it */
		pthread_mutex_lock(&pfs.lock);
		pfs.slots[n.slot].open_count--;
		pthread_mutex_unlock(&pfs.lock);
		pfs_handover_changed();
	}
}

/* Decode an open file. 0 or -ENOENT (never for a file the kernel opened through us). */
static int file_of(fuse_ino_t ino, const struct fuse_file_info *fi, struct pfs_file *f)
{
	if (pfs_node_decode(ino, &f->node))
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
	char name[PCACHE_NAME_MAX + 1] = "";
	struct pfs_file f;

	if (file_of(ino, fi, &f) == 0 && f.s) {
		pthread_mutex_lock(&pfs.lock);
		if (f.s->open_count)
			f.s->open_count--;
		/* the last close of an image removed while open ends it */
		if (!f.s->open_count && pfs_slot_of(ino, &f.node))
			snprintf(name, sizeof(name), "%s", f.s->name);
		pthread_mutex_unlock(&pfs.lock);
		pfs_handover_changed();
	}
	fuse_reply_err(req, 0);
	if (name[0])
		pfs_dir_closed(name);
}

/* Control file read: generated afresh for every read (control files are direct-io). */
static void ctl_read(fuse_req_t req, const struct pfs_file *f, size_t size, off_t off)
{
	struct pfs_text t = { 0 };
	int ret;

	if (f->s && pfs_io_enter(f->s, f->ino, f->node.kind)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	ret = pfs_ctl_read(f->node.fixed, f->s, f->node.kind, &t);
	if (f->s)
		pfs_io_exit(f->s);
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
	if (pfs_io_enter(f.s, ino, PFS_IK_FILE)) {
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
	} else if (f->s && pfs_io_enter(f->s, f->ino, f->node.kind)) {
		ret = -ESTALE;
	} else {
		ret = pfs_ctl_write(f->node.fixed, f->s, f->node.kind, v);
		if (f->s)
			pfs_io_exit(f->s);
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
	if (pfs_io_enter(s, ino, PFS_IK_FILE)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	pfs_slot_touch(s);
	if ((uint64_t)off + len > s->size) {
		/* past the end: a growable image grows; one that does not takes what fits */
		ret = image_grow(s, (uint64_t)off + len);
		if (ret == -ENOSPC && (uint64_t)off < s->size) {
			len = (size_t)(s->size - (uint64_t)off);
			ret = 0;
		}
		if (ret) {
			pfs_io_exit(s);
			fuse_reply_err(req, -ret);
			return;
		}
	}
	if (!(((uint64_t)off | len) & (s->lbs - 1)) &&
	    pcache_image_cache_mode(s->img) != PCACHE_MODE_WRITEBACK) {
		image_write_async(req, s, buf, (uint64_t)off, len, f.sync ? PCACHE_IO_FUA : 0);
		return;
	}
	ret = image_write(s, buf, (uint64_t)off, len, f.sync ? PCACHE_IO_FUA : 0);
	pfs_io_exit(s);
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
		ret = pfs_io_enter(f.s, ino, PFS_IK_FILE);
		if (!ret) {
			ret = pcache_image_flush(f.s->img);
			pfs_io_exit(f.s);
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
	if (mode == 0 || (mode == FALLOC_FL_ZERO_RANGE && end > s->size)) {
		/* allocation (and zeroing) past the end grows a growable image */
		if (pfs_io_enter(s, ino, PFS_IK_FILE)) {
			fuse_reply_err(req, ESTALE);
			return;
		}
		ret = image_grow(s, end);
		pfs_io_exit(s);
		if (ret == -ENOSPC)
			ret = -EFBIG;
		if (ret || mode == 0) {
			fuse_reply_err(req, -ret);
			return;
		}
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
	if (pfs_io_enter(s, ino, PFS_IK_FILE)) {
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
	pfs_slot_touch(s);
	pfs_io_exit(s);
	fuse_reply_err(req, -ret);
}

static void pfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct pfs_node n;
	int ret = 0;

	if (pfs_node_decode(ino, &n))
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
	if (ino == PFS_INO_ROOT && off == 0)
		pfs_dir_scan();   /* files made in the image directory behind our back appear */
	pthread_mutex_lock(&pfs.lock);
	cnt = pfs_dir_list(ino, v);
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
	pfs_dir_send_inval();
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
	if (pfs_dir_active()) {
		/* a directory of images: the space is the directory's (the cache only caches it) */
		struct statvfs dv;

		if (pfs_dir_statfs(&dv) == 0) {
			sv.f_bsize = dv.f_bsize;
			sv.f_frsize = dv.f_frsize;
			sv.f_blocks = dv.f_blocks;
			sv.f_bfree = dv.f_bfree;
			sv.f_bavail = dv.f_bavail;
		}
	}
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

/* ---- the image directory (imagedir.c): names in the root ------------------------------------ */

/* The entry of a root name just attached. 0 or -ENOENT. */
static int root_entry(const char *name, struct fuse_entry_param *e)
{
	fuse_ino_t ino;
	int ret;

	memset(e, 0, sizeof(*e));
	pthread_mutex_lock(&pfs.lock);
	ret = pfs_node_lookup(PFS_INO_ROOT, name, &ino);
	if (!ret)
		ret = pfs_node_stat(ino, &e->attr, &e->attr_timeout);
	pthread_mutex_unlock(&pfs.lock);
	e->ino = ino;
	e->generation = 1;
	e->entry_timeout = PFS_DIR_ENTRY_TIMEOUT;   /* only made with an image directory */
	return ret;
}

/* Names of the root only (-EPERM elsewhere), and only with an image directory (-EROFS). */
static int dir_op_check(fuse_ino_t parent, const char *name)
{
	if (parent != PFS_INO_ROOT)
		return -EPERM;
	if (!pfs_dir_active())
		return -EPERM;
	if (!strcmp(name, ".pcache"))
		return -EEXIST;
	return 0;
}

/* A new regular file of the image directory, attached; its entry in e. 0 or -errno. */
static int root_make(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     struct fuse_entry_param *e)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	int ret = dir_op_check(parent, name);

	if (!ret && !S_ISREG(mode))
		ret = -EPERM;
	if (!ret)
		ret = pfs_dir_create(name, mode, ctx->uid, ctx->gid);
	if (!ret)
		ret = root_entry(name, e);
	return ret;
}

/* Valid replies: fuse_reply_create, fuse_reply_err. */
static void pfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	int ret = root_make(req, parent, name, mode, &e);

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	pthread_mutex_lock(&pfs.lock);
	{
		struct pfs_node n;

		ret = pfs_node_decode(e.ino, &n) ? -ENOENT : 0;
		if (!ret && pfs_slot_of(e.ino, &n))
			pfs.slots[n.slot].open_count++;
		else
			ret = -ENOENT;
	}
	pthread_mutex_unlock(&pfs.lock);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	if (pfs.opts->kernel_cache)
		fi->keep_cache = 1;
	else
		fi->direct_io = 1;
	fi->noflush = 1;
	fi->fh = (uint64_t)e.ino | ((fi->flags & (O_SYNC | O_DSYNC)) ? PFS_FH_SYNC : 0);
	pfs_handover_changed();
	if (fuse_reply_create(req, &e, fi) != 0) {
		struct pfs_node n;

		pfs_node_decode(e.ino, &n);
		pthread_mutex_lock(&pfs.lock);
		pfs.slots[n.slot].open_count--;
		pthread_mutex_unlock(&pfs.lock);
		pfs_handover_changed();
	}
}

/* Regular files only (mknod, or create without the create call). Valid replies: fuse_reply_entry, fuse_reply_err. */
static void pfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct fuse_entry_param e;
	int ret = root_make(req, parent, name, mode, &e);

	(void)rdev;
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_entry(req, &e);
}

/* Valid replies: fuse_reply_err. */
static void pfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	int ret = dir_op_check(parent, name);

	if (ret == -EEXIST)
		ret = -EPERM;
	if (!ret)
		ret = pfs_dir_unlink(name);
	fuse_reply_err(req, -ret);
}

/* Valid replies: fuse_reply_err. */
static void pfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		       const char *newname, unsigned int flags)
{
	int ret = dir_op_check(parent, name);

	if (!ret)
		ret = dir_op_check(newparent, newname);
	if (ret == -EEXIST)
		ret = -EPERM;
	if (!ret)
		ret = pfs_dir_rename(name, newname, flags);
	fuse_reply_err(req, -ret);
}

/* Image names are flat file names: no directories, links or symlinks. Valid replies: fuse_reply_err. */
static void pfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent;
	(void)name;
	(void)mode;
	fuse_reply_err(req, EPERM);
}

static void pfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void pfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void pfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EPERM);
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
	.create = pfs_create,
	.mknod = pfs_mknod,
	.unlink = pfs_unlink,
	.rename = pfs_rename,
	.mkdir = pfs_mkdir,
	.rmdir = pfs_rmdir,
	.symlink = pfs_symlink,
	.link = pfs_link,
};
