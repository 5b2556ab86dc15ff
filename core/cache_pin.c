/*
 * cache_pin.c -- zero-copy reads: a read that is all hits gets iovecs into pmem, its data
 * segments read-pinned until pcache_read_unpin() (invariant 9 of cache_req.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_i.h"
#include "pcache/media.h"

/* ---- zero-copy read (pinned hits) --------------------------------------------------------- */

/*
 * ZERO keys point here. Never written: in .bss it maps the kernel's shared zero page, so its
 * size costs no memory. 256 KiB: a 1 MiB zeroed read is four pieces.
 */
#define PIN_ZERO_SIZE (256u << 10)
static uint8_t pin_zeros[PIN_ZERO_SIZE];

/* An extent whose data CRC is checked once its segment is pinned. */
struct pin_crc {
	uint32_t seg, start, len, crc;
};

#define PIN_MAX_CRC 256u   /* extents checked per pin: 4 KiB keys merged into 64 pieces fit */

struct pin_ctx {
	struct pcache_read_pin *pin;
	struct pin_crc crc[PIN_MAX_CRC];
	uint32_t ncrc;
	uint32_t last_seg;   /* the segment pinned last, at last_gen (UINT32_MAX: none) */
	uint64_t last_gen;
};

/* Append [base, base+len) to the iovecs, merged with the last one when contiguous. */
static bool pin_iov_add(struct pcache_read_pin *pin, uint8_t *base, size_t len)
{
	struct iovec *last = pin->niov ? &pin->iov[pin->niov - 1] : NULL;

	if (last && last->iov_base != pin_zeros && (uint8_t *)last->iov_base + last->iov_len == base) {
		last->iov_len += len;
		return true;
	}
	if (pin->niov == PCACHE_PIN_MAX_IOV)
		return false;
	pin->iov[pin->niov++] = (struct iovec){ .iov_base = base, .iov_len = len };
	return true;
}

static bool pin_zero_add(struct pcache_read_pin *pin, size_t len)
{
	while (len) {
		struct iovec *last = pin->niov ? &pin->iov[pin->niov - 1] : NULL;
		size_t n;

		if (last && last->iov_base == pin_zeros && last->iov_len < PIN_ZERO_SIZE) {
			n = PCACHE_MIN(len, PIN_ZERO_SIZE - last->iov_len);
			last->iov_len += n;
		} else {
			n = PCACHE_MIN(len, (size_t)PIN_ZERO_SIZE);
			if (pin->niov == PCACHE_PIN_MAX_IOV)
				return false;
			pin->iov[pin->niov++] = (struct iovec){ .iov_base = pin_zeros, .iov_len = n };
		}
		len -= n;
	}
	return true;
}

/* Add one hit (key k, bytes [pos, part_end) of the region) under the subtree lock. */
static bool pin_hit(struct pcache_cache *c, struct pin_ctx *x, const struct pcache_ikey *k,
		    uint32_t pos, uint32_t part_end)
{
	struct pcache_read_pin *pin = x->pin;
	uint32_t seg_off = k->seg_off + (pos - k->off);

	if (k->flags & PCACHE_KEY_ZERO)
		return pin_zero_add(pin, part_end - pos);
	if (k->seg != x->last_seg || k->seg_gen != x->last_gen) {
		if (pin->nseg == PCACHE_PIN_MAX_IOV)
			return false;
		if (!pcache_seg_read_pin(c, k->seg, k->seg_gen))
			return false; /* freed since: a stale key, the copying read drops it */
		pin->seg[pin->nseg++] = k->seg;
		x->last_seg = k->seg;
		x->last_gen = k->seg_gen;
	}
	if (k->crc_len) {
		struct pin_crc pc = { .seg = k->seg, .start = k->seg_off - k->crc_front,
				      .len = k->crc_len, .crc = k->data_crc };

		/* one extent twice in a row (pieces of a cut key): check it once */
		if (!x->ncrc || memcmp(&x->crc[x->ncrc - 1], &pc, sizeof(pc)) != 0) {
			if (x->ncrc == PIN_MAX_CRC)
				return false;
			x->crc[x->ncrc++] = pc;
		}
	}
	return pin_iov_add(pin, pcache_seg_ptr(c, k->seg, seg_off), part_end - pos);
}

/* Pin the hits of one region piece; false when any byte is not a usable hit. */
static bool pin_region(struct pcache_image *img, struct pin_ctx *x, uint64_t off, uint32_t len)
{
	struct pcache_subtree *sub = &img->ix.sub[off >> PCACHE_REGION_SHIFT];
	uint32_t pos = (uint32_t)(off & (PCACHE_REGION_SIZE - 1)), end = pos + len, i;
	bool ok = true;

	pthread_mutex_lock(&sub->lock);
	i = pcache_subtree_find(sub, pos);
	while (pos < end) {
		const struct pcache_ikey *k = i < sub->n ? &sub->v[i] : NULL;
		uint32_t part_end;

		if (!k || k->off > pos || (k->flags & PCACHE_IKEY_EMPTY)) {
			ok = false; /* a hole or a miss in flight */
			break;
		}
		part_end = PCACHE_MIN(end, k->off + k->len);
		if (!pin_hit(img->c, x, k, pos, part_end)) {
			ok = false;
			break;
		}
		pcache_ikey_touch(&sub->v[i]);
		pos = part_end;
		i++;
	}
	pthread_mutex_unlock(&sub->lock);
	return ok;
}

static void pin_release(struct pcache_read_pin *pin)
{
	uint32_t i;

	for (i = 0; i < pin->nseg; i++)
		pcache_seg_read_unpin(pin->img->c, pin->seg[i]);
	pin->nseg = 0;
	pin->niov = 0;
	pcache_req_exit(pin->img);
	pin->img = NULL;
}

int pcache_image_read_pin(struct pcache_image *img, uint64_t off, size_t len,
			  struct pcache_read_pin *pin)
{
	struct pcache_cache *c = img->c;
	struct pin_ctx x;
	uint64_t pos = off;
	uint32_t j;
	int ret;

	pin->niov = 0;
	pin->nseg = 0;
	pin->img = NULL;
	ret = pcache_req_check_range(img, off, len);
	if (ret || len == 0)
		return ret;
	ret = pcache_req_enter(img);
	if (ret)
		return ret;
	pin->img = img;
	x.pin = pin;
	x.ncrc = 0;
	x.last_seg = UINT32_MAX;
	x.last_gen = 0;
	while (pos < off + len) {
		uint64_t rend = ((pos >> PCACHE_REGION_SHIFT) + 1) << PCACHE_REGION_SHIFT;
		uint32_t plen = (uint32_t)(PCACHE_MIN(off + len, rend) - pos);

		if (!pin_region(img, &x, pos, plen)) {
			pin_release(pin);
			return PCACHE_PIN_FALLBACK;
		}
		pos += plen;
	}
	/* the segments are pinned: the bytes checked here are the bytes the caller gets */
	for (j = 0; j < x.ncrc; j++) {
		const struct pin_crc *pc = &x.crc[j];
		uint32_t crc;

		if (pcache_media_crc(pcache_seg_ptr(c, pc->seg, pc->start), pc->len, &crc) != 0) {
			pcache_req_media_error(img, pc->seg, pc->start);
			ret = -EIO;
			continue;
		}
		if (crc == pc->crc)
			continue;
		atomic_fetch_add(&img->crc_errors, 1);
		pcache_log(PCACHE_LOG_ERR, "image %s: data CRC mismatch in segment %u at %u",
			   img->name, pc->seg, pc->start);
		ret = -EIO;
	}
	atomic_fetch_add_explicit(&img->reads, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&img->read_bytes, len, memory_order_relaxed);
	if (ret) {
		pin_release(pin);
		return ret;
	}
	atomic_fetch_add_explicit(&img->read_hit_bytes, len, memory_order_relaxed);
	/* a stream over cached data is still a stream (a fallback notes itself in the read) */
	(void)pcache_seq_bypass(img, false, off, len);
	return 0;
}

void pcache_read_unpin(struct pcache_read_pin *pin)
{
	if (pin->img)
		pin_release(pin);
}
