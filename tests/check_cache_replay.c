/*
 * check_cache_replay.c -- replay at start (core/cache_replay.c): restarts keep data, keys of images
 * not attached stay in the log until they attach, a CRC-valid kset with a bad key refuses the
 * start with a message naming it, stale ksets of an earlier lap are never replayed, and the
 * replay of a large log.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../core/cache_i.h"
#include "check_util.h"
#include "lib/engine_util.h"

#define IMG_SIZE (16u << 20)

static char cpath[256], ipath[2][256];
static struct pcache_cache *c;
static struct pcache_image *img[2];

static void *stage_shm;   /* staging memory for the next start (NULL: private) */

static int start_cache(char *err, size_t errlen)
{
	struct pcache_cache_opts o;

	eng_opts(&o, cpath);
	o.no_background = true;
	o.stage_shm = stage_shm;
	return pcache_cache_start(&o, &c, err, errlen);
}

static void attach(int i)
{
	struct pcache_attach_opts ao = { .name = i ? "b" : "a", .path = ipath[i], .cache_mode = -1 };
	char err[256];

	ck_assert_msg(pcache_image_attach(c, &ao, &img[i], err, sizeof(err)) == 0, "attach: %s", err);
}

static void start_all(void)
{
	char err[256];

	ck_assert_msg(start_cache(err, sizeof(err)) == 0, "start: %s", err);
	attach(0);
	attach(1);
}

static void stop_all(void)
{
	int i;

	for (i = 0; i < 2; i++) {
		if (img[i])
			pcache_image_put(img[i]);
		img[i] = NULL;
	}
	if (c)
		ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	c = NULL;
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "replay-cache");
	check_scratch_path(ipath[0], sizeof(ipath[0]), "replay-a");
	check_scratch_path(ipath[1], sizeof(ipath[1]), "replay-b");
	ck_assert_int_eq(eng_format(cpath, 40u << 20, 1u << 20, false), 0);
	eng_make_image(ipath[0], IMG_SIZE, 1);
	eng_make_image(ipath[1], IMG_SIZE, 2);
	start_all();
}

static void teardown(void)
{
	stop_all();
	unlink(cpath);
	unlink(ipath[0]);
	unlink(ipath[1]);
}

static void wr(int i, uint64_t off, size_t len, uint32_t v, unsigned int flags)
{
	uint8_t *buf = malloc(len);

	eng_fill(buf, len, (uint32_t)i + 1, off, v);
	ck_assert_int_eq(pcache_image_write(img[i], buf, off, len, flags), 0);
	free(buf);
}

static void expect(int i, uint64_t off, size_t len, uint32_t want)
{
	uint8_t *buf = malloc(len);
	uint32_t v;
	size_t s;

	ck_assert_int_eq(eng_read(img[i], buf, off, len), 0);
	for (s = 0; s < len; s += 512) {
		ck_assert_msg(eng_decode(buf + s, (uint32_t)i + 1, off + s, &v) == 0,
			      "image %d sector %llu garbage", i, (unsigned long long)(off + s) / 512);
		ck_assert_msg(v == want, "image %d sector %llu: version %u want %u", i,
			      (unsigned long long)(off + s) / 512, v, want);
	}
	free(buf);
}

/*
 * A process that staged keys dies (no stop, no flush): in a child that starts the cache with
 * shared staging memory, writes (one flushed version, then two writes only staged) and exits.
 */
static void die_with_staged_keys(void)
{
	pid_t pid;
	int st;

	stop_all();
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct pcache_attach_opts ao = { .name = "a", .path = ipath[0], .cache_mode = -1 };
		uint8_t *buf = malloc(65536);
		char err[256];

		if (!buf || start_cache(err, sizeof(err)) || pcache_image_attach(c, &ao, &img[0], err, sizeof(err)))
			_exit(2);
		eng_fill(buf, 65536, 1, 0, 1);
		if (pcache_image_write(img[0], buf, 0, 65536, 0) || pcache_cache_flush(c))
			_exit(3);
		eng_fill(buf, 4096, 1, 0, 2);
		if (pcache_image_write(img[0], buf, 0, 4096, 0))
			_exit(4);
		eng_fill(buf, 8192, 1, 1u << 20, 3);
		if (pcache_image_write(img[0], buf, 1u << 20, 8192, 0))
			_exit(5);
		_exit(0);   /* like kill -9: nothing persisted beyond what is already */
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}

START_TEST(staged_keys_of_a_dead_process_are_logged_by_the_next_start)
{
	stage_shm = mmap(NULL, pcache_stage_shm_size(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(stage_shm, MAP_FAILED);
	die_with_staged_keys();
	start_all();
	ck_assert_uint_eq(pcache_cache_staged_recovered(c), 2);
	expect(0, 0, 4096, 2);
	expect(0, 4096, 65536 - 4096, 1);
	expect(0, 1u << 20, 8192, 3);
	/* they are in the log now: a start without the staging memory has them too */
	stop_all();
	munmap(stage_shm, pcache_stage_shm_size());
	stage_shm = NULL;
	start_all();
	ck_assert_uint_eq(pcache_cache_staged_recovered(c), 0);
	expect(0, 0, 4096, 2);
	expect(0, 1u << 20, 8192, 3);
}
END_TEST

START_TEST(staged_keys_are_dropped_when_the_log_was_written_since)
{
	void *shm = mmap(NULL, pcache_stage_shm_size(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(shm, MAP_FAILED);
	stage_shm = shm;
	die_with_staged_keys();
	/* another process uses the cache meanwhile, without that memory, and writes */
	stage_shm = NULL;
	start_all();
	wr(1, 0, 4096, 7, 0);
	stop_all();
	/* the staged keys no longer continue the log: they must not be logged over it */
	stage_shm = shm;
	start_all();
	ck_assert_uint_eq(pcache_cache_staged_recovered(c), 0);
	expect(0, 0, 65536, 1);
	expect(0, 1u << 20, 8192, 0);
	expect(1, 0, 4096, 7);
	stop_all();
	stage_shm = NULL;
	munmap(shm, pcache_stage_shm_size());
}
END_TEST

START_TEST(restart_keeps_flushed_and_stopped_data)
{
	wr(0, 0, 65536, 1, 0);
	wr(0, 4096, 4096, 2, 0);
	wr(1, 0, 8192, 3, 0);
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	wr(0, 1u << 20, 4096, 4, 0); /* staged only: stop persists it */
	ck_assert_int_eq(pcache_image_discard(img[1], 4096, 4096, true), 0);
	stop_all();
	start_all();
	expect(0, 0, 4096, 1);
	expect(0, 4096, 4096, 2);
	expect(0, 8192, 65536 - 8192, 1);
	expect(0, 1u << 20, 4096, 4);
	expect(1, 0, 4096, 3);
	expect(1, 4096, 4096, ENG_ZERO);
	expect(1, 8192, 4096, 0);
}
END_TEST

START_TEST(start_heals_a_damaged_metadata_slot)
{
	struct pcache_cache_dev_opts dopts = { .path = cpath, .read_only = true, .no_lock = true };
	struct pcache_cache_dev *cd;
	uint8_t junk[64];
	char err[256];
	int fd;

	wr(0, 0, 4096, 1, 0);
	stop_all();
	/* tear one cache_info slot (as a power cut in mid-update would) */
	memset(junk, 0x5a, sizeof(junk));
	fd = open(cpath, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), PCACHE_INFO_OFF), (ssize_t)sizeof(junk));
	close(fd);
	ck_assert_msg(pcache_cache_dev_open(&dopts, &cd, err, sizeof(err)) == 0, "open: %s", err);
	ck_assert_uint_gt(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
	start_all(); /* repairs */
	expect(0, 0, 4096, 1);
	stop_all();
	ck_assert_int_eq(pcache_cache_dev_open(&dopts, &cd, err, sizeof(err)), 0);
	ck_assert_uint_eq(pcache_cache_dev_damaged(cd), 0);
	pcache_cache_dev_close(cd);
	start_all();
}
END_TEST

START_TEST(keys_of_unattached_image_wait_for_its_attach)
{
	char err[256];

	wr(1, 0, 4096, 7, 0);
	wr(0, 0, 4096, 8, 0);
	stop_all();
	ck_assert_msg(start_cache(err, sizeof(err)) == 0, "%s", err);
	attach(0);
	expect(0, 0, 4096, 8);
	/* more log traffic while b is away; its keys must survive it */
	wr(0, 8192, 65536, 9, PCACHE_IO_FUA);
	stop_all();
	ck_assert_msg(start_cache(err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pcache_cache_attach_known(c, err, sizeof(err)), 0);
	img[0] = pcache_image_get(c, "a");
	img[1] = pcache_image_get(c, "b");
	ck_assert_ptr_ne(img[0], NULL);
	ck_assert_ptr_ne(img[1], NULL);
	expect(1, 0, 4096, 7);
	expect(0, 8192, 65536, 9);
}
END_TEST

START_TEST(crc_valid_kset_with_bad_key_refuses_start)
{
	struct pcache_kset_om *ks;
	struct pcache_pos head;
	uint8_t raw[PCACHE_KSET_SIZE(1)];
	int fd;
	char err[256];
	uint64_t devoff;

	wr(0, 0, 4096, 1, PCACHE_IO_FUA);
	pcache_log_head(c, &head);
	devoff = (uint64_t)((uint8_t *)pcache_seg_ptr(c, head.seg, head.off) -
			    (uint8_t *)pcache_cache_dev_base(c->cd));
	stop_all();
	/* stop may have written more ksets; find the end of the log again by scanning forward */
	fd = open(cpath, O_RDWR);
	ck_assert_int_ge(fd, 0);
	for (;;) {
		struct pcache_kset_om hdr;

		ck_assert_int_eq(pread(fd, &hdr, sizeof(hdr), (off_t)devoff), (ssize_t)sizeof(hdr));
		if (hdr.magic != PCACHE_KSET_MAGIC || hdr.lsn != head.lsn || (hdr.flags & PCACHE_KSET_LAST))
			break;
		devoff += PCACHE_KSET_SIZE(hdr.key_num);
		head.lsn++;
	}
	memset(raw, 0, sizeof(raw));
	ks = (struct pcache_kset_om *)raw;
	ks->key_num = 1;
	ks->magic = PCACHE_KSET_MAGIC;
	ks->lsn = head.lsn;
	ks->keys[0].off = 0;
	ks->keys[0].len = 4096;
	ks->keys[0].image_id = 1;
	ks->keys[0].seg = 999999; /* no such segment */
	ks->crc = pcache_crc32c(PCACHE_CRC_SEED, raw + 4, sizeof(raw) - 4);
	ck_assert_int_eq(pwrite(fd, raw, sizeof(raw), (off_t)devoff), (ssize_t)sizeof(raw));
	close(fd);
	ck_assert_int_eq(start_cache(err, sizeof(err)), -EUCLEAN);
	ck_assert_msg(strstr(err, "seg 999999") != NULL, "message: %s", err);
	c = NULL;
}
END_TEST

START_TEST(garbage_after_the_log_end_is_ignored)
{
	struct pcache_pos head;
	uint8_t junk[8192];
	int fd;
	uint64_t devoff;

	wr(0, 0, 4096, 1, PCACHE_IO_FUA);
	pcache_log_head(c, &head);
	devoff = (uint64_t)((uint8_t *)pcache_seg_ptr(c, head.seg, head.off) -
			    (uint8_t *)pcache_cache_dev_base(c->cd));
	stop_all();
	fd = open(cpath, O_RDWR);
	/* random bytes a little past the end: not a kset continuing the log */
	memset(junk, 0xA7, sizeof(junk));
	ck_assert_int_eq(pwrite(fd, junk, sizeof(junk), (off_t)devoff + 4096), (ssize_t)sizeof(junk));
	close(fd);
	start_all();
	expect(0, 0, 4096, 1);
}
END_TEST

START_TEST(old_lap_kset_with_wrong_lsn_is_not_replayed)
{
	struct pcache_pos head;
	uint8_t *copy;
	uint64_t devoff;
	uint32_t size = PCACHE_KSET_SIZE(1);
	int fd;

	/* kset A (v1) persisted; remember its bytes */
	wr(0, 0, 4096, 1, PCACHE_IO_FUA);
	pcache_log_head(c, &head);
	devoff = (uint64_t)((uint8_t *)pcache_seg_ptr(c, head.seg, head.off) -
			    (uint8_t *)pcache_cache_dev_base(c->cd)) - size;
	copy = malloc(size);
	memcpy(copy, pcache_seg_ptr(c, head.seg, head.off - size), size);
	wr(0, 0, 4096, 2, PCACHE_IO_FUA);
	stop_all();
	/* put the old kset (v1, old lsn) right after the log end: it must not be replayed */
	fd = open(cpath, O_RDWR);
	{
		struct pcache_kset_om hdr;
		uint64_t o = devoff + size;

		for (;;) {
			ck_assert_int_eq(pread(fd, &hdr, sizeof(hdr), (off_t)o), (ssize_t)sizeof(hdr));
			if (hdr.magic != PCACHE_KSET_MAGIC || (hdr.flags & PCACHE_KSET_LAST))
				break;
			o += PCACHE_KSET_SIZE(hdr.key_num);
		}
		ck_assert_int_eq(pwrite(fd, copy, size, (off_t)o), (ssize_t)size);
	}
	close(fd);
	free(copy);
	start_all();
	expect(0, 0, 4096, 2);
}
END_TEST

START_TEST(large_log_replays)
{
	uint64_t i, n = check_under_tsan() ? 2000 : 20000;
	struct pcache_cache_status st;

	for (i = 0; i < n; i++)
		wr(0, (i * 4096) % (8u << 20), 512, (uint32_t)i + 1, 0);
	stop_all();
	start_all();
	pcache_cache_get_status(c, &st);
	ck_assert_uint_ge(c->replay_keys, n);
	for (i = n - 2048; i < n; i += 97)
		expect(0, (i * 4096) % (8u << 20), 512, (uint32_t)i + 1);
}
END_TEST

/*
 * GC drops the references of the kset at key_tail (freeing a data segment bumps its generation)
 * before it moves key_tail past that kset: a crash in between leaves a kset whose later keys are
 * stale while an older key of the same kset (a ZERO key, which has no segment) is not. The
 * stale key's bytes are on the backing (GC frees only what the writeback passed), so replay must
 * not let the older key come back as CLEAN over them: here it read zeros over written data.
 */
START_TEST(stale_key_at_key_tail_does_not_bring_back_an_older_key)
{
	struct pcache_cache_dev_opts o = { .path = cpath };
	struct pcache_cache_dev *cd;
	struct pcache_pos kt0, kt;
	char err[256];

	pcache_cache_dev_get_key_tail(c->cd, &kt0);
	ck_assert_int_eq(pcache_image_discard(img[0], 0, 8192, true), 0);
	wr(0, 0, 8192, 7, 0);   /* same stage, same kset: replaces the ZERO key */
	ck_assert_int_eq(pcache_cache_flush(c), 0);
	ck_assert_int_eq(pcache_image_writeback_all(img[0]), 0);
	ck_assert_int_eq(pcache_cache_set(c, PCACHE_KNOB_GC_PERCENT, 0), 0);
	pcache_heads_release(c, true);
	ck_assert_int_gt(pcache_gc_run(c), 0);
	pcache_cache_dev_get_key_tail(c->cd, &kt);
	ck_assert_uint_gt(kt.lsn, kt0.lsn);
	stop_all();
	/* the crash: the generation bumps persisted, key_tail still at the kset */
	ck_assert_msg(pcache_cache_dev_open(&o, &cd, err, sizeof(err)) == 0, "open: %s", err);
	ck_assert_int_eq(pcache_cache_dev_set_key_tail(cd, &kt0), 0);
	pcache_cache_dev_close(cd);
	start_all();
	expect(0, 0, 8192, 7);
}
END_TEST

Suite *cache_replay_suite(void);
Suite *cache_replay_suite(void)
{
	Suite *s = suite_create("cache_replay");
	TCase *tc = tcase_create("Recovery");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, restart_keeps_flushed_and_stopped_data);
	tcase_add_test(tc, staged_keys_of_a_dead_process_are_logged_by_the_next_start);
	tcase_add_test(tc, staged_keys_are_dropped_when_the_log_was_written_since);
	tcase_add_test(tc, start_heals_a_damaged_metadata_slot);
	tcase_add_test(tc, keys_of_unattached_image_wait_for_its_attach);
	tcase_add_test(tc, crc_valid_kset_with_bad_key_refuses_start);
	tcase_add_test(tc, garbage_after_the_log_end_is_ignored);
	tcase_add_test(tc, old_lap_kset_with_wrong_lsn_is_not_replayed);
	tcase_add_test(tc, large_log_replays);
	tcase_add_test(tc, stale_key_at_key_tail_does_not_bring_back_an_older_key);
	suite_add_tcase(s, tc);
	return s;
}
