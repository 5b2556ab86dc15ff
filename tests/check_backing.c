/*
 * check_backing.c -- unit tests of the backing layer (backing/backing_dev.c) on real files,
 * a real loop block device and a real FUSE mount (tests/tools/flakyfs) for injected faults.
 *
 * Files that must really be O_DIRECT live in a per-test directory under /var/tmp (a disk
 * filesystem); the loop cases skip (pass with a note) when not root or without loop support;
 * the flakyfs cases skip when /dev/fuse or the tool is missing. Every test leaves nothing
 * behind: the checked fixture and an atexit handler unmount flakyfs, kill it, detach the loop
 * device (autoclear) and remove the directory (a failed assertion skips that cleanup, but
 * flakyfs still unmounts itself on its parent-death SIGTERM, and the next run removes the
 * directories of dead test processes).
 *
 * The suite is TSan-clean, the multi-thread case included.
 */

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_util.h"
#include "pcache/backing.h"
#include "pcache/util.h"

/* ---- per-test environment --------------------------------------------------------------- */

static char tdir[256];          /* per-test directory on a disk filesystem */
static pid_t flaky_pid;
static char flaky_mnt[300];
static int loop_fd = -1;
static bool env_registered;

static void env_cleanup(void)
{
	char cmd[300];

	if (flaky_pid > 0) {
		kill(flaky_pid, SIGTERM);
		waitpid(flaky_pid, NULL, 0);
		flaky_pid = 0;
		umount2(flaky_mnt, MNT_DETACH); /* normally already unmounted by flakyfs */
	}
	if (loop_fd >= 0) {
		ioctl(loop_fd, LOOP_CLR_FD, 0);
		close(loop_fd);
		loop_fd = -1;
	}
	if (tdir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
		if (system(cmd) != 0)
			fprintf(stderr, "check_backing: could not remove %s\n", tdir);
		tdir[0] = 0;
	}
}

/* Remove the directories of earlier test processes that died without cleaning up (a failed
 * assertion or a timeout skips the teardown). They are named after their process. */
static void env_reap_stale(void)
{
	DIR *d = opendir("/var/tmp");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[300], cmd[400];
		int pid;

		if (sscanf(e->d_name, "pcache-ckbk.%d.", &pid) != 1 || pid <= 0 ||
		    kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "/var/tmp/%s/mnt", e->d_name);
		umount2(path, MNT_DETACH); /* a dead flakyfs mount, if any */
		snprintf(cmd, sizeof(cmd), "rm -rf '/var/tmp/%s'", e->d_name);
		if (system(cmd) != 0)
			fprintf(stderr, "check_backing: could not remove /var/tmp/%s\n", e->d_name);
	}
	closedir(d);
}

static void env_setup(void)
{
	env_reap_stale();
	snprintf(tdir, sizeof(tdir), "/var/tmp/pcache-ckbk.%d.XXXXXX", (int)getpid());
	ck_assert_msg(mkdtemp(tdir), "mkdtemp: %s", strerror(errno));
	if (!env_registered) {
		atexit(env_cleanup); /* in the forked test process: covers an exit() in the test */
		env_registered = true;
	}
}

static char *tpath(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", tdir, name);
	return buf;
}

/* Open or fail the test. */
static struct pcache_backing *bk_open(const char *path, bool ro, bool no_direct)
{
	struct pcache_backing_opts o = { .read_only = ro, .no_direct = no_direct };
	struct pcache_backing *b = NULL;
	char err[256];
	int ret = pcache_backing_open(path, &o, &b, err, sizeof(err));

	ck_assert_msg(ret == 0, "open %s: %d %s", path, ret, err);
	return b;
}

static void pread_all(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void expect_pattern(const uint8_t *buf, size_t len, uint64_t off, uint32_t seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i] != check_pattern_byte(off + i, seed))
			ck_abort_msg("byte %zu (file offset %llu): %02x, want pattern %02x", i,
				     (unsigned long long)(off + i), buf[i],
				     check_pattern_byte(off + i, seed));
}

static void expect_zero(const uint8_t *buf, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (buf[i])
			ck_abort_msg("byte %zu is %02x, want 0", i, buf[i]);
}

/* ---- completion tracking ----------------------------------------------------------------- */

struct waiter {
	pthread_mutex_t m;
	pthread_cond_t c;
	int pending;
};

struct rec {
	struct waiter *w;
	int status;
	int calls;
};

#define WAITER_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 }

static void rec_end(void *priv, int status)
{
	struct rec *r = priv;

	pthread_mutex_lock(&r->w->m);
	r->status = status;
	r->calls++;
	r->w->pending--;
	pthread_cond_broadcast(&r->w->c);
	pthread_mutex_unlock(&r->w->m);
}

static void waiter_add(struct waiter *w, int n)
{
	pthread_mutex_lock(&w->m);
	w->pending += n;
	pthread_mutex_unlock(&w->m);
}

/* Wait until every counted request ended; fails the test after 20 s. */
static void waiter_wait(struct waiter *w)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&w->m);
	while (w->pending > 0) {
		if (pthread_cond_timedwait(&w->c, &w->m, &ts) == ETIMEDOUT) {
			pthread_mutex_unlock(&w->m);
			ck_abort_msg("requests did not complete (%d pending)", w->pending);
		}
	}
	pthread_mutex_unlock(&w->m);
}

/* Submit one KMEM request and wait for its callback; returns the status. */
static int do_io(struct pcache_backing *b, enum pcache_backing_op op, void *buf, size_t len,
		 uint64_t off, bool direct)
{
	struct waiter w = WAITER_INIT;
	struct rec r = { .w = &w };
	struct pcache_backing_io io = { .op = op, .off = off, .len = len, .kmem = buf,
					.end = rec_end, .priv = &r };
	int ret;

	waiter_add(&w, 1);
	ret = direct ? pcache_backing_submit_direct(b, &io) : pcache_backing_submit(b, &io);
	ck_assert_msg(ret == 0, "submit: %d", ret);
	waiter_wait(&w);
	ck_assert_int_eq(r.calls, 1);
	return r.status;
}

/* ---- flakyfs ------------------------------------------------------------------------------ */

static const char *tool_path(char *buf, size_t len, const char *name)
{
	const char *bd = getenv("PCACHE_BUILD");

	snprintf(buf, len, "%s/tools/%s", bd && *bd ? bd : "build", name);
	return buf;
}

/* Mount flakyfs over backing with the extra -o options; false (skip) without FUSE or tool. */
static bool flaky_start(const char *backing, const char *extra)
{
	char tool[300], opts[600], img[350];
	struct stat st, root;
	int i;

	tool_path(tool, sizeof(tool), "flakyfs");
	if (access("/dev/fuse", R_OK | W_OK) || access(tool, X_OK)) {
		fprintf(stderr, "check_backing: skipping flakyfs case (no /dev/fuse or %s)\n", tool);
		return false;
	}
	tpath(flaky_mnt, sizeof(flaky_mnt), "mnt");
	ck_assert_int_eq(mkdir(flaky_mnt, 0755), 0);
	ck_assert_int_eq(stat(flaky_mnt, &root), 0);
	snprintf(opts, sizeof(opts), "backing=%s%s%s", backing, extra ? "," : "", extra ? extra : "");
	flaky_pid = fork();
	ck_assert_int_ge(flaky_pid, 0);
	if (flaky_pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		/* Check SIGKILLs the test's process group when a test fails, which would leave a
		 * dead mount behind: flakyfs gets its own group and a SIGTERM (it unmounts on it)
		 * when the test process dies */
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (null >= 0)
			dup2(null, 1);
		execl(tool, "flakyfs", "-f", "-o", opts, flaky_mnt, (char *)NULL);
		_exit(127);
	}
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	for (i = 0; i < 3000; i++) { /* up to 15 s: slow under sanitizers and load */
		int status;

		if (stat(img, &st) == 0 && st.st_dev != root.st_dev)
			return true;
		ck_assert_msg(waitpid(flaky_pid, &status, WNOHANG) == 0, "flakyfs exited early");
		usleep(5000);
	}
	ck_abort_msg("flakyfs did not mount");
	return false;
}

static void flaky_ctl(const char *cmd)
{
	char p[350];
	int fd;

	snprintf(p, sizeof(p), "%s/.control", flaky_mnt);
	fd = open(p, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
	close(fd);
}

/* ---- loop device -------------------------------------------------------------------------- */

/* Attach file to a free loop device (autoclear, logical block size bs or the default for 0);
 * false (skip) when not possible. */
static bool loop_attach(const char *file, uint32_t bs, char *dev, size_t len)
{
	int ctl, i;

	if (geteuid() != 0) {
		fprintf(stderr, "check_backing: skipping loop case (not root)\n");
		return false;
	}
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		fprintf(stderr, "check_backing: skipping loop case (no /dev/loop-control)\n");
		return false;
	}
	for (i = 0; i < 20; i++) {
		struct loop_config cfg;
		int n = ioctl(ctl, LOOP_CTL_GET_FREE), ffd, ret;

		if (n < 0)
			break;
		snprintf(dev, len, "/dev/loop%d", n);
		loop_fd = open(dev, O_RDWR | O_CLOEXEC);
		if (loop_fd < 0)
			break;
		ffd = open(file, O_RDWR | O_CLOEXEC);
		ck_assert_int_ge(ffd, 0);
		memset(&cfg, 0, sizeof(cfg));
		cfg.fd = (uint32_t)ffd;
		cfg.block_size = bs;
		cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
		ret = ioctl(loop_fd, LOOP_CONFIGURE, &cfg);
		close(ffd);
		if (ret == 0) {
			close(ctl);
			return true;
		}
		close(loop_fd);
		loop_fd = -1;
		if (errno != EBUSY)
			break;
	}
	close(ctl);
	fprintf(stderr, "check_backing: skipping loop case (cannot attach: %s)\n", strerror(errno));
	return false;
}

/* ---- Open --------------------------------------------------------------------------------- */

static void expect_refused(const char *path, int want_ret, const char *want_msg)
{
	struct pcache_backing *b = NULL;
	char err[256] = "";
	int ret = pcache_backing_open(path, NULL, &b, err, sizeof(err));

	ck_assert_msg(ret == want_ret, "%s: ret %d, want %d (%s)", path, ret, want_ret, err);
	ck_assert_msg(strstr(err, want_msg), "%s: error '%s' lacks '%s'", path, err, want_msg);
	ck_assert_ptr_null(b);
}

START_TEST(open_refuses_non_images_with_a_reason)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char p[300];
	int s;

	expect_refused(tdir, -EISDIR, "is a directory");
	ck_assert_int_eq(mkfifo(tpath(p, sizeof(p), "fifo"), 0600), 0);
	expect_refused(p, -EINVAL, "is a FIFO");
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_uint_lt(strlen(tdir) + 6, sizeof(sa.sun_path));
	memcpy(sa.sun_path, tdir, strlen(tdir));
	memcpy(sa.sun_path + strlen(tdir), "/sock", 6);
	ck_assert_int_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	expect_refused(sa.sun_path, -EINVAL, "is a socket");
	close(s);
	expect_refused("/dev/null", -EINVAL, "is a character device");
	check_make_file(tpath(p, sizeof(p), "empty"), 0, 1);
	{
		/* an empty file is an image of size 0 (it can only grow) */
		struct pcache_backing *b = NULL;

		ck_assert_int_eq(pcache_backing_open(p, NULL, &b, NULL, 0), 0);
		ck_assert_uint_eq(pcache_backing_size(b), 0);
		ck_assert_uint_eq(pcache_backing_span(b), 0);
		pcache_backing_close(b);
	}
	expect_refused(tpath(p, sizeof(p), "missing"), -ENOENT, "No such file");
	/* err may be NULL */
	ck_assert_int_eq(pcache_backing_open(tdir, NULL, &(struct pcache_backing *){ NULL }, NULL, 0),
			 -EISDIR);
}
END_TEST

/*
 * A file whose size is not a sector multiple (a fresh qcow2) opens with its exact size, buffered;
 * requests may cover its last sector whole: past the end reads give zeros and writes are
 * dropped, and the file keeps its size.
 */
START_TEST(odd_size_file_keeps_its_size_and_reads_zeros_past_the_end)
{
	struct pcache_backing *b;
	uint8_t buf[1024], disk[1000], want[1024];
	struct stat st;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "odd"), 1000, 7);
	b = bk_open(p, false, false);
	ck_assert_uint_eq(pcache_backing_size(b), 1000);
	ck_assert_uint_eq(pcache_backing_span(b), 1024);
	ck_assert(!pcache_backing_is_direct(b));   /* the last sector could not be written direct */

	memset(buf, 0xee, sizeof(buf));
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 1024, 0), 0);
	for (unsigned int i = 0; i < 1024; i++)
		ck_assert_uint_eq(buf[i], i < 1000 ? check_pattern_byte(i, 7) : 0);
	/* the last sector alone, and a range wholly past the end inside it */
	memset(buf, 0xee, sizeof(buf));
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 512, 512), 0);
	ck_assert_uint_eq(buf[487], check_pattern_byte(999, 7));
	ck_assert_uint_eq(buf[488], 0);
	memset(buf, 0xee, 16);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 16, 1008), 0);
	for (unsigned int i = 0; i < 16; i++)
		ck_assert_uint_eq(buf[i], 0);
	/* beyond the span: refused */
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 512, 1024), -EINVAL);

	/* a write of the whole last sector changes the bytes before the end only */
	for (unsigned int i = 0; i < 512; i++)
		want[i] = (uint8_t)(i * 13 + 1);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_WRITE, want, 512, 512), 0);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_WRITE, want, 8, 1016), 0);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	pcache_backing_close(b);
	ck_assert_int_eq(stat(p, &st), 0);
	ck_assert_int_eq(st.st_size, 1000);
	pread_all(p, disk, sizeof(disk), 0);
	for (unsigned int i = 0; i < 1000; i++)
		ck_assert_uint_eq(disk[i], i < 512 ? check_pattern_byte(i, 7) : want[i - 512]);
}
END_TEST

START_TEST(open_file_reports_size_lbs_direct_and_path)
{
	struct pcache_backing *b;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 3 << 20, 1);
	b = bk_open(p, false, false);
	ck_assert_uint_eq(pcache_backing_size(b), 3 << 20);
	ck_assert_uint_eq(pcache_backing_lbs(b), 512);
	ck_assert(pcache_backing_is_direct(b)); /* ext4/xfs under /var/tmp take O_DIRECT */
	ck_assert(!pcache_backing_is_blockdev(b));
	ck_assert_str_eq(pcache_backing_path(b), p);
	pcache_backing_close(b);

	b = bk_open(p, false, true);
	ck_assert(!pcache_backing_is_direct(b));
	ck_assert_uint_eq(pcache_backing_size(b), 3 << 20);
	pcache_backing_close(b);
	pcache_backing_close(NULL);
}
END_TEST

START_TEST(read_only_image_refuses_writes_but_reads)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	struct pcache_backing_io io = { .op = PCACHE_BIO_WRITE, .len = 4096 };
	char p[300];
	uint8_t *buf;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 7);
	b = bk_open(p, true, false);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 8192), 0);
	io.kmem = buf;
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EROFS);
	io.op = PCACHE_BIO_ZERO;
	ck_assert_int_eq(pcache_backing_submit_direct(b, &io), -EROFS);
	io.op = PCACHE_BIO_DISCARD;
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EROFS);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 8192, 4096), 0);
	expect_pattern(buf, 8192, 4096, 7);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.submitted, 1);
	pcache_backing_close(b);
	free(buf);
}
END_TEST

START_TEST(submit_rejects_bad_requests_without_callback)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	struct waiter w = WAITER_INIT;
	struct rec r = { .w = &w };
	uint8_t buf[4096];
	struct pcache_upper_req up = { .buf = buf, .len = sizeof(buf) };
	struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .kmem = buf, .end = rec_end,
					.priv = &r };
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 1);
	b = bk_open(p, false, false);
	io.off = (1 << 20) - 512;
	io.len = 1024; /* beyond the end */
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
	io.off = UINT64_MAX - 100;
	io.len = 512; /* wraps */
	ck_assert_int_eq(pcache_backing_submit_direct(b, &io), -EINVAL);
	io.off = 0;
	io.len = 0;
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
	io.len = 512;
	io.op = (enum pcache_backing_op)99;
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
	io.op = PCACHE_BIO_WRITE;
	io.kmem = NULL;
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
	io.upper = &up;
	io.upper_off = 4000; /* 4000 + 512 > up.len */
	ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.submitted, 0);
	pcache_backing_close(b);
	ck_assert_int_eq(r.calls, 0);
}
END_TEST

/* ---- Core I/O ----------------------------------------------------------------------------- */

START_TEST(rw_sync_round_trip_on_direct_file)
{
	struct pcache_backing *b;
	char p[300];
	uint8_t *buf, *chk;
	size_t i;

	check_make_file(tpath(p, sizeof(p), "img"), 4 << 20, 3);
	b = bk_open(p, false, false);
	ck_assert(pcache_backing_is_direct(b));
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 1 << 20), 0);
	chk = malloc(1 << 20);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_READ, buf, 1 << 20, 1 << 20), 0);
	expect_pattern(buf, 1 << 20, 1 << 20, 3);
	for (i = 0; i < (1 << 20); i++)
		buf[i] = check_pattern_byte(i, 9);
	ck_assert_int_eq(pcache_backing_rw_sync(b, PCACHE_BIO_WRITE, buf, 1 << 20, 2 << 20), 0);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	pread_all(p, chk, 1 << 20, 2 << 20);
	expect_pattern(chk, 1 << 20, 0, 9);
	pread_all(p, chk, 1 << 20, 3 << 20);
	expect_pattern(chk, 1 << 20, 3 << 20, 3);
	pcache_backing_close(b);
	free(buf);
	free(chk);
}
END_TEST

#define MT_THREADS 4
#define MT_SLOTS 32
#define MT_SLOT (64 * 1024)

struct mt_arg {
	struct pcache_backing *b;
	int id;
	int rounds;
	int failures;
};

/* One thread: rounds of concurrent writes of every slot, then concurrent reads, verified. */
static void *mt_main(void *arg)
{
	struct mt_arg *a = arg;
	uint64_t base = (uint64_t)a->id * MT_SLOTS * MT_SLOT;
	uint8_t *shadow = malloc(MT_SLOTS * MT_SLOT), *wbuf, *rbuf;
	struct pcache_upper_req *ups = calloc(MT_SLOTS, sizeof(*ups));
	struct rec *recs = calloc(MT_SLOTS, sizeof(*recs));
	unsigned int seed = (unsigned int)a->id * 7919u + 1;
	/*
	 * One waiter for all rounds: re-initialising its mutex each round raced with the
	 * completion thread still returning from pthread_mutex_unlock() of the last callback.
	 */
	struct waiter w = WAITER_INIT;
	int round, i;

	if (posix_memalign((void **)&wbuf, 4096, MT_SLOTS * MT_SLOT) ||
	    posix_memalign((void **)&rbuf, 4096, MT_SLOTS * MT_SLOT)) {
		a->failures++;
		return NULL;
	}
	pread_all(pcache_backing_path(a->b), shadow, MT_SLOTS * MT_SLOT, base);
	for (round = 0; round < a->rounds; round++) {
		/* writes: random 4 KiB-multiple lengths, half REQ, half KMEM, both submit paths */
		waiter_add(&w, MT_SLOTS);
		for (i = 0; i < MT_SLOTS; i++) {
			size_t len = 4096 * (1 + rand_r(&seed) % (MT_SLOT / 4096));
			uint8_t *d = wbuf + (size_t)i * MT_SLOT;
			struct pcache_backing_io io = { .op = PCACHE_BIO_WRITE,
							.off = base + (uint64_t)i * MT_SLOT,
							.len = len, .end = rec_end, .priv = &recs[i] };
			size_t k;

			for (k = 0; k < len; k++)
				d[k] = (uint8_t)rand_r(&seed);
			memcpy(shadow + (size_t)i * MT_SLOT, d, len);
			recs[i] = (struct rec){ .w = &w };
			if (i & 1) {
				ups[i] = (struct pcache_upper_req){ .buf = wbuf, .len = MT_SLOTS * MT_SLOT };
				io.upper = &ups[i];
				io.upper_off = (size_t)i * MT_SLOT;
			} else {
				io.kmem = d;
			}
			if ((i & 2 ? pcache_backing_submit(a->b, &io) :
				     pcache_backing_submit_direct(a->b, &io)) != 0)
				a->failures++;
		}
		waiter_wait(&w);
		for (i = 0; i < MT_SLOTS; i++)
			if (recs[i].status != 0 || recs[i].calls != 1)
				a->failures++;

		/* reads of whole slots, the other mix of paths */
		memset(rbuf, 0xee, MT_SLOTS * MT_SLOT);
		waiter_add(&w, MT_SLOTS);
		for (i = 0; i < MT_SLOTS; i++) {
			struct pcache_backing_io io = { .op = PCACHE_BIO_READ,
							.off = base + (uint64_t)i * MT_SLOT,
							.len = MT_SLOT, .end = rec_end, .priv = &recs[i] };

			recs[i] = (struct rec){ .w = &w };
			if (i & 1) {
				io.kmem = rbuf + (size_t)i * MT_SLOT;
			} else {
				ups[i] = (struct pcache_upper_req){ .buf = rbuf, .len = MT_SLOTS * MT_SLOT };
				io.upper = &ups[i];
				io.upper_off = (size_t)i * MT_SLOT;
			}
			if ((i & 2 ? pcache_backing_submit_direct(a->b, &io) :
				     pcache_backing_submit(a->b, &io)) != 0)
				a->failures++;
		}
		waiter_wait(&w);
		for (i = 0; i < MT_SLOTS; i++)
			if (recs[i].status != 0 || recs[i].calls != 1)
				a->failures++;
		if (memcmp(rbuf, shadow, MT_SLOTS * MT_SLOT))
			a->failures++;
	}
	free(shadow);
	free(wbuf);
	free(rbuf);
	free(ups);
	free(recs);
	return NULL;
}

static void run_threads(const char *p, bool no_direct)
{
	struct pcache_backing *b = bk_open(p, false, no_direct);
	struct pcache_backing_stats st;
	struct mt_arg args[MT_THREADS];
	pthread_t th[MT_THREADS];
	int i;

	for (i = 0; i < MT_THREADS; i++) {
		args[i] = (struct mt_arg){ .b = b, .id = i, .rounds = check_under_tsan() ? 2 : 6 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, mt_main, &args[i]), 0);
	}
	for (i = 0; i < MT_THREADS; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(args[i].failures == 0, "thread %d: %d failures", i, args[i].failures);
	}
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.submitted, (uint64_t)MT_THREADS * args[0].rounds * MT_SLOTS * 2);
	ck_assert_uint_eq(st.completed, st.submitted);
	ck_assert_uint_eq(st.errors, 0);
	ck_assert_uint_eq(st.in_flight, 0);
	pcache_backing_close(b);
}

START_TEST(threads_submit_req_and_kmem_reads_and_writes_verified)
{
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), (uint64_t)MT_THREADS * MT_SLOTS * MT_SLOT, 5);
	run_threads(p, false);
	run_threads(p, true);
}
END_TEST

struct counted_upper {
	struct pcache_upper_req u;
	struct waiter *w;
	int gets, puts;
	int gets_at_end, puts_at_end;
};

static void cu_get(struct pcache_upper_req *u)
{
	struct counted_upper *c = (struct counted_upper *)u;

	__atomic_fetch_add(&c->gets, 1, __ATOMIC_SEQ_CST);
}

static void cu_put(struct pcache_upper_req *u)
{
	struct counted_upper *c = (struct counted_upper *)u;

	pthread_mutex_lock(&c->w->m);
	c->puts++;
	c->w->pending--;
	pthread_cond_broadcast(&c->w->c);
	pthread_mutex_unlock(&c->w->m);
}

static void cu_end(void *priv, int status)
{
	struct counted_upper *c = priv;

	c->gets_at_end = __atomic_load_n(&c->gets, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&c->w->m);
	c->puts_at_end = c->puts;
	pthread_mutex_unlock(&c->w->m);
}

START_TEST(upper_reference_is_released_once_after_the_callback)
{
	static const enum pcache_backing_op ops[] = { PCACHE_BIO_READ, PCACHE_BIO_WRITE,
						      PCACHE_BIO_FLUSH, PCACHE_BIO_ZERO };
	struct pcache_backing *b;
	struct waiter w = WAITER_INIT;
	char p[300];
	uint8_t *buf;
	unsigned int i;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 2);
	b = bk_open(p, false, false);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 65536), 0);
	for (i = 0; i < 2 * PCACHE_ARRAY_SIZE(ops); i++) {
		struct counted_upper c = { .u = { .buf = buf, .len = 65536, .get = cu_get,
						  .put = cu_put }, .w = &w };
		struct pcache_backing_io io = { .op = ops[i % PCACHE_ARRAY_SIZE(ops)],
						.off = 8192, .len = 4096 + (i >= 4 ? 100 : 0),
						.upper = &c.u, .upper_off = 4096 + (i >= 4 ? 3 : 0),
						.end = cu_end, .priv = &c };

		waiter_add(&w, 1);
		ck_assert_int_eq(i & 1 ? pcache_backing_submit(b, &io) :
				 pcache_backing_submit_direct(b, &io), 0);
		waiter_wait(&w); /* waits for the put */
		ck_assert_int_eq(c.gets, 1);
		ck_assert_int_eq(c.puts, 1);
		ck_assert_int_eq(c.gets_at_end, 1); /* held during the callback ... */
		ck_assert_int_eq(c.puts_at_end, 0); /* ... and released only after it */
	}
	{
		/* a refused submission takes no reference */
		struct counted_upper c = { .u = { .buf = buf, .len = 4096, .get = cu_get,
						  .put = cu_put }, .w = &w };
		struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .off = 0, .len = 8192,
						.upper = &c.u, .end = cu_end, .priv = &c };

		ck_assert_int_eq(pcache_backing_submit(b, &io), -EINVAL);
		ck_assert_int_eq(c.gets, 0);
	}
	pcache_backing_close(b);
	free(buf);
}
END_TEST

/* ---- Alignment ---------------------------------------------------------------------------- */

START_TEST(unaligned_buffers_offsets_and_lengths_are_bounced_on_direct)
{
	static const struct { uint64_t off; size_t len; size_t mem; } cases[] = {
		{ 1, 1000, 1 },        /* everything unaligned */
		{ 4096, 4096, 3 },     /* aligned range, unaligned memory */
		{ 511, 2, 0 },         /* two bytes across a block boundary */
		{ 700, 3000, 0 },      /* unaligned both ends, spans blocks */
		{ 10, 20, 5 },         /* inside one block */
		{ 8192, 12345, 0 },    /* aligned start, unaligned end */
		{ 65536 - 7, 7, 1 },   /* unaligned start, aligned end */
	};
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300];
	uint8_t *mem, *chk;
	unsigned int i;
	size_t k;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 11);
	b = bk_open(p, false, false);
	ck_assert(pcache_backing_is_direct(b));
	ck_assert_int_eq(posix_memalign((void **)&mem, 4096, 1 << 16), 0);
	chk = malloc(1 << 20);
	for (i = 0; i < PCACHE_ARRAY_SIZE(cases); i++) {
		uint8_t *d = mem + cases[i].mem;

		memset(mem, 0, 1 << 16);
		ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, d, cases[i].len, cases[i].off, i & 1), 0);
		expect_pattern(d, cases[i].len, cases[i].off, 11);
	}
	/* writes: only the written range changes */
	pread_all(p, chk, 1 << 20, 0);
	for (i = 0; i < PCACHE_ARRAY_SIZE(cases); i++) {
		uint8_t *d = mem + cases[i].mem;

		for (k = 0; k < cases[i].len; k++)
			d[k] = chk[cases[i].off + k] = (uint8_t)(0x5a ^ k ^ i);
		ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, d, cases[i].len, cases[i].off, i & 1), 0);
	}
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	{
		uint8_t *now = malloc(1 << 20);

		pread_all(p, now, 1 << 20, 0);
		ck_assert(memcmp(now, chk, 1 << 20) == 0);
		free(now);
	}
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_ge(st.bounced, 2 * PCACHE_ARRAY_SIZE(cases));
	pcache_backing_close(b);
	free(mem);
	free(chk);
}
END_TEST

START_TEST(concurrent_unaligned_writes_to_one_block_all_land)
{
	struct pcache_backing *b;
	struct waiter w = WAITER_INIT;
	struct rec recs[40];
	uint8_t src[40][100], chk[4096];
	char p[300];
	int i;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 4);
	b = bk_open(p, false, false);
	waiter_add(&w, 40);
	for (i = 0; i < 40; i++) {
		/* 40 pieces of 100 bytes: pieces share 512-byte blocks (read-modify-write) */
		struct pcache_backing_io io = { .op = PCACHE_BIO_WRITE, .off = 4096 + 100 * i,
						.len = 100, .kmem = src[i], .end = rec_end,
						.priv = &recs[i] };

		memset(src[i], i + 1, 100);
		recs[i] = (struct rec){ .w = &w };
		ck_assert_int_eq(pcache_backing_submit(b, &io), 0);
	}
	waiter_wait(&w);
	pcache_backing_close(b);
	pread_all(p, chk, sizeof(chk), 4096);
	for (i = 0; i < 4000; i++)
		ck_assert_msg(chk[i] == i / 100 + 1, "byte %d: %d", i, chk[i]);
	expect_pattern(chk + 4000, 96, 8096, 4);
	for (i = 0; i < 40; i++)
		ck_assert_int_eq(recs[i].status, 0);
}
END_TEST

struct stress_op {
	uint64_t off;
	size_t len;
	bool write;
	uint8_t *mem;
	struct rec rec;
	struct pcache_upper_req up; /* must live until the request ended */
};

/* Random unaligned, byte-disjoint reads and writes in flight together, against a shadow. */
START_TEST(random_unaligned_mix_matches_a_shadow_copy)
{
	enum { SIZE = 2 << 20, BATCH = 16, MAXLEN = 20000, SLOT = 20480 + 64 };
	struct pcache_backing *b;
	struct stress_op ops[BATCH];
	uint8_t *shadow = malloc(SIZE), *arena, *now = malloc(SIZE);
	unsigned int seed = 12345;
	int batch, i, k, batches = check_under_tsan() ? 20 : 120;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), SIZE, 21);
	pread_all(p, shadow, SIZE, 0);
	b = bk_open(p, false, false);
	ck_assert(pcache_backing_is_direct(b));
	ck_assert_int_eq(posix_memalign((void **)&arena, 4096, BATCH * SLOT), 0);
	for (batch = 0; batch < batches; batch++) {
		struct waiter w = WAITER_INIT;

		for (i = 0; i < BATCH; i++) {
			struct stress_op *o = &ops[i];
			bool overlap;

			do { /* pick a range disjoint from the others of this batch */
				o->len = 1 + (size_t)rand_r(&seed) % MAXLEN;
				o->off = (uint64_t)rand_r(&seed) % (SIZE - o->len);
				if (rand_r(&seed) % 3 == 0) { /* some aligned ones too */
					o->off &= ~4095ull;
					o->len = PCACHE_ALIGN_UP(o->len, 4096);
					if (o->off + o->len > SIZE)
						o->len = SIZE - o->off;
				}
				overlap = false;
				for (k = 0; k < i; k++)
					overlap |= o->off < ops[k].off + ops[k].len &&
						   ops[k].off < o->off + o->len;
			} while (overlap);
			o->write = rand_r(&seed) & 1;
			o->mem = arena + (size_t)i * SLOT + (size_t)(rand_r(&seed) % 3) * 16;
			if (o->write)
				for (k = 0; k < (int)o->len; k++)
					o->mem[k] = (uint8_t)rand_r(&seed);
			o->rec = (struct rec){ .w = &w };
		}
		waiter_add(&w, BATCH);
		for (i = 0; i < BATCH; i++) {
			struct pcache_backing_io io = { .op = ops[i].write ? PCACHE_BIO_WRITE :
								 PCACHE_BIO_READ,
							.off = ops[i].off, .len = ops[i].len,
							.end = rec_end, .priv = &ops[i].rec };

			if (i & 1)
				io.kmem = ops[i].mem;
			else {
				ops[i].up = (struct pcache_upper_req){ .buf = ops[i].mem,
								       .len = ops[i].len };
				io.upper = &ops[i].up; /* get/put are NULL */
			}
			ck_assert_int_eq(i & 2 ? pcache_backing_submit(b, &io) :
				       pcache_backing_submit_direct(b, &io), 0);
		}
		waiter_wait(&w);
		for (i = 0; i < BATCH; i++) {
			ck_assert_int_eq(ops[i].rec.status, 0);
			if (ops[i].write)
				memcpy(shadow + ops[i].off, ops[i].mem, ops[i].len);
			else
				ck_assert_msg(memcmp(ops[i].mem, shadow + ops[i].off, ops[i].len) == 0,
					      "batch %d read %d (%llu+%zu) differs", batch, i,
					      (unsigned long long)ops[i].off, ops[i].len);
		}
	}
	pcache_backing_close(b);
	pread_all(p, now, SIZE, 0);
	ck_assert(memcmp(now, shadow, SIZE) == 0);
	free(shadow);
	free(now);
	free(arena);
}
END_TEST

/* ---- Faults through flakyfs ---------------------------------------------------------------- */

START_TEST(eio_from_the_image_reaches_the_callback)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300], img[350];
	uint8_t *buf;

	check_make_file(tpath(p, sizeof(p), "real"), 1 << 20, 6);
	if (!flaky_start(p, "eio=8192:512:r"))
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	b = bk_open(img, false, false);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 65536), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 4096, 0, false), 0);
	expect_pattern(buf, 4096, 0, 6);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 4096, 8192, false), -EIO);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 16384, 4096, true), -EIO);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 4096, 8192, false), 0); /* reads only */

	/* rules change while the image is open */
	flaky_ctl("eio 0 4096 w\nenospc 65536 4096 w\n");
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 4096, 0, true), -EIO);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 8192, 61440, false), -ENOSPC);
	flaky_ctl("clear\n");
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 4096, 0, true), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 4096, 8192, false), 0);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.errors, 4);
	pcache_backing_close(b);
	free(buf);
}
END_TEST

/*
 * NOTE: only short *writes* on a buffered open are seen by the layer here. For regular files
 * io_uring itself retries partial reads and O_DIRECT writes before completing, and on this
 * kernel (6.18) that internal retry puts the data at the wrong place on a FUSE direct_io file
 * (reproduced without pcachefs: an io_uring read of flakyfs with a short rule returns the
 * full length with wrong bytes after the first short piece). So short-read rules of flakyfs
 * are not usable through io_uring. The read continuation is covered by the shrunk-file case
 * below (a read crossing the end comes back short, the rest gives -ENODATA).
 */
START_TEST(short_transfers_are_continued_not_reported)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300], img[350];
	uint8_t *buf;
	size_t k;

	check_make_file(tpath(p, sizeof(p), "real"), 1 << 20, 8);
	if (!flaky_start(p, "short=0:1048576:w:1536"))
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	b = bk_open(img, false, true);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 65536), 0);
	for (k = 0; k < 65536; k++)
		buf[k] = check_pattern_byte(k, 99);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 65536, 131072, true), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 65536, 262144, false), 0);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_ge(st.short_continued, 2 * (65536 / 1536));
	ck_assert_uint_eq(st.errors, 0);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	pcache_backing_close(b);
	memset(buf, 0, 65536);
	pread_all(p, buf, 65536, 131072);
	expect_pattern(buf, 65536, 0, 99);
	pread_all(p, buf, 65536, 262144);
	expect_pattern(buf, 65536, 0, 99);
	pread_all(p, buf, 65536, 196608);
	expect_pattern(buf, 65536, 196608, 8);
	free(buf);
}
END_TEST

START_TEST(submit_direct_waits_while_queue_depth_requests_are_outstanding)
{
	struct pcache_backing_opts o = { .queue_depth = 4 };
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	struct waiter w = WAITER_INIT;
	struct rec recs[12];
	char p[300], img[350], err[256];
	uint8_t *buf;
	uint64_t max_in_flight = 0, t0;
	int i;

	check_make_file(tpath(p, sizeof(p), "real"), 1 << 20, 1);
	if (!flaky_start(p, "delay=0:1048576:r:20000")) /* every read takes 20 ms */
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	ck_assert_int_eq(pcache_backing_open(img, &o, &b, err, sizeof(err)), 0);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 12 * 4096), 0);
	t0 = pcache_now_ns();
	waiter_add(&w, 12);
	for (i = 0; i < 12; i++) {
		struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .off = (uint64_t)i * 4096,
						.len = 4096, .kmem = buf + i * 4096, .end = rec_end,
						.priv = &recs[i] };

		recs[i] = (struct rec){ .w = &w };
		ck_assert_int_eq(pcache_backing_submit_direct(b, &io), 0);
		pcache_backing_get_stats(b, &st);
		max_in_flight = PCACHE_MAX(max_in_flight, st.in_flight);
	}
	/* 12 requests, at most 4 outstanding: the 12th was accepted after 8 had completed */
	ck_assert_uint_ge(pcache_now_ns() - t0, 20 * 1000 * 1000);
	ck_assert_uint_le(max_in_flight, 4);
	waiter_wait(&w);
	for (i = 0; i < 12; i++)
		ck_assert_int_eq(recs[i].status, 0);
	expect_pattern(buf, 12 * 4096, 0, 1);
	pcache_backing_close(b);
	free(buf);
}
END_TEST

START_TEST(close_waits_for_slow_requests)
{
	struct pcache_backing *b;
	struct waiter w = WAITER_INIT;
	struct rec recs[8];
	char p[300], img[350];
	uint8_t *buf;
	int i;

	check_make_file(tpath(p, sizeof(p), "real"), 1 << 20, 1);
	if (!flaky_start(p, "delay=65536:4096:rw:200000"))
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	b = bk_open(img, false, false);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 8 * 4096), 0);
	waiter_add(&w, 8);
	for (i = 0; i < 8; i++) {
		struct pcache_backing_io io = { .op = i & 1 ? PCACHE_BIO_WRITE : PCACHE_BIO_READ,
						.off = 65536, .len = 4096, .kmem = buf + i * 4096,
						.end = rec_end, .priv = &recs[i] };

		recs[i] = (struct rec){ .w = &w };
		ck_assert_int_eq(pcache_backing_submit(b, &io), 0);
	}
	pcache_backing_close(b); /* returns only after every slow request ended */
	for (i = 0; i < 8; i++)
		ck_assert_int_eq(recs[i].calls, 1);
	ck_assert_int_eq(w.pending, 0);
	free(buf);
}
END_TEST

START_TEST(read_past_the_end_of_a_shrunk_file_is_enodata)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300];
	uint8_t *buf;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 1);
	b = bk_open(p, false, false);
	ck_assert_int_eq(truncate(p, 512 << 10), 0);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 8192), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 8192, 768 << 10, false), -ENODATA);
	/* crossing the new end: the first 4 KiB arrive (a short read), the rest is -ENODATA */
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 8192, (512 << 10) - 4096, true), -ENODATA);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.short_continued, 1);
	expect_pattern(buf, 4096, (512 << 10) - 4096, 1);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 4096, (512 << 10) - 4096, true), 0);
	pcache_backing_close(b);
	free(buf);
}
END_TEST

/* ---- Flush, discard, zero ------------------------------------------------------------------ */

START_TEST(flush_completes_and_is_counted)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 1);
	b = bk_open(p, false, true);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_FLUSH, NULL, 0, 0, false), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_FLUSH, NULL, 0, 0, true), 0);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.flushes, 3);
	pcache_backing_close(b);
}
END_TEST

START_TEST(flush_error_reaches_the_callback)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300], img[350], status[512];
	int fd;
	ssize_t n;

	check_make_file(tpath(p, sizeof(p), "real"), 1 << 20, 1);
	if (!flaky_start(p, NULL))
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	b = bk_open(img, false, true);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	flaky_ctl("fsync_eio 1\n");
	ck_assert_int_eq(do_io(b, PCACHE_BIO_FLUSH, NULL, 0, 0, false), -EIO);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0); /* the rule expired */
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.flushes, 2);
	ck_assert_uint_eq(st.errors, 1);
	pcache_backing_close(b);
	snprintf(img, sizeof(img), "%s/.control", flaky_mnt);
	fd = open(img, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	n = read(fd, status, sizeof(status) - 1);
	close(fd);
	ck_assert_int_gt(n, 0);
	status[n] = 0;
	ck_assert_msg(strstr(status, "fsync_errors 1\n"), "status: %s", status);
}
END_TEST

/* Zero and discard ranges of an open image at path (size >= 4 MiB, pattern seed). */
static void zero_and_discard(const char *path, struct pcache_backing *b, uint32_t seed)
{
	uint8_t *chk = malloc(4 << 20);

	ck_assert_int_eq(do_io(b, PCACHE_BIO_ZERO, NULL, 65536, 65536, false), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_ZERO, NULL, 5000, 200000 + 1000, true), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_ZERO, NULL, 100, 300000 + 7, false), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_DISCARD, NULL, 1 << 20, 2 << 20, false), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_DISCARD, NULL, 3000, (3 << 20) + 11, true), 0);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	pread_all(path, chk, 4 << 20, 0);
	expect_pattern(chk, 65536, 0, seed);
	expect_zero(chk + 65536, 65536);
	expect_pattern(chk + 131072, 201000 - 131072, 131072, seed);
	expect_zero(chk + 201000, 5000);
	expect_pattern(chk + 206000, 300007 - 206000, 206000, seed);
	expect_zero(chk + 300007, 100);
	expect_pattern(chk + 300107, (1 << 20) - 300107, 300107, seed);
	/* discarded ranges may read as anything; the bytes around the unaligned one are kept */
	expect_pattern(chk + (3 << 20), 11, 3 << 20, seed);
	expect_pattern(chk + (3 << 20) + 3011, (1 << 20) - 3011, (3 << 20) + 3011, seed);
	free(chk);
}

START_TEST(zero_and_discard_on_files)
{
	struct pcache_backing *b;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 4 << 20, 12);
	b = bk_open(p, false, false);
	zero_and_discard(p, b, 12);
	pcache_backing_close(b);

	/* tmpfs: no ZERO_RANGE, the punch-hole fallback */
	check_scratch_path(p, sizeof(p), "bk-zero-tmpfs");
	check_make_file(p, 4 << 20, 13);
	b = bk_open(p, false, true);
	zero_and_discard(p, b, 13);
	pcache_backing_close(b);
	unlink(p);
}
END_TEST

START_TEST(zero_through_fuse_without_fallocate_support_writes_zeros)
{
	struct pcache_backing *b;
	char p[300], img[350];
	uint8_t *chk;

	check_make_file(tpath(p, sizeof(p), "real"), 4 << 20, 14);
	if (!flaky_start(p, "nofalloc"))
		return;
	snprintf(img, sizeof(img), "%s/image", flaky_mnt);
	b = bk_open(img, false, false);
	zero_and_discard(p, b, 14);
	pcache_backing_close(b);
	chk = malloc(4096);
	pread_all(p, chk, 4096, 65536);
	expect_zero(chk, 4096);
	free(chk);
}
END_TEST

START_TEST(loop_device_queries_io_zero_and_discard)
{
	struct pcache_backing *b;
	char p[300], dev[64];
	uint8_t *buf;

	check_make_file(tpath(p, sizeof(p), "loopimg"), 4 << 20, 15);
	if (!loop_attach(p, 0, dev, sizeof(dev)))
		return;
	b = bk_open(dev, false, false);
	ck_assert(pcache_backing_is_blockdev(b));
	ck_assert(pcache_backing_is_direct(b));
	ck_assert_uint_eq(pcache_backing_lbs(b), 512);
	ck_assert_uint_eq(pcache_backing_size(b), 4 << 20);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 65536), 0);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 65536, 65536, false), 0);
	expect_pattern(buf, 65536, 65536, 15);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf + 1, 1000, 3, true), 0);
	expect_pattern(buf + 1, 1000, 3, 15);
	zero_and_discard(dev, b, 15);
	pcache_backing_close(b);
	free(buf);
}
END_TEST

START_TEST(loop_device_with_4k_blocks_bounces_and_zeroes_unaligned_ranges)
{
	struct pcache_backing *b;
	struct pcache_backing_stats st;
	char p[300], dev[64];
	uint8_t *buf, *chk;
	size_t k;

	check_make_file(tpath(p, sizeof(p), "loopimg4k"), 4 << 20, 16);
	if (!loop_attach(p, 4096, dev, sizeof(dev)))
		return;
	b = bk_open(dev, false, false);
	ck_assert_uint_eq(pcache_backing_lbs(b), 4096);
	ck_assert(pcache_backing_is_direct(b));
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 65536), 0);
	chk = malloc(65536);
	zero_and_discard(dev, b, 16); /* BLKZEROOUT needs 4 KiB alignment here */
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.bounced, 0); /* the zeroing sub-writes are not caller requests */
	/* 512-aligned but not 4 KiB-aligned: still bounced, and a read-modify-write */
	ck_assert_int_eq(do_io(b, PCACHE_BIO_READ, buf, 1536, 512, false), 0);
	expect_pattern(buf, 1536, 512, 16);
	for (k = 0; k < 5000; k++)
		buf[k] = (uint8_t)(k * 13);
	ck_assert_int_eq(do_io(b, PCACHE_BIO_WRITE, buf, 5000, 6000, true), 0);
	ck_assert_int_eq(pcache_backing_flush_sync(b), 0);
	pread_all(dev, chk, 16384, 0);
	expect_pattern(chk, 6000, 0, 16);
	for (k = 0; k < 5000; k++)
		ck_assert_int_eq(chk[6000 + k], (uint8_t)(k * 13));
	expect_pattern(chk + 11000, 16384 - 11000, 11000, 16);
	pcache_backing_get_stats(b, &st);
	ck_assert_uint_eq(st.bounced, 2);
	pcache_backing_close(b);
	free(buf);
	free(chk);
}
END_TEST

/* ---- Callbacks and stop --------------------------------------------------------------------- */

struct chain {
	struct pcache_backing *b;
	struct waiter *w;
	uint8_t *buf;
	int left, done, errors;
	pthread_t cb_thread;
	bool thread_ok;
};

static void chain_end(void *priv, int status)
{
	struct chain *c = priv;
	struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .len = 4096, .kmem = c->buf,
					.end = chain_end, .priv = c };

	if (c->done == 0)
		c->cb_thread = pthread_self();
	else if (!pthread_equal(c->cb_thread, pthread_self()))
		c->thread_ok = false;
	c->done++;
	if (status)
		c->errors++;
	if (--c->left > 0) {
		io.off = (uint64_t)(c->left % 200) * 4096;
		/* both paths from inside a callback: neither may block or deadlock */
		if ((c->left & 1 ? pcache_backing_submit(c->b, &io) :
				   pcache_backing_submit_direct(c->b, &io)) != 0)
			c->errors++;
		if (c->left == 1 && pcache_backing_rw_sync(c->b, PCACHE_BIO_READ, c->buf, 512, 0) !=
				    -EDEADLK)
			c->errors++;
		return;
	}
	pthread_mutex_lock(&c->w->m);
	c->w->pending--;
	pthread_cond_broadcast(&c->w->c);
	pthread_mutex_unlock(&c->w->m);
}

START_TEST(callback_may_submit_new_requests)
{
	struct waiter w = WAITER_INIT;
	struct chain c = { .w = &w, .left = 500, .thread_ok = true };
	struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .len = 4096, .end = chain_end,
					.priv = &c };
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 1);
	c.b = bk_open(p, false, false);
	ck_assert_int_eq(posix_memalign((void **)&c.buf, 4096, 4096), 0);
	io.kmem = c.buf;
	waiter_add(&w, 1);
	ck_assert_int_eq(pcache_backing_submit(c.b, &io), 0);
	waiter_wait(&w);
	ck_assert_int_eq(c.done, 500);
	ck_assert_int_eq(c.errors, 0);
	ck_assert(c.thread_ok);
	ck_assert(!pthread_equal(c.cb_thread, pthread_self()));
	pcache_backing_close(c.b);
	free(c.buf);
}
END_TEST

START_TEST(plugged_submissions_run_after_unplug_and_direct_never_deadlocks)
{
	struct pcache_backing_opts o = { .queue_depth = 4 };
	struct pcache_backing *b;
	struct waiter w = WAITER_INIT;
	struct rec recs[64];
	char p[300], err[256];
	uint8_t *buf;
	int i;

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 17);
	ck_assert_int_eq(pcache_backing_open(p, &o, &b, err, sizeof(err)), 0);
	ck_assert_int_eq(posix_memalign((void **)&buf, 4096, 64 * 4096), 0);
	for (int round = 0; round < 20; round++) {
		waiter_add(&w, 64);
		pcache_backing_plug(b);
		for (i = 0; i < 64; i++) {
			struct pcache_backing_io io = { .op = PCACHE_BIO_READ,
							.off = (uint64_t)((i * 7 + round) % 256) * 4096,
							.len = 4096, .kmem = buf + i * 4096,
							.end = rec_end, .priv = &recs[i] };

			recs[i] = (struct rec){ .w = &w };
			/* depth 4: submit_direct must wake the completion thread itself */
			ck_assert_int_eq(i & 1 ? pcache_backing_submit_direct(b, &io) :
				       pcache_backing_submit(b, &io), 0);
		}
		pcache_backing_unplug(b);
		waiter_wait(&w);
		for (i = 0; i < 64; i++) {
			ck_assert_int_eq(recs[i].status, 0);
			expect_pattern(buf + i * 4096, 4096, (uint64_t)((i * 7 + round) % 256) * 4096, 17);
		}
	}
	pcache_backing_close(b);
	free(buf);
}
END_TEST

#define STOP_N 3000

struct stop_ctx {
	struct pcache_backing *b;
	uint8_t *buf;
	int calls[STOP_N];
	int puts[STOP_N];
	int bad_status;
	struct pcache_upper_req ups[STOP_N];
};

static struct stop_ctx *stop_ctx;

static void stop_end(void *priv, int status)
{
	int i = (int)(intptr_t)priv;

	stop_ctx->calls[i]++;
	if (status)
		stop_ctx->bad_status++;
}

static void stop_put(struct pcache_upper_req *u)
{
	stop_ctx->puts[u - stop_ctx->ups]++;
}

static void *stop_submitter(void *arg)
{
	intptr_t half = (intptr_t)arg;
	int i;

	for (i = (int)half; i < STOP_N; i += 2) {
		struct pcache_backing_io io = { .op = i % 3 ? PCACHE_BIO_READ : PCACHE_BIO_WRITE,
						.off = (uint64_t)(i % 256) * 4096 + (i % 7 == 0 ? 1 : 0),
						.len = 4096, .end = stop_end, .priv = (void *)(intptr_t)i };

		if (i % 2) {
			stop_ctx->ups[i].buf = stop_ctx->buf + (size_t)(i % 256) * 4096;
			stop_ctx->ups[i].len = 4096;
			stop_ctx->ups[i].put = stop_put;
			io.upper = &stop_ctx->ups[i];
		} else {
			io.kmem = stop_ctx->buf + (size_t)(i % 256) * 4096;
		}
		if ((i % 4 < 2 ? pcache_backing_submit(stop_ctx->b, &io) :
				 pcache_backing_submit_direct(stop_ctx->b, &io)) != 0)
			stop_ctx->bad_status++;
	}
	return NULL;
}

START_TEST(close_drains_every_request_exactly_once)
{
	pthread_t th[2];
	char p[300];
	int i;

	stop_ctx = calloc(1, sizeof(*stop_ctx));
	check_make_file(tpath(p, sizeof(p), "img"), 2 << 20, 1);
	stop_ctx->b = bk_open(p, false, false);
	ck_assert_int_eq(posix_memalign((void **)&stop_ctx->buf, 4096, 1 << 20), 0);
	for (i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, stop_submitter, (void *)(intptr_t)i), 0);
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	pcache_backing_close(stop_ctx->b); /* most requests are still queued or in the ring */
	for (i = 0; i < STOP_N; i++) {
		ck_assert_msg(stop_ctx->calls[i] == 1, "request %d: %d callbacks", i,
			      stop_ctx->calls[i]);
		ck_assert_int_eq(stop_ctx->puts[i], i % 2);
	}
	ck_assert_int_eq(stop_ctx->bad_status, 0);
	free(stop_ctx->buf);
	free(stop_ctx);
}
END_TEST

struct late {
	struct pcache_backing *b;
	sem_t in_cb, go;
	int late_ret;
	int gets, puts;
	struct pcache_upper_req up;
	uint8_t buf[512];
};

static void late_get(struct pcache_upper_req *u)
{
	pcache_container_of(u, struct late, up)->gets++;
}

static void late_put(struct pcache_upper_req *u)
{
	pcache_container_of(u, struct late, up)->puts++;
}

static void late_end(void *priv, int status)
{
	struct late *l = priv;
	struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .len = 512, .upper = &l->up,
					.end = late_end, .priv = l };

	if (status < 0)
		return;
	l->up = (struct pcache_upper_req){ .buf = l->buf, .len = sizeof(l->buf), .get = late_get,
					   .put = late_put };
	sem_post(&l->in_cb);
	while (sem_wait(&l->go) && errno == EINTR)
		;
	l->late_ret = pcache_backing_submit(l->b, &io);
}

static void *late_closer(void *arg)
{
	pcache_backing_close(arg);
	return NULL;
}

START_TEST(submit_after_close_started_is_refused_with_eshutdown)
{
	struct pcache_backing_io io = { .op = PCACHE_BIO_READ, .len = 512, .end = late_end };
	struct late l = { .late_ret = 1 };
	pthread_t th;
	char p[300];

	check_make_file(tpath(p, sizeof(p), "img"), 1 << 20, 1);
	l.b = bk_open(p, false, true);
	sem_init(&l.in_cb, 0, 0);
	sem_init(&l.go, 0, 0);
	io.kmem = l.buf;
	io.priv = &l;
	ck_assert_int_eq(pcache_backing_submit(l.b, &io), 0);
	while (sem_wait(&l.in_cb) && errno == EINTR)
		;
	/* the callback is blocked: close starts, and must wait for it */
	ck_assert_int_eq(pthread_create(&th, NULL, late_closer, l.b), 0);
	/* probe until close has started (probes accepted before that are drained normally) */
	for (;;) {
		static uint8_t probe[512];
		struct pcache_backing_io pio = { .op = PCACHE_BIO_READ, .len = 512, .kmem = probe };
		int r = pcache_backing_submit(l.b, &pio);

		if (r == -ESHUTDOWN)
			break;
		ck_assert_int_eq(r, 0);
		usleep(1000);
	}
	sem_post(&l.go);
	pthread_join(th, NULL);
	ck_assert_int_eq(l.late_ret, -ESHUTDOWN);
	ck_assert_int_eq(l.gets, 1);
	ck_assert_int_eq(l.puts, 1); /* a refused request keeps no reference */
}
END_TEST

Suite *backing_suite(void);
Suite *backing_suite(void)
{
	Suite *s = suite_create("backing");
	TCase *tc;

	tc = tcase_create("Open");
	tcase_add_checked_fixture(tc, env_setup, env_cleanup);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, open_refuses_non_images_with_a_reason);
	tcase_add_test(tc, open_file_reports_size_lbs_direct_and_path);
	tcase_add_test(tc, odd_size_file_keeps_its_size_and_reads_zeros_past_the_end);
	tcase_add_test(tc, read_only_image_refuses_writes_but_reads);
	tcase_add_test(tc, submit_rejects_bad_requests_without_callback);
	suite_add_tcase(s, tc);

	tc = tcase_create("Core");
	tcase_add_checked_fixture(tc, env_setup, env_cleanup);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, rw_sync_round_trip_on_direct_file);
	tcase_add_test(tc, threads_submit_req_and_kmem_reads_and_writes_verified);
	tcase_add_test(tc, upper_reference_is_released_once_after_the_callback);
	tcase_add_test(tc, callback_may_submit_new_requests);
	tcase_add_test(tc, plugged_submissions_run_after_unplug_and_direct_never_deadlocks);
	tcase_add_test(tc, close_drains_every_request_exactly_once);
	tcase_add_test(tc, submit_after_close_started_is_refused_with_eshutdown);
	suite_add_tcase(s, tc);

	tc = tcase_create("Alignment");
	tcase_add_checked_fixture(tc, env_setup, env_cleanup);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, unaligned_buffers_offsets_and_lengths_are_bounced_on_direct);
	tcase_add_test(tc, concurrent_unaligned_writes_to_one_block_all_land);
	tcase_add_test(tc, random_unaligned_mix_matches_a_shadow_copy);
	suite_add_tcase(s, tc);

	tc = tcase_create("Faults");
	tcase_add_checked_fixture(tc, env_setup, env_cleanup);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, eio_from_the_image_reaches_the_callback);
	tcase_add_test(tc, short_transfers_are_continued_not_reported);
	tcase_add_test(tc, read_past_the_end_of_a_shrunk_file_is_enodata);
	tcase_add_test(tc, submit_direct_waits_while_queue_depth_requests_are_outstanding);
	tcase_add_test(tc, close_waits_for_slow_requests);
	suite_add_tcase(s, tc);

	tc = tcase_create("Ranges");
	tcase_add_checked_fixture(tc, env_setup, env_cleanup);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, flush_completes_and_is_counted);
	tcase_add_test(tc, flush_error_reaches_the_callback);
	tcase_add_test(tc, zero_and_discard_on_files);
	tcase_add_test(tc, zero_through_fuse_without_fallocate_support_writes_zeros);
	tcase_add_test(tc, loop_device_queries_io_zero_and_discard);
	tcase_add_test(tc, loop_device_with_4k_blocks_bounces_and_zeroes_unaligned_ranges);
	suite_add_tcase(s, tc);
	return s;
}
