/*
 * cache_dev_records.c -- the crash-safe metadata records of the cache device: validation and
 * encoding of cache_info, the tails, the image table and the segment generations, and their
 * updates (build in DRAM, copy durably into the slot that does not hold the newest valid copy).
 * Invariants and lock order: core/cache_dev.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <string.h>

#include "pcache/backing.h"
#include "pcache/util.h"
#include "cache_dev_i.h"

/* ---- validation of decoded records (shared by load and update) ---------------------------- */

int cd_info_check(const struct pcache_cache_info *ci, char *why, size_t len)
{
	if (ci->flags & ~PCACHE_INFO_DATA_CRC)
		return cd_seterr(why, len, -EINVAL, "unknown flags 0x%x", ci->flags);
	if (!pcache_gc_percent_valid(ci->gc_percent))
		return cd_seterr(why, len, -EINVAL, "gc_percent %u is neither 0..%u nor auto (%u)",
			      ci->gc_percent, PCACHE_MAX_GC_PERCENT, PCACHE_GC_PERCENT_AUTO);
	if (ci->dirty_high > 100)
		return cd_seterr(why, len, -EINVAL, "dirty_high %u > 100", ci->dirty_high);
	if (ci->dirty_low >= ci->dirty_high)
		return cd_seterr(why, len, -EINVAL, "dirty_low %u >= dirty_high %u", ci->dirty_low,
			      ci->dirty_high);
	if (ci->next_image_id == 0)
		return cd_seterr(why, len, -EINVAL, "next_image_id 0");
	return 0;
}

int cd_pos_check(const struct pcache_cache_dev *cd, const struct pcache_pos *p, char *why,
		 size_t len)
{
	if (p->seg >= cd->seg_count)
		return cd_seterr(why, len, -EINVAL, "segment %u >= seg_count %u", p->seg, cd->seg_count);
	if (p->off >= cd->seg_size || p->off % 8)
		return cd_seterr(why, len, -EINVAL, "offset %u outside segment or not 8-aligned", p->off);
	if (p->lsn == 0)
		return cd_seterr(why, len, -EINVAL, "lsn 0");
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
		return cd_seterr(why, len, -EINVAL, "invalid name");
	plen = strnlen(e->path, PCACHE_PATH_MAX + 1);
	if (plen == 0 || plen > PCACHE_PATH_MAX)
		return cd_seterr(why, len, -EINVAL, "path empty or too long");
	if (e->state != PCACHE_IMAGE_ATTACHED && e->state != PCACHE_IMAGE_DETACHED)
		return cd_seterr(why, len, -EINVAL, "state %u invalid", e->state);
	if (!PCACHE_IS_POW2(e->lbs) || e->lbs < 512 || e->lbs > 65536)
		return cd_seterr(why, len, -EINVAL, "logical block size %u invalid", e->lbs);
	if (e->size == 0 && e->lbs > 512)  /* an empty file is an image (it grows); a device is not */
		return cd_seterr(why, len, -EINVAL, "size 0");
	/* files may have any size (lbs 512); a block device is whole blocks */
	if (e->lbs > 512 && e->size % e->lbs)
		return cd_seterr(why, len, -EINVAL, "size %" PRIu64 " not a multiple of its block size %u",
				 e->size, e->lbs);
	if (e->cache_mode > PCACHE_MODE_WRITEAROUND)
		return cd_seterr(why, len, -EINVAL, "cache mode %u invalid", e->cache_mode);
	if (e->file_mode & ~07777u)
		return cd_seterr(why, len, -EINVAL, "file mode 0%o invalid", e->file_mode);
	return 0;
}

/* ---- encoding ----------------------------------------------------------------------------- */

void cd_info_encode(struct pcache_cache_info_om *om, const struct pcache_cache_info *ci)
{
	memset(om, 0, sizeof(*om));
	om->flags = ci->flags;
	om->gc_percent = ci->gc_percent;
	om->dirty_high = ci->dirty_high;
	om->dirty_low = ci->dirty_low;
	om->wb_rate = ci->wb_rate;
	om->next_image_id = ci->next_image_id;
}

void cd_info_decode(struct pcache_cache_info *ci, const struct pcache_cache_info_om *om)
{
	ci->flags = pcache_le32(&om->flags);
	ci->gc_percent = pcache_le32(&om->gc_percent);
	ci->dirty_high = pcache_le32(&om->dirty_high);
	ci->dirty_low = pcache_le32(&om->dirty_low);
	ci->wb_rate = pcache_le64(&om->wb_rate);
	ci->next_image_id = pcache_le32(&om->next_image_id);
}

void cd_tail_encode(struct pcache_tail_om *om, const struct pcache_pos *p)
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
	om->seq_cutoff = e->seq_cutoff;
	om->max_share = e->max_share;
	memcpy(om->name, e->name, strnlen(e->name, PCACHE_NAME_MAX));
	memcpy(om->path, e->path, strnlen(e->path, PCACHE_PATH_MAX));
	if (e->ident[0]) {
		om->flags = PCACHE_IMAGE_F_IDENT;
		memcpy(om->ident, e->ident, strnlen(e->ident, PCACHE_IDENT_LEN - 1));
	}
	if (e->fixed)
		om->flags |= PCACHE_IMAGE_F_FIXED;
}

/* Decode a CRC-valid image record; 0 or -EUCLEAN with why. */
int cd_image_decode(struct pcache_image_ent *e, uint32_t slot, const struct pcache_image_om *om,
		    char *why, size_t len)
{
	uint32_t flags;

	memset(e, 0, sizeof(*e));
	e->slot = slot;
	e->id = pcache_le32(&om->id);
	e->state = pcache_le32(&om->state);
	if (!e->id) {
		if (e->state != PCACHE_IMAGE_FREE)
			return cd_seterr(why, len, -EUCLEAN, "id 0 with state %u", e->state);
		return 0;
	}
	if (!memchr(om->name, 0, sizeof(om->name)))
		return cd_seterr(why, len, -EUCLEAN, "name not NUL-terminated");
	flags = pcache_le32(&om->flags);
	if (flags & ~(PCACHE_IMAGE_F_IDENT | PCACHE_IMAGE_F_FIXED))
		return cd_seterr(why, len, -EUCLEAN, "unknown flags 0x%x", flags);
	e->fixed = (flags & PCACHE_IMAGE_F_FIXED) != 0;
	if (!memchr(om->path, 0, sizeof(om->path)))
		return cd_seterr(why, len, -EUCLEAN, flags ? "path not NUL-terminated" :
			      "path longer than %u bytes (an entry from before identities): "
			      "not supported", PCACHE_PATH_MAX);
	if ((flags & PCACHE_IMAGE_F_IDENT) && !memchr(om->ident, 0, sizeof(om->ident)))
		return cd_seterr(why, len, -EUCLEAN, "identity not NUL-terminated");
	memcpy(e->uuid, om->uuid, sizeof(e->uuid));
	e->size = pcache_le64(&om->size);
	e->lbs = pcache_le32(&om->lbs);
	e->cache_mode = pcache_le32(&om->cache_mode);
	e->file_mode = pcache_le32(&om->file_mode);
	e->uid = pcache_le32(&om->uid);
	e->gid = pcache_le32(&om->gid);
	e->wb_lsn = pcache_le64(&om->wb_lsn);
	e->wb_time = pcache_le64(&om->wb_time);
	e->seq_cutoff = pcache_le32(&om->seq_cutoff);
	e->max_share = pcache_le32(&om->max_share);
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
	h->crc = cd_rec_crc(rec, len);
	/* durable on return (no NODRAIN): the new copy is on media before the in-memory newest
	 * index moves to it and before the caller acts on the update */
	cd->pmem.ops->memcpy(cd->pmem.ctx, (char *)cd->map.base + (target ? off1 : off0), rec, len, 0);
	rs->newest = (uint8_t)target;
	rs->seq = h->seq;
	rs->damaged = false;
}

/* ---- records ------------------------------------------------------------------------------ */

/* The in-memory copies are read under their lock; the const is on the records, not the locks. */

void pcache_cache_dev_get_info(const struct pcache_cache_dev *cd, struct pcache_cache_info *ci)
{
	LOCK(cd, info_lock);
	*ci = cd->info;
	UNLOCK(cd, info_lock);
}

/* Write ci as the new cache_info; info_lock held. */
void cd_info_commit(struct pcache_cache_dev *cd, const struct pcache_cache_info *ci)
{
	struct pcache_cache_info_om om;

	cd_info_encode(&om, ci);
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
	rc = cd_info_check(ci, NULL, 0);
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
		cd_info_commit(cd, &n);
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

int cd_tail_set(struct pcache_cache_dev *cd, const struct pcache_pos *p, bool dirty)
{
	struct pcache_tail_om om;
	int rc;

	if (cd->read_only)
		return -EROFS;
	rc = cd_pos_check(cd, p, NULL, 0);
	if (rc)
		return rc;
	cd_tail_encode(&om, p);
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
	return cd_tail_set(cd, p, false);
}

int pcache_cache_dev_set_dirty_tail(struct pcache_cache_dev *cd, const struct pcache_pos *p)
{
	return cd_tail_set(cd, p, true);
}

uint64_t pcache_cache_dev_seg_gen(const struct pcache_cache_dev *cd, uint32_t seg)
{
	if (seg >= cd->seg_count)
		return 0;
	return atomic_load_explicit(&cd->seg_gen[seg], memory_order_acquire);
}

/* Write gen as segment seg's generation; seg_lock held. */
void cd_seg_commit(struct pcache_cache_dev *cd, uint32_t seg, uint64_t gen)
{
	struct pcache_seg_om om;

	memset(&om, 0, sizeof(om));
	om.gen = gen;
	rec_commit(cd, PCACHE_SEG_SLOT(cd->max_images, seg, 0), PCACHE_SEG_SLOT(cd->max_images, seg, 1), &cd->seg_rs[seg], &om,
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
	cd_seg_commit(cd, seg, atomic_load_explicit(&cd->seg_gen[seg], memory_order_relaxed) + 1);
	UNLOCK(cd, seg_lock);
	return 0;
}

/* ---- image table -------------------------------------------------------------------------- */

int pcache_cache_dev_images(const struct pcache_cache_dev *cd, struct pcache_image_ent *ents, int max)
{
	uint32_t i;
	int n = 0;

	LOCK(cd, img_lock);
	for (i = 0; i < cd->max_images && n < max; i++)
		if (cd->img[i].id)
			ents[n++] = cd->img[i];
	UNLOCK(cd, img_lock);
	return n;
}

/* Slot of the used entry named name, or -1; img_lock held. */
static int image_lookup(const struct pcache_cache_dev *cd, const char *name)
{
	uint32_t i;

	for (i = 0; i < cd->max_images; i++)
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
void cd_image_commit(struct pcache_cache_dev *cd, const struct pcache_image_ent *e)
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
	rc = cd_random_uuid(n.uuid);
	if (rc)
		return rc;
	LOCK(cd, img_lock);
	if (image_lookup(cd, n.name) >= 0) {
		rc = -EEXIST;
		goto out;
	}
	for (slot = 0; slot < cd->max_images && cd->img[slot].id; slot++)
		;
	if (slot == cd->max_images) {
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
	cd_info_commit(cd, &ci);
	UNLOCK(cd, info_lock);
	n.slot = slot;
	cd_image_commit(cd, &n);
	e->slot = n.slot;
	e->id = n.id;
	e->state = n.state;
	e->lbs = n.lbs;
	memcpy(e->uuid, n.uuid, sizeof(e->uuid));
out:
	UNLOCK(cd, img_lock);
	cd_assert_state(cd);
	return rc;
}

int pcache_cache_dev_image_update(struct pcache_cache_dev *cd, const struct pcache_image_ent *e)
{
	struct pcache_image_ent n;
	int rc, other;

	if (cd->read_only)
		return -EROFS;
	if (e->slot >= cd->max_images || !e->id)
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
	cd_image_commit(cd, &n);
out:
	UNLOCK(cd, img_lock);
	cd_assert_state(cd);
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
	if (slot >= cd->max_images || !id)
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
	cd_image_commit(cd, &n);
	if (out)
		*out = n;
out:
	UNLOCK(cd, img_lock);
	cd_assert_state(cd);
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
	if (slot >= cd->max_images)
		return -EINVAL;
	LOCK(cd, img_lock);
	if (!cd->img[slot].id) {
		rc = -ENOENT;
		goto out;
	}
	memset(&n, 0, sizeof(n));
	n.slot = slot;
	/* a FREE record (not a zeroed slot): zeroing would let the older copy win at load */
	cd_image_commit(cd, &n);
out:
	UNLOCK(cd, img_lock);
	cd_assert_state(cd);
	return rc;
}
