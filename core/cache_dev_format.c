/*
 * cache_dev_format.c -- format (version 2) of a cache device: old superblocks invalidated first, every
 * record in both slots, the log empty, the new superblocks last (invariants 4 and 5 of
 * core/cache_dev.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/backing.h"
#include "pcache/util.h"
#include "cache_dev_i.h"

/* ---- format ------------------------------------------------------------------------------- */

int cd_format(struct pcache_cache_dev *cd, const struct pcache_format_opts *fo, char *err,
	      size_t errlen)
{
	const struct pcache_pmem *pm = &cd->pmem;
	uint64_t seg_size = fo && fo->seg_size ? fo->seg_size : 0;
	uint8_t *base = cd->map.base;
	struct pcache_sb_om sb;
	struct pcache_cache_info_om info;
	struct pcache_cache_info ci;
	struct pcache_tail_om tail;
	struct pcache_image_om img;
	struct pcache_seg_om *segs;
	struct pcache_pos pos = { .seg = 0, .off = 0, .lsn = 1 };
	uint64_t seg_base, tab_len;
	uint32_t maxi = fo && fo->max_images ? fo->max_images : pcache_default_max_images(cd->map.size);
	uint32_t count, i, k;
	int rc;

	if (cd->read_only)
		return cd_seterr(err, errlen, -EROFS, "format: device opened read-only");
	if (!seg_size)
		seg_size = pcache_default_seg_size(cd->map.size);
	if (!pcache_max_images_valid(maxi))
		return cd_seterr(err, errlen, -EINVAL,
			      "format: max_images %u invalid (a multiple of %u, %u .. %u)", maxi,
			      PCACHE_IMAGES_STEP, PCACHE_MAX_IMAGES_V1, PCACHE_MAX_IMAGES);
	rc = pcache_cache_dev_geometry(cd->map.size, seg_size, maxi, &count, &seg_base);
	if (rc == -EINVAL)
		return cd_seterr(err, errlen, rc,
			      "format: segment size %" PRIu64 " invalid (power of two, 1 MiB .. 1 GiB)",
			      seg_size);
	if (rc)
		return cd_seterr(err, errlen, rc,
			      "device: too small (%" PRIu64 " bytes; %u segments of %" PRIu64
			      " bytes need %" PRIu64 ")", cd->map.size, PCACHE_MIN_SEGS, seg_size,
			      cd_seg_base_for(maxi, PCACHE_MIN_SEGS) + PCACHE_MIN_SEGS * seg_size);
	ci = (struct pcache_cache_info){
		.flags = fo && fo->data_crc ? PCACHE_INFO_DATA_CRC : 0,
		.gc_percent = fo && fo->set_gc_percent ? fo->gc_percent : PCACHE_DEFAULT_GC_PERCENT,
		.dirty_high = PCACHE_DEFAULT_DIRTY_HIGH,
		.dirty_low = PCACHE_DEFAULT_DIRTY_LOW,
		.wb_rate = 0,
		.next_image_id = 1,
	};
	if (!pcache_gc_percent_valid(ci.gc_percent))
		return cd_seterr(err, errlen, -EINVAL, "format: gc_percent %u is neither 0..%u nor auto",
			      ci.gc_percent, PCACHE_MAX_GC_PERCENT);
	tab_len = (uint64_t)count * 2u * PCACHE_SEG_SLOT_SIZE;
	segs = calloc(1, tab_len);
	if (!segs)
		return cd_seterr(err, errlen, -ENOMEM, "format: out of memory");

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
	cd_info_encode(&info, &ci);
	cd_tail_encode(&tail, &pos);
	memset(&img, 0, sizeof(img));
	for (k = 0; k < 2; k++) {
		uint64_t seq = 1 - k;

		info.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_INFO, .len = sizeof(info), .seq = seq };
		info.hdr.crc = cd_rec_crc(&info, sizeof(info));
		pm->ops->memcpy(pm->ctx, base + PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE, &info,
				sizeof(info), PCACHE_PM_NODRAIN);

		tail.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_KEY_TAIL, .len = sizeof(tail), .seq = seq };
		tail.hdr.crc = cd_rec_crc(&tail, sizeof(tail));
		pm->ops->memcpy(pm->ctx, base + PCACHE_KEY_TAIL_SLOT(k), &tail, sizeof(tail),
				PCACHE_PM_NODRAIN);
		tail.hdr.type = PCACHE_REC_DIRTY_TAIL;
		tail.hdr.crc = cd_rec_crc(&tail, sizeof(tail));
		pm->ops->memcpy(pm->ctx, base + PCACHE_DIRTY_TAIL_SLOT(k), &tail, sizeof(tail),
				PCACHE_PM_NODRAIN);

		img.hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_IMAGE, .len = sizeof(img), .seq = seq };
		img.hdr.crc = cd_rec_crc(&img, sizeof(img));
		for (i = 0; i < maxi; i++)
			pm->ops->memcpy(pm->ctx, base + PCACHE_IMAGE_SLOT(i, k), &img, sizeof(img),
					PCACHE_PM_NODRAIN);

		for (i = 0; i < count; i++) {
			struct pcache_seg_om *sg = &segs[2 * i + k];

			sg->hdr = (struct pcache_rec_hdr_om){ .type = PCACHE_REC_SEG, .len = sizeof(*sg), .seq = seq };
			sg->hdr.crc = cd_rec_crc(sg, sizeof(*sg));
		}
	}
	pm->ops->memcpy(pm->ctx, base + PCACHE_SEGTAB_OFF(maxi), segs, tab_len, PCACHE_PM_NODRAIN);
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
	sb.max_images = maxi;
	rc = cd_random_uuid(sb.uuid);
	if (rc)
		return cd_seterr(err, errlen, rc, "format: getrandom: %s", strerror(-rc));
	sb.hdr.crc = cd_rec_crc(&sb, sizeof(sb));
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
