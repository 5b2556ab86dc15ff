/*
 * cache_dev.c -- the cache device: open/lock/map, format v1, and the crash-safe metadata records
 * (superblock copies, cache_info, key_tail, dirty_tail, image table, segment records).
 *
 * Open takes an flock on the device fd, maps the device through core/pmem.c, reads every
 * metadata slot with pread() (never through the mapping, so poison is -EIO and an unreadable
 * slot just counts as invalid), picks the newest valid copy of each record (format.h, DUAL-SLOT
 * RULE) and bounds-checks every field before anything else sees it. Updates build the record in
 * DRAM and copy it durably into the slot that does not hold the newest valid copy.
 *
 * Invariants (checked on the in-memory state by assert_cd_state() in debug builds):
 *  1. Nothing is written to a device that fails validation (open returns before any store; the
 *     only write an open makes is the format of a blank device when format_if_blank asks), and
 *     a failed open or format removes a file it created.
 *  2. Every store into the mapping goes through cd->pmem (the seam); each update is durable
 *     before the function returns and before the in-memory copy says it happened.
 *  3. An update never overwrites the slot holding the newest valid copy: a torn update leaves
 *     the previous value loadable.
 *  4. Format invalidates the old superblock copies first and writes the new ones last, after
 *     everything they describe is durable: a crash mid-format leaves a blank device (both
 *     superblock slots zero), which format_if_blank formats again.
 *  5. The initial log state after format is key_tail == dirty_tail == (seg 0, off 0, lsn 1),
 *     and the first PCACHE_KSET_MAX_SIZE bytes of segment 0 are zero, so the kset at the tail
 *     is invalid and the log is empty. All segments have generation 0. Format writes both
 *     slots of every record (slot 0 seq 1, slot 1 seq 0, same values).
 *  6. image ids come from cache_info.next_image_id, which is bumped durably before the entry
 *     using the id is written, so an id is never handed out twice, even across a crash.
 *  7. Every used image entry has 0 < id < next_image_id, a unique id and a unique valid name.
 *  8. Both copies of a record are validated at load: a damaged slot (bad CRC, unreadable, or
 *     a valid CRC over bad values in the older copy) is counted and reported by check.
 *
 * Lock order (struct pcache_cache_dev): img_lock -> info_lock; tail_lock and seg_lock are
 * leaves (never held with another). Segment generations are read lock-free (atomic loads).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "pcache/backing.h"
#include "pcache/cache_dev.h"
#include "pcache/util.h"
#include "pmem_i.h"

#define MD_PAGE 4096u
#define NOTES_MAX 64u

/* Bookkeeping of one dual-slot record. */
struct rec_slot {
	uint64_t seq;    /* seq of the newest valid copy */
	uint8_t newest;  /* slot index holding it */
	bool damaged;    /* the other slot was non-blank and invalid at load (not yet rewritten) */
};

struct pcache_cache_dev {
	char *path;
	int fd;
	bool read_only;
	bool created;               /* this open created the file (removed again if it fails) */
	bool locked;                /* the flock is held */
	struct pcache_pmem_map map;
	struct pcache_pmem pmem;    /* the seam in use: map.seam, or what wrap_pmem returned */
	int (*read_fault)(uint64_t off, size_t len, void *arg); /* tests: opts->read_fault */
	void *read_fault_arg;

	/* immutable after open */
	struct pcache_sb_om sb;
	uint32_t seg_count;
	uint64_t seg_size;
	uint64_t seg_base;
	uint64_t md_len;            /* end of the segment table */
	bool sb_damaged[2];         /* superblock copy damaged at load */

	/* findings of the load (written during open and repair only) */
	unsigned int damaged;
	unsigned int note_count;
	char notes[NOTES_MAX][160];

	/* protects info and info_rs; taken after img_lock */
	pthread_mutex_t info_lock;
	struct pcache_cache_info info;
	struct rec_slot info_rs;

	/* protects the two tails and their slots (leaf lock) */
	pthread_mutex_t tail_lock;
	struct pcache_pos key_tail, dirty_tail;
	struct rec_slot key_rs, dirty_rs;

	/* protects the image table copy; taken before info_lock (add bumps next_image_id) */
	pthread_mutex_t img_lock;
	struct pcache_image_ent img[PCACHE_MAX_IMAGES];
	struct rec_slot img_rs[PCACHE_MAX_IMAGES];

	/* protects seg_rs and the writers of seg_gen (leaf lock); seg_gen is read lock-free */
	pthread_mutex_t seg_lock;
	_Atomic uint64_t *seg_gen;
	struct rec_slot *seg_rs;
};

static int seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static void note(struct pcache_cache_dev *cd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(struct pcache_cache_dev *cd, const char *fmt, ...)
{
	va_list ap;

	cd->damaged++;
	if (cd->note_count >= NOTES_MAX)
		return;
	va_start(ap, fmt);
	vsnprintf(cd->notes[cd->note_count++], sizeof(cd->notes[0]), fmt, ap);
	va_end(ap);
}

static bool all_zero(const void *p, size_t len)
{
	const uint8_t *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

static int random_bytes(void *buf, size_t len)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = getrandom((char *)buf + done, len - done, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)n;
	}
	return 0;
}

/* A random (version 4, RFC 4122 variant) UUID. */
static int random_uuid(uint8_t uuid[16])
{
	int rc = random_bytes(uuid, 16);

	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
	return rc;
}

static uint32_t rec_crc(const void *rec, size_t len)
{
	return pcache_crc32c(PCACHE_CRC_SEED, (const uint8_t *)rec + 4, len - 4);
}

/* Every read of the device: the test fault hook first, then pread (or the mcsafe read). */
static int dev_pread(struct pcache_cache_dev *cd, void *buf, size_t len, uint64_t off)
{
	int rc;

	if (cd->read_fault) {
		rc = cd->read_fault(off, len, cd->read_fault_arg);
		if (rc)
			return rc < 0 ? rc : -EIO;
	}
	return pcache_pmem_pread(&cd->map, cd->fd, buf, len, off);
}

/* ---- geometry ----------------------------------------------------------------------------- */

static uint64_t seg_base_for(uint64_t seg_count)
{
	return PCACHE_ALIGN_UP(PCACHE_SEGTAB_OFF + seg_count * 2u * PCACHE_SEG_SLOT_SIZE,
			       (uint64_t)PCACHE_SEG_BASE_ALIGN);
}

int pcache_cache_dev_geometry(uint64_t dev_size, uint64_t seg_size, uint32_t *seg_count,
			      uint64_t *seg_base)
{
	uint64_t n;

	if (!PCACHE_IS_POW2(seg_size) || seg_size < PCACHE_MIN_SEG_SIZE ||
	    seg_size > PCACHE_MAX_SEG_SIZE)
		return -EINVAL;
	if (dev_size < seg_base_for(PCACHE_MIN_SEGS) + PCACHE_MIN_SEGS * seg_size)
		return -ENOSPC;
	n = (dev_size - seg_base_for(0)) / seg_size;
	if (n > PCACHE_MAX_SEGS)
		n = PCACHE_MAX_SEGS;
	while (n > PCACHE_MIN_SEGS && seg_base_for(n) + n * seg_size > dev_size)
		n--;
	*seg_count = (uint32_t)n;
	*seg_base = seg_base_for(n);
	return 0;
}

/* ---- validation of decoded records (shared by load and update) ---------------------------- */

static int info_check(const struct pcache_cache_info *ci, char *why, size_t len)
{
	if (ci->flags & ~PCACHE_INFO_DATA_CRC)
		return seterr(why, len, -EINVAL, "unknown flags 0x%x", ci->flags);
	if (ci->gc_percent > PCACHE_MAX_GC_PERCENT)
		return seterr(why, len, -EINVAL, "gc_percent %u > %u", ci->gc_percent,
			      PCACHE_MAX_GC_PERCENT);
	if (ci->dirty_high > 100)
		return seterr(why, len, -EINVAL, "dirty_high %u > 100", ci->dirty_high);
	if (ci->dirty_low >= ci->dirty_high)
		return seterr(why, len, -EINVAL, "dirty_low %u >= dirty_high %u", ci->dirty_low,
			      ci->dirty_high);
	if (ci->next_image_id == 0)
		return seterr(why, len, -EINVAL, "next_image_id 0");
	return 0;
}

static int pos_check(const struct pcache_cache_dev *cd, const struct pcache_pos *p, char *why,
		     size_t len)
{
	if (p->seg >= cd->seg_count)
		return seterr(why, len, -EINVAL, "segment %u >= seg_count %u", p->seg, cd->seg_count);
	if (p->off >= cd->seg_size || p->off % 8)
		return seterr(why, len, -EINVAL, "offset %u outside segment or not 8-aligned", p->off);
	if (p->lsn == 0)
		return seterr(why, len, -EINVAL, "lsn 0");
	return 0;
}

bool pcache_image_name_valid(const char *name)
{
	size_t n = strnlen(name, PCACHE_NAME_MAX + 1), i;

	if (n == 0 || n > PCACHE_NAME_MAX)
		return false;
	if (!strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, ".pcache"))
		return false;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '/' || c < 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

static int image_check(const struct pcache_image_ent *e, char *why, size_t len)
{
	size_t plen;

	if (!pcache_image_name_valid(e->name))
		return seterr(why, len, -EINVAL, "invalid name");
	plen = strnlen(e->path, PCACHE_PATH_MAX + 1);
	if (plen == 0 || plen > PCACHE_PATH_MAX)
		return seterr(why, len, -EINVAL, "path empty or too long");
	if (e->state != PCACHE_IMAGE_ATTACHED && e->state != PCACHE_IMAGE_DETACHED)
		return seterr(why, len, -EINVAL, "state %u invalid", e->state);
	if (!PCACHE_IS_POW2(e->lbs) || e->lbs < 512 || e->lbs > 65536)
		return seterr(why, len, -EINVAL, "logical block size %u invalid", e->lbs);
	if (e->size % 512)
		return seterr(why, len, -EINVAL, "size %" PRIu64 " not a multiple of 512", e->size);
	if (e->cache_mode > PCACHE_MODE_WRITEAROUND)
		return seterr(why, len, -EINVAL, "cache mode %u invalid", e->cache_mode);
	if (e->file_mode & ~07777u)
		return seterr(why, len, -EINVAL, "file mode 0%o invalid", e->file_mode);
	return 0;
}

/* ---- encoding ----------------------------------------------------------------------------- */

static void info_encode(struct pcache_cache_info_om *om, const struct pcache_cache_info *ci)
{
	memset(om, 0, sizeof(*om));
	om->flags = ci->flags;
	om->gc_percent = ci->gc_percent;
	om->dirty_high = ci->dirty_high;
	om->dirty_low = ci->dirty_low;
	om->wb_rate = ci->wb_rate;
	om->next_image_id = ci->next_image_id;
}

static void info_decode(struct pcache_cache_info *ci, const struct pcache_cache_info_om *om)
{
	ci->flags = pcache_le32(&om->flags);
	ci->gc_percent = pcache_le32(&om->gc_percent);
	ci->dirty_high = pcache_le32(&om->dirty_high);
	ci->dirty_low = pcache_le32(&om->dirty_low);
	ci->wb_rate = pcache_le64(&om->wb_rate);
	ci->next_image_id = pcache_le32(&om->next_image_id);
}

static void tail_encode(struct pcache_tail_om *om, const struct pcache_pos *p)
{
	memset(om, 0, sizeof(*om));
	om->seg = p->seg;
	om->off = p->off;
	om->lsn = p->lsn;
}

static void image_encode(struct pcache_image_om *om, const struct pcache_image_ent *e)
{
	memset(om, 0, sizeof(*om));
	om->id = e->id;
	if (!e->id)
		return; /* a FREE record: id 0, state FREE, everything else zero */
	om->state = e->state;
	memcpy(om->uuid, e->uuid, sizeof(om->uuid));
	om->size = e->size;
	om->lbs = e->lbs;
	om->cache_mode = e->cache_mode;
	om->file_mode = e->file_mode;
	om->uid = e->uid;
	om->gid = e->gid;
	om->wb_lsn = e->wb_lsn;
	om->wb_time = e->wb_time;
	memcpy(om->name, e->name, strnlen(e->name, PCACHE_NAME_MAX));
	memcpy(om->path, e->path, strnlen(e->path, PCACHE_PATH_MAX));
	if (e->ident[0]) {
		om->flags = PCACHE_IMAGE_F_IDENT;
		memcpy(om->ident, e->ident, strnlen(e->ident, PCACHE_IDENT_LEN - 1));
	}
}

/* Decode a CRC-valid image record; 0 or -EUCLEAN with why. */
static int image_decode(struct pcache_image_ent *e, uint32_t slot, const struct pcache_image_om *om,
			char *why, size_t len)
{
	uint32_t flags;

	memset(e, 0, sizeof(*e));
	e->slot = slot;
	e->id = pcache_le32(&om->id);
	e->state = pcache_le32(&om->state);
	if (!e->id) {
		if (e->state != PCACHE_IMAGE_FREE)
			return seterr(why, len, -EUCLEAN, "id 0 with state %u", e->state);
		return 0;
	}
	if (!memchr(om->name, 0, sizeof(om->name)))
		return seterr(why, len, -EUCLEAN, "name not NUL-terminated");
	flags = pcache_le32(&om->flags);
	if (flags & ~PCACHE_IMAGE_F_IDENT)
		return seterr(why, len, -EUCLEAN, "unknown flags 0x%x", flags);
	if (!memchr(om->path, 0, sizeof(om->path)))
		return seterr(why, len, -EUCLEAN, flags ? "path not NUL-terminated" :
			      "path longer than %u bytes (an entry from before identities): "
			      "not supported", PCACHE_PATH_MAX);
	if ((flags & PCACHE_IMAGE_F_IDENT) && !memchr(om->ident, 0, sizeof(om->ident)))
		return seterr(why, len, -EUCLEAN, "identity not NUL-terminated");
	memcpy(e->uuid, om->uuid, sizeof(e->uuid));
	e->size = pcache_le64(&om->size);
	e->lbs = pcache_le32(&om->lbs);
	e->cache_mode = pcache_le32(&om->cache_mode);
	e->file_mode = pcache_le32(&om->file_mode);
	e->uid = pcache_le32(&om->uid);
	e->gid = pcache_le32(&om->gid);
	e->wb_lsn = pcache_le64(&om->wb_lsn);
	e->wb_time = pcache_le64(&om->wb_time);
	memcpy(e->name, om->name, PCACHE_NAME_MAX);
	memcpy(e->path, om->path, PCACHE_PATH_MAX);
	if (flags & PCACHE_IMAGE_F_IDENT)
		memcpy(e->ident, om->ident, PCACHE_IDENT_LEN - 1);
	return image_check(e, why, len) ? -EUCLEAN : 0;
}

/* ---- dual-slot write ---------------------------------------------------------------------- */

/*
 * Fill rec's header (type, len, seq = newest + 1, CRC) and copy it durably into the slot that
 * does not hold the newest valid copy; then make that slot the newest.
 */
static void rec_commit(struct pcache_cache_dev *cd, uint64_t off0, uint64_t off1,
		       struct rec_slot *rs, void *rec, uint16_t type, uint16_t len)
{
	struct pcache_rec_hdr_om *h = rec;
	unsigned int target = rs->newest ^ 1u;

	h->type = type;
	h->len = len;
	h->seq = rs->seq + 1; /* wraps at 2^64: pcache_seq_after() compares by signed difference */
	h->crc = rec_crc(rec, len);
	/* durable on return (no NODRAIN): the new copy is on media before the in-memory newest
	 * index moves to it and before the caller acts on the update */
	cd->pmem.ops->memcpy(cd->pmem.ctx, (char *)cd->map.base + (target ? off1 : off0), rec, len, 0);
	rs->newest = (uint8_t)target;
	rs->seq = h->seq;
	rs->damaged = false;
}

/* ---- loading ------------------------------------------------------------------------------ */

enum slot_state { SLOT_VALID, SLOT_BLANK, SLOT_BAD };

/* The metadata area as read with pread(), and which 4 KiB pages could not be read. */
struct md_buf {
	uint8_t *buf;
	uint64_t len;
	bool *bad_page;
};

static bool md_unreadable(const struct md_buf *md, uint64_t off, uint64_t len)
{
	uint64_t p;

	for (p = off / MD_PAGE; p <= (off + len - 1) / MD_PAGE; p++)
		if (md->bad_page[p])
			return true;
	return false;
}

static enum slot_state slot_classify(const struct md_buf *md, uint64_t off, uint16_t type,
				     uint16_t len, const char **why)
{
	const uint8_t *p = md->buf + off;
	const struct pcache_rec_hdr_om *h = (const void *)p;

	if (md_unreadable(md, off, len)) {
		*why = "unreadable";
		return SLOT_BAD;
	}
	if (all_zero(p, len)) {
		*why = "blank";
		return SLOT_BLANK;
	}
	if (pcache_le16(&h->type) != type) {
		*why = "wrong record type";
		return SLOT_BAD;
	}
	if (pcache_le16(&h->len) != len) {
		*why = "bad length";
		return SLOT_BAD;
	}
	if (pcache_le32(&h->crc) != rec_crc(p, len)) {
		*why = "bad CRC";
		return SLOT_BAD;
	}
	*why = "valid";
	return SLOT_VALID;
}

/*
 * Pick the newest valid slot of a record at off0/off1; fills rs. Returns the slot index, or
 * -EUCLEAN with "<name>: both slots invalid (...)" in err.
 */
static int rec_pick(struct pcache_cache_dev *cd, const struct md_buf *md, const char *name,
		    uint64_t off0, uint64_t off1, uint16_t type, uint16_t len, struct rec_slot *rs,
		    char *err, size_t errlen)
{
	const char *why[2];
	enum slot_state st[2];
	uint64_t seq[2];
	int pick;

	st[0] = slot_classify(md, off0, type, len, &why[0]);
	st[1] = slot_classify(md, off1, type, len, &why[1]);
	if (st[0] != SLOT_VALID && st[1] != SLOT_VALID)
		return seterr(err, errlen, -EUCLEAN, "%s: both slots invalid (slot 0: %s, slot 1: %s)",
			      name, why[0], why[1]);
	seq[0] = pcache_le64(md->buf + off0 + 8);
	seq[1] = pcache_le64(md->buf + off1 + 8);
	if (st[0] == SLOT_VALID && st[1] == SLOT_VALID)
		pick = pcache_seq_after(seq[1], seq[0]) ? 1 : 0;
	else
		pick = st[0] == SLOT_VALID ? 0 : 1;
	rs->newest = (uint8_t)pick;
	rs->seq = seq[pick];
	rs->damaged = st[pick ^ 1] == SLOT_BAD;
	if (rs->damaged)
		note(cd, "%s slot %d: %s; using slot %d (seq %" PRIu64 ")", name, pick ^ 1,
		     why[pick ^ 1], pick, seq[pick]);
	return pick;
}

/*
 * The slot not picked, when it holds a CRC-valid copy (so its fields can be checked too: a
 * fallback must never land on bad values); NULL otherwise.
 */
static const void *rec_other(const struct md_buf *md, uint64_t off0, uint64_t off1, int pick,
			     uint16_t type, uint16_t len)
{
	uint64_t off = pick ? off0 : off1;
	const char *why;

	return slot_classify(md, off, type, len, &why) == SLOT_VALID ? md->buf + off : NULL;
}

/* The older copy of a record has bad values: count it as a damaged slot (repair rewrites it). */
static void rec_bad_other(struct pcache_cache_dev *cd, struct rec_slot *rs, const char *name,
			  const char *why)
{
	rs->damaged = true;
	note(cd, "%s slot %d: valid CRC but %s; using slot %d", name, rs->newest ^ 1, why, rs->newest);
}

static int md_read(struct pcache_cache_dev *cd, struct md_buf *md, uint64_t len)
{
	uint64_t p, pages = (len + MD_PAGE - 1) / MD_PAGE;
	int rc;

	md->len = len;
	md->buf = calloc(1, pages * MD_PAGE);
	md->bad_page = calloc(pages, sizeof(bool));
	if (!md->buf || !md->bad_page)
		return -ENOMEM;
	rc = dev_pread(cd, md->buf, len, 0);
	if (rc == 0)
		return 0;
	/* a media error somewhere: read page by page, mark the unreadable ones */
	for (p = 0; p < pages; p++) {
		uint64_t n = PCACHE_MIN((uint64_t)MD_PAGE, len - p * MD_PAGE);

		if (dev_pread(cd, md->buf + p * MD_PAGE, n, p * MD_PAGE)) {
			memset(md->buf + p * MD_PAGE, 0, n);
			md->bad_page[p] = true;
		}
	}
	return 0;
}

static void md_free(struct md_buf *md)
{
	free(md->buf);
	free(md->bad_page);
	md->buf = NULL;
	md->bad_page = NULL;
}

enum sb_state { SB_VALID, SB_BLANK, SB_FOREIGN, SB_BAD, SB_NEWER };

static enum sb_state sb_classify(const uint8_t *slot, bool unreadable, const char **why)
{
	const struct pcache_sb_om *sb = (const void *)slot;
	uint16_t len = pcache_le16(&sb->hdr.len);

	if (unreadable) {
		*why = "unreadable";
		return SB_BAD;
	}
	if (all_zero(slot, PCACHE_SB_SLOT_SIZE)) {
		*why = "blank";
		return SB_BLANK;
	}
	if (pcache_le64(&sb->magic) != PCACHE_SB_MAGIC) {
		*why = "bad magic";
		return SB_FOREIGN;
	}
	/* a newer version may have a longer record: check its CRC over its own length first */
	if (len < sizeof(struct pcache_rec_hdr_om) + 16 || len > PCACHE_SB_SLOT_SIZE) {
		*why = "bad length";
		return SB_BAD;
	}
	if (pcache_le32(&sb->hdr.crc) != rec_crc(slot, len)) {
		*why = "bad CRC";
		return SB_BAD;
	}
	if (pcache_le32(&sb->version) > PCACHE_FORMAT_VERSION) {
		*why = "newer version";
		return SB_NEWER;
	}
	if (pcache_le16(&sb->hdr.type) != PCACHE_REC_SB || len != sizeof(struct pcache_sb_om)) {
		*why = "bad header";
		return SB_BAD;
	}
	*why = "valid";
	return SB_VALID;
}

/* Validate the chosen superblock against the device; fills the geometry. */
static int sb_validate(struct pcache_cache_dev *cd, const struct pcache_sb_om *sb, char *err,
		       size_t errlen)
{
	uint32_t version = pcache_le32(&sb->version), incompat = pcache_le32(&sb->incompat);
	uint32_t count = pcache_le32(&sb->seg_count), maxi = pcache_le32(&sb->max_images);
	uint64_t size = pcache_le64(&sb->seg_size), base = pcache_le64(&sb->seg_base);
	uint64_t dev = pcache_le64(&sb->dev_size);

	if (version == 0)
		return seterr(err, errlen, -EUCLEAN, "superblock: format version 0 invalid");
	if (incompat & ~PCACHE_INCOMPAT_SUPPORTED)
		return seterr(err, errlen, -EPROTONOSUPPORT,
			      "superblock: unknown incompatible features 0x%x (newer pcachefs?)",
			      incompat & ~PCACHE_INCOMPAT_SUPPORTED);
	if (!PCACHE_IS_POW2(size) || size < PCACHE_MIN_SEG_SIZE || size > PCACHE_MAX_SEG_SIZE)
		return seterr(err, errlen, -EUCLEAN, "superblock: segment size %" PRIu64 " invalid", size);
	if (count < PCACHE_MIN_SEGS || count > PCACHE_MAX_SEGS)
		return seterr(err, errlen, -EUCLEAN, "superblock: segment count %u out of range", count);
	if (maxi != PCACHE_MAX_IMAGES)
		return seterr(err, errlen, -EUCLEAN, "superblock: max_images %u (expected %u)", maxi,
			      PCACHE_MAX_IMAGES);
	if (base % PCACHE_SEG_BASE_ALIGN || base < PCACHE_SEGTAB_OFF + (uint64_t)count * 2u *
	    PCACHE_SEG_SLOT_SIZE)
		return seterr(err, errlen, -EUCLEAN, "superblock: segment base %" PRIu64 " invalid", base);
	if (dev > cd->map.size)
		return seterr(err, errlen, -EUCLEAN,
			      "superblock: device is %" PRIu64 " bytes, smaller than at format (%" PRIu64 ")",
			      cd->map.size, dev);
	if (base > dev || (dev - base) / size < count)
		return seterr(err, errlen, -EUCLEAN,
			      "superblock: %u segments of %" PRIu64 " bytes at %" PRIu64
			      " do not fit in %" PRIu64 " bytes", count, size, base, dev);
	cd->seg_count = count;
	cd->seg_size = size;
	cd->seg_base = base;
	cd->md_len = PCACHE_SEGTAB_OFF + (uint64_t)count * 2u * PCACHE_SEG_SLOT_SIZE;
	return 0;
}

static int sb_load(struct pcache_cache_dev *cd, const uint8_t *slots, const bool unreadable[2],
		   char *err, size_t errlen)
{
	const char *why[2];
	enum sb_state st[2];
	int pick, i;

	for (i = 0; i < 2; i++)
		st[i] = sb_classify(slots + i * PCACHE_SB_SLOT_SIZE, unreadable[i], &why[i]);
	for (i = 0; i < 2; i++)
		if (st[i] == SB_NEWER)
			return seterr(err, errlen, -EPROTONOSUPPORT,
				      "superblock: format version %u is newer than this pcachefs supports (%u)",
				      pcache_le32(slots + i * PCACHE_SB_SLOT_SIZE + 24),
				      PCACHE_FORMAT_VERSION);
	if (st[0] != SB_VALID && st[1] != SB_VALID) {
		if (st[0] != SB_BAD && st[1] != SB_BAD)
			return seterr(err, errlen, -EMEDIUMTYPE,
				      "superblock: bad magic (not a pcachefs cache device; use 'pcachectl format')");
		return seterr(err, errlen, -EUCLEAN, "superblock: both copies invalid (copy 0: %s, copy 1: %s)",
			      why[0], why[1]);
	}
	if (st[0] == SB_VALID && st[1] == SB_VALID &&
	    memcmp(slots, slots + PCACHE_SB_SLOT_SIZE, sizeof(struct pcache_sb_om)))
		return seterr(err, errlen, -EUCLEAN, "superblock: the two copies differ");
	pick = st[0] == SB_VALID ? 0 : 1;
	memcpy(&cd->sb, slots + pick * PCACHE_SB_SLOT_SIZE, sizeof(cd->sb));
	for (i = 0; i < 2; i++) {
		cd->sb_damaged[i] = st[i] != SB_VALID;
		if (st[i] != SB_VALID)
			note(cd, "superblock copy %d: %s; using copy %d", i, why[i], pick);
	}
	return sb_validate(cd, &cd->sb, err, errlen);
}

static int records_load(struct pcache_cache_dev *cd, const struct md_buf *md, char *err,
			size_t errlen)
{
	char name[48], why[96];
	const void *other;
	uint32_t i, j;
	int k, rc;

	k = rec_pick(cd, md, "cache_info", PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE,
		     PCACHE_REC_INFO, sizeof(struct pcache_cache_info_om), &cd->info_rs, err, errlen);
	if (k < 0)
		return k;
	info_decode(&cd->info, (const void *)(md->buf + PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE));
	if (info_check(&cd->info, why, sizeof(why)))
		return seterr(err, errlen, -EUCLEAN, "cache_info: %s", why);
	other = rec_other(md, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, k,
			  PCACHE_REC_INFO, sizeof(struct pcache_cache_info_om));
	if (other) {
		struct pcache_cache_info oci;

		info_decode(&oci, other);
		if (info_check(&oci, why, sizeof(why)))
			rec_bad_other(cd, &cd->info_rs, "cache_info", why);
	}

	for (i = 0; i < 2; i++) {
		struct pcache_pos *p = i ? &cd->dirty_tail : &cd->key_tail;
		uint64_t o0 = i ? PCACHE_DIRTY_TAIL_SLOT(0) : PCACHE_KEY_TAIL_SLOT(0);
		uint64_t o1 = i ? PCACHE_DIRTY_TAIL_SLOT(1) : PCACHE_KEY_TAIL_SLOT(1);
		const char *tn = i ? "dirty_tail" : "key_tail";
		const struct pcache_tail_om *om;

		k = rec_pick(cd, md, tn, o0, o1, i ? PCACHE_REC_DIRTY_TAIL : PCACHE_REC_KEY_TAIL,
			     sizeof(struct pcache_tail_om), i ? &cd->dirty_rs : &cd->key_rs, err, errlen);
		if (k < 0)
			return k;
		om = (const void *)(md->buf + (k ? o1 : o0));
		p->seg = pcache_le32(&om->seg);
		p->off = pcache_le32(&om->off);
		p->lsn = pcache_le64(&om->lsn);
		if (pos_check(cd, p, why, sizeof(why)))
			return seterr(err, errlen, -EUCLEAN, "%s: %s", tn, why);
		other = rec_other(md, o0, o1, k, i ? PCACHE_REC_DIRTY_TAIL : PCACHE_REC_KEY_TAIL,
				  sizeof(struct pcache_tail_om));
		if (other) {
			struct pcache_pos op;

			om = other;
			op.seg = pcache_le32(&om->seg);
			op.off = pcache_le32(&om->off);
			op.lsn = pcache_le64(&om->lsn);
			if (pos_check(cd, &op, why, sizeof(why)))
				rec_bad_other(cd, i ? &cd->dirty_rs : &cd->key_rs, tn, why);
		}
	}

	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		struct pcache_image_ent *e = &cd->img[i];

		snprintf(name, sizeof(name), "image %u", i);
		k = rec_pick(cd, md, name, PCACHE_IMAGE_SLOT(i, 0), PCACHE_IMAGE_SLOT(i, 1),
			     PCACHE_REC_IMAGE, sizeof(struct pcache_image_om), &cd->img_rs[i], err, errlen);
		if (k < 0)
			return k;
		rc = image_decode(e, i, (const void *)(md->buf + PCACHE_IMAGE_SLOT(i, (uint32_t)k)), why,
				  sizeof(why));
		if (rc)
			return seterr(err, errlen, -EUCLEAN, "%s: %s", name, why);
		other = rec_other(md, PCACHE_IMAGE_SLOT(i, 0), PCACHE_IMAGE_SLOT(i, 1), k,
				  PCACHE_REC_IMAGE, sizeof(struct pcache_image_om));
		if (other) {
			struct pcache_image_ent *oe = malloc(sizeof(*oe));

			if (!oe)
				return seterr(err, errlen, -ENOMEM, "%s: out of memory", name);
			rc = image_decode(oe, i, other, why, sizeof(why));
			if (!rc && oe->id >= cd->info.next_image_id) {
				snprintf(why, sizeof(why), "id %u >= next_image_id %u", oe->id,
					 cd->info.next_image_id);
				rc = -EUCLEAN;
			}
			if (rc)
				rec_bad_other(cd, &cd->img_rs[i], name, why);
			free(oe);
		}
		if (!e->id)
			continue;
		if (e->id >= cd->info.next_image_id) {
			if (!cd->info_rs.damaged)
				return seterr(err, errlen, -EUCLEAN, "%s: id %u >= next_image_id %u",
					      name, e->id, cd->info.next_image_id);
			/*
			 * cache_info fell back to its other copy, which may predate the last image
			 * add (the id bump is durable before the entry): take the ids in the
			 * table; the repair of the damaged info slot persists the raised value.
			 */
			cd->info.next_image_id = e->id + 1;
		}
		for (j = 0; j < i; j++) {
			if (cd->img[j].id == e->id)
				return seterr(err, errlen, -EUCLEAN, "%s: id %u also used by image %u", name,
					      e->id, j);
			if (cd->img[j].id && !strcmp(cd->img[j].name, e->name))
				return seterr(err, errlen, -EUCLEAN, "%s: name also used by image %u", name, j);
		}
	}

	cd->seg_gen = calloc(cd->seg_count, sizeof(*cd->seg_gen));
	cd->seg_rs = calloc(cd->seg_count, sizeof(*cd->seg_rs));
	if (!cd->seg_gen || !cd->seg_rs)
		return seterr(err, errlen, -ENOMEM, "segment table: out of memory");
	for (i = 0; i < cd->seg_count; i++) {
		const struct pcache_seg_om *om;

		snprintf(name, sizeof(name), "segment %u record", i);
		k = rec_pick(cd, md, name, PCACHE_SEG_SLOT(i, 0), PCACHE_SEG_SLOT(i, 1), PCACHE_REC_SEG,
			     sizeof(struct pcache_seg_om), &cd->seg_rs[i], err, errlen);
		if (k < 0)
			return k;
		om = (const void *)(md->buf + PCACHE_SEG_SLOT(i, (uint32_t)k));
		atomic_init(&cd->seg_gen[i], pcache_le64(&om->gen));
	}
	return 0;
}

/* ---- format ------------------------------------------------------------------------------- */

static int dev_format(struct pcache_cache_dev *cd, const struct pcache_format_opts *fo, char *err,
		      size_t errlen)
{
	const struct pcache_pmem *pm = &cd->pmem;
	uint64_t seg_size = fo && fo->seg_size ? fo->seg_size : PCACHE_DEFAULT_SEG_SIZE;
	uint8_t *base = cd->map.base;
	struct pcache_sb_om sb;
	struct pcache_cache_info_om info;
	struct pcache_cache_info ci;
	struct pcache_tail_om tail;
	struct pcache_image_om img;
	struct pcache_seg_om *segs;
	struct pcache_pos pos = { .seg = 0, .off = 0, .lsn = 1 };
	uint64_t seg_base, tab_len;
	uint32_t count, i, k;
	int rc;

	if (cd->read_only)
		return seterr(err, errlen, -EROFS, "format: device opened read-only");
	rc = pcache_cache_dev_geometry(cd->map.size, seg_size, &count, &seg_base);
	if (rc == -EINVAL)
		return seterr(err, errlen, rc,
			      "format: segment size %" PRIu64 " invalid (power of two, 1 MiB .. 1 GiB)",
			      seg_size);
	if (rc)
		return seterr(err, errlen, rc,
			      "device: too small (%" PRIu64 " bytes; %u segments of %" PRIu64
			      " bytes need %" PRIu64 ")", cd->map.size, PCACHE_MIN_SEGS, seg_size,
			      seg_base_for(PCACHE_MIN_SEGS) + PCACHE_MIN_SEGS * seg_size);
	ci = (struct pcache_cache_info){
		.flags = fo && fo->data_crc ? PCACHE_INFO_DATA_CRC : 0,
		.gc_percent = fo && fo->set_gc_percent ? fo->gc_percent : PCACHE_DEFAULT_GC_PERCENT,
		.dirty_high = PCACHE_DEFAULT_DIRTY_HIGH,
		.dirty_low = PCACHE_DEFAULT_DIRTY_LOW,
		.wb_rate = 0,
		.next_image_id = 1,
	};
	if (ci.gc_percent > PCACHE_MAX_GC_PERCENT)
		return seterr(err, errlen, -EINVAL, "format: gc_percent %u > %u", ci.gc_percent,
			      PCACHE_MAX_GC_PERCENT);
	tab_len = (uint64_t)count * 2u * PCACHE_SEG_SLOT_SIZE;
	segs = calloc(1, tab_len);
	if (!segs)
		return seterr(err, errlen, -ENOMEM, "format: out of memory");

	/* 1. invalidate the old superblock copies first: from here a crash leaves a blank device */
	pm->ops->memset(pm->ctx, base + PCACHE_SB_OFF, 0, 2 * PCACHE_SB_SLOT_SIZE, 0);

	/* 2. zero the metadata area and the first kset slot of segment 0 (the empty log, inv. 5) */
	pm->ops->memset(pm->ctx, base + PCACHE_INFO_OFF, 0, seg_base - PCACHE_INFO_OFF,
			PCACHE_PM_NODRAIN);
	pm->ops->memset(pm->ctx, base + seg_base, 0, PCACHE_KSET_MAX_SIZE, PCACHE_PM_NODRAIN);

	/*
	 * 3. every record in both slots: slot 0 with seq 1 (newest), slot 1 the same values with
	 * seq 0, so a fresh device survives the loss of any one slot
	 */
	info_encode(&info, &ci);
	tail_encode(&tail, &pos);
	memset(&img, 0, sizeof(img));
	for (k = 0; k < 2; k++) {
		uint64_t seq = 1 - k;

		info.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_INFO, .len = sizeof(info), .seq = seq };
		info.hdr.crc = rec_crc(&info, sizeof(info));
		pm->ops->memcpy(pm->ctx, base + PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE, &info,
				sizeof(info), PCACHE_PM_NODRAIN);

		tail.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_KEY_TAIL, .len = sizeof(tail), .seq = seq };
		tail.hdr.crc = rec_crc(&tail, sizeof(tail));
		pm->ops->memcpy(pm->ctx, base + PCACHE_KEY_TAIL_SLOT(k), &tail, sizeof(tail),
				PCACHE_PM_NODRAIN);
		tail.hdr.type = PCACHE_REC_DIRTY_TAIL;
		tail.hdr.crc = rec_crc(&tail, sizeof(tail));
		pm->ops->memcpy(pm->ctx, base + PCACHE_DIRTY_TAIL_SLOT(k), &tail, sizeof(tail),
				PCACHE_PM_NODRAIN);

		img.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_IMAGE, .len = sizeof(img), .seq = seq };
		img.hdr.crc = rec_crc(&img, sizeof(img));
		for (i = 0; i < PCACHE_MAX_IMAGES; i++)
			pm->ops->memcpy(pm->ctx, base + PCACHE_IMAGE_SLOT(i, k), &img, sizeof(img),
					PCACHE_PM_NODRAIN);

		for (i = 0; i < count; i++) {
			struct pcache_seg_om *sg = &segs[2 * i + k];

			sg->hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_SEG, .len = sizeof(*sg), .seq = seq };
			sg->hdr.crc = rec_crc(sg, sizeof(*sg));
		}
	}
	pm->ops->memcpy(pm->ctx, base + PCACHE_SEGTAB_OFF, segs, tab_len, PCACHE_PM_NODRAIN);
	free(segs);
	/* orders every zeroing and record above before the superblock that makes them live */
	pm->ops->drain(pm->ctx);

	/* 4. the superblock copies, last: they are the commit record of the format */
	memset(&sb, 0, sizeof(sb));
	sb.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_SB, .len = sizeof(sb), .seq = 0 };
	sb.magic = PCACHE_SB_MAGIC;
	sb.version = PCACHE_FORMAT_VERSION;
	sb.incompat = 0;
	sb.compat = 0;
	sb.seg_count = count;
	sb.seg_size = seg_size;
	sb.seg_base = seg_base;
	sb.dev_size = cd->map.size;
	sb.max_images = PCACHE_MAX_IMAGES;
	rc = random_uuid(sb.uuid);
	if (rc)
		return seterr(err, errlen, rc, "format: getrandom: %s", strerror(-rc));
	sb.hdr.crc = rec_crc(&sb, sizeof(sb));
	/* durable on return: copy 0 is complete before copy 1 is touched, so one always survives */
	pm->ops->memcpy(pm->ctx, base + PCACHE_SB_OFF, &sb, sizeof(sb), 0);
	pm->ops->memcpy(pm->ctx, base + PCACHE_SB_OFF + PCACHE_SB_SLOT_SIZE, &sb, sizeof(sb), 0);
	return 0;
}

/*
 * Debug check of invariants 3, 5 (tails in range) and 7 on the in-memory state (values there
 * came from validated media or validated updates; a failure is a bug in this file). Takes
 * img_lock, then info_lock and tail_lock as the lock order allows.
 */
static void assert_cd_state(struct pcache_cache_dev *cd)
{
#ifndef NDEBUG
	uint32_t i, j;

	pthread_mutex_lock(&cd->img_lock);
	pthread_mutex_lock(&cd->info_lock);
	assert(cd->info_rs.newest <= 1 && !info_check(&cd->info, NULL, 0));
	for (i = 0; i < PCACHE_MAX_IMAGES; i++) {
		assert(cd->img_rs[i].newest <= 1);
		if (!cd->img[i].id)
			continue;
		assert(cd->img[i].slot == i && cd->img[i].id < cd->info.next_image_id);
		assert(pcache_image_name_valid(cd->img[i].name));
		for (j = 0; j < i; j++)
			assert(cd->img[j].id != cd->img[i].id &&
			       (!cd->img[j].id || strcmp(cd->img[j].name, cd->img[i].name)));
	}
	pthread_mutex_unlock(&cd->info_lock);
	pthread_mutex_unlock(&cd->img_lock);
	pthread_mutex_lock(&cd->tail_lock);
	assert(!pos_check(cd, &cd->key_tail, NULL, 0) && !pos_check(cd, &cd->dirty_tail, NULL, 0));
	pthread_mutex_unlock(&cd->tail_lock);
#else
	(void)cd;
#endif
}

/* ---- open / close ------------------------------------------------------------------------- */

/*
 * A failed open or format removes the file it created (only while holding the lock: once we
 * let go, the path may be someone else's).
 */
static void dev_uncreate(struct pcache_cache_dev *cd)
{
	if (cd->created && cd->locked && cd->fd >= 0)
		unlink(cd->path);
	cd->created = false;
}

static void dev_detach(struct pcache_cache_dev *cd)
{
	pcache_pmem_map_close(&cd->map);
	if (cd->fd >= 0)
		close(cd->fd); /* releases the flock */
	cd->fd = -1;
}

static void dev_free(struct pcache_cache_dev *cd)
{
	if (!cd)
		return;
	dev_detach(cd);
	free(cd->seg_gen);
	free(cd->seg_rs);
	free(cd->path);
	pthread_mutex_destroy(&cd->info_lock);
	pthread_mutex_destroy(&cd->tail_lock);
	pthread_mutex_destroy(&cd->img_lock);
	pthread_mutex_destroy(&cd->seg_lock);
	free(cd);
}

static struct pcache_cache_dev *dev_alloc(const char *path)
{
	struct pcache_cache_dev *cd = calloc(1, sizeof(*cd));

	if (!cd)
		return NULL;
	cd->fd = -1;
	cd->path = strdup(path);
	pthread_mutex_init(&cd->info_lock, NULL);
	pthread_mutex_init(&cd->tail_lock, NULL);
	pthread_mutex_init(&cd->img_lock, NULL);
	pthread_mutex_init(&cd->seg_lock, NULL);
	if (!cd->path) {
		dev_free(cd);
		return NULL;
	}
	return cd;
}

/* Open the fd (creating a missing or empty regular file at create_size), lock, map. */
static int dev_attach(struct pcache_cache_dev *cd, uint64_t create_size, bool read_only,
		      bool no_lock, char *err, size_t errlen)
{
	char holder[128];
	struct stat st;
	int rc;

	cd->read_only = read_only;
	cd->fd = open(cd->path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (cd->fd < 0 && errno == ENOENT && create_size && !read_only) {
		cd->fd = open(cd->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (cd->fd >= 0)
			cd->created = true;
		else if (errno == EEXIST) /* created by someone else meanwhile */
			cd->fd = open(cd->path, O_RDWR | O_CLOEXEC);
	}
	if (cd->fd < 0)
		return seterr(err, errlen, -errno, "open %s: %s", cd->path, strerror(errno));
	cd->locked = !no_lock && !flock(cd->fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB);
	if (!no_lock && !cd->locked) {
		rc = -errno;
		if (rc == -EWOULDBLOCK) {
			pcache_flock_holder(cd->fd, holder, sizeof(holder));
			rc = seterr(err, errlen, -EBUSY, "%s: locked by %s", cd->path, holder);
		} else {
			rc = seterr(err, errlen, rc, "lock %s: %s", cd->path, strerror(-rc));
		}
		goto out_close;
	}
	if (fstat(cd->fd, &st)) {
		rc = seterr(err, errlen, -errno, "stat %s: %s", cd->path, strerror(errno));
		goto out_close;
	}
	if (S_ISREG(st.st_mode) && st.st_size == 0 && create_size && !read_only &&
	    ftruncate(cd->fd, (off_t)create_size)) {
		rc = seterr(err, errlen, -errno, "create %s: %s", cd->path, strerror(errno));
		goto out_close;
	}
	if (S_ISREG(st.st_mode) && st.st_size == 0 && !(create_size && !read_only)) {
		rc = seterr(err, errlen, -ENOSPC, "device: %s is empty", cd->path);
		goto out_close;
	}
	rc = pcache_pmem_map_open(&cd->map, cd->fd, read_only, err, errlen);
	if (rc)
		goto out_close;
	cd->pmem = cd->map.seam;
	return 0;

out_close:
	dev_uncreate(cd);
	close(cd->fd);
	cd->fd = -1;
	return rc;
}

/*
 * The superblock area is zero: is the whole device blank, or does it hold something else whose
 * first 8 KiB happen to be zero (a wiped header, a partial dd)? Refused: anything libblkid
 * recognises (file systems, LVM, RAID, swap, LUKS, ZFS, partition tables), and any non-zero
 * byte in [8 KiB, 1 MiB) or in the last MiB (a backup GPT, RAID metadata at the end), unless
 * the device starts with what a pcachefs format interrupted before its superblock leaves (a
 * valid cache_info record at 8 KiB). 0 blank, -ENOTEMPTY with the reason, -errno.
 */
#define PCACHE_BLANK_SCAN (1u << 20)

static int dev_scan_zero(struct pcache_cache_dev *cd, uint8_t *buf, uint64_t off, uint64_t len,
			 bool *zero)
{
	int rc = dev_pread(cd, buf, len, off);

	*zero = !rc && all_zero(buf, len);
	return rc;
}

static int dev_check_blank(struct pcache_cache_dev *cd, char *err, size_t errlen)
{
	const struct pcache_rec_hdr_om *h;
	uint64_t size = cd->map.size, head_end = PCACHE_MIN(size, PCACHE_BLANK_SCAN), tail_off;
	bool zero = true;
	char what[200];
	uint8_t *buf;
	int rc;

	rc = pcache_probe_signature(cd->fd, what, sizeof(what));
	if (rc > 0)
		return seterr(err, errlen, -ENOTEMPTY, "device is not blank: it carries %s; refusing to "
			      "format it ('pcachectl format --force' overwrites it)", what);
	/* rc < 0: libblkid cannot read it (a device-DAX character device): the scans still run */
	if (head_end <= PCACHE_INFO_OFF)
		return 0;
	buf = malloc(PCACHE_BLANK_SCAN);
	if (!buf)
		return seterr(err, errlen, -ENOMEM, "out of memory");
	rc = dev_scan_zero(cd, buf, PCACHE_INFO_OFF, head_end - PCACHE_INFO_OFF, &zero);
	h = (const struct pcache_rec_hdr_om *)buf;
	if (!rc && !zero && pcache_le16(&h->type) == PCACHE_REC_INFO &&
	    pcache_le16(&h->len) == sizeof(struct pcache_cache_info_om) &&
	    pcache_le32(&h->crc) == rec_crc(buf, sizeof(struct pcache_cache_info_om)))
		goto out; /* our own interrupted format: format it again */
	tail_off = PCACHE_MAX(head_end, size - PCACHE_MIN(size, PCACHE_BLANK_SCAN));
	if (!rc && zero && tail_off < size)
		rc = dev_scan_zero(cd, buf, tail_off, size - tail_off, &zero);
	if (rc)
		rc = seterr(err, errlen, rc, "device: read: %s", strerror(-rc));
	else if (!zero)
		rc = seterr(err, errlen, -ENOTEMPTY, "device is not blank: its first 8 KiB are zero but "
			    "data follows; refusing to format it ('pcachectl format --force' overwrites it)");
out:
	free(buf);
	return rc;
}

static int dev_load(struct pcache_cache_dev *cd, bool format_if_blank,
		    const struct pcache_format_opts *fo, char *err, size_t errlen)
{
	uint8_t *slots;
	bool unreadable[2];
	struct md_buf md = { 0 };
	int i, rc;

	if (cd->map.size < 2 * PCACHE_SB_SLOT_SIZE)
		return seterr(err, errlen, -ENOSPC, "device: too small (%" PRIu64 " bytes)", cd->map.size);
	slots = malloc(2 * PCACHE_SB_SLOT_SIZE);
	if (!slots)
		return seterr(err, errlen, -ENOMEM, "out of memory");
	for (i = 0; i < 2; i++) {
		unreadable[i] = dev_pread(cd, slots + i * PCACHE_SB_SLOT_SIZE,
						  PCACHE_SB_SLOT_SIZE,
						  PCACHE_SB_OFF + (uint64_t)i * PCACHE_SB_SLOT_SIZE) != 0;
		if (unreadable[i])
			memset(slots + i * PCACHE_SB_SLOT_SIZE, 0, PCACHE_SB_SLOT_SIZE);
	}
	if (!unreadable[0] && !unreadable[1] && all_zero(slots, 2 * PCACHE_SB_SLOT_SIZE)) {
		rc = dev_check_blank(cd, err, errlen);
		if (rc)
			goto out;
		if (!format_if_blank || cd->read_only) {
			rc = seterr(err, errlen, -ENODATA,
				    "superblock: device is blank (not formatted; use 'pcachectl format')");
			goto out;
		}
		rc = dev_format(cd, fo, err, errlen);
		if (rc)
			goto out;
		for (i = 0; i < 2; i++) {
			rc = dev_pread(cd, slots + i * PCACHE_SB_SLOT_SIZE,
					       PCACHE_SB_SLOT_SIZE,
					       PCACHE_SB_OFF + (uint64_t)i * PCACHE_SB_SLOT_SIZE);
			if (rc) {
				seterr(err, errlen, rc, "superblock: read after format: %s", strerror(-rc));
				goto out;
			}
		}
	}
	rc = sb_load(cd, slots, unreadable, err, errlen);
	if (rc)
		goto out;
	rc = md_read(cd, &md, cd->md_len);
	if (rc) {
		seterr(err, errlen, rc, "metadata: %s", strerror(-rc));
		goto out;
	}
	rc = records_load(cd, &md, err, errlen);
out:
	md_free(&md);
	free(slots);
	return rc;
}

int pcache_cache_dev_open(const struct pcache_cache_dev_opts *opts, struct pcache_cache_dev **out,
			  char *err, size_t errlen)
{
	struct pcache_cache_dev *cd;
	int rc;

	*out = NULL;
	if (!opts || !opts->path || !opts->path[0])
		return seterr(err, errlen, -EINVAL, "no cache device path");
	if (opts->no_lock && !opts->read_only)
		return seterr(err, errlen, -EINVAL, "no_lock needs read_only");
	cd = dev_alloc(opts->path);
	if (!cd)
		return seterr(err, errlen, -ENOMEM, "out of memory");
	cd->read_fault = opts->read_fault;
	cd->read_fault_arg = opts->read_fault_arg;
	rc = dev_attach(cd, opts->create_size, opts->read_only, opts->no_lock, err, errlen);
	if (rc)
		goto out_free;
	if (opts->wrap_pmem)
		cd->pmem = opts->wrap_pmem(cd->map.seam, cd->map.base, cd->map.size, opts->wrap_arg);
	rc = dev_load(cd, opts->format_if_blank, opts->format, err, errlen);
	if (rc)
		goto out_free;
	if (opts->prefault)
		pcache_pmem_prefault(&cd->map, !opts->read_only);
	assert_cd_state(cd);
	*out = cd;
	return 0;

out_free:
	dev_uncreate(cd);
	dev_free(cd);
	return rc;
}

void pcache_cache_dev_prefault(struct pcache_cache_dev *cd, uint64_t off, uint64_t len)
{
	pcache_pmem_prefault_range(&cd->map, off, len, !cd->read_only);
}

uint64_t pcache_cache_dev_map_size(const struct pcache_cache_dev *cd)
{
	return cd->map.size;
}

void pcache_cache_dev_close(struct pcache_cache_dev *cd)
{
	dev_free(cd);
}

int pcache_cache_dev_format(const char *path, uint64_t create_size,
			    const struct pcache_format_opts *fo, char *err, size_t errlen)
{
	struct pcache_cache_dev *cd;
	int rc;

	if (!path || !path[0])
		return seterr(err, errlen, -EINVAL, "no cache device path");
	cd = dev_alloc(path);
	if (!cd)
		return seterr(err, errlen, -ENOMEM, "out of memory");
	rc = dev_attach(cd, create_size, false, false, err, errlen);
	if (!rc)
		rc = dev_format(cd, fo, err, errlen);
	if (rc)
		dev_uncreate(cd);
	dev_free(cd);
	return rc;
}

/* ---- geometry and mapping ----------------------------------------------------------------- */

struct pcache_pmem *pcache_cache_dev_pmem(struct pcache_cache_dev *cd)
{
	return &cd->pmem;
}

void *pcache_cache_dev_base(const struct pcache_cache_dev *cd)
{
	return cd->map.base;
}

uint64_t pcache_cache_dev_size(const struct pcache_cache_dev *cd)
{
	return cd->map.size;
}

uint32_t pcache_cache_dev_seg_count(const struct pcache_cache_dev *cd)
{
	return cd->seg_count;
}

uint64_t pcache_cache_dev_seg_size(const struct pcache_cache_dev *cd)
{
	return cd->seg_size;
}

void *pcache_cache_dev_seg_addr(const struct pcache_cache_dev *cd, uint32_t seg)
{
	if (seg >= cd->seg_count)
		return NULL;
	return (char *)cd->map.base + cd->seg_base + (uint64_t)seg * cd->seg_size;
}

const char *pcache_cache_dev_granularity(const struct pcache_cache_dev *cd)
{
	return pcache_pmem_granularity_name(&cd->map);
}

const struct pcache_sb_om *pcache_cache_dev_sb(const struct pcache_cache_dev *cd)
{
	return &cd->sb;
}

const char *pcache_cache_dev_path(const struct pcache_cache_dev *cd)
{
	return cd->path;
}

int pcache_cache_dev_fd(const struct pcache_cache_dev *cd)
{
	return cd->fd;
}

int pcache_cache_dev_pread(struct pcache_cache_dev *cd, void *buf, size_t len, uint64_t off)
{
	if (off > cd->map.size || len > cd->map.size - off)
		return -EINVAL;
	return dev_pread(cd, buf, len, off);
}

/* ---- records ------------------------------------------------------------------------------ */

/* The in-memory copies are read under their lock; the const is on the records, not the locks. */
#define LOCK(cd, l) pthread_mutex_lock((pthread_mutex_t *)&(cd)->l)
#define UNLOCK(cd, l) pthread_mutex_unlock((pthread_mutex_t *)&(cd)->l)

void pcache_cache_dev_get_info(const struct pcache_cache_dev *cd, struct pcache_cache_info *ci)
{
	LOCK(cd, info_lock);
	*ci = cd->info;
	UNLOCK(cd, info_lock);
}

/* Write ci as the new cache_info; info_lock held. */
static void info_commit(struct pcache_cache_dev *cd, const struct pcache_cache_info *ci)
{
	struct pcache_cache_info_om om;

	info_encode(&om, ci);
	rec_commit(cd, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, &cd->info_rs, &om,
		   PCACHE_REC_INFO, sizeof(om));
	cd->info = *ci;
}

int pcache_cache_dev_set_info(struct pcache_cache_dev *cd, const struct pcache_cache_info *ci)
{
	struct pcache_cache_info n = *ci;
	int rc;

	if (cd->read_only)
		return -EROFS;
	rc = info_check(ci, NULL, 0);
	if (rc)
		return rc;
	LOCK(cd, info_lock);
	if ((ci->flags ^ cd->info.flags) & PCACHE_INFO_DATA_CRC) {
		rc = -EINVAL;
	} else {
		/*
		 * next_image_id never goes back: a get_info/set_info of the tunables may race with
		 * an image_add that bumped it in between (ids must never be reused)
		 */
		n.next_image_id = PCACHE_MAX(n.next_image_id, cd->info.next_image_id);
		info_commit(cd, &n);
	}
	UNLOCK(cd, info_lock);
	return rc;
}

void pcache_cache_dev_get_key_tail(const struct pcache_cache_dev *cd, struct pcache_pos *p)
{
	LOCK(cd, tail_lock);
	*p = cd->key_tail;
	UNLOCK(cd, tail_lock);
}

void pcache_cache_dev_get_dirty_tail(const struct pcache_cache_dev *cd, struct pcache_pos *p)
{
	LOCK(cd, tail_lock);
	*p = cd->dirty_tail;
	UNLOCK(cd, tail_lock);
}

static int tail_set(struct pcache_cache_dev *cd, const struct pcache_pos *p, bool dirty)
{
	struct pcache_tail_om om;
	int rc;

	if (cd->read_only)
		return -EROFS;
	rc = pos_check(cd, p, NULL, 0);
	if (rc)
		return rc;
	tail_encode(&om, p);
	LOCK(cd, tail_lock);
	if (dirty) {
		rec_commit(cd, PCACHE_DIRTY_TAIL_SLOT(0), PCACHE_DIRTY_TAIL_SLOT(1), &cd->dirty_rs, &om,
			   PCACHE_REC_DIRTY_TAIL, sizeof(om));
		cd->dirty_tail = *p;
	} else {
		rec_commit(cd, PCACHE_KEY_TAIL_SLOT(0), PCACHE_KEY_TAIL_SLOT(1), &cd->key_rs, &om,
			   PCACHE_REC_KEY_TAIL, sizeof(om));
		cd->key_tail = *p;
	}
	UNLOCK(cd, tail_lock);
	return 0;
}

int pcache_cache_dev_set_key_tail(struct pcache_cache_dev *cd, const struct pcache_pos *p)
{
	return tail_set(cd, p, false);
}

int pcache_cache_dev_set_dirty_tail(struct pcache_cache_dev *cd, const struct pcache_pos *p)
{
	return tail_set(cd, p, true);
}

uint64_t pcache_cache_dev_seg_gen(const struct pcache_cache_dev *cd, uint32_t seg)
{
	if (seg >= cd->seg_count)
		return 0;
	return atomic_load_explicit(&cd->seg_gen[seg], memory_order_acquire);
}

/* Write gen as segment seg's generation; seg_lock held. */
static void seg_commit(struct pcache_cache_dev *cd, uint32_t seg, uint64_t gen)
{
	struct pcache_seg_om om;

	memset(&om, 0, sizeof(om));
	om.gen = gen;
	rec_commit(cd, PCACHE_SEG_SLOT(seg, 0), PCACHE_SEG_SLOT(seg, 1), &cd->seg_rs[seg], &om,
		   PCACHE_REC_SEG, sizeof(om));
	/* published after the record is durable: a reader that sees gen can rely on it */
	atomic_store_explicit(&cd->seg_gen[seg], gen, memory_order_release);
}

int pcache_cache_dev_seg_gen_bump(struct pcache_cache_dev *cd, uint32_t seg)
{
	if (cd->read_only)
		return -EROFS;
	if (seg >= cd->seg_count)
		return -EINVAL;
	LOCK(cd, seg_lock);
	seg_commit(cd, seg, atomic_load_explicit(&cd->seg_gen[seg], memory_order_relaxed) + 1);
	UNLOCK(cd, seg_lock);
	return 0;
}

/* ---- image table -------------------------------------------------------------------------- */

int pcache_cache_dev_images(const struct pcache_cache_dev *cd, struct pcache_image_ent *ents, int max)
{
	uint32_t i;
	int n = 0;

	LOCK(cd, img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES && n < max; i++)
		if (cd->img[i].id)
			ents[n++] = cd->img[i];
	UNLOCK(cd, img_lock);
	return n;
}

/* Slot of the used entry named name, or -1; img_lock held. */
static int image_lookup(const struct pcache_cache_dev *cd, const char *name)
{
	uint32_t i;

	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (cd->img[i].id && !strcmp(cd->img[i].name, name))
			return (int)i;
	return -1;
}

int pcache_cache_dev_image_find(const struct pcache_cache_dev *cd, const char *name,
				struct pcache_image_ent *e)
{
	int slot, rc = -ENOENT;

	LOCK(cd, img_lock);
	slot = image_lookup(cd, name);
	if (slot >= 0) {
		*e = cd->img[slot];
		rc = 0;
	}
	UNLOCK(cd, img_lock);
	return rc;
}

/* Write e into its slot; img_lock held. */
static void image_commit(struct pcache_cache_dev *cd, const struct pcache_image_ent *e)
{
	struct pcache_image_om om;

	image_encode(&om, e);
	rec_commit(cd, PCACHE_IMAGE_SLOT(e->slot, 0), PCACHE_IMAGE_SLOT(e->slot, 1),
		   &cd->img_rs[e->slot], &om, PCACHE_REC_IMAGE, sizeof(om));
	cd->img[e->slot] = *e;
}

/* Copy caller strings into a clean entry (NUL-terminated, zero padded). */
static int image_normalise(struct pcache_image_ent *dst, const struct pcache_image_ent *src)
{
	*dst = *src;
	if (!memchr(src->name, 0, sizeof(src->name)) || !memchr(src->path, 0, sizeof(src->path)) ||
	    !memchr(src->ident, 0, sizeof(src->ident)))
		return -EINVAL;
	memset(dst->name, 0, sizeof(dst->name));
	memset(dst->path, 0, sizeof(dst->path));
	memset(dst->ident, 0, sizeof(dst->ident));
	strcpy(dst->name, src->name);
	strcpy(dst->path, src->path);
	strcpy(dst->ident, src->ident);
	if (dst->state == PCACHE_IMAGE_FREE)
		dst->state = PCACHE_IMAGE_ATTACHED;
	if (dst->lbs == 0)
		dst->lbs = 512;
	return image_check(dst, NULL, 0);
}

int pcache_cache_dev_image_add(struct pcache_cache_dev *cd, struct pcache_image_ent *e)
{
	struct pcache_image_ent n;
	struct pcache_cache_info ci;
	uint32_t slot;
	int rc;

	if (cd->read_only)
		return -EROFS;
	rc = image_normalise(&n, e);
	if (rc)
		return rc;
	rc = random_uuid(n.uuid);
	if (rc)
		return rc;
	LOCK(cd, img_lock);
	if (image_lookup(cd, n.name) >= 0) {
		rc = -EEXIST;
		goto out;
	}
	for (slot = 0; slot < PCACHE_MAX_IMAGES && cd->img[slot].id; slot++)
		;
	if (slot == PCACHE_MAX_IMAGES) {
		rc = -ENOSPC;
		goto out;
	}
	LOCK(cd, info_lock);
	ci = cd->info;
	if (ci.next_image_id == UINT32_MAX) {
		UNLOCK(cd, info_lock);
		rc = -ENOSPC;
		goto out;
	}
	n.id = ci.next_image_id++;
	/* the bumped next_image_id is durable before the entry using the id (invariant 6) */
	info_commit(cd, &ci);
	UNLOCK(cd, info_lock);
	n.slot = slot;
	image_commit(cd, &n);
	e->slot = n.slot;
	e->id = n.id;
	e->state = n.state;
	e->lbs = n.lbs;
	memcpy(e->uuid, n.uuid, sizeof(e->uuid));
out:
	UNLOCK(cd, img_lock);
	assert_cd_state(cd);
	return rc;
}

int pcache_cache_dev_image_update(struct pcache_cache_dev *cd, const struct pcache_image_ent *e)
{
	struct pcache_image_ent n;
	int rc, other;

	if (cd->read_only)
		return -EROFS;
	if (e->slot >= PCACHE_MAX_IMAGES || !e->id)
		return -ENOENT;
	rc = image_normalise(&n, e);
	if (rc)
		return rc;
	LOCK(cd, img_lock);
	if (cd->img[e->slot].id != e->id) {
		rc = -ENOENT;
		goto out;
	}
	other = image_lookup(cd, n.name);
	if (other >= 0 && (uint32_t)other != e->slot) {
		rc = -EEXIST;
		goto out;
	}
	memcpy(n.uuid, cd->img[e->slot].uuid, sizeof(n.uuid));
	image_commit(cd, &n);
out:
	UNLOCK(cd, img_lock);
	assert_cd_state(cd);
	return rc;
}

int pcache_cache_dev_image_modify(struct pcache_cache_dev *cd, uint32_t slot, uint32_t id,
				  void (*fn)(struct pcache_image_ent *e, void *arg), void *arg,
				  struct pcache_image_ent *out)
{
	struct pcache_image_ent cur, n;
	int rc, other;

	if (cd->read_only)
		return -EROFS;
	if (slot >= PCACHE_MAX_IMAGES || !id)
		return -ENOENT;
	LOCK(cd, img_lock);
	if (cd->img[slot].id != id) {
		rc = -ENOENT;
		goto out;
	}
	cur = cd->img[slot];
	fn(&cur, arg);
	/* the identity of the entry is not the callback's to change */
	cur.slot = slot;
	cur.id = id;
	memcpy(cur.uuid, cd->img[slot].uuid, sizeof(cur.uuid));
	rc = image_normalise(&n, &cur);
	if (rc)
		goto out;
	other = image_lookup(cd, n.name);
	if (other >= 0 && (uint32_t)other != slot) {
		rc = -EEXIST;
		goto out;
	}
	image_commit(cd, &n);
	if (out)
		*out = n;
out:
	UNLOCK(cd, img_lock);
	assert_cd_state(cd);
	return rc;
}

struct wb_progress {
	uint64_t lsn, time;
};

static void set_wb(struct pcache_image_ent *e, void *arg)
{
	const struct wb_progress *w = arg;

	e->wb_lsn = w->lsn;
	e->wb_time = w->time;
}

int pcache_cache_dev_image_set_wb(struct pcache_cache_dev *cd, uint32_t slot, uint32_t id,
				  uint64_t wb_lsn, uint64_t wb_time)
{
	struct wb_progress w = { wb_lsn, wb_time };

	return pcache_cache_dev_image_modify(cd, slot, id, set_wb, &w, NULL);
}

int pcache_cache_dev_image_remove(struct pcache_cache_dev *cd, uint32_t slot)
{
	struct pcache_image_ent n;
	int rc = 0;

	if (cd->read_only)
		return -EROFS;
	if (slot >= PCACHE_MAX_IMAGES)
		return -EINVAL;
	LOCK(cd, img_lock);
	if (!cd->img[slot].id) {
		rc = -ENOENT;
		goto out;
	}
	memset(&n, 0, sizeof(n));
	n.slot = slot;
	/* a FREE record (not a zeroed slot): zeroing would let the older copy win at load */
	image_commit(cd, &n);
out:
	UNLOCK(cd, img_lock);
	assert_cd_state(cd);
	return rc;
}

/* ---- check and repair --------------------------------------------------------------------- */

unsigned int pcache_cache_dev_damaged(const struct pcache_cache_dev *cd)
{
	return cd->damaged;
}

enum pcache_check_result pcache_cache_dev_check(const struct pcache_cache_dev *cd,
						void (*report)(void *arg, const char *line),
						void *arg)
{
	char line[160];
	unsigned int i;

	for (i = 0; report && i < cd->note_count; i++)
		report(arg, cd->notes[i]);
	if (report && cd->damaged > cd->note_count) {
		snprintf(line, sizeof(line), "... and %u more damaged slots", cd->damaged - cd->note_count);
		report(arg, line);
	}
	return cd->damaged ? PCACHE_CHECK_REPAIRABLE : PCACHE_CHECK_CLEAN;
}

int pcache_cache_dev_repair(struct pcache_cache_dev *cd)
{
	const struct pcache_pmem *pm = &cd->pmem;
	struct pcache_pos kp, dp;
	bool kd, dd;
	uint32_t i;
	int c;

	if (cd->read_only)
		return -EROFS;
	for (c = 0; c < 2; c++)
		if (cd->sb_damaged[c]) {
			/* durable on return: the good copy is rewritten into the damaged slot */
			pm->ops->memset(pm->ctx, (char *)cd->map.base + PCACHE_SB_OFF + c * PCACHE_SB_SLOT_SIZE,
					0, PCACHE_SB_SLOT_SIZE, PCACHE_PM_NODRAIN);
			pm->ops->memcpy(pm->ctx, (char *)cd->map.base + PCACHE_SB_OFF + c * PCACHE_SB_SLOT_SIZE,
					&cd->sb, sizeof(cd->sb), 0);
			cd->sb_damaged[c] = false;
		}
	LOCK(cd, img_lock);
	for (i = 0; i < PCACHE_MAX_IMAGES; i++)
		if (cd->img_rs[i].damaged) {
			struct pcache_image_ent e = cd->img[i];

			image_commit(cd, &e);
		}
	LOCK(cd, info_lock);
	if (cd->info_rs.damaged) {
		struct pcache_cache_info ci = cd->info;

		info_commit(cd, &ci);
	}
	UNLOCK(cd, info_lock);
	UNLOCK(cd, img_lock);
	LOCK(cd, tail_lock);
	kd = cd->key_rs.damaged;
	dd = cd->dirty_rs.damaged;
	kp = cd->key_tail;
	dp = cd->dirty_tail;
	UNLOCK(cd, tail_lock);
	if (kd)
		tail_set(cd, &kp, false);
	if (dd)
		tail_set(cd, &dp, true);
	LOCK(cd, seg_lock);
	for (i = 0; i < cd->seg_count; i++)
		if (cd->seg_rs[i].damaged)
			seg_commit(cd, i, atomic_load_explicit(&cd->seg_gen[i], memory_order_relaxed));
	UNLOCK(cd, seg_lock);
	cd->damaged = 0;
	cd->note_count = 0;
	assert_cd_state(cd);
	return 0;
}
