/*
 * logbuilder.c -- build a key log on a formatted cache device for tests (see logbuilder.h).
 *
 * Invariants: data is persisted before the kset naming it; a kset is written only where it
 * fits with room left for a LAST record; ksets carry lsn = previous + 1 (LAST included) and the
 * current epoch; the log starts at the device's dirty_tail.
 */
#include <errno.h>
#include <string.h>

#include "pcache/util.h"
#include "lib/logbuilder.h"

static void lb_copy(struct lb *lb, void *dst, const void *src, size_t len)
{
	struct pcache_pmem *pm = pcache_cache_dev_pmem(lb->cd);

	/* durable on return: the kset that names this data is written later */
	pm->ops->memcpy(pm->ctx, dst, src, len, 0);
}

static int lb_new_seg(struct lb *lb, uint32_t *seg)
{
	if (lb->next_seg >= lb->seg_count)
		return -ENOSPC;
	*seg = lb->next_seg++;
	return 0;
}

int lb_init(struct lb *lb, struct pcache_cache_dev *cd)
{
	struct pcache_cache_info ci;

	memset(lb, 0, sizeof(*lb));
	lb->cd = cd;
	lb->seg_count = pcache_cache_dev_seg_count(cd);
	lb->seg_size = pcache_cache_dev_seg_size(cd);
	pcache_cache_dev_get_info(cd, &ci);
	lb->data_crc = (ci.flags & PCACHE_INFO_DATA_CRC) != 0;
	pcache_cache_dev_get_dirty_tail(cd, &lb->head);
	lb->epoch = 1;
	lb->max_keys = PCACHE_KSET_MAX_KEYS;
	lb->next_seg = lb->head.seg + 1;
	lb->data_seg = UINT32_MAX;
	return 0;
}

static int lb_write_kset(struct lb *lb, uint32_t n, const struct pcache_key_om *keys, bool last,
			 uint32_t next_seg)
{
	union {
		struct pcache_kset_om ks;
		uint8_t raw[PCACHE_KSET_MAX_SIZE];
	} buf;
	uint32_t size = PCACHE_KSET_SIZE(n);
	uint8_t *dst = (uint8_t *)pcache_cache_dev_seg_addr(lb->cd, lb->head.seg) + lb->head.off;

	memset(&buf, 0, sizeof(buf));
	buf.ks.key_num = (uint16_t)n;
	buf.ks.flags = last ? PCACHE_KSET_LAST : 0;
	buf.ks.magic = PCACHE_KSET_MAGIC;
	buf.ks.lsn = lb->head.lsn;
	buf.ks.epoch = lb->epoch;
	buf.ks.next_seg = last ? next_seg : 0;
	if (n)
		memcpy(buf.ks.keys, keys, n * sizeof(*keys));
	buf.ks.crc = pcache_crc32c(PCACHE_CRC_SEED, buf.raw + 4, size - 4);
	lb_copy(lb, dst, buf.raw, size);
	lb->ksets++;
	if (last) {
		lb->head.seg = next_seg;
		lb->head.off = 0;
	} else {
		lb->head.off += size;
	}
	lb->head.lsn++;
	return 0;
}

int lb_close(struct lb *lb)
{
	uint32_t size;
	int r;

	if (!lb->nkeys)
		return 0;
	size = PCACHE_KSET_SIZE(lb->nkeys);
	if (lb->head.off + size + PCACHE_KSET_HDR_SIZE > lb->seg_size) {
		uint32_t seg;

		r = lb_new_seg(lb, &seg);
		if (r)
			return r;
		lb_write_kset(lb, 0, NULL, true, seg);
	}
	lb_write_kset(lb, lb->nkeys, lb->keys, false, 0);
	lb->nkeys = 0;
	return 0;
}

int lb_flush(struct lb *lb)
{
	int r = lb_close(lb);

	if (!r)
		lb->epoch++;
	return r;
}

int lb_raw_key(struct lb *lb, const struct pcache_key_om *k)
{
	lb->keys[lb->nkeys++] = *k;
	if (lb->nkeys >= lb->max_keys)
		return lb_close(lb);
	return 0;
}

/* Space for len bytes of data: *seg, *off. */
static int lb_alloc(struct lb *lb, uint32_t len, uint32_t *seg, uint32_t *off)
{
	int r;

	if (lb->data_seg == UINT32_MAX || lb->data_off + len > lb->seg_size) {
		r = lb_new_seg(lb, &lb->data_seg);
		if (r)
			return r;
		lb->data_off = 0;
	}
	*seg = lb->data_seg;
	*off = lb->data_off;
	lb->data_off += len;
	return 0;
}

static int lb_data_key(struct lb *lb, uint32_t image_id, uint64_t off, const void *data,
		       uint32_t len, uint16_t flags)
{
	const uint8_t *p = data;
	int r;

	while (len) {
		uint64_t region_end = ((off >> PCACHE_REGION_SHIFT) + 1) << PCACHE_REGION_SHIFT;
		uint32_t n = (uint32_t)PCACHE_MIN((uint64_t)len, region_end - off);
		struct pcache_key_om k;
		uint32_t seg = 0, soff = 0;

		if (!(flags & PCACHE_KEY_ZERO)) {
			n = (uint32_t)PCACHE_MIN((uint64_t)n, lb->seg_size);
			if (lb->data_seg != UINT32_MAX && lb->data_off + n > lb->seg_size &&
			    lb->seg_size - lb->data_off >= 512)
				n = (uint32_t)(lb->seg_size - lb->data_off);
			r = lb_alloc(lb, n, &seg, &soff);
			if (r)
				return r;
			lb_copy(lb, (uint8_t *)pcache_cache_dev_seg_addr(lb->cd, seg) + soff, p, n);
		}
		memset(&k, 0, sizeof(k));
		k.off = off;
		k.len = n;
		k.flags = flags;
		k.image_id = image_id;
		k.seg = seg;
		k.seg_off = soff;
		if (!(flags & PCACHE_KEY_ZERO)) {
			k.seg_gen = pcache_cache_dev_seg_gen(lb->cd, seg);
			if (lb->data_crc)
				k.data_crc = pcache_crc32c(PCACHE_CRC_SEED, p, n);
			p += n;
		}
		r = lb_raw_key(lb, &k);
		if (r)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

int lb_write(struct lb *lb, uint32_t image_id, uint64_t off, const void *data, uint32_t len)
{
	return lb_data_key(lb, image_id, off, data, len, 0);
}

int lb_clean(struct lb *lb, uint32_t image_id, uint64_t off, const void *data, uint32_t len)
{
	return lb_data_key(lb, image_id, off, data, len, PCACHE_KEY_CLEAN);
}

int lb_zero(struct lb *lb, uint32_t image_id, uint64_t off, uint32_t len)
{
	return lb_data_key(lb, image_id, off, NULL, len, PCACHE_KEY_ZERO);
}

void *lb_last_data(struct lb *lb)
{
	const struct pcache_key_om *k = NULL;

	if (lb->nkeys)
		k = &lb->keys[lb->nkeys - 1];
	if (!k)
		return NULL;
	return (uint8_t *)pcache_cache_dev_seg_addr(lb->cd, k->seg) + k->seg_off;
}
