/*
 * fuzz_log.c -- libFuzzer target for the key log: ksets, LAST chains, keys and tails as the one
 * log reader (core/log.c) and everything built on it meet them.
 *
 * A small device (10 MiB: 8 segments of 1 MiB) is formatted once with one image (id 1, a 16 MiB
 * backing file next to it) and its metadata kept as the golden copy. Each input restores the
 * golden metadata, zeroes segments 0-1 and writes a log there from the input:
 *
 *   byte 0      flags: bit 0 poison one kset (its range fails every read with -EIO),
 *               bit 1 leave the CRC of every kset as the input gives it (else computed),
 *               bits 2-3 which kset dirty_tail points at (0 = the first, 1 = the second, ...),
 *               bit 4 dirty_tail's offset taken from the input (bytes 1-2) instead
 *   then ops    [op: 1 byte]:
 *               op % 4 == 0: a kset of (next byte % 8) + 1 keys, 16 input bytes per key
 *                            (off, len, flags, image, seg, seg_off, gen, crc), epoch + (op >> 7)
 *               op % 4 == 1: a LAST record to segment (next byte % 10) (may be out of range)
 *               op % 4 == 2: (next byte) raw bytes at the write position (a torn kset)
 *               op % 4 == 3: skip (next byte * 8) bytes (a gap: the log ends there)
 *
 * Then: a walk with the reader of a read-only open (lsns consecutive, positions inside the
 * segments, every key checked); the engine's start (replay) with the same poison; if it starts,
 * attach the image (its replay), read the whole image, write back everything, run GC, stop.
 * Nothing may crash, hang or leak; an engine that refuses the device must say why.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/cache_i.h"
#include "pcache/cache.h"
#include "pcache/cache_dev.h"
#include "pcache/log.h"
#include "pcache/util.h"

#define MIB (1024u * 1024u)
#define DEV_SIZE (10u * MIB)
#define SEGS 8u
#define IMG_SIZE (16u * MIB)
#define MD_LEN (PCACHE_SEGTAB_OFF(PCACHE_MAX_IMAGES_V1) + SEGS * 2u * PCACHE_SEG_SLOT_SIZE)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dev_path[64], img_path[64];
static int dev_fd = -1, img_fd = -1;
static uint8_t golden[MD_LEN];
static uint8_t logbuf[2 * MIB];
static uint64_t seg0;       /* device offset of segment 0 */
static uint64_t poison_off, poison_len;
static bool verbose;

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "fuzz_log: check failed: %s (line %d)\n", #cond, \
				__LINE__);                                              \
			abort();                                                        \
		}                                                                       \
	} while (0)

static void quiet(int level, const char *line)
{
	(void)level;
	(void)line;
}

static int poison_fault(uint64_t off, size_t len, void *arg)
{
	(void)arg;
	return poison_len && off < poison_off + poison_len && poison_off < off + len ? -EIO : 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char tmpl[] = "/dev/shm/pcache-fuzzlog-XXXXXX", itmpl[] = "/dev/shm/pcache-fuzzimg-XXXXXX";
	struct pcache_format_opts fo = { .seg_size = MIB };
	struct pcache_cache_dev_opts o = { .format_if_blank = true, .format = &fo };
	struct pcache_cache_dev *cd;
	struct pcache_image_ent e;
	char err[256];

	(void)argc;
	(void)argv;
	verbose = getenv("FUZZ_LOG_VERBOSE") != NULL; /* debugging an input: say what happens */
	if (!verbose)
		pcache_set_log_hook(quiet);
	dev_fd = mkstemp(tmpl);
	img_fd = mkstemp(itmpl);
	if (dev_fd < 0 || img_fd < 0 || ftruncate(dev_fd, DEV_SIZE) || ftruncate(img_fd, IMG_SIZE))
		abort();
	unlink(tmpl);
	unlink(itmpl);
	snprintf(dev_path, sizeof(dev_path), "/proc/self/fd/%d", dev_fd);
	snprintf(img_path, sizeof(img_path), "/proc/self/fd/%d", img_fd);
	o.path = dev_path;
	if (pcache_cache_dev_open(&o, &cd, err, sizeof(err))) {
		fprintf(stderr, "fuzz_log: format: %s\n", err);
		abort();
	}
	CHECK(pcache_cache_dev_seg_count(cd) == SEGS);
	seg0 = (uint64_t)((uint8_t *)pcache_cache_dev_seg_addr(cd, 0) -
			  (uint8_t *)pcache_cache_dev_base(cd));
	memset(&e, 0, sizeof(e));
	strcpy(e.name, "vm1");
	snprintf(e.path, sizeof(e.path), "%s", img_path);
	e.size = IMG_SIZE;
	e.lbs = 512;
	if (pcache_cache_dev_image_add(cd, &e))
		abort();
	pcache_cache_dev_close(cd);
	if (pread(dev_fd, golden, MD_LEN, 0) != (ssize_t)MD_LEN)
		abort();
	return 0;
}

/* ---- building the log from the input ------------------------------------------------------ */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint8_t take(struct in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

struct built {
	struct pcache_pos at[8];    /* the first ksets' positions (for dirty_tail) */
	uint32_t nat;
	uint64_t ksets;
	uint64_t key_off[16];       /* where the first keys point (read back through the engine) */
	uint32_t nkey;
};

/* Append ksets to logbuf (segments 0 and 1 of the device) as the ops say. */
static void build(struct in *in, uint8_t flags, struct built *b)
{
	struct pcache_pos pos = { .seg = 0, .off = 0, .lsn = 1 };
	uint64_t epoch = 1;
	bool raw_crc = flags & 2;

	while (in->n) {
		uint8_t op = take(in);
		uint8_t *at;
		uint32_t size, i;

		if (pos.seg > 1 || pos.off + PCACHE_KSET_MAX_SIZE > MIB)
			break;
		at = logbuf + (uint64_t)pos.seg * MIB + pos.off;
		switch (op % 4) {
		case 0: {
			struct pcache_kset_om *ks = (struct pcache_kset_om *)(void *)at;
			uint32_t n = take(in) % 8u + 1u;

			size = PCACHE_KSET_SIZE(n);
			memset(at, 0, size);
			ks->key_num = (uint16_t)n;
			ks->magic = PCACHE_KSET_MAGIC;
			ks->lsn = pos.lsn;
			epoch += op >> 7;
			ks->epoch = epoch;
			for (i = 0; i < n; i++) {
				struct pcache_key_om *k = &ks->keys[i];

				k->off = (uint64_t)(take(in) | take(in) << 8) * 4096u % (IMG_SIZE + 8192u);
				if (b->nkey < 16)
					b->key_off[b->nkey++] = k->off;
				k->len = (uint32_t)(take(in) % 64u + 1u) * 512u - (take(in) & 1u);
				k->flags = take(in) % 5u;
				k->image_id = take(in) % 3u;
				k->seg = take(in) % 10u;
				k->seg_off = (uint32_t)take(in) * 4096u;
				k->seg_gen = take(in) % 3u;
				k->data_crc = take(in);
				for (uint32_t j = 0; j < 6; j++)
					(void)take(in); /* room for more fields; 16 bytes a key */
			}
			if (raw_crc)
				ks->crc = (uint32_t)take(in) | (uint32_t)take(in) << 8;
			else
				ks->crc = pcache_crc32c(PCACHE_CRC_SEED, at + 4, size - 4);
			break;
		}
		case 1: {
			struct pcache_kset_om *ks = (struct pcache_kset_om *)(void *)at;

			size = PCACHE_KSET_HDR_SIZE;
			memset(at, 0, size);
			ks->flags = PCACHE_KSET_LAST;
			ks->magic = PCACHE_KSET_MAGIC;
			ks->lsn = pos.lsn;
			ks->epoch = epoch;
			ks->next_seg = take(in) % 10u;
			ks->crc = pcache_crc32c(PCACHE_CRC_SEED, at + 4, size - 4);
			break;
		}
		case 2:
			size = take(in);
			for (i = 0; i < size; i++)
				at[i] = take(in);
			return; /* a torn kset ends what the log can reach */
		default:
			pos.off += (uint32_t)take(in) * 8u;
			continue;
		}
		if (b->nat < 8)
			b->at[b->nat++] = pos;
		b->ksets++;
		if (op % 4 == 1) {
			const struct pcache_kset_om *ks = (const void *)at;

			if (ks->next_seg > 1)
				return; /* the builder writes segments 0 and 1 only */
			pos.seg = ks->next_seg;
			pos.off = 0;
		} else {
			pos.off += size;
		}
		pos.lsn++;
	}
}

/* ---- checks ------------------------------------------------------------------------------- */

static int walk_kset(void *arg, const struct pcache_kset_om *ks, const struct pcache_pos *pos)
{
	struct pcache_pos *prev = arg;
	char err[256];
	uint32_t i;

	CHECK(pcache_le64(&ks->lsn) == pos->lsn);
	CHECK(prev->lsn == 0 || pos->lsn == prev->lsn + 1);
	CHECK(pos->seg < SEGS && pos->off + PCACHE_KSET_SIZE(pcache_le16(&ks->key_num)) <= MIB);
	for (i = 0; i < pcache_le16(&ks->key_num); i++)
		(void)pcache_log_key_check(&ks->keys[i], SEGS, MIB, err, sizeof(err));
	*prev = *pos;
	return 0;
}

static void walk_read_only(void)
{
	struct pcache_cache_dev_opts o = { .path = dev_path, .read_only = true, .no_lock = true,
					   .read_fault = poison_fault };
	struct pcache_cache_dev *cd;
	struct pcache_log_reader *rd;
	struct pcache_pos kt, end, prev = { 0, 0, 0 };
	uint64_t n;
	char err[256];
	int why;

	if (pcache_cache_dev_open(&o, &cd, err, sizeof(err)))
		return;
	CHECK(pcache_log_reader_new(cd, &rd) == 0);
	pcache_cache_dev_get_key_tail(cd, &kt);
	CHECK(pcache_log_walk(rd, &kt, 0, walk_kset, &prev, &end, &why, &n) == 0);
	CHECK(why == -EUCLEAN || why == -EIO);
	CHECK(end.lsn == kt.lsn + n);
	pcache_log_reader_free(rd);
	pcache_cache_dev_close(cd);
}

static void run_engine(const struct built *b)
{
	struct pcache_cache_opts o;
	struct pcache_image *img = NULL;
	struct pcache_cache *c;
	static uint8_t buf[65536];
	char err[512];
	uint32_t i;

	memset(&o, 0, sizeof(o));
	o.path = dev_path;
	o.gc_percent = 0;
	o.no_background = true;
	o.read_fault = poison_fault;
	err[0] = 0;
	if (pcache_cache_start(&o, &c, err, sizeof(err))) {
		if (verbose)
			fprintf(stderr, "fuzz_log: start refused: %s\n", err);
		CHECK(err[0]); /* a refusal names its reason */
		return;
	}
	if (pcache_cache_attach_known(c, err, sizeof(err)) == 0)
		img = pcache_image_get(c, "vm1");
	if (verbose)
		fprintf(stderr, "fuzz_log: started, image %s (%s)\n", img ? "attached" : "not attached",
			img ? "" : err);
	if (img) {
		for (i = 0; i < b->nkey; i++) {
			uint64_t off = PCACHE_MIN(b->key_off[i], IMG_SIZE - sizeof(buf));
			int r = pcache_image_read(img, buf, off, sizeof(buf), NULL, NULL);

			CHECK(r == 0 || r == -EIO); /* synchronous without done(); EIO: media */
		}
		(void)pcache_image_writeback_all(img);
	}
	(void)pcache_gc_run(c);
	if (img)
		pcache_image_put(img);
	(void)pcache_cache_stop(c, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct built b = { .nat = 0 };
	struct pcache_cache_dev_opts o = { .path = dev_path };
	struct pcache_cache_dev *cd;
	struct pcache_pos kt = { 0, 0, 1 }, dt = kt;
	uint8_t flags = take(&in), dsel;
	char err[256];

	if (pwrite(dev_fd, golden, MD_LEN, 0) != (ssize_t)MD_LEN)
		abort();
	/* every segment zero again (reads of a hole in tmpfs are zeros) */
	if (fallocate(dev_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)seg0,
		      (off_t)(DEV_SIZE - seg0)))
		abort();
	memset(logbuf, 0, sizeof(logbuf));
	dsel = (flags >> 2) & 3;
	if (flags & 16) {
		dt.off = ((uint32_t)take(&in) | (uint32_t)take(&in) << 8) * 8u;
		dt.lsn = 1 + dsel;
	}
	build(&in, flags, &b);
	if (pwrite(dev_fd, logbuf, sizeof(logbuf), (off_t)seg0) != (ssize_t)sizeof(logbuf))
		abort();
	if (!(flags & 16) && dsel < b.nat)
		dt = b.at[dsel];
	poison_len = 0;
	if ((flags & 1) && b.nat) {
		poison_off = seg0 + (uint64_t)b.at[b.nat - 1].seg * MIB + b.at[b.nat - 1].off + 8;
		poison_len = 8;
	}
	/* the tails (through the device layer, so their records are valid) */
	if (pcache_cache_dev_open(&o, &cd, err, sizeof(err)))
		abort();
	if (pcache_cache_dev_set_key_tail(cd, &kt) || pcache_cache_dev_set_dirty_tail(cd, &dt))
		abort();
	pcache_cache_dev_close(cd);

	walk_read_only();
	run_engine(&b);
	return 0;
}
