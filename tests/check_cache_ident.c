/*
 * check_cache_ident.c -- one backing, one owner: the engine refuses a backing that reaches the
 * same data as another attached image or as the cache device (hard link, symlink), a backing
 * another opener holds (flock), records a stable identity per image and refuses a different
 * file under a known name; new images take their backing's permissions; an image whose backing
 * is missing at start waits while the others come up (backing/backing_ident.c, core/cache_image.c).
 */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_util.h"
#include "lib/engine_util.h"
#include "pcache/backing.h"
#include "pcache/cache_dev.h"

#define IMG_SIZE (8u << 20)

static char cpath[256], ipath[256], ipath2[256], lpath[256];
static struct pcache_cache *c;

static bool no_background;

static void start(void)
{
	struct pcache_cache_opts o;
	char err[256];

	eng_opts(&o, cpath);
	o.no_background = no_background; /* keep dirty data dirty */
	ck_assert_msg(pcache_cache_start(&o, &c, err, sizeof(err)) == 0, "start: %s", err);
}

static int attach(const char *name, const char *path, char *err, size_t errlen)
{
	struct pcache_attach_opts ao = { .name = name, .path = path, .cache_mode = -1,
					 .allow_path_change = true };

	return pcache_image_attach(c, &ao, NULL, err, errlen);
}

static void setup(void)
{
	check_scratch_path(cpath, sizeof(cpath), "ident-cache");
	check_scratch_path(ipath, sizeof(ipath), "ident-img");
	check_scratch_path(ipath2, sizeof(ipath2), "ident-img2");
	check_scratch_path(lpath, sizeof(lpath), "ident-link");
	ck_assert_int_eq(eng_format(cpath, 48u << 20, 1u << 20, false), 0);
	eng_make_image(ipath, IMG_SIZE, 1);
	eng_make_image(ipath2, IMG_SIZE, 2);
	start();
}

static void teardown(void)
{
	if (c)
		pcache_cache_stop(c, false);
	c = NULL;
	no_background = false;
	unlink(cpath);
	unlink(ipath);
	unlink(ipath2);
	unlink(lpath);
}

START_TEST(same_file_under_two_names_is_refused)
{
	char err[512];

	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(link(ipath, lpath), 0);
	ck_assert_int_eq(attach("b", lpath, err, sizeof(err)), -EBUSY);
	ck_assert_msg(strstr(err, "same data as image a"), "%s", err);
	unlink(lpath);
	ck_assert_int_eq(symlink(ipath, lpath), 0);
	ck_assert_int_eq(attach("b", lpath, err, sizeof(err)), -EBUSY);
	ck_assert_msg(strstr(err, "same data as image a"), "%s", err);
	/* nothing was added to the image table */
	{
		struct pcache_image_ent e;

		ck_assert_int_eq(pcache_cache_known_image(c, "b", &e), -ENOENT);
	}
	/* another file is fine */
	ck_assert_msg(attach("b", ipath2, err, sizeof(err)) == 0, "%s", err);
}
END_TEST

START_TEST(cache_device_under_another_name_is_refused)
{
	char err[512];

	ck_assert_msg(link(cpath, lpath) == 0, "link: %s", strerror(errno));
	ck_assert_int_eq(attach("a", lpath, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "is the cache device"), "%s", err);
}
END_TEST

START_TEST(backing_held_by_another_opener_is_refused_naming_it)
{
	char err[512], want[64];
	struct pcache_backing *b;
	bool locked = false;
	pid_t pid;
	int fd;

	/* a second open through the backing layer, in this process */
	ck_assert_int_eq(pcache_backing_open(ipath, NULL, &b, err, sizeof(err)), 0);
	ck_assert_int_eq(attach("a", ipath, err, sizeof(err)), -EBUSY);
	ck_assert_msg(strstr(err, "in use: locked by"), "%s", err);
	pcache_backing_close(b);
	/* a lock held by another process is named: flock(1) holds it (exec'ed at once, so the
	 * child runs no code of this multi-threaded process) */
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		execlp("flock", "flock", "-x", "-o", ipath, "sleep", "30", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) { /* until the lock shows up (5 s at most) */
		fd = open(ipath, O_RDONLY);
		ck_assert_int_ge(fd, 0);
		locked = flock(fd, LOCK_EX | LOCK_NB) != 0;
		close(fd);
		if (locked)
			break;
		usleep(10000);
	}
	ck_assert_msg(locked, "flock(1) did not take the lock");
	ck_assert_int_eq(attach("a", ipath, err, sizeof(err)), -EBUSY);
	/* -o: the lock stays with flock(1) itself, not with its sleep */
	snprintf(want, sizeof(want), "locked by pid %d (flock)", (int)pid);
	ck_assert_msg(strstr(err, want), "%s (want %s)", err, want);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
}
END_TEST

START_TEST(identity_is_recorded_and_a_different_file_refused)
{
	struct pcache_image_ent e;
	struct pcache_image *img;
	struct stat st;
	char err[512], want[64];

	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert_int_eq(stat(ipath, &st), 0);
	snprintf(want, sizeof(want), " ino=%llu", (unsigned long long)st.st_ino);
	ck_assert_msg(!strncmp(e.ident, "file ", 5) && strstr(e.ident, want), "ident '%s'", e.ident);
	ck_assert_str_eq(e.path, ipath);
	/* dirty data, then the file is replaced by another of the same size under its name */
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(eng_write(img, 0, 4096, 1, 7), 0);
	pcache_image_put(img);
	ck_assert_int_eq(pcache_image_detach(c, "a", false), 0);
	ck_assert_int_eq(rename(ipath2, ipath), 0);
	ck_assert_int_eq(attach("a", NULL, err, sizeof(err)), -EEXIST);
	ck_assert_msg(strstr(err, "stored file") && strstr(err, "found file"), "%s", err);
	/* unchanged: same identity recorded, the dirty data still there for the real file */
	{
		struct pcache_image_ent e2;

		ck_assert_int_eq(pcache_cache_known_image(c, "a", &e2), 0);
		ck_assert_str_eq(e2.ident, e.ident);
	}
}
END_TEST

/*
 * A file image grows: the size is in the image table when grow returns, then the file is
 * extended. A crash between the two (the file still short) is finished at the next attach;
 * the data written past the old end, in the cache only, reads back. A file that grew while not
 * attached is refused (changed behind the cache's back). growable=0 persists and refuses growth.
 */
START_TEST(file_image_grows_and_a_short_backing_is_extended_at_attach)
{
	const uint64_t big = IMG_SIZE + (1u << 20) + 100;
	struct pcache_image_ent e;
	struct pcache_image *img;
	uint8_t buf[4096];
	struct stat st;
	char err[512];

	no_background = true;   /* the grown region stays dirty in the cache */
	pcache_cache_stop(c, false);
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert(pcache_image_growable(img));
	ck_assert_int_eq(pcache_image_grow(img, big), 0);
	ck_assert_uint_eq(pcache_image_size(img), big);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert_uint_eq(e.size, big);
	ck_assert_int_eq(stat(ipath, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)big);
	/* the last sector is whole for the engine; past it, refused */
	ck_assert_int_eq(eng_write(img, IMG_SIZE, 1u << 20, 3, 9), 0);
	ck_assert_int_eq(eng_write(img, IMG_SIZE + (1u << 20), 512, 3, 9), 0);
	ck_assert_int_eq(eng_write(img, IMG_SIZE + (1u << 20) + 512, 512, 3, 9), -EINVAL);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	pcache_image_put(img);
	pcache_cache_stop(c, false);
	c = NULL;

	/* a crash after the table, before the file: the file is short */
	ck_assert_int_eq(truncate(ipath, IMG_SIZE), 0);
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(stat(ipath, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)big);
	img = pcache_image_get(c, "a");
	ck_assert_uint_eq(pcache_image_size(img), big);
	ck_assert_int_eq(eng_read(img, buf, IMG_SIZE + (1u << 20) - 4096, 4096), 0);
	for (unsigned int i = 0; i < 4096; i += 512) {
		uint32_t v = 0;

		ck_assert_int_eq(eng_decode(buf + i, 3, IMG_SIZE + (1u << 20) - 4096 + i, &v), 0);
		ck_assert_uint_eq(v, 9);
	}

	/* growable=0: persisted, refuses */
	ck_assert_int_eq(pcache_image_set_growable(img, false), 0);
	ck_assert_int_eq(pcache_image_grow(img, big + 4096), -EFBIG);
	pcache_image_put(img);
	ck_assert_int_eq(pcache_image_detach(c, "a", false), 0);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert(e.fixed);

	/* a fixed image's file that grew meanwhile is not the image any more */
	ck_assert_int_eq(truncate(ipath, big + 512), 0);
	ck_assert_int_eq(attach("a", ipath, err, sizeof(err)), -EEXIST);
	/* a growable file that grew while not attached changed behind the cache's back: its
	 * cached copies may be stale, so it is refused until re-keyed, with dirty data or not */
	ck_assert_int_eq(truncate(ipath, big), 0);
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(pcache_image_set_growable(img, true), 0);
	pcache_image_put(img);
	ck_assert_int_eq(pcache_image_detach(c, "a", false), 0);
	ck_assert_int_eq(truncate(ipath, big + 8192), 0);
	ck_assert_int_eq(attach("a", ipath, err, sizeof(err)), -EEXIST);
	ck_assert_msg(strstr(err, "dirty data"), "%s", err);
	pcache_cache_stop(c, false);
	no_background = false;
	start();
	ck_assert_int_eq(truncate(ipath, big), 0);
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	pcache_image_put(img);
	ck_assert_int_eq(pcache_image_detach(c, "a", false), 0);
	ck_assert_int_eq(truncate(ipath, big + 8192), 0);
	ck_assert_int_eq(attach("a", ipath, err, sizeof(err)), -EEXIST);
	ck_assert_msg(strstr(err, "rekey"), "%s", err);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert_uint_eq(e.size, big);
}
END_TEST

/* v of every 512-byte block of [off, off + len) as written by eng_write with tag 3; 0 = zeros */
static void expect_blocks(struct pcache_image *img, uint64_t off, uint32_t len, uint32_t want)
{
	static uint8_t buf[2 * 65536];
	static const uint8_t zero[512];

	ck_assert_uint_le(len, sizeof(buf));
	ck_assert_int_eq(eng_read(img, buf, off, len), 0);
	for (uint32_t i = 0; i < len; i += 512) {
		uint32_t v = 0;

		if (!want) {
			ck_assert_msg(!memcmp(buf + i, zero, 512), "block at %llu not zeros",
				      (unsigned long long)(off + i));
			continue;
		}
		ck_assert_int_eq(eng_decode(buf + i, 3, off + i, &v), 0);
		ck_assert_uint_eq(v, want);
	}
}

/*
 * A file image is cut: the size is smaller in the table and the file, bytes past the new end
 * are gone from the cache (dirty ones too: a growth afterwards reads zeros there), the last
 * partial sector keeps its bytes before the end and zeros after, and after a restart a dirty
 * key across the new end still serves its bytes before it (replay clips it).
 */
START_TEST(file_image_shrinks_dropping_the_tail_dirty_data_included)
{
	const uint64_t cut = (4u << 20) + 1000, region = 4u << 20;
	struct pcache_image_ent e;
	struct pcache_image *img;
	uint8_t buf[512], before[512];
	struct stat st;
	char err[512];

	no_background = true;   /* the written bytes stay dirty in the cache */
	pcache_cache_stop(c, false);
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	/* dirty data across the new end: one key up to the region, one from it (keys never
	 * cross a region) running past the cut */
	ck_assert_int_eq(eng_write(img, region - 65536, 65536 + (1u << 20), 3, 7), 0);
	ck_assert_int_eq(eng_read(img, before, region + 512, 512), 0);
	ck_assert_int_eq(pcache_image_shrink(img, cut), 0);
	ck_assert_uint_eq(pcache_image_size(img), cut);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert_uint_eq(e.size, cut);
	ck_assert_int_eq(stat(ipath, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)cut);
	expect_blocks(img, region - 65536, 65536 + 512, 7);
	ck_assert_int_eq(eng_read(img, buf, region + 512, 512), 0);
	ck_assert(!memcmp(buf, before, 1000 - 512));     /* the bytes before the end stay */
	for (uint32_t i = 1000 - 512; i < 512; i++)
		ck_assert_msg(buf[i] == 0, "byte %u past the end", i);
	ck_assert_int_eq(eng_write(img, region + 1024, 512, 3, 7), -EINVAL);   /* past the end */
	/* a growth afterwards reads zeros where the dropped dirty bytes were */
	ck_assert_int_eq(pcache_image_grow(img, IMG_SIZE), 0);
	expect_blocks(img, region + 1024, 65536, 0);
	expect_blocks(img, region + (1u << 20) - 65536, 65536, 0);
	ck_assert_int_eq(pcache_image_shrink(img, cut), 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	pcache_image_put(img);
	pcache_cache_stop(c, false);
	c = NULL;

	/* after a restart: the key across the end serves its first sector, nothing past it */
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_uint_eq(pcache_image_size(img), cut);
	expect_blocks(img, region - 65536, 65536 + 512, 7);
	ck_assert_int_eq(eng_read(img, buf, region + 512, 512), 0);
	ck_assert(!memcmp(buf, before, 1000 - 512));
	for (uint32_t i = 1000 - 512; i < 512; i++)
		ck_assert_msg(buf[i] == 0, "byte %u past the end after a restart", i);
	/* writeback of everything keeps the file at its size, the data in it */
	ck_assert_int_eq(pcache_image_writeback_all(img), 0);
	ck_assert_int_eq(stat(ipath, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)cut);
	/* growable=0 refuses a cut */
	ck_assert_int_eq(pcache_image_set_growable(img, false), 0);
	ck_assert_int_eq(pcache_image_shrink(img, 4096), -EPERM);
	pcache_image_put(img);
	pcache_cache_stop(c, false);
	c = NULL;
	{
		int fd = open(ipath, O_RDONLY);
		uint8_t *tail = malloc(65536 + 1000);
		uint32_t v = 0;

		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(pread(fd, tail, 65536 + 1000, (off_t)(region - 65536)), 65536 + 1000);
		for (uint32_t i = 0; i < 65536 + 512; i += 512) {
			ck_assert_int_eq(eng_decode(tail + i, 3, region - 65536 + i, &v), 0);
			ck_assert_uint_eq(v, 7);
		}
		free(tail);
		close(fd);
	}
	no_background = false;
	start();
}
END_TEST

/*
 * Rename: an attached image keeps its cached (dirty) data under the new name and path, durable
 * in the table; a name in use is refused; a detached image is renamed in the table only.
 */
START_TEST(images_are_renamed_with_their_cached_data)
{
	struct pcache_image_ent e;
	struct pcache_image *img;
	uint8_t buf[4096];
	char err[512];

	no_background = true;
	pcache_cache_stop(c, false);
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(attach("b", ipath2, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(eng_write(img, 65536, 4096, 3, 5), 0);
	ck_assert_int_eq(pcache_image_rename(c, "a", "b", ipath), -EEXIST);
	ck_assert_int_eq(pcache_image_rename(c, "a", "bad/name", ipath), -EINVAL);
	ck_assert_int_eq(pcache_image_rename(c, "nope", "x", ipath), -ENOENT);
	ck_assert_int_eq(rename(ipath, lpath), 0);
	ck_assert_int_eq(pcache_image_rename(c, "a", "a2", lpath), 0);
	ck_assert_str_eq(pcache_image_name(img), "a2");
	pcache_image_put(img);
	ck_assert_ptr_null(pcache_image_get(c, "a"));
	ck_assert_int_eq(pcache_cache_known_image(c, "a2", &e), 0);
	ck_assert_str_eq(e.path, lpath);
	ck_assert_int_ne(pcache_cache_known_image(c, "a", &e), 0);
	pcache_cache_stop(c, false);
	c = NULL;
	start();    /* dirty data still in the cache only: it comes back under the new name */
	ck_assert_int_eq(pcache_cache_attach_known(c, err, sizeof(err)), 0);
	img = pcache_image_get(c, "a2");
	ck_assert_ptr_nonnull(img);
	ck_assert_int_eq(eng_read(img, buf, 65536, 4096), 0);
	for (unsigned int i = 0; i < 4096; i += 512) {
		uint32_t v = 0;

		ck_assert_int_eq(eng_decode(buf + i, 3, 65536 + i, &v), 0);
		ck_assert_uint_eq(v, 5);
	}
	pcache_image_put(img);
	/* a detached image is renamed in the table */
	ck_assert_int_eq(pcache_image_detach(c, "b", false), 0);
	ck_assert_int_eq(pcache_image_rename(c, "b", "b2", ipath2), 0);
	ck_assert_int_eq(pcache_cache_known_image(c, "b2", &e), 0);
	ck_assert_int_eq(e.state, PCACHE_IMAGE_DETACHED);
	ck_assert_int_eq(rename(lpath, ipath), 0);
	no_background = false;
}
END_TEST

START_TEST(identity_survives_a_restart_and_a_new_path)
{
	struct pcache_image_ent e;
	char err[512];

	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	c = NULL;
	/* the file moved (same inode): attached under its new name */
	ck_assert_int_eq(rename(ipath, lpath), 0);
	start();
	ck_assert_msg(attach("a", lpath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(pcache_cache_known_image(c, "a", &e), 0);
	ck_assert_str_eq(e.path, lpath);
}
END_TEST

START_TEST(new_image_takes_the_backing_permissions)
{
	uint32_t mode, uid, gid;
	struct pcache_image *img;
	char err[512];

	ck_assert_int_eq(chmod(ipath, 0600), 0);
	ck_assert_int_eq(chown(ipath, 123, 456), 0);
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	pcache_image_attr(img, &mode, &uid, &gid);
	pcache_image_put(img);
	ck_assert_uint_eq(mode, 0600);
	ck_assert_uint_eq(uid, 123);
	ck_assert_uint_eq(gid, 456);
}
END_TEST

START_TEST(missing_backing_waits_while_the_others_come_up)
{
	struct pcache_unattached u[4];
	struct pcache_image *img;
	char err[512];
	uint8_t buf[4096], want[4096];
	int n;

	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	no_background = true;
	start();
	ck_assert_msg(attach("a", ipath, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(attach("b", ipath2, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(eng_write(img, 0, 4096, 1, 9), 0);
	ck_assert_int_eq(pcache_image_flush(img), 0);
	pcache_image_put(img);
	ck_assert_int_eq(pcache_cache_stop(c, false), 0);
	c = NULL;
	ck_assert_int_eq(rename(ipath, lpath), 0); /* a's backing is not where it was */
	start();
	ck_assert_msg(pcache_cache_attach_known(c, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "b");
	ck_assert_ptr_ne(img, NULL);
	pcache_image_put(img);
	ck_assert_ptr_eq(pcache_image_get(c, "a"), NULL);
	n = pcache_cache_unattached(c, u, 4);
	ck_assert_int_eq(n, 1);
	ck_assert_str_eq(u[0].name, "a");
	ck_assert(u[0].missing);
	ck_assert_uint_eq(u[0].dirty_bytes, 4096);
	/* back under a new name: attached with its dirty data */
	ck_assert_msg(attach("a", lpath, err, sizeof(err)) == 0, "%s", err);
	img = pcache_image_get(c, "a");
	ck_assert_int_eq(eng_read(img, buf, 0, sizeof(buf)), 0);
	pcache_image_put(img);
	eng_fill(want, sizeof(want), 1, 0, 9);
	ck_assert_mem_eq(buf, want, sizeof(buf));
	ck_assert_int_eq(pcache_cache_unattached(c, u, 4), 0);
}
END_TEST

START_TEST(overlap_rules)
{
	struct pcache_ident f = { .dev = 8, .ino = 12 }, g = { .dev = 8, .ino = 13 };
	struct pcache_ident loop = { .blockdev = true, .rdev = 0x700, .loop = true, .loop_dev = 8,
				     .loop_ino = 12 };
	struct pcache_ident loop2 = loop, blk = { .blockdev = true, .rdev = 0x800 };

	loop2.rdev = 0x701;
	ck_assert(pcache_ident_overlap(&f, &f));
	ck_assert(!pcache_ident_overlap(&f, &g));
	ck_assert(pcache_ident_overlap(&f, &loop));
	ck_assert(pcache_ident_overlap(&loop, &f));
	ck_assert(!pcache_ident_overlap(&g, &loop));
	ck_assert(pcache_ident_overlap(&loop, &loop2)); /* two loop devices over one file */
	ck_assert(!pcache_ident_overlap(&loop, &blk));
	ck_assert(pcache_ident_overlap(&blk, &blk));
}
END_TEST

Suite *cache_ident_suite(void);
Suite *cache_ident_suite(void)
{
	Suite *s = suite_create("cache_ident");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, same_file_under_two_names_is_refused);
	tcase_add_test(tc, cache_device_under_another_name_is_refused);
	tcase_add_test(tc, backing_held_by_another_opener_is_refused_naming_it);
	tcase_add_test(tc, identity_is_recorded_and_a_different_file_refused);
	tcase_add_test(tc, identity_survives_a_restart_and_a_new_path);
	tcase_add_test(tc, file_image_grows_and_a_short_backing_is_extended_at_attach);
	tcase_add_test(tc, file_image_shrinks_dropping_the_tail_dirty_data_included);
	tcase_add_test(tc, images_are_renamed_with_their_cached_data);
	tcase_add_test(tc, new_image_takes_the_backing_permissions);
	tcase_add_test(tc, missing_backing_waits_while_the_others_come_up);
	tcase_add_test(tc, overlap_rules);
	suite_add_tcase(s, tc);
	return s;
}
