/*
 * log.c -- the one reader of the key log (include/pcache/log.h): validation of ksets and keys,
 * reads through the machine-check-safe path into a window, and the walk.
 *
 * Invariants:
 *  1. A kset is validated in the reader's buffer and handed out from there: no caller reads a
 *     kset from the mapping, so no check can be undone by the media between check and use, and
 *     a poisoned line is -EIO (pcache_cache_dev_pread), never a SIGBUS.
 *  2. Every field is read with the little-endian accessors and bounded before it is used: a key
 *     count indexes nothing before it is checked against PCACHE_KSET_MAX_KEYS, a size nothing
 *     before it is checked against the bytes read, a LAST record's next segment nothing before
 *     it is checked against seg_count.
 *  3. "Invalid" is only answered from bytes read for this position or later: an invalid kset in
 *     an older window is read again first (the log may have grown since the window was read).
 *  4. A media error in a wide window read is narrowed to the kset itself (its header, then its
 *     size) before it is reported, so poison after the end of a kset does not hide the kset.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcache/log.h"
#include "pcache/util.h"

struct pcache_log_reader {
	struct pcache_cache_dev *cd;
	uint32_t seg_count;
	uint64_t seg_size;
	uint64_t seg0;             /* device offset of segment 0 */
	uint8_t *win;              /* PCACHE_LOG_WINDOW bytes, 8-aligned (malloc) */
	uint32_t win_seg, win_off, win_len; /* win_len 0: no window */
	uint64_t media_errors;
	uint8_t one[PCACHE_KSET_MAX_SIZE] __attribute__((aligned(8))); /* a narrowed read */
};

/* ---- validation --------------------------------------------------------------------------- */

int pcache_log_kset_check(const struct pcache_kset_om *ks, uint32_t avail, uint64_t lsn,
			  uint32_t seg_count)
{
	uint32_t n, flags, size;

	if (avail < PCACHE_KSET_HDR_SIZE)
		return -EUCLEAN;
	if (pcache_le64(&ks->magic) != PCACHE_KSET_MAGIC || pcache_le64(&ks->lsn) != lsn)
		return -EUCLEAN;
	n = pcache_le16(&ks->key_num);
	flags = pcache_le16(&ks->flags);
	if (flags & ~PCACHE_KSET_LAST)
		return -EUCLEAN;
	if ((flags & PCACHE_KSET_LAST) ? n != 0 : (n == 0 || n > PCACHE_KSET_MAX_KEYS))
		return -EUCLEAN;
	size = PCACHE_KSET_SIZE(n);
	if (size > avail)
		return -EUCLEAN;
	if (pcache_le32(&ks->crc) != pcache_crc32c(PCACHE_CRC_SEED, (const uint8_t *)ks + 4, size - 4))
		return -EUCLEAN;
	if ((flags & PCACHE_KSET_LAST) && pcache_le32(&ks->next_seg) >= seg_count)
		return -EUCLEAN;
	return 0;
}

int pcache_log_key_check(const struct pcache_key_om *k, uint32_t seg_count, uint64_t seg_size,
			 char *err, size_t errlen)
{
	uint64_t off = pcache_le64(&k->off);
	uint32_t len = pcache_le32(&k->len), seg = pcache_le32(&k->seg);
	uint32_t seg_off = pcache_le32(&k->seg_off), id = pcache_le32(&k->image_id);
	uint16_t flags = pcache_le16(&k->flags);
	const char *why = NULL;

	if (len == 0 || len % PCACHE_SECTOR || off % PCACHE_SECTOR || off + len < off)
		why = "bad length or offset";
	else if ((off >> PCACHE_REGION_SHIFT) != ((off + len - 1) >> PCACHE_REGION_SHIFT))
		why = "crosses a 4 MiB region";
	else if (flags & ~(PCACHE_KEY_CLEAN | PCACHE_KEY_ZERO))
		why = "unknown flags";
	else if (id == 0)
		why = "image id 0";
	else if (!(flags & PCACHE_KEY_ZERO) &&
		 (seg >= seg_count || seg_off > seg_size || len > seg_size - seg_off))
		why = "data position outside the segments";
	if (!why)
		return 0;
	if (err)
		snprintf(err, errlen,
			 "key log: key (image %u, off %" PRIu64 ", len %u, seg %u, seg_off %u): %s",
			 id, off, len, seg, seg_off, why);
	return -EUCLEAN;
}

void pcache_log_next(const struct pcache_kset_om *ks, const struct pcache_pos *pos,
		     struct pcache_pos *next)
{
	if (pcache_le16(&ks->flags) & PCACHE_KSET_LAST) {
		next->seg = pcache_le32(&ks->next_seg);
		next->off = 0;
	} else {
		next->seg = pos->seg;
		next->off = pos->off + PCACHE_KSET_SIZE(pcache_le16(&ks->key_num));
	}
	next->lsn = pos->lsn + 1;
}

/* ---- reading ------------------------------------------------------------------------------ */

int pcache_log_reader_new(struct pcache_cache_dev *cd, struct pcache_log_reader **out)
{
	struct pcache_log_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->win = malloc(PCACHE_LOG_WINDOW);
	if (!r->win) {
		free(r);
		return -ENOMEM;
	}
	r->cd = cd;
	r->seg_count = pcache_cache_dev_seg_count(cd);
	r->seg_size = pcache_cache_dev_seg_size(cd);
	r->seg0 = (uint64_t)((const uint8_t *)pcache_cache_dev_seg_addr(cd, 0) -
			     (const uint8_t *)pcache_cache_dev_base(cd));
	*out = r;
	return 0;
}

void pcache_log_reader_free(struct pcache_log_reader *r)
{
	if (!r)
		return;
	free(r->win);
	free(r);
}

uint64_t pcache_log_reader_media_errors(const struct pcache_log_reader *r)
{
	return r->media_errors;
}

static uint64_t dev_off(const struct pcache_log_reader *r, const struct pcache_pos *pos)
{
	return r->seg0 + (uint64_t)pos->seg * r->seg_size + pos->off;
}

/* The wide read failed: read just the kset at pos (header, then its size). */
static int read_narrow(struct pcache_log_reader *r, const struct pcache_pos *pos, uint32_t avail,
		       const struct pcache_kset_om **out)
{
	const struct pcache_kset_om *ks = (const struct pcache_kset_om *)(const void *)r->one;
	uint32_t n, size;

	if (pcache_cache_dev_pread(r->cd, r->one, PCACHE_KSET_HDR_SIZE, dev_off(r, pos)))
		goto media;
	n = pcache_le16(&ks->key_num);
	if (n > PCACHE_KSET_MAX_KEYS)
		return -EUCLEAN;
	size = PCACHE_KSET_SIZE(n);
	if (size > avail)
		return -EUCLEAN;
	if (pcache_cache_dev_pread(r->cd, r->one, size, dev_off(r, pos)))
		goto media;
	if (pcache_log_kset_check(ks, size, pos->lsn, r->seg_count))
		return -EUCLEAN;
	*out = ks;
	return 0;
media:
	r->media_errors++;
	return -EIO;
}

int pcache_log_read(struct pcache_log_reader *r, const struct pcache_pos *pos,
		    const struct pcache_kset_om **out)
{
	const struct pcache_kset_om *ks;
	uint32_t avail, len;

	if (pos->seg >= r->seg_count || pos->off % 8 ||
	    (uint64_t)pos->off + PCACHE_KSET_HDR_SIZE > r->seg_size)
		return -EUCLEAN;
	avail = (uint32_t)PCACHE_MIN(r->seg_size - pos->off, (uint64_t)UINT32_MAX);
	if (r->win_len && r->win_seg == pos->seg && pos->off >= r->win_off &&
	    pos->off - r->win_off + PCACHE_KSET_HDR_SIZE <= r->win_len) {
		ks = (const struct pcache_kset_om *)(const void *)(r->win + (pos->off - r->win_off));
		if (pcache_log_kset_check(ks, r->win_len - (pos->off - r->win_off), pos->lsn,
					  r->seg_count) == 0) {
			*out = ks;
			return 0;
		}
		/* invariant 3: the window may predate this kset; read again */
	}
	len = PCACHE_MIN(avail, PCACHE_LOG_WINDOW);
	r->win_len = 0;
	if (pcache_cache_dev_pread(r->cd, r->win, len, dev_off(r, pos)))
		return read_narrow(r, pos, avail, out);
	r->win_seg = pos->seg;
	r->win_off = pos->off;
	r->win_len = len;
	ks = (const struct pcache_kset_om *)(const void *)r->win;
	if (pcache_log_kset_check(ks, len, pos->lsn, r->seg_count))
		return -EUCLEAN;
	*out = ks;
	return 0;
}

int pcache_log_walk(struct pcache_log_reader *r, const struct pcache_pos *start,
		    uint64_t stop_lsn, pcache_log_fn fn, void *arg, struct pcache_pos *end,
		    int *why, uint64_t *ksets)
{
	struct pcache_pos pos = *start;
	uint64_t n = 0;
	int ret = 0, stop = 0;

	for (;;) {
		const struct pcache_kset_om *ks;
		struct pcache_pos next;

		if (stop_lsn && pos.lsn >= stop_lsn)
			break;
		stop = pcache_log_read(r, &pos, &ks);
		if (stop)
			break;
		if (fn) {
			ret = fn(arg, ks, &pos);
			if (ret)
				break;
		}
		n++;
		pcache_log_next(ks, &pos, &next);
		pos = next;
	}
	*end = pos;
	if (why)
		*why = stop;
	if (ksets)
		*ksets = n;
	return ret;
}
