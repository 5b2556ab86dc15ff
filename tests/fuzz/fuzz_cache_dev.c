/*
 * fuzz_cache_dev.c -- libFuzzer target for the cache device loader (core/cache_dev.c).
 *
 * A small device (10 MiB: 8 segments of 1 MiB) is formatted once, given an image and a few
 * updates so that most records have two valid slots, and its metadata area is kept as the
 * golden copy. Each input restores the golden metadata and overlays itself on it:
 *
 *   byte 0       flags: bit 0 = recompute the CRC of every slot afterwards (so the fuzzer gets
 *                past the CRC into the field checks), bit 1 = open read-only
 *   then chunks  [offset: 3 bytes LE, taken modulo the metadata length] [n: 1 byte] [n bytes]
 *
 * The device is then opened. It must not crash; when it opens, every getter must return values
 * in range; a read-write open with damaged slots is then repaired, closed and reopened, and must
 * load the same values with nothing left to repair. The device file is unlinked at start (it is reopened as
 * /proc/self/fd/N), so a crash leaves nothing behind.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pcache/cache_dev.h"
#include "pcache/util.h"

#define MIB (1024u * 1024u)
#define DEV_SIZE (10u * MIB)
#define SEGS 8u
#define MD_LEN (PCACHE_SEGTAB_OFF(PCACHE_MAX_IMAGES_V1) + SEGS * 2u * PCACHE_SEG_SLOT_SIZE)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dev_path[64];
static int dev_fd = -1;
static uint8_t golden[MD_LEN];
static uint8_t work[MD_LEN];

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "fuzz_cache_dev: check failed: %s (line %d)\n", #cond, \
				__LINE__);                                              \
			abort();                                                        \
		}                                                                       \
	} while (0)

static struct pcache_cache_dev *open_dev(bool ro, char *err, size_t errlen, int *rc)
{
	struct pcache_format_opts fo = { .seg_size = MIB };
	struct pcache_cache_dev_opts o = { .path = dev_path, .format_if_blank = !ro, .format = &fo,
					   .read_only = ro };
	struct pcache_cache_dev *cd = NULL;

	*rc = pcache_cache_dev_open(&o, &cd, err, errlen);
	return cd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char tmpl[] = "/dev/shm/pcache-fuzz-XXXXXX", err[256];
	struct pcache_cache_dev *cd;
	struct pcache_image_ent e;
	struct pcache_cache_info ci;
	struct pcache_pos t = { 1, 64, 7 };
	int rc;

	(void)argc;
	(void)argv;
	dev_fd = mkstemp(tmpl);
	if (dev_fd < 0 || ftruncate(dev_fd, DEV_SIZE))
		abort();
	unlink(tmpl);
	snprintf(dev_path, sizeof(dev_path), "/proc/self/fd/%d", dev_fd);
	cd = open_dev(false, err, sizeof(err), &rc);
	if (!cd) {
		fprintf(stderr, "fuzz_cache_dev: format: %s\n", err);
		abort();
	}
	memset(&e, 0, sizeof(e));
	strcpy(e.name, "vm1");
	strcpy(e.path, "/images/vm1.raw");
	e.size = 64 * MIB;
	e.lbs = 512;
	if (pcache_cache_dev_image_add(cd, &e))
		abort();
	e.wb_lsn = 3;
	pcache_cache_dev_get_info(cd, &ci);
	ci.wb_rate = 12345;
	if (pcache_cache_dev_image_update(cd, &e) || pcache_cache_dev_set_info(cd, &ci) ||
	    pcache_cache_dev_set_key_tail(cd, &t) || pcache_cache_dev_set_dirty_tail(cd, &t) ||
	    pcache_cache_dev_seg_gen_bump(cd, 2))
		abort();
	pcache_cache_dev_close(cd);
	if (pread(dev_fd, golden, MD_LEN, 0) != (ssize_t)MD_LEN)
		abort();
	return 0;
}

/* Recompute the CRC of a slot whose header claims the expected type. */
static void fix_slot(uint64_t off, uint16_t type, uint16_t len)
{
	struct pcache_rec_hdr_om *h = (void *)(work + off);

	if (pcache_le16(&h->type) == type)
		h->crc = pcache_crc32c(PCACHE_CRC_SEED, work + off + 4, len - 4u);
}

static void fix_crcs(void)
{
	uint32_t i, k;

	for (k = 0; k < 2; k++) {
		uint64_t sb = PCACHE_SB_OFF + k * PCACHE_SB_SLOT_SIZE;
		uint16_t len = pcache_le16(work + sb + 6);

		/* the superblock CRC runs over its own length (a newer version may be longer) */
		if (len >= 32 && len <= PCACHE_SB_SLOT_SIZE)
			fix_slot(sb, pcache_le16(work + sb + 4), len);
		fix_slot(PCACHE_INFO_OFF + k * PCACHE_INFO_SLOT_SIZE, PCACHE_REC_INFO,
			 sizeof(struct pcache_cache_info_om));
		fix_slot(PCACHE_KEY_TAIL_SLOT(k), PCACHE_REC_KEY_TAIL, sizeof(struct pcache_tail_om));
		fix_slot(PCACHE_DIRTY_TAIL_SLOT(k), PCACHE_REC_DIRTY_TAIL, sizeof(struct pcache_tail_om));
		for (i = 0; i < PCACHE_MAX_IMAGES_V1; i++)
			fix_slot(PCACHE_IMAGE_SLOT(i, k), PCACHE_REC_IMAGE, sizeof(struct pcache_image_om));
		for (i = 0; i < SEGS; i++)
			fix_slot(PCACHE_SEG_SLOT(PCACHE_MAX_IMAGES_V1, i, k), PCACHE_REC_SEG, sizeof(struct pcache_seg_om));
	}
}

struct seen {
	struct pcache_cache_info ci;
	struct pcache_pos kt, dt;
	int nimg;
	uint64_t gen[SEGS];
	struct pcache_image_ent img[PCACHE_MAX_IMAGES];
};

/* Every getter in range; fills s for the comparison after repair. */
static void check_loaded(struct pcache_cache_dev *cd, struct seen *s)
{
	uint64_t size = pcache_cache_dev_size(cd), seg_size = pcache_cache_dev_seg_size(cd);
	uint32_t count = pcache_cache_dev_seg_count(cd), i;
	const struct pcache_sb_om *sb = pcache_cache_dev_sb(cd);
	char *base = pcache_cache_dev_base(cd);
	int j, k;

	CHECK(count >= PCACHE_MIN_SEGS && count <= PCACHE_MAX_SEGS);
	CHECK(PCACHE_IS_POW2(seg_size) && seg_size >= PCACHE_MIN_SEG_SIZE);
	CHECK(sb->seg_base % PCACHE_SEG_BASE_ALIGN == 0);
	CHECK(sb->seg_base + (uint64_t)count * seg_size <= size);
	CHECK((sb->version == PCACHE_FORMAT_VERSION || sb->version == PCACHE_FORMAT_VERSION_V1) &&
	      sb->magic == PCACHE_SB_MAGIC);
	CHECK(pcache_cache_dev_max_images(cd) == sb->max_images && pcache_max_images_valid(sb->max_images));
	CHECK((char *)pcache_cache_dev_seg_addr(cd, count - 1) + seg_size <= base + size);
	CHECK(pcache_cache_dev_seg_addr(cd, count) == NULL);
	pcache_cache_dev_get_info(cd, &s->ci);
	CHECK(pcache_gc_percent_valid(s->ci.gc_percent));
	CHECK(s->ci.dirty_low < s->ci.dirty_high && s->ci.dirty_high <= 100);
	CHECK(s->ci.next_image_id > 0 && !(s->ci.flags & ~PCACHE_INFO_DATA_CRC));
	pcache_cache_dev_get_key_tail(cd, &s->kt);
	pcache_cache_dev_get_dirty_tail(cd, &s->dt);
	CHECK(s->kt.seg < count && s->kt.off < seg_size && s->kt.off % 8 == 0 && s->kt.lsn);
	CHECK(s->dt.seg < count && s->dt.off < seg_size && s->dt.off % 8 == 0 && s->dt.lsn);
	for (i = 0; i < SEGS && i < count; i++)
		s->gen[i] = pcache_cache_dev_seg_gen(cd, i);
	s->nimg = pcache_cache_dev_images(cd, s->img, PCACHE_MAX_IMAGES);
	CHECK(s->nimg >= 0 && s->nimg <= (int)PCACHE_MAX_IMAGES);
	for (j = 0; j < s->nimg; j++) {
		const struct pcache_image_ent *e = &s->img[j];

		CHECK(e->id && e->id < s->ci.next_image_id && e->slot < sb->max_images);
		CHECK(pcache_image_name_valid(e->name));
		CHECK(strlen(e->path) > 0 && strlen(e->path) <= PCACHE_PATH_MAX);
		CHECK(e->state == PCACHE_IMAGE_ATTACHED || e->state == PCACHE_IMAGE_DETACHED);
		CHECK(PCACHE_IS_POW2(e->lbs) && e->lbs >= 512 && e->lbs <= 65536);
		/* a file (lbs 512) has any size, 0 included; a larger-block device whole blocks */
		CHECK((e->lbs == 512 || (e->size && e->size % e->lbs == 0)) &&
		      e->cache_mode <= PCACHE_MODE_WRITEAROUND);
		for (k = 0; k < j; k++)
			CHECK(s->img[k].id != e->id && strcmp(s->img[k].name, e->name));
	}
	CHECK(pcache_cache_dev_check(cd, NULL, NULL) ==
	      (pcache_cache_dev_damaged(cd) ? PCACHE_CHECK_REPAIRABLE : PCACHE_CHECK_CLEAN));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pcache_cache_dev *cd;
	struct seen *a, *b;
	char err[256];
	size_t pos = 1;
	bool ro;
	int rc, j;

	memcpy(work, golden, MD_LEN);
	while (pos + 4 <= size) {
		uint32_t off = (data[pos] | data[pos + 1] << 8 | (uint32_t)data[pos + 2] << 16) % MD_LEN;
		size_t n = data[pos + 3];

		pos += 4;
		n = PCACHE_MIN(n, size - pos);
		n = PCACHE_MIN(n, (size_t)(MD_LEN - off));
		memcpy(work + off, data + pos, n);
		pos += n;
	}
	if (size && data[0] & 1)
		fix_crcs();
	ro = size && data[0] & 2;
	if (pwrite(dev_fd, work, MD_LEN, 0) != (ssize_t)MD_LEN)
		abort();

	cd = open_dev(ro, err, sizeof(err), &rc);
	if (!cd) {
		CHECK(rc < 0 && err[0]);
		return 0;
	}
	a = malloc(sizeof(*a));
	b = malloc(sizeof(*b));
	CHECK(a && b);
	memset(a, 0, sizeof(*a));
	memset(b, 0, sizeof(*b));
	check_loaded(cd, a);
	if (ro || !pcache_cache_dev_damaged(cd)) { /* nothing to repair: the reopen would be the same */
		pcache_cache_dev_close(cd);
		goto out;
	}
	/* repairing a loadable device never makes it worse */
	CHECK(pcache_cache_dev_repair(cd) == 0);
	pcache_cache_dev_close(cd);
	cd = open_dev(false, err, sizeof(err), &rc);
	if (!cd) {
		fprintf(stderr, "fuzz_cache_dev: reopen after repair failed: %s\n", err);
		abort();
	}
	check_loaded(cd, b);
	CHECK(pcache_cache_dev_damaged(cd) == 0);
	CHECK(a->ci.flags == b->ci.flags && a->ci.gc_percent == b->ci.gc_percent &&
	      a->ci.dirty_high == b->ci.dirty_high && a->ci.dirty_low == b->ci.dirty_low &&
	      a->ci.wb_rate == b->ci.wb_rate && a->ci.next_image_id == b->ci.next_image_id);
	CHECK(a->nimg == b->nimg);
	CHECK(!memcmp(&a->kt, &b->kt, sizeof(a->kt)) && !memcmp(&a->dt, &b->dt, sizeof(a->dt)));
	CHECK(!memcmp(a->gen, b->gen, sizeof(a->gen)));
	for (j = 0; j < a->nimg; j++)
		CHECK(a->img[j].id == b->img[j].id && !strcmp(a->img[j].name, b->img[j].name) &&
		      a->img[j].wb_lsn == b->img[j].wb_lsn);
	pcache_cache_dev_close(cd);
out:
	free(a);
	free(b);
	return 0;
}
