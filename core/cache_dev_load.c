/*
 * cache_dev_load.c -- reading the cache device's metadata at open: every slot with pread()
 * (never through the mapping, so poison is -EIO and an unreadable slot just counts as invalid),
 * the superblock copies, then each record's newest valid copy (format.h, DUAL-SLOT RULE), every
 * field bounds-checked, damaged slots noted for check. Invariants: core/cache_dev.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/backing.h"
#include "pcache/util.h"
#include "cache_dev_i.h"

/* ---- loading ------------------------------------------------------------------------------ */

enum slot_state { SLOT_VALID, SLOT_BLANK, SLOT_BAD };

/* The metadata area as read with pread(), and which 4 KiB pages could not be read. */

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
	if (cd_all_zero(p, len)) {
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
	if (pcache_le32(&h->crc) != cd_rec_crc(p, len)) {
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
		return cd_seterr(err, errlen, -EUCLEAN, "%s: both slots invalid (slot 0: %s, slot 1: %s)",
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
		cd_note(cd, "%s slot %d: %s; using slot %d (seq %" PRIu64 ")", name, pick ^ 1,
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
	cd_note(cd, "%s slot %d: valid CRC but %s; using slot %d", name, rs->newest ^ 1, why, rs->newest);
}

int cd_md_read(struct pcache_cache_dev *cd, struct md_buf *md, uint64_t len)
{
	uint64_t p, pages = (len + MD_PAGE - 1) / MD_PAGE;
	int rc;

	md->len = len;
	md->buf = calloc(1, pages * MD_PAGE);
	md->bad_page = calloc(pages, sizeof(bool));
	if (!md->buf || !md->bad_page)
		return -ENOMEM;
	rc = cd_pread(cd, md->buf, len, 0);
	if (rc == 0)
		return 0;
	/* a media error somewhere: read page by page, mark the unreadable ones */
	for (p = 0; p < pages; p++) {
		uint64_t n = PCACHE_MIN((uint64_t)MD_PAGE, len - p * MD_PAGE);

		if (cd_pread(cd, md->buf + p * MD_PAGE, n, p * MD_PAGE)) {
			memset(md->buf + p * MD_PAGE, 0, n);
			md->bad_page[p] = true;
		}
	}
	return 0;
}

void cd_md_free(struct md_buf *md)
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
	if (cd_all_zero(slot, PCACHE_SB_SLOT_SIZE)) {
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
	if (pcache_le32(&sb->hdr.crc) != cd_rec_crc(slot, len)) {
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
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: format version 0 invalid");
	if (incompat & ~PCACHE_INCOMPAT_SUPPORTED)
		return cd_seterr(err, errlen, -EPROTONOSUPPORT,
			      "superblock: unknown incompatible features 0x%x (newer pcachefs?)",
			      incompat & ~PCACHE_INCOMPAT_SUPPORTED);
	if (!PCACHE_IS_POW2(size) || size < PCACHE_MIN_SEG_SIZE || size > PCACHE_MAX_SEG_SIZE)
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: segment size %" PRIu64 " invalid", size);
	if (count < PCACHE_MIN_SEGS || count > PCACHE_MAX_SEGS)
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: segment count %u out of range", count);
	if (version == PCACHE_FORMAT_VERSION_V1 ? maxi != PCACHE_MAX_IMAGES_V1 :
	    !pcache_max_images_valid(maxi))
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: max_images %u invalid for version %u",
			      maxi, version);
	if (base % PCACHE_SEG_BASE_ALIGN || base < PCACHE_SEGTAB_OFF(maxi) + (uint64_t)count * 2u *
	    PCACHE_SEG_SLOT_SIZE)
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: segment base %" PRIu64 " invalid", base);
	if (dev > cd->map.size)
		return cd_seterr(err, errlen, -EUCLEAN,
			      "superblock: device is %" PRIu64 " bytes, smaller than at format (%" PRIu64 ")",
			      cd->map.size, dev);
	if (base > dev || (dev - base) / size < count)
		return cd_seterr(err, errlen, -EUCLEAN,
			      "superblock: %u segments of %" PRIu64 " bytes at %" PRIu64
			      " do not fit in %" PRIu64 " bytes", count, size, base, dev);
	cd->seg_count = count;
	cd->seg_size = size;
	cd->seg_base = base;
	cd->max_images = maxi;
	cd->segtab_off = PCACHE_SEGTAB_OFF(maxi);
	cd->md_len = cd->segtab_off + (uint64_t)count * 2u * PCACHE_SEG_SLOT_SIZE;
	return 0;
}

int cd_sb_load(struct pcache_cache_dev *cd, const uint8_t *slots, const bool unreadable[2],
	       char *err, size_t errlen)
{
	const char *why[2];
	enum sb_state st[2];
	int pick, i;

	for (i = 0; i < 2; i++)
		st[i] = sb_classify(slots + i * PCACHE_SB_SLOT_SIZE, unreadable[i], &why[i]);
	for (i = 0; i < 2; i++)
		if (st[i] == SB_NEWER)
			return cd_seterr(err, errlen, -EPROTONOSUPPORT,
				      "superblock: format version %u is newer than this pcachefs supports (%u)",
				      pcache_le32(slots + i * PCACHE_SB_SLOT_SIZE + 24),
				      PCACHE_FORMAT_VERSION);
	if (st[0] != SB_VALID && st[1] != SB_VALID) {
		if (st[0] != SB_BAD && st[1] != SB_BAD)
			return cd_seterr(err, errlen, -EMEDIUMTYPE,
				      "superblock: bad magic (not a pcachefs cache device; use 'pcachectl format')");
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: both copies invalid (copy 0: %s, copy 1: %s)",
			      why[0], why[1]);
	}
	if (st[0] == SB_VALID && st[1] == SB_VALID &&
	    memcmp(slots, slots + PCACHE_SB_SLOT_SIZE, sizeof(struct pcache_sb_om)))
		return cd_seterr(err, errlen, -EUCLEAN, "superblock: the two copies differ");
	pick = st[0] == SB_VALID ? 0 : 1;
	memcpy(&cd->sb, slots + pick * PCACHE_SB_SLOT_SIZE, sizeof(cd->sb));
	for (i = 0; i < 2; i++) {
		cd->sb_damaged[i] = st[i] != SB_VALID;
		if (st[i] != SB_VALID)
			cd_note(cd, "superblock copy %d: %s; using copy %d", i, why[i], pick);
	}
	return sb_validate(cd, &cd->sb, err, errlen);
}

int cd_records_load(struct pcache_cache_dev *cd, const struct md_buf *md, char *err,
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
	cd_info_decode(&cd->info, (const void *)(md->buf + PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE));
	if (cd_info_check(&cd->info, why, sizeof(why)))
		return cd_seterr(err, errlen, -EUCLEAN, "cache_info: %s", why);
	other = rec_other(md, PCACHE_INFO_OFF, PCACHE_INFO_OFF + PCACHE_INFO_SLOT_SIZE, k,
			  PCACHE_REC_INFO, sizeof(struct pcache_cache_info_om));
	if (other) {
		struct pcache_cache_info oci;

		cd_info_decode(&oci, other);
		if (cd_info_check(&oci, why, sizeof(why)))
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
		if (cd_pos_check(cd, p, why, sizeof(why)))
			return cd_seterr(err, errlen, -EUCLEAN, "%s: %s", tn, why);
		other = rec_other(md, o0, o1, k, i ? PCACHE_REC_DIRTY_TAIL : PCACHE_REC_KEY_TAIL,
				  sizeof(struct pcache_tail_om));
		if (other) {
			struct pcache_pos op;

			om = other;
			op.seg = pcache_le32(&om->seg);
			op.off = pcache_le32(&om->off);
			op.lsn = pcache_le64(&om->lsn);
			if (cd_pos_check(cd, &op, why, sizeof(why)))
				rec_bad_other(cd, i ? &cd->dirty_rs : &cd->key_rs, tn, why);
		}
	}

	for (i = 0; i < cd->max_images; i++) {
		struct pcache_image_ent *e = &cd->img[i];

		snprintf(name, sizeof(name), "image %u", i);
		k = rec_pick(cd, md, name, PCACHE_IMAGE_SLOT(i, 0), PCACHE_IMAGE_SLOT(i, 1),
			     PCACHE_REC_IMAGE, sizeof(struct pcache_image_om), &cd->img_rs[i], err, errlen);
		if (k < 0)
			return k;
		rc = cd_image_decode(e, i, (const void *)(md->buf + PCACHE_IMAGE_SLOT(i, (uint32_t)k)), why,
				  sizeof(why));
		if (rc)
			return cd_seterr(err, errlen, -EUCLEAN, "%s: %s", name, why);
		other = rec_other(md, PCACHE_IMAGE_SLOT(i, 0), PCACHE_IMAGE_SLOT(i, 1), k,
				  PCACHE_REC_IMAGE, sizeof(struct pcache_image_om));
		if (other) {
			struct pcache_image_ent *oe = malloc(sizeof(*oe));

			if (!oe)
				return cd_seterr(err, errlen, -ENOMEM, "%s: out of memory", name);
			rc = cd_image_decode(oe, i, other, why, sizeof(why));
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
				return cd_seterr(err, errlen, -EUCLEAN, "%s: id %u >= next_image_id %u",
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
				return cd_seterr(err, errlen, -EUCLEAN, "%s: id %u also used by image %u", name,
					      e->id, j);
			if (cd->img[j].id && !strcmp(cd->img[j].name, e->name))
				return cd_seterr(err, errlen, -EUCLEAN, "%s: name also used by image %u", name, j);
		}
	}

	cd->seg_gen = calloc(cd->seg_count, sizeof(*cd->seg_gen));
	cd->seg_rs = calloc(cd->seg_count, sizeof(*cd->seg_rs));
	if (!cd->seg_gen || !cd->seg_rs)
		return cd_seterr(err, errlen, -ENOMEM, "segment table: out of memory");
	for (i = 0; i < cd->seg_count; i++) {
		const struct pcache_seg_om *om;

		snprintf(name, sizeof(name), "segment %u record", i);
		k = rec_pick(cd, md, name, PCACHE_SEG_SLOT(cd->max_images, i, 0), PCACHE_SEG_SLOT(cd->max_images, i, 1), PCACHE_REC_SEG,
			     sizeof(struct pcache_seg_om), &cd->seg_rs[i], err, errlen);
		if (k < 0)
			return k;
		om = (const void *)(md->buf + PCACHE_SEG_SLOT(cd->max_images, i, (uint32_t)k));
		atomic_init(&cd->seg_gen[i], pcache_le64(&om->gen));
	}
	return 0;
}
