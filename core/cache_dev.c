/*
 * cache_dev.c -- the cache device: open/lock/map, close, accessors, check and repair. Its
 * records live in cache_dev_records.c (encoding, updates), cache_dev_load.c (reading and
 * validating at open) and cache_dev_format.c (format v1); the invariants below hold for all.
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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pcache/backing.h"
#include "pcache/util.h"
#include "cache_dev_i.h"

int cd_seterr(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

void cd_note(struct pcache_cache_dev *cd, const char *fmt, ...)
{
	va_list ap;

	cd->damaged++;
	if (cd->note_count >= NOTES_MAX)
		return;
	va_start(ap, fmt);
	vsnprintf(cd->notes[cd->note_count++], sizeof(cd->notes[0]), fmt, ap);
	va_end(ap);
}

bool cd_all_zero(const void *p, size_t len)
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
int cd_random_uuid(uint8_t uuid[16])
{
	int rc = random_bytes(uuid, 16);

	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
	return rc;
}

uint32_t cd_rec_crc(const void *rec, size_t len)
{
	return pcache_crc32c(PCACHE_CRC_SEED, (const uint8_t *)rec + 4, len - 4);
}

/* Every read of the device: the test fault hook first, then pread (or the mcsafe read). */
int cd_pread(struct pcache_cache_dev *cd, void *buf, size_t len, uint64_t off)
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

uint64_t cd_seg_base_for(uint32_t max_images, uint64_t seg_count)
{
	return PCACHE_ALIGN_UP(PCACHE_SEGTAB_OFF(max_images) + seg_count * 2u * PCACHE_SEG_SLOT_SIZE,
			       (uint64_t)PCACHE_SEG_BASE_ALIGN);
}

int pcache_cache_dev_geometry(uint64_t dev_size, uint64_t seg_size, uint32_t maxi,
			      uint32_t *seg_count, uint64_t *seg_base)
{
	uint64_t n;

	if (!PCACHE_IS_POW2(seg_size) || seg_size < PCACHE_MIN_SEG_SIZE ||
	    seg_size > PCACHE_MAX_SEG_SIZE || !pcache_max_images_valid(maxi))
		return -EINVAL;
	if (dev_size < cd_seg_base_for(maxi, PCACHE_MIN_SEGS) + PCACHE_MIN_SEGS * seg_size)
		return -ENOSPC;
	n = (dev_size - cd_seg_base_for(maxi, 0)) / seg_size;
	if (n > PCACHE_MAX_SEGS)
		n = PCACHE_MAX_SEGS;
	while (n > PCACHE_MIN_SEGS && cd_seg_base_for(maxi, n) + n * seg_size > dev_size)
		n--;
	*seg_count = (uint32_t)n;
	*seg_base = cd_seg_base_for(maxi, n);
	return 0;
}

uint32_t pcache_cache_dev_max_images(const struct pcache_cache_dev *cd)
{
	return cd->max_images;
}

void cd_assert_state(struct pcache_cache_dev *cd)
{
#ifndef NDEBUG
	uint32_t i, j;

	pthread_mutex_lock(&cd->img_lock);
	pthread_mutex_lock(&cd->info_lock);
	assert(cd->info_rs.newest <= 1 && !cd_info_check(&cd->info, NULL, 0));
	for (i = 0; i < cd->max_images; i++) {
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
	assert(!cd_pos_check(cd, &cd->key_tail, NULL, 0) && !cd_pos_check(cd, &cd->dirty_tail, NULL, 0));
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
		return cd_seterr(err, errlen, -errno, "open %s: %s", cd->path, strerror(errno));
	cd->locked = !no_lock && !flock(cd->fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB);
	if (!no_lock && !cd->locked) {
		rc = -errno;
		if (rc == -EWOULDBLOCK) {
			pcache_flock_holder(cd->fd, holder, sizeof(holder));
			rc = cd_seterr(err, errlen, -EBUSY, "%s: locked by %s", cd->path, holder);
		} else {
			rc = cd_seterr(err, errlen, rc, "lock %s: %s", cd->path, strerror(-rc));
		}
		goto out_close;
	}
	if (fstat(cd->fd, &st)) {
		rc = cd_seterr(err, errlen, -errno, "stat %s: %s", cd->path, strerror(errno));
		goto out_close;
	}
	if (S_ISREG(st.st_mode) && st.st_size == 0 && create_size && !read_only &&
	    ftruncate(cd->fd, (off_t)create_size)) {
		rc = cd_seterr(err, errlen, -errno, "create %s: %s", cd->path, strerror(errno));
		goto out_close;
	}
	if (S_ISREG(st.st_mode) && st.st_size == 0 && !(create_size && !read_only)) {
		rc = cd_seterr(err, errlen, -ENOSPC, "device: %s is empty", cd->path);
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
	int rc = cd_pread(cd, buf, len, off);

	*zero = !rc && cd_all_zero(buf, len);
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
		return cd_seterr(err, errlen, -ENOTEMPTY, "device is not blank: it carries %s; refusing to "
			      "format it ('pcachectl format --force' overwrites it)", what);
	/* rc < 0: libblkid cannot read it (a device-DAX character device): the scans still run */
	if (head_end <= PCACHE_INFO_OFF)
		return 0;
	buf = malloc(PCACHE_BLANK_SCAN);
	if (!buf)
		return cd_seterr(err, errlen, -ENOMEM, "out of memory");
	rc = dev_scan_zero(cd, buf, PCACHE_INFO_OFF, head_end - PCACHE_INFO_OFF, &zero);
	h = (const struct pcache_rec_hdr_om *)buf;
	if (!rc && !zero && pcache_le16(&h->type) == PCACHE_REC_INFO &&
	    pcache_le16(&h->len) == sizeof(struct pcache_cache_info_om) &&
	    pcache_le32(&h->crc) == cd_rec_crc(buf, sizeof(struct pcache_cache_info_om)))
		goto out; /* our own interrupted format: format it again */
	tail_off = PCACHE_MAX(head_end, size - PCACHE_MIN(size, PCACHE_BLANK_SCAN));
	if (!rc && zero && tail_off < size)
		rc = dev_scan_zero(cd, buf, tail_off, size - tail_off, &zero);
	if (rc)
		rc = cd_seterr(err, errlen, rc, "device: read: %s", strerror(-rc));
	else if (!zero)
		rc = cd_seterr(err, errlen, -ENOTEMPTY, "device is not blank: its first 8 KiB are zero but "
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
		return cd_seterr(err, errlen, -ENOSPC, "device: too small (%" PRIu64 " bytes)", cd->map.size);
	slots = malloc(2 * PCACHE_SB_SLOT_SIZE);
	if (!slots)
		return cd_seterr(err, errlen, -ENOMEM, "out of memory");
	for (i = 0; i < 2; i++) {
		unreadable[i] = cd_pread(cd, slots + i * PCACHE_SB_SLOT_SIZE,
						  PCACHE_SB_SLOT_SIZE,
						  PCACHE_SB_OFF + (uint64_t)i * PCACHE_SB_SLOT_SIZE) != 0;
		if (unreadable[i])
			memset(slots + i * PCACHE_SB_SLOT_SIZE, 0, PCACHE_SB_SLOT_SIZE);
	}
	if (!unreadable[0] && !unreadable[1] && cd_all_zero(slots, 2 * PCACHE_SB_SLOT_SIZE)) {
		rc = dev_check_blank(cd, err, errlen);
		if (rc)
			goto out;
		if (!format_if_blank || cd->read_only) {
			rc = cd_seterr(err, errlen, -ENODATA,
				    "superblock: device is blank (not formatted; use 'pcachectl format')");
			goto out;
		}
		rc = cd_format(cd, fo, err, errlen);
		if (rc)
			goto out;
		for (i = 0; i < 2; i++) {
			rc = cd_pread(cd, slots + i * PCACHE_SB_SLOT_SIZE,
					       PCACHE_SB_SLOT_SIZE,
					       PCACHE_SB_OFF + (uint64_t)i * PCACHE_SB_SLOT_SIZE);
			if (rc) {
				cd_seterr(err, errlen, rc, "superblock: read after format: %s", strerror(-rc));
				goto out;
			}
		}
	}
	rc = cd_sb_load(cd, slots, unreadable, err, errlen);
	if (rc)
		goto out;
	rc = cd_md_read(cd, &md, cd->md_len);
	if (rc) {
		cd_seterr(err, errlen, rc, "metadata: %s", strerror(-rc));
		goto out;
	}
	rc = cd_records_load(cd, &md, err, errlen);
out:
	cd_md_free(&md);
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
		return cd_seterr(err, errlen, -EINVAL, "no cache device path");
	if (opts->no_lock && !opts->read_only)
		return cd_seterr(err, errlen, -EINVAL, "no_lock needs read_only");
	cd = dev_alloc(opts->path);
	if (!cd)
		return cd_seterr(err, errlen, -ENOMEM, "out of memory");
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
	cd_assert_state(cd);
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
		return cd_seterr(err, errlen, -EINVAL, "no cache device path");
	cd = dev_alloc(path);
	if (!cd)
		return cd_seterr(err, errlen, -ENOMEM, "out of memory");
	rc = dev_attach(cd, create_size, false, false, err, errlen);
	if (!rc)
		rc = cd_format(cd, fo, err, errlen);
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
	return cd_pread(cd, buf, len, off);
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
	for (i = 0; i < cd->max_images; i++)
		if (cd->img_rs[i].damaged) {
			struct pcache_image_ent e = cd->img[i];

			cd_image_commit(cd, &e);
		}
	LOCK(cd, info_lock);
	if (cd->info_rs.damaged) {
		struct pcache_cache_info ci = cd->info;

		cd_info_commit(cd, &ci);
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
		cd_tail_set(cd, &kp, false);
	if (dd)
		cd_tail_set(cd, &dp, true);
	LOCK(cd, seg_lock);
	for (i = 0; i < cd->seg_count; i++)
		if (cd->seg_rs[i].damaged)
			cd_seg_commit(cd, i, atomic_load_explicit(&cd->seg_gen[i], memory_order_relaxed));
	UNLOCK(cd, seg_lock);
	cd->damaged = 0;
	cd->note_count = 0;
	cd_assert_state(cd);
	return 0;
}
